//! The control plane: the live, versioned shard map.
//!
//! Every change of the vschema, from any source (the watched file, SIGHUP, SQL from an
//! admin, the HTTP API, another proxy through the topology store) goes through one
//! pipeline ([`change`]): the new document is validated exactly as
//! `shardgate vschema check` validates a file, compared with the current one (a change
//! that would move existing workspaces' rows to another shard is refused unless it says
//! so), written to the topology store as the next version (compare-and-swap on the
//! version), and then applied atomically: statements in flight finish on the snapshot
//! they took, new ones take the new one; pools of added clusters open, those of removed
//! clusters close once their last statement returns its connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::config::TopoConfig;
use crate::shared::Shared;
use crate::topo::{Topo, TopoError, VersionRecord};
use crate::vschema::{Document, VSchema, VSchemaErrors};

pub mod apply;
pub mod diff;
pub mod http;
pub mod pins;
mod watch;

pub use watch::start;

/// How long one topology store operation may take before the change fails (and the
/// proxy keeps serving what it has).
pub const STORE_DEADLINE: Duration = Duration::from_secs(3);

/// Starts what a cluster added to the shard map needs besides its pool (its health
/// monitor, its migration executor); set by the server at start.
pub type ClusterStarter = Box<dyn Fn(&crate::vschema::Cluster) + Send + Sync>;

/// The control plane's state, one per proxy (in [`crate::shared::Shared`]).
pub struct ControlPlane {
    topo: Arc<dyn Topo>,
    /// The version served now (0 before the first is applied).
    version: AtomicU64,
    /// The record of the version served now, and its shard map as the document says
    /// (without what failovers changed since).
    current: Mutex<Option<(Arc<VersionRecord>, Arc<VSchema>)>>,
    /// Serializes changes made through this proxy.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// Whether the topology store answered its last operation.
    reachable: AtomicBool,
    /// Unix ms since the store has been unreachable (0: reachable).
    unreachable_since: AtomicU64,
    pub(crate) starter: Mutex<Option<ClusterStarter>>,
}

/// The store `config` names.
pub fn make_topo(config: &TopoConfig) -> Arc<dyn Topo> {
    match config {
        TopoConfig::Memory => Arc::new(crate::topo::memory::MemoryTopo::default()),
        TopoConfig::File { dir } => Arc::new(crate::topo::file::FileTopo::new(dir.clone())),
        // Connects lazily; `start` waits for it (a bounded time) before serving.
        TopoConfig::Etcd {
            endpoints, prefix, ..
        } => Arc::new(crate::topo::etcd::EtcdTopo::new(
            endpoints.clone(),
            prefix.clone(),
        )),
    }
}

/// A change of the shard map asked for.
#[derive(Debug, Clone)]
pub struct ChangeRequest {
    /// Who asks: the admin user, or `file`.
    pub author: String,
    /// `file`, `sql`, `http`, `rollback`.
    pub source: &'static str,
    /// The whole new document (TOML). Passwords shown hidden keep their value.
    pub document: String,
    /// The version the change was made against (`If-Match`); None: whatever is current.
    pub expected: Option<u64>,
    /// The change may move existing workspaces' rows (it says so explicitly).
    pub allow_movement: bool,
    /// A first line for the version's changes (what the change was, when the diff
    /// alone does not say: a rollback).
    pub note: Option<String>,
}

/// Why a change was refused. Nothing was applied.
#[derive(Debug, Clone)]
pub enum ChangeError {
    /// The document is not valid; every problem, each at its entry.
    Invalid(Vec<(String, String)>),
    /// It would move existing workspaces' rows; the moves.
    MovesData(Vec<String>),
    /// It was made against another version than the current one.
    Stale {
        /// The version it was made against.
        expected: u64,
        /// The current version.
        current: u64,
    },
    /// The topology store could not take it; a retry may help.
    Store(String),
}

impl std::fmt::Display for ChangeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ChangeError::Invalid(errors) => {
                write!(f, "the vschema is not valid: ")?;
                let all: Vec<String> = errors.iter().map(|(at, m)| format!("{at}: {m}")).collect();
                write!(f, "{}", all.join("; "))
            }
            ChangeError::MovesData(moves) => write!(
                f,
                "the change would move existing workspaces' rows ({}); move workspaces first, or say ALLOW DATA MOVEMENT (HTTP: ?allow_data_movement=true) if the rows are already where the new map puts them",
                moves.join("; ")
            ),
            ChangeError::Stale { expected, current } => write!(
                f,
                "the vschema changed meanwhile: the change was made against version {expected}, version {current} is current; read it again and redo the change"
            ),
            ChangeError::Store(m) => write!(f, "the topology store did not take the change: {m}; this proxy applied nothing"),
        }
    }
}

/// A change applied (or found to change nothing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Applied {
    /// The version served now.
    pub version: u64,
    /// What changed; empty when the document equals the current one.
    pub diff: Vec<String>,
}

fn invalid(e: VSchemaErrors) -> ChangeError {
    ChangeError::Invalid(e.0.into_iter().map(|e| (e.at, e.message)).collect())
}

impl ControlPlane {
    /// The control plane over `topo`; nothing is read until [`start`].
    pub fn new(topo: Arc<dyn Topo>) -> ControlPlane {
        ControlPlane {
            topo,
            version: AtomicU64::new(0),
            current: Mutex::new(None),
            changing: tokio::sync::Mutex::new(()),
            reachable: AtomicBool::new(true),
            unreachable_since: AtomicU64::new(0),
            starter: Mutex::new(None),
        }
    }

    /// The topology store.
    pub fn topo(&self) -> &Arc<dyn Topo> {
        &self.topo
    }

    /// The vschema version served now.
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Acquire)
    }

    /// The record of the version served now.
    pub fn current(&self) -> Option<Arc<VersionRecord>> {
        self.lock_current().as_ref().map(|(r, _)| r.clone())
    }

    /// The shard map of the current document (without failovers' changes).
    pub fn document_vschema(&self) -> Option<Arc<VSchema>> {
        self.lock_current().as_ref().map(|(_, v)| v.clone())
    }

    fn lock_current(
        &self,
    ) -> std::sync::MutexGuard<'_, Option<(Arc<VersionRecord>, Arc<VSchema>)>> {
        self.current.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether the topology store answered its last operation (false: the proxy serves
    /// its last snapshot until the store is back).
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    /// Since when (Unix ms) the store has been unreachable; None while reachable.
    pub fn unreachable_since_ms(&self) -> Option<u64> {
        let v = self.unreachable_since.load(Ordering::Relaxed);
        (!self.reachable() && v > 0).then_some(v)
    }

    pub(crate) fn set_reachable(&self, yes: bool) {
        let was = self.reachable.swap(yes, Ordering::Relaxed);
        if was && !yes {
            self.unreachable_since
                .store(crate::topo::now_ms(), Ordering::Relaxed);
        }
    }

    pub(crate) fn set_current(&self, record: Arc<VersionRecord>, vs: Arc<VSchema>) {
        self.version.store(record.version, Ordering::Release);
        *self.lock_current() = Some((record, vs));
    }

    /// Sets what starts an added cluster's monitor and executor.
    pub fn set_starter(&self, starter: ClusterStarter) {
        *self.starter.lock().unwrap_or_else(|e| e.into_inner()) = Some(starter);
    }

    fn start_cluster(&self, c: &crate::vschema::Cluster) {
        if let Some(s) = self
            .starter
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            s(c);
        }
    }

    /// Records a change of the pin directory as a version of its own (the document
    /// unchanged, `diff` saying which pin moved), so `SHOW VSCHEMA HISTORY` lists it.
    /// Returns the new version.
    pub async fn note_pin_change(&self, author: &str, diff: Vec<String>) -> Result<u64, String> {
        let _turn = self.changing.lock().await;
        let Some((cur, vs)) = self.lock_current().clone() else {
            return Ok(0);
        };
        let record = VersionRecord {
            version: cur.version + 1,
            author: author.to_string(),
            source: "pin".to_string(),
            time_ms: crate::topo::now_ms(),
            diff,
            document: cur.document.clone(),
        };
        match crate::timer::timeout(
            STORE_DEADLINE,
            self.topo.publish(record.clone(), cur.version),
        )
        .await
        {
            Ok(Ok(())) => {
                self.set_reachable(true);
                self.set_current(Arc::new(record), vs);
                Ok(cur.version + 1)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => {
                self.set_reachable(false);
                Err("the topology store did not answer in time".to_string())
            }
        }
    }
}

/// Checks that every configured user's keyspaces are still in `vs`.
fn check_users(shared: &Shared, vs: &VSchema) -> Result<(), ChangeError> {
    let mut problems = Vec::new();
    for u in &shared.config.users {
        for k in u.scope.keyspaces().unwrap_or(&[]) {
            if vs.keyspace(k).is_none() {
                problems.push((
                    format!("keyspaces.{k}"),
                    format!("user {} may use keyspace {k} (its `keyspaces` in the config names it): drop it from the user first", u.name),
                ));
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(ChangeError::Invalid(problems))
    }
}

/// Validates, versions and applies a change of the shard map (see the module doc).
pub async fn change(shared: &Shared, req: ChangeRequest) -> Result<Applied, ChangeError> {
    let plane = &shared.plane;
    let _turn = plane.changing.lock().await;
    let (cur, cur_vs) = match plane.lock_current().clone() {
        Some(c) => c,
        None => {
            return Err(ChangeError::Store(
                "the control plane has not started".into(),
            ))
        }
    };
    if let Some(expected) = req.expected {
        if expected != cur.version {
            return Err(ChangeError::Stale {
                expected,
                current: cur.version,
            });
        }
    }
    let mut doc = Document::parse(&req.document).map_err(invalid)?;
    let hidden = req.document.contains(crate::vschema::HIDDEN_PASSWORD);
    doc.restore_passwords(&cur_vs);
    let next = doc.validate().map_err(invalid)?;
    check_users(shared, &next)?;
    let d = diff::diff(&cur_vs, &next);
    if d.is_empty() {
        return Ok(Applied {
            version: cur.version,
            diff: Vec::new(),
        });
    }
    if !d.movements.is_empty() && !req.allow_movement {
        return Err(ChangeError::MovesData(d.movements));
    }
    let mut lines = d.lines;
    if let Some(note) = req.note {
        lines.insert(0, note);
    }
    let record = VersionRecord {
        version: cur.version + 1,
        author: req.author.clone(),
        source: req.source.to_string(),
        time_ms: crate::topo::now_ms(),
        diff: lines.clone(),
        document: if hidden { doc.to_text() } else { req.document },
    };
    let published = crate::timer::timeout(
        STORE_DEADLINE,
        plane.topo.publish(record.clone(), cur.version),
    )
    .await;
    let failure = match published {
        Ok(Ok(())) => None,
        Ok(Err(TopoError::Conflict { current })) => {
            return Err(ChangeError::Stale {
                expected: cur.version,
                current,
            })
        }
        Ok(Err(e @ TopoError::Unavailable(_))) => Some(e.to_string()),
        Ok(Err(e)) => return Err(ChangeError::Store(e.to_string())),
        Err(_) => Some("it did not answer in time".to_string()),
    };
    if let Some(why) = failure {
        // The store may have taken it all the same (its answer was lost): look.
        match crate::timer::timeout(STORE_DEADLINE, plane.topo.current()).await {
            Ok(Ok(Some(now))) if now == record => {
                tracing::warn!(
                    version = record.version,
                    "the topology store's answer was lost, but it took the change"
                );
            }
            Ok(Ok(_)) => return Err(ChangeError::Store(why)),
            _ => {
                plane.set_reachable(false);
                return Err(ChangeError::Store(format!(
                    "{why}; whether it took the change is unknown: read SHOW VSCHEMA before retrying"
                )));
            }
        }
    }
    plane.set_reachable(true);
    let next = Arc::new(next);
    apply::apply(shared, &cur_vs, (*next).clone(), &|c| {
        plane.start_cluster(c)
    });
    plane.set_current(Arc::new(record.clone()), next);
    for line in &lines {
        tracing::info!(version = record.version, author = %record.author, source = record.source, "vschema: {line}");
    }
    Ok(Applied {
        version: record.version,
        diff: lines,
    })
}

/// Serves `record`, a version another proxy (or an earlier run) stored: validated, then
/// applied without the data-movement check (whoever made it passed it).
pub(crate) fn adopt(shared: &Shared, record: VersionRecord) -> Result<(), String> {
    let plane = &shared.plane;
    let next = VSchema::from_toml_str(&record.document)
        .map_err(|e| format!("version {} is not valid here: {e}", record.version))?;
    if let Err(e) = check_users(shared, &next) {
        return Err(format!("version {}: {e}", record.version));
    }
    let old = plane
        .document_vschema()
        .unwrap_or_else(|| shared.config.vschema.clone().into());
    let d = diff::diff(&old, &next);
    let next = Arc::new(next);
    if !d.is_empty() {
        apply::apply(shared, &old, (*next).clone(), &|c| plane.start_cluster(c));
    }
    tracing::info!(version = record.version, author = %record.author, source = %record.source, changes = d.lines.len(), "vschema: serving version from the topology store");
    plane.set_current(Arc::new(record), next);
    Ok(())
}

/// Serves the store's current version if it is newer than this proxy's (after a
/// compare-and-swap lost to another proxy).
pub async fn catch_up(shared: &Shared) {
    if let Ok(Ok(Some(record))) =
        crate::timer::timeout(STORE_DEADLINE, shared.plane.topo.current()).await
    {
        let _turn = shared.plane.changing.lock().await;
        if record.version > shared.plane.version() {
            if let Err(e) = adopt(shared, record) {
                tracing::error!("{e}; the current version keeps serving");
            }
        }
    }
}

/// `ROLLBACK VSCHEMA TO VERSION n`: the document of version `n` as a new version.
pub async fn rollback(
    shared: &Shared,
    to: u64,
    author: &str,
    allow_movement: bool,
) -> Result<Applied, ChangeError> {
    let old = match crate::timer::timeout(STORE_DEADLINE, shared.plane.topo.version(to)).await {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => {
            return Err(ChangeError::Invalid(vec![(
                format!("version {to}"),
                "no such version is kept".to_string(),
            )]))
        }
        Ok(Err(e)) => return Err(ChangeError::Store(e.to_string())),
        Err(_) => return Err(ChangeError::Store("it did not answer in time".into())),
    };
    change(
        shared,
        ChangeRequest {
            author: author.to_string(),
            source: "rollback",
            document: old.document,
            expected: None,
            allow_movement,
            note: Some(format!("rolled back to the document of version {to}")),
        },
    )
    .await
}
