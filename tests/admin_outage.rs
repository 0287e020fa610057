//! The control surface during a cluster outage: with one cluster's `mariadbd` stopped
//! (SIGSTOP: it accepts TCP, answers nothing), `SHOW MIGRATIONS`, `ALTER MIGRATION` and
//! `@@ddl_wait` answer within the per-cluster deadline (2 s), with what the healthy
//! clusters said and the stopped cluster named; and `@@ddl_wait` polls over pooled
//! connections instead of reconnecting on every poll.
//!
//! A stopped cluster is reported as `timeout after 2s` when a pooled connection's
//! statement hangs, or `connect to ... timed out after 2s` when a new connection's
//! greeting never comes; the tests accept either.
//!
//! Bounds are generous (a loaded 2-core machine): "within ~3 s" of the 2 s design is
//! asserted as < 6 s, against the old behaviour of hanging until the OS gave up.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::config::ProxyConfig;
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::migrations::executor::{Executor, ExecutorConfig, NoSignals};
use shardgate::vschema::VSchema;

/// What the tests allow for an answer the design bounds by one 2 s deadline.
const ANSWER_BOUND: Duration = Duration::from_secs(6);

/// Resumes a server suspended with SIGSTOP when dropped, whatever happens in the test.
struct Stopped<'a>(&'a LocalMariaDb);

impl<'a> Stopped<'a> {
    fn stop(server: &'a LocalMariaDb) -> Self {
        server.pause().expect("SIGSTOP the server");
        Stopped(server)
    }
}

impl Drop for Stopped<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}

/// A proxy config without executors (the queue only fills unless a test spawns one),
/// with the default 2 s control deadline.
fn config(vschema: VSchema) -> ProxyConfig {
    let mut c = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vschema,
    );
    c.migrations = None;
    c.admin_cluster_timeout = Duration::from_secs(2);
    c
}

async fn server_error<T: std::fmt::Debug>(r: Result<T, mysql_async::Error>) -> (u16, String) {
    match r {
        Err(mysql_async::Error::Server(e)) => (e.code, e.message),
        other => panic!("expected an error from the server, got {other:?}"),
    }
}

fn queue_statuses(server: &LocalMariaDb, uuid: &str) -> Vec<String> {
    common::direct_query(
        server,
        &format!("SELECT status FROM _shardgate.schema_migrations WHERE uuid = '{uuid}'"),
    )
    .lines()
    .map(str::to_string)
    .collect()
}

fn column_exists(server: &LocalMariaDb, db: &str, table: &str, column: &str) -> bool {
    common::direct_query(
        server,
        &format!(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema='{db}' \
             AND table_name='{table}' AND column_name='{column}'"
        ),
    )
    .trim()
        == "1"
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_one_cluster_stopped_the_admin_surface_answers_in_time_and_names_it() {
    let (servers, vs) = common::servers_with_notes(3);
    servers[0]
        .sql("CREATE TABLE main.items (id INT PRIMARY KEY)")
        .expect("create items");
    let proxy = common::start_proxy_config(config(vs.clone())).await;
    let mut app = proxy.connect("app", Some("app")).await;
    let mut admin = proxy.connect("admin", Some("app")).await;

    // A migration queued on all three clusters while they are healthy.
    let row: Option<(String, String, u32)> = app
        .query_first("ALTER TABLE notes ADD COLUMN a INT NULL")
        .await
        .expect("queued");
    let (uuid, _, targets) = row.expect("one row");
    assert_eq!(targets, 3);

    let stopped = Stopped::stop(&servers[2]);

    // SHOW MIGRATIONS: the healthy clusters' rows and a row naming c3.
    let started = Instant::now();
    let rows: Vec<mysql_async::Row> = admin.query("SHOW MIGRATIONS").await.expect("show");
    let took = started.elapsed();
    eprintln!("SHOW MIGRATIONS with c3 stopped: {took:?}");
    assert!(took < ANSWER_BOUND, "SHOW MIGRATIONS took {took:?}");
    let field = |r: &mysql_async::Row, name: &str| -> Option<String> {
        r.get::<Option<String>, _>(name).flatten()
    };
    let mut clusters_of_uuid: Vec<String> = rows
        .iter()
        .filter(|r| field(r, "uuid").as_deref() == Some(uuid.as_str()))
        .filter_map(|r| field(r, "cluster"))
        .collect();
    clusters_of_uuid.sort();
    assert_eq!(clusters_of_uuid, ["c1", "c2"], "{rows:?}");
    let marker = rows
        .iter()
        .find(|r| field(r, "status").as_deref() == Some("unreachable"))
        .unwrap_or_else(|| panic!("a row for the stopped cluster: {rows:?}"));
    assert_eq!(field(marker, "cluster").as_deref(), Some("c3"));
    let message = field(marker, "message").unwrap_or_default();
    assert!(
        message.contains("cluster 'c3' unreachable") && message.contains("after 2s"),
        "{message}"
    );
    assert_eq!(field(marker, "uuid"), None);

    // ALTER MIGRATION ALL PAUSE: applied on c1 and c2, an error naming c3.
    let started = Instant::now();
    let (code, message) = server_error(admin.query_drop("ALTER MIGRATION ALL PAUSE").await).await;
    let took = started.elapsed();
    eprintln!("ALTER MIGRATION ALL PAUSE with c3 stopped: {took:?}");
    assert!(took < ANSWER_BOUND, "ALTER MIGRATION ALL took {took:?}");
    assert_eq!(code, 1105, "{message}");
    assert!(
        message.contains("applied on c1, c2 (2 rows changed)")
            && message.contains("NOT applied on c3 (unreachable: ")
            && message.contains("after 2s"),
        "{message}"
    );
    for s in &servers[..2] {
        assert_eq!(queue_statuses(s, &uuid), ["paused"]);
    }

    // ALTER MIGRATION 'uuid': same, and says the migration may be on c3 too.
    let started = Instant::now();
    let (code, message) = server_error(
        admin
            .query_drop(format!("ALTER MIGRATION '{uuid}' RESUME"))
            .await,
    )
    .await;
    assert!(started.elapsed() < ANSWER_BOUND);
    assert_eq!(code, 1105, "{message}");
    assert!(
        message.contains("NOT applied on c3") && message.contains(&uuid),
        "{message}"
    );
    for s in &servers[..2] {
        assert_eq!(queue_statuses(s, &uuid), ["queued"]);
    }

    // An executor for c1 only (as another proxy of the fleet would run it).
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let c1 = vs.cluster("c1").expect("c1").clone();
    let executor = Executor::spawn(
        c1,
        ExecutorConfig {
            instant_spacing: Duration::from_millis(100),
            poll_interval: Duration::from_millis(100),
            lock_retry_interval: Duration::from_millis(200),
            ..ExecutorConfig::default()
        },
        std::sync::Arc::new(NoSignals),
        stop_rx,
    );

    // @@ddl_wait for a DDL that only concerns c1 (keyspace main) completes.
    let mut main = proxy.connect("app", Some("main")).await;
    main.query_drop("SET @@ddl_wait = 60")
        .await
        .expect("ddl_wait");
    let started = Instant::now();
    main.query_drop("ALTER TABLE items ADD COLUMN b INT NULL")
        .await
        .expect("a DDL on the healthy cluster completes");
    eprintln!("ddl_wait on c1 only, c3 stopped: {:?}", started.elapsed());
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "{:?}",
        started.elapsed()
    );
    assert!(column_exists(&servers[0], "main", "items", "b"));

    // @@ddl_wait for a DDL that includes c3: a bounded error naming it, nothing queued.
    app.query_drop("SET @@ddl_wait = 60")
        .await
        .expect("ddl_wait");
    let started = Instant::now();
    let (code, message) = server_error(
        app.query_drop("ALTER TABLE notes ADD COLUMN c INT NULL")
            .await,
    )
    .await;
    let took = started.elapsed();
    eprintln!("ddl_wait DDL including c3 (refused): {took:?}");
    assert!(took < ANSWER_BOUND, "the DDL took {took:?}");
    assert_eq!(code, 1105, "{message}");
    assert!(
        message.contains("c3") && message.contains("not queued"),
        "{message}"
    );
    for s in &servers[..2] {
        let n = common::direct_query(
            s,
            "SELECT COUNT(*) FROM _shardgate.schema_migrations WHERE statement LIKE '%COLUMN c INT%'",
        );
        assert_eq!(n.trim(), "0", "queued nowhere");
    }

    drop(stopped);
    let _ = stop_tx.send(true);
    executor.join().await;
    drop(app);
    drop(admin);
    drop(main);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_wait_polls_over_pooled_connections_without_redoing_the_schema_setup() {
    let (servers, vs) = common::servers_with_notes(2);
    // No executor: the migration stays queued, so the wait polls until its limit.
    let proxy = common::start_proxy_config(config(vs)).await;
    let mut app = proxy.connect("app", Some("app")).await;
    // The first queued change opens the control connections and sets up the schema.
    app.query_drop("ALTER TABLE notes ADD COLUMN warm INT NULL")
        .await
        .expect("queued");

    let before: Vec<(u64, u64)> = servers
        .iter()
        .map(|s| {
            (
                common::status_counter(s, "Connections"),
                common::status_counter(s, "Com_create_db"),
            )
        })
        .collect();
    app.query_drop("SET @@ddl_wait = 6")
        .await
        .expect("ddl_wait");
    let started = Instant::now();
    let (code, message) = server_error(
        app.query_drop("ALTER TABLE notes ADD COLUMN w INT NULL")
            .await,
    )
    .await;
    let waited = started.elapsed();
    assert_eq!(code, 1105, "{message}");
    assert!(message.contains("still queued"), "{message}");
    assert!(waited >= Duration::from_secs(5), "it polled for {waited:?}");
    for (s, (connections, create_db)) in servers.iter().zip(before) {
        // Two of the new connections are the counter reads themselves (`Com_create_db`
        // before, `Connections` after); a connection per poll (one a second or faster
        // over six seconds) would have added at least six more.
        let opened = common::status_counter(s, "Connections") - connections;
        eprintln!(
            "{}: {opened} connections during a {waited:?} ddl_wait",
            s.addr()
        );
        assert!(
            opened <= 3,
            "{} connections opened on {} during a {waited:?} wait",
            opened,
            s.addr()
        );
        assert_eq!(
            common::status_counter(s, "Com_create_db"),
            create_db,
            "the sidecar schema setup is not rerun per poll"
        );
    }
    drop(app);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wait_that_loses_sight_of_its_cluster_ends_naming_it() {
    let (servers, vs) = common::servers_with_notes(2);
    let proxy = common::start_proxy_config(config(vs)).await;
    let mut app = proxy.connect("app", Some("app")).await;
    app.query_drop("SET @@ddl_wait = 120")
        .await
        .expect("ddl_wait");
    // No executor: the migration stays queued and the session keeps polling.
    let waiting = tokio::spawn(async move {
        let r = app
            .query_drop("ALTER TABLE notes ADD COLUMN x INT NULL")
            .await;
        (r, app)
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!waiting.is_finished(), "the wait is under way");
    let stopped = Stopped::stop(&servers[1]);
    let started = Instant::now();
    let (r, app) = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the wait ends long before its 120 s limit")
        .expect("join");
    let took = started.elapsed();
    eprintln!("wait ended {took:?} after its cluster was stopped");
    let (code, message) = server_error(r).await;
    assert_eq!(code, 1105, "{message}");
    assert!(
        message.contains("cannot see c2 (unreachable: ") && message.contains("after 2s"),
        "{message}"
    );
    // Two deadlines out of sight, plus a poll: about 4-5 s by design.
    assert!(
        took < Duration::from_secs(12),
        "ended {took:?} after the stop"
    );
    drop(stopped);
    drop(app);
    proxy.stop().await;
}
