//! sysbench in its default prepared-statement mode (`--db-ps-mode=auto`, mysql driver:
//! `mysql_stmt_prepare` / `mysql_stmt_execute`) through shardgate over a sharded
//! keyspace: no errors, and the shards really served COM_STMT_EXECUTE.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use shardgate::demo::localdb::LocalMariaDb;

/// `sysbench TEST ARGS.. COMMAND` against `addr` as app/app in database `app`, bounded.
async fn sysbench(addr: &str, test: &str, extra: &[&str]) -> (bool, String) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut args: Vec<String> = [
        test,
        "--db-driver=mysql",
        "--tables=1",
        "--table-size=2000",
        "--auto-inc=off",
        "--mysql-user=app",
        "--mysql-password=app",
        "--mysql-db=app",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    args.push(format!("--mysql-host={host}"));
    args.push(format!("--mysql-port={port}"));
    args.extend(extra.iter().map(|s| s.to_string()));
    let run = tokio::process::Command::new("sysbench")
        .args(&args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap_or_else(|_| panic!("sysbench {args:?} did not finish within 60 s"))
        .expect("run sysbench (scripts/ensure-deps installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The first number after `label` in sysbench's report.
fn stat(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` in sysbench's report:\n{report}"))
}

/// The server's `Com_stmt_execute` counter.
fn executes(server: &LocalMariaDb) -> u64 {
    common::status_counter(server, "Com_stmt_execute")
}

async fn run(vindex: &str, test: &str, options: &[&str]) -> (Vec<LocalMariaDb>, Vec<u64>, String) {
    let servers = common::start_servers(2);
    let toml = common::ShardedVSchema::new(&servers)
        .vindex(vindex)
        .ddl("direct")
        .table("sbtest1", "id")
        .build();
    let proxy = common::start_proxy(&toml).await;
    let addr = proxy.addr_string();
    let (ok, report) = sysbench(&addr, test, &["prepare"]).await;
    assert!(ok, "prepare:\n{report}");
    let before: Vec<u64> = servers.iter().map(executes).collect();
    let mut args = vec!["--db-ps-mode=auto", "--threads=4", "--time=5"];
    args.extend_from_slice(options);
    args.push("run");
    let (ok, report) = sysbench(&addr, test, &args).await;
    assert!(ok, "run:\n{report}");
    eprintln!("{report}");
    assert_eq!(stat(&report, "ignored errors:"), 0, "{report}");
    assert!(stat(&report, "transactions:") > 0, "{report}");
    let grew: Vec<u64> = servers
        .iter()
        .zip(before)
        .map(|(s, b)| executes(s) - b)
        .collect();
    (servers, grew, report)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_point_selects_run_as_prepared_statements_on_both_shards() {
    // xxhash spreads the ids: every shard serves executes.
    let (_servers, grew, report) = run("xxhash", "oltp_point_select", &[]).await;
    assert!(
        grew.iter().all(|&n| n > 100),
        "Com_stmt_execute grew by {grew:?}\n{report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_read_only_runs_as_prepared_statements_with_its_transactions() {
    // sysbench's transactions (prepared BEGIN, ten point selects, four range selects
    // `id BETWEEN ? AND ?`, prepared COMMIT) must stay on one shard: the numeric vindex
    // keeps ids 1..2000 (and the ranges' ends, up to 2099) on the first, `-80`, so the
    // planner routes each range there. `run` asserts that no statement failed.
    let (_servers, grew, report) = run("numeric", "oltp_read_only", &[]).await;
    assert!(grew[0] > 100, "Com_stmt_execute grew by {grew:?}\n{report}");
    assert_eq!(grew[1], 0, "nothing ran on the second shard\n{report}");
    // Every transaction ran its four range selects besides its ten point selects
    // (with `--range_selects=off` it would be ten reads a transaction).
    let (reads, transactions) = (stat(&report, "read:"), stat(&report, "transactions:"));
    assert!(
        reads >= 14 * transactions,
        "{reads} reads for {transactions} transactions\n{report}"
    );
}
