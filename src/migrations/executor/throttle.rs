//! The health throttle: sampled every second per cluster while its executor runs;
//! any signal holds copies back (through [`CopyControl::gate`]) and says why.
//!
//! [`CopyControl::gate`]: crate::migrations::copy::CopyControl::gate

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::backend::SqlConn;
use crate::vschema::Cluster;

/// Signals the proxy measures on live traffic, per cluster. The proxy implements it;
/// `None` means "no measurement yet" and never throttles.
pub trait ThrottleSignals: Send + Sync {
    /// The p99 latency of the proxy's statements on `cluster` over the last few seconds.
    fn p99_latency(&self, cluster: &str) -> Option<Duration>;
    /// The share (0.0-1.0) of the proxy's statements on `cluster` that failed lately.
    fn error_rate(&self, cluster: &str) -> Option<f64>;
    /// Why copies on `cluster` must wait whatever else the samples say: the proxy's
    /// health monitor sees it degraded or down, or an operator drains it.
    fn health_hold(&self, cluster: &str) -> Option<String> {
        let _ = cluster;
        None
    }
    /// The largest lag of `cluster`'s standbys (None: no standbys, or none measured).
    fn replica_lag(&self, cluster: &str) -> Option<Duration> {
        let _ = cluster;
        None
    }
    /// `cluster` as it is now: a failover moves its primary, and copies must follow.
    fn current(&self, cluster: &Cluster) -> Cluster {
        cluster.clone()
    }
}

/// No proxy signals (tools, tests): only the cluster's own signals throttle.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoSignals;

impl ThrottleSignals for NoSignals {
    fn p99_latency(&self, _cluster: &str) -> Option<Duration> {
        None
    }
    fn error_rate(&self, _cluster: &str) -> Option<f64> {
        None
    }
}

/// Throttle thresholds. A signal throttles when it is above
/// `max(floor, factor × baseline)`, the baseline being the median of the last
/// `baseline_window` samples (a slow-moving median: a short burst never moves it).
#[derive(Debug, Clone)]
pub struct ThrottleConfig {
    /// How often the cluster is sampled.
    pub sample_interval: Duration,
    /// `Threads_running` never throttles at or below this.
    pub threads_running_floor: f64,
    /// `Threads_running` throttles above this multiple of its baseline.
    pub threads_running_factor: f64,
    /// The proxy's p99 never throttles at or below this.
    pub p99_floor: Duration,
    /// The proxy's p99 throttles above this multiple of its baseline.
    pub p99_factor: f64,
    /// The proxy's error rate on the cluster throttles above this.
    pub max_error_rate: f64,
    /// Samples in the baseline median.
    pub baseline_window: usize,
    /// Samples needed before the baseline counts (the floors alone apply until then).
    pub baseline_min_samples: usize,
    /// Replica lag throttles above this (the largest lag of the cluster's standbys,
    /// measured by the health monitor from the heartbeat row).
    pub max_replica_lag: Duration,
    /// Sessions waiting for a metadata lock on a migration's table hold it back.
    pub metadata_lock_waits: bool,
}

impl Default for ThrottleConfig {
    fn default() -> Self {
        ThrottleConfig {
            sample_interval: Duration::from_secs(1),
            threads_running_floor: 25.0,
            threads_running_factor: 1.2,
            p99_floor: Duration::from_millis(25),
            p99_factor: 2.0,
            max_error_rate: 0.05,
            baseline_window: 300,
            baseline_min_samples: 30,
            max_replica_lag: Duration::from_secs(5),
            metadata_lock_waits: true,
        }
    }
}

/// What the last sample found.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ThrottleState {
    /// Why every copy on the cluster is held back, if one is.
    pub cluster_reason: Option<String>,
    /// Sessions waiting for a metadata lock: their default database and statement.
    pub metadata_lock_waits: Vec<(Option<String>, String)>,
}

impl ThrottleState {
    /// Why a copy of `database`.`table` must wait now, if it must.
    pub fn reason_for(&self, database: &str, table: &str) -> Option<String> {
        if let Some(r) = &self.cluster_reason {
            return Some(r.clone());
        }
        // PROCESSLIST does not name the locked table; a waiting statement that names
        // the table (in its database) is taken to wait for it.
        let table_lc = table.to_ascii_lowercase();
        let waiting = self
            .metadata_lock_waits
            .iter()
            .filter(|(db, info)| {
                let info = info.to_ascii_lowercase();
                mentions(&info, &table_lc)
                    && (db.as_deref() == Some(database)
                        || mentions(&info, &database.to_ascii_lowercase()))
            })
            .count();
        (waiting > 0).then(|| {
            format!("metadata lock: {waiting} session(s) waiting on `{database}`.`{table}`")
        })
    }
}

/// Whether `word` occurs in `text` not as part of a longer identifier.
fn mentions(text: &str, word: &str) -> bool {
    let is_ident = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '$';
    text.match_indices(word).any(|(at, _)| {
        let before = text[..at].chars().next_back();
        let after = text[at + word.len()..].chars().next();
        !before.is_some_and(is_ident) && !after.is_some_and(is_ident)
    })
}

/// A slow-moving median of the last samples. Until it has `min_samples` it is not
/// trusted (the floor alone applies), and samples above the threshold count only one
/// in [`Baseline::THROTTLED_WEIGHT`]: a burst cannot lift the baseline that is meant
/// to catch it, while a lasting new normal is still learnt, slowly.
#[derive(Debug, Clone)]
pub struct Baseline {
    samples: VecDeque<f64>,
    window: usize,
    min_samples: usize,
    skipped: u64,
}

impl Baseline {
    /// One in this many samples taken while throttled joins the baseline.
    pub const THROTTLED_WEIGHT: u64 = 5;

    /// An empty baseline over `window` samples, trusted from `min_samples` on.
    pub fn new(window: usize, min_samples: usize) -> Self {
        Baseline {
            samples: VecDeque::with_capacity(window.min(4096)),
            window: window.max(1),
            min_samples: min_samples.min(window),
            skipped: 0,
        }
    }

    /// Adds a sample (one that `throttled` counts only now and then), forgetting the
    /// oldest beyond the window.
    pub fn push(&mut self, v: f64, throttled: bool) {
        if throttled {
            self.skipped += 1;
            if !self.skipped.is_multiple_of(Self::THROTTLED_WEIGHT) {
                return;
            }
        }
        if self.samples.len() == self.window {
            self.samples.pop_front();
        }
        self.samples.push_back(v);
    }

    /// The median, once there are enough samples.
    pub fn median(&self) -> Option<f64> {
        if self.samples.is_empty() || self.samples.len() < self.min_samples {
            return None;
        }
        let mut v: Vec<f64> = self.samples.iter().copied().collect();
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }

    /// `max(floor, factor × median)`; the floor alone until there are samples.
    pub fn threshold(&self, floor: f64, factor: f64) -> f64 {
        self.median().map_or(floor, |m| floor.max(factor * m))
    }
}

/// Samples `cluster` every `config.sample_interval` and publishes what it finds, until
/// `stop` turns true or every receiver is gone. A sample that cannot be taken throttles
/// (health unknown).
pub(crate) async fn sample_loop(
    mut cluster: Cluster,
    config: ThrottleConfig,
    signals: Arc<dyn ThrottleSignals>,
    connect_timeout: Duration,
    tx: watch::Sender<ThrottleState>,
    mut stop: watch::Receiver<bool>,
) {
    let mut threads = Baseline::new(config.baseline_window, config.baseline_min_samples);
    let mut p99 = Baseline::new(config.baseline_window, config.baseline_min_samples);
    let mut conn: Option<SqlConn> = None;
    let mut tick = crate::timer::interval(config.sample_interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() || tx.is_closed() {
            return;
        }
        // A failover moved the primary: sample the new one.
        let now = signals.current(&cluster);
        if now.primary != cluster.primary {
            conn = None;
            cluster = now;
        }
        let limit = config.sample_interval.max(Duration::from_secs(1)) * 2;
        let sampled = crate::timer::timeout(
            limit,
            sample_cluster(&cluster, &config, &mut conn, &mut threads, connect_timeout),
        )
        .await;
        let mut state = match sampled {
            Ok(Ok(state)) => state,
            Ok(Err(e)) => {
                conn = None;
                ThrottleState {
                    cluster_reason: Some(format!("health unknown: {e}")),
                    ..ThrottleState::default()
                }
            }
            Err(_) => {
                conn = None;
                ThrottleState {
                    cluster_reason: Some("health unknown: the cluster did not answer".into()),
                    ..ThrottleState::default()
                }
            }
        };
        if let Some(hold) = signals.health_hold(&cluster.name) {
            state.cluster_reason = Some(hold);
        }
        if state.cluster_reason.is_none() {
            state.cluster_reason = proxy_reason(&cluster, &config, signals.as_ref(), &mut p99);
        }
        if state.cluster_reason.is_none() {
            if let Some(lag) = signals.replica_lag(&cluster.name) {
                if lag > config.max_replica_lag {
                    state.cluster_reason = Some(format!(
                        "replica lag {} ms > {} ms",
                        lag.as_millis(),
                        config.max_replica_lag.as_millis()
                    ));
                }
            }
        }
        tx.send_if_modified(|old| {
            let changed = *old != state;
            *old = state;
            changed
        });
    }
}

async fn sample_cluster(
    cluster: &Cluster,
    config: &ThrottleConfig,
    conn: &mut Option<SqlConn>,
    threads: &mut Baseline,
    connect_timeout: Duration,
) -> Result<ThrottleState, crate::backend::SqlError> {
    if conn.is_none() {
        *conn = Some(SqlConn::connect(cluster, None, connect_timeout).await?);
    }
    let Some(c) = conn.as_mut() else {
        return Ok(ThrottleState::default());
    };
    let mut state = ThrottleState::default();
    let rows = c.query("SHOW GLOBAL STATUS LIKE 'Threads_running'").await?;
    let running: Option<f64> = rows
        .rows
        .first()
        .and_then(|r| r.get(1))
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok());
    if let Some(running) = running {
        let limit = threads.threshold(config.threads_running_floor, config.threads_running_factor);
        if running > limit {
            state.cluster_reason = Some(format!(
                "Threads_running {running} > {limit:.0} (baseline {:.0})",
                threads.median().unwrap_or(0.0)
            ));
        }
        threads.push(running, running > limit);
    }
    if config.metadata_lock_waits {
        let rows = c
            .query(
                "SELECT DB, INFO FROM information_schema.PROCESSLIST \
                 WHERE STATE LIKE 'Waiting for table metadata lock%' AND ID <> CONNECTION_ID()",
            )
            .await?;
        for r in rows.rows {
            let db = r.first().cloned().flatten();
            if let Some(info) = r.get(1).cloned().flatten() {
                state.metadata_lock_waits.push((db, info));
            }
        }
    }
    Ok(state)
}

fn proxy_reason(
    cluster: &Cluster,
    config: &ThrottleConfig,
    signals: &dyn ThrottleSignals,
    p99: &mut Baseline,
) -> Option<String> {
    let mut reason = None;
    if let Some(latency) = signals.p99_latency(&cluster.name) {
        let ms = latency.as_secs_f64() * 1000.0;
        let limit = p99.threshold(config.p99_floor.as_secs_f64() * 1000.0, config.p99_factor);
        if ms > limit {
            reason = Some(format!(
                "proxy p99 {ms:.1} ms > {limit:.1} ms (baseline {:.1} ms)",
                p99.median().unwrap_or(0.0)
            ));
        }
        p99.push(ms, ms > limit);
    }
    if reason.is_none() {
        if let Some(rate) = signals.error_rate(&cluster.name) {
            if rate > config.max_error_rate {
                reason = Some(format!(
                    "proxy error rate {:.1}% > {:.1}%",
                    rate * 100.0,
                    config.max_error_rate * 100.0
                ));
            }
        }
    }
    reason
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_is_a_median_that_a_burst_does_not_move() {
        let mut b = Baseline::new(30, 3);
        b.push(100.0, false);
        b.push(100.0, false);
        assert_eq!(
            b.threshold(25.0, 1.2),
            25.0,
            "not trusted before min_samples"
        );
        for _ in 0..8 {
            b.push(100.0, false);
        }
        for _ in 0..3 {
            b.push(1000.0, false);
        }
        assert_eq!(b.median(), Some(100.0));
        assert_eq!(b.threshold(25.0, 1.2), 120.0);
        // Throttled samples count one in five: these 20 are 4 samples.
        for _ in 0..20 {
            b.push(5000.0, true);
        }
        assert_eq!(b.median(), Some(100.0));
        // A lasting new normal is learnt.
        for _ in 0..30 {
            b.push(1.0, false);
        }
        assert_eq!(b.threshold(25.0, 1.2), 25.0);
    }

    #[test]
    fn a_metadata_lock_wait_holds_back_only_the_table_it_names() {
        let state = ThrottleState {
            cluster_reason: None,
            metadata_lock_waits: vec![(Some("ws_1".into()), "SELECT * FROM items".into())],
        };
        assert!(state.reason_for("ws_1", "items").is_some());
        assert!(state.reason_for("ws_1", "item").is_none());
        assert!(state.reason_for("ws_2", "items").is_none());
        let qualified = ThrottleState {
            cluster_reason: None,
            metadata_lock_waits: vec![(None, "update `ws_2`.`items` set a=1".into())],
        };
        assert!(qualified.reason_for("ws_2", "items").is_some());
    }

    #[test]
    fn proxy_signals_throttle_above_their_thresholds() {
        struct Fixed(Duration, f64);
        impl ThrottleSignals for Fixed {
            fn p99_latency(&self, _: &str) -> Option<Duration> {
                Some(self.0)
            }
            fn error_rate(&self, _: &str) -> Option<f64> {
                Some(self.1)
            }
        }
        let cluster = Cluster {
            name: "c1".into(),
            standbys: Vec::new(),
            primary: "127.0.0.1:1".into(),
            user: "u".into(),
            password: "p".into(),
            tls: None,
        };
        let config = ThrottleConfig::default();
        let mut p99 = Baseline::new(10, 1);
        let calm = Fixed(Duration::from_millis(5), 0.0);
        assert_eq!(proxy_reason(&cluster, &config, &calm, &mut p99), None);
        let slow = Fixed(Duration::from_millis(40), 0.0);
        let reason = proxy_reason(&cluster, &config, &slow, &mut p99);
        assert!(reason.is_some_and(|r| r.contains("p99")));
        let failing = Fixed(Duration::from_millis(5), 0.2);
        let reason = proxy_reason(&cluster, &config, &failing, &mut Baseline::new(10, 1));
        assert!(reason.is_some_and(|r| r.contains("error rate")));
    }
}
