//! The partial-failure view: a failure that hurts only some workspaces (here a table
//! dropped in three workspace databases) shows in `SHOW WORKSPACES WITH ERRORS` and
//! `SHOW WORKSPACE n`, while every cluster's health stays `healthy`.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::vschema::VSchema;

const WORKSPACES: u64 = 20;
const BROKEN: [u64; 3] = [3, 11, 17];

fn owner(vs: &VSchema, ws: u64) -> String {
    let ks = vs.keyspace("tenants").expect("tenants");
    ks.shard_for_workspace(ws).cluster.clone()
}

fn server_of(vs: &VSchema, ws: u64) -> usize {
    owner(vs, ws)[1..].parse::<usize>().expect("cN") - 1
}

/// A text cell of shardgate's own result set (NULL as None).
fn cell(row: &mysql_async::Row, column: &str) -> Option<String> {
    row.get_opt::<Option<String>, _>(column)
        .unwrap_or_else(|| panic!("no column {column}"))
        .unwrap_or_else(|e| panic!("column {column}: {e}"))
}

fn number(row: &mysql_async::Row, column: &str) -> u64 {
    cell(row, column)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("column {column} is not a number"))
}

/// Reads every workspace in a loop until `until`; half the clients name the workspace
/// database in the statement, the others `USE` it. Returns (statements, errors).
async fn read_all_workspaces(addr: String, client: usize, until: Instant) -> (u64, u64) {
    let mut c = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", None))
        .await
        .expect("connect");
    let (mut statements, mut errors) = (0, 0);
    while Instant::now() < until {
        for ws in 1..=WORKSPACES {
            let read = if client.is_multiple_of(2) {
                c.query_drop(format!("SELECT COUNT(*) FROM ws_{ws}.notes"))
                    .await
            } else {
                c.query_drop(format!("USE ws_{ws}")).await.expect("use");
                c.query_drop("SELECT id, body FROM notes WHERE id = 1")
                    .await
            };
            statements += 1;
            match read {
                Ok(()) => assert!(!BROKEN.contains(&ws), "ws_{ws} should fail"),
                Err(mysql_async::Error::Server(e)) => {
                    assert_eq!(e.code, 1146, "ws_{ws}: {e}");
                    assert!(BROKEN.contains(&ws), "ws_{ws} failed: {e}");
                    errors += 1;
                }
                Err(e) => panic!("ws_{ws}: {e}"),
            }
        }
    }
    let _ = c.disconnect().await;
    (statements, errors)
}

async fn metrics_body(addr: std::net::SocketAddr) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspaces_with_errors_show_a_partial_failure_healthy_clusters_hide() {
    let servers = common::start_servers(2);
    let toml = common::per_workspace_vschema(&servers);
    let vs = VSchema::from_toml_str(&toml).expect("valid");
    for ws in 1..=WORKSPACES {
        servers[server_of(&vs, ws)]
            .sql(&format!(
                "CREATE DATABASE ws_{ws}; CREATE TABLE ws_{ws}.notes (id INT PRIMARY KEY, body VARCHAR(20)); \
                 INSERT INTO ws_{ws}.notes VALUES (1, 'n')"
            ))
            .expect("create workspace db");
    }
    assert!(
        (1..=WORKSPACES).any(|w| server_of(&vs, w) == 0)
            && (1..=WORKSPACES).any(|w| server_of(&vs, w) == 1),
        "the workspaces live on both clusters"
    );
    for ws in BROKEN {
        common::direct_query(
            &servers[server_of(&vs, ws)],
            &format!("DROP TABLE ws_{ws}.notes"),
        );
    }
    let metrics_addr = common::free_local_addr();
    let mut config = shardgate::config::ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vs.clone(),
    );
    config.metrics_listen = Some(metrics_addr);
    let proxy = common::start_proxy_config(config).await;
    let addr = proxy.addr_string();

    let until = Instant::now() + Duration::from_secs(3);
    let clients: Vec<_> = (0..4)
        .map(|i| tokio::spawn(read_all_workspaces(addr.clone(), i, until)))
        .collect();
    let mut sent_errors = 0;
    for c in clients {
        let (statements, errors) = c.await.expect("client task");
        assert!(statements >= WORKSPACES, "each client read every workspace");
        sent_errors += errors;
    }

    let mut admin = proxy.connect("admin", None).await;
    let deadline = Instant::now() + Duration::from_secs(5);
    let rows = loop {
        let rows: Vec<mysql_async::Row> = admin
            .query("SHOW WORKSPACES WITH ERRORS")
            .await
            .expect("SHOW WORKSPACES WITH ERRORS");
        if rows.len() == BROKEN.len() || Instant::now() > deadline {
            break rows;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let listed: BTreeSet<u64> = rows.iter().map(|r| number(r, "Workspace")).collect();
    assert_eq!(
        listed,
        BTreeSet::from(BROKEN),
        "exactly the broken workspaces"
    );
    let mut counted = 0;
    for r in &rows {
        let ws = number(r, "Workspace");
        assert_eq!(cell(r, "Keyspace").as_deref(), Some("tenants"));
        assert_eq!(cell(r, "Cluster"), Some(owner(&vs, ws)), "ws {ws}");
        assert_eq!(cell(r, "Last_error_code").as_deref(), Some("1146"));
        assert!(
            cell(r, "Last_error").is_some_and(|m| m.contains(&format!("ws_{ws}.notes"))),
            "{r:?}"
        );
        let errors = number(r, "Errors_60s");
        assert_eq!(
            number(r, "Statements_60s"),
            errors,
            "every read of ws {ws} failed"
        );
        assert_eq!(cell(r, "Error_rate").as_deref(), Some("1.000"));
        assert!(number(r, "Last_error_s") <= 10);
        counted += errors;
    }
    assert_eq!(
        counted, sent_errors,
        "every error the clients got is counted"
    );

    let metrics = metrics_body(metrics_addr).await;
    assert!(
        metrics
            .lines()
            .any(|l| l == format!("shardgate_workspaces_with_errors {}", BROKEN.len())),
        "{metrics}"
    );

    let clusters: Vec<mysql_async::Row> = admin.query("SHOW CLUSTERS").await.expect("clusters");
    assert_eq!(clusters.len(), 2);
    for r in &clusters {
        assert_eq!(cell(r, "Health").as_deref(), Some("healthy"), "{r:?}");
    }

    let broken: Vec<mysql_async::Row> = admin
        .query(format!("SHOW WORKSPACE {}", BROKEN[0]))
        .await
        .expect("SHOW WORKSPACE broken");
    assert_eq!(broken.len(), 1, "one sharded keyspace");
    let b = &broken[0];
    assert_eq!(cell(b, "Cluster"), Some(owner(&vs, BROKEN[0])));
    assert_eq!(cell(b, "Database"), Some(format!("ws_{}", BROKEN[0])));
    assert_eq!(cell(b, "Placement").as_deref(), Some("hashed"));
    assert_eq!(cell(b, "Health").as_deref(), Some("healthy"));
    assert_eq!(cell(b, "Intent").as_deref(), Some("serving"));
    assert!(number(b, "Errors_60s") > 0);
    assert_eq!(cell(b, "Last_error_code").as_deref(), Some("1146"));

    let good: Vec<mysql_async::Row> = admin
        .query("SHOW WORKSPACE 7 IN KEYSPACE tenants")
        .await
        .expect("SHOW WORKSPACE good");
    assert_eq!(good.len(), 1);
    let g = &good[0];
    assert_eq!(cell(g, "Placement").as_deref(), Some("pinned"));
    assert_eq!(cell(g, "Cluster").as_deref(), Some("c2"));
    assert!(number(g, "Statements_60s") > 0);
    assert_eq!(number(g, "Errors_60s"), 0);
    assert_eq!(cell(g, "Last_error_code"), None);

    let (code, message) = common::server_error(&mut admin, "SHOW WORKSPACE seven").await;
    assert_eq!(code, 1105, "{message}");
    assert!(message.contains("usage: SHOW WORKSPACE"), "{message}");
    let (code, _) = common::server_error(&mut admin, "SHOW WORKSPACE 7 IN KEYSPACE nope").await;
    assert_eq!(code, 1105);

    // An application user may not look.
    let mut app = proxy.connect("app", None).await;
    for stmt in ["SHOW WORKSPACES WITH ERRORS", "SHOW WORKSPACE 3"] {
        let (code, message) = common::server_error(&mut app, stmt).await;
        assert_eq!(code, 1227, "{stmt}: {message}");
    }
    drop(app);
    drop(admin);
    proxy.stop().await;
}
