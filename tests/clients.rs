//! Drivers other people wrote, talking to shardgate as they would to MariaDB: PyMySQL
//! and Ruby's mysql2 (libmariadb) run the same scripted session directly against a
//! MariaDB server and through the proxy, and their transcripts must match; sysbench
//! prepares and runs `oltp_point_select` through the proxy. See docs/clients.md.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Output;
use std::time::Duration;

use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;

/// The workspace the scripts write almost everything to, and the one step
/// `other_workspace` writes; both are fixed in the scripts.
const SCRIPT_WORKSPACE: u64 = 1;
const SCRIPT_OTHER_WORKSPACE: u64 = 3;

/// Index (into the shard servers) of the server that owns `workspace` in keyspace `app`.
fn owner(vschema_toml: &str, workspace: u64) -> usize {
    let vschema = VSchema::from_toml_str(vschema_toml).expect("valid vschema");
    let shard = vschema
        .keyspace("app")
        .expect("keyspace app")
        .shard_for_workspace(workspace);
    shard.cluster[1..]
        .parse::<usize>()
        .expect("clusters are named cN")
        - 1
}

/// Debian's python3-pymysql is installed for the system Python, which a `python3`
/// earlier on PATH (pyenv, venv) may not see.
const PYTHON: &str = "/usr/bin/python3";
const RUBY: &str = "/usr/bin/ruby";

fn script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Runs `program args..`, killing it after `limit`.
async fn run_bounded(program: &str, args: &[String], limit: Duration) -> Output {
    let child = tokio::process::Command::new(program)
        .args(args)
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(limit, child).await {
        Ok(output) => output.unwrap_or_else(|e| panic!("run {program}: {e}")),
        Err(_) => panic!("{program} {args:?} did not finish within {limit:?}"),
    }
}

/// Runs a client script against `addr` and returns its transcript; panics with the
/// script's stderr if it failed.
async fn transcript(interpreter: &str, script_name: &str, addr: &str, user: &str) -> String {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let password = user; // app/app through the proxy, shardgate/shardgate directly
    let args = [
        script(script_name),
        host.into(),
        port.into(),
        user.into(),
        password.into(),
        "app".into(),
    ];
    let out = run_bounded(interpreter, &args, Duration::from_secs(40)).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script_name} against {addr} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// The steps whose lines differ between the two transcripts, each with both lines.
fn differing_steps(direct: &str, proxied: &str) -> Vec<(String, String, String)> {
    let d: Vec<&str> = direct.lines().collect();
    let p: Vec<&str> = proxied.lines().collect();
    let mut out = Vec::new();
    for i in 0..d.len().max(p.len()) {
        let (x, y) = (
            d.get(i).copied().unwrap_or(""),
            p.get(i).copied().unwrap_or(""),
        );
        if x != y {
            let name = x.split(" | ").next().unwrap_or("").to_string();
            out.push((name, x.to_string(), y.to_string()));
        }
    }
    out
}

/// The transcript line of `step` (the first field of each line).
fn step<'a>(transcript: &'a str, name: &str) -> &'a str {
    transcript
        .lines()
        .find(|l| l.split(" | ").next() == Some(name))
        .unwrap_or_else(|| panic!("no step {name} in transcript:\n{transcript}"))
}

fn count_on(server: &LocalMariaDb, sql: &str) -> u64 {
    let out = common::direct_query(server, sql);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("`{sql}` should give a number, got {out:?}"))
}

/// Starts two shard servers behind the proxy and a third server standing in for
/// "MariaDB without a proxy", runs the script against both, compares, and checks
/// where the rows landed.
async fn client_session_matches_a_direct_connection(interpreter: &str, script_name: &str) {
    let mut servers = common::start_servers(3);
    let direct = servers.pop().expect("three servers");
    direct
        .sql("CREATE DATABASE app")
        .expect("create app on the direct server");
    let toml = common::ShardedVSchema::new(&servers).build();
    let home = owner(&toml, SCRIPT_WORKSPACE);
    let away = owner(&toml, SCRIPT_OTHER_WORKSPACE);
    assert_ne!(
        home, away,
        "the scripts' two workspaces must live on different shards"
    );
    let proxy = common::start_proxy(&toml).await;

    let reference = transcript(interpreter, script_name, &direct.addr(), "shardgate").await;
    let proxied = transcript(interpreter, script_name, &proxy.addr_string(), "app").await;

    // The reference run itself did what the script means to do, so that matching it
    // proves something.
    for (name, expected) in [
        ("dup_key", "1062"),
        ("syntax_error", "1064"),
        ("unknown_table", "1146"),
        ("escape_roundtrip", "true"),
        ("escape_read_roundtrip", "true"),
    ] {
        let line = step(&reference, name).to_lowercase();
        assert!(line.contains(expected), "direct run, step {name}: {line}");
    }
    assert!(
        step(&reference, "select_kinds").contains("🎉"),
        "utf8mb4 survives the direct run"
    );
    let differences = differing_steps(&reference, &proxied);
    let report: String = differences
        .iter()
        .map(|(name, x, y)| format!("step {name}\n  direct:  {x}\n  proxied: {y}\n"))
        .collect();
    assert!(
        differences.is_empty(),
        "{script_name}: {} step(s) differ through shardgate:\n{report}",
        differences.len()
    );

    // Through the proxy, every row of a workspace is on the shard that owns it.
    let total_rows = count_on(&direct, "SELECT COUNT(*) FROM app.items");
    for (i, server) in servers.iter().enumerate() {
        for (workspace, table) in [
            (SCRIPT_WORKSPACE, "items"),
            (SCRIPT_WORKSPACE, "kinds"),
            (SCRIPT_OTHER_WORKSPACE, "items"),
        ] {
            let sql = format!("SELECT COUNT(*) FROM app.{table} WHERE workspace_id = {workspace}");
            let written = count_on(&direct, &sql);
            assert!(
                written > 0,
                "the script writes {table} rows for workspace {workspace}"
            );
            let expected = if owner(&toml, workspace) == i {
                written
            } else {
                0
            };
            assert_eq!(
                count_on(server, &sql),
                expected,
                "{table} rows of workspace {workspace} on shard {i}"
            );
        }
    }
    let on_shards: u64 = servers
        .iter()
        .map(|s| count_on(s, "SELECT COUNT(*) FROM app.items"))
        .sum();
    assert_eq!(on_shards, total_rows, "no rows lost or duplicated");

    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_session_through_the_proxy_matches_a_direct_connection() {
    client_session_matches_a_direct_connection(PYTHON, "pymysql_check.py").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql2_session_through_the_proxy_matches_a_direct_connection() {
    client_session_matches_a_direct_connection(RUBY, "mysql2_check.rb").await;
}

/// `sysbench TEST ARGS.. COMMAND` against `addr` as app/app, database `app`, text
/// protocol only, at most `limit`; returns (succeeded, stdout + stderr).
async fn sysbench(addr: &str, test: &str, extra: &[&str], limit: Duration) -> (bool, String) {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let mut args: Vec<String> = [
        test,
        "--db-driver=mysql",
        "--tables=2",
        "--table-size=2000",
        "--db-ps-mode=disable",
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
    let out = run_bounded("sysbench", &args, limit).await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// The first number after `label` in sysbench's report (`queries:  1234 (411.1 per sec.)`).
fn sysbench_stat(report: &str, label: &str) -> u64 {
    report
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` in sysbench's report:\n{report}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sysbench_point_selects_run_through_the_proxy_and_rows_land_by_id() {
    let servers = common::start_servers(2);
    // sysbench drops and creates its tables in turn: a test database runs DDL at once.
    let toml = common::ShardedVSchema::new(&servers)
        .ddl("direct")
        .table("sbtest1", "id")
        .table("sbtest2", "id")
        .build();
    let proxy = common::start_proxy(&toml).await;
    let addr = proxy.addr_string();
    let limit = Duration::from_secs(30);

    // sysbench's default prepare leaves `id` to AUTO_INCREMENT, so its INSERTs name no
    // sharding key; the proxy refuses them (docs/clients.md). Explicit ids route.
    let (ok, report) = sysbench(&addr, "oltp_point_select", &["prepare"], limit).await;
    eprintln!("prepare with --auto-inc=on (default):\n{report}");
    assert!(!ok, "an INSERT without `id` cannot be routed");
    assert!(report.contains("1105"), "{report}");
    let (ok, report) = sysbench(&addr, "oltp_point_select", &["cleanup"], limit).await;
    assert!(ok, "cleanup: {report}");

    let (ok, report) = sysbench(
        &addr,
        "oltp_point_select",
        &["--auto-inc=off", "prepare"],
        limit,
    )
    .await;
    assert!(ok, "prepare with explicit ids:\n{report}");

    let (ok, report) = sysbench(
        &addr,
        "oltp_point_select",
        &["--time=3", "--threads=4", "--auto-inc=off", "run"],
        limit,
    )
    .await;
    assert!(ok, "oltp_point_select run:\n{report}");
    assert!(sysbench_stat(&report, "queries:") > 0, "{report}");
    assert_eq!(sysbench_stat(&report, "ignored errors:"), 0, "{report}");
    assert_eq!(sysbench_stat(&report, "reconnects:"), 0, "{report}");

    // Every id of both tables is on the shard that owns it, exactly once.
    for table in ["sbtest1", "sbtest2"] {
        let mut seen = 0;
        for (i, server) in servers.iter().enumerate() {
            let ids = common::direct_query(server, &format!("SELECT id FROM app.{table}"));
            for id in ids.lines() {
                let id: u64 = id.trim().parse().expect("an id");
                assert_eq!(owner(&toml, id), i, "{table} id {id} is on shard {i}");
                seen += 1;
            }
        }
        assert_eq!(seen, 2000, "{table} holds every row once");
    }

    // Range and aggregate reads span shards: oltp_read_only is refused, and the
    // proxy stays up for point selects.
    let (ok, report) = sysbench(
        &addr,
        "oltp_read_only",
        &["--time=2", "--threads=1", "--auto-inc=off", "run"],
        limit,
    )
    .await;
    eprintln!("oltp_read_only:\n{report}");
    assert!(!ok, "oltp_read_only's range queries span shards:\n{report}");
    let (ok, report) = sysbench(
        &addr,
        "oltp_point_select",
        &["--time=1", "--threads=1", "--auto-inc=off", "run"],
        limit,
    )
    .await;
    assert!(ok, "point selects after oltp_read_only:\n{report}");

    proxy.stop().await;
}
