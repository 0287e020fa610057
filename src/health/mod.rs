//! Cluster health, observed (`docs/traffic.md`): an active probe of every cluster each
//! second (connect, `SELECT 1`, an UPSERT into `_shardgate.heartbeat`,
//! `Threads_running`) and the passive signals of live traffic (the p99 latency and error
//! rate of the last ten seconds' statements), folded into one state per cluster:
//! `healthy -> degraded -> down -> healthy`.
//!
//! The state is one atomic byte on the cluster's pool, read by every checkout (a `down`
//! cluster fails fast or buffers, `crate::traffic`); the details behind it (reason,
//! counts, last probe) sit under a lock only the monitor and `SHOW CLUSTERS` take.
//!
//! [`workspaces`] keeps what the averages hide: per-workspace statement and error
//! counts of the last minute (`SHOW WORKSPACES WITH ERRORS`).

pub mod members;
mod probe;
pub mod workspaces;

pub(crate) use probe::json_string;
pub use probe::{spawn_monitor, spawn_monitors, ProbeReading};
pub use workspaces::{LastError, WorkspaceErrors, WorkspaceKey};

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime};

use crate::metrics::WindowSummary;

/// A cluster's observed health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Health {
    /// Probes pass and traffic looks normal.
    Healthy = 0,
    /// Still served, but probes started failing or traffic is slow or failing: migration
    /// copies pause, operators are told.
    Degraded = 1,
    /// Probes keep failing: statements for it fail fast (or wait in the buffer).
    Down = 2,
}

impl Health {
    fn from_u8(v: u8) -> Health {
        match v {
            0 => Health::Healthy,
            1 => Health::Degraded,
            _ => Health::Down,
        }
    }

    /// `healthy`, `degraded` or `down`.
    pub fn name(self) -> &'static str {
        match self {
            Health::Healthy => "healthy",
            Health::Degraded => "degraded",
            Health::Down => "down",
        }
    }
}

/// Probe timing and the thresholds between states (`[health]` in the config).
#[derive(Debug, Clone)]
pub struct HealthConfig {
    /// How often each cluster is probed; zero turns the monitor off.
    pub probe_interval: Duration,
    /// A probe (connect included) that takes longer fails.
    pub probe_timeout: Duration,
    /// Consecutive failed probes that make a cluster `degraded`.
    pub degraded_after_failures: u32,
    /// Consecutive failed probes that make it `down`.
    pub down_after_failures: u32,
    /// Consecutive good probes (with normal traffic) that make it `healthy` again.
    pub recover_after_successes: u32,
    /// Live traffic's p99 above this makes a cluster `degraded`.
    pub degraded_p99: Duration,
    /// Live traffic's error rate above this makes a cluster `degraded`.
    pub degraded_error_rate: f64,
    /// The traffic signals count only with at least this many statements in the window.
    pub min_statements: u64,
    /// Every change of state is POSTed here as JSON (`http://` only).
    pub webhook: Option<String>,
}

impl Default for HealthConfig {
    fn default() -> Self {
        HealthConfig {
            probe_interval: Duration::from_secs(1),
            probe_timeout: Duration::from_secs(1),
            degraded_after_failures: 1,
            down_after_failures: 3,
            recover_after_successes: 3,
            degraded_p99: Duration::from_secs(2),
            degraded_error_rate: 0.5,
            min_statements: 20,
            webhook: None,
        }
    }
}

/// `[health]` as written in the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthFile {
    probe_interval_ms: Option<u64>,
    probe_timeout_ms: Option<u64>,
    degraded_after_failures: Option<u32>,
    down_after_failures: Option<u32>,
    recover_after_successes: Option<u32>,
    degraded_p99_ms: Option<u64>,
    degraded_error_rate: Option<f64>,
    min_statements: Option<u64>,
    webhook: Option<String>,
}

impl HealthFile {
    /// The settings, defaults filled in, checked.
    pub fn to_config(&self) -> Result<HealthConfig, String> {
        let mut c = HealthConfig::default();
        if let Some(ms) = self.probe_interval_ms {
            c.probe_interval = Duration::from_millis(ms);
        }
        if let Some(ms) = self.probe_timeout_ms {
            if ms == 0 {
                return Err("probe_timeout_ms must be > 0".into());
            }
            c.probe_timeout = Duration::from_millis(ms);
        }
        let at_least_one = |name: &str, v: Option<u32>, d: u32| match v {
            Some(0) => Err(format!("{name} must be > 0")),
            Some(n) => Ok(n),
            None => Ok(d),
        };
        c.degraded_after_failures = at_least_one(
            "degraded_after_failures",
            self.degraded_after_failures,
            c.degraded_after_failures,
        )?;
        c.down_after_failures = at_least_one(
            "down_after_failures",
            self.down_after_failures,
            c.down_after_failures,
        )?;
        c.recover_after_successes = at_least_one(
            "recover_after_successes",
            self.recover_after_successes,
            c.recover_after_successes,
        )?;
        if c.down_after_failures < c.degraded_after_failures {
            return Err("down_after_failures must be >= degraded_after_failures".into());
        }
        if let Some(ms) = self.degraded_p99_ms {
            c.degraded_p99 = Duration::from_millis(ms);
        }
        if let Some(r) = self.degraded_error_rate {
            if !(0.0..=1.0).contains(&r) {
                return Err("degraded_error_rate must be between 0 and 1".into());
            }
            c.degraded_error_rate = r;
        }
        if let Some(n) = self.min_statements {
            c.min_statements = n;
        }
        if let Some(url) = &self.webhook {
            if !url.starts_with("http://") {
                return Err(format!("webhook {url:?}: only http:// URLs are supported"));
            }
            c.webhook = Some(url.clone());
        }
        Ok(c)
    }
}

/// A change of state, for the log, the metrics and the webhook.
#[derive(Debug, Clone, PartialEq)]
pub struct Transition {
    /// The cluster.
    pub cluster: String,
    /// The state before.
    pub from: Health,
    /// The state now.
    pub to: Health,
    /// Why.
    pub reason: String,
}

/// One cluster's health: the state every checkout reads, and what is behind it.
#[derive(Debug)]
pub struct ClusterHealth {
    state: AtomicU8,
    detail: Mutex<Detail>,
    standbys: Mutex<Vec<members::StandbyStatus>>,
}

/// What `SHOW CLUSTERS` shows of a cluster's health.
#[derive(Debug, Clone)]
pub struct HealthSnapshot {
    /// The state.
    pub state: Health,
    /// Why it is in that state (empty when healthy from the start).
    pub reason: String,
    /// When it entered that state.
    pub since: Instant,
    /// The same, as wall time.
    pub since_wall: SystemTime,
    /// Consecutive failed probes now.
    pub failures: u32,
    /// State changes since start.
    pub transitions: u64,
    /// The last good probe's round trips and `Threads_running`.
    pub last_probe: Option<ProbeReading>,
}

#[derive(Debug)]
struct Detail {
    reason: String,
    since: Instant,
    since_wall: SystemTime,
    failures: u32,
    successes: u32,
    /// Consecutive looks at the traffic window that found nothing wrong.
    traffic_good: u32,
    last_failure: String,
    transitions: u64,
    last_probe: Option<ProbeReading>,
}

impl Default for ClusterHealth {
    fn default() -> Self {
        ClusterHealth {
            state: AtomicU8::new(Health::Healthy as u8),
            detail: Mutex::new(Detail {
                reason: String::new(),
                since: Instant::now(),
                since_wall: SystemTime::now(),
                failures: 0,
                successes: 0,
                traffic_good: 0,
                last_failure: String::new(),
                transitions: 0,
                last_probe: None,
            }),
            standbys: Mutex::new(Vec::new()),
        }
    }
}

impl ClusterHealth {
    /// The state now: one relaxed atomic load.
    pub fn get(&self) -> Health {
        Health::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// Details for `SHOW CLUSTERS`.
    pub fn snapshot(&self) -> HealthSnapshot {
        let d = self.lock();
        HealthSnapshot {
            state: self.get(),
            reason: d.reason.clone(),
            since: d.since,
            since_wall: d.since_wall,
            failures: d.failures,
            transitions: d.transitions,
            last_probe: d.last_probe.clone(),
        }
    }

    /// After a failover: the new primary answered its promotion, so the cluster is
    /// `healthy` at once (the old primary's failures say nothing of it); returns the
    /// change, if the state was another.
    pub fn reset_after_failover(&self, cluster: &str, to: &str) -> Option<Transition> {
        let mut d = self.lock();
        d.failures = 0;
        d.successes = 0;
        d.traffic_good = 0;
        d.last_probe = None;
        let from = self.get();
        let reason = format!("failed over to {to}");
        d.reason = reason.clone();
        d.since = Instant::now();
        d.since_wall = SystemTime::now();
        if from == Health::Healthy {
            return None;
        }
        d.transitions += 1;
        self.state.store(Health::Healthy as u8, Ordering::Relaxed);
        Some(Transition {
            cluster: cluster.to_string(),
            from,
            to: Health::Healthy,
            reason,
        })
    }

    /// The standbys at their last probe, in the vschema's order.
    pub fn standbys(&self) -> Vec<members::StandbyStatus> {
        self.standbys
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Records the standbys' last probe.
    pub fn set_standbys(&self, s: Vec<members::StandbyStatus>) {
        *self.standbys.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Detail> {
        self.detail.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Folds one probe's outcome and the traffic window of the same moment into the
    /// state; returns the change, if there is one.
    ///
    /// Worse states are entered at once; better ones only after
    /// `recover_after_successes` good probes in a row with normal traffic, so a
    /// flapping cluster does not flap its clients.
    pub fn observe(
        &self,
        cluster: &str,
        config: &HealthConfig,
        probe: Result<ProbeReading, String>,
        traffic: WindowSummary,
    ) -> Option<Transition> {
        let mut d = self.lock();
        match probe {
            Ok(reading) => {
                d.failures = 0;
                d.successes = d.successes.saturating_add(1);
                d.last_probe = Some(reading);
            }
            Err(why) => {
                d.successes = 0;
                d.failures = d.failures.saturating_add(1);
                d.last_failure = why;
            }
        }
        let traffic_bad = traffic_reason(config, &traffic);
        d.traffic_good = if traffic_bad.is_some() {
            0
        } else {
            d.traffic_good.saturating_add(1)
        };
        let (wanted, reason) = if d.failures >= config.down_after_failures.max(1) {
            (
                Health::Down,
                format!("{} probes failed in a row: {}", d.failures, d.last_failure),
            )
        } else if d.failures >= config.degraded_after_failures.max(1) {
            (
                Health::Degraded,
                format!("probe failed: {}", d.last_failure),
            )
        } else if let Some(why) = traffic_bad {
            (Health::Degraded, why)
        } else {
            (Health::Healthy, String::new())
        };
        let now = self.get();
        let recover = config.recover_after_successes.max(1);
        let change = match wanted.cmp(&now) {
            std::cmp::Ordering::Greater => true,
            // Better: after enough good probes in a row, and, to be healthy, as many
            // looks at normal traffic.
            std::cmp::Ordering::Less => {
                d.successes >= recover && (wanted != Health::Healthy || d.traffic_good >= recover)
            }
            std::cmp::Ordering::Equal => {
                if wanted != Health::Healthy {
                    // Same state, newer reason.
                    d.reason = reason.clone();
                }
                false
            }
        };
        if !change {
            return None;
        }
        let reason = if wanted == Health::Healthy {
            format!("{} good probes in a row, traffic normal", d.successes)
        } else {
            reason
        };
        self.state.store(wanted as u8, Ordering::Relaxed);
        d.reason = reason.clone();
        d.since = Instant::now();
        d.since_wall = SystemTime::now();
        d.transitions += 1;
        Some(Transition {
            cluster: cluster.to_string(),
            from: now,
            to: wanted,
            reason,
        })
    }
}

/// Why the traffic of the window counts as degraded, if it does.
fn traffic_reason(config: &HealthConfig, w: &WindowSummary) -> Option<String> {
    if w.count < config.min_statements.max(1) {
        return None;
    }
    if let Some(p99) = w.p99 {
        if p99 > config.degraded_p99 {
            return Some(format!(
                "p99 {} ms > {} ms over the last 10 s ({} statements)",
                p99.as_millis(),
                config.degraded_p99.as_millis(),
                w.count
            ));
        }
    }
    let rate = w.errors as f64 / w.count as f64;
    (rate > config.degraded_error_rate).then(|| {
        format!(
            "error rate {:.0}% > {:.0}% over the last 10 s ({} statements)",
            rate * 100.0,
            config.degraded_error_rate * 100.0,
            w.count
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok() -> Result<ProbeReading, String> {
        Ok(ProbeReading::default())
    }

    fn quiet() -> WindowSummary {
        WindowSummary {
            count: 0,
            errors: 0,
            p99: None,
        }
    }

    #[test]
    fn failures_degrade_then_down_and_good_probes_recover() {
        let h = ClusterHealth::default();
        let c = HealthConfig::default();
        let fail = || Err::<ProbeReading, _>("timed out".to_string());
        assert_eq!(h.observe("c1", &c, ok(), quiet()), None);
        let t = h.observe("c1", &c, fail(), quiet()).expect("degraded");
        assert_eq!((t.from, t.to), (Health::Healthy, Health::Degraded));
        assert!(t.reason.contains("timed out"), "{t:?}");
        assert_eq!(h.observe("c1", &c, fail(), quiet()), None);
        let t = h.observe("c1", &c, fail(), quiet()).expect("down");
        assert_eq!(t.to, Health::Down);
        assert!(t.reason.starts_with("3 probes failed"), "{t:?}");
        assert_eq!(h.observe("c1", &c, ok(), quiet()), None);
        assert_eq!(h.observe("c1", &c, ok(), quiet()), None);
        assert_eq!(h.get(), Health::Down, "two good probes are not enough");
        let t = h.observe("c1", &c, ok(), quiet()).expect("healthy");
        assert_eq!((t.from, t.to), (Health::Down, Health::Healthy));
        assert_eq!(h.snapshot().transitions, 3);
    }

    #[test]
    fn slow_or_failing_traffic_degrades_but_never_downs() {
        let h = ClusterHealth::default();
        let c = HealthConfig::default();
        let slow = WindowSummary {
            count: 100,
            errors: 0,
            p99: Some(Duration::from_secs(5)),
        };
        let t = h.observe("c1", &c, ok(), slow).expect("degraded");
        assert_eq!(t.to, Health::Degraded);
        assert!(t.reason.starts_with("p99 5000 ms"), "{t:?}");
        for _ in 0..10 {
            assert_eq!(h.observe("c1", &c, ok(), slow), None);
        }
        let few = WindowSummary {
            count: 5,
            errors: 5,
            p99: Some(Duration::from_secs(9)),
        };
        assert_eq!(h.observe("c1", &c, ok(), few), None, "too few to judge");
        assert_eq!(h.observe("c1", &c, ok(), quiet()), None);
        assert!(
            h.observe("c1", &c, ok(), quiet()).is_some(),
            "3 good in a row"
        );
        let failing = WindowSummary {
            count: 40,
            errors: 30,
            p99: Some(Duration::from_millis(1)),
        };
        let t = h
            .observe("c1", &c, ok(), failing)
            .expect("degraded by errors");
        assert!(t.reason.starts_with("error rate 75%"), "{t:?}");
    }
}
