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
    proxy_with_metrics_and_pool(server, shardgate::config::PoolConfig::default()).await
}

async fn proxy_with_metrics_and_pool(
    server: &shardgate::demo::localdb::LocalMariaDb,
    pool: shardgate::config::PoolConfig,
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
    config.pool = pool;
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

/// The `le` and count of each `shardgate_pool_wait_seconds` bucket of cluster c1.
fn wait_buckets(body: &str) -> Vec<(String, f64)> {
    let prefix = "shardgate_pool_wait_seconds_bucket{cluster=\"c1\",le=\"";
    body.lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(prefix)?;
            let (le, v) = rest.split_once("\"} ")?;
            Some((le.to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_show_how_long_statements_waited_for_a_pool_connection_and_who_gave_up() {
    let servers = common::start_servers(1);
    servers[0].sql("CREATE DATABASE app").expect("db");
    let pool = shardgate::config::PoolConfig {
        max_connections: 1,
        checkout_timeout: std::time::Duration::from_millis(700),
        ..shardgate::config::PoolConfig::default()
    };
    let (proxy, metrics_addr) = proxy_with_metrics_and_pool(&servers[0], pool).await;
    let mut holder = proxy.connect("app", Some("app")).await;
    let mut waiter = proxy.connect("app", Some("app")).await;
    let body = get(metrics_addr, "/metrics").await;
    // No checkout has waited: every pool's series is there from the start, at 0.
    assert!(wait_buckets(&body).iter().all(|(_, n)| *n == 0.0), "{body}");
    assert_eq!(
        value(&body, "shardgate_pool_wait_seconds_count{cluster=\"c1\"}"),
        0.0
    );
    assert_eq!(
        value(
            &body,
            "shardgate_pool_checkout_timeouts_total{cluster=\"c1\"}"
        ),
        0.0
    );

    // The holder keeps the only connection in a transaction for 300 ms: the waiter's
    // statement waits for it, then runs.
    holder.query_drop("BEGIN").await.expect("begin");
    let _: Option<u32> = holder.query_first("SELECT 1").await.expect("select");
    let started = std::time::Instant::now();
    let waited = tokio::spawn(async move {
        let r: Option<u32> = waiter.query_first("SELECT 2").await.expect("waited select");
        (r, waiter)
    });
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    holder.query_drop("COMMIT").await.expect("commit");
    let (answer, mut waiter) = waited.await.expect("task");
    assert_eq!(answer, Some(2));
    assert!(started.elapsed() >= std::time::Duration::from_millis(250));

    // Held again, longer than the checkout timeout: the waiter gives up.
    holder.query_drop("BEGIN").await.expect("begin");
    let _: Option<u32> = holder.query_first("SELECT 1").await.expect("select");
    let (code, message) = common::server_error(&mut waiter, "SELECT 3").await;
    assert_eq!(code, 1105, "{message}");
    assert!(message.contains("no free connection"), "{message}");
    holder.query_drop("COMMIT").await.expect("commit");

    let body = get(metrics_addr, "/metrics").await;
    assert!(
        body.contains("# TYPE shardgate_pool_wait_seconds histogram"),
        "{body}"
    );
    let b = wait_buckets(&body);
    assert!(b.len() > 10, "real buckets: {b:?}");
    assert!(b.windows(2).all(|w| w[0].1 <= w[1].1), "cumulative: {b:?}");
    let count = value(&body, "shardgate_pool_wait_seconds_count{cluster=\"c1\"}");
    assert_eq!(
        count, 2.0,
        "one wait that got a connection, one that gave up"
    );
    assert_eq!(
        b.last().map(|(le, n)| (le.as_str(), *n)),
        Some(("+Inf", 2.0))
    );
    // Neither wait was shorter than 200 ms; the sum holds about 0.3 s and 0.7 s.
    let short = b.iter().find(|(le, _)| le == "0.2").map(|(_, n)| *n);
    assert_eq!(short, Some(0.0), "{b:?}");
    let sum = value(&body, "shardgate_pool_wait_seconds_sum{cluster=\"c1\"}");
    assert!((0.9..5.0).contains(&sum), "sum {sum}");
    assert_eq!(
        value(
            &body,
            "shardgate_pool_checkout_timeouts_total{cluster=\"c1\"}"
        ),
        1.0
    );
    drop(holder);
    drop(waiter);
    proxy.stop().await;
}
