//! [`CopyControl`] for a migration the executor runs: checkpoints through the store,
//! the throttle and admin requests at every chunk, postponed completion, progress.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::watch;

use super::throttle::ThrottleState;
use super::ExecutorStats;
use crate::migrations::copy::{CopyControl, CopyProgress, CopyStop};
use crate::migrations::store::{self, PendingRequest};

/// How often a held-back gate looks again.
const GATE_RECHECK: Duration = Duration::from_millis(100);

/// State shared between a running migration's task and the executor's loop, which
/// refreshes the admin's requests from the store and writes progress back.
#[derive(Debug)]
pub(crate) struct Shared {
    /// The latest pending admin request read from the store.
    pub requested: Mutex<Option<PendingRequest>>,
    /// Whether completion is postponed (read from the store).
    pub postpone: AtomicBool,
    /// The executor is letting go (lock lost, shutdown): stop without a status change.
    pub stop: AtomicBool,
    /// The latest progress the engine reported.
    pub progress: Mutex<CopyProgress>,
    /// Why the gate is holding the copy back now.
    pub throttle_reason: Mutex<Option<String>>,
    /// When this run started, and rows copied then (for the rate and eta).
    pub started: Instant,
    /// Rows copied when this run started (a resumed copy starts above zero).
    pub rows_at_start: u64,
}

impl Shared {
    pub(crate) fn new(postpone: bool, rows_at_start: u64) -> Self {
        Shared {
            requested: Mutex::new(None),
            postpone: AtomicBool::new(postpone),
            stop: AtomicBool::new(false),
            progress: Mutex::new(CopyProgress {
                rows_copied: rows_at_start,
                ..CopyProgress::default()
            }),
            throttle_reason: Mutex::new(None),
            started: Instant::now(),
            rows_at_start,
        }
    }

    /// Estimated seconds left at the rate of this run so far.
    pub(crate) fn eta_seconds(&self) -> Option<u64> {
        let p = lock(&self.progress).clone();
        let done = p.rows_copied.saturating_sub(self.rows_at_start);
        let secs = self.started.elapsed().as_secs_f64();
        if done == 0 || secs <= 0.0 || p.stage != "copy" {
            return None;
        }
        let left = p.rows_total.saturating_sub(p.rows_copied) as f64;
        Some((left / (done as f64 / secs)).ceil() as u64)
    }
}

/// Locks a mutex, taking the value even if a panicking holder poisoned it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The executor's [`CopyControl`] for one running copy migration.
pub struct MigrationControl {
    uuid: String,
    database: String,
    table: String,
    shared: Arc<Shared>,
    throttle: watch::Receiver<ThrottleState>,
    stats: Arc<ExecutorStats>,
}

impl MigrationControl {
    pub(crate) fn new(
        uuid: String,
        database: String,
        table: String,
        shared: Arc<Shared>,
        throttle: watch::Receiver<ThrottleState>,
        stats: Arc<ExecutorStats>,
    ) -> Self {
        MigrationControl {
            uuid,
            database,
            table,
            shared,
            throttle,
            stats,
        }
    }

    /// The migration's uuid.
    pub fn uuid(&self) -> &str {
        &self.uuid
    }

    /// The database of the table being changed.
    pub fn database(&self) -> &str {
        &self.database
    }

    /// The table being changed.
    pub fn table(&self) -> &str {
        &self.table
    }

    fn set_reason(&self, reason: Option<String>) {
        let mut current = lock(&self.shared.throttle_reason);
        if *current != reason {
            if let Some(r) = &reason {
                tracing::info!(uuid = %self.uuid, database = %self.database, reason = %r, "copy throttled");
            }
            *current = reason;
        }
    }
}

impl CopyControl for MigrationControl {
    fn checkpoint_sql(&self, progress: &CopyProgress) -> String {
        store::checkpoint_update_sql(&self.uuid, &self.database, progress)
    }

    async fn gate(&self) -> Result<(), CopyStop> {
        loop {
            if self.shared.stop.load(Ordering::Acquire) {
                return Err(CopyStop::Paused);
            }
            match *lock(&self.shared.requested) {
                Some(PendingRequest::Cancel) => return Err(CopyStop::Cancelled),
                Some(PendingRequest::Pause) => return Err(CopyStop::Paused),
                None => {}
            }
            let reason = self
                .throttle
                .borrow()
                .reason_for(&self.database, &self.table);
            let held = reason.is_some();
            self.set_reason(reason);
            if !held {
                return Ok(());
            }
            self.stats.note_gate_wait();
            crate::timer::sleep(GATE_RECHECK).await;
        }
    }

    fn may_cut_over(&self) -> bool {
        !self.shared.postpone.load(Ordering::Acquire)
    }

    fn report(&self, progress: &CopyProgress) {
        let mut current = lock(&self.shared.progress);
        if progress.rows_copied > current.rows_copied {
            self.stats
                .add_rows_copied(progress.rows_copied - current.rows_copied);
        }
        *current = progress.clone();
    }
}
