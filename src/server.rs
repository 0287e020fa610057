//! The listener: accepts clients, admits them through the [`crate::frontdoor`], and
//! shuts down gracefully.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::config::ProxyConfig;
use crate::migrations::executor::{Executor, ThrottleSignals};
use crate::shared::Shared;

/// The proxy's live-traffic signals for the migration throttle: per-cluster p99
/// latency and failure rate from the data path.
struct PoolSignals(Arc<Shared>);

impl ThrottleSignals for PoolSignals {
    fn p99_latency(&self, cluster: &str) -> Option<Duration> {
        self.0.runtime().pool(cluster)?.stats.window().p99
    }

    fn error_rate(&self, cluster: &str) -> Option<f64> {
        self.0.runtime().pool(cluster)?.stats.error_rate()
    }

    fn replica_lag(&self, cluster: &str) -> Option<Duration> {
        let rt = self.0.runtime();
        rt.pool(cluster)?
            .health
            .standbys()
            .iter()
            .filter_map(|s| s.lag)
            .max()
    }

    fn current(&self, cluster: &crate::vschema::Cluster) -> crate::vschema::Cluster {
        match self.0.runtime().pool(&cluster.name) {
            Some(p) => (*p.cluster()).clone(),
            None => cluster.clone(),
        }
    }

    fn health_hold(&self, cluster: &str) -> Option<String> {
        let rt = self.0.runtime();
        let pool = rt.pool(cluster)?;
        let intent = pool.traffic.intent();
        if intent != crate::traffic::Intent::Serving {
            return Some(format!("cluster {}", intent.name()));
        }
        let h = pool.health.snapshot();
        (h.state != crate::health::Health::Healthy)
            .then(|| format!("cluster {}: {}", h.state.name(), h.reason))
    }
}

/// Serves MySQL clients on `listener` until `shutdown` completes, then stops accepting,
/// lets open sessions finish their current statement (up to 10 s), and returns.
pub async fn serve(
    config: Arc<ProxyConfig>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    serve_on(config, listener, shutdown, None).await
}

/// [`serve`], with sessions run on `workers` (one single-threaded runtime per core)
/// instead of the runtime this runs on.
pub async fn serve_on(
    config: Arc<ProxyConfig>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()>,
    workers: Option<&crate::workers::Workers>,
) -> std::io::Result<()> {
    // The windows' seconds count from here.
    crate::clock::epoch();
    let shared = Shared::new(config.clone()).await;
    if let Some(path) = &config.traffic_state_file {
        let rt = shared.runtime();
        let members = crate::traffic::load_state(path, |c| rt.pool(c).map(|p| &p.traffic))
            .map_err(std::io::Error::other)?;
        // Failovers of earlier runs: their primaries, not the vschema file's.
        for m in members {
            let (Some(pool), Some(c)) = (rt.pool(&m.cluster), rt.vschema.cluster(&m.cluster))
            else {
                continue;
            };
            if c.primary != m.primary || c.standbys != m.standbys {
                tracing::warn!(cluster = %m.cluster, primary = %m.primary, "primary kept from the state file (an earlier failover)");
                let next = crate::vschema::Cluster {
                    primary: m.primary.clone(),
                    standbys: m.standbys.clone(),
                    ..c.clone()
                };
                pool.retarget(next.clone());
                shared.replace_cluster(next);
            }
            for addr in &m.fenced {
                shared.fence(&m.cluster, addr);
            }
        }
    }
    // topo = "etcd": leases name this proxy; the fleet's traffic state (intents,
    // failovers) applies over the state file's (bounded: the store's call deadline).
    let me = format!("{} pid {}", listener.local_addr()?, std::process::id());
    shared.plane.topo().set_identity(me);
    let (stop_tx, stop_rx) = watch::channel(false);
    crate::health::spawn_monitors(&shared, config.health.clone(), stop_rx.clone());
    tokio::spawn(crate::session::watch_idle(shared.clone(), stop_rx.clone()));
    let reaped = shared.clone();
    tokio::spawn(crate::backend::pool::reap_idle(
        config.pool.idle_timeout,
        move || reaped.runtime().pools.values().cloned().collect(),
        stop_rx.clone(),
    ));
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
    {
        // A cluster added to the shard map while running gets a monitor and an executor.
        let health = Arc::new(config.health.clone());
        let stop = stop_rx.clone();
        let weak = Arc::downgrade(&shared);
        let exec = config.migrations.clone();
        let signals: Arc<dyn ThrottleSignals> = Arc::new(PoolSignals(shared.clone()));
        shared
            .plane
            .set_starter(Box::new(move |c: &crate::vschema::Cluster| {
                let Some(shared) = weak.upgrade() else {
                    return;
                };
                crate::health::spawn_monitor(&shared, &c.name, &health, &stop);
                if let Some(exec) = &exec {
                    let e = Executor::spawn(c.clone(), exec.clone(), signals.clone(), stop.clone());
                    shared
                        .executor_stats
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push((e.cluster().to_string(), e.stats()));
                    // Stops with the proxy (its stop signal); not joined at shutdown.
                    drop(e);
                }
            }));
    }
    // The store's shard map and pins route workspaces: serving without them could send
    // a pinned or moved workspace to the wrong shard, so a proxy that cannot read them
    // does not start.
    crate::control::start(&shared, stop_rx.clone())
        .await
        .map_err(std::io::Error::other)?;
    // After the store's shard map: clusters added over SQL or HTTP have saved state too.
    if let Err(e) = crate::traffic::saved::load_saved(&shared).await {
        tracing::warn!(error = %e, "the fleet's traffic state was not loaded; serving the state file's");
    }
    if let Some(addr) = config.metrics_listen {
        let l = TcpListener::bind(addr).await?;
        tracing::info!(addr = %l.local_addr()?, "metrics on /metrics, the vschema API on /vschema");
        tokio::spawn(crate::control::http::serve(
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
                        crate::timer::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let _ = stream.set_nodelay(true);
                let shared = shared.clone();
                // A pending-login slot, not a client slot: only a logged-in session
                // takes one of those.
                let admission = shared.door.admit(peer.ip());
                let stop = stop_rx.clone();
                match workers {
                    Some(w) => w.hand_over(stream, move |stream| {
                        crate::session::run(shared, stream, peer, admission, stop)
                    }),
                    None => {
                        tokio::spawn(async move {
                            crate::session::run(shared, stream, peer, admission, stop).await;
                        });
                    }
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    shared.stop_sessions();
    for e in executors {
        // Running copies stop at a chunk boundary and keep their checkpoint.
        if crate::timer::timeout(Duration::from_secs(15), e.join())
            .await
            .is_err()
        {
            tracing::warn!("a migration executor did not stop in time");
        }
    }
    // Wait for sessions to finish what they are doing.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while shared.door.sessions() > 0 && tokio::time::Instant::now() < deadline {
        crate::timer::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}
