//! Traffic intent, separate from health (`docs/traffic.md`): whether an operator wants a
//! cluster to serve (`serving`), to stop taking new work (`draining`, while what runs
//! finishes), or to take none (`drained`); and what a statement for an unavailable
//! cluster gets: an error at once, or a bounded wait in the cluster's buffer.
//!
//! Intent is kept in a state file next to the config, so a restarted proxy keeps a
//! drained cluster drained; with `topo = "etcd"` also in etcd, shared by the fleet
//! ([`saved`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::Notify;

pub mod failover;
pub mod saved;
mod topology;

pub use saved::apply_saved_traffic;
pub use topology::{Topology, Turn};

/// What an operator (or policy) wants of a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Intent {
    /// Takes statements.
    Serving = 0,
    /// Takes no new statements; those running and open transactions may finish.
    Draining = 1,
    /// Takes nothing.
    Drained = 2,
}

impl Intent {
    fn from_u8(v: u8) -> Intent {
        match v {
            0 => Intent::Serving,
            1 => Intent::Draining,
            _ => Intent::Drained,
        }
    }

    /// `serving`, `draining` or `drained`.
    pub fn name(self) -> &'static str {
        match self {
            Intent::Serving => "serving",
            Intent::Draining => "draining",
            Intent::Drained => "drained",
        }
    }

    fn parse(s: &str) -> Option<Intent> {
        match s {
            "serving" => Some(Intent::Serving),
            "draining" => Some(Intent::Draining),
            "drained" => Some(Intent::Drained),
            _ => None,
        }
    }
}

/// What a statement for a `down` or `drained` cluster gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OnUnavailable {
    /// An error at once.
    #[default]
    Fail,
    /// A wait in the cluster's buffer, up to its size and time limits.
    Buffer,
}

/// `[traffic]` in the config.
#[derive(Debug, Clone)]
pub struct TrafficConfig {
    /// Fail fast or buffer.
    pub on_unavailable: OnUnavailable,
    /// Most statements waiting per cluster; more fail at once.
    pub buffer_size: usize,
    /// Longest wait in the buffer.
    pub buffer_timeout: Duration,
    /// Where intents are kept (None: not kept across restarts).
    pub state_file: Option<PathBuf>,
    /// Failover policy and deadlines.
    pub failover: failover::FailoverConfig,
}

impl Default for TrafficConfig {
    fn default() -> Self {
        TrafficConfig {
            on_unavailable: OnUnavailable::Fail,
            buffer_size: 1000,
            buffer_timeout: Duration::from_secs(10),
            state_file: None,
            failover: failover::FailoverConfig::default(),
        }
    }
}

/// `[traffic]` as written in the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrafficFile {
    on_unavailable: Option<String>,
    buffer_size: Option<usize>,
    buffer_timeout_ms: Option<u64>,
    state_file: Option<String>,
    failover: Option<String>,
    failover_drain_wait_ms: Option<u64>,
    failover_catch_up_ms: Option<u64>,
    max_replica_lag_ms: Option<u64>,
}

impl TrafficFile {
    /// The settings, defaults filled in, checked; the state file is relative to
    /// `base` (the config file's directory) and defaults to `shardgate-traffic.toml`
    /// there.
    pub fn to_config(&self, base: &Path) -> Result<TrafficConfig, String> {
        let mut c = TrafficConfig::default();
        match self.on_unavailable.as_deref() {
            None | Some("fail") => {}
            Some("buffer") => c.on_unavailable = OnUnavailable::Buffer,
            Some(other) => {
                return Err(format!(
                    "on_unavailable = \"{other}\": expected \"fail\" or \"buffer\""
                ))
            }
        }
        if let Some(n) = self.buffer_size {
            if n == 0 {
                return Err("buffer_size must be > 0".into());
            }
            c.buffer_size = n;
        }
        if let Some(ms) = self.buffer_timeout_ms {
            if ms == 0 {
                return Err("buffer_timeout_ms must be > 0".into());
            }
            c.buffer_timeout = Duration::from_millis(ms);
        }
        match self.failover.as_deref() {
            None | Some("manual") => {}
            Some("auto") => c.failover.auto = true,
            Some(other) => {
                return Err(format!(
                    "failover = \"{other}\": expected \"manual\" or \"auto\""
                ))
            }
        }
        if let Some(ms) = self.failover_drain_wait_ms {
            c.failover.drain_wait = Duration::from_millis(ms);
        }
        if let Some(ms) = self.failover_catch_up_ms {
            c.failover.catch_up = Duration::from_millis(ms.max(1));
        }
        if let Some(ms) = self.max_replica_lag_ms {
            c.failover.max_lag = Duration::from_millis(ms);
        }
        c.state_file = Some(
            base.join(
                self.state_file
                    .as_deref()
                    .unwrap_or("shardgate-traffic.toml"),
            ),
        );
        Ok(c)
    }
}

/// One cluster's intent and buffer.
#[derive(Debug, Default)]
pub struct ClusterTraffic {
    intent: AtomicU8,
    detail: Mutex<IntentDetail>,
    /// Statements waiting in the buffer now.
    pub buffered: AtomicUsize,
    /// Woken when the cluster may have become available (health better, intent
    /// serving).
    pub changed: Notify,
    /// The member a failover under way switches to (statements wait meanwhile).
    switching: Mutex<Option<String>>,
    /// Whether `switching` is Some: what every checkout reads, without the lock.
    switching_now: std::sync::atomic::AtomicBool,
}

/// Who set the intent, why and when.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IntentDetail {
    /// The reason given.
    pub reason: String,
    /// When it was set (seconds since the epoch; 0 = never).
    pub since: u64,
}

impl ClusterTraffic {
    /// The intent now: one relaxed atomic load.
    pub fn intent(&self) -> Intent {
        Intent::from_u8(self.intent.load(Ordering::Relaxed))
    }

    /// Why and since when.
    pub fn detail(&self) -> IntentDetail {
        self.detail
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// The member a failover under way switches to, if one is under way.
    pub fn switching(&self) -> Option<String> {
        if !self.switching_now.load(Ordering::Acquire) {
            return None;
        }
        self.switching
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Marks a failover to `to` as started (Some) or over (None); waiters look again.
    pub fn set_switching(&self, to: Option<String>) {
        let on = to.is_some();
        *self.switching.lock().unwrap_or_else(|e| e.into_inner()) = to;
        self.switching_now.store(on, Ordering::Release);
        self.changed.notify_waiters();
    }

    /// Sets the intent; waiters in the buffer look again.
    pub fn set(&self, intent: Intent, reason: &str) {
        self.set_at(intent, reason, now_secs());
    }

    fn set_at(&self, intent: Intent, reason: &str, since: u64) {
        *self.detail.lock().unwrap_or_else(|e| e.into_inner()) = IntentDetail {
            reason: reason.to_string(),
            since,
        };
        self.intent.store(intent as u8, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// One cluster's entry in the state file.
#[derive(Debug, serde::Deserialize)]
struct Entry {
    intent: String,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    since: u64,
    primary: Option<String>,
    #[serde(default)]
    standbys: Vec<String>,
    #[serde(default)]
    fenced: Vec<String>,
}

/// A cluster's members as the state file keeps them (after failovers).
#[derive(Debug, Clone, PartialEq)]
pub struct SavedMembers {
    /// The cluster.
    pub cluster: String,
    /// Its primary.
    pub primary: String,
    /// Its standbys.
    pub standbys: Vec<String>,
    /// Former primaries never to be routed to.
    pub fenced: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct StateFile {
    #[serde(default)]
    clusters: BTreeMap<String, Entry>,
}

/// Applies the intents kept in `path` to the clusters `traffic_of` finds, and returns
/// the members kept for each (the caller switches to them); a missing file means every
/// cluster serves, as the vschema says. Unknown clusters are skipped with a warning.
pub fn load_state<'a>(
    path: &Path,
    traffic_of: impl Fn(&str) -> Option<&'a ClusterTraffic>,
) -> Result<Vec<SavedMembers>, String> {
    let mut members = Vec::new();
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(members),
        Err(e) => return Err(format!("{}: {e}", path.display())),
    };
    let file: StateFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    for (cluster, entry) in file.clusters {
        let Some(intent) = Intent::parse(&entry.intent) else {
            return Err(format!(
                "{}: cluster {cluster}: intent \"{}\" is not serving, draining or drained",
                path.display(),
                entry.intent
            ));
        };
        if let Some(primary) = &entry.primary {
            members.push(SavedMembers {
                cluster: cluster.clone(),
                primary: primary.clone(),
                standbys: entry.standbys.clone(),
                fenced: entry.fenced.clone(),
            });
        }
        match traffic_of(&cluster) {
            // A drain that a restart interrupted is finished: nothing of it runs now.
            Some(t) => {
                let intent = if intent == Intent::Draining {
                    Intent::Drained
                } else {
                    intent
                };
                t.set_at(intent, &entry.reason, entry.since);
                if intent != Intent::Serving {
                    tracing::warn!(%cluster, intent = intent.name(), reason = %entry.reason, "cluster intent kept from the state file");
                }
            }
            None => {
                tracing::warn!(%cluster, "state file names a cluster the vschema does not have")
            }
        }
    }
    Ok(members)
}

/// What the state file keeps of one cluster.
pub struct SavedCluster<'a> {
    /// Its name.
    pub name: &'a str,
    /// Its intent.
    pub traffic: &'a ClusterTraffic,
    /// Its members now (after failovers).
    pub cluster: std::sync::Arc<crate::vschema::Cluster>,
    /// Former primaries fenced.
    pub fenced: Vec<String>,
}

/// Writes every cluster's intent and members to `path` (a temporary file renamed over
/// it, so a crash leaves the old state or the new one).
pub fn save_state<'a>(
    path: &Path,
    clusters: impl Iterator<Item = SavedCluster<'a>>,
) -> Result<(), String> {
    let mut out = String::from(
        "# Written by shardgate: what operators want of each cluster (DRAIN/UNDRAIN CLUSTER)\n\
         # and who its primary is after failovers (FAILOVER CLUSTER).\n",
    );
    for c in clusters {
        out.push_str(&format!(
            "\n[clusters.{}]\n{}",
            toml_key(c.name),
            entry_text(&c)
        ));
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, out).map_err(|e| format!("{}: {e}", tmp.display()))?;
    std::fs::rename(&tmp, path).map_err(|e| format!("{}: {e}", path.display()))
}

/// One cluster's entry of the state file, without its `[clusters.<name>]` header: what
/// `topo = "etcd"` keeps per cluster too ([`saved`]).
pub fn entry_text(c: &SavedCluster<'_>) -> String {
    let list = |v: &[String]| {
        let items: Vec<String> = v.iter().map(|s| toml_string(s)).collect();
        format!("[{}]", items.join(", "))
    };
    let d = c.traffic.detail();
    format!(
        "intent = \"{}\"\nreason = {}\nsince = {}\nprimary = {}\nstandbys = {}\nfenced = {}\n",
        c.traffic.intent().name(),
        toml_string(&d.reason),
        d.since,
        toml_string(&c.cluster.primary),
        list(&c.cluster.standbys),
        list(&c.fenced),
    )
}

/// A TOML basic string: JSON's escapes are valid TOML.
fn toml_string(s: &str) -> String {
    crate::health::json_string(s)
}

fn toml_key(s: &str) -> String {
    if !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        s.to_string()
    } else {
        toml_string(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intents_survive_a_save_and_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("traffic.toml");
        let (a, b) = (ClusterTraffic::default(), ClusterTraffic::default());
        a.set(Intent::Drained, "disk \"full\"\nagain");
        b.set(Intent::Draining, "maintenance");
        let cluster = |name: &str| {
            std::sync::Arc::new(crate::vschema::Cluster {
                name: name.into(),
                primary: "127.0.0.1:2".into(),
                standbys: vec!["127.0.0.1:3".into()],
                user: "u".into(),
                password: String::new(),
                tls: None,
            })
        };
        let saved = [("c1", &a), ("c.2", &b)].map(|(name, traffic)| SavedCluster {
            name,
            traffic,
            cluster: cluster(name),
            fenced: vec!["127.0.0.1:1".into()],
        });
        save_state(&path, saved.into_iter()).expect("save");
        let (a2, b2) = (ClusterTraffic::default(), ClusterTraffic::default());
        let members = load_state(&path, |n| match n {
            "c1" => Some(&a2),
            "c.2" => Some(&b2),
            _ => None,
        })
        .expect("load");
        assert_eq!(members.len(), 2);
        assert_eq!(
            members[1],
            SavedMembers {
                cluster: "c1".into(),
                primary: "127.0.0.1:2".into(),
                standbys: vec!["127.0.0.1:3".into()],
                fenced: vec!["127.0.0.1:1".into()],
            }
        );
        assert_eq!(a2.intent(), Intent::Drained);
        assert_eq!(a2.detail(), a.detail());
        assert_eq!(
            b2.intent(),
            Intent::Drained,
            "a drain a restart interrupted counts as done"
        );
        assert!(load_state(&dir.path().join("none.toml"), |_| None).is_ok());
        std::fs::write(&path, "[clusters.c1]\nintent = \"paused\"\n").expect("write");
        let e = load_state(&path, |_| Some(&a2)).expect_err("bad intent");
        assert!(e.contains("paused"), "{e}");
    }
}
