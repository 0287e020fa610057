//! Traffic control against real MariaDB: a stalled (SIGSTOP) or crashed (SIGKILL)
//! cluster is seen `down` within seconds while 8 clients keep loading every cluster;
//! its workspaces fail fast with 1053 and the other clusters see no error; it comes
//! back on its own. A slow cluster is `degraded` by its p99 and holds migrations back.
//! `DRAIN CLUSTER` lets an open transaction commit, refuses new statements (or buffers
//! them), and is kept across a restart of the proxy.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::config::{PoolConfig, ProxyConfig};
use shardgate::demo::localdb::{LocalDbOptions, LocalMariaDb};
use shardgate::health::HealthConfig;
use shardgate::traffic::OnUnavailable;
use shardgate::vschema::VSchema;

/// The cluster (0-based server index) that owns `ws` in keyspace `app`.
fn owner(vs: &VSchema, ws: u64) -> usize {
    let shard = vs.keyspace("app").expect("app").shard_for_workspace(ws);
    shard.cluster[1..].parse::<usize>().expect("cluster cN") - 1
}

/// `servers` under keyspace `app` with `messages` (one row per workspace 1..=64).
fn setup(servers: &[LocalMariaDb]) -> (String, VSchema) {
    let toml = common::vschema_with_messages(servers);
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    for ws in 1..=64u64 {
        servers[owner(&vs, ws)]
            .sql(&format!(
                "INSERT INTO app.messages (workspace_id, body) VALUES ({ws}, 'hello {ws}')"
            ))
            .expect("insert");
    }
    (toml, vs)
}

fn config(vs: &VSchema, pool: PoolConfig, health: HealthConfig) -> ProxyConfig {
    let mut c = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vs.clone(),
    );
    c.pool = pool;
    c.health = health;
    c.max_client_connections = 200;
    c
}

fn pool(query_timeout_ms: u64) -> PoolConfig {
    PoolConfig {
        checkout_timeout: Duration::from_millis(2000),
        connect_timeout: Duration::from_millis(1000),
        query_timeout: Some(Duration::from_millis(query_timeout_ms)),
        ..PoolConfig::default()
    }
}

/// `SHOW CLUSTERS` as (cluster -> (health, intent, reason)).
async fn clusters(admin: &mut mysql_async::Conn) -> HashMap<String, (String, String, String)> {
    let rows: Vec<mysql_async::Row> = admin.query("SHOW CLUSTERS").await.expect("SHOW CLUSTERS");
    rows.into_iter()
        .map(|r| {
            let s = |i: usize| r.get::<Option<String>, _>(i).flatten().unwrap_or_default();
            (s(0), (s(2), s(3), s(4)))
        })
        .collect()
}

/// Polls `SHOW CLUSTERS` until `cluster` has health `state`; returns how long it took,
/// or panics after `limit`.
async fn wait_health(
    admin: &mut mysql_async::Conn,
    cluster: &str,
    state: &str,
    since: Instant,
    limit: Duration,
) -> Duration {
    loop {
        let all = clusters(admin).await;
        if all.get(cluster).is_some_and(|c| c.0 == state) {
            return since.elapsed();
        }
        assert!(
            since.elapsed() < limit,
            "{cluster} not {state} within {limit:?}: {all:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// One statement's outcome as a client saw it.
#[derive(Debug, Clone)]
struct Sample {
    cluster: usize,
    at: Instant,
    took: Duration,
    error: Option<u16>,
}

/// 8 clients reading every workspace in turn until `stop`; the samples of all.
fn load(
    addr: String,
    vs: VSchema,
    stop: Arc<AtomicBool>,
    samples: Arc<Mutex<Vec<Sample>>>,
) -> Vec<tokio::task::JoinHandle<mysql_async::Conn>> {
    (0..8u64)
        .map(|client| {
            let (addr, vs, stop, samples) =
                (addr.clone(), vs.clone(), stop.clone(), samples.clone());
            tokio::spawn(async move {
                let mut c =
                    mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
                        .await
                        .expect("load client connects");
                let mut ws = client + 1;
                while !stop.load(Ordering::Relaxed) {
                    let at = Instant::now();
                    let r: Result<Option<String>, _> = c
                        .query_first(format!(
                            "SELECT body FROM messages WHERE workspace_id = {ws}"
                        ))
                        .await;
                    let error = match r {
                        Ok(body) => {
                            assert_eq!(body, Some(format!("hello {ws}")));
                            None
                        }
                        Err(mysql_async::Error::Server(e)) => Some(e.code),
                        Err(e) => panic!("client {client}: the connection broke: {e}"),
                    };
                    samples.lock().expect("samples").push(Sample {
                        cluster: owner(&vs, ws),
                        at,
                        took: at.elapsed(),
                        error,
                    });
                    ws = (ws + 7) % 64 + 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                c
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_cluster_is_down_within_seconds_and_only_its_workspaces_notice() {
    let servers = common::start_servers(4);
    let (_toml, vs) = setup(&servers);
    let proxy = common::start_proxy_config(config(&vs, pool(3000), HealthConfig::default())).await;
    let mut admin = proxy.connect("admin", None).await;
    let stop = Arc::new(AtomicBool::new(false));
    let samples = Arc::new(Mutex::new(Vec::new()));
    let clients = load(
        proxy.addr_string(),
        vs.clone(),
        stop.clone(),
        samples.clone(),
    );
    tokio::time::sleep(Duration::from_secs(2)).await;

    let stalled = 1; // cluster c2
    servers[stalled].pause().expect("SIGSTOP");
    let stopped_at = Instant::now();
    let to_down = wait_health(&mut admin, "c2", "down", stopped_at, Duration::from_secs(8)).await;
    eprintln!("SIGSTOP -> down: {to_down:?}");
    assert!(to_down <= Duration::from_secs(6), "down after {to_down:?}");
    let down_at = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    servers[stalled].resume().expect("SIGCONT");
    let resumed_at = Instant::now();
    let to_healthy = wait_health(
        &mut admin,
        "c2",
        "healthy",
        resumed_at,
        Duration::from_secs(8),
    )
    .await;
    eprintln!("SIGCONT -> healthy: {to_healthy:?}");
    assert!(
        to_healthy <= Duration::from_secs(6),
        "healthy after {to_healthy:?}"
    );
    // Its workspaces are served again on the same client connections.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let served_again = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::Relaxed);
    for c in clients {
        drop(c.await.expect("client task"));
    }

    let samples = samples.lock().expect("samples").clone();
    let others: Vec<&Sample> = samples.iter().filter(|s| s.cluster != stalled).collect();
    assert!(others.len() > 100, "load ran: {}", others.len());
    let other_errors: Vec<&&Sample> = others.iter().filter(|s| s.error.is_some()).collect();
    assert!(
        other_errors.is_empty(),
        "healthy clusters saw errors: {other_errors:?}"
    );
    let mine: Vec<&Sample> = samples.iter().filter(|s| s.cluster == stalled).collect();
    // While down: every statement for its workspaces fails fast with 1053.
    let while_down: Vec<&&Sample> = mine
        .iter()
        .filter(|s| s.at > down_at + Duration::from_millis(200) && s.at < resumed_at)
        .collect();
    assert!(
        !while_down.is_empty(),
        "statements for c2 while it was down"
    );
    for s in &while_down {
        assert_eq!(s.error, Some(1053), "{s:?}");
        assert!(s.took < Duration::from_millis(500), "fail fast: {s:?}");
    }
    // No client waited longer than the statement deadline (3 s) plus slack.
    let longest = samples.iter().map(|s| s.took).max().unwrap_or_default();
    assert!(
        longest < Duration::from_millis(4500),
        "longest wait {longest:?}"
    );
    // Before it was down: in flight at the stall, the deadline's 1969; a new
    // connection that could not be opened, 1105.
    for s in mine.iter().filter(|s| s.error.is_some()) {
        assert!(matches!(s.error, Some(1053 | 1969 | 1105)), "{s:?}");
    }
    let after: Vec<&&Sample> = mine.iter().filter(|s| s.at > served_again).collect();
    assert!(!after.is_empty(), "c2 served again");
    assert!(after.iter().all(|s| s.error.is_none()), "{after:?}");
    drop(admin);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_cluster_fails_fast_and_a_new_server_on_its_port_is_used_again() {
    let mut servers = common::start_servers(2);
    let (_toml, vs) = setup(&servers);
    // A webhook receiver: every POST, answered 200.
    let hook = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind hook");
    let hook_addr = hook.local_addr().expect("hook addr");
    let posts = Arc::new(Mutex::new(Vec::<String>::new()));
    let received = posts.clone();
    tokio::spawn(async move {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        while let Ok((mut s, _)) = hook.accept().await {
            let mut buf = vec![0u8; 8192];
            let mut got = 0;
            // Headers and a small body arrive together or nearly so.
            while let Ok(Ok(n)) =
                tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf[got..])).await
            {
                if n == 0 {
                    break;
                }
                got += n;
            }
            let text = String::from_utf8_lossy(&buf[..got]).into_owned();
            let _ = s
                .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                .await;
            received.lock().expect("posts").push(text);
        }
    });
    let health = HealthConfig {
        webhook: Some(format!("http://{hook_addr}/shardgate/health")),
        ..HealthConfig::default()
    };
    let proxy = common::start_proxy_config(config(&vs, pool(3000), health)).await;
    let mut admin = proxy.connect("admin", None).await;
    let mut app = proxy.connect("app", Some("app")).await;
    let ws = (1..=64u64)
        .find(|w| owner(&vs, *w) == 1)
        .expect("a workspace on c2");
    let sql = format!("SELECT body FROM messages WHERE workspace_id = {ws}");
    let _: Option<String> = app.query_first(&sql).await.expect("served before");
    let port = servers[1].port;
    servers[1].kill();
    let killed_at = Instant::now();
    let to_down = wait_health(&mut admin, "c2", "down", killed_at, Duration::from_secs(8)).await;
    eprintln!("SIGKILL -> down: {to_down:?}");
    let started = Instant::now();
    let (code, msg) = common::server_error(&mut app, &sql).await;
    assert!(started.elapsed() < Duration::from_millis(500), "fail fast");
    assert_eq!(code, 1053, "{msg}");
    assert!(
        msg.contains("cluster 'c2' is not serving") && msg.contains("retry"),
        "{msg}"
    );
    // A new server on the same port, with the workspace's data.
    let restarted = tokio::task::spawn_blocking(move || {
        LocalMariaDb::start(&LocalDbOptions {
            port: Some(port),
            ..LocalDbOptions::default()
        })
    })
    .await
    .expect("join")
    .expect("restart on the same port");
    restarted
        .sql(&format!(
            "CREATE DATABASE app; CREATE TABLE app.messages (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             workspace_id BIGINT NOT NULL, body VARCHAR(200)); \
             INSERT INTO app.messages (workspace_id, body) VALUES ({ws}, 'back')"
        ))
        .expect("data on the new server");
    let back_at = Instant::now();
    wait_health(&mut admin, "c2", "healthy", back_at, Duration::from_secs(8)).await;
    let body: Option<String> = app
        .query_first(&sql)
        .await
        .expect("served by the new server");
    assert_eq!(body.as_deref(), Some("back"));
    // The webhook heard every change of c2, in order.
    let deadline = Instant::now() + Duration::from_secs(3);
    let changes = loop {
        let seen: Vec<String> = posts.lock().expect("posts").clone();
        if seen.len() >= 3 || Instant::now() > deadline {
            break seen;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let to: Vec<&str> = changes
        .iter()
        .map(|p| {
            assert!(p.starts_with("POST /shardgate/health HTTP/1.1"), "{p}");
            assert!(p.contains("\"cluster\":\"c2\""), "{p}");
            ["degraded", "down", "healthy"]
                .into_iter()
                .find(|s| p.contains(&format!("\"to\":\"{s}\"")))
                .unwrap_or("?")
        })
        .collect();
    assert_eq!(to, ["degraded", "down", "healthy"], "{changes:?}");
    servers[1] = restarted;
    drop((admin, app));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_cluster_is_degraded_by_its_p99_and_holds_migrations_back() {
    let servers = common::start_servers(2);
    let (_toml, vs) = setup(&servers);
    let metrics = common::free_local_addr();
    let health = HealthConfig {
        degraded_p99: Duration::from_millis(100),
        min_statements: 5,
        ..HealthConfig::default()
    };
    let mut cfg = config(&vs, pool(10_000), health);
    cfg.metrics_listen = Some(metrics);
    let proxy = common::start_proxy_config(cfg).await;
    let mut admin = proxy.connect("admin", None).await;
    let ws = (1..=64u64)
        .find(|w| owner(&vs, *w) == 0)
        .expect("a workspace on c1");
    let stop = Arc::new(AtomicBool::new(false));
    let slow: Vec<_> = (0..4)
        .map(|_| {
            let (addr, stop) = (proxy.addr_string(), stop.clone());
            tokio::spawn(async move {
                let mut c =
                    mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
                        .await
                        .expect("connect");
                while !stop.load(Ordering::Relaxed) {
                    c.query_drop(format!(
                        "SELECT SLEEP(0.25) FROM messages WHERE workspace_id = {ws}"
                    ))
                    .await
                    .expect("slow statement");
                }
            })
        })
        .collect();
    let began = Instant::now();
    let took = wait_health(&mut admin, "c1", "degraded", began, Duration::from_secs(10)).await;
    eprintln!("slow traffic -> degraded: {took:?}");
    let reason = clusters(&mut admin).await["c1"].2.clone();
    assert!(reason.starts_with("p99 "), "{reason}");
    assert_eq!(clusters(&mut admin).await["c2"].0, "healthy");
    // The migration executor of c1 holds copies back for the same reason.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let body = common::http_get(metrics, "/metrics").await;
        let held = body.lines().any(|l| {
            l.starts_with("shardgate_migrations_throttled{cluster=\"c1\"")
                && l.contains("cluster degraded")
                && l.ends_with(" 1")
        });
        if held {
            break;
        }
        assert!(Instant::now() < deadline, "migrations not held:\n{body}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for t in slow {
        t.await.expect("slow client");
    }
    drop(admin);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drain_lets_an_open_transaction_commit_refuses_new_work_and_is_kept_across_restarts() {
    let servers = common::start_servers(2);
    let (_toml, vs) = setup(&servers);
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("traffic.toml");
    let mut cfg = config(&vs, pool(10_000), HealthConfig::default());
    cfg.traffic_state_file = Some(state.clone());
    let proxy = common::start_proxy_config(cfg.clone()).await;
    let mut admin = proxy.connect("admin", None).await;
    let ws = (1..=64u64)
        .find(|w| owner(&vs, *w) == 0)
        .expect("a workspace on c1");
    let other = (1..=64u64)
        .find(|w| owner(&vs, *w) == 1)
        .expect("a workspace on c2");
    let mut tx = proxy.connect("app", Some("app")).await;
    tx.query_drop("BEGIN").await.expect("begin");
    tx.query_drop(format!(
        "UPDATE messages SET body = 'committed' WHERE workspace_id = {ws}"
    ))
    .await
    .expect("update in the transaction");
    let drain_addr = proxy.addr_string();
    let drain = tokio::spawn(async move {
        let mut a = mysql_async::Conn::new(common::mysql_opts(&drain_addr, "admin", "admin", None))
            .await
            .expect("admin");
        let started = Instant::now();
        let row: Option<(String, String)> = a
            .query_first("DRAIN CLUSTER c1 WAIT 10 SECONDS")
            .await
            .expect("drain");
        (row, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    // New work for c1 is refused at once; c2 serves.
    let mut b = proxy.connect("app", Some("app")).await;
    let (code, msg) = common::server_error(
        &mut b,
        &format!("SELECT * FROM messages WHERE workspace_id = {ws}"),
    )
    .await;
    assert_eq!(code, 1053, "{msg}");
    assert!(msg.contains("draining by an operator"), "{msg}");
    let _: Option<String> = b
        .query_first(format!(
            "SELECT body FROM messages WHERE workspace_id = {other}"
        ))
        .await
        .expect("c2 serves");
    // The open transaction finishes within the deadline.
    tx.query_drop("COMMIT")
        .await
        .expect("commit while draining");
    let (row, took) = drain.await.expect("drain task");
    let (cluster, message) = row.expect("a row");
    assert_eq!(cluster, "c1");
    assert!(message.contains("0 killed"), "{message}");
    assert!(
        took < Duration::from_secs(5),
        "the drain ended with the transaction: {took:?}"
    );
    assert_eq!(
        common::direct_query(
            &servers[0],
            &format!("SELECT body FROM app.messages WHERE workspace_id = {ws}")
        )
        .trim(),
        "committed"
    );
    assert_eq!(clusters(&mut admin).await["c1"].1, "drained");
    // An app user may not act.
    let mut app = proxy.connect("app", Some("app")).await;
    let (code, _) = common::server_error(&mut app, "UNDRAIN CLUSTER c1").await;
    assert_eq!(code, 1227);
    drop((tx, b, app, admin));
    proxy.stop().await;

    // A restarted proxy keeps the cluster drained. (A session without a database
    // runs on the default keyspace's cluster, c1 here: the admin names `app`.)
    let proxy = common::start_proxy_config(cfg).await;
    let mut admin = proxy.connect("admin", Some("app")).await;
    assert_eq!(clusters(&mut admin).await["c1"].1, "drained");
    let mut b = proxy.connect("app", Some("app")).await;
    let (code, _) = common::server_error(
        &mut b,
        &format!("SELECT * FROM messages WHERE workspace_id = {ws}"),
    )
    .await;
    assert_eq!(code, 1053);
    admin
        .query_drop("UNDRAIN CLUSTER c1")
        .await
        .expect("undrain");
    let body: Option<String> = b
        .query_first(format!(
            "SELECT body FROM messages WHERE workspace_id = {ws}"
        ))
        .await
        .expect("served after UNDRAIN");
    assert_eq!(body.as_deref(), Some("committed"));
    let kept = std::fs::read_to_string(&state).expect("state file");
    assert!(kept.contains("intent = \"serving\""), "{kept}");
    drop((admin, b));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_deadline_closes_what_is_left_and_buffered_statements_wait_for_undrain() {
    let servers = common::start_servers(2);
    let (_toml, vs) = setup(&servers);
    let mut p = pool(10_000);
    p.on_unavailable = OnUnavailable::Buffer;
    p.buffer_timeout = Duration::from_secs(3);
    let proxy = common::start_proxy_config(config(&vs, p, HealthConfig::default())).await;
    let mut admin = proxy.connect("admin", None).await;
    let ws = (1..=64u64)
        .find(|w| owner(&vs, *w) == 0)
        .expect("a workspace on c1");
    // A transaction still open at the deadline is ended: its client learns it and the
    // server rolls it back.
    let mut tx = proxy.connect("app", Some("app")).await;
    tx.query_drop("BEGIN").await.expect("begin");
    tx.query_drop(format!(
        "UPDATE messages SET body = 'never' WHERE workspace_id = {ws}"
    ))
    .await
    .expect("update");
    let row: Option<(String, String)> = admin
        .query_first("DRAIN CLUSTER c1 WAIT 1 SECONDS")
        .await
        .expect("drain");
    let message = row.expect("row").1;
    assert!(
        message.contains("1 backend connection(s) still in use") && message.contains("1 killed"),
        "{message}"
    );
    let commit = tx.query_drop("COMMIT").await;
    assert!(
        commit.is_err(),
        "COMMIT after the drain closed the transaction must fail"
    );
    assert_eq!(
        common::direct_query(
            &servers[0],
            &format!("SELECT body FROM app.messages WHERE workspace_id = {ws}")
        )
        .trim(),
        format!("hello {ws}"),
        "rolled back"
    );
    // Buffered: a statement waits while drained and runs once undrained.
    let addr = proxy.addr_string();
    let waiter = tokio::spawn(async move {
        let mut c = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
            .await
            .expect("connect");
        let started = Instant::now();
        let r: Result<Option<String>, _> = c
            .query_first(format!(
                "SELECT body FROM messages WHERE workspace_id = {ws}"
            ))
            .await;
        (r.map_err(|e| e.to_string()), started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(800)).await;
    let buffered: Vec<mysql_async::Row> = admin.query("SHOW CLUSTERS").await.expect("show");
    let c1 = buffered
        .iter()
        .find(|r| r.get::<String, _>(0).as_deref() == Some("c1"))
        .expect("c1 row");
    assert_eq!(
        c1.get::<String, _>(13).as_deref(),
        Some("1"),
        "one statement buffered"
    );
    admin
        .query_drop("UNDRAIN CLUSTER c1")
        .await
        .expect("undrain");
    let (r, took) = waiter.await.expect("waiter");
    assert_eq!(
        r.expect("the buffered statement ran").as_deref(),
        Some(&*format!("hello {ws}"))
    );
    assert!(
        took >= Duration::from_millis(700) && took < Duration::from_secs(3),
        "{took:?}"
    );
    // The buffer's time limit: 1053 after it.
    admin
        .query_drop("DRAIN CLUSTER c1 WAIT 0 SECONDS")
        .await
        .expect("drain again");
    let mut c = proxy.connect("app", Some("app")).await;
    let started = Instant::now();
    let (code, msg) = common::server_error(
        &mut c,
        &format!("SELECT * FROM messages WHERE workspace_id = {ws}"),
    )
    .await;
    assert_eq!(code, 1053, "{msg}");
    assert!(msg.contains("waited 3000 ms in its buffer"), "{msg}");
    assert!(
        started.elapsed() >= Duration::from_millis(2900),
        "{:?}",
        started.elapsed()
    );
    drop((admin, tx, c));
    proxy.stop().await;
}
