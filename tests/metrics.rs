//! `GET /metrics`: what an SRE's Prometheus scrapes during an incident.

mod common;

use mysql_async::prelude::*;
use shardgate::config::ProxyConfig;
use shardgate::vschema::VSchema;

async fn get(addr: std::net::SocketAddr, path: &str) -> String {
    common::http_get(addr, path).await
}

fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_statements_clients_pools_and_migrations_per_cluster() {
    let servers = common::start_servers(1);
    servers[0].sql("CREATE DATABASE app").expect("db");
    let toml = format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n[keyspaces.app]\ncluster = \"c1\"\n",
        servers[0].addr()
    );
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port");
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        VSchema::from_toml_str(&toml).expect("vschema"),
    );
    config.metrics_listen = Some(metrics_addr);
    let proxy = common::start_proxy_config(config).await;
    let mut c = proxy.connect("app", Some("app")).await;
    let before = value(
        &get(metrics_addr, "/metrics").await,
        "shardgate_cluster_statements_total{cluster=\"c1\"}",
    );
    for _ in 0..25 {
        let _: Option<u32> = c.query_first("SELECT 1").await.expect("query");
    }
    let body = get(metrics_addr, "/metrics").await;
    assert!(body.starts_with("HTTP/1.1 200 OK"), "{body}");
    let after = value(&body, "shardgate_cluster_statements_total{cluster=\"c1\"}");
    assert!(after - before >= 25.0, "{before} -> {after}");
    assert_eq!(value(&body, "shardgate_client_connections"), 1.0);
    assert!(
        value(
            &body,
            "shardgate_pool_connections{cluster=\"c1\",state=\"open\"}"
        ) >= 1.0
    );
    assert_eq!(
        value(&body, "shardgate_cluster_failures_total{cluster=\"c1\"}"),
        0.0
    );
    assert!(value(&body, "shardgate_cluster_p99_seconds{cluster=\"c1\"}") > 0.0);
    assert!(
        body.contains("shardgate_migrations_queue_depth{cluster=\"c1\"}"),
        "{body}"
    );
    assert!(get(metrics_addr, "/other")
        .await
        .starts_with("HTTP/1.1 404"));
    drop(c);
    proxy.stop().await;
}
