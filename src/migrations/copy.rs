//! The online copy-table engine.

use std::time::Duration;

use crate::vschema::Cluster;

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
}

impl Default for CopyOptions {
    fn default() -> Self {
        CopyOptions {
            chunk_target: Duration::from_millis(200),
            lock_wait: Duration::from_secs(2),
            cutover_attempts: 30,
            allow_foreign_keys: false,
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
    let _ = (cluster, task, resume, control);
    todo!("copy::run")
}

/// Removes what a stopped copy left (triggers, ghost table); the original is untouched.
pub async fn clean_up(cluster: &Cluster, task: &CopyTask) -> Result<(), CopyError> {
    let _ = (cluster, task);
    todo!("copy::clean_up")
}

/// Name of the table that keeps the old data after a cut-over.
pub fn old_table_name(task: &CopyTask) -> String {
    let _ = task;
    todo!("copy::old_table_name")
}
