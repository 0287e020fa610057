//! Failover against real MariaDB replication (GTID, semi-sync): a planned
//! `FAILOVER CLUSTER` under write load from 8 clients loses no acknowledged write and
//! shows no client an error; an unplanned one (SIGKILL of the primary, `failover =
//! "auto"`) serves writes from the former standby within seconds and loses nothing
//! acknowledged; the old primary, restarted, is fenced (`read_only`, never written
//! through shardgate); and the new topology survives a restart of the proxy.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::config::{PoolConfig, ProxyConfig};
use shardgate::demo::localdb::{LocalDbOptions, LocalMariaDb};
use shardgate::demo::replication::LocalCluster;
use shardgate::traffic::OnUnavailable;
use shardgate::vschema::VSchema;

/// Keyspace `app` (unsharded) on cluster `c1`: the primary and its standbys.
fn vschema(c: &LocalCluster) -> VSchema {
    let standbys: Vec<String> = c
        .standby_addrs()
        .iter()
        .map(|a| format!("\"{a}\""))
        .collect();
    let toml = format!(
        "[clusters.c1]\nprimary = \"{}\"\nstandbys = [{}]\nuser = \"shardgate\"\npassword = \"shardgate\"\n\
         [keyspaces.app]\ncluster = \"c1\"\n",
        c.primary.addr(),
        standbys.join(", ")
    );
    VSchema::from_toml_str(&toml).expect("vschema")
}

/// The proxy's config over `c`, defaults otherwise.
fn config_for(c: &LocalCluster) -> ProxyConfig {
    ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vschema(c),
    )
}

fn setup(c: &LocalCluster) {
    c.primary
        .sql("CREATE DATABASE app; CREATE TABLE app.writes (client INT, n INT, PRIMARY KEY (client, n))")
        .expect("schema");
    c.wait_caught_up(Duration::from_secs(10))
        .expect("standbys caught up");
}

/// What the writers saw: per client, the acknowledged counters; every statement's
/// latency and when it started; the errors.
#[derive(Default)]
struct Seen {
    acked: Vec<Vec<u32>>,
    latencies: Vec<(Instant, Duration)>,
    errors: Vec<(usize, Instant, String)>,
}

/// 8 clients, each inserting `(client, n)` with its own counter, until `stop`.
fn writers(
    addr: String,
    stop: Arc<AtomicBool>,
    seen: Arc<Mutex<Seen>>,
) -> Vec<tokio::task::JoinHandle<()>> {
    seen.lock().expect("seen").acked = vec![Vec::new(); 8];
    (0..8usize)
        .map(|client| {
            let (addr, stop, seen) = (addr.clone(), stop.clone(), seen.clone());
            tokio::spawn(async move {
                let mut c =
                    mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
                        .await
                        .expect("writer connects");
                let mut n = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let at = Instant::now();
                    let r = c
                        .query_drop(format!("INSERT INTO writes VALUES ({client}, {n})"))
                        .await;
                    let broken = {
                        let mut s = seen.lock().expect("seen");
                        s.latencies.push((at, at.elapsed()));
                        match r {
                            Ok(()) => {
                                s.acked[client].push(n);
                                false
                            }
                            Err(e) => {
                                let broken = !matches!(e, mysql_async::Error::Server(_));
                                s.errors.push((client, at, e.to_string()));
                                broken
                            }
                        }
                    };
                    if broken {
                        // A broken connection: a new one, as a driver's pool would.
                        match mysql_async::Conn::new(common::mysql_opts(
                            &addr,
                            "app",
                            "app",
                            Some("app"),
                        ))
                        .await
                        {
                            Ok(fresh) => c = fresh,
                            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                        }
                    }
                }
            })
        })
        .collect()
}

/// Stops the writers and returns what they saw.
async fn stop_writers(
    stop: &AtomicBool,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    seen: Arc<Mutex<Seen>>,
) -> Seen {
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.expect("writer");
    }
    Arc::try_unwrap(seen)
        .ok()
        .expect("writers done")
        .into_inner()
        .expect("seen")
}

/// Every acknowledged write is on `server`.
fn assert_all_acked_on(server: &LocalMariaDb, seen: &Seen) {
    for (client, acked) in seen.acked.iter().enumerate() {
        let have: Vec<u32> = common::direct_query(
            server,
            &format!("SELECT n FROM app.writes WHERE client = {client} ORDER BY n"),
        )
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect();
        let missing: Vec<&u32> = acked.iter().filter(|n| !have.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "client {client}: acknowledged but lost: {missing:?}"
        );
    }
}

fn p99(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v.get(v.len().saturating_sub(1) * 99 / 100)
        .copied()
        .unwrap_or_default()
}

async fn failovers(admin: &mut mysql_async::Conn) -> Vec<(String, String, String, String)> {
    let rows: Vec<mysql_async::Row> = admin.query("SHOW FAILOVERS").await.expect("SHOW FAILOVERS");
    rows.into_iter()
        .map(|r| {
            let s = |i: usize| r.get::<Option<String>, _>(i).flatten().unwrap_or_default();
            (s(1), s(3), s(7), s(8))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_planned_failover_under_write_load_shows_no_error_and_loses_nothing() {
    let cluster = common::start_replicated_clusters(1, 2).remove(0);
    setup(&cluster);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut config = config_for(&cluster);
    config.traffic_state_file = Some(dir.path().join("traffic.toml"));
    let metrics = common::free_local_addr();
    config.metrics_listen = Some(metrics);
    let proxy = common::start_proxy_config(config.clone()).await;
    let mut admin = proxy.connect("admin", Some("app")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tasks = writers(proxy.addr_string(), stop.clone(), seen.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let target = cluster.standbys[0].addr();
    let began = Instant::now();
    let row: Option<(String, String)> = admin
        .query_first(format!("FAILOVER CLUSTER c1 TO '{target}'"))
        .await
        .expect("FAILOVER CLUSTER");
    let took = began.elapsed();
    let summary = row.expect("a row").1;
    eprintln!("planned failover: {summary} (statement took {took:?})");
    tokio::time::sleep(Duration::from_secs(2)).await;
    let seen = stop_writers(&stop, tasks, seen).await;
    assert!(
        seen.errors.is_empty(),
        "clients saw errors: {:?}",
        seen.errors
    );
    let total: usize = seen.acked.iter().map(Vec::len).sum();
    assert!(total > 100, "the writers wrote: {total}");
    // Added latency: statements that started during the failover.
    let during: Vec<Duration> = seen
        .latencies
        .iter()
        .filter(|(at, _)| *at >= began && *at <= began + took)
        .map(|(_, d)| *d)
        .collect();
    let all: Vec<Duration> = seen.latencies.iter().map(|(_, d)| *d).collect();
    eprintln!(
        "planned failover: {total} writes, {} during it, max latency {:?}, p99 overall {:?}",
        during.len(),
        all.iter().max().copied().unwrap_or_default(),
        p99(all.clone())
    );
    // Everything acknowledged is on the new primary; the old one is a read_only standby
    // of it.
    let new_primary = &cluster.standbys[0];
    assert_all_acked_on(new_primary, &seen);
    assert_eq!(
        common::direct_query(&cluster.primary, "SELECT @@read_only").trim(),
        "1"
    );
    let status = cluster
        .primary
        .replica_status()
        .expect("status")
        .expect("replicating");
    assert!(status.running(), "the old primary replicates: {status:?}");
    assert_eq!(
        common::direct_query(new_primary, "SELECT @@read_only").trim(),
        "0"
    );
    let f = failovers(&mut admin).await;
    assert_eq!(f.len(), 1, "{f:?}");
    assert_eq!(
        (f[0].0.as_str(), f[0].1.as_str(), f[0].2.as_str()),
        ("planned", target.as_str(), "done")
    );
    assert!(
        f[0].3.contains("routing switched") && f[0].3.contains("buffer released"),
        "{}",
        f[0].3
    );
    drop(admin);
    proxy.stop().await;

    // A restarted proxy routes to the new primary, whatever the vschema file says.
    let proxy = common::start_proxy_config(config).await;
    let mut app = proxy.connect("app", Some("app")).await;
    let port: Option<u16> = app.query_first(BACKEND_PORT).await.expect("port");
    assert_eq!(port, Some(new_primary.port));
    drop(app);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unplanned_failover_serves_writes_within_seconds_and_fences_the_old_primary() {
    let mut cluster = common::start_replicated_clusters(1, 1).remove(0);
    setup(&cluster);
    let mut config = config_for(&cluster);
    config.failover.auto = true;
    config.pool = PoolConfig {
        on_unavailable: OnUnavailable::Buffer,
        buffer_timeout: Duration::from_secs(15),
        connect_timeout: Duration::from_millis(500),
        ..PoolConfig::default()
    };
    let proxy = common::start_proxy_config(config).await;
    let mut admin = proxy.connect("admin", Some("app")).await;
    let stop = Arc::new(AtomicBool::new(false));
    let seen = Arc::new(Mutex::new(Seen::default()));
    let tasks = writers(proxy.addr_string(), stop.clone(), seen.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let old_port = cluster.primary.port;
    let acked_before: Vec<usize> = seen
        .lock()
        .expect("seen")
        .acked
        .iter()
        .map(Vec::len)
        .collect();
    cluster.primary.kill();
    let killed = Instant::now();
    let deadline = killed + Duration::from_secs(20);
    loop {
        let f = failovers(&mut admin).await;
        if f.iter().any(|f| f.0 == "unplanned" && f.2 == "done") {
            eprintln!(
                "unplanned failover: done {:?} after the kill: {}",
                killed.elapsed(),
                f[0].3
            );
            break;
        }
        assert!(Instant::now() < deadline, "no failover: {f:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // The old primary comes back on its port: it is made read_only, and nothing is
    // written to it through shardgate.
    let restarted = tokio::task::spawn_blocking(move || {
        LocalMariaDb::start(&LocalDbOptions {
            port: Some(old_port),
            ..LocalDbOptions::default()
        })
    })
    .await
    .expect("join")
    .expect("restart the old primary");
    let fence_deadline = Instant::now() + Duration::from_secs(5);
    while common::direct_query(&restarted, "SELECT @@read_only").trim() != "1" {
        assert!(
            Instant::now() < fence_deadline,
            "the fenced old primary was not made read_only"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    let seen = stop_writers(&stop, tasks, seen).await;
    // First write acknowledged after the kill.
    let first_after = seen
        .latencies
        .iter()
        .filter(|(at, _)| *at > killed)
        .map(|(at, d)| (*at + *d).duration_since(killed))
        .min()
        .unwrap_or_default();
    eprintln!(
        "unplanned failover: first statement answered {first_after:?} after the kill; errors: {:?}",
        seen.errors
    );
    // Errors only for what was in flight at the kill: one per client at most.
    for client in 0..8 {
        let n = seen.errors.iter().filter(|e| e.0 == client).count();
        assert!(n <= 1, "client {client} saw {n} errors: {:?}", seen.errors);
    }
    let new_primary = &cluster.standbys[0];
    assert_all_acked_on(new_primary, &seen);
    for (client, before) in acked_before.iter().enumerate() {
        assert!(
            seen.acked[client].len() > *before,
            "client {client} wrote after the failover"
        );
    }
    assert_eq!(
        common::direct_query(
            &restarted,
            "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'app'"
        )
        .trim(),
        "0",
        "nothing reached the fenced old primary"
    );
    let status: Vec<mysql_async::Row> = admin.query("SHOW CLUSTERS").await.expect("clusters");
    let standbys: Option<String> = status[0].get(16);
    assert!(
        !standbys
            .unwrap_or_default()
            .contains(&format!(":{old_port} ")),
        "the old primary is out of the topology"
    );
    drop((admin, restarted));
    proxy.stop().await;
}

/// The port of the backend that answers (`@@port` is shardgate's own).
const BACKEND_PORT: &str =
    "SELECT VARIABLE_VALUE FROM information_schema.GLOBAL_VARIABLES WHERE VARIABLE_NAME = 'PORT'";

/// The port of the server that answered `sql` (a [`BACKEND_PORT`] query).
async fn port(c: &mut mysql_async::Conn, sql: &str) -> Option<u16> {
    c.query_first::<u16, _>(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Polls `SHOW CLUSTERS` until c1's standbys column says every standby is healthy.
async fn wait_standbys_healthy(admin: &mut mysql_async::Conn) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows: Vec<mysql_async::Row> = admin.query("SHOW CLUSTERS").await.expect("clusters");
        let standbys: String = rows[0]
            .get::<Option<String>, _>(16)
            .flatten()
            .unwrap_or_default();
        if !standbys.is_empty()
            && !standbys.contains("lagging")
            && !standbys.contains("broken")
            && !standbys.contains("unreachable")
            && !standbys.contains("lag ?")
        {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "standbys not healthy: {standbys}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_reads_go_to_a_standby_and_keep_working_while_the_primary_is_stalled() {
    let cluster = common::start_replicated_clusters(1, 1).remove(0);
    setup(&cluster);
    let mut config = config_for(&cluster);
    config.pool.query_timeout = Some(Duration::from_secs(2));
    let proxy = common::start_proxy_config(config).await;
    let mut admin = proxy.connect("admin", Some("app")).await;
    wait_standbys_healthy(&mut admin).await;
    let (primary, standby) = (cluster.primary.port, cluster.standbys[0].port);
    // A login into `app@replica`: reads on the standby, writes on the primary.
    let mut reader = mysql_async::Conn::new(common::mysql_opts(
        &proxy.addr_string(),
        "app",
        "app",
        Some("app@replica"),
    ))
    .await
    .expect("login into app@replica");
    assert_eq!(port(&mut reader, BACKEND_PORT).await, Some(standby));
    reader
        .query_drop("INSERT INTO writes VALUES (99, 1)")
        .await
        .expect("a write");
    assert_eq!(
        common::direct_query(
            &cluster.primary,
            "SELECT COUNT(*) FROM app.writes WHERE client = 99"
        )
        .trim(),
        "1",
        "the write went to the primary"
    );
    assert_eq!(
        port(&mut reader, &format!("{BACKEND_PORT} FOR UPDATE")).await,
        Some(primary),
        "a locking read"
    );
    reader.query_drop("BEGIN").await.expect("begin");
    assert_eq!(
        port(&mut reader, BACKEND_PORT).await,
        Some(primary),
        "inside a transaction"
    );
    reader.query_drop("COMMIT").await.expect("commit");
    // `USE` turns it off and on.
    reader.query_drop("USE app").await.expect("use app");
    assert_eq!(port(&mut reader, BACKEND_PORT).await, Some(primary));
    reader
        .query_drop("USE `app@replica`")
        .await
        .expect("use app@replica");
    assert_eq!(port(&mut reader, BACKEND_PORT).await, Some(standby));
    // The primary stalls: replica reads go on; a primary read waits for the deadline.
    cluster.primary.pause().expect("SIGSTOP");
    let stalled = Instant::now();
    let mut reads = 0;
    while stalled.elapsed() < Duration::from_secs(7) {
        let t = Instant::now();
        let n: Option<u64> = reader
            .query_first("SELECT COUNT(*) FROM writes WHERE client = 99")
            .await
            .expect("a replica read while the primary is stalled");
        assert_eq!(n, Some(1));
        assert!(
            t.elapsed() < Duration::from_millis(500),
            "{:?}",
            t.elapsed()
        );
        reads += 1;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("replica reads while the primary was stalled: {reads}");
    // A session without replica reads is refused (mysql_async's own first query, at
    // connect, already reads from the primary).
    let plain = mysql_async::Conn::new(common::mysql_opts(
        &proxy.addr_string(),
        "app",
        "app",
        Some("app"),
    ))
    .await;
    match plain {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1053, "{}", e.message),
        Err(e) => panic!("expected 1053: {e}"),
        Ok(mut c) => {
            let r = c.query_drop("SELECT COUNT(*) FROM writes").await;
            assert!(
                r.is_err(),
                "a primary read fails while the primary is stalled and down"
            );
        }
    }
    cluster.primary.resume().expect("SIGCONT");
    drop((reader, admin));
    proxy.stop().await;
}
