//! `SHOW CLUSTERS`, `DRAIN CLUSTER` and `UNDRAIN CLUSTER` (`docs/traffic.md`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::error::ProxyError;
use crate::shared::{Runtime, Shared};
use crate::traffic::Intent;

/// One result row.
pub type Row = Vec<Option<Vec<u8>>>;

/// The columns of `SHOW CLUSTERS`.
pub const CLUSTER_COLUMNS: [&str; 18] = [
    "Cluster",
    "Primary",
    "Health",
    "Intent",
    "Reason",
    "Since_s",
    "P50_ms",
    "P99_ms",
    "Error_rate",
    "Statements_10s",
    "In_flight",
    "Pool_open",
    "Pool_idle",
    "Buffered",
    "Probe_ms",
    "Threads_running",
    "Standbys",
    "Topology",
];

/// One row per cluster of the vschema in force: health, intent and why, the last ten
/// seconds of traffic, the pool, the buffer, the last probe.
pub fn show_clusters(shared: &Shared) -> Vec<Row> {
    let rt = shared.runtime();
    let now = Instant::now();
    let topology = describe_topology(shared);
    let mut rows = Vec::new();
    for c in rt.vschema.clusters.values() {
        let Some(pool) = rt.pool(&c.name) else {
            continue;
        };
        let h = pool.health.snapshot();
        let intent = pool.traffic.intent();
        let detail = pool.traffic.detail();
        let w = pool.stats.window();
        let (open, idle) = pool.counts();
        // Intent explains more than health when an operator acted.
        let (reason, since) = if intent != Intent::Serving {
            let ago = unix_now().saturating_sub(detail.since);
            (detail.reason, ago)
        } else {
            (
                h.reason.clone(),
                now.saturating_duration_since(h.since).as_secs(),
            )
        };
        let ms = |d: Option<Duration>| d.map(|d| format!("{:.1}", d.as_secs_f64() * 1000.0));
        let text = |s: String| Some(s.into_bytes());
        rows.push(vec![
            text(c.name.clone()),
            text(c.primary.clone()),
            text(h.state.name().to_string()),
            text(intent.name().to_string()),
            text(reason),
            text(since.to_string()),
            ms(pool.stats.percentile(0.50)).map(String::into_bytes),
            ms(w.p99).map(String::into_bytes),
            text(match w.count {
                0 => "0".to_string(),
                n => format!("{:.3}", w.errors as f64 / n as f64),
            }),
            text(w.count.to_string()),
            text(pool.leased().to_string()),
            text(open.to_string()),
            text(idle.to_string()),
            text(
                pool.traffic
                    .buffered
                    .load(std::sync::atomic::Ordering::Relaxed)
                    .to_string(),
            ),
            ms(h.last_probe.as_ref().map(|p| p.took)).map(String::into_bytes),
            h.last_probe
                .and_then(|p| p.threads_running)
                .map(|n| n.to_string().into_bytes()),
            text(describe_standbys(
                &pool.health.standbys(),
                shared.config.failover.max_lag,
            )),
            text(topology.clone()),
        ]);
    }
    rows
}

/// The topology store and the vschema version served: `etcd ok, vschema version 7`,
/// or, while etcd does not answer, `etcd unreachable since 12 s, serving vschema
/// version 7` (the last snapshot, until it is back).
fn describe_topology(shared: &Shared) -> String {
    let topo = shared.plane.topo();
    let version = shared.plane.version();
    let reachable = shared.plane.reachable() && topo.reachable();
    match (topo.kind(), reachable) {
        (kind, true) if kind != "etcd" => format!("{kind}, vschema version {version}"),
        (kind, true) => format!("{kind} ok, vschema version {version}"),
        (kind, false) => {
            let since = shared
                .plane
                .unreachable_since_ms()
                .map(|t| Duration::from_millis(crate::topo::now_ms().saturating_sub(t)))
                .or_else(|| topo.unreachable_for())
                .map(|d| format!(" since {} s", d.as_secs()))
                .unwrap_or_default();
            format!("{kind} unreachable{since}, serving vschema version {version}")
        }
    }
}

/// `addr role state lag` for each standby, `; `-separated (empty without standbys).
fn describe_standbys(s: &[crate::health::members::StandbyStatus], max_lag: Duration) -> String {
    s.iter()
        .map(|m| {
            let lag = m.lag.map_or("lag ?".to_string(), |l| {
                format!("lag {:.1} s", l.as_secs_f64())
            });
            format!("{} standby {} {lag}", m.addr, m.state(max_lag))
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn known_pool(rt: &Runtime, cluster: &str) -> Result<Arc<crate::backend::ClusterPool>, ProxyError> {
    rt.pool(cluster).cloned().ok_or_else(|| {
        ProxyError::unroutable(format!(
            "shardgate: there is no cluster '{cluster}' (SHOW CLUSTERS lists them)"
        ))
    })
}

/// Keeps the intents in the state file, if there is one; an error names the file.
/// With `topo = "etcd"`, also saves `cluster`'s intent for the fleet (the other
/// proxies apply it).
async fn persist(shared: &Shared, cluster: &str) -> Result<(), ProxyError> {
    shared.save_traffic_state().map_err(|e| {
        ProxyError::internal(format!("the intent is set but could not be kept: {e}"))
    })?;
    crate::traffic::saved::save_cluster(shared, cluster)
        .await
        .map_err(|e| {
            ProxyError::internal(format!(
                "the intent is set on this proxy but not saved for the fleet: {e}"
            ))
        })
}

/// `DRAIN CLUSTER c [WAIT n SECONDS]`: no new statement starts on `cluster`; statements
/// running and open transactions get until `wait` to finish; what is left then is
/// closed (its backend connections killed, so open transactions roll back and their
/// clients learn it). Returns the summary for the OK packet's info.
pub async fn drain(
    shared: &Shared,
    cluster: &str,
    wait: Duration,
    by: &str,
) -> Result<String, ProxyError> {
    let rt = shared.runtime();
    let pool = known_pool(&rt, cluster)?;
    let started = Instant::now();
    pool.traffic
        .set(Intent::Draining, &format!("DRAIN CLUSTER by {by}"));
    persist(shared, cluster).await?;
    tracing::warn!(%cluster, by, wait_s = wait.as_secs_f64(), "draining cluster");
    pool.close_idle();
    let deadline = started + wait;
    while pool.leased() > 0 && Instant::now() < deadline {
        crate::timer::sleep(Duration::from_millis(20)).await;
    }
    let left = pool.leased_threads();
    let mut killed = 0;
    if !left.is_empty() {
        let c = (*pool.cluster()).clone();
        let ids = left.clone();
        let r = shared
            .control
            .on_one(&c, |mut conn| async move {
                let mut n = 0;
                for id in ids {
                    // Gone already: 1094, which is fine.
                    if conn
                        .sql()
                        .execute(&format!("KILL CONNECTION {id}"))
                        .await
                        .is_ok()
                    {
                        n += 1;
                    }
                }
                conn.release();
                Ok(n)
            })
            .await;
        match r {
            Ok(n) => killed = n,
            Err(f) => {
                tracing::warn!(%cluster, reason = %f.reason, "drain could not kill the connections left")
            }
        }
    }
    pool.close_idle();
    pool.traffic
        .set(Intent::Drained, &format!("DRAIN CLUSTER by {by}"));
    persist(shared, cluster).await?;
    let took = started.elapsed().as_secs_f64();
    tracing::warn!(%cluster, killed, took_s = took, "cluster drained");
    Ok(format!(
        "cluster {cluster} drained in {took:.1} s: {} backend connection(s) still in use at the deadline, {killed} killed",
        left.len()
    ))
}

/// The columns of `SHOW FAILOVERS`.
pub const FAILOVER_COLUMNS: [&str; 9] = [
    "Cluster", "Kind", "From", "To", "By", "Started", "Buffered", "Outcome", "Timeline",
];

/// One row per failover kept, oldest first; the timeline as `0.012s step; ...`.
pub fn show_failovers(shared: &Shared) -> Vec<Row> {
    shared
        .topology
        .failovers()
        .into_iter()
        .map(|r| {
            let text = |s: String| Some(s.into_bytes());
            let started = r
                .started
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs());
            let timeline: Vec<String> = r
                .steps
                .iter()
                .map(|(at, what)| format!("{at:.3}s {what}"))
                .collect();
            let kind = match r.kind {
                crate::traffic::failover::Kind::Planned => "planned",
                crate::traffic::failover::Kind::Unplanned => "unplanned",
            };
            vec![
                text(r.cluster),
                text(kind.to_string()),
                text(r.from),
                text(r.to),
                text(r.by),
                text(started.to_string()),
                text(r.buffered.to_string()),
                text(match r.outcome {
                    Ok(()) => "done".to_string(),
                    Err(e) => format!("stopped: {e}"),
                }),
                text(timeline.join("; ")),
            ]
        })
        .collect()
}

/// `UNDRAIN CLUSTER c`: the cluster serves again.
pub async fn undrain(shared: &Shared, cluster: &str, by: &str) -> Result<String, ProxyError> {
    let rt = shared.runtime();
    let pool = known_pool(&rt, cluster)?;
    let before = pool.traffic.intent();
    pool.traffic
        .set(Intent::Serving, &format!("UNDRAIN CLUSTER by {by}"));
    persist(shared, cluster).await?;
    tracing::warn!(%cluster, by, "cluster serving again");
    Ok(format!(
        "cluster {cluster} serving (was {}); health {}",
        before.name(),
        pool.health.get().name()
    ))
}
