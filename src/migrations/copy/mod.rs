//! The online copy-table engine: a ghost table with the change applied, triggers that
//! keep it in step with the original, a chunked copy by a unique key with the
//! checkpoint in each chunk's transaction, a checksum in one consistent snapshot, and
//! an atomic `RENAME TABLE` cut-over with a short lock wait. See
//! `docs/migrations-copy.md` for the reasoning behind each step.
//!
//! - `schema`: names, `information_schema` reads, preflight refusals.
//! - `capture`: the change-capture seam ([`ChangeCapture`]) and its triggers.
//! - `chunk`: the chunked copy and [`Checkpoint`].
//! - `verify`: the checksum.

mod binlog;
mod binlog_apply;
mod capture;
mod chunk;
mod cutover;
mod schema;
mod sql;
mod verify;

use std::time::Duration;

use crate::backend::SqlConn;
use crate::vschema::Cluster;

pub use binlog::BinlogPos;
pub use capture::{ChangeCapture, TriggerCapture};
pub use chunk::Checkpoint;
pub use schema::CopyNames;
pub use verify::TableChecksum;

use chunk::{ChunkKey, CopyPlan, KeyKind};
use schema::Column;
use sql::{code, qualified, server_err};

/// One table to change by copying.
#[derive(Debug, Clone)]
pub struct CopyTask {
    /// Migration uuid (names the ghost table and triggers, so they are found again).
    pub uuid: String,
    /// Database of the table.
    pub database: String,
    /// The table.
    pub table: String,
    /// The ALTER TABLE specification applied to the ghost table.
    pub spec: String,
    /// Knobs.
    pub options: CopyOptions,
}

/// Knobs of a copy.
#[derive(Debug, Clone)]
pub struct CopyOptions {
    /// Aim for chunks that take about this long (adaptive chunk size).
    pub chunk_target: Duration,
    /// `lock_wait_timeout` for trigger creation and the cut-over RENAME.
    pub lock_wait: Duration,
    /// Cut-over attempts (with backoff) before the migration fails.
    pub cutover_attempts: u32,
    /// Allow tables with foreign keys (admin override).
    pub allow_foreign_keys: bool,
    /// Capture changes with triggers even where the binary log could serve.
    pub triggers_only: bool,
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk_target: Duration::from_millis(200),
            lock_wait: Duration::from_secs(2),
            cutover_attempts: 30,
            allow_foreign_keys: false,
            triggers_only: false,
        }
    }
}

/// Where a copy is; reported to the store after every chunk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CopyProgress {
    /// `preflight`, `ghost`, `triggers`, `copy`, `checksum`, `postponed`, `cutover`, `done`.
    pub stage: String,
    /// Rows copied so far.
    pub rows_copied: u64,
    /// Estimated rows in the table.
    pub rows_total: u64,
    /// Opaque resume point (the last copied primary key), saved with each chunk.
    pub checkpoint: Option<String>,
    /// How changes reach the new table: `binlog`, or `triggers` with the reason the
    /// binary log could not be used.
    pub capture: String,
}

/// Why a copy stopped without completing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyStop {
    /// Paused: ghost table and triggers stay; resume from the checkpoint.
    Paused,
    /// Cancelled: ghost table and triggers are removed.
    Cancelled,
}

/// How a copy ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyError {
    /// It cannot succeed as asked (no primary key, data would be truncated, checksum
    /// mismatch, cut-over never got its lock): the original table is untouched and the
    /// ghost and triggers are removed.
    Failed(String),
    /// Stopped on request.
    Stopped(CopyStop),
    /// The cluster connection failed mid-way; resume from the checkpoint.
    Connection(String),
}

/// What the engine asks of whoever runs it (the executor; tests use a simple one).
pub trait CopyControl: Send + Sync {
    /// SQL that records `progress`, run in the same transaction as the chunk it follows
    /// (so a crash never loses or repeats more than one chunk).
    fn checkpoint_sql(&self, progress: &CopyProgress) -> String;
    /// Called before every chunk: waits while the copy is throttled or paused by the
    /// throttle; returns `Err` when the copy must stop (pause or cancel request).
    fn gate(&self) -> impl std::future::Future<Output = Result<(), CopyStop>> + Send;
    /// Whether the cut-over may happen now (false while completion is postponed).
    fn may_cut_over(&self) -> bool;
    /// Progress for observers (stage changes, rows copied).
    fn report(&self, progress: &CopyProgress);
}

/// Runs (or resumes, from `resume`, a checkpoint string it produced) a copy migration.
/// On success the table has the new schema and the old one is kept as
/// `old_table_name(task)`.
pub async fn run<C: CopyControl>(
    cluster: &Cluster,
    task: &CopyTask,
    resume: Option<&str>,
    control: &C,
) -> Result<CopyProgress, CopyError> {
    let mut progress = CopyProgress {
        stage: "preflight".into(),
        ..CopyProgress::default()
    };
    let result = run_stages(cluster, task, resume, control, &mut progress).await;
    match result {
        Ok(()) => Ok(progress),
        Err(e @ (CopyError::Failed(_) | CopyError::Stopped(CopyStop::Cancelled))) => {
            // The original is untouched; leave nothing of the copy behind. If even the
            // clean-up cannot run, the executor's own clean_up will.
            if let Err(c) = clean_up(cluster, task).await {
                tracing::warn!(uuid = %task.uuid, error = ?c, "clean-up after a stopped copy failed");
            }
            Err(e)
        }
        Err(e) => Err(e),
    }
}

/// Removes what a stopped copy left (triggers, ghost table); the original is untouched.
pub async fn clean_up(cluster: &Cluster, task: &CopyTask) -> Result<(), CopyError> {
    let names = CopyNames::of(task);
    let mut conn = sql::connect(
        cluster,
        &task.database,
        task.options.lock_wait,
        "READ COMMITTED",
    )
    .await?;
    capture::drop_triggers(
        &mut conn,
        &task.database,
        &names.triggers,
        task.options.lock_wait,
        task.options.cutover_attempts,
    )
    .await?;
    conn.execute(&format!(
        "DROP TABLE IF EXISTS {}",
        qualified(&task.database, &names.ghost)
    ))
    .await
    .map_err(|e| server_err("dropping the ghost table", e))?;
    cutover::drop_guards(&mut conn, task, &names).await
}

/// Name of the table that keeps the old data after a cut-over.
pub fn old_table_name(task: &CopyTask) -> String {
    CopyNames::of(task).old
}

/// Rows copied as recorded in a checkpoint string (for progress after a restart).
pub fn checkpoint_rows(checkpoint: &str) -> Option<u64> {
    Checkpoint::decode(checkpoint).map(|c| c.rows_copied)
}

fn set_stage<C: CopyControl>(progress: &mut CopyProgress, stage: &str, control: &C) {
    progress.stage = stage.to_string();
    control.report(progress);
}

async fn run_stages<C: CopyControl>(
    cluster: &Cluster,
    task: &CopyTask,
    resume: Option<&str>,
    control: &C,
    progress: &mut CopyProgress,
) -> Result<(), CopyError> {
    let db = task.database.as_str();
    let names = CopyNames::of(task);
    let opts = &task.options;
    control.report(progress);
    // Two connections: one copies chunks (READ COMMITTED: locks rows, not gaps), the
    // other runs DDL, the checksum and the cut-over.
    let mut copy_conn = sql::connect(cluster, db, opts.lock_wait, "READ COMMITTED").await?;
    let mut ddl = sql::connect(cluster, db, opts.lock_wait, "REPEATABLE READ").await?;

    // A run that died right after its cut-over: finish it (drop the triggers).
    let ghost_exists = schema::table_exists(&mut ddl, db, &names.ghost).await?;
    if !ghost_exists && schema::table_exists(&mut ddl, db, &names.old).await? {
        set_stage(progress, "cutover", control);
        finish_cutover(&mut ddl, task, &names).await;
        set_stage(progress, "done", control);
        return Ok(());
    }

    let (engine, estimate) = schema::table_info(&mut ddl, db, &task.table)
        .await?
        .ok_or_else(|| CopyError::Failed(format!("table {db}.{} does not exist", task.table)))?;
    progress.rows_total = estimate;
    if !engine.eq_ignore_ascii_case("InnoDB") {
        return Err(CopyError::Failed(format!(
            "table {} uses {engine}; the copy needs InnoDB (transactional chunks and triggers)",
            task.table
        )));
    }
    schema::refuse_spec(task)?;
    if !opts.allow_foreign_keys {
        let fks = schema::foreign_keys(&mut ddl, db, &task.table).await?;
        if !fks.is_empty() {
            return Err(CopyError::Failed(format!(
                "table {} has foreign keys ({}); a copy would leave them on the old table \
                 (allow_foreign_keys overrides)",
                task.table,
                fks.join(", ")
            )));
        }
    }
    let foreign_triggers: Vec<String> = schema::triggers_on(&mut ddl, db, &task.table)
        .await?
        .into_iter()
        .filter(|t| !names.triggers.contains(t))
        .collect();
    if !foreign_triggers.is_empty() {
        return Err(CopyError::Failed(format!(
            "table {} has triggers ({}); they would stay on the old table after the cut-over",
            task.table,
            foreign_triggers.join(", ")
        )));
    }
    let old_columns = schema::columns(&mut ddl, db, &task.table).await?;
    let old_keys = schema::unique_keys(&mut ddl, db, &task.table).await?;
    if old_keys.is_empty() {
        return Err(CopyError::Failed(format!(
            "table {} has no PRIMARY KEY and no UNIQUE key over NOT NULL columns to copy by",
            task.table
        )));
    }

    // Resume only into a ghost that was kept in step since before the checkpoint (by
    // triggers still in place, or by a binlog capture whose position the server still
    // has); otherwise start over cleanly.
    let trigger_probe = capture_for(task, &names, Vec::new(), Vec::new());
    let saved = match resume {
        Some(r) if ghost_exists => Some(
            Checkpoint::decode(r)
                .ok_or_else(|| CopyError::Failed(format!("unreadable checkpoint {r:?}")))?,
        ),
        _ => None,
    };
    let checkpoint = match saved {
        Some(c) => match &c.binlog {
            Some(pos) => {
                let usable = !trigger_probe.is_installed(&mut ddl).await?
                    && binlog::still_has(&mut ddl, &pos.file).await?;
                usable.then_some(c)
            }
            None => trigger_probe.is_installed(&mut ddl).await?.then_some(c),
        },
        None => None,
    };
    if checkpoint.is_none() {
        set_stage(progress, "ghost", control);
        trigger_probe.remove(&mut ddl).await?;
        let g = qualified(db, &names.ghost);
        ddl.execute(&format!("DROP TABLE IF EXISTS {g}"))
            .await
            .map_err(|e| server_err("dropping an old ghost table", e))?;
        ddl.execute(&format!(
            "CREATE TABLE {g} LIKE {}",
            qualified(db, &task.table)
        ))
        .await
        .map_err(|e| server_err("creating the ghost table", e))?;
        ddl.execute(&format!("ALTER TABLE {g} {}", task.spec))
            .await
            .map_err(|e| server_err("applying the change to the ghost table", e))?;
    }

    // What is copied, and by which key.
    let ghost_columns = schema::columns(&mut ddl, db, &names.ghost).await?;
    let (ghost_engine, _) = schema::table_info(&mut ddl, db, &names.ghost)
        .await?
        .unwrap_or_default();
    if !ghost_engine.eq_ignore_ascii_case("InnoDB") {
        return Err(CopyError::Failed(format!(
            "the new table would use {ghost_engine}; the copy needs InnoDB"
        )));
    }
    if !opts.allow_foreign_keys
        && !schema::foreign_keys(&mut ddl, db, &names.ghost)
            .await?
            .is_empty()
    {
        return Err(CopyError::Failed(
            "the change adds a foreign key (allow_foreign_keys overrides)".into(),
        ));
    }
    let shared: Vec<(String, Column, Column)> = old_columns
        .iter()
        .filter_map(|o| {
            let n = ghost_columns
                .iter()
                .find(|g| g.name.eq_ignore_ascii_case(&o.name))?;
            (!n.generated).then(|| (n.name.clone(), o.clone(), n.clone()))
        })
        .collect();
    if shared.is_empty() {
        return Err(CopyError::Failed("no column is kept by the change".into()));
    }
    let ghost_unique = schema::unique_column_sets(&mut ddl, db, &names.ghost).await?;
    let key = choose_key(&old_keys, &old_columns, &shared, &ghost_unique)?;
    let columns: Vec<String> = shared.iter().map(|(n, _, _)| n.clone()).collect();
    let key_columns: Vec<String> = key.columns.iter().map(|(c, _)| c.clone()).collect();
    let old_unique = schema::unique_column_sets(&mut ddl, db, &task.table).await?;
    let adds_unique = ghost_unique.iter().any(|g| !old_unique.contains(g));

    // How changes reach the ghost: the binlog where the cluster's allows it.
    let key_cols: Vec<binlog::KeyColumn> = key_columns
        .iter()
        .filter_map(|k| {
            let ordinal = old_columns
                .iter()
                .position(|o| o.name.eq_ignore_ascii_case(k))?;
            Some(binlog::KeyColumn {
                ordinal,
                column: old_columns[ordinal].clone(),
            })
        })
        .collect();
    let start = match &checkpoint {
        Some(c) => match &c.binlog {
            Some(pos) => Ok(pos.clone()),
            None => Err("resumed with triggers".to_string()),
        },
        None if opts.triggers_only => Err("binlog capture turned off".to_string()),
        // The binlog cut-over needs a sentry named after the table.
        None if cutover::sentry_name(&task.table).is_err() => {
            Err("the table name is too long for the binlog cut-over's sentry".to_string())
        }
        None => binlog::availability(&mut ddl, &key_cols).await?,
    };
    let spec = binlog::CaptureSpec {
        database: db.to_string(),
        table: task.table.clone(),
        ghost: names.ghost.clone(),
        columns: columns.clone(),
        key: key.clone(),
        key_columns: key_cols,
    };
    let capture = match start {
        Ok(from) => {
            let watermark = match &checkpoint {
                Some(c) => binlog::Watermark::Upto(c.last_key.clone()),
                None => binlog::Watermark::Nothing,
            };
            progress.capture = "binlog".into();
            let started =
                binlog::BinlogCapture::start(cluster, spec, from, watermark, opts.lock_wait).await;
            match started {
                Ok(c) => Some(c),
                Err(CopyError::Failed(why)) if checkpoint.is_none() => {
                    progress.capture = format!("triggers ({why})");
                    None
                }
                Err(e) => return Err(e),
            }
        }
        Err(why) => {
            progress.capture = format!("triggers ({why})");
            None
        }
    };
    tracing::info!(uuid = %task.uuid, database = %db, table = %task.table, capture = %progress.capture, "change capture chosen");
    let triggers = capture_for(task, &names, columns.clone(), key_columns);
    if checkpoint.is_none() && capture.is_none() {
        set_stage(progress, "triggers", control);
        triggers.install(&mut ddl).await?;
    }

    // The copy.
    if let Some(c) = &checkpoint {
        progress.rows_copied = c.rows_copied;
        progress.checkpoint = resume.map(str::to_string);
    }
    set_stage(progress, "copy", control);
    let plan = CopyPlan {
        database: db,
        table: &task.table,
        ghost: &names.ghost,
        key: &key,
        columns: &columns,
        chunk_target: opts.chunk_target,
        capture: capture.as_ref(),
    };
    chunk::copy_rows(
        &mut copy_conn,
        &plan,
        checkpoint.map(|c| c.last_key),
        progress,
        control,
    )
    .await?;

    // With binlog capture the ghost lags: the checksum runs right before the cut-over
    // (see below and `cutover.rs`).
    if capture.is_none() {
        set_stage(progress, "checksum", control);
        verify_tables(&mut ddl, task, &names, &shared, adds_unique).await?;
    }

    if !control.may_cut_over() {
        set_stage(progress, "postponed", control);
        let mut last_ping = std::time::Instant::now();
        while !control.may_cut_over() {
            control.gate().await.map_err(CopyError::Stopped)?;
            crate::timer::sleep(Duration::from_millis(200)).await;
            // Keep the DDL connection alive through a long postponement.
            if last_ping.elapsed() > Duration::from_secs(30) {
                if !ddl.ping().await {
                    return Err(CopyError::Connection(
                        "lost the connection while postponed".into(),
                    ));
                }
                last_ping = std::time::Instant::now();
            }
        }
        // Time has passed: verify again right before the switch.
        if capture.is_none() {
            set_stage(progress, "checksum", control);
            verify_tables(&mut ddl, task, &names, &shared, adds_unique).await?;
        }
    }

    match &capture {
        None => {
            set_stage(progress, "cutover", control);
            cut_over(&mut ddl, task, &names, control).await?
        }
        Some(c) => {
            let swap = cutover::Swap {
                task,
                names: &names,
                shared: &shared,
                adds_unique,
                key: &key,
            };
            // All rows but those changed since the capture's position are compared
            // now, while writes go on; the cut-over compares the rest.
            set_stage(progress, "checksum", control);
            let verified = cutover::verify_unlocked(&mut ddl, c, &swap).await?;
            set_stage(progress, "cutover", control);
            cutover::binlog_cut_over(
                &mut copy_conn,
                &mut ddl,
                c,
                &swap,
                verified.as_ref(),
                control,
            )
            .await?;
            let (rows, gtid) = c.stats();
            tracing::info!(uuid = %task.uuid, database = %task.database, table = %task.table, rows_applied = rows,
                gtid = gtid.as_deref().unwrap_or("-"), "binlog capture done");
        }
    }
    drop(capture);
    finish_cutover(&mut ddl, task, &names).await;
    set_stage(progress, "done", control);
    Ok(())
}

fn capture_for(
    task: &CopyTask,
    names: &CopyNames,
    columns: Vec<String>,
    key: Vec<String>,
) -> TriggerCapture {
    TriggerCapture {
        database: task.database.clone(),
        table: task.table.clone(),
        ghost: names.ghost.clone(),
        names: names.triggers.clone(),
        columns,
        key,
        lock_wait: task.options.lock_wait,
        attempts: task.options.cutover_attempts,
    }
}

/// The first unique key of the original (PRIMARY first) whose columns are all kept and
/// that is still unique in the ghost: triggers and the copy address rows by it.
fn choose_key(
    old_keys: &[schema::UniqueKey],
    old_columns: &[Column],
    shared: &[(String, Column, Column)],
    ghost_unique: &[Vec<String>],
) -> Result<ChunkKey, CopyError> {
    let mut why = String::from("no unique key is kept unchanged by the change");
    for k in old_keys {
        let mut set: Vec<String> = k.columns.iter().map(|c| c.to_lowercase()).collect();
        set.sort();
        if !ghost_unique.contains(&set) {
            continue;
        }
        let mut cols = Vec::new();
        for c in &k.columns {
            let kept = shared.iter().any(|(n, _, _)| n.eq_ignore_ascii_case(c));
            let kind = old_columns
                .iter()
                .find(|o| o.name.eq_ignore_ascii_case(c))
                .and_then(KeyKind::of);
            match (kept, kind) {
                (true, Some(kind)) => cols.push((c.clone(), kind)),
                (_, None) => {
                    why = format!(
                        "key {} has a column type the copy cannot walk ({c})",
                        k.name
                    );
                    break;
                }
                (false, _) => break,
            }
        }
        if cols.len() == k.columns.len() {
            return Ok(ChunkKey {
                index: k.name.clone(),
                columns: cols,
            });
        }
    }
    Err(CopyError::Failed(why))
}

pub(crate) async fn verify_tables(
    conn: &mut SqlConn,
    task: &CopyTask,
    names: &CopyNames,
    shared: &[(String, Column, Column)],
    adds_unique: bool,
) -> Result<(), CopyError> {
    let (old, new) =
        verify::checksum(conn, &task.database, &task.table, &names.ghost, shared).await?;
    compared(&old, &new, adds_unique)
}

/// `Ok` when the two checksums agree, else why the copy fails.
pub(crate) fn compared(
    old: &TableChecksum,
    new: &TableChecksum,
    adds_unique: bool,
) -> Result<(), CopyError> {
    if old == new {
        return Ok(());
    }
    let hint = if adds_unique {
        " (the change adds a UNIQUE key: duplicate rows in the data would have merged)"
    } else {
        " (a value changed in conversion)"
    };
    Err(CopyError::Failed(format!(
        "checksum mismatch: original {old:?}, new {new:?}{hint}"
    )))
}

/// The atomic swap, with a short lock wait so application queries never queue behind
/// it for longer; retried with backoff while something holds the table.
async fn cut_over<C: CopyControl>(
    conn: &mut SqlConn,
    task: &CopyTask,
    names: &CopyNames,
    control: &C,
) -> Result<(), CopyError> {
    let db = &task.database;
    let rename = format!(
        "RENAME TABLE {} TO {}, {} TO {}",
        qualified(db, &task.table),
        qualified(db, &names.old),
        qualified(db, &names.ghost),
        qualified(db, &task.table)
    );
    conn.execute(&format!(
        "SET SESSION lock_wait_timeout = {}",
        sql::lock_wait_secs(task.options.lock_wait)
    ))
    .await
    .map_err(|e| server_err("cut-over", e))?;
    let attempts = task.options.cutover_attempts.max(1);
    for attempt in 0..attempts {
        control.gate().await.map_err(CopyError::Stopped)?;
        match conn.execute(&rename).await {
            Ok(_) => return Ok(()),
            Err(e) if e.code() == Some(code::LOCK_WAIT_TIMEOUT) => {
                tracing::info!(uuid = %task.uuid, attempt, "cut-over lock not granted; backing off");
                crate::timer::sleep(sql::backoff(attempt)).await;
            }
            Err(e) => return Err(server_err("cut-over", e)),
        }
    }
    Err(CopyError::Failed(format!(
        "cut-over did not get its lock in {attempts} attempts (a long transaction holds {})",
        task.table
    )))
}

/// After the swap the triggers sit on the old table; drop them. The migration is
/// complete whatever happens here (dropping the old table later drops them too).
async fn finish_cutover(conn: &mut SqlConn, task: &CopyTask, names: &CopyNames) {
    let dropped = capture::drop_triggers(
        conn,
        &task.database,
        &names.triggers,
        task.options.lock_wait,
        task.options.cutover_attempts,
    )
    .await;
    if let Err(e) = dropped {
        tracing::warn!(uuid = %task.uuid, error = ?e, "triggers left on the old table");
    }
    if let Err(e) = cutover::drop_guards(conn, task, names).await {
        tracing::warn!(uuid = %task.uuid, error = ?e, "cut-over guard tables left");
    }
}
