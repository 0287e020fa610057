//! Traffic state shared by a fleet of proxies (`topo = "etcd"`): each cluster's intent
//! (DRAIN/UNDRAIN) and members after failovers are saved in the topology store as the
//! text of the state file's entry for it ([`super::entry_text`]); the other proxies
//! apply what the store's watch reports ([`apply_saved_traffic`]) and load every
//! cluster's state at start ([`load_saved`]). A cluster's failover is run by one proxy
//! at a time: the one that holds the store's lease `failover/<cluster>`
//! ([`take_failover_lease`]).
//!
//! With `topo = "file"` or `memory` nothing here writes or reads anything: the state
//! file alone keeps intents and members, as before, and leases are always granted.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use super::{Entry, Intent, SavedCluster};
use crate::shared::Shared;
use crate::topo::Lease;
use crate::vschema::Cluster;

/// How long a failover lease outlives its holder (renewed every third of it while the
/// holder runs).
pub const FAILOVER_LEASE_TTL: Duration = Duration::from_secs(10);

/// State texts this proxy saved, remembered per cluster so that the watch's echo of
/// them (possibly older than what this proxy has moved on to) is not applied back.
const REMEMBERED: usize = 16;

/// Whether the store is shared by a fleet (so traffic state goes there too).
fn fleet(shared: &Shared) -> bool {
    shared.plane.topo().kind() == "etcd"
}

/// `cluster`'s state as the store keeps it; None for a cluster the vschema lacks.
pub fn cluster_state(shared: &Shared, cluster: &str) -> Option<String> {
    let rt = shared.runtime();
    let pool = rt.pool(cluster)?;
    let fenced = shared
        .topology
        .fenced()
        .into_iter()
        .filter(|(c, _)| c == cluster)
        .map(|(_, a)| a)
        .collect();
    Some(super::entry_text(&SavedCluster {
        name: cluster,
        traffic: &pool.traffic,
        cluster: pool.cluster(),
        fenced,
    }))
}

/// Saves `cluster`'s state in the fleet's store (`topo = "etcd"`; nothing otherwise).
pub async fn save_cluster(shared: &Shared, cluster: &str) -> Result<(), String> {
    if !fleet(shared) {
        return Ok(());
    }
    let Some(state) = cluster_state(shared, cluster) else {
        return Ok(());
    };
    shared.topology.remember_saved(cluster, &state, REMEMBERED);
    shared
        .plane
        .topo()
        .save_traffic(cluster.to_string(), state)
        .await
        .map_err(|e| e.to_string())
}

/// Applies a cluster's state that a proxy of the fleet saved (reported by the store's
/// watch, or loaded at start): its intent, and its primary, standbys and fenced former
/// primaries after a failover. What this proxy saved itself is skipped; so is what
/// does not parse or names a cluster the vschema lacks (with a warning).
pub fn apply_saved_traffic(shared: &Arc<Shared>, cluster: &str, state: &str) {
    if shared.topology.saved_here(cluster, state) {
        return;
    }
    let entry: Entry = match toml::from_str(state) {
        Ok(e) => e,
        Err(e) => {
            tracing::warn!(%cluster, error = %e, "saved traffic state does not parse; ignored");
            return;
        }
    };
    let Some(intent) = Intent::parse(&entry.intent) else {
        tracing::warn!(%cluster, intent = %entry.intent, "saved traffic state: unknown intent; ignored");
        return;
    };
    let rt = shared.runtime();
    let (Some(pool), Some(c)) = (
        rt.pool(cluster).cloned(),
        rt.vschema.cluster(cluster).cloned(),
    ) else {
        tracing::warn!(%cluster, "saved traffic state names a cluster the vschema does not have");
        return;
    };
    drop(rt);
    let detail = pool.traffic.detail();
    if pool.traffic.intent() != intent || detail.reason != entry.reason {
        pool.traffic.set_at(intent, &entry.reason, entry.since);
        tracing::warn!(%cluster, intent = intent.name(), reason = %entry.reason, "cluster intent set by another proxy of the fleet");
    }
    if let Some(primary) = &entry.primary {
        if c.primary != *primary || c.standbys != entry.standbys {
            let next = Cluster {
                primary: primary.clone(),
                standbys: entry.standbys.clone(),
                ..c.clone()
            };
            pool.retarget(next.clone());
            shared.replace_cluster(next);
            pool.stats.clear_window();
            pool.health.reset_after_failover(cluster, primary);
            tracing::warn!(%cluster, %primary, "primary changed by another proxy's failover; routing switched");
        }
    }
    let fenced = shared.topology.fenced();
    for addr in &entry.fenced {
        if !fenced.iter().any(|(fc, fa)| fc == cluster && fa == addr) {
            shared.fence(cluster, addr);
        }
    }
}

/// At start, with `topo = "etcd"`: applies every cluster's state kept in the store
/// (over the state file's). Returns how many clusters it had.
pub async fn load_saved(shared: &Arc<Shared>) -> Result<usize, String> {
    if !fleet(shared) {
        return Ok(0);
    }
    let all = shared
        .plane
        .topo()
        .load_traffic()
        .await
        .map_err(|e| e.to_string())?;
    for (cluster, state) in &all {
        apply_saved_traffic(shared, cluster, state);
    }
    Ok(all.len())
}

/// Takes the lease `failover/<cluster>` for the failover about to run; Err says why
/// not (naming the proxy that holds it). Always granted with `topo = "file"`/`memory`.
/// With etcd unreachable no lease can be taken, so no failover runs: two proxies that
/// cannot see each other must not both promote a standby.
pub async fn take_failover_lease(shared: &Shared, cluster: &str) -> Result<Box<dyn Lease>, String> {
    let topo = shared.plane.topo();
    let name = format!("failover/{cluster}");
    match topo.lease(name.clone(), FAILOVER_LEASE_TTL).await {
        Ok(Some(lease)) => Ok(lease),
        Ok(None) => {
            let holder = match topo.lease_holder(name).await {
                Ok(Some(h)) => format!("another proxy ({h})"),
                _ => "another proxy".to_string(),
            };
            Err(format!(
                "{holder} holds the failover lease of cluster '{cluster}' and runs its failover"
            ))
        }
        Err(e) => Err(format!(
            "the failover lease of cluster '{cluster}' could not be taken: {e}"
        )),
    }
}

/// The memory of saved texts, per cluster (kept in [`super::Topology`]).
#[derive(Debug, Default)]
pub struct SavedTexts {
    by_cluster: std::collections::HashMap<String, VecDeque<String>>,
}

impl SavedTexts {
    pub(super) fn remember(&mut self, cluster: &str, state: &str, keep: usize) {
        let q = self.by_cluster.entry(cluster.to_string()).or_default();
        q.push_back(state.to_string());
        while q.len() > keep {
            q.pop_front();
        }
    }

    pub(super) fn contains(&self, cluster: &str, state: &str) -> bool {
        self.by_cluster
            .get(cluster)
            .is_some_and(|q| q.iter().any(|s| s == state))
    }
}
