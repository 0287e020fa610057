//! The migration queue against real MariaDB: the durable store and its transitions,
//! executor ownership, the limits, the throttle and admin requests.
//!
//! Copy migrations run through a stand-in engine ([`FakeCopy`]) that behaves as the
//! contract in `migrations::copy` says (gate before every chunk, checkpoint SQL per
//! chunk, postponed cut-over), so the executor's side is proven on its own. The tests
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shardgate::backend::{quote_literal, SqlConn};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::migrations::copy::{CopyControl, CopyError, CopyProgress, CopyTask};
use shardgate::migrations::executor::{
    BoxFuture, CopyEngine, Executor, ExecutorConfig, MigrationControl, NoSignals, ThrottleConfig,
};
use shardgate::migrations::store::{self, MigrationRow, PendingRequest, StoreError, Target};
use shardgate::migrations::{NewMigration, Request, Status, Strategy};
use shardgate::vschema::Cluster;
use tokio::sync::watch;

fn cluster_of(server: &LocalMariaDb) -> Cluster {
    Cluster {
        name: "c1".to_string(),
        standbys: Vec::new(),
        primary: server.addr(),
        user: server.user.clone(),
        password: server.password.clone(),
        tls: None,
    }
}

async fn connect(cluster: &Cluster) -> SqlConn {
    SqlConn::connect(cluster, None, Duration::from_secs(5))
        .await
        .expect("connect to the test server")
}

/// Short intervals so tests take seconds.
fn fast_config() -> ExecutorConfig {
    ExecutorConfig {
        instant_spacing: Duration::from_millis(300),
        poll_interval: Duration::from_millis(100),
        lock_retry_interval: Duration::from_millis(300),
        orphan_after: Duration::from_millis(800),
        shutdown_grace: Duration::from_secs(3),
        ..ExecutorConfig::default()
    }
}

fn migration(uuid: &str, database: &str, table: &str, sql: &str, s: Strategy) -> NewMigration {
    NewMigration {
        uuid: uuid.to_string(),
        keyspace: "ws".to_string(),
        shard: database.to_string(),
        cluster: "c1".to_string(),
        database: database.to_string(),
        table: table.to_string(),
        statement: sql.to_string(),
        strategy: s,
        postpone_completion: false,
    }
}

/// Polls `check` every 50 ms until it returns `Some`, or panics after `limit`.
async fn wait_for<T, F, Fut>(limit: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn rows_of(cluster: &Cluster, uuid: &str) -> Vec<MigrationRow> {
    let mut c = connect(cluster).await;
    store::get(&mut c, uuid).await.expect("get")
}

async fn wait_all_final(cluster: &Cluster, uuid: &str, limit: Duration) -> Vec<MigrationRow> {
    wait_for(limit, &format!("{uuid} to finish"), || async {
        let rows = rows_of(cluster, uuid).await;
        (!rows.is_empty() && rows.iter().all(|r| r.status.is_final())).then_some(rows)
    })
    .await
}

async fn wait_status(cluster: &Cluster, uuid: &str, db: &str, status: Status) -> MigrationRow {
    wait_for(
        Duration::from_secs(10),
        &format!("{uuid}/{db} {status:?}"),
        || async {
            let mut c = connect(cluster).await;
            let row = store::get_one(&mut c, uuid, db).await.expect("get_one")?;
            (row.status == status).then_some(row)
        },
    )
    .await
}

/// `YYYY-MM-DD HH:MM:SS.ffffff` as seconds since an arbitrary epoch (same day math).
fn seconds(ts: &str) -> f64 {
    let (date, time) = ts.split_once(' ').expect("timestamp has a date and a time");
    let d: Vec<f64> = date
        .split('-')
        .map(|p| p.parse().expect("date part"))
        .collect();
    let t: Vec<f64> = time
        .split(':')
        .map(|p| p.parse().expect("time part"))
        .collect();
    ((d[0] * 372.0 + d[1] * 31.0 + d[2]) * 86_400.0) + t[0] * 3600.0 + t[1] * 60.0 + t[2]
}

/// A stand-in copy engine that follows the `CopyControl` contract: gate before each
/// chunk, run the checkpoint SQL after each chunk, wait while the cut-over is
/// postponed. It records what the executor asked of it.
struct FakeCopy {
    cluster: Cluster,
    chunks: u64,
    chunk_time: Duration,
    active: AtomicU64,
    peak: AtomicU64,
    chunks_done: AtomicU64,
    resumes: Mutex<Vec<(String, Option<String>)>>,
    cleanups: Mutex<Vec<String>>,
}

impl FakeCopy {
    fn new(cluster: &Cluster, chunks: u64, chunk_time: Duration) -> Arc<FakeCopy> {
        Arc::new(FakeCopy {
            cluster: cluster.clone(),
            chunks,
            chunk_time,
            active: AtomicU64::new(0),
            peak: AtomicU64::new(0),
            chunks_done: AtomicU64::new(0),
            resumes: Mutex::new(Vec::new()),
            cleanups: Mutex::new(Vec::new()),
        })
    }

    fn checkpoint(n: u64) -> String {
        // Quotes, a backslash and non-ASCII: the checkpoint SQL must carry them intact.
        format!("pk='{n}' \\ ✓")
    }

    async fn copy(
        &self,
        task: &CopyTask,
        resume: Option<&str>,
        control: &MigrationControl,
    ) -> Result<CopyProgress, CopyError> {
        self.resumes
            .lock()
            .expect("resumes")
            .push((task.database.clone(), resume.map(str::to_string)));
        let start: u64 = resume
            .map(|r| r.chars().filter(char::is_ascii_digit).collect::<String>())
            .and_then(|d| d.parse().ok())
            .unwrap_or(0);
        let mut conn = SqlConn::connect(&self.cluster, None, Duration::from_secs(5))
            .await
            .map_err(|e| CopyError::Connection(e.to_string()))?;
        let mut progress = CopyProgress {
            stage: "copy".into(),
            rows_copied: start * 10,
            rows_total: self.chunks * 10,
            checkpoint: resume.map(str::to_string),
            capture: String::new(),
        };
        for n in start..self.chunks {
            control.gate().await.map_err(CopyError::Stopped)?;
            tokio::time::sleep(self.chunk_time).await;
            progress.rows_copied = (n + 1) * 10;
            progress.checkpoint = Some(Self::checkpoint(n + 1));
            conn.execute(&control.checkpoint_sql(&progress))
                .await
                .map_err(|e| CopyError::Failed(format!("checkpoint SQL: {e}")))?;
            control.report(&progress);
            self.chunks_done.fetch_add(1, Ordering::SeqCst);
        }
        progress.stage = "postponed".into();
        control.report(&progress);
        while !control.may_cut_over() {
            control.gate().await.map_err(CopyError::Stopped)?;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        progress.stage = "done".into();
        control.report(&progress);
        Ok(progress)
    }
}

/// The engine handed to the executor; the test keeps the other `Arc`.
struct SharedFake(Arc<FakeCopy>);

impl CopyEngine for SharedFake {
    fn task(&self, row: &MigrationRow) -> Result<CopyTask, String> {
        Ok(CopyTask {
            uuid: row.spec.uuid.clone(),
            database: row.spec.database.clone(),
            table: row.spec.table.clone(),
            spec: row.spec.statement.clone(),
            options: Default::default(),
        })
    }

    fn run<'a>(
        &'a self,
        _cluster: &'a Cluster,
        task: &'a CopyTask,
        resume: Option<&'a str>,
        control: &'a MigrationControl,
    ) -> BoxFuture<'a, Result<CopyProgress, CopyError>> {
        Box::pin(async move {
            let now = self.0.active.fetch_add(1, Ordering::SeqCst) + 1;
            self.0.peak.fetch_max(now, Ordering::SeqCst);
            let result = self.0.copy(task, resume, control).await;
            self.0.active.fetch_sub(1, Ordering::SeqCst);
            result
        })
    }

    fn clean_up<'a>(
        &'a self,
        _cluster: &'a Cluster,
        task: &'a CopyTask,
    ) -> BoxFuture<'a, Result<(), CopyError>> {
        Box::pin(async move {
            self.0
                .cleanups
                .lock()
                .expect("cleanups")
                .push(task.database.clone());
            Ok(())
        })
    }

    fn old_table_name(&self, task: &CopyTask) -> String {
        format!("_{}_old", task.table)
    }
}

fn spawn_fake(
    cluster: &Cluster,
    config: ExecutorConfig,
    engine: &Arc<FakeCopy>,
    shutdown: &watch::Receiver<bool>,
) -> Executor {
    Executor::spawn_with_engine(
        cluster.clone(),
        config,
        Arc::new(NoSignals),
        Arc::new(SharedFake(engine.clone())),
        shutdown.clone(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_store_round_trips_every_column_and_enqueue_is_idempotent() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c)
        .await
        .expect("create the queue");
    store::ensure_schema(&mut c)
        .await
        .expect("ensure_schema is idempotent");

    let tricky = "ALTER TABLE `o'rders` COMMENT 'it''s \\ \"quoted\" ✓'";
    let rows = vec![
        migration("u-1", "ws_1", "o'rders", tricky, Strategy::Copy),
        NewMigration {
            postpone_completion: true,
            ..migration("u-1", "ws_2", "o'rders", tricky, Strategy::Copy)
        },
        migration(
            "u-2",
            "ws_1",
            "items",
            "ALTER TABLE items ADD COLUMN x INT",
            Strategy::Instant,
        ),
    ];
    assert_eq!(store::enqueue(&mut c, &rows).await.expect("enqueue"), 3);
    assert_eq!(
        store::enqueue(&mut c, &rows).await.expect("enqueue again"),
        0,
        "a second enqueue of the same (uuid, database) inserts nothing"
    );

    let all = store::list(&mut c, None).await.expect("list");
    assert_eq!(all.len(), 3);
    let first = store::get_one(&mut c, "u-1", "ws_2")
        .await
        .expect("get_one")
        .expect("row");
    assert_eq!(
        first.spec, rows[1],
        "what was queued reads back as it was, quotes and backslashes included"
    );
    assert_eq!(first.status, Status::Queued);
    assert_eq!(
        (first.retries, first.rows_copied, first.progress),
        (0, 0, 0.0)
    );
    assert!(first.started_at.is_none() && first.owner.is_none() && first.checkpoint.is_none());

    assert_eq!(store::get(&mut c, "u-1").await.expect("get").len(), 2);
    assert_eq!(
        store::list(&mut c, Some("items"))
            .await
            .expect("like table")
            .len(),
        1
    );
    assert_eq!(
        store::list(&mut c, Some("u-%"))
            .await
            .expect("like uuid")
            .len(),
        3
    );
    assert_eq!(
        store::list(&mut c, Some("queued"))
            .await
            .expect("like status")
            .len(),
        3
    );
    assert_eq!(
        store::list(&mut c, Some("nothing%"))
            .await
            .expect("no match")
            .len(),
        0
    );

    // The checkpoint UPDATE the copy engine runs in each chunk's transaction.
    let progress = CopyProgress {
        stage: "copy".into(),
        rows_copied: 500,
        rows_total: 1000,
        checkpoint: Some("(42,'a\\'b') ✓\n".into()),
        capture: "binlog".into(),
    };
    c.execute("BEGIN").await.expect("begin");
    c.execute(&store::checkpoint_update_sql("u-1", "ws_1", &progress))
        .await
        .expect("the checkpoint SQL runs");
    c.execute("COMMIT").await.expect("commit");
    // It reads the same under NO_BACKSLASH_ESCAPES (the copy engine sets a strict mode).
    c.execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES,ANSI_QUOTES'")
        .await
        .expect("sql_mode");
    c.execute(&store::checkpoint_update_sql("u-1", "ws_2", &progress))
        .await
        .expect("the checkpoint SQL runs under any sql_mode");
    // Every value quote_literal makes reads back as itself, whatever the mode.
    for mode in ["NO_BACKSLASH_ESCAPES,ANSI_QUOTES", ""] {
        c.execute(&format!("SET SESSION sql_mode = '{mode}'"))
            .await
            .expect("sql_mode");
        for text in [tricky, "a\\b\\", "it's \"q\" ✓\n", "nul\0byte", ""] {
            let back = c
                .query(&format!("SELECT {}", quote_literal(text)))
                .await
                .expect("a quoted value parses");
            assert_eq!(
                back.scalar(),
                Some(text),
                "{text:?} under sql_mode '{mode}'"
            );
        }
    }
    c.execute("SET SESSION sql_mode = 'STRICT_ALL_TABLES,NO_BACKSLASH_ESCAPES,ANSI_QUOTES'")
        .await
        .expect("sql_mode");
    for db in ["ws_1", "ws_2"] {
        let row = store::get_one(&mut c, "u-1", db)
            .await
            .expect("get")
            .expect("row");
        assert_eq!(
            row.checkpoint, progress.checkpoint,
            "checkpoint intact in {db}"
        );
        assert_eq!(
            (row.rows_copied, row.rows_total, row.progress),
            (500, 1000, 50.0)
        );
        assert_eq!(row.stage, "copy");
    }

    // A queue written by a newer shardgate is left alone.
    c.execute("UPDATE _shardgate.versions SET version = 99")
        .await
        .expect("bump");
    match store::ensure_schema(&mut c).await {
        Err(StoreError::NewerSchema { found: 99, known }) => {
            assert_eq!(known, store::SCHEMA_VERSION)
        }
        other => panic!("a newer schema must be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn admin_requests_follow_the_documented_transitions() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c).await.expect("schema");
    let q = |uuid: &str, db: &str| {
        migration(
            uuid,
            db,
            "t",
            "ALTER TABLE t ADD COLUMN x INT",
            Strategy::Copy,
        )
    };
    store::enqueue(
        &mut c,
        &[
            q("a", "d1"),
            q("a", "d2"),
            q("b", "d1"),
            NewMigration {
                cluster: "c2".into(),
                ..q("c", "d1")
            },
        ],
    )
    .await
    .expect("enqueue");
    let uuid = |u: &str| Target::Uuid(u.to_string());
    let status = |rows: Vec<MigrationRow>| rows.iter().map(|r| r.status).collect::<Vec<_>>();

    // Pause and resume a queued migration.
    assert_eq!(
        store::request(&mut c, &uuid("a"), Request::Pause)
            .await
            .expect("pause"),
        2
    );
    assert_eq!(
        status(store::get(&mut c, "a").await.expect("get")),
        [Status::Paused, Status::Paused]
    );
    assert_eq!(
        store::request(&mut c, &uuid("a"), Request::Pause)
            .await
            .expect("pause again"),
        0
    );
    assert_eq!(
        store::request(&mut c, &uuid("a"), Request::Resume)
            .await
            .expect("resume"),
        2
    );
    assert_eq!(
        status(store::get(&mut c, "a").await.expect("get")),
        [Status::Queued, Status::Queued]
    );

    // A running row gets a pending request that the executor acts on at the next chunk.
    assert!(store::claim(&mut c, "a", "d1", "me").await.expect("claim"));
    assert!(
        !store::claim(&mut c, "a", "d1", "other")
            .await
            .expect("claim twice"),
        "a row is claimed once"
    );
    store::request(&mut c, &uuid("a"), Request::Pause)
        .await
        .expect("pause running");
    let d1 = store::get_one(&mut c, "a", "d1")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(
        (d1.status, d1.requested),
        (Status::Running, Some(PendingRequest::Pause))
    );
    assert_eq!(
        store::get_one(&mut c, "a", "d2")
            .await
            .expect("get")
            .expect("row")
            .status,
        Status::Paused
    );
    store::request(&mut c, &uuid("a"), Request::Resume)
        .await
        .expect("resume");
    let d1 = store::get_one(&mut c, "a", "d1")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(
        (d1.status, d1.requested),
        (Status::Running, None),
        "resume withdraws a pending pause"
    );

    // Cancel: a never-started row is cancelled at once; a started one after clean-up.
    store::request(&mut c, &uuid("a"), Request::Cancel)
        .await
        .expect("cancel");
    let d1 = store::get_one(&mut c, "a", "d1")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(
        (d1.status, d1.requested),
        (Status::Running, Some(PendingRequest::Cancel))
    );
    let d2 = store::get_one(&mut c, "a", "d2")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(d2.status, Status::Cancelled);
    assert!(d2.completed_at.is_some());
    // The executor finishes the clean-up and records it.
    c.execute(&store::checkpoint_update_sql(
        "a",
        "d1",
        &CopyProgress {
            stage: "copy".into(),
            rows_copied: 5,
            rows_total: 10,
            checkpoint: Some("5".into()),
            capture: String::new(),
        },
    ))
    .await
    .expect("checkpoint");
    store::set_status(&mut c, "a", "d1", Status::Cancelled, Some("cancelled"))
        .await
        .expect("set");
    let d1 = store::get_one(&mut c, "a", "d1")
        .await
        .expect("get")
        .expect("row");
    assert_eq!((d1.status, d1.requested), (Status::Cancelled, None));

    // Retry: failed/cancelled → queued, retries + 1, checkpoint and progress cleared.
    assert_eq!(
        store::request(&mut c, &uuid("a"), Request::Retry)
            .await
            .expect("retry"),
        2
    );
    let d1 = store::get_one(&mut c, "a", "d1")
        .await
        .expect("get")
        .expect("row");
    assert_eq!(
        (d1.status, d1.retries, d1.checkpoint.clone(), d1.rows_copied),
        (Status::Queued, 1, None, 0)
    );
    assert!(d1.started_at.is_none() && d1.owner.is_none() && d1.message.is_none());
    assert_eq!(
        store::request(&mut c, &uuid("a"), Request::Retry)
            .await
            .expect("retry queued"),
        0,
        "only final rows retry"
    );

    // Complete clears a postponed completion.
    c.execute("UPDATE _shardgate.schema_migrations SET postpone_completion = 1 WHERE uuid = 'b'")
        .await
        .expect("postpone");
    assert_eq!(
        store::request(&mut c, &uuid("b"), Request::Complete)
            .await
            .expect("complete"),
        1
    );
    assert!(
        !store::get_one(&mut c, "b", "d1")
            .await
            .expect("get")
            .expect("row")
            .spec
            .postpone_completion
    );

    // ALL ON CLUSTER touches only that cluster's rows; ALL touches every row.
    let on_c2 = Target::All {
        cluster: Some("c2".into()),
    };
    assert_eq!(
        store::request(&mut c, &on_c2, Request::Pause)
            .await
            .expect("pause c2"),
        1
    );
    assert_eq!(
        store::get_one(&mut c, "c", "d1")
            .await
            .expect("get")
            .expect("row")
            .status,
        Status::Paused
    );
    assert_eq!(
        store::get_one(&mut c, "b", "d1")
            .await
            .expect("get")
            .expect("row")
            .status,
        Status::Queued
    );
    let all = Target::All { cluster: None };
    assert_eq!(
        store::request(&mut c, &all, Request::Pause)
            .await
            .expect("pause all"),
        3
    );
    assert!(store::list(&mut c, None)
        .await
        .expect("list")
        .iter()
        .all(|r| r.status == Status::Paused));
    assert_eq!(
        store::overall_status(&store::get(&mut c, "a").await.expect("get")),
        Some(Status::Paused)
    );
}

/// Kills the connection that holds the executor lock, as a dead proxy would lose it.
fn kill_lock_holder(server: &LocalMariaDb) {
    let id = server
        .sql("SELECT IS_USED_LOCK('shardgate.migrations')")
        .expect("who holds the lock");
    let id = id.trim();
    assert!(id.parse::<u64>().is_ok(), "someone holds the lock: {id:?}");
    server
        .sql(&format!("KILL {id}"))
        .expect("kill the lock holder");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_the_lock_holder_runs_the_queue_and_another_takes_over_when_it_dies() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    servers[0]
        .sql("CREATE DATABASE d1; CREATE TABLE d1.t (id INT PRIMARY KEY)")
        .expect("schema");
    let (_stop, shutdown) = watch::channel(false);
    let engine = FakeCopy::new(&cluster, 1, Duration::ZERO);
    let a = spawn_fake(&cluster, fast_config(), &engine, &shutdown);
    let b = spawn_fake(&cluster, fast_config(), &engine, &shutdown);
    let (first, second) = wait_for(
        Duration::from_secs(10),
        "one executor to own the queue",
        || async {
            match (a.stats().owner(), b.stats().owner()) {
                (Some(_), Some(_)) => panic!("two executors own one cluster"),
                (Some(_), None) => Some((&a, &b)),
                (None, Some(_)) => Some((&b, &a)),
                (None, None) => None,
            }
        },
    )
    .await;
    let first_owner = first.stats().owner().expect("owner");

    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c).await.expect("schema");
    let batch: Vec<_> = (0..3)
        .map(|i| {
            let sql = format!("CREATE TABLE t{i} (id INT PRIMARY KEY)");
            migration(
                &format!("own-{i}"),
                "d1",
                &format!("t{i}"),
                &sql,
                Strategy::Direct,
            )
        })
        .collect();
    store::enqueue(&mut c, &batch).await.expect("enqueue");
    for i in 0..3 {
        let rows = wait_all_final(&cluster, &format!("own-{i}"), Duration::from_secs(10)).await;
        assert_eq!(rows[0].status, Status::Complete, "{:?}", rows[0].message);
        assert_eq!(
            rows[0].owner.as_deref(),
            Some(first_owner.as_str()),
            "only the lock holder runs migrations"
        );
    }
    assert_eq!(second.stats().owner(), None, "the other executor waits");
    assert_eq!(second.stats().snapshot().completed, 0);

    // The holder's connection dies (a crashed proxy): the other takes over.
    kill_lock_holder(&servers[0]);
    let second_owner = wait_for(
        Duration::from_secs(5),
        "the other executor to take over",
        || async { second.stats().owner() },
    )
    .await;
    assert_ne!(second_owner, first_owner);
    wait_for(
        Duration::from_secs(5),
        "the first executor to let go",
        || async { first.stats().owner().is_none().then_some(()) },
    )
    .await;
    store::enqueue(
        &mut c,
        &[migration(
            "own-after",
            "d1",
            "t9",
            "CREATE TABLE t9 (id INT PRIMARY KEY)",
            Strategy::Direct,
        )],
    )
    .await
    .expect("enqueue");
    let rows = wait_all_final(&cluster, "own-after", Duration::from_secs(10)).await;
    assert_eq!(rows[0].status, Status::Complete);
    assert_eq!(rows[0].owner.as_deref(), Some(second_owner.as_str()));
    a.abort();
    b.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn instant_and_direct_statements_run_one_at_a_time_spaced_and_never_two_on_one_table() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    let mut setup = String::new();
    for i in 0..20 {
        setup.push_str(&format!(
            "CREATE DATABASE ws_{i}; CREATE TABLE ws_{i}.t (id INT PRIMARY KEY, v INT);\n"
        ));
    }
    servers[0].sql(&setup).expect("20 databases");
    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c).await.expect("schema");
    let mut batch = Vec::new();
    for i in 0..20 {
        let db = format!("ws_{i}");
        let (sql, s) = if i % 2 == 0 {
            ("ALTER TABLE t ADD COLUMN added INT", Strategy::Instant)
        } else {
            ("ALTER TABLE t ADD INDEX by_v (v)", Strategy::Direct)
        };
        batch.push(migration("wave", &db, "t", sql, s));
        // A second migration on the same table of every fourth database.
        if i % 4 == 0 {
            batch.push(migration(
                &format!("second-{i}"),
                &db,
                "t",
                "ALTER TABLE t ADD COLUMN more INT",
                Strategy::Instant,
            ));
        }
    }
    // An instant migration MariaDB cannot do instantly fails; it is never copied.
    batch.push(migration(
        "refused",
        "ws_1",
        "t",
        "ALTER TABLE t MODIFY v BIGINT",
        Strategy::Instant,
    ));
    store::enqueue(&mut c, &batch).await.expect("enqueue");

    let config = ExecutorConfig {
        instant_spacing: Duration::from_millis(300),
        ..fast_config()
    };
    let (_stop, shutdown) = watch::channel(false);
    let engine = FakeCopy::new(&cluster, 1, Duration::ZERO);
    let executor = spawn_fake(&cluster, config, &engine, &shutdown);

    let mut rows = Vec::new();
    for uuid in [
        "wave",
        "second-0",
        "second-4",
        "second-8",
        "second-12",
        "second-16",
        "refused",
    ] {
        rows.extend(wait_all_final(&cluster, uuid, Duration::from_secs(60)).await);
    }
    let refused = rows
        .iter()
        .find(|r| r.spec.uuid == "refused")
        .expect("refused row");
    assert_eq!(refused.status, Status::Failed);
    assert!(
        refused
            .message
            .as_deref()
            .is_some_and(|m| m.contains("INSTANT")),
        "{:?}",
        refused.message
    );
    let v_type = servers[0]
        .sql("SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='ws_1' AND TABLE_NAME='t' AND COLUMN_NAME='v'")
        .expect("column type");
    assert_eq!(
        v_type.trim(),
        "int",
        "a refused instant change leaves the table alone"
    );

    let done: Vec<&MigrationRow> = rows.iter().filter(|r| r.spec.uuid != "refused").collect();
    for r in &done {
        assert_eq!(
            r.status,
            Status::Complete,
            "{}/{}: {:?}",
            r.spec.uuid,
            r.spec.database,
            r.message
        );
    }
    let span = |r: &MigrationRow| {
        (
            seconds(r.started_at.as_deref().expect("started")),
            seconds(r.completed_at.as_deref().expect("completed")),
        )
    };
    // One statement at a time: no two intervals overlap (so never two on one table).
    let mut spans: Vec<(f64, f64, &MigrationRow)> = rows
        .iter()
        .map(|r| {
            let (s, e) = span(r);
            (s, e, r)
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    for w in spans.windows(2) {
        assert!(
            w[1].0 >= w[0].1,
            "{}/{} started before {}/{} ended",
            w[1].2.spec.uuid,
            w[1].2.spec.database,
            w[0].2.spec.uuid,
            w[0].2.spec.database
        );
    }
    // Instant statements are spaced: each starts at least 300 ms after the previous ended.
    let instants: Vec<_> = spans
        .iter()
        .filter(|s| s.2.spec.strategy == Strategy::Instant)
        .collect();
    assert_eq!(instants.len(), 10 + 5 + 1);
    for w in instants.windows(2) {
        let gap = w[1].0 - w[0].1;
        assert!(gap >= 0.3, "instant DDL only {gap:.3} s apart");
    }
    // Both columns landed on the tables that had two migrations.
    let cols = servers[0]
        .sql("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='ws_0' AND TABLE_NAME='t'")
        .expect("columns");
    assert_eq!(cols.trim(), "4");
    let stats = executor.stats().snapshot();
    assert_eq!(stats.peak_running, 1);
    assert_eq!(stats.peak_running_copies, 0);
    assert_eq!(stats.completed, 25);
    executor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn copies_never_exceed_the_limit_and_never_share_a_table() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c).await.expect("schema");
    let mut batch: Vec<_> = (0..8)
        .map(|i| {
            migration(
                "copies",
                &format!("ws_{i}"),
                "t",
                "MODIFY v BIGINT",
                Strategy::Copy,
            )
        })
        .collect();
    // Two more on ws_0.t: they wait for each other.
    batch.push(migration(
        "copies-2",
        "ws_0",
        "t",
        "MODIFY w BIGINT",
        Strategy::Copy,
    ));
    batch.push(migration(
        "copies-3",
        "ws_0",
        "t",
        "MODIFY x BIGINT",
        Strategy::Copy,
    ));
    store::enqueue(&mut c, &batch).await.expect("enqueue");
    let config = ExecutorConfig {
        max_concurrent_copies_per_cluster: 2,
        ..fast_config()
    };
    let (_stop, shutdown) = watch::channel(false);
    let engine = FakeCopy::new(&cluster, 4, Duration::from_millis(200));
    let executor = spawn_fake(&cluster, config, &engine, &shutdown);
    let mut rows = wait_all_final(&cluster, "copies", Duration::from_secs(60)).await;
    rows.extend(wait_all_final(&cluster, "copies-2", Duration::from_secs(30)).await);
    rows.extend(wait_all_final(&cluster, "copies-3", Duration::from_secs(30)).await);
    for r in &rows {
        assert_eq!(r.status, Status::Complete, "{:?}", r.message);
        assert_eq!((r.rows_copied, r.progress), (40, 100.0));
        assert_eq!(
            r.checkpoint.as_deref(),
            Some(FakeCopy::checkpoint(4).as_str())
        );
        assert_eq!(
            r.old_table.as_deref(),
            Some("_t_old"),
            "the old table is kept"
        );
    }
    assert_eq!(
        engine.peak.load(Ordering::SeqCst),
        2,
        "the engine saw at most the limit at once"
    );
    assert_eq!(executor.stats().peak_running_copies(), 2);
    assert_eq!(executor.stats().snapshot().rows_copied, 400);
    let on_ws0: Vec<_> = rows
        .iter()
        .filter(|r| r.spec.database == "ws_0")
        .map(|r| {
            (
                seconds(r.started_at.as_deref().expect("s")),
                seconds(r.completed_at.as_deref().expect("e")),
            )
        })
        .collect();
    for (i, a) in on_ws0.iter().enumerate() {
        for b in &on_ws0[i + 1..] {
            assert!(
                a.1 <= b.0 || b.1 <= a.0,
                "two copies of ws_0.t overlapped: {a:?} {b:?}"
            );
        }
    }
    executor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn threads_running_above_the_threshold_holds_copies_back_and_says_why() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c).await.expect("schema");
    store::enqueue(
        &mut c,
        &[migration(
            "busy",
            "ws_1",
            "t",
            "MODIFY v BIGINT",
            Strategy::Copy,
        )],
    )
    .await
    .expect("enqueue");
    let config = ExecutorConfig {
        throttle: ThrottleConfig {
            threads_running_floor: 4.0,
            ..ThrottleConfig::default()
        },
        ..fast_config()
    };
    let (_stop, shutdown) = watch::channel(false);
    let engine = FakeCopy::new(&cluster, 100, Duration::from_millis(50));
    let executor = spawn_fake(&cluster, config, &engine, &shutdown);
    wait_for(Duration::from_secs(10), "the copy to start", || async {
        (engine.chunks_done.load(Ordering::SeqCst) > 2).then_some(())
    })
    .await;

    // Eight sessions running SLEEP(8) raise Threads_running well past 4.
    let load_started = Instant::now();
    let sleepers: Vec<_> = (0..8)
        .map(|_| {
            let client = servers[0].sql_client();
            std::thread::spawn(move || client.sql("SELECT SLEEP(8)"))
        })
        .collect();
    wait_for(
        Duration::from_secs(3),
        "the throttle to hold the copy",
        || async { executor.stats().snapshot().throttled.then_some(()) },
    )
    .await;
    let held_after = load_started.elapsed();
    assert!(
        held_after < Duration::from_secs(2),
        "the copy paused only after {held_after:?}"
    );
    // The gate is closed: no chunk goes through while the load lasts.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let chunks_at_hold = engine.chunks_done.load(Ordering::SeqCst);
    let row = wait_for(
        Duration::from_secs(3),
        "the reason in the queue",
        || async {
            let mut c = connect(&cluster).await;
            let row = store::get_one(&mut c, "busy", "ws_1").await.expect("get")?;
            row.throttle_reason.is_some().then_some(row)
        },
    )
    .await;
    assert!(
        row.throttle_reason
            .as_deref()
            .is_some_and(|r| r.contains("Threads_running")),
        "{:?}",
        row.throttle_reason
    );
    assert_eq!(row.status, Status::Running);
    let reason = executor
        .stats()
        .snapshot()
        .throttle_reason
        .expect("reason in the stats");
    assert!(reason.contains("Threads_running"), "{reason}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(
        engine.chunks_done.load(Ordering::SeqCst),
        chunks_at_hold,
        "no chunk ran while throttled"
    );
    assert!(executor.stats().snapshot().gate_waits > 0);

    for s in sleepers {
        let _ = s.join();
    }
    // Load gone: the copy resumes, finishes, and the reason is cleared.
    let rows = wait_all_final(&cluster, "busy", Duration::from_secs(30)).await;
    assert_eq!(rows[0].status, Status::Complete, "{:?}", rows[0].message);
    assert_eq!(rows[0].throttle_reason, None);
    assert!(!executor.stats().snapshot().throttled);
    executor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pause_resume_cancel_retry_and_complete_reach_a_running_copy() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c).await.expect("schema");
    store::enqueue(
        &mut c,
        &[NewMigration {
            postpone_completion: true,
            ..migration("ctl", "ws_1", "t", "MODIFY v BIGINT", Strategy::Copy)
        }],
    )
    .await
    .expect("enqueue");
    let (_stop, shutdown) = watch::channel(false);
    let engine = FakeCopy::new(&cluster, 30, Duration::from_millis(50));
    let executor = spawn_fake(&cluster, fast_config(), &engine, &shutdown);
    let target = Target::Uuid("ctl".into());

    // PAUSE stops it at a chunk boundary; the checkpoint stays.
    wait_for(Duration::from_secs(10), "a few chunks", || async {
        (engine.chunks_done.load(Ordering::SeqCst) >= 3).then_some(())
    })
    .await;
    store::request(&mut c, &target, Request::Pause)
        .await
        .expect("pause");
    let paused = wait_status(&cluster, "ctl", "ws_1", Status::Paused).await;
    let checkpoint = paused
        .checkpoint
        .clone()
        .expect("a paused copy keeps its checkpoint");
    assert_eq!(paused.requested, None);

    // RESUME continues from that checkpoint.
    store::request(&mut c, &target, Request::Resume)
        .await
        .expect("resume");
    wait_for(Duration::from_secs(10), "the copy to resume", || async {
        (engine.resumes.lock().expect("resumes").len() == 2).then_some(())
    })
    .await;
    assert_eq!(
        engine.resumes.lock().expect("resumes")[1].1.as_deref(),
        Some(checkpoint.as_str())
    );

    // Completion is postponed: it waits at the cut-over until COMPLETE.
    wait_for(Duration::from_secs(10), "the postponed stage", || async {
        let mut c = connect(&cluster).await;
        let row = store::get_one(&mut c, "ctl", "ws_1").await.expect("get")?;
        (row.stage == "postponed").then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        store::get_one(&mut c, "ctl", "ws_1")
            .await
            .expect("get")
            .expect("row")
            .status,
        Status::Running
    );
    store::request(&mut c, &target, Request::Complete)
        .await
        .expect("complete");
    let done = wait_all_final(&cluster, "ctl", Duration::from_secs(5)).await;
    assert_eq!(done[0].status, Status::Complete);

    // CANCEL of a running copy: the engine stops at its gate.
    store::enqueue(
        &mut c,
        &[migration(
            "cx",
            "ws_2",
            "t",
            "MODIFY v BIGINT",
            Strategy::Copy,
        )],
    )
    .await
    .expect("enqueue");
    wait_status(&cluster, "cx", "ws_2", Status::Running).await;
    store::request(&mut c, &Target::Uuid("cx".into()), Request::Cancel)
        .await
        .expect("cancel");
    let cancelled = wait_status(&cluster, "cx", "ws_2", Status::Cancelled).await;
    assert_eq!(cancelled.requested, None);

    // RETRY runs it again from the start.
    store::request(&mut c, &Target::Uuid("cx".into()), Request::Retry)
        .await
        .expect("retry");
    wait_status(&cluster, "cx", "ws_2", Status::Running).await;
    // CANCEL of a paused copy runs the engine's clean-up.
    store::request(&mut c, &Target::Uuid("cx".into()), Request::Pause)
        .await
        .expect("pause");
    wait_status(&cluster, "cx", "ws_2", Status::Paused).await;
    store::request(&mut c, &Target::Uuid("cx".into()), Request::Cancel)
        .await
        .expect("cancel paused");
    let row = wait_status(&cluster, "cx", "ws_2", Status::Cancelled).await;
    assert_eq!(
        engine.cleanups.lock().expect("cleanups").as_slice(),
        ["ws_2"]
    );
    assert_eq!(row.retries, 1);
    store::request(&mut c, &Target::Uuid("cx".into()), Request::Retry)
        .await
        .expect("retry");
    let rows = wait_all_final(&cluster, "cx", Duration::from_secs(20)).await;
    assert_eq!((rows[0].status, rows[0].retries), (Status::Complete, 2));
    let resumes = engine.resumes.lock().expect("resumes").clone();
    let ws2: Vec<_> = resumes.iter().filter(|r| r.0 == "ws_2").collect();
    assert!(
        ws2.iter().all(|r| r.1.is_none()),
        "a retry starts from scratch: {ws2:?}"
    );
    executor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_owner_resumes_a_running_copy_from_its_checkpoint() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c).await.expect("schema");
    store::enqueue(
        &mut c,
        &[migration(
            "crash",
            "ws_1",
            "t",
            "MODIFY v BIGINT",
            Strategy::Copy,
        )],
    )
    .await
    .expect("enqueue");
    let (_stop, shutdown) = watch::channel(false);
    let engine = FakeCopy::new(&cluster, 40, Duration::from_millis(50));
    let first = spawn_fake(&cluster, fast_config(), &engine, &shutdown);
    wait_for(Duration::from_secs(10), "a few chunks", || async {
        (engine.chunks_done.load(Ordering::SeqCst) >= 5).then_some(())
    })
    .await;
    // The proxy dies without unwinding: its connections close, the row stays running.
    first.abort();
    let crashed = wait_for(
        Duration::from_secs(5),
        "the checkpoint to settle",
        || async {
            let mut c = connect(&cluster).await;
            let row = store::get_one(&mut c, "crash", "ws_1")
                .await
                .expect("get")?;
            (row.status == Status::Running && row.checkpoint.is_some()).then_some(row)
        },
    )
    .await;
    let second = spawn_fake(&cluster, fast_config(), &engine, &shutdown);
    let rows = wait_all_final(&cluster, "crash", Duration::from_secs(30)).await;
    assert_eq!(rows[0].status, Status::Complete, "{:?}", rows[0].message);
    assert_ne!(rows[0].owner, crashed.owner, "the new owner finished it");
    assert!(
        rows[0]
            .message
            .as_deref()
            .is_some_and(|m| m.contains("was lost")),
        "{:?}",
        rows[0].message
    );
    let resumes = engine.resumes.lock().expect("resumes").clone();
    assert_eq!(resumes.len(), 2);
    let resumed_at = resumes[1].1.clone().expect("resumed from a checkpoint");
    let n = |s: &str| {
        s.chars()
            .filter(char::is_ascii_digit)
            .collect::<String>()
            .parse::<u64>()
            .expect("n")
    };
    let crashed_at = n(crashed.checkpoint.as_deref().expect("checkpoint"));
    assert!(
        n(&resumed_at) >= crashed_at,
        "resumed at {resumed_at}, the crash left {crashed_at}"
    );
    second.abort();
}

/// Statements keep working on the cluster during the incident replay.
async fn point_selects(
    addr: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> (u64, Vec<String>) {
    let opts = common::mysql_opts(&addr, "shardgate", "shardgate", Some("ws_0"));
    let mut conn = mysql_async::Conn::new(opts).await.expect("connect");
    let (mut ok, mut errors) = (0u64, Vec::new());
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        use mysql_async::prelude::Queryable;
        let db = i % 200;
        i += 1;
        match conn
            .query_first::<(i64, i64), _>(format!("SELECT id, v FROM ws_{db}.t WHERE id = 7"))
            .await
        {
            Ok(_) => ok += 1,
            Err(e) => errors.push(e.to_string()),
        }
    }
    (ok, errors)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn incident_replay_200_type_changes_never_exceed_the_copy_limit() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    let mut setup = String::new();
    for i in 0..200 {
        setup.push_str(&format!(
            "CREATE DATABASE ws_{i}; CREATE TABLE ws_{i}.t (id INT PRIMARY KEY, v INT NOT NULL);\n\
             INSERT INTO ws_{i}.t SELECT seq, seq FROM ws_{i}.seq_1_to_200;\n"
        ));
    }
    servers[0].sql(&setup).expect("200 workspace databases");
    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c).await.expect("schema");
    let batch: Vec<_> = (0..200)
        .map(|i| {
            migration(
                "incident",
                &format!("ws_{i}"),
                "t",
                "ALTER TABLE t MODIFY v BIGINT NOT NULL",
                Strategy::Copy,
            )
        })
        .collect();
    store::enqueue(&mut c, &batch)
        .await
        .expect("enqueue all at once");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..4)
        .map(|_| tokio::spawn(point_selects(servers[0].addr(), stop.clone())))
        .collect();
    let (_stop, shutdown) = watch::channel(false);
    let executor = Executor::spawn(
        cluster.clone(),
        fast_config(),
        Arc::new(NoSignals),
        shutdown.clone(),
    );
    let rows = wait_all_final(&cluster, "incident", Duration::from_secs(900)).await;
    stop.store(true, Ordering::SeqCst);
    for r in &rows {
        assert_eq!(
            r.status,
            Status::Complete,
            "{}: {:?}",
            r.spec.database,
            r.message
        );
    }
    assert_eq!(
        executor.stats().peak_running_copies(),
        1,
        "never more copies at once than the limit"
    );
    let mut spans: Vec<(f64, f64)> = rows
        .iter()
        .map(|r| {
            (
                seconds(r.started_at.as_deref().expect("s")),
                seconds(r.completed_at.as_deref().expect("e")),
            )
        })
        .collect();
    spans.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(
        spans.windows(2).all(|w| w[1].0 >= w[0].1),
        "copies overlapped"
    );
    let types = servers[0]
        .sql("SELECT COUNT(*) FROM information_schema.COLUMNS WHERE TABLE_NAME='t' AND COLUMN_NAME='v' AND DATA_TYPE='bigint'")
        .expect("types");
    assert_eq!(types.trim(), "200");
    for r in readers {
        let (ok, errors) = r.await.expect("reader");
        assert!(ok > 0);
        assert!(
            errors.is_empty(),
            "point selects failed during the migrations: {errors:?}"
        );
    }
    executor.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_crashed_copy_resumes_from_its_checkpoint_and_the_checksum_matches() {
    let servers = common::start_servers(1);
    let cluster = cluster_of(&servers[0]);
    servers[0]
        .sql(
            "CREATE DATABASE ws_1; CREATE TABLE ws_1.t (id INT PRIMARY KEY, v INT NOT NULL); \
              INSERT INTO ws_1.t SELECT seq, seq * 7 FROM ws_1.seq_1_to_200000;",
        )
        .expect("a 200,000-row table");
    let before = servers[0]
        .sql("SELECT SUM(CRC32(CONCAT(id, ':', v))) FROM ws_1.t")
        .expect("checksum");
    let mut c = connect(&cluster).await;
    store::ensure_schema(&mut c).await.expect("schema");
    store::enqueue(
        &mut c,
        &[migration(
            "k9",
            "ws_1",
            "t",
            "ALTER TABLE t MODIFY v BIGINT NOT NULL",
            Strategy::Copy,
        )],
    )
    .await
    .expect("enqueue");
    let (_stop, shutdown) = watch::channel(false);
    let first = Executor::spawn(
        cluster.clone(),
        fast_config(),
        Arc::new(NoSignals),
        shutdown.clone(),
    );
    let crashed = wait_for(
        Duration::from_secs(60),
        "the copy to be part way",
        || async {
            let mut c = connect(&cluster).await;
            let row = store::get_one(&mut c, "k9", "ws_1").await.expect("get")?;
            (row.rows_copied > 20_000).then_some(row)
        },
    )
    .await;
    first.abort();
    let second = Executor::spawn(
        cluster.clone(),
        fast_config(),
        Arc::new(NoSignals),
        shutdown.clone(),
    );
    let rows = wait_all_final(&cluster, "k9", Duration::from_secs(300)).await;
    assert_eq!(rows[0].status, Status::Complete, "{:?}", rows[0].message);
    assert!(rows[0]
        .message
        .as_deref()
        .is_some_and(|m| m.contains("was lost")));
    assert!(crashed.checkpoint.is_some());
    let after = servers[0]
        .sql("SELECT SUM(CRC32(CONCAT(id, ':', v))) FROM ws_1.t")
        .expect("checksum");
    assert_eq!(before, after);
    let ty = servers[0]
        .sql("SELECT DATA_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA='ws_1' AND TABLE_NAME='t' AND COLUMN_NAME='v'")
        .expect("type");
    assert_eq!(ty.trim(), "bigint");
    second.abort();
}
