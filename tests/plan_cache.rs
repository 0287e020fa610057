//! The plan cache on real MariaDB shards: point selects for many workspaces, sent as
//! text queries and as prepared executes, each reach the shard that owns its workspace
//! while most of them are planned from the cache; a vschema change that moves a table
//! to another sharding column is obeyed by the very next statement, not by a plan
//! cached under the old map.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use mysql_async::prelude::*;
use shardgate::config::ProxyConfig;
use shardgate::vschema::VSchema;

async fn metrics(addr: std::net::SocketAddr) -> String {
    tokio::time::timeout(Duration::from_secs(10), common::http_get(addr, "/metrics"))
        .await
        .expect("/metrics answers within 10 s")
}

fn value(body: &str, series: &str) -> f64 {
    body.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or_else(|| panic!("no series {series} in:\n{body}"))
}

const HITS: &str = "shardgate_plan_cache_hits_total";
const MISSES: &str = "shardgate_plan_cache_misses_total";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cached_plans_route_to_the_owning_shard_and_a_vschema_change_replans() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("the scenario finishes within 240 s");
}

async fn scenario() {
    let servers = common::start_servers(2);
    let toml = common::ShardedVSchema::new(&servers).build();
    for s in &servers {
        s.sql(
            "CREATE TABLE app.items (workspace_id BIGINT NOT NULL, id BIGINT NOT NULL, \
             owner BIGINT NOT NULL, val VARCHAR(60), PRIMARY KEY (workspace_id, id))",
        )
        .expect("create app.items");
    }
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let ks = vs.keyspace("app").expect("keyspace app");
    let shard_of = |w: u64| ks.shard_index_for_workspace(w);
    // Each workspace's row exists only on the shard that owns it, and names that shard.
    let workspaces: Vec<u64> = (1..=40).collect();
    for &w in &workspaces {
        let s = shard_of(w);
        servers[s]
            .sql(&format!(
                "INSERT INTO app.items VALUES ({w}, 1, 0, 'shard{s}-ws{w}')"
            ))
            .expect("insert a workspace's row on its shard");
    }
    let on = |s: usize| workspaces.iter().filter(|&&w| shard_of(w) == s).count();
    assert!(on(0) > 5 && on(1) > 5, "both shards own workspaces");

    let metrics_addr = common::free_local_addr();
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vs.clone(),
    );
    config.metrics_listen = Some(metrics_addr);
    let proxy = common::start_proxy_config(config).await;
    let mut c = proxy.connect("app", Some("app")).await;

    let before = metrics(metrics_addr).await;
    let hits_before = value(&before, HITS);
    for &w in &workspaces {
        let sql = format!("SELECT val FROM items WHERE workspace_id = {w} AND id = 1");
        let got: Option<String> = c.query_first(&sql).await.expect("text point select");
        assert_eq!(got, Some(format!("shard{}-ws{w}", shard_of(w))), "{sql}");
        let got: Option<String> = c
            .exec_first(
                "SELECT val FROM items WHERE workspace_id = ? AND id = ?",
                (w, 1),
            )
            .await
            .expect("prepared point select");
        assert_eq!(
            got,
            Some(format!("shard{}-ws{w}", shard_of(w))),
            "execute for {w}"
        );
    }
    let after = metrics(metrics_addr).await;
    let hits = value(&after, HITS) - hits_before;
    // 80 statements of two shapes: each shape's first two are planned in full.
    assert!(hits >= 70.0, "hits grew by {hits}:\n{after}");
    assert!(value(&after, "shardgate_plan_cache_entries") >= 2.0);

    // Pairs (workspace, owner) on different shards, with a row on each: the one on the
    // workspace's shard says so, the one on the owner's shard too.
    let pairs: Vec<(u64, u64)> = workspaces
        .iter()
        .filter_map(|&w| {
            let o = (1000 + 10 * w..2000 + 10 * w).find(|&o| shard_of(o) != shard_of(w))?;
            Some((w, o))
        })
        .take(8)
        .collect();
    assert!(pairs.len() >= 4, "{pairs:?}");
    for &(w, o) in &pairs {
        servers[shard_of(w)]
            .sql(&format!(
                "INSERT INTO app.items VALUES ({w}, 2, {o}, 'by-workspace')"
            ))
            .expect("row on the workspace's shard");
        servers[shard_of(o)]
            .sql(&format!(
                "INSERT INTO app.items VALUES ({w}, 2, {o}, 'by-owner')"
            ))
            .expect("row on the owner's shard");
    }
    let by_owner = |w: u64, o: u64| {
        format!("SELECT val FROM items WHERE workspace_id = {w} AND owner = {o} AND id = 2")
    };
    let (last, warm) = pairs.split_last().expect("pairs");
    for &(w, o) in warm {
        let got: Option<String> = c.query_first(by_owner(w, o)).await.expect("select");
        assert_eq!(
            got.as_deref(),
            Some("by-workspace"),
            "routed by workspace_id"
        );
    }
    let warm_hits = value(&metrics(metrics_addr).await, HITS);

    let mut admin = proxy.connect("admin", None).await;
    admin
        .query_drop("ALTER VSCHEMA ADD TABLE app.items SHARDED BY owner ALLOW DATA MOVEMENT")
        .await
        .expect("the vschema change is taken");
    // The very next statement of the cached shape is routed by the new column.
    let (w, o) = *last;
    let got: Option<String> = c.query_first(by_owner(w, o)).await.expect("select");
    assert_eq!(
        got.as_deref(),
        Some("by-owner"),
        "routed by owner after the change"
    );
    let body = metrics(metrics_addr).await;
    assert_eq!(
        value(&body, HITS),
        warm_hits,
        "planned afresh, not from the cache"
    );
    for &(w, o) in warm {
        let got: Option<String> = c.query_first(by_owner(w, o)).await.expect("select");
        assert_eq!(
            got.as_deref(),
            Some("by-owner"),
            "routed by owner after the change"
        );
    }
    let body = metrics(metrics_addr).await;
    assert!(
        value(&body, HITS) > warm_hits,
        "the new map's plans are cached too"
    );
    assert!(value(&body, MISSES) > value(&after, MISSES));
    drop(c);
    drop(admin);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plan_cache_size_0_in_the_config_file_turns_the_cache_off() {
    let servers = common::start_servers(1);
    let toml = common::ShardedVSchema::new(&servers).build();
    servers[0]
        .sql("CREATE TABLE app.items (workspace_id BIGINT NOT NULL, id BIGINT NOT NULL, PRIMARY KEY (workspace_id, id))")
        .expect("create app.items");
    let metrics_addr = common::free_local_addr();
    let proxy = common::spawn_proxy_binary(
        &toml,
        &format!("metrics_listen = \"{metrics_addr}\"\nplan_cache_size = 0"),
    );
    let opts = common::mysql_opts(&proxy.addr_string(), "app", "app", Some("app"));
    let mut c = mysql_async::Conn::new(opts).await.expect("connect");
    for w in 1..=10 {
        let n: Option<u64> = c
            .query_first(format!(
                "SELECT COUNT(*) FROM items WHERE workspace_id = {w}"
            ))
            .await
            .expect("point select");
        assert_eq!(n, Some(0));
    }
    let body = metrics(metrics_addr).await;
    assert_eq!(value(&body, HITS), 0.0, "{body}");
    assert_eq!(value(&body, MISSES), 0.0, "{body}");
    assert_eq!(value(&body, "shardgate_plan_cache_entries"), 0.0);
    drop(c);
}
