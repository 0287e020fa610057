//! The listener: accepts clients, caps their number, and shuts down gracefully.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};

use crate::admin::ControlPool;
use crate::backend::{BackendConn, ClusterPool, ConnKey};
use crate::config::ProxyConfig;
use crate::migrations::executor::{Executor, ExecutorStats, ThrottleSignals};
use crate::protocol::{auth, caps};
use crate::vschema::VSchema;

/// A user as kept at run time.
#[derive(Debug, Clone)]
pub struct UserEntry {
    /// SHA1(SHA1(password)); None for an empty password.
    pub password_hash: Option<[u8; 20]>,
    /// May run admin statements.
    pub admin: bool,
    /// Default `@@ddl_wait`.
    pub ddl_wait: Option<Duration>,
}

/// State shared by every session: configuration, shard map, pools, users.
pub struct Shared {
    /// The configuration served.
    pub config: Arc<ProxyConfig>,
    vschema: RwLock<Arc<VSchema>>,
    /// One pool per cluster.
    pub pools: HashMap<String, Arc<ClusterPool>>,
    /// Connections for shardgate's own work on the clusters (the migration queue),
    /// bounded by `admin_cluster_timeout` per cluster.
    pub control: Arc<ControlPool>,
    /// Users by name.
    pub users: HashMap<String, UserEntry>,
    /// The version string shown to clients (the backends' own, so drivers see the
    /// server they really talk to).
    pub server_version: String,
    /// Client connections open now.
    pub clients: std::sync::atomic::AtomicI64,
    /// Counters of this proxy's migration executors, by cluster.
    pub executor_stats: std::sync::Mutex<Vec<(String, Arc<ExecutorStats>)>>,
    /// Default collation shown in the greeting.
    pub default_collation: u8,
    /// Capabilities offered to clients: shardgate's, minus `LONG_PASSWORD` when the
    /// backends are MariaDB servers with extended capabilities.
    pub offered_capabilities: u32,
    /// MariaDB extended capabilities offered to clients.
    pub offered_ext_capabilities: u32,
    next_connection_id: AtomicU32,
}

impl Shared {
    /// Builds the shared state; asks one cluster for its version string.
    pub async fn new(config: Arc<ProxyConfig>) -> Arc<Shared> {
        let vs = config.vschema.clone();
        let pools = vs
            .clusters
            .values()
            .map(|c| {
                (
                    c.name.clone(),
                    ClusterPool::new(c.clone(), config.pool.clone()),
                )
            })
            .collect();
        let users = config
            .users
            .iter()
            .map(|u| {
                let hash =
                    (!u.password.is_empty()).then(|| auth::double_sha1(u.password.as_bytes()));
                (
                    u.name.clone(),
                    UserEntry {
                        password_hash: hash,
                        admin: u.admin,
                        ddl_wait: u.ddl_wait,
                    },
                )
            })
            .collect();
        let control = Arc::new(ControlPool::new(
            vs.clusters.values(),
            config.admin_cluster_timeout,
        ));
        let probe = probe_backends(&vs).await;
        Arc::new(Shared {
            config,
            vschema: RwLock::new(Arc::new(vs)),
            pools,
            control,
            users,
            server_version: probe.server_version,
            default_collation: probe.collation,
            offered_capabilities: probe.offered_capabilities,
            offered_ext_capabilities: probe.offered_ext_capabilities,
            next_connection_id: AtomicU32::new(1),
            executor_stats: std::sync::Mutex::new(Vec::new()),
            clients: std::sync::atomic::AtomicI64::new(0),
        })
    }

    /// The vschema in force now (a snapshot: a live edit swaps it, sessions keep theirs
    /// until their next statement).
    pub fn vschema(&self) -> Arc<VSchema> {
        self.vschema
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// A fresh connection id for a client.
    pub fn next_connection_id(&self) -> u32 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }
}

/// The proxy's live-traffic signals for the migration throttle: per-cluster p99
/// latency and failure rate from the data path.
struct PoolSignals(Arc<Shared>);

impl ThrottleSignals for PoolSignals {
    fn p99_latency(&self, cluster: &str) -> Option<Duration> {
        self.0.pools.get(cluster)?.stats.window().p99
    }

    fn error_rate(&self, cluster: &str) -> Option<f64> {
        self.0.pools.get(cluster)?.stats.error_rate()
    }
}

/// What the backends' greeting tells shardgate to show its own clients.
struct Probe {
    server_version: String,
    collation: u8,
    offered_capabilities: u32,
    offered_ext_capabilities: u32,
}

/// Asks the clusters, in order, for their greeting; the first answer gives the version
/// string, collation and MariaDB extended capabilities that clients are shown, so a
/// driver sees the server it really talks to.
async fn probe_backends(vs: &VSchema) -> Probe {
    let key = ConnKey {
        caps: caps::DEPRECATE_EOF,
        collation: 45,
        ext: 0,
    };
    for c in vs.clusters.values() {
        if let Ok((_conn, g)) = BackendConn::connect(c, key, None, Duration::from_secs(2)).await {
            let mariadb_ext = g.capabilities & caps::LONG_PASSWORD == 0;
            let ext = g.ext_capabilities & caps::MARIADB_RELAYABLE;
            return Probe {
                server_version: g.server_version,
                collation: g.collation,
                offered_capabilities: if mariadb_ext {
                    caps::SERVER_OFFERED & !caps::LONG_PASSWORD
                } else {
                    caps::SERVER_OFFERED
                },
                offered_ext_capabilities: if mariadb_ext { ext } else { 0 },
            };
        }
    }
    tracing::warn!("no cluster answered at startup; showing clients a generic MariaDB greeting");
    Probe {
        server_version: "5.5.5-10.11.0-MariaDB-shardgate".to_string(),
        collation: 45,
        offered_capabilities: caps::SERVER_OFFERED,
        offered_ext_capabilities: 0,
    }
}

/// Serves MySQL clients on `listener` until `shutdown` completes, then stops accepting,
/// lets open sessions finish their current statement (up to 10 s), and returns.
pub async fn serve(
    config: Arc<ProxyConfig>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let shared = Shared::new(config.clone()).await;
    let slots = Arc::new(Semaphore::new(config.max_client_connections));
    let (stop_tx, stop_rx) = watch::channel(false);
    let executors: Vec<Executor> = match &config.migrations {
        None => Vec::new(),
        Some(exec) => {
            let signals: Arc<dyn ThrottleSignals> = Arc::new(PoolSignals(shared.clone()));
            config
                .vschema
                .clusters
                .values()
                .map(|c| Executor::spawn(c.clone(), exec.clone(), signals.clone(), stop_rx.clone()))
                .collect()
        }
    };
    if let Some(addr) = config.metrics_listen {
        let l = TcpListener::bind(addr).await?;
        tracing::info!(addr = %l.local_addr()?, "metrics on /metrics");
        tokio::spawn(crate::metrics_http::serve(
            shared.clone(),
            l,
            stop_rx.clone(),
        ));
    }
    for e in &executors {
        shared
            .executor_stats
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((e.cluster().to_string(), e.stats()));
    }
    tokio::pin!(shutdown);
    tracing::info!(addr = %listener.local_addr()?, "shardgate listening");
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                let permit = slots.clone().try_acquire_owned().ok();
                let stop = stop_rx.clone();
                tokio::spawn(async move {
                    crate::session::run(shared, stream, peer, permit, stop).await;
                });
            }
        }
    }
    let _ = stop_tx.send(true);
    for e in executors {
        // Running copies stop at a chunk boundary and keep their checkpoint.
        if tokio::time::timeout(Duration::from_secs(15), e.join())
            .await
            .is_err()
        {
            tracing::warn!("a migration executor did not stop in time");
        }
    }
    // Wait for sessions to finish what they are doing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while slots.available_permits() < config.max_client_connections
        && tokio::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
