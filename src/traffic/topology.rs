//! Who is primary now: failovers under way and done, fenced former primaries, and the
//! switch of the runtime snapshot to a new primary.

use std::collections::{BTreeMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, Weak};

use super::failover::Record;
use crate::shared::{Runtime, Shared};
use crate::vschema::{Cluster, VSchema};

/// (cluster, `planned`/`unplanned`, `done`/`stopped`).
pub type FailoverKey = (String, &'static str, &'static str);

/// Failovers kept for `SHOW FAILOVERS`.
const KEPT: usize = 100;

/// The failover state of the proxy.
#[derive(Debug, Default)]
pub struct Topology {
    under_way: Mutex<HashSet<String>>,
    done: Mutex<VecDeque<Record>>,
    /// (cluster, address) of former primaries never to be routed to again.
    fenced: Mutex<Vec<(String, String)>>,
    /// Failovers since start by (cluster, `planned`/`unplanned`, `done`/`stopped`):
    /// how many, and the statements they buffered.
    counts: Mutex<BTreeMap<FailoverKey, (u64, u64)>>,
    /// Traffic states this proxy saved in the fleet's store (`topo = "etcd"`).
    saved: Mutex<super::saved::SavedTexts>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// A cluster's failover turn: released on drop.
pub struct Turn<'a> {
    topology: &'a Topology,
    cluster: String,
}

impl Drop for Turn<'_> {
    fn drop(&mut self) {
        lock(&self.topology.under_way).remove(&self.cluster);
    }
}

impl Topology {
    /// Notes that this proxy saved `state` for `cluster` (the last `keep` are kept).
    pub(crate) fn remember_saved(&self, cluster: &str, state: &str, keep: usize) {
        lock(&self.saved).remember(cluster, state, keep);
    }

    /// Whether this proxy saved `state` for `cluster` (recently).
    pub(crate) fn saved_here(&self, cluster: &str, state: &str) -> bool {
        lock(&self.saved).contains(cluster, state)
    }

    /// Former primaries fenced, as (cluster, address).
    pub fn fenced(&self) -> Vec<(String, String)> {
        lock(&self.fenced).clone()
    }

    /// Failovers since start: ((cluster, kind, outcome), (count, statements buffered)).
    pub fn counts(&self) -> Vec<(FailoverKey, (u64, u64))> {
        lock(&self.counts)
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    /// The failovers kept, oldest first.
    pub fn failovers(&self) -> Vec<Record> {
        lock(&self.done).iter().cloned().collect()
    }
}

impl Shared {
    /// The turn to fail `cluster` over, unless a failover of it is under way.
    pub fn failover_turn(&self, cluster: &str) -> Option<Turn<'_>> {
        lock(&self.topology.under_way)
            .insert(cluster.to_string())
            .then(|| Turn {
                topology: &self.topology,
                cluster: cluster.to_string(),
            })
    }

    /// Keeps a failover's record (the last `KEPT`).
    pub fn keep_failover(&self, r: Record) {
        let kind = match r.kind {
            super::failover::Kind::Planned => "planned",
            super::failover::Kind::Unplanned => "unplanned",
        };
        let outcome = if r.outcome.is_ok() { "done" } else { "stopped" };
        {
            let mut counts = lock(&self.topology.counts);
            let c = counts
                .entry((r.cluster.clone(), kind, outcome))
                .or_default();
            c.0 += 1;
            c.1 += r.buffered as u64;
        }
        let mut done = lock(&self.topology.done);
        if done.len() == KEPT {
            done.pop_front();
        }
        done.push_back(r);
    }

    /// Puts `cluster`'s new primary and standbys into the runtime snapshot: new
    /// statements see them; statements under way finish on the snapshot they took.
    /// The rest of the cluster's definition is the snapshot's at the time of the swap
    /// (a vschema change made during the failover is kept); a cluster the vschema
    /// dropped meanwhile stays dropped.
    pub fn replace_cluster(&self, cluster: Cluster) {
        self.update_runtime(|now| {
            let mut vs: VSchema = (*now.vschema).clone();
            let mut pools = now.pools.clone();
            if let Some(c) = vs.clusters.get_mut(&cluster.name) {
                c.primary = cluster.primary.clone();
                c.standbys = cluster.standbys.clone();
                crate::shared::add_replica_pools(&mut pools, c, &self.config.pool);
            }
            Runtime {
                vschema: Arc::new(vs),
                pools,
                generation: now.generation + 1,
            }
        });
    }

    /// Fences `addr`, a former primary of `cluster`: it stays out of the topology, and
    /// a background task makes it `read_only` whenever it answers.
    pub fn fence(self: &Arc<Self>, cluster: &str, addr: &str) {
        lock(&self.topology.fenced).push((cluster.to_string(), addr.to_string()));
        let Some(c) = self.vschema().cluster(cluster).cloned() else {
            return;
        };
        let member = crate::health::members::member(&c, addr);
        tokio::spawn(keep_fenced(member, Arc::downgrade(self)));
    }

    /// Writes intents and topology to the state file, if there is one.
    pub fn save_traffic_state(&self) -> Result<(), String> {
        let Some(path) = &self.config.traffic_state_file else {
            return Ok(());
        };
        let rt = self.runtime();
        let fenced = self.topology.fenced();
        super::save_state(
            path,
            rt.cluster_pools().map(|(name, p)| super::SavedCluster {
                name: name.as_str(),
                traffic: &p.traffic,
                cluster: p.cluster(),
                fenced: fenced
                    .iter()
                    .filter(|(c, _)| c == name)
                    .map(|(_, a)| a.clone())
                    .collect(),
            }),
        )
    }
}

/// Keeps a fenced former primary `read_only` whenever it answers, while the proxy runs.
async fn keep_fenced(member: Cluster, shared: Weak<Shared>) {
    let mut tick = crate::timer::interval(std::time::Duration::from_secs(1));
    let mut told = false;
    loop {
        tick.tick().await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let still = shared
            .topology
            .fenced()
            .iter()
            .any(|(c, a)| *c == member.name && *a == member.primary);
        if !still {
            return;
        }
        drop(shared);
        let timeout = std::time::Duration::from_secs(1);
        let Ok(Ok(mut c)) = crate::timer::timeout(
            timeout,
            crate::backend::SqlConn::connect(&member, None, timeout),
        )
        .await
        else {
            continue;
        };
        match c.execute("SET GLOBAL read_only = 1").await {
            Ok(_) if !told => {
                told = true;
                tracing::warn!(member = %member.primary, cluster = %member.name, "fenced former primary answers again: made read_only; shardgate never routes to it");
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(member = %member.primary, error = %e, "fenced former primary answers but could not be made read_only")
            }
        }
    }
}
