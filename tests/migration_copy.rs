//! The online copy-table engine against real MariaDB: type changes under concurrent
//! writes, refusal of truncation, cancel, resume, a held table at cut-over, and
//! postponed completion.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;
use shardgate::backend::SqlConn;
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::migrations::copy::{
    self, checkpoint_rows, CopyControl, CopyError, CopyNames, CopyOptions, CopyProgress, CopyStop,
    CopyTask,
};
use shardgate::vschema::Cluster;

/// Every test is bounded by this.
const TEST_LIMIT: Duration = Duration::from_secs(240);

fn cluster(server: &LocalMariaDb) -> Cluster {
    Cluster {
        name: "c1".into(),
        standbys: Vec::new(),
        primary: server.addr(),
        user: server.user.clone(),
        password: server.password.clone(),
        tls: None,
    }
}

fn task(uuid: &str, table: &str, spec: &str) -> CopyTask {
    CopyTask {
        uuid: uuid.into(),
        database: "app".into(),
        table: table.into(),
        spec: spec.into(),
        options: CopyOptions::default(),
    }
}

async fn sql(server: &LocalMariaDb) -> SqlConn {
    SqlConn::connect(&cluster(server), Some("app"), Duration::from_secs(10))
        .await
        .expect("connect")
}

async fn exec(conn: &mut SqlConn, statement: &str) {
    conn.execute(statement)
        .await
        .unwrap_or_else(|e| panic!("{statement}: {e}"));
}

async fn scalar(conn: &mut SqlConn, query: &str) -> Option<String> {
    conn.query(query)
        .await
        .unwrap_or_else(|e| panic!("{query}: {e}"))
        .scalar()
        .map(str::to_string)
}

/// A server with database `app`, table `ckpt` (where the test control checkpoints) and
/// table `t(id INT PK, v INT, s VARCHAR(100))` with `rows` rows: v = id*7 % 1000,
/// s = 's<id>'.
async fn setup(rows: u64) -> (LocalMariaDb, SqlConn) {
    let server = tokio::task::spawn_blocking(|| common::start_servers(1).remove(0))
        .await
        .expect("start server");
    server
        .sql("CREATE DATABASE app")
        .expect("create database app");
    let mut conn = sql(&server).await;
    exec(
        &mut conn,
        "CREATE TABLE ckpt (id INT PRIMARY KEY, checkpoint TEXT, rows_copied BIGINT)",
    )
    .await;
    exec(&mut conn, "INSERT INTO ckpt VALUES (1, NULL, 0)").await;
    exec(
        &mut conn,
        "CREATE TABLE t (id INT NOT NULL PRIMARY KEY, v INT NOT NULL, s VARCHAR(100)) \
         ENGINE=InnoDB",
    )
    .await;
    if rows > 0 {
        exec(
            &mut conn,
            &format!(
                "INSERT INTO t SELECT seq, seq * 7 % 1000, CONCAT('s', seq) FROM seq_1_to_{rows}"
            ),
        )
        .await;
    }
    (server, conn)
}

/// A control for tests: checkpoints into `ckpt`, may stop after some gate calls, may
/// hold the cut-over, records every progress report.
#[derive(Default)]
struct TestControl {
    gates: AtomicUsize,
    stop_after: Option<(usize, CopyStop)>,
    hold_cutover: AtomicBool,
    reports: Mutex<Vec<(Instant, CopyProgress)>>,
}

impl TestControl {
    fn stopping_after(gates: usize, stop: CopyStop) -> Self {
        TestControl {
            stop_after: Some((gates, stop)),
            ..TestControl::default()
        }
    }

    fn last(&self) -> CopyProgress {
        self.reports
            .lock()
            .expect("reports")
            .last()
            .map(|(_, p)| p.clone())
            .unwrap_or_default()
    }

    fn stage_seen(&self, stage: &str) -> bool {
        self.reports
            .lock()
            .expect("reports")
            .iter()
            .any(|(_, p)| p.stage == stage)
    }

    /// Rows per second between the first `copy` report and the first `checksum` one.
    fn copy_rate(&self) -> f64 {
        let reports = self.reports.lock().expect("reports");
        let start = reports.iter().find(|(_, p)| p.stage == "copy");
        let end = reports.iter().find(|(_, p)| p.stage == "checksum");
        match (start, end) {
            (Some((a, pa)), Some((b, pb))) => {
                (pb.rows_copied - pa.rows_copied) as f64 / (*b - *a).as_secs_f64()
            }
            _ => 0.0,
        }
    }

    /// Largest rows_copied step between two consecutive copy reports (a chunk).
    fn largest_chunk(&self) -> u64 {
        let reports = self.reports.lock().expect("reports");
        let copies: Vec<u64> = reports
            .iter()
            .filter(|(_, p)| p.stage == "copy")
            .map(|(_, p)| p.rows_copied)
            .collect();
        copies
            .windows(2)
            .map(|w| w[1].saturating_sub(w[0]))
            .max()
            .unwrap_or(0)
    }
}

impl CopyControl for TestControl {
    fn checkpoint_sql(&self, progress: &CopyProgress) -> String {
        let checkpoint = progress.checkpoint.as_deref().unwrap_or("");
        format!(
            "UPDATE ckpt SET checkpoint = '{}', rows_copied = {} WHERE id = 1",
            checkpoint.replace('\'', "''"),
            progress.rows_copied
        )
    }

    async fn gate(&self) -> Result<(), CopyStop> {
        let n = self.gates.fetch_add(1, Ordering::SeqCst) + 1;
        match &self.stop_after {
            Some((after, stop)) if n > *after => Err(stop.clone()),
            _ => Ok(()),
        }
    }

    fn may_cut_over(&self) -> bool {
        !self.hold_cutover.load(Ordering::SeqCst)
    }

    fn report(&self, progress: &CopyProgress) {
        self.reports
            .lock()
            .expect("reports")
            .push((Instant::now(), progress.clone()));
    }
}

/// Triggers and tables whose names the copy derived for `task`, still present.
async fn leftovers(conn: &mut SqlConn, task: &CopyTask) -> Vec<String> {
    let names = CopyNames::of(task);
    let rows = conn
        .query(&format!(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'app' \
             UNION ALL SELECT TABLE_NAME FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = 'app' AND TABLE_NAME = '{}'",
            names.ghost
        ))
        .await
        .expect("leftovers");
    rows.rows.into_iter().flatten().flatten().collect()
}

async fn column_type(conn: &mut SqlConn, table: &str, column: &str) -> String {
    scalar(
        conn,
        &format!(
            "SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'app' \
             AND TABLE_NAME = '{table}' AND COLUMN_NAME = '{column}'"
        ),
    )
    .await
    .unwrap_or_default()
}

/// The whole table as id -> (v, s).
async fn table_rows(conn: &mut SqlConn, table: &str) -> HashMap<i64, (i64, Option<String>)> {
    let rows = conn
        .query(&format!("SELECT id, v, s FROM {table}"))
        .await
        .expect("read table");
    rows.rows
        .into_iter()
        .map(|r| {
            let id = r[0].as_deref().and_then(|v| v.parse().ok()).expect("id");
            let v = r[1].as_deref().and_then(|v| v.parse().ok()).expect("v");
            (id, (v, r[2].clone()))
        })
        .collect()
}

fn initial_row(id: i64) -> (i64, Option<String>) {
    (id * 7 % 1000, Some(format!("s{id}")))
}

/// What one writer knows: the final state of every row it wrote and acknowledged, and
/// rows whose state is unknown (the connection broke mid-statement).
#[derive(Default)]
struct WriterLog {
    rows: HashMap<i64, Option<(i64, Option<String>)>>,
    unknown: HashSet<i64>,
    acknowledged: u64,
    rolled_back: u64,
}

/// Inserts, updates and deletes rows it alone owns (id % writers == me, plus fresh ids
/// in its own range) until `stop`, recording every acknowledged write.
async fn writer(
    addr: String,
    me: i64,
    writers: i64,
    existing: i64,
    stop: Arc<AtomicBool>,
) -> WriterLog {
    let pool = mysql_async::Pool::new(common::mysql_opts(
        &addr,
        "shardgate",
        "shardgate",
        Some("app"),
    ));
    let mut conn = pool.get_conn().await.expect("writer connects");
    let mut log = WriterLog::default();
    let mut next_new = 10_000_000 + me * 1_000_000;
    let mut i: i64 = 0;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let pick = (i * 7919 + me * 104_729) % existing;
        let owned = pick - pick % writers + me;
        let owned = if owned < 1 { owned + writers } else { owned };
        let (id, statement, outcome) = match i % 4 {
            0 | 1 => {
                next_new += 1;
                let v = i % 100_000;
                (
                    next_new,
                    format!("INSERT INTO t (id, v, s) VALUES ({next_new}, {v}, 'w{me}-{i}')"),
                    Some((v, Some(format!("w{me}-{i}")))),
                )
            }
            2 => {
                let v = 2_000_000_000 - i;
                (
                    owned,
                    format!("UPDATE t SET v = {v}, s = 'u{i}' WHERE id = {owned}"),
                    Some((v, Some(format!("u{i}")))),
                )
            }
            _ => (owned, format!("DELETE FROM t WHERE id = {owned}"), None),
        };
        match conn.query_drop(&statement).await {
            Ok(()) => {
                log.acknowledged += 1;
                // An UPDATE or DELETE of a row already deleted changes nothing.
                let was_there = match log.rows.get(&id) {
                    Some(state) => state.is_some(),
                    None => id <= existing,
                };
                if i % 4 >= 2 && !was_there {
                    continue;
                }
                log.rows.insert(id, outcome);
            }
            Err(mysql_async::Error::Server(_)) => log.rolled_back += 1,
            Err(_) => {
                log.unknown.insert(id);
                conn = pool.get_conn().await.expect("writer reconnects");
            }
        }
    }
    drop(conn);
    let _ = pool.disconnect().await;
    log
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn int_to_bigint_on_200k_rows_under_concurrent_writes_keeps_every_acknowledged_write() {
    type_change_under_writes(false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_trigger_fallback_keeps_every_acknowledged_write_too() {
    type_change_under_writes(true).await;
}

/// INT -> BIGINT on 200k rows while three writers insert, update and delete; with
/// binlog capture, or with the trigger fallback.
async fn type_change_under_writes(triggers_only: bool) {
    tokio::time::timeout(TEST_LIMIT, async {
        const ROWS: i64 = 200_000;
        const WRITERS: i64 = 3;
        let loaded = Instant::now();
        let (server, mut conn) = setup(ROWS as u64).await;
        eprintln!("loaded {ROWS} rows in {:?}", loaded.elapsed());
        let stop = Arc::new(AtomicBool::new(false));
        let writers: Vec<_> = (0..WRITERS)
            .map(|me| tokio::spawn(writer(server.addr(), me, WRITERS, ROWS, stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;
        let mut task = task("0a1b2c3d-int-bigint", "t", "MODIFY v BIGINT NOT NULL");
        task.options.triggers_only = triggers_only;
        let control = TestControl::default();
        let started = Instant::now();
        let done = copy::run(&cluster(&server), &task, None, &control).await;
        let took = started.elapsed();
        // Keep writing a moment after the cut-over: those writes land in the new table.
        tokio::time::sleep(Duration::from_millis(300)).await;
        stop.store(true, Ordering::SeqCst);
        let mut logs = Vec::new();
        for w in writers {
            logs.push(w.await.expect("writer task"));
        }
        let progress = done.expect("the copy completes");
        assert_eq!(progress.stage, "done");
        if triggers_only {
            assert!(
                progress.capture.starts_with("triggers"),
                "{}",
                progress.capture
            );
        } else {
            assert_eq!(progress.capture, "binlog");
        }
        eprintln!(
            "copy of {ROWS} rows took {took:?}; copy stage rate {:.0} rows/s; \
             largest chunk {} rows; writes acknowledged {}, rolled back {}",
            control.copy_rate(),
            control.largest_chunk(),
            logs.iter().map(|l| l.acknowledged).sum::<u64>(),
            logs.iter().map(|l| l.rolled_back).sum::<u64>(),
        );
        assert_eq!(column_type(&mut conn, "t", "v").await, "bigint(20)");

        // Independent comparison: the table equals the initial rows plus every
        // acknowledged write.
        let mut expected: HashMap<i64, (i64, Option<String>)> =
            (1..=ROWS).map(|id| (id, initial_row(id))).collect();
        let mut unknown = HashSet::new();
        for log in &logs {
            assert!(
                log.acknowledged > 50,
                "writers should have written during the copy"
            );
            unknown.extend(log.unknown.iter().copied());
            for (id, state) in &log.rows {
                match state {
                    Some(row) => expected.insert(*id, row.clone()),
                    None => expected.remove(id),
                };
            }
        }
        let mut actual = table_rows(&mut conn, "t").await;
        for id in &unknown {
            expected.remove(id);
            actual.remove(id);
        }
        let missing: Vec<_> = expected
            .iter()
            .filter(|(id, row)| actual.get(id) != Some(row))
            .take(5)
            .collect();
        assert!(
            missing.is_empty(),
            "rows differ from acknowledged writes: {missing:?}"
        );
        assert_eq!(actual.len(), expected.len(), "no extra rows");
        // The old table is kept, untouched by later writes, with the old type.
        let old = copy::old_table_name(&task);
        assert_eq!(column_type(&mut conn, &old, "v").await, "int(11)");
        assert!(
            leftovers(&mut conn, &task).await.is_empty(),
            "no triggers or ghost after the cut-over"
        );
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_narrowing_change_that_would_truncate_fails_and_leaves_the_original_untouched() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, mut conn) = setup(5_000).await;
        exec(
            &mut conn,
            "UPDATE t SET s = CONCAT(s, '-too-long-for-five') WHERE id = 4321",
        )
        .await;
        let before = table_rows(&mut conn, "t").await;
        let task = task("bad00001", "t", "MODIFY s VARCHAR(5)");
        let control = TestControl::default();
        let result = copy::run(&cluster(&server), &task, None, &control).await;
        match result {
            Err(CopyError::Failed(why)) => eprintln!("failed as expected: {why}"),
            other => panic!("expected Failed, got {other:?}"),
        }
        assert_eq!(table_rows(&mut conn, "t").await, before);
        assert_eq!(column_type(&mut conn, "t", "s").await, "varchar(100)");
        assert_eq!(leftovers(&mut conn, &task).await, Vec::<String>::new());
        // Also refused before anything is created: a table without a usable key.
        exec(&mut conn, "CREATE TABLE nokey (a INT, b INT)").await;
        let nokey = self::task("bad00002", "nokey", "MODIFY a BIGINT");
        let result = copy::run(&cluster(&server), &nokey, None, &control).await;
        assert!(
            matches!(&result, Err(CopyError::Failed(w)) if w.contains("PRIMARY KEY")),
            "{result:?}"
        );
    })
    .await
    .expect("test finishes in time");
}

/// Waits until the control has reported `stage` (or panics after 60 s).
/// Starts `task` with its completion postponed, and waits until it is (stage
/// `postponed`); the cut-over happens once `hold_cutover` is cleared.
async fn run_postponed(
    server: &LocalMariaDb,
    task: &CopyTask,
) -> (
    Arc<TestControl>,
    tokio::task::JoinHandle<Result<CopyProgress, CopyError>>,
) {
    let control = Arc::new(TestControl::default());
    control.hold_cutover.store(true, Ordering::SeqCst);
    let run = {
        let (cluster, task, control) = (cluster(server), task.clone(), control.clone());
        tokio::spawn(async move { copy::run(&cluster, &task, None, &*control).await })
    };
    wait_for_stage(&control, "postponed").await;
    (control, run)
}

async fn wait_for_stage(control: &TestControl, stage: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !control.stage_seen(stage) {
        assert!(Instant::now() < deadline, "stage {stage} never reached");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn assert_initial_rows(rows: &HashMap<i64, (i64, Option<String>)>, n: i64) {
    assert_eq!(rows.len() as i64, n);
    for id in 1..=n {
        assert_eq!(rows.get(&id), Some(&initial_row(id)), "row {id}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_mid_copy_and_clean_up_leave_nothing_and_a_fresh_run_completes() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, mut conn) = setup(50_000).await;
        let task = task("cafe0001", "t", "MODIFY v BIGINT NOT NULL");
        // A pause keeps ghost and triggers; clean_up removes them.
        let paused = TestControl::stopping_after(2, CopyStop::Paused);
        let result = copy::run(&cluster(&server), &task, None, &paused).await;
        assert_eq!(result, Err(CopyError::Stopped(CopyStop::Paused)));
        // The test servers have a row-based binary log: no triggers, just the ghost.
        assert_eq!(paused.last().capture, "binlog");
        assert_eq!(leftovers(&mut conn, &task).await.len(), 1, "the ghost");
        copy::clean_up(&cluster(&server), &task)
            .await
            .expect("clean_up");
        assert_eq!(leftovers(&mut conn, &task).await, Vec::<String>::new());
        copy::clean_up(&cluster(&server), &task)
            .await
            .expect("clean_up is idempotent");

        // A cancel mid-copy removes everything by itself.
        let cancelled = TestControl::stopping_after(3, CopyStop::Cancelled);
        let result = copy::run(&cluster(&server), &task, None, &cancelled).await;
        assert_eq!(result, Err(CopyError::Stopped(CopyStop::Cancelled)));
        let at_cancel = cancelled.last();
        assert!(
            at_cancel.rows_copied > 0 && at_cancel.rows_copied < 50_000,
            "cancelled mid-copy: {at_cancel:?}"
        );
        assert_eq!(leftovers(&mut conn, &task).await, Vec::<String>::new());
        copy::clean_up(&cluster(&server), &task)
            .await
            .expect("clean_up");
        assert_initial_rows(&table_rows(&mut conn, "t").await, 50_000);
        assert_eq!(column_type(&mut conn, "t", "v").await, "int(11)");

        // RETRY: a fresh run completes.
        let control = TestControl::default();
        let done = copy::run(&cluster(&server), &task, None, &control)
            .await
            .expect("fresh run completes");
        assert_eq!(done.rows_copied, 50_000);
        assert_eq!(column_type(&mut conn, "t", "v").await, "bigint(20)");
        assert_initial_rows(&table_rows(&mut conn, "t").await, 50_000);
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_from_the_last_checkpoint_redoes_at_most_one_chunk() {
    tokio::time::timeout(TEST_LIMIT, async {
        const ROWS: u64 = 60_000;
        let (server, mut conn) = setup(ROWS).await;
        let task = task("5e5e0001", "t", "MODIFY v BIGINT NOT NULL");
        let first = TestControl::stopping_after(4, CopyStop::Paused);
        let result = copy::run(&cluster(&server), &task, None, &first).await;
        assert_eq!(result, Err(CopyError::Stopped(CopyStop::Paused)));
        // The checkpoint the executor would have stored, committed with its chunk.
        let stored = scalar(&mut conn, "SELECT checkpoint FROM ckpt WHERE id = 1")
            .await
            .expect("a checkpoint was stored");
        assert_eq!(Some(stored.clone()), first.last().checkpoint);
        let rows_before = checkpoint_rows(&stored).expect("checkpoint has rows");
        assert_eq!(
            Some(rows_before),
            scalar(&mut conn, "SELECT rows_copied FROM ckpt")
                .await
                .and_then(|r| r.parse().ok())
        );
        assert!(rows_before > 0 && rows_before < ROWS, "{rows_before}");

        let second = TestControl::default();
        let done = copy::run(&cluster(&server), &task, Some(&stored), &second)
            .await
            .expect("resumed run completes");
        let copied_after = done.rows_copied - rows_before;
        let recopied = (rows_before + copied_after).saturating_sub(ROWS);
        let chunk = first.largest_chunk().max(second.largest_chunk());
        eprintln!(
            "paused at {rows_before} rows, resumed and copied {copied_after}; \
             re-copied {recopied} (largest chunk {chunk})"
        );
        assert!(recopied <= chunk, "at most one chunk redone");
        assert_eq!(recopied, 0, "the checkpoint commits with its chunk");
        // The resumed run continued: it never went back through ghost/triggers.
        assert!(!second.stage_seen("ghost") && !second.stage_seen("triggers"));
        assert_eq!(column_type(&mut conn, "t", "v").await, "bigint(20)");
        assert_initial_rows(&table_rows(&mut conn, "t").await, ROWS as i64);
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_transaction_holding_the_table_makes_the_cutover_back_off_without_blocking_reads() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, mut conn) = setup(20_000).await;
        let mut task = task("401d0001", "t", "MODIFY v BIGINT NOT NULL");
        task.options.lock_wait = Duration::from_secs(1);
        task.options.cutover_attempts = 100;
        let (control, run) = run_postponed(&server, &task).await;

        // An application transaction that read t and stays open.
        let opts = common::mysql_opts(&server.addr(), "shardgate", "shardgate", Some("app"));
        let mut holder = mysql_async::Conn::new(opts.clone()).await.expect("holder");
        holder.query_drop("BEGIN").await.expect("begin");
        let _: Vec<i64> = holder
            .query("SELECT v FROM t WHERE id = 7")
            .await
            .expect("holder reads t");

        // Point selects by another client, timed, for as long as the migration runs.
        let probing = Arc::new(AtomicBool::new(true));
        let prober = {
            let probing = probing.clone();
            tokio::spawn(async move {
                let mut c = mysql_async::Conn::new(opts).await.expect("prober");
                let (mut max, mut n) = (Duration::ZERO, 0u64);
                while probing.load(Ordering::SeqCst) {
                    let started = Instant::now();
                    let _: Option<i64> = c
                        .query_first(format!("SELECT id FROM t WHERE id = {}", n % 20_000 + 1))
                        .await
                        .expect("point select never fails");
                    max = max.max(started.elapsed());
                    n += 1;
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                (max, n)
            })
        };

        control.hold_cutover.store(false, Ordering::SeqCst);
        wait_for_stage(&control, "cutover").await;
        tokio::time::sleep(Duration::from_secs(4)).await;
        assert!(!run.is_finished(), "the cut-over must wait for the holder");
        assert_eq!(column_type(&mut conn, "t", "v").await, "int(11)");

        holder.query_drop("COMMIT").await.expect("commit");
        let committed = Instant::now();
        let done = run.await.expect("run task").expect("migration completes");
        let after_commit = committed.elapsed();
        probing.store(false, Ordering::SeqCst);
        let (max, probes) = prober.await.expect("prober task");
        eprintln!(
            "completed {after_commit:?} after the holder committed; {probes} point selects, \
             slowest {max:?} (lock_wait 1 s)"
        );
        assert_eq!(done.stage, "done");
        assert!(after_commit < Duration::from_secs(10));
        assert!(
            max < Duration::from_millis(2_500),
            "point selects blocked {max:?}, more than lock_wait + margin"
        );
        assert_eq!(column_type(&mut conn, "t", "v").await, "bigint(20)");
    })
    .await
    .expect("test finishes in time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postponed_completion_keeps_the_ghost_in_sync_then_cuts_over_when_allowed() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, mut conn) = setup(10_000).await;
        let task = task(
            "9057a0e1",
            "t",
            "MODIFY v BIGINT NOT NULL, ADD COLUMN note VARCHAR(10) NOT NULL DEFAULT 'n'",
        );
        let (control, run) = run_postponed(&server, &task).await;
        let ghost = CopyNames::of(&task).ghost;
        exec(&mut conn, "INSERT INTO t VALUES (50000, 5, 'new')").await;
        exec(
            &mut conn,
            "UPDATE t SET v = 4000000, id = 60000 WHERE id = 3",
        )
        .await;
        exec(&mut conn, "DELETE FROM t WHERE id = 4").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!run.is_finished(), "completion is postponed");
        let in_ghost =
            |id: i64| format!("SELECT CONCAT(v, '/', s, '/', note) FROM `{ghost}` WHERE id = {id}");
        assert_eq!(
            scalar(&mut conn, &in_ghost(50000)).await.as_deref(),
            Some("5/new/n")
        );
        assert_eq!(
            scalar(&mut conn, &in_ghost(60000)).await.as_deref(),
            Some("4000000/s3/n")
        );
        assert_eq!(scalar(&mut conn, &in_ghost(3)).await, None, "old key gone");
        assert_eq!(
            scalar(&mut conn, &in_ghost(4)).await,
            None,
            "deleted row gone"
        );

        // Idle longer than the capture tolerates silence (5 s): the server's heartbeats
        // keep the binlog stream alive, and the next write still reaches the ghost.
        tokio::time::sleep(Duration::from_secs(7)).await;
        assert!(!run.is_finished(), "still postponed after an idle spell");
        exec(&mut conn, "INSERT INTO t VALUES (50001, 6, 'after idle')").await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            scalar(&mut conn, &in_ghost(50001)).await.as_deref(),
            Some("6/after idle/n")
        );

        let allowed = Instant::now();
        control.hold_cutover.store(false, Ordering::SeqCst);
        let done = run.await.expect("run task").expect("migration completes");
        eprintln!(
            "cut over {:?} after completion was allowed",
            allowed.elapsed()
        );
        assert!(allowed.elapsed() < Duration::from_secs(5));
        assert_eq!(done.stage, "done");
        assert_eq!(
            scalar(
                &mut conn,
                "SELECT CONCAT(v, '/', note) FROM t WHERE id = 50000"
            )
            .await
            .as_deref(),
            Some("5/n")
        );
        // 10,000 rows, one deleted, two inserted.
        assert_eq!(
            scalar(&mut conn, "SELECT COUNT(*) FROM t").await.as_deref(),
            Some("10001")
        );
        assert_eq!(column_type(&mut conn, "t", "v").await, "bigint(20)");
    })
    .await
    .expect("test finishes in time");
}

/// Where the binary log cannot serve a copy, the copy falls back to triggers, says why,
/// and still completes: an account without the `REPLICATION SLAVE` grant (the server
/// refuses the stream), then mixed-format logging.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_usable_binlog_the_copy_falls_back_to_triggers_and_says_why() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, mut conn) = setup(3_000).await;
        server
            .sql(
                "CREATE USER nodump@'%' IDENTIFIED BY 'nodump'; \
                 GRANT ALL ON app.* TO nodump@'%'; GRANT BINLOG MONITOR ON *.* TO nodump@'%'; \
                 SET GLOBAL log_bin_trust_function_creators = 1",
            )
            .expect(
                "an account without REPLICATION SLAVE (nor SUPER: triggers need the trust flag)",
            );
        let mut limited = cluster(&server);
        limited.user = "nodump".into();
        limited.password = "nodump".into();
        let task = task("f0110001", "t", "MODIFY v BIGINT NOT NULL");
        let control = TestControl::default();
        let done = copy::run(&limited, &task, None, &control)
            .await
            .expect("the copy completes with triggers");
        assert!(
            done.capture
                .starts_with("triggers (the server refused the binlog stream"),
            "{}",
            done.capture
        );
        assert_eq!(column_type(&mut conn, "t", "v").await, "bigint(20)");
        assert_initial_rows(&table_rows(&mut conn, "t").await, 3_000);

        server
            .sql("SET GLOBAL binlog_format = 'MIXED'")
            .expect("mixed binlog");
        let task = self::task("f0110002", "t", "MODIFY v DECIMAL(30,0) NOT NULL");
        let control = TestControl::default();
        let done = copy::run(&cluster(&server), &task, None, &control)
            .await
            .expect("the copy completes with triggers");
        assert_eq!(done.capture, "triggers (binlog_format is MIXED, not ROW)");
        assert_eq!(column_type(&mut conn, "t", "v").await, "decimal(30,0)");
    })
    .await
    .expect("test finishes in time");
}

/// The comparison before the cut-over catches a ghost row that differs from the
/// original (here changed behind the capture's back, as a bug or a stray write
/// would): the copy fails, nothing is swapped, the original keeps its rows and type.
/// The unchanged rows are compared outside the write hold, so this is caught there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ghost_row_that_differs_fails_the_copy_before_anything_is_swapped() {
    tokio::time::timeout(TEST_LIMIT, async {
        let (server, mut conn) = setup(5_000).await;
        let task = task("bad0c0de", "t", "MODIFY v BIGINT NOT NULL");
        let (control, run) = run_postponed(&server, &task).await;
        let ghost = CopyNames::of(&task).ghost;
        exec(
            &mut conn,
            &format!("UPDATE `{ghost}` SET v = v + 1 WHERE id = 4242"),
        )
        .await;
        // Writes to the original go on meanwhile; they are not what fails the copy.
        exec(&mut conn, "UPDATE t SET v = 1 WHERE id = 17").await;
        control.hold_cutover.store(false, Ordering::SeqCst);
        match run.await.expect("run task") {
            Err(CopyError::Failed(why)) => assert!(why.contains("checksum mismatch"), "{why}"),
            other => panic!("expected a checksum mismatch, got {other:?}"),
        }
        assert!(
            control.stage_seen("checksum") && !control.stage_seen("done"),
            "failed at the comparison"
        );
        assert_eq!(column_type(&mut conn, "t", "v").await, "int(11)");
        assert_eq!(
            scalar(&mut conn, "SELECT v FROM t WHERE id = 17")
                .await
                .as_deref(),
            Some("1")
        );
        assert_eq!(
            scalar(&mut conn, "SELECT COUNT(*) FROM t").await.as_deref(),
            Some("5000")
        );
        assert!(
            leftovers(&mut conn, &task).await.is_empty(),
            "the failed copy left nothing"
        );
    })
    .await
    .expect("test finishes in time");
}
