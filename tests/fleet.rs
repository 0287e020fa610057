//! Two proxies on one etcd (`topo = "etcd"`, in-process, each from its own config
//! file) over real MariaDB servers: what one proxy's operator does reaches the other,
//! a failover lease held elsewhere stops a planned failover, and an etcd outage leaves
//! both serving.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::etcd::Etcd;
use common::{sharded_vschema, start_proxy_config, start_servers, Proxy};
use mysql_async::prelude::Queryable;
use shardgate::config::ProxyConfig;
use shardgate::topo::etcd::EtcdTopo;
use shardgate::topo::Topo;

/// Writes proxy `name`'s directory (vschema file, config file with `topo = "etcd"`)
/// under `root` and returns its config file.
fn write_config(root: &Path, name: &str, vschema: &str, etcd: &Etcd, prefix: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).expect("proxy dir");
    std::fs::write(dir.join("vschema.toml"), vschema).expect("vschema file");
    let config = format!(
        "listen = \"127.0.0.1:0\"\nvschema = \"vschema.toml\"\ntopo = \"etcd\"\n\n\
         [etcd]\nendpoints = [\"{}\"]\nprefix = \"{prefix}\"\n\n\
         [[users]]\nname = \"app\"\npassword = \"app\"\nadmin = false\n\n\
         [[users]]\nname = \"admin\"\npassword = \"admin\"\nadmin = true\n",
        etcd.endpoint()
    );
    let path = dir.join("shardgate.toml");
    std::fs::write(&path, config).expect("config file");
    path
}

async fn start(config: &Path) -> Proxy {
    let config = ProxyConfig::load(config).unwrap_or_else(|e| panic!("config: {e}"));
    start_proxy_config(config).await
}

async fn admin(p: &Proxy) -> mysql_async::Conn {
    p.connect("admin", None).await
}

/// `SHOW CLUSTERS`' column `column` for `cluster`.
async fn cluster_column(conn: &mut mysql_async::Conn, cluster: &str, column: &str) -> String {
    let rows: Vec<mysql_async::Row> = conn.query("SHOW CLUSTERS").await.expect("SHOW CLUSTERS");
    for r in rows {
        if r.get::<String, _>("Cluster").as_deref() == Some(cluster) {
            return r
                .get::<Option<String>, _>(column)
                .flatten()
                .unwrap_or_default();
        }
    }
    panic!("SHOW CLUSTERS has no cluster {cluster}");
}

/// A statement both proxies serve from the vschema alone.
async fn serves(p: &Proxy) -> Result<(), String> {
    let mut c = mysql_async::Conn::new(common::mysql_opts(&p.addr_string(), "app", "app", None))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let n: Option<u64> = c
        .query_first("SELECT 1")
        .await
        .map_err(|e| format!("SELECT 1: {e}"))?;
    if n != Some(1) {
        return Err(format!("SELECT 1 answered {n:?}"));
    }
    let _ = c.disconnect().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_through_one_proxy_is_kept_for_the_fleet() {
    let etcd = Etcd::start();
    let servers = start_servers(2);
    let vschema = sharded_vschema(&servers);
    let root = tempfile::tempdir().expect("tempdir");
    let a = start(&write_config(
        root.path(),
        "a",
        &vschema,
        &etcd,
        "/fleet-drain",
    ))
    .await;
    let mut admin_a = admin(&a).await;
    let topology = cluster_column(&mut admin_a, "c1", "Topology").await;
    assert!(
        topology.starts_with("etcd ok, vschema version "),
        "{topology}"
    );
    admin_a
        .query_drop("DRAIN CLUSTER c2 WAIT 0 SECONDS")
        .await
        .expect("drain through proxy a");
    // Saved in etcd as the state file's entry for c2.
    let store = EtcdTopo::new(vec![etcd.endpoint()], "/fleet-drain".into());
    let saved = store.load_traffic().await.expect("load traffic");
    assert_eq!(saved.len(), 1, "{saved:?}");
    assert_eq!(saved[0].0, "c2");
    assert!(
        saved[0].1.contains("intent = \"drained\""),
        "{}",
        saved[0].1
    );

    // A proxy started afterwards has c2 drained from the start.
    let b = start(&write_config(
        root.path(),
        "b",
        &vschema,
        &etcd,
        "/fleet-drain",
    ))
    .await;
    let mut admin_b = admin(&b).await;
    assert_eq!(
        cluster_column(&mut admin_b, "c2", "Intent").await,
        "drained"
    );
    assert_eq!(
        cluster_column(&mut admin_b, "c1", "Intent").await,
        "serving"
    );
    let reason = cluster_column(&mut admin_b, "c2", "Reason").await;
    assert!(reason.contains("DRAIN CLUSTER by admin"), "{reason}");

    // Both running: an UNDRAIN through b reaches a within 1 s, a DRAIN through a
    // reaches b within 1 s.
    admin_b
        .query_drop("UNDRAIN CLUSTER c2")
        .await
        .expect("undrain through b");
    let took = wait_column(&mut admin_a, "c2", "Intent", "serving").await;
    assert!(
        took < Duration::from_secs(1),
        "a saw the undrain after {took:?}"
    );
    admin_a
        .query_drop("DRAIN CLUSTER c1 WAIT 0 SECONDS")
        .await
        .expect("drain through a");
    let took = wait_column(&mut admin_b, "c1", "Intent", "drained").await;
    assert!(
        took < Duration::from_secs(1),
        "b saw the drain after {took:?}"
    );
    assert_eq!(
        cluster_column(&mut admin_b, "c2", "Intent").await,
        "serving"
    );
    // What a proxy saved itself is not applied back over what it did next.
    assert_eq!(
        cluster_column(&mut admin_a, "c1", "Intent").await,
        "drained"
    );
}

/// Polls `SHOW CLUSTERS` until `column` of `cluster` reads `want`; how long it took
/// (panics after 5 s).
async fn wait_column(
    conn: &mut mysql_async::Conn,
    cluster: &str,
    column: &str,
    want: &str,
) -> Duration {
    let t0 = Instant::now();
    loop {
        let now = cluster_column(conn, cluster, column).await;
        if now == want {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(5),
            "{cluster} {column} is still {now:?}, not {want:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Polls `probe` every 20 ms until it is Ok; how long it took (panics after 5 s).
async fn wait_until<F, Fut>(what: &str, mut probe: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), String>>,
{
    let t0 = Instant::now();
    loop {
        match probe().await {
            Ok(()) => return t0.elapsed(),
            Err(e) => assert!(t0.elapsed() < Duration::from_secs(5), "{what}: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `SELECT v FROM app.where_am_i WHERE workspace_id = ws` through `p`.
async fn which_shard(p: &Proxy, ws: u64) -> Result<String, String> {
    let mut c = mysql_async::Conn::new(common::mysql_opts(&p.addr_string(), "app", "app", None))
        .await
        .map_err(|e| format!("connect: {e}"))?;
    let v: Option<String> = c
        .query_first(format!(
            "SELECT v FROM app.where_am_i WHERE workspace_id = {ws}"
        ))
        .await
        .map_err(|e| e.to_string())?;
    let _ = c.disconnect().await;
    v.ok_or_else(|| "no row".to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vschema_change_and_a_pin_through_one_proxy_are_served_by_the_other_within_a_second() {
    let etcd = Etcd::start();
    let servers = start_servers(2);
    let vschema = sharded_vschema(&servers);
    // Each shard answers with its own name for workspace 7.
    for (i, s) in servers.iter().enumerate() {
        s.sql(&format!(
            "CREATE TABLE app.where_am_i (workspace_id BIGINT PRIMARY KEY, v VARCHAR(10)); \
             INSERT INTO app.where_am_i VALUES (7, 's{0}'), (8, 's{0}')",
            i + 1
        ))
        .expect("table on each shard");
    }
    // A database only c2 has, for a keyspace added later.
    servers[1]
        .sql("CREATE DATABASE extra; CREATE TABLE extra.t (id INT); INSERT INTO extra.t VALUES (1), (2)")
        .expect("database extra on c2");
    let root = tempfile::tempdir().expect("tempdir");
    let a = start(&write_config(
        root.path(),
        "a",
        &vschema,
        &etcd,
        "/fleet-vschema",
    ))
    .await;
    let b = start(&write_config(
        root.path(),
        "b",
        &vschema,
        &etcd,
        "/fleet-vschema",
    ))
    .await;
    let count_extra = |p: &Proxy| {
        let addr = p.addr_string();
        async move {
            let mut c = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", None))
                .await
                .map_err(|e| format!("connect: {e}"))?;
            let n: Option<u64> = c
                .query_first("SELECT COUNT(*) FROM extra.t")
                .await
                .map_err(|e| e.to_string())?;
            let _ = c.disconnect().await;
            match n {
                Some(2) => Ok(()),
                other => Err(format!("counted {other:?}")),
            }
        }
    };
    assert!(count_extra(&b).await.is_err(), "no keyspace extra yet");

    let mut admin_a = admin(&a).await;
    admin_a
        .query_drop("ALTER VSCHEMA ADD KEYSPACE extra ON CLUSTER c2")
        .await
        .expect("add a keyspace through a");
    let took = wait_until("b serves keyspace extra", || count_extra(&b)).await;
    assert!(
        took < Duration::from_secs(1),
        "b served the new keyspace after {took:?}"
    );

    // Pin workspace 7 to the shard it does not hash to, in the document, through a: b
    // routes it there.
    let (shard, answer) = other_shard(&b, 7).await;
    let pin = format!(
        "ALTER VSCHEMA ADD PIN WORKSPACE 7 IN KEYSPACE app TO SHARD '{shard}' ALLOW DATA MOVEMENT"
    );
    admin_a.query_drop(pin).await.expect("pin through a");
    routed_within_a_second(&b, 7, answer, "by its document pin").await;
    assert_eq!(which_shard(&a, 7).await.expect("through a"), answer);

    // A pin of the pin directory, the other way: through b, served by a. Every shard
    // has a row for workspace 8, so it needs FORCE.
    let (shard, answer) = other_shard(&a, 8).await;
    let mut admin_b = admin(&b).await;
    admin_b
        .query_drop(format!(
            "PIN WORKSPACE 8 IN KEYSPACE app TO SHARD '{shard}' FORCE"
        ))
        .await
        .expect("pin in the directory through b");
    routed_within_a_second(&a, 8, answer, "by its directory pin").await;
}

/// The shard `ws` is not served from through `p` now, and the answer that shard gives.
async fn other_shard(p: &Proxy, ws: u64) -> (String, &'static str) {
    let names = common::shard_names(2);
    match which_shard(p, ws)
        .await
        .expect("workspace through the proxy")
        .as_str()
    {
        "s1" => (names[1].clone(), "s2"),
        _ => (names[0].clone(), "s1"),
    }
}

/// Waits until `p` answers `answer` for workspace `ws`; asserts it took under 1 s.
async fn routed_within_a_second(p: &Proxy, ws: u64, answer: &str, how: &str) {
    let took = wait_until(&format!("workspace {ws} routed {how}"), || async {
        match which_shard(p, ws).await? {
            v if v == answer => Ok(()),
            v => Err(format!("still {v}")),
        }
    })
    .await;
    assert!(took < Duration::from_secs(1), "routed {how} after {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_lease_held_by_another_proxy_refuses_a_planned_failover() {
    let etcd = Etcd::start();
    let servers = start_servers(2);
    let vschema = sharded_vschema(&servers);
    let root = tempfile::tempdir().expect("tempdir");
    let a = start(&write_config(
        root.path(),
        "a",
        &vschema,
        &etcd,
        "/fleet-lease",
    ))
    .await;
    let mut admin_a = admin(&a).await;

    // Another proxy of the fleet runs c1's failover: it holds the lease.
    let other = EtcdTopo::new(vec![etcd.endpoint()], "/fleet-lease".into());
    other.set_identity("10.0.0.9:3306 pid 4242".into());
    let lease = other
        .lease("failover/c1".into(), Duration::from_secs(10))
        .await
        .expect("lease")
        .expect("free lease");
    let e = admin_a
        .query_drop("FAILOVER CLUSTER c1")
        .await
        .expect_err("refused while another proxy holds the lease");
    let text = e.to_string();
    assert!(
        text.contains("10.0.0.9:3306 pid 4242") && text.contains("failover lease"),
        "the error names the holder: {text}"
    );
    // c2's lease is free: its failover goes on (and stops for want of standbys).
    let e = admin_a
        .query_drop("FAILOVER CLUSTER c2")
        .await
        .expect_err("c2 has no standbys");
    assert!(!e.to_string().contains("failover lease"), "{e}");
    assert!(e.to_string().contains("no standbys"), "{e}");

    // Released: c1's failover is this proxy's to run (and stops for want of standbys).
    drop(lease);
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let e = admin_a
            .query_drop("FAILOVER CLUSTER c1")
            .await
            .expect_err("c1 has no standbys");
        if !e.to_string().contains("failover lease") {
            assert!(e.to_string().contains("no standbys"), "{e}");
            break;
        }
        assert!(Instant::now() < deadline, "lease not released: {e}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // This proxy released its own lease after each attempt.
    assert!(other
        .lease("failover/c1".into(), Duration::from_secs(10))
        .await
        .expect("lease")
        .is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_etcd_stopped_both_proxies_keep_serving() {
    let mut etcd = Etcd::start();
    let servers = start_servers(2);
    let vschema = sharded_vschema(&servers);
    let root = tempfile::tempdir().expect("tempdir");
    let a = start(&write_config(
        root.path(),
        "a",
        &vschema,
        &etcd,
        "/fleet-outage",
    ))
    .await;
    let b = start(&write_config(
        root.path(),
        "b",
        &vschema,
        &etcd,
        "/fleet-outage",
    ))
    .await;
    serves(&a).await.expect("a serves");
    serves(&b).await.expect("b serves");

    etcd.stop();
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_secs(3) {
        serves(&a).await.expect("a serves with etcd stopped");
        serves(&b).await.expect("b serves with etcd stopped");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A planned failover is refused (no lease can be taken), saying why.
    let mut admin_a = admin(&a).await;
    let e = admin_a
        .query_drop("FAILOVER CLUSTER c1")
        .await
        .expect_err("no failover without the lease");
    assert!(e.to_string().contains("could not be taken"), "{e}");
    assert!(
        cluster_column(&mut admin_a, "c1", "Topology")
            .await
            .starts_with("etcd unreachable since "),
        "SHOW CLUSTERS says the store is away"
    );

    // A proxy started while etcd is down does not serve a map it could not read: it
    // waits for the store (15 s), then stops with an error that says so.
    let config = ProxyConfig::load(&write_config(
        root.path(),
        "c",
        &vschema,
        &etcd,
        "/fleet-outage",
    ))
    .unwrap_or_else(|e| panic!("config: {e}"));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("listener");
    let started = Instant::now();
    let ended = tokio::time::timeout(
        Duration::from_secs(40),
        shardgate::server::serve(
            std::sync::Arc::new(config),
            listener,
            std::future::pending(),
        ),
    )
    .await
    .expect("a proxy started during the outage gives up within 40 s");
    let e = ended.expect_err("a proxy started during the outage does not serve");
    assert!(
        e.to_string().contains("topology store"),
        "the error names the store: {e}"
    );
    assert!(
        started.elapsed() >= Duration::from_secs(14),
        "it waited for the store"
    );

    // b did nothing, yet says so too (its watch noticed).
    let mut admin_b = admin(&b).await;
    let topology = cluster_column(&mut admin_b, "c2", "Topology").await;
    assert!(
        topology.starts_with("etcd unreachable since ")
            && topology.contains("serving vschema version"),
        "{topology}"
    );

    etcd.start_again();
    serves(&a).await.expect("a serves after the outage");
    serves(&b).await.expect("b serves after the outage");
    let t0 = Instant::now();
    loop {
        let t = cluster_column(&mut admin_b, "c1", "Topology").await;
        if t.starts_with("etcd ok") {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "b still says {t}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Changes flow again: a drain through a reaches b.
    admin_a
        .query_drop("DRAIN CLUSTER c2 WAIT 0 SECONDS")
        .await
        .expect("drain through a after the outage");
    let took = wait_column(&mut admin_b, "c2", "Intent", "drained").await;
    assert!(
        took < Duration::from_secs(1),
        "b saw the drain after {took:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_through_one_proxy_switches_the_other_within_a_second() {
    let etcd = Etcd::start();
    let clusters = common::start_replicated_clusters(1, 1);
    let c = &clusters[0];
    c.primary
        .sql("CREATE DATABASE app; CREATE TABLE app.writes (id INT PRIMARY KEY, via VARCHAR(10))")
        .expect("schema");
    c.wait_caught_up(Duration::from_secs(10))
        .expect("standby caught up");
    let standby = c.standby_addrs()[0].clone();
    let vschema = format!(
        "[clusters.c1]\nprimary = \"{}\"\nstandbys = [\"{standby}\"]\nuser = \"shardgate\"\npassword = \"shardgate\"\n\n\
         [keyspaces.app]\ncluster = \"c1\"\n",
        c.primary.addr()
    );
    let root = tempfile::tempdir().expect("tempdir");
    let a = start(&write_config(
        root.path(),
        "a",
        &vschema,
        &etcd,
        "/fleet-failover",
    ))
    .await;
    let b = start(&write_config(
        root.path(),
        "b",
        &vschema,
        &etcd,
        "/fleet-failover",
    ))
    .await;
    let insert = |p: &Proxy, id: u32| {
        let addr = p.addr_string();
        async move {
            let mut conn =
                mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
                    .await
                    .map_err(|e| format!("connect: {e}"))?;
            conn.query_drop(format!("INSERT INTO writes VALUES ({id}, 'b')"))
                .await
                .map_err(|e| e.to_string())?;
            let _ = conn.disconnect().await;
            Ok::<(), String>(())
        }
    };
    insert(&b, 1).await.expect("write through b before");

    let mut admin_a = admin(&a).await;
    admin_a
        .query_drop("FAILOVER CLUSTER c1")
        .await
        .expect("planned failover through a");
    assert_eq!(cluster_column(&mut admin_a, "c1", "Primary").await, standby);
    let mut admin_b = admin(&b).await;
    let took = wait_column(&mut admin_b, "c1", "Primary", &standby).await;
    assert!(took < Duration::from_secs(1), "b switched after {took:?}");
    // b writes to the new primary (the old one is read_only now).
    insert(&b, 2)
        .await
        .expect("write through b after the failover");
    let on_new = c.standbys[0]
        .sql("SELECT COUNT(*) FROM app.writes WHERE id = 2")
        .expect("count on the new primary");
    assert_eq!(on_new.trim(), "1", "the write went to the new primary");
}
