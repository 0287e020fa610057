//! `GET /metrics`: what an SRE's Prometheus scrapes during an incident. Two proxies
//! run in this one process, as they do in many tests: each one's `/metrics` must show
//! its own traffic only.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use mysql_async::prelude::*;
use shardgate::config::ProxyConfig;
use shardgate::vschema::VSchema;

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    tokio::time::timeout(
        std::time::Duration::from_secs(10),
        common::http_get(addr, path),
    )
    .await
    .expect("/metrics answers within 10 s")
}

/// The value of a series (name and labels exactly as rendered), if present.
fn find(body: &str, series: &str) -> Option<f64> {
    body.lines().find_map(|l| {
        l.strip_prefix(series)
            .filter(|rest| rest.starts_with(' '))
            .and_then(|v| v.trim().parse().ok())
    })
}

fn value(body: &str, series: &str) -> f64 {
    find(body, series).unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
}

/// `shardgate_statement_duration_seconds` buckets of a (cluster, keyspace): (le, count)
/// in the order rendered.
fn buckets(body: &str, labels: &str) -> Vec<(String, f64)> {
    let prefix = format!("shardgate_statement_duration_seconds_bucket{{{labels},le=\"");
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            Some((le.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

async fn proxy_with_metrics(
    server: &shardgate::demo::localdb::LocalMariaDb,
) -> (common::Proxy, std::net::SocketAddr) {
    let toml = format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n[keyspaces.app]\ncluster = \"c1\"\n",
        server.addr()
    );
    let metrics_addr = common::free_local_addr();
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        VSchema::from_toml_str(&toml).expect("vschema"),
    );
    config.metrics_listen = Some(metrics_addr);
    (common::start_proxy_config(config).await, metrics_addr)
}

const APP: &str = "cluster=\"c1\",keyspace=\"app\"";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_statements_errors_latency_pools_and_migrations_per_proxy() {
    let servers = common::start_servers(1);
    servers[0].sql("CREATE DATABASE app").expect("db");
    let (proxy, metrics_addr) = proxy_with_metrics(&servers[0]).await;
    let (other, other_metrics) = proxy_with_metrics(&servers[0]).await;
    let mut c = proxy.connect("app", Some("app")).await;
    let mut o = other.connect("app", Some("app")).await;
    let before = get(metrics_addr, "/metrics").await;
    let other_before = get(other_metrics, "/metrics").await;
    let stmts_before =
        find(&before, &format!("shardgate_statements_total{{{APP}}}")).unwrap_or(0.0);
    let count_before = find(
        &before,
        &format!("shardgate_statement_duration_seconds_count{{{APP}}}"),
    )
    .unwrap_or(0.0);
    let cluster_before = value(
        &before,
        "shardgate_cluster_statements_total{cluster=\"c1\"}",
    );
    let errors_series = format!("shardgate_statement_errors_total{{{APP},code=\"1146\"}}");
    let errors_before = find(&before, &errors_series).unwrap_or(0.0);

    for _ in 0..25 {
        let _: Option<u32> = c.query_first("SELECT 1").await.expect("query");
    }
    let (code, _) = common::server_error(&mut c, "SELECT * FROM no_such_table").await;
    assert_eq!(code, 1146, "the backend's own error reaches the client");
    for _ in 0..3 {
        let _: Option<u32> = o.query_first("SELECT 2").await.expect("query");
    }

    let body = get(metrics_addr, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    // 25 answers and one error, each counted once, under the session's keyspace.
    assert_eq!(
        value(&body, &format!("shardgate_statements_total{{{APP}}}")) - stmts_before,
        26.0
    );
    assert_eq!(value(&body, &errors_series) - errors_before, 1.0);
    assert_eq!(
        value(
            &body,
            &format!("shardgate_statement_duration_seconds_count{{{APP}}}")
        ) - count_before,
        26.0
    );
    assert!(
        body.contains("# TYPE shardgate_statement_duration_seconds histogram"),
        "{body}"
    );
    let b = buckets(&body, APP);
    assert!(b.len() > 10, "real buckets: {b:?}");
    assert_eq!(b.last().map(|(le, _)| le.as_str()), Some("+Inf"));
    assert!(
        b.windows(2).all(|w| w[0].1 <= w[1].1),
        "cumulative buckets: {b:?}"
    );
    assert_eq!(
        b.last().map(|(_, n)| *n),
        Some(value(
            &body,
            &format!("shardgate_statement_duration_seconds_count{{{APP}}}")
        ))
    );
    assert!(
        value(
            &body,
            &format!("shardgate_statement_duration_seconds_sum{{{APP}}}")
        ) > 0.0
    );
    // The cluster's own totals as before: a SQL error is no failure of the cluster's.
    let cluster_after = value(&body, "shardgate_cluster_statements_total{cluster=\"c1\"}");
    assert_eq!(cluster_after - cluster_before, 26.0);
    assert_eq!(
        value(&body, "shardgate_cluster_failures_total{cluster=\"c1\"}"),
        0.0
    );
    assert!(value(&body, "shardgate_cluster_p99_seconds{cluster=\"c1\"}") > 0.0);
    assert_eq!(value(&body, "shardgate_client_connections"), 1.0);
    assert!(
        value(
            &body,
            "shardgate_pool_connections{cluster=\"c1\",state=\"open\"}"
        ) >= 1.0
    );
    assert!(body.contains("shardgate_pool_connections{cluster=\"c1\",state=\"leased\"}"));
    assert_eq!(value(&body, "shardgate_pool_waiters{cluster=\"c1\"}"), 0.0);
    assert_eq!(
        value(
            &body,
            "shardgate_cluster_health{cluster=\"c1\",state=\"healthy\"}"
        ),
        1.0
    );
    assert_eq!(
        value(
            &body,
            "shardgate_cluster_intent{cluster=\"c1\",intent=\"serving\"}"
        ),
        1.0
    );
    assert_eq!(
        value(&body, "shardgate_cluster_buffered{cluster=\"c1\"}"),
        0.0
    );
    assert_eq!(value(&body, "shardgate_vschema_version"), 1.0);
    assert!(
        body.contains("shardgate_migrations_queue_depth{cluster=\"c1\"}"),
        "{body}"
    );

    // The other proxy saw its own 3 statements and nothing of these.
    let other_body = get(other_metrics, "/metrics").await;
    let other_stmts =
        |b: &str| find(b, &format!("shardgate_statements_total{{{APP}}}")).unwrap_or(0.0);
    assert_eq!(other_stmts(&other_body) - other_stmts(&other_before), 3.0);
    assert_eq!(find(&other_body, &errors_series), None, "{other_body}");
    assert_eq!(value(&other_body, "shardgate_client_connections"), 1.0);

    assert!(get(metrics_addr, "/other")
        .await
        .starts_with("HTTP/1.1 404"));
    drop(c);
    drop(o);
    proxy.stop().await;
    other.stop().await;
}
