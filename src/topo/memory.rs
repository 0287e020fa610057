//! `TopoConfig::Memory`: the topology store in this process only (a shard map given
//! in memory). Versions and pins are kept until the proxy stops.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use super::{BoxFut, Event, KeyspacePins, Lease, PinChange, Topo, TopoError, VersionRecord};

/// Versions kept.
const KEPT: usize = 1000;

#[derive(Default)]
struct State {
    versions: Vec<VersionRecord>,
    pins: BTreeMap<String, BTreeMap<u64, String>>,
    traffic: BTreeMap<String, String>,
}

/// The store.
#[derive(Default)]
pub struct MemoryTopo {
    state: Mutex<State>,
}

impl MemoryTopo {
    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Topo for MemoryTopo {
    fn kind(&self) -> &'static str {
        "memory"
    }

    fn current(&self) -> BoxFut<'_, Result<Option<VersionRecord>, TopoError>> {
        Box::pin(async move { Ok(self.state().versions.last().cloned()) })
    }

    fn publish(&self, record: VersionRecord, expected: u64) -> BoxFut<'_, Result<(), TopoError>> {
        Box::pin(async move {
            let mut s = self.state();
            let current = s.versions.last().map_or(0, |r| r.version);
            if current != expected {
                return Err(TopoError::Conflict { current });
            }
            if s.versions.len() == KEPT {
                s.versions.remove(0);
            }
            s.versions.push(record);
            Ok(())
        })
    }

    fn history(&self, limit: usize) -> BoxFut<'_, Result<Vec<VersionRecord>, TopoError>> {
        Box::pin(async move {
            Ok(self
                .state()
                .versions
                .iter()
                .rev()
                .take(limit)
                .cloned()
                .collect())
        })
    }

    fn version(&self, version: u64) -> BoxFut<'_, Result<Option<VersionRecord>, TopoError>> {
        Box::pin(async move {
            Ok(self
                .state()
                .versions
                .iter()
                .find(|r| r.version == version)
                .cloned())
        })
    }

    fn load_pins(&self) -> BoxFut<'_, Result<Vec<KeyspacePins>, TopoError>> {
        Box::pin(async move {
            let s = self.state();
            Ok(s.pins
                .iter()
                .map(|(ks, pins)| {
                    let mut out = KeyspacePins {
                        keyspace: ks.clone(),
                        ..KeyspacePins::default()
                    };
                    for (ws, shard) in pins {
                        let index = match out.shards.iter().position(|s| s == shard) {
                            Some(i) => i,
                            None => {
                                out.shards.push(shard.clone());
                                out.shards.len() - 1
                            }
                        };
                        out.pins.push((*ws, index as u32));
                    }
                    out
                })
                .collect())
        })
    }

    fn set_pin(&self, change: PinChange) -> BoxFut<'_, Result<(), TopoError>> {
        Box::pin(async move {
            let mut s = self.state();
            let ks = s.pins.entry(change.keyspace).or_default();
            match change.shard {
                Some(shard) => {
                    ks.insert(change.workspace, shard);
                }
                None => {
                    ks.remove(&change.workspace);
                }
            }
            Ok(())
        })
    }

    fn save_traffic(&self, cluster: String, state: String) -> BoxFut<'_, Result<(), TopoError>> {
        Box::pin(async move {
            self.state().traffic.insert(cluster, state);
            Ok(())
        })
    }

    fn load_traffic(&self) -> BoxFut<'_, Result<Vec<(String, String)>, TopoError>> {
        Box::pin(async move {
            Ok(self
                .state()
                .traffic
                .iter()
                .map(|(c, s)| (c.clone(), s.clone()))
                .collect())
        })
    }

    fn lease(
        &self,
        _name: String,
        _ttl: Duration,
    ) -> BoxFut<'_, Result<Option<Box<dyn Lease>>, TopoError>> {
        Box::pin(async move { Ok(Some(Box::new(super::LocalLease) as Box<dyn Lease>)) })
    }

    fn watch(&self) -> tokio::sync::mpsc::Receiver<Event> {
        // Only this process writes: nothing to report.
        tokio::sync::mpsc::channel(1).1
    }

    fn reachable(&self) -> bool {
        true
    }
}
