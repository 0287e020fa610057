//! One executor per cluster: it owns the cluster's queue while it holds the cluster's
//! lock, and runs the queued migrations under the limits and the throttle.
//!
//! - Ownership: `GET_LOCK('shardgate.migrations', 0)` on a dedicated connection. The
//!   server frees it when that connection dies (the proxy crashed, was `kill -9`ed or
//!   lost the network), so at most one executor runs a cluster's queue and another
//!   proxy's executor takes over within seconds. Without the lock an executor retries
//!   every [`ExecutorConfig::lock_retry_interval`].
//! - Takeover: rows left `running` by another owner whose heartbeat stopped are queued
//!   again with their checkpoint, so a copy resumes where it was.
//! - Limits: at most [`ExecutorConfig::max_concurrent_copies_per_cluster`] copies at
//!   once; never two migrations on one table; one `instant`/`direct` statement at a
//!   time, `instant` ones [`ExecutorConfig::instant_spacing`] apart; oldest first,
//!   then by database (one DDL's rows take turns across databases).
//! - Throttle: see [`throttle`]; a copy is held back at its next chunk.
//!
//! [`ExecutorStats`] is the public face for tests and metrics.

pub mod control;
pub mod engine;
mod stats;
pub mod throttle;

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tokio::task::{Id, JoinError, JoinHandle, JoinSet};

pub use control::MigrationControl;
use control::{lock, Shared};
pub use engine::{BoxFuture, CopyEngine, OnlineCopy};
pub use stats::{ExecutorStats, StatsSnapshot};
pub use throttle::{NoSignals, ThrottleConfig, ThrottleSignals, ThrottleState};

use super::copy::{CopyError, CopyOptions, CopyStop};
use super::store::{self, MigrationRow, PendingRequest};
use super::{Status, Strategy};
use crate::backend::{quote_ident, SqlConn, SqlError};
use crate::vschema::Cluster;

/// The user-level lock that makes an executor the owner of a cluster's queue.
pub const LOCK_NAME: &str = "shardgate.migrations";

/// MariaDB's `ER_LOCK_WAIT_TIMEOUT`.
const ER_LOCK_WAIT_TIMEOUT: u16 = 1205;

/// How an executor runs.
#[derive(Debug, Clone)]
pub struct ExecutorConfig {
    /// Copies running at once on one cluster.
    pub max_concurrent_copies_per_cluster: usize,
    /// Pause between the end of one `instant` statement and the start of the next.
    pub instant_spacing: Duration,
    /// `lock_wait_timeout` for `instant` statements.
    pub instant_lock_wait: Duration,
    /// How long the old table is kept after a copy's cut-over before it is dropped.
    pub keep_old_table: Duration,
    /// How often the queue is read, requests are picked up and heartbeats written.
    pub poll_interval: Duration,
    /// How often an executor without the lock tries to take it.
    pub lock_retry_interval: Duration,
    /// A `running` row of another owner is taken over once its heartbeat is this old.
    pub orphan_after: Duration,
    /// Connecting to the cluster.
    pub connect_timeout: Duration,
    /// Any of the executor's own bookkeeping statements (never the DDL itself).
    pub statement_timeout: Duration,
    /// At shutdown, how long running migrations get to stop at a chunk boundary.
    pub shutdown_grace: Duration,
    /// Throttle thresholds.
    pub throttle: ThrottleConfig,
    /// Knobs for every copy.
    pub copy: CopyOptions,
}

impl Default for ExecutorConfig {
    fn default() -> Self {
        ExecutorConfig {
            max_concurrent_copies_per_cluster: 1,
            instant_spacing: Duration::from_secs(5),
            instant_lock_wait: Duration::from_secs(2),
            keep_old_table: Duration::from_secs(3600),
            poll_interval: Duration::from_secs(1),
            lock_retry_interval: Duration::from_secs(3),
            orphan_after: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(5),
            statement_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(10),
            throttle: ThrottleConfig::default(),
            copy: CopyOptions::default(),
        }
    }
}

/// A running executor.
pub struct Executor {
    cluster: String,
    stats: Arc<ExecutorStats>,
    task: JoinHandle<()>,
}

impl Executor {
    /// Starts the executor of `cluster` with the online copy engine. It runs until
    /// `shutdown` turns true (or its sender is dropped).
    pub fn spawn(
        cluster: Cluster,
        config: ExecutorConfig,
        signals: Arc<dyn ThrottleSignals>,
        shutdown: watch::Receiver<bool>,
    ) -> Executor {
        let engine = Arc::new(OnlineCopy {
            options: config.copy.clone(),
        });
        Self::spawn_with_engine(cluster, config, signals, engine, shutdown)
    }

    /// Like [`Executor::spawn`] with another copy engine (tests use a stand-in).
    pub fn spawn_with_engine(
        cluster: Cluster,
        config: ExecutorConfig,
        signals: Arc<dyn ThrottleSignals>,
        engine: Arc<dyn CopyEngine>,
        shutdown: watch::Receiver<bool>,
    ) -> Executor {
        let stats = Arc::new(ExecutorStats::default());
        let name = cluster.name.clone();
        let ctx = Arc::new(Ctx {
            cluster,
            config,
            signals,
            engine,
            stats: stats.clone(),
        });
        Executor {
            cluster: name,
            stats,
            task: tokio::spawn(run(ctx, shutdown)),
        }
    }

    /// The cluster it runs.
    pub fn cluster(&self) -> &str {
        &self.cluster
    }

    /// Its live counters.
    pub fn stats(&self) -> Arc<ExecutorStats> {
        self.stats.clone()
    }

    /// Stops it at once, as a crash would: its connections close (freeing the lock),
    /// its rows stay `running` and another executor takes them over.
    pub fn abort(&self) {
        self.task.abort();
    }

    /// Waits for it to finish after shutdown was signalled.
    pub async fn join(self) {
        let _ = self.task.await;
    }
}

struct Ctx {
    /// The cluster as the executor started with it; [`Ctx::cluster_now`] follows
    /// failovers.
    cluster: Cluster,
    config: ExecutorConfig,
    signals: Arc<dyn ThrottleSignals>,
    engine: Arc<dyn CopyEngine>,
    stats: Arc<ExecutorStats>,
}

impl Ctx {
    /// The cluster with its primary now: after a failover, copies and bookkeeping go
    /// to the new primary, never to the old one (which may be a standby by then).
    fn cluster_now(&self) -> Cluster {
        self.signals.current(&self.cluster)
    }
}

/// How a migration's task ended.
#[derive(Debug)]
enum Outcome {
    Complete {
        old_table: Option<String>,
    },
    Failed(String),
    Paused,
    Cancelled,
    /// Nothing was changed for good (e.g. no connection): queue it again.
    Requeue(String),
    /// The executor let go (lock lost, shutdown): leave the row as it is.
    Stopped,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Copy,
    Instant,
    Direct,
    CleanUp,
}

struct Running {
    uuid: String,
    database: String,
    table: String,
    kind: Kind,
    shared: Option<Arc<Shared>>,
}

#[derive(Default)]
struct Owned {
    tasks: JoinSet<Outcome>,
    running: HashMap<Id, Running>,
    last_instant_end: Option<Instant>,
}

impl Owned {
    fn copies(&self) -> usize {
        self.running
            .values()
            .filter(|r| r.kind == Kind::Copy)
            .count()
    }

    fn statement_running(&self) -> bool {
        self.running
            .values()
            .any(|r| matches!(r.kind, Kind::Instant | Kind::Direct))
    }

    fn publish(&self, stats: &ExecutorStats) {
        let running = self
            .running
            .values()
            .filter(|r| r.kind != Kind::CleanUp)
            .count();
        stats.set_running(running as u64, self.copies() as u64);
    }
}

async fn run(ctx: Arc<Ctx>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        match acquire_lock(&ctx).await {
            Ok(Some(lock_conn)) => {
                let owner = owner_id();
                *lock(&ctx.stats.owner) = Some(owner.clone());
                tracing::info!(cluster = %ctx.cluster.name, %owner, "migration executor owns the queue");
                let result = own(&ctx, lock_conn, &owner, &mut shutdown).await;
                *lock(&ctx.stats.owner) = None;
                ctx.stats.set_throttle(None);
                ctx.stats.set_running(0, 0);
                if let Err(e) = result {
                    tracing::warn!(cluster = %ctx.cluster.name, error = %e, "migration executor let go of the queue");
                }
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(cluster = %ctx.cluster.name, error = %e, "migration executor cannot reach the cluster")
            }
        }
        tokio::select! {
            _ = crate::timer::sleep(ctx.config.lock_retry_interval) => {}
            changed = shutdown.changed() => if changed.is_err() { return },
        }
    }
}

fn owner_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    format!(
        "{host}:{}:{:08x}",
        std::process::id(),
        rand::random::<u32>()
    )
}

async fn connect(ctx: &Ctx, database: Option<&str>) -> Result<SqlConn, String> {
    SqlConn::connect(&ctx.cluster_now(), database, ctx.config.connect_timeout)
        .await
        .map_err(|e| format!("connect to {}: {e}", ctx.cluster.name))
}

/// Bounds one bookkeeping statement (a hung cluster must not hang the executor).
async fn timed<T, E: std::fmt::Display>(
    ctx: &Ctx,
    f: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, String> {
    match crate::timer::timeout(ctx.config.statement_timeout, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!(
            "{} did not answer within {:?}",
            ctx.cluster.name, ctx.config.statement_timeout
        )),
    }
}

async fn acquire_lock(ctx: &Ctx) -> Result<Option<SqlConn>, String> {
    let mut conn = connect(ctx, None).await?;
    let got = timed(
        ctx,
        conn.query(&format!("SELECT GET_LOCK('{LOCK_NAME}', 0)")),
    )
    .await?;
    Ok((got.scalar() == Some("1")).then_some(conn))
}

/// Runs the queue while the lock is held; returns `Ok` at shutdown, `Err` when the lock
/// or the cluster was lost.
async fn own(
    ctx: &Arc<Ctx>,
    mut lock_conn: SqlConn,
    owner: &str,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), String> {
    let mut conn = connect(ctx, None).await?;
    timed(ctx, store::ensure_schema(&mut conn)).await?;
    timed(ctx, conn.execute("SET SESSION lock_wait_timeout = 5")).await?;
    let (throttle_tx, throttle_rx) = watch::channel(ThrottleState::default());
    let (stop_sampler, sampler_stop) = watch::channel(false);
    tokio::spawn(throttle::sample_loop(
        ctx.cluster.clone(),
        ctx.config.throttle.clone(),
        ctx.signals.clone(),
        ctx.config.connect_timeout,
        throttle_tx,
        sampler_stop,
    ));
    let mut state = Owned::default();
    let primary = ctx.cluster_now().primary;
    let result = loop {
        if ctx.cluster_now().primary != primary {
            // A failover: these connections are to the former primary. Let go; the
            // next turn owns the queue on the new one.
            break Err(format!(
                "cluster {} failed over from {primary}",
                ctx.cluster.name
            ));
        }
        let reason = throttle_rx.borrow().cluster_reason.clone();
        ctx.stats.set_throttle(reason);
        if let Err(e) = step(
            ctx,
            &mut conn,
            &mut lock_conn,
            owner,
            &mut state,
            &throttle_rx,
        )
        .await
        {
            break Err(e);
        }
        tokio::select! {
            _ = crate::timer::sleep(ctx.config.poll_interval) => {}
            changed = shutdown.changed() => {
                if changed.is_err() || *shutdown.borrow() {
                    break Ok(());
                }
            }
            Some(done) = state.tasks.join_next_with_id(), if !state.tasks.is_empty() => {
                if let Err(e) = finish(ctx, &mut conn, &mut state, done).await {
                    break Err(e);
                }
            }
        }
    };
    let _ = stop_sampler.send(true);
    let_go(ctx, &mut conn, &mut state, result.is_ok()).await;
    result
}

/// Stops every running migration at its next chunk boundary and waits for them (up to
/// the shutdown grace). At a clean shutdown (lock still held) their rows are queued
/// again at once; otherwise they stay `running` for the next owner to take over.
async fn let_go(ctx: &Arc<Ctx>, conn: &mut SqlConn, state: &mut Owned, still_owner: bool) {
    for r in state.running.values() {
        if let Some(s) = &r.shared {
            s.stop.store(true, Ordering::Release);
        }
    }
    let deadline = tokio::time::Instant::now() + ctx.config.shutdown_grace;
    while !state.tasks.is_empty() {
        match crate::timer::timeout_at(deadline, state.tasks.join_next_with_id()).await {
            Ok(Some(done)) => {
                if still_owner {
                    let _ = finish(ctx, conn, state, done).await;
                }
            }
            Ok(None) | Err(_) => break,
        }
    }
    state.tasks.abort_all();
    state.running.clear();
}

/// One poll: check the lock, pick up requests, write progress and heartbeats, take
/// over orphans, start what may start, drop old tables.
async fn step(
    ctx: &Arc<Ctx>,
    conn: &mut SqlConn,
    lock_conn: &mut SqlConn,
    owner: &str,
    state: &mut Owned,
    throttle: &watch::Receiver<ThrottleState>,
) -> Result<(), String> {
    let held = timed(
        ctx,
        lock_conn.query(&format!(
            "SELECT IS_USED_LOCK('{LOCK_NAME}') = CONNECTION_ID()"
        )),
    )
    .await?;
    if held.scalar() != Some("1") {
        return Err("the executor lock is no longer held".into());
    }
    while let Some(done) = state.tasks.try_join_next_with_id() {
        finish(ctx, conn, state, done).await?;
    }
    refresh_running(ctx, conn, owner, state).await?;
    timed(
        ctx,
        store::requeue_orphans(conn, owner, ctx.config.orphan_after.as_secs_f64()),
    )
    .await?;
    start_runnable(ctx, conn, owner, state, throttle).await?;
    drop_old_tables(ctx, conn).await?;
    let depth = timed(ctx, store::queue_depth(conn)).await?;
    ctx.stats.queue_depth.store(depth, Ordering::Relaxed);
    state.publish(&ctx.stats);
    Ok(())
}

/// Reads admin requests for the running rows and writes their progress back.
async fn refresh_running(
    ctx: &Ctx,
    conn: &mut SqlConn,
    owner: &str,
    state: &mut Owned,
) -> Result<(), String> {
    let rows = timed(ctx, store::running_of(conn, owner)).await?;
    for row in rows {
        let Some(shared) = state
            .running
            .values()
            .find(|r| r.uuid == row.spec.uuid && r.database == row.spec.database)
            .and_then(|r| r.shared.clone())
        else {
            continue;
        };
        *lock(&shared.requested) = row.requested;
        shared
            .postpone
            .store(row.spec.postpone_completion, Ordering::Release);
        let progress = lock(&shared.progress).clone();
        let reason = lock(&shared.throttle_reason).clone();
        timed(
            ctx,
            store::report_progress(
                conn,
                &row.spec.uuid,
                &row.spec.database,
                &progress,
                shared.eta_seconds(),
                reason.as_deref(),
            ),
        )
        .await?;
    }
    timed(ctx, store::heartbeat(conn, owner)).await?;
    Ok(())
}

async fn start_runnable(
    ctx: &Arc<Ctx>,
    conn: &mut SqlConn,
    owner: &str,
    state: &mut Owned,
    throttle: &watch::Receiver<ThrottleState>,
) -> Result<(), String> {
    let candidates = timed(ctx, store::runnable(conn, 1000)).await?;
    let mut busy: HashSet<(String, String)> = state
        .running
        .values()
        .map(|r| (r.database.clone(), r.table.clone()))
        .collect();
    let running: HashSet<(String, String)> = state
        .running
        .values()
        .map(|r| (r.uuid.clone(), r.database.clone()))
        .collect();
    for row in candidates {
        if running.contains(&(row.spec.uuid.clone(), row.spec.database.clone())) {
            continue;
        }
        let table = (row.spec.database.clone(), row.spec.table.clone());
        if busy.contains(&table) {
            continue;
        }
        if row.requested == Some(PendingRequest::Cancel) {
            busy.insert(table);
            spawn(ctx, state, row, Kind::CleanUp, throttle);
            continue;
        }
        let kind = match row.spec.strategy {
            Strategy::Copy => {
                if state.copies() >= ctx.config.max_concurrent_copies_per_cluster {
                    continue;
                }
                Kind::Copy
            }
            Strategy::Instant => {
                let spaced = state
                    .last_instant_end
                    .is_none_or(|t| t.elapsed() >= ctx.config.instant_spacing);
                if state.statement_running() || !spaced {
                    continue;
                }
                Kind::Instant
            }
            Strategy::Direct => {
                if state.statement_running() {
                    continue;
                }
                Kind::Direct
            }
        };
        if !timed(
            ctx,
            store::claim(conn, &row.spec.uuid, &row.spec.database, owner),
        )
        .await?
        {
            continue;
        }
        busy.insert(table);
        spawn(ctx, state, row, kind, throttle);
        state.publish(&ctx.stats);
    }
    Ok(())
}

fn spawn(
    ctx: &Arc<Ctx>,
    state: &mut Owned,
    row: MigrationRow,
    kind: Kind,
    throttle: &watch::Receiver<ThrottleState>,
) {
    let shared = (kind == Kind::Copy)
        .then(|| Arc::new(Shared::new(row.spec.postpone_completion, row.rows_copied)));
    let entry = Running {
        uuid: row.spec.uuid.clone(),
        database: row.spec.database.clone(),
        table: row.spec.table.clone(),
        kind,
        shared: shared.clone(),
    };
    let ctx = ctx.clone();
    let throttle = throttle.clone();
    let handle = state.tasks.spawn(async move {
        match (kind, shared) {
            (Kind::Copy, Some(shared)) => run_copy(&ctx, row, shared, throttle).await,
            (Kind::Instant, _) => run_statement(&ctx, &row, true).await,
            (Kind::Direct, _) => run_statement(&ctx, &row, false).await,
            _ => clean_up(&ctx, &row).await,
        }
    });
    state.running.insert(handle.id(), entry);
}

async fn run_copy(
    ctx: &Ctx,
    row: MigrationRow,
    shared: Arc<Shared>,
    throttle: watch::Receiver<ThrottleState>,
) -> Outcome {
    let task = match ctx.engine.task(&row) {
        Ok(t) => t,
        Err(m) => return Outcome::Failed(m),
    };
    let control = MigrationControl::new(
        row.spec.uuid.clone(),
        row.spec.database.clone(),
        row.spec.table.clone(),
        shared.clone(),
        throttle,
        ctx.stats.clone(),
    );
    let result = ctx
        .engine
        .run(
            &ctx.cluster_now(),
            &task,
            row.checkpoint.as_deref(),
            &control,
        )
        .await;
    let letting_go = shared.stop.load(Ordering::Acquire);
    match result {
        Ok(_) => Outcome::Complete {
            old_table: Some(ctx.engine.old_table_name(&task)),
        },
        Err(CopyError::Failed(m)) => Outcome::Failed(m),
        Err(CopyError::Stopped(CopyStop::Cancelled)) => Outcome::Cancelled,
        Err(CopyError::Stopped(CopyStop::Paused)) if letting_go => Outcome::Stopped,
        Err(CopyError::Stopped(CopyStop::Paused)) => Outcome::Paused,
        Err(CopyError::Connection(_)) if letting_go => Outcome::Stopped,
        Err(CopyError::Connection(m)) => Outcome::Requeue(format!("connection lost: {m}")),
    }
}

/// Runs an `instant` (with `ALGORITHM=INSTANT` forced and a short lock wait) or
/// `direct` (as written) statement in the row's database.
async fn run_statement(ctx: &Ctx, row: &MigrationRow, instant: bool) -> Outcome {
    let mut conn = match connect(ctx, Some(&row.spec.database)).await {
        Ok(c) => c,
        Err(e) => return Outcome::Requeue(e),
    };
    if instant {
        // `alter_algorithm` makes every ALTER of this session INSTANT or an error, so
        // the statement runs as written and can never fall back to a copy.
        let setup = format!(
            "SET SESSION lock_wait_timeout = {}, SESSION alter_algorithm = 'INSTANT'",
            ctx.config.instant_lock_wait.as_secs().max(1)
        );
        if let Err(e) = conn.execute(&setup).await {
            return Outcome::Requeue(format!("session setup failed: {e}"));
        }
    }
    match conn.execute(&row.spec.statement).await {
        Ok(_) => Outcome::Complete { old_table: None },
        Err(e) if instant && e.code() == Some(ER_LOCK_WAIT_TIMEOUT) => Outcome::Requeue(format!(
            "the table was busy (lock wait timeout); will try again: {e}"
        )),
        Err(SqlError::Server(e)) if instant => Outcome::Failed(format!(
            "MariaDB cannot do this with ALGORITHM=INSTANT; nothing was changed \
             (ERROR {}: {})",
            e.code, e.message
        )),
        Err(e @ SqlError::Server(_)) => Outcome::Failed(e.to_string()),
        Err(e) => Outcome::Failed(format!(
            "{e}; the statement may or may not have been applied: check the table, then RETRY"
        )),
    }
}

/// Acts on a pending cancel of a migration that is not running: removes a copy's ghost
/// table and triggers.
async fn clean_up(ctx: &Ctx, row: &MigrationRow) -> Outcome {
    if row.spec.strategy != Strategy::Copy {
        return Outcome::Cancelled;
    }
    let task = match ctx.engine.task(row) {
        Ok(t) => t,
        Err(_) => return Outcome::Cancelled,
    };
    match ctx.engine.clean_up(&ctx.cluster_now(), &task).await {
        Ok(()) => Outcome::Cancelled,
        Err(CopyError::Connection(m)) => Outcome::Requeue(format!("clean-up: {m}")),
        Err(e) => Outcome::Failed(format!("clean-up after cancel failed: {e:?}")),
    }
}

/// Records how a task ended.
async fn finish(
    ctx: &Ctx,
    conn: &mut SqlConn,
    state: &mut Owned,
    done: Result<(Id, Outcome), JoinError>,
) -> Result<(), String> {
    let (id, outcome) = match done {
        Ok((id, outcome)) => (id, outcome),
        Err(e) => {
            let id = e.id();
            let outcome = if e.is_panic() {
                Outcome::Failed(format!(
                    "the executor's task panicked: {}",
                    panic_message(e.into_panic())
                ))
            } else {
                Outcome::Stopped
            };
            (id, outcome)
        }
    };
    let Some(r) = state.running.remove(&id) else {
        return Ok(());
    };
    let (uuid, db) = (r.uuid.as_str(), r.database.as_str());
    match &outcome {
        Outcome::Complete { old_table } => {
            // The old table first: a reader that sees `complete` sees where the old
            // table is too (SHOW MIGRATIONS, a test polling for the end).
            if let Some(old) = old_table {
                timed(ctx, store::set_old_table(conn, uuid, db, Some(old))).await?;
            }
            timed(
                ctx,
                store::set_status(conn, uuid, db, Status::Complete, None),
            )
            .await?;
            ctx.stats.completed.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Failed(m) => {
            tracing::warn!(%uuid, database = %db, error = %m, "migration failed");
            timed(
                ctx,
                store::set_status(conn, uuid, db, Status::Failed, Some(m)),
            )
            .await?;
            ctx.stats.failed.fetch_add(1, Ordering::Relaxed);
        }
        Outcome::Paused => {
            timed(ctx, store::set_status(conn, uuid, db, Status::Paused, None)).await?;
        }
        Outcome::Cancelled => {
            timed(
                ctx,
                store::set_status(conn, uuid, db, Status::Cancelled, Some("cancelled")),
            )
            .await?;
        }
        Outcome::Requeue(m) => {
            timed(
                ctx,
                store::set_status(conn, uuid, db, Status::Queued, Some(m)),
            )
            .await?;
        }
        Outcome::Stopped => {}
    }
    // Spacing counts from the recorded end, so the queue's timestamps show it.
    if r.kind == Kind::Instant {
        state.last_instant_end = Some(Instant::now());
    }
    state.publish(&ctx.stats);
    Ok(())
}

fn panic_message(p: Box<dyn std::any::Any + Send>) -> String {
    if let Some(s) = p.downcast_ref::<&str>() {
        (*s).to_string()
    } else if let Some(s) = p.downcast_ref::<String>() {
        s.clone()
    } else {
        "(no message)".to_string()
    }
}

async fn drop_old_tables(ctx: &Ctx, conn: &mut SqlConn) -> Result<(), String> {
    let due = timed(
        ctx,
        store::old_tables_due(conn, ctx.config.keep_old_table.as_secs()),
    )
    .await?;
    for row in due {
        let Some(old) = row.old_table.as_deref() else {
            continue;
        };
        let sql = format!(
            "DROP TABLE IF EXISTS {}.{}",
            quote_ident(&row.spec.database),
            quote_ident(old)
        );
        match timed(ctx, conn.execute(&sql)).await {
            Ok(_) => {
                timed(
                    ctx,
                    store::set_old_table(conn, &row.spec.uuid, &row.spec.database, None),
                )
                .await?
            }
            // Busy (a lock wait timeout): try again at the next poll.
            Err(e) => {
                tracing::info!(database = %row.spec.database, table = %old, error = %e, "old table not dropped yet")
            }
        }
    }
    Ok(())
}
