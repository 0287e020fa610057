//! Live counters of an executor, read by tests and `/metrics`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use super::control::lock;

/// Live counters of one executor (one cluster), for tests and `/metrics`.
#[derive(Debug, Default)]
pub struct ExecutorStats {
    pub(super) owner: Mutex<Option<String>>,
    pub(super) queue_depth: AtomicU64,
    running: AtomicU64,
    running_copies: AtomicU64,
    peak_running: AtomicU64,
    peak_running_copies: AtomicU64,
    throttled: AtomicBool,
    throttle_reason: Mutex<Option<String>>,
    gate_waits: AtomicU64,
    rows_copied: AtomicU64,
    pub(super) completed: AtomicU64,
    pub(super) failed: AtomicU64,
}

/// A copy of [`ExecutorStats`] at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StatsSnapshot {
    /// This executor's owner id while it holds the cluster's lock.
    pub owner: Option<String>,
    /// Rows queued on the cluster (as of the last poll).
    pub queue_depth: u64,
    /// Migrations running now (any strategy).
    pub running: u64,
    /// Copies running now.
    pub running_copies: u64,
    /// Most migrations ever running at once.
    pub peak_running: u64,
    /// Most copies ever running at once.
    pub peak_running_copies: u64,
    /// Whether the cluster's throttle holds copies back now.
    pub throttled: bool,
    /// Why, if it does.
    pub throttle_reason: Option<String>,
    /// Times a gate held a copy back (one count per recheck, about 10 a second).
    pub gate_waits: u64,
    /// Rows copied by this executor's copies.
    pub rows_copied: u64,
    /// Migrations this executor completed.
    pub completed: u64,
    /// Migrations that failed under this executor.
    pub failed: u64,
}

impl ExecutorStats {
    /// All counters at once.
    pub fn snapshot(&self) -> StatsSnapshot {
        StatsSnapshot {
            owner: self.owner(),
            queue_depth: self.queue_depth.load(Ordering::Relaxed),
            running: self.running.load(Ordering::Relaxed),
            running_copies: self.running_copies.load(Ordering::Relaxed),
            peak_running: self.peak_running.load(Ordering::Relaxed),
            peak_running_copies: self.peak_running_copies.load(Ordering::Relaxed),
            throttled: self.throttled.load(Ordering::Relaxed),
            throttle_reason: lock(&self.throttle_reason).clone(),
            gate_waits: self.gate_waits.load(Ordering::Relaxed),
            rows_copied: self.rows_copied.load(Ordering::Relaxed),
            completed: self.completed.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
        }
    }

    /// The owner id while this executor holds its cluster's lock.
    pub fn owner(&self) -> Option<String> {
        lock(&self.owner).clone()
    }

    /// Most copies ever running at once on this executor.
    pub fn peak_running_copies(&self) -> u64 {
        self.peak_running_copies.load(Ordering::Relaxed)
    }

    pub(crate) fn note_gate_wait(&self) {
        self.gate_waits.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add_rows_copied(&self, n: u64) {
        self.rows_copied.fetch_add(n, Ordering::Relaxed);
    }

    pub(super) fn set_running(&self, running: u64, copies: u64) {
        self.running.store(running, Ordering::Relaxed);
        self.running_copies.store(copies, Ordering::Relaxed);
        self.peak_running.fetch_max(running, Ordering::Relaxed);
        self.peak_running_copies
            .fetch_max(copies, Ordering::Relaxed);
    }

    pub(super) fn set_throttle(&self, reason: Option<String>) {
        self.throttled.store(reason.is_some(), Ordering::Relaxed);
        *lock(&self.throttle_reason) = reason;
    }
}
