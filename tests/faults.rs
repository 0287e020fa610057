//! Bulkheads: a hanging cluster makes only its own statements fail (after the
//! configured deadlines), never the other clusters' statements; when it comes back,
//! shardgate reconnects by itself.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::config::PoolConfig;
use shardgate::vschema::VSchema;

fn owner(vs: &VSchema, ws: u64) -> usize {
    let c = &vs
        .keyspace("app")
        .expect("app")
        .shard_for_workspace(ws)
        .cluster;
    c[1..].parse::<usize>().expect("cN") - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hanging_cluster_fails_its_own_statements_and_never_the_others() {
    let servers = common::start_servers(2);
    let toml = common::ShardedVSchema::new(&servers)
        .table("items", "workspace_id")
        .build();
    for s in &servers {
        s.sql("CREATE TABLE app.items (id INT PRIMARY KEY, workspace_id BIGINT NOT NULL)")
            .expect("create");
    }
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let healthy_ws = (1..100u64).find(|&w| owner(&vs, w) == 0).expect("ws on 0");
    let hanging_ws = (1..100u64).find(|&w| owner(&vs, w) == 1).expect("ws on 1");
    let pool = PoolConfig {
        max_connections: 8,
        checkout_timeout: Duration::from_millis(1500),
        connect_timeout: Duration::from_millis(1000),
        // Long enough that the healthy cluster's 30 statements finish first even on a
        // loaded 2-core machine; the hanging statement still ends well within 10 s.
        query_timeout: Some(Duration::from_millis(4000)),
        idle_timeout: Duration::from_secs(300),
        ..PoolConfig::default()
    };
    let proxy = common::start_proxy_with(vs, pool).await;
    let addr = proxy.addr.to_string();
    let opts = || common::mysql_opts(&addr, "app", "app", Some("app"));

    let mut a = mysql_async::Conn::new(opts()).await.expect("connect a");
    let mut b = mysql_async::Conn::new(opts()).await.expect("connect b");
    for (conn, ws) in [(&mut a, healthy_ws), (&mut b, hanging_ws)] {
        conn.query_drop(format!(
            "INSERT INTO items (id, workspace_id) VALUES (1, {ws})"
        ))
        .await
        .expect("insert while healthy");
    }

    // Cluster c2 stops answering (SIGSTOP: its sockets stay open, nothing comes back).
    servers[1].pause().expect("pause");
    let hanging = tokio::spawn(async move {
        let started = Instant::now();
        let r = b
            .query_drop(format!(
                "SELECT * FROM items WHERE workspace_id = {hanging_ws}"
            ))
            .await;
        (r, started.elapsed(), b)
    });

    // Meanwhile the healthy cluster serves many statements, from old and new sessions.
    let started = Instant::now();
    let mut healthy_done = 0;
    for i in 0..30u32 {
        if i % 10 == 0 {
            let mut fresh = mysql_async::Conn::new(opts()).await.expect("new session");
            let n: Option<u32> = fresh
                .query_first(format!(
                    "SELECT COUNT(*) FROM items WHERE workspace_id = {healthy_ws}"
                ))
                .await
                .expect("healthy cluster from a new session");
            assert_eq!(n, Some(1));
        }
        let n: Option<u32> = a
            .query_first(format!(
                "SELECT COUNT(*) FROM items WHERE workspace_id = {healthy_ws}"
            ))
            .await
            .expect("healthy cluster");
        assert_eq!(n, Some(1));
        healthy_done += 1;
    }
    let healthy_elapsed = started.elapsed();
    let (result, hang_elapsed, mut b) = hanging.await.expect("join");
    assert_eq!(healthy_done, 30);
    assert!(
        healthy_elapsed < hang_elapsed,
        "the healthy cluster finished its work ({healthy_elapsed:?}) while the other was still hanging ({hang_elapsed:?})"
    );
    match result {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!((e.code, e.state.as_str()), (1969, "70100"), "{}", e.message);
            assert!(e.message.contains("c2"), "names the cluster: {}", e.message);
        }
        other => panic!("expected a query timeout, got {other:?}"),
    }
    assert!(
        hang_elapsed < Duration::from_secs(10),
        "bounded by query_timeout: {hang_elapsed:?}"
    );

    // The same session goes on: a new statement for the hanging cluster fails within the
    // connect deadline, one for the healthy cluster works.
    let started = Instant::now();
    let r = b
        .query_drop(format!(
            "SELECT * FROM items WHERE workspace_id = {hanging_ws}"
        ))
        .await;
    assert!(matches!(r, Err(mysql_async::Error::Server(_))), "{r:?}");
    assert!(started.elapsed() < Duration::from_secs(10));
    let n: Option<u32> = b
        .query_first(format!(
            "SELECT COUNT(*) FROM items WHERE workspace_id = {healthy_ws}"
        ))
        .await
        .expect("same session, healthy cluster");
    assert_eq!(n, Some(1));

    // The cluster comes back: shardgate reconnects without help.
    servers[1].resume().expect("resume");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let r: Result<Option<u32>, _> = b
            .query_first(format!(
                "SELECT COUNT(*) FROM items WHERE workspace_id = {hanging_ws}"
            ))
            .await;
        match r {
            Ok(n) => {
                assert_eq!(n, Some(1));
                break;
            }
            Err(e) if Instant::now() < deadline => {
                tracing::debug!("not back yet: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("cluster c2 never came back through the proxy: {e}"),
        }
    }
    drop(a);
    drop(b);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_makes_statements_wait_then_fail_with_a_clear_error() {
    let servers = common::start_servers(1);
    servers[0]
        .sql("CREATE DATABASE IF NOT EXISTS app")
        .expect("db");
    let toml = format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n\
         [keyspaces.app]\ncluster = \"c1\"\n",
        servers[0].addr()
    );
    let pool = PoolConfig {
        max_connections: 2,
        checkout_timeout: Duration::from_millis(800),
        ..PoolConfig::default()
    };
    let proxy = common::start_proxy_with(VSchema::from_toml_str(&toml).expect("vs"), pool).await;
    let addr = proxy.addr.to_string();
    let opts = || common::mysql_opts(&addr, "app", "app", Some("app"));
    // A third session logs in first (a driver's own start-up queries need a backend).
    let mut third = mysql_async::Conn::new(opts()).await.expect("connect");
    // Two sessions hold the two connections in open transactions.
    let mut holders = Vec::new();
    for _ in 0..2 {
        let mut c = mysql_async::Conn::new(opts()).await.expect("connect");
        c.query_drop("BEGIN").await.expect("begin");
        c.query_drop("SELECT 1")
            .await
            .expect("first statement pins");
        holders.push(c);
    }
    let started = Instant::now();
    match third.query_drop("SELECT 1").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(e.code, 1105);
            assert!(e.message.contains("no free connection"), "{}", e.message);
        }
        other => panic!("expected a pool timeout, got {other:?}"),
    }
    assert!(
        started.elapsed() >= Duration::from_millis(700),
        "it waited for the checkout deadline"
    );
    // A holder commits: its connection goes back and the waiting session is served.
    holders[0].query_drop("COMMIT").await.expect("commit");
    let v: Option<u32> = third
        .query_first("SELECT 5")
        .await
        .expect("served after a release");
    assert_eq!(v, Some(5));
    drop(holders);
    drop(third);
    proxy.stop().await;
}
