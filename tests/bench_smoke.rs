//! The load generator's `--smoke` run: it starts its MariaDB servers, the relay and the
//! real shardgate binary, drives every workload through every arm and prints the table.
//! Only that it runs is asserted: benchmarks report, tests do not assert timings.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn bench_smoke_run_prints_a_table_row_per_workload_and_arm() {
    let (stdout, stderr) = run_bench(&["--smoke"], Duration::from_secs(180));
    // Not a terminal: no carriage-return progress, one plain line per arm and round.
    assert!(
        !stderr.contains('\r'),
        "progress written to a pipe:\n{stderr}"
    );
    let results = stderr.lines().filter(|l| l.contains(" QPS  p50 ")).count();
    assert_eq!(
        results, 9,
        "one result line per workload and arm:\n{stderr}"
    );
    for workload in ["point-select", "app-mix", "bulk-insert"] {
        for arm in ["direct", "relay", "shardgate"] {
            let row = format!("| {workload} | 2 | {arm} |");
            assert!(
                stdout.lines().any(|l| l.starts_with(&row)),
                "no table row {row:?} in:\n{stdout}"
            );
        }
    }
}

/// Multiplexing: 40 clients through a shardgate whose pool may open 4 connections per
/// cluster all get answers, and the measured server's `Threads_connected` (the
/// "backend conns" column) stays near the pool's size, while the direct arm's 40
/// clients are 40 server connections.
#[test]
fn bench_backend_conns_column_shows_40_clients_over_a_pool_of_4() {
    let (stdout, stderr) = run_bench(
        &[
            "--smoke",
            "--workload",
            "point-select",
            "--arms",
            "shardgate,direct",
            "--connections",
            "40",
            "--pool",
            "4",
        ],
        Duration::from_secs(180),
    );
    let conns = |arm: &str| -> u64 {
        let row = format!("| point-select | 40 | {arm} |");
        let line = stdout
            .lines()
            .find(|l| l.starts_with(&row))
            .unwrap_or_else(|| panic!("no row {row:?} in:\n{stdout}\n{stderr}"));
        // | workload | conns | arm | QPS | p50 | p99 | p999 | proxy CPU | mariadbd CPU | RSS | backend conns | ...
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert_eq!(cells[15], "0", "errors in {line}");
        cells[11]
            .parse()
            .unwrap_or_else(|_| panic!("backend conns not a number in {line}"))
    };
    let through_shardgate = conns("shardgate");
    // The pool's 4, the sampler's own connection, shardgate's health probe and the like.
    assert!(
        (4..=12).contains(&through_shardgate),
        "shardgate arm: {through_shardgate} server connections for a pool of 4:\n{stdout}"
    );
    assert!(
        conns("direct") >= 40,
        "direct arm: fewer server connections than clients:\n{stdout}"
    );
}

/// `--syscalls`: with perf there, a second table gives the relay's and shardgate's
/// system calls per query (a proxy makes at least one per query it forwards); without
/// perf the run still succeeds and says it skipped the table.
#[test]
fn bench_syscalls_table_counts_system_calls_per_query_or_says_why_not() {
    let (stdout, stderr) = run_bench(
        &["--smoke", "--workload", "point-select", "--syscalls"],
        Duration::from_secs(180),
    );
    let perf = Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !perf {
        assert!(stderr.contains("perf not found"), "{stderr}");
        return;
    }
    for arm in ["relay", "shardgate"] {
        let row = format!("| point-select | 2 | {arm} | ");
        // The second table's rows have 13 cells: ..., all syscalls, context switches.
        let line = stdout
            .lines()
            .filter(|l| l.starts_with(&row))
            .find(|l| l.split('|').count() == 15)
            .unwrap_or_else(|| panic!("no syscall row for {arm} in:\n{stdout}\n{stderr}"));
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        let all: f64 = cells[12].parse().expect("all syscalls");
        assert!(all >= 1.0, "{arm}: {all} system calls per query: {line}");
    }
}

/// The incident replay end to end in seconds: four servers, a 6 s freeze of one of
/// them under load. Asserted are the outcomes, not timings: shardgate called the frozen
/// cluster down and healthy again while clients still sent it statements, and no
/// statement for another cluster failed.
#[test]
fn incident_smoke_replay_sees_the_frozen_cluster_go_down_and_come_back() {
    let (stdout, stderr) = run_bench(&["incident", "--smoke"], Duration::from_secs(120));
    for line in [
        "  went down: yes",
        "  healthy again: yes",
        // Refusals of the down cluster must not hold its recovery back.
        "  healthy again while the load ran: yes",
        "  errors on healthy clusters during the stall: 0",
    ] {
        assert!(
            stdout.lines().any(|l| l == line),
            "no line {line:?} in:\n{stdout}\n{stderr}"
        );
    }
}

/// The migration-wave replay end to end: ten workspace databases, the wave of four
/// changes under eight reading and writing clients, with binlog capture. Asserted are
/// outcomes, not timings: every migration completed, no application statement failed,
/// and the table row reports both.
#[test]
fn wave_smoke_completes_every_migration_without_an_application_error() {
    let (stdout, stderr) = run_bench(
        &["wave", "--smoke", "--capture", "binlog"],
        Duration::from_secs(240),
    );
    let row = stdout
        .lines()
        .find(|l| l.starts_with("| binlog |"))
        .unwrap_or_else(|| panic!("no binlog row in:\n{stdout}\n{stderr}"));
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    assert_eq!(cells[3], "0", "failed application statements: {row}");
    assert_eq!(cells[4], "0", "workspaces with errors: {row}");
    assert_eq!(cells[10], "40/40", "migrations complete: {row}");
    assert!(
        cells[2].parse::<u64>().is_ok_and(|n| n > 100),
        "the clients ran: {row}"
    );
}

/// Runs `shardgate-bench ARGS`, killed after `limit`; asserts it succeeded and returns
/// its stdout and stderr.
fn run_bench(args: &[&str], limit: Duration) -> (String, String) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_shardgate-bench"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shardgate-bench");
    // Bounded: a smoke run takes seconds; a hung one is killed rather than waited on
    // (its own drops resume and stop the servers; SIGKILL skips them, and the next
    // LocalMariaDb start reaps what it left).
    let deadline = Instant::now() + limit;
    while child.try_wait().expect("poll shardgate-bench").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("shardgate-bench output");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "shardgate-bench {args:?} failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    (stdout, stderr)
}
