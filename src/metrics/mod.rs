//! Per-cluster statement latency and error counts over a sliding window, fed by the
//! data path and read by the migration throttle, the health monitor and the `/metrics`
//! endpoint; and ([`Registry`]) the proxy's metrics on the `metrics` crate, which
//! `/metrics` renders (names and labels: `docs/metrics.md`).
//!
//! Recording is a few relaxed atomic increments: no lock on the hot path. The window is
//! a ring of one-second slots; a slot is cleared by the first statement of a new second
//! that lands in it, so figures are approximate at the edges, which a throttle and a
//! dashboard tolerate.

mod registry;

pub use registry::{
    cluster_label, keyspace_label, render_histograms, Latency, PairHandle, Registry, MAX_CODES,
    MAX_DEADLOCK_TABLES, MAX_PAIRS, NO_KEYSPACE, OVERFLOW, PASS_THROUGH,
};

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in microseconds (the last bucket is open).
const BOUNDS_US: [u64; 16] = [
    50, 100, 200, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 200_000, 500_000,
    1_000_000, 2_000_000, 5_000_000,
];
const BUCKETS: usize = BOUNDS_US.len() + 1;
const SLOTS: usize = 10;

/// The bucket of a latency: the first whose bound it does not exceed (a bound holds
/// what is at most it, as Prometheus' `le`: 500.4 µs is past 500), else the open one.
fn bucket_of(elapsed: Duration) -> usize {
    let ns = elapsed.as_nanos();
    BOUNDS_US
        .iter()
        .position(|&b| ns <= u128::from(b) * 1000)
        .unwrap_or(BOUNDS_US.len())
}

struct Slot {
    second: AtomicU64,
    buckets: [AtomicU64; BUCKETS],
    errors: AtomicU64,
}

impl Slot {
    fn new() -> Slot {
        Slot {
            second: AtomicU64::new(u64::MAX),
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            errors: AtomicU64::new(0),
        }
    }
}

/// Statement latencies and errors of one cluster, over the last ten seconds, plus
/// totals since start.
pub struct ClusterStats {
    /// By second of `crate::clock`.
    slots: [Slot; SLOTS],
    /// Statements since start.
    pub statements: AtomicU64,
    /// Failed statements (backend lost, timed out, cluster unavailable) since start.
    pub failures: AtomicU64,
}

impl Default for ClusterStats {
    fn default() -> Self {
        ClusterStats {
            slots: std::array::from_fn(|_| Slot::new()),
            statements: AtomicU64::new(0),
            failures: AtomicU64::new(0),
        }
    }
}

/// A summary of the window.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WindowSummary {
    /// Statements in the window.
    pub count: u64,
    /// Of which failed.
    pub errors: u64,
    /// 99th percentile latency (bucket upper bound), if any statement ran.
    pub p99: Option<Duration>,
}

impl ClusterStats {
    fn slot(&self, second: u64) -> &Slot {
        let slot = &self.slots[(second % SLOTS as u64) as usize];
        let seen = slot.second.load(Ordering::Relaxed);
        if seen != second
            && slot
                .second
                .compare_exchange(seen, second, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            for b in &slot.buckets {
                b.store(0, Ordering::Relaxed);
            }
            slot.errors.store(0, Ordering::Relaxed);
        }
        slot
    }

    /// Records one statement that took `elapsed` (`failed`: shardgate could not get an
    /// answer from the cluster; a backend's own SQL error is not a failure).
    pub fn record(&self, elapsed: Duration, failed: bool) {
        self.record_in(crate::clock::now_second(), elapsed, failed);
    }

    /// [`record`](Self::record) of a statement that ended in `second` of
    /// `crate::clock` (a caller that has just read the clock saves reading it again).
    pub fn record_in(&self, second: u64, elapsed: Duration, failed: bool) {
        let bucket = bucket_of(elapsed);
        let slot = self.slot(second);
        slot.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        self.statements.fetch_add(1, Ordering::Relaxed);
        if failed {
            slot.errors.fetch_add(1, Ordering::Relaxed);
            self.failures.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Forgets the window (not the totals): what happened before a cluster went down
    /// says nothing of how it does once it is back.
    pub fn clear_window(&self) {
        for slot in &self.slots {
            slot.second.store(u64::MAX, Ordering::Relaxed);
        }
    }

    /// Counts a statement shardgate refused without asking the cluster (1053: down or
    /// drained) in the totals only. The window describes the cluster's own answers, and
    /// the health monitor reads it to let a cluster recover: refusals in it would keep a
    /// resumed cluster's error rate high for as long as clients keep asking.
    pub fn record_refusal(&self) {
        self.statements.fetch_add(1, Ordering::Relaxed);
        self.failures.fetch_add(1, Ordering::Relaxed);
    }

    /// The last ten seconds' latency buckets and error count.
    fn recent(&self) -> ([u64; BUCKETS], u64) {
        let now_second = crate::clock::now_second();
        let mut buckets = [0u64; BUCKETS];
        let mut errors = 0;
        for slot in &self.slots {
            let s = slot.second.load(Ordering::Relaxed);
            if s == u64::MAX || now_second.saturating_sub(s) >= SLOTS as u64 {
                continue;
            }
            for (acc, b) in buckets.iter_mut().zip(&slot.buckets) {
                *acc += b.load(Ordering::Relaxed);
            }
            errors += slot.errors.load(Ordering::Relaxed);
        }
        (buckets, errors)
    }

    /// The last ten seconds.
    pub fn window(&self) -> WindowSummary {
        let (buckets, errors) = self.recent();
        let count: u64 = buckets.iter().sum();
        WindowSummary {
            count,
            errors,
            p99: quantile(&buckets, 0.99),
        }
    }

    /// The `q` quantile (0-1) of the last ten seconds' latencies (bucket upper bound).
    pub fn percentile(&self, q: f64) -> Option<Duration> {
        quantile(&self.recent().0, q)
    }

    /// Share of failed statements in the window (None without statements).
    pub fn error_rate(&self) -> Option<f64> {
        let w = self.window();
        (w.count > 0).then(|| w.errors as f64 / w.count as f64)
    }
}

/// The upper bound of the bucket that holds the `q` quantile; None when empty.
fn quantile(buckets: &[u64; BUCKETS], q: f64) -> Option<Duration> {
    let count: u64 = buckets.iter().sum();
    if count == 0 {
        return None;
    }
    let rank = ((count as f64 * q.clamp(0.0, 1.0)).ceil() as u64).max(1);
    let mut seen = 0;
    let mut bound = *BOUNDS_US.last().unwrap_or(&0) * 2;
    for (i, n) in buckets.iter().enumerate() {
        seen += n;
        if seen >= rank {
            bound = BOUNDS_US.get(i).copied().unwrap_or(bound);
            break;
        }
    }
    Some(Duration::from_micros(bound))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p99_and_error_rate_follow_what_was_recorded() {
        let s = ClusterStats::default();
        assert_eq!(s.window().p99, None);
        assert_eq!(s.error_rate(), None);
        for _ in 0..990 {
            s.record(Duration::from_micros(80), false);
        }
        for _ in 0..10 {
            s.record(Duration::from_millis(40), true);
        }
        let w = s.window();
        assert_eq!(w.count, 1000);
        assert_eq!(w.errors, 10);
        assert_eq!(
            w.p99,
            Some(Duration::from_micros(100)),
            "990 of 1000 are fast"
        );
        s.record(Duration::from_millis(40), false);
        assert_eq!(
            s.window().p99,
            Some(Duration::from_millis(50)),
            "now more than 1% are slow"
        );
        assert!((s.error_rate().unwrap_or(0.0) - 10.0 / 1001.0).abs() < 1e-9);
        assert_eq!(s.statements.load(Ordering::Relaxed), 1001);
    }

    #[test]
    fn refusals_count_in_the_totals_but_not_in_the_window() {
        let s = ClusterStats::default();
        for _ in 0..100 {
            s.record_refusal();
        }
        s.record(Duration::from_micros(80), false);
        assert_eq!(s.error_rate(), Some(0.0), "the one answer was good");
        assert_eq!(s.window().count, 1);
        assert_eq!(s.statements.load(Ordering::Relaxed), 101);
        assert_eq!(s.failures.load(Ordering::Relaxed), 100);
    }
}
