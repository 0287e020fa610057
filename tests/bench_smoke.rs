//! The load generator's `--smoke` run: it starts its MariaDB servers, the relay and the
//! real shardgate binary, drives every workload through every arm and prints the table.
//! Only that it runs is asserted: benchmarks report, tests do not assert timings.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn bench_smoke_run_prints_a_table_row_per_workload_and_arm() {
    let (stdout, _stderr) = run_bench(&["--smoke"], Duration::from_secs(180));
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
