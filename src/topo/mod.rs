//! The topology store: where the shard map (every version of the vschema document,
//! with its author, time and diff), the pin directory, traffic intents and failover
//! leases live, so that a restarted proxy, or every proxy of a fleet, serves the same
//! map.
//!
//! Two stores implement [`Topo`]:
//! - [`file::FileTopo`] (`topo = "file"`, the default): a directory on the proxy's own
//!   disk; one proxy.
//! - [`etcd::EtcdTopo`] (`topo = "etcd"`): an etcd cluster shared by a fleet of
//!   proxies; changes made through one proxy reach the others by etcd's watch.
//!
//! The store is not on the statement path: sessions read the in-memory runtime
//! snapshot ([`crate::shared::Shared::runtime`]); the control plane
//! ([`crate::control`]) writes the store first and then swaps the snapshot, and
//! applies what the store's watch reports.

use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod etcd;
pub mod file;
pub mod memory;

/// A boxed future, so that [`Topo`] can be a trait object.
pub type BoxFut<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// One version of the vschema document.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionRecord {
    /// 1 for the first document a store holds, then one more per change.
    pub version: u64,
    /// Who made it: the admin user, `file` for the watched file, or the proxy's
    /// address for a start-up import.
    pub author: String,
    /// How it came: `file`, `sql`, `http`, `rollback`, `pin`.
    pub source: String,
    /// Unix time in milliseconds.
    pub time_ms: u64,
    /// What changed against the version before, one line per change.
    pub diff: Vec<String>,
    /// The whole TOML document.
    pub document: String,
}

/// One pin of the pin directory changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinChange {
    /// The sharded keyspace.
    pub keyspace: String,
    /// The workspace id.
    pub workspace: u64,
    /// The shard it is pinned to now; None: unpinned (the vindex places it).
    pub shard: Option<String>,
}

/// The pins of one keyspace, compactly: shard names once, then (workspace, index into
/// `shards`) pairs. A million pins take about 16 MB here, not a million strings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyspacePins {
    /// The keyspace.
    pub keyspace: String,
    /// The shard names the pins use.
    pub shards: Vec<String>,
    /// (workspace id, index into `shards`).
    pub pins: Vec<(u64, u32)>,
}

/// What the store reports to a proxy that watches it: changes made by any proxy
/// (including this one: the control plane ignores what it already applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A new current vschema version.
    Vschema(VersionRecord),
    /// A pin changed.
    Pin(PinChange),
    /// A cluster's traffic state changed (the drain intent and failover topology of
    /// `docs/traffic.md`), as the store keeps it: the cluster and its saved state text.
    Traffic {
        /// The cluster.
        cluster: String,
        /// The saved state (the format of the traffic state file's cluster entry).
        state: String,
    },
    /// The store became reachable (true) or unreachable (false). While unreachable the
    /// proxy serves the last snapshot it has.
    Reachable(bool),
}

/// What a store operation can fail with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TopoError {
    /// A compare-and-swap lost: the current version is `current`, not the expected one.
    Conflict {
        /// The version current in the store.
        current: u64,
    },
    /// The store cannot be reached or refused the operation; a retry may help.
    Unavailable(String),
    /// What the store holds cannot be read (a damaged file or key).
    Corrupt(String),
}

impl std::fmt::Display for TopoError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TopoError::Conflict { current } => {
                write!(
                    f,
                    "the vschema changed meanwhile: version {current} is current"
                )
            }
            TopoError::Unavailable(m) => write!(f, "the topology store is unavailable: {m}"),
            TopoError::Corrupt(m) => write!(f, "the topology store holds a damaged entry: {m}"),
        }
    }
}

/// A lease on a name (one cluster's failover): held by one proxy of the fleet at a
/// time, released when dropped, and lost if the proxy stops renewing it (it dies).
pub trait Lease: Send + Sync {
    /// Whether the lease is still held (renewals succeed).
    fn held(&self) -> bool;
}

/// A topology store.
pub trait Topo: Send + Sync {
    /// `file` or `etcd`.
    fn kind(&self) -> &'static str;

    /// The current vschema version, None while the store holds none.
    fn current(&self) -> BoxFut<'_, Result<Option<VersionRecord>, TopoError>>;

    /// Makes `record` current if the current version is `expected` (0: the store holds
    /// none yet); else [`TopoError::Conflict`]. `record.version` is `expected + 1`.
    fn publish(&self, record: VersionRecord, expected: u64) -> BoxFut<'_, Result<(), TopoError>>;

    /// Versions, newest first, at most `limit` of them.
    fn history(&self, limit: usize) -> BoxFut<'_, Result<Vec<VersionRecord>, TopoError>>;

    /// One version, if the store still holds it.
    fn version(&self, version: u64) -> BoxFut<'_, Result<Option<VersionRecord>, TopoError>>;

    /// Every pin of the directory.
    fn load_pins(&self) -> BoxFut<'_, Result<Vec<KeyspacePins>, TopoError>>;

    /// Sets (or, with `shard: None`, removes) one pin, without rewriting the others.
    fn set_pin(&self, change: PinChange) -> BoxFut<'_, Result<(), TopoError>>;

    /// Saves one cluster's traffic state (see [`Event::Traffic`]).
    fn save_traffic(&self, cluster: String, state: String) -> BoxFut<'_, Result<(), TopoError>>;

    /// Every cluster's saved traffic state.
    fn load_traffic(&self) -> BoxFut<'_, Result<Vec<(String, String)>, TopoError>>;

    /// Takes the lease `name` for `ttl` (renewed while held), or None when another
    /// proxy holds it.
    fn lease(
        &self,
        name: String,
        ttl: Duration,
    ) -> BoxFut<'_, Result<Option<Box<dyn Lease>>, TopoError>>;

    /// Who holds the lease `name` now (the identity it was taken with), None when
    /// nobody does or the store does not keep it.
    fn lease_holder(&self, _name: String) -> BoxFut<'_, Result<Option<String>, TopoError>> {
        Box::pin(async { Ok(None) })
    }

    /// Names this proxy in the leases it takes (its listen address and pid).
    fn set_identity(&self, _identity: String) {}

    /// Changes made by any proxy, from now on. The receiver is bounded; a watcher that
    /// falls behind reloads ([`Topo::current`], [`Topo::load_pins`]).
    fn watch(&self) -> tokio::sync::mpsc::Receiver<Event>;

    /// Whether the store answered its last operation.
    fn reachable(&self) -> bool;

    /// How long the store has not answered, while [`Topo::reachable`] is false (None
    /// when it answers, or when the store does not keep the time).
    fn unreachable_for(&self) -> Option<Duration> {
        None
    }
}

/// Milliseconds since the Unix epoch, now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// The lease of a store only this proxy uses (file, memory): always held.
pub(crate) struct LocalLease;

impl Lease for LocalLease {
    fn held(&self) -> bool {
        true
    }
}

/// `name` (a keyspace or cluster name: the vschema admits more than keys and file
/// names should) escaped into one path or key component: letters, digits, `-` and `_`
/// as they are, every other byte as `%hh` (so no `/`, `.` or `..`).
pub(crate) fn escape_component(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'-' | b'_' => out.push(b as char),
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

/// The name [`escape_component`] escaped.
pub(crate) fn unescape_component(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("");
            if let Ok(b) = u8::from_str_radix(hex, 16) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}
