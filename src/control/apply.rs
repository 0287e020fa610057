//! Building the runtime snapshot of a new shard map and swapping it in.

use std::sync::Arc;

use crate::backend::ClusterPool;
use crate::shared::{Runtime, Shared};
use crate::vschema::VSchema;

/// Makes `next` (a validated document's shard map) the snapshot new statements take.
///
/// - A cluster the document did not change keeps its pool and the primary the runtime
///   has now (a failover may have moved it since the document was written).
/// - A cluster whose definition changed in the document keeps its pool, retargeted:
///   connections to the old address or with the old credentials are not reused.
/// - An added cluster gets a new pool (and `on_added` starts its health monitor and
///   migration executor); a removed one is left out, so its pool closes once the last
///   statement or session holding one of its connections lets go.
///
/// Statements in flight keep the snapshot they took.
pub fn apply(
    shared: &Shared,
    old_doc: &VSchema,
    mut next: VSchema,
    on_added: &dyn Fn(&crate::vschema::Cluster),
) {
    let tls = shared
        .config
        .vschema
        .clusters
        .values()
        .next()
        .and_then(|c| c.tls.clone());
    next = next.with_backend_tls(tls);
    let mut added = Vec::new();
    shared.update_runtime(|now| {
        // The pin directory is not in the document: the new map takes the live one.
        super::pins::carry_directory(&now.vschema, &mut next);
        let mut pools = crate::shared::PoolMap::default();
        for (name, c) in next.clusters.iter_mut() {
            match now.pools.get(name) {
                Some(pool)
                    if old_doc
                        .clusters
                        .get(name)
                        .is_some_and(|o| same_cluster(o, c)) =>
                {
                    // Unchanged in the document: what the runtime has now (failovers).
                    *c = (*pool.cluster()).clone();
                    pools.insert(name.clone(), pool.clone());
                }
                Some(pool) => {
                    // The document's addresses win only where it changed them: a
                    // failover since it was written moved the primary it still names.
                    let before = old_doc.clusters.get(name);
                    if before.is_some_and(|o| o.primary == c.primary && o.standbys == c.standbys) {
                        let live = pool.cluster();
                        c.primary = live.primary.clone();
                        c.standbys = live.standbys.clone();
                    }
                    tracing::info!(cluster = %name, "cluster changed in the vschema: its pool reconnects");
                    pool.retarget(c.clone());
                    pools.insert(name.clone(), pool.clone());
                }
                None => {
                    pools.insert(
                        name.clone(),
                        ClusterPool::new(c.clone(), shared.config.pool.clone()),
                    );
                    added.push(c.clone());
                }
            }
        }
        for c in next.clusters.values() {
            // Standbys' pools (replica reads): kept when still standbys.
            for addr in &c.standbys {
                let key = crate::shared::replica_pool_name(&c.name, addr);
                if let Some(p) = now.pools.get(&key) {
                    pools.insert(key, p.clone());
                }
            }
            crate::shared::add_replica_pools(&mut pools, c, &shared.config.pool);
        }
        for name in now.vschema.clusters.keys() {
            if !next.clusters.contains_key(name) {
                tracing::info!(cluster = %name, "cluster left the vschema: its pool closes when its last connection is returned");
            }
        }
        Runtime {
            vschema: Arc::new(next),
            pools,
            generation: now.generation + 1,
        }
    });
    for c in &added {
        on_added(c);
    }
}

/// Whether two definitions of a cluster name the same servers with the same
/// credentials (TLS comes from the config, not the document).
fn same_cluster(a: &crate::vschema::Cluster, b: &crate::vschema::Cluster) -> bool {
    a.primary == b.primary
        && a.standbys == b.standbys
        && a.user == b.user
        && a.password == b.password
}
