//! Failover: a standby becomes the primary while statements wait in the cluster's
//! buffer (`docs/traffic.md#failover`).
//!
//! Planned (`FAILOVER CLUSTER c1 [TO 'host:port']`): buffer new statements, let the
//! running ones finish, make the old primary `read_only` and end what is left on it,
//! wait until the chosen standby has applied every GTID of the old primary, promote it,
//! repoint the other members (the old primary included) at it, switch routing, release
//! the buffer. Unplanned (a primary `down` with `failover = "auto"`): the most advanced
//! reachable standby is promoted after it has applied what it received; the old primary
//! is fenced: never routed to again, and made `read_only` whenever it answers.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::backend::SqlConn;
use crate::error::ProxyError;
use crate::health::members::{self, StandbyStatus};
use crate::shared::Shared;
use crate::vschema::Cluster;

/// `[traffic]` failover settings.
#[derive(Debug, Clone)]
pub struct FailoverConfig {
    /// Promote a standby on its own when a primary is `down`.
    pub auto: bool,
    /// How long running statements and open transactions get to finish (planned).
    pub drain_wait: Duration,
    /// How long the chosen standby gets to apply what the primary had.
    pub catch_up: Duration,
    /// A standby lagging more than this is not chosen (and replica reads avoid it).
    pub max_lag: Duration,
}

impl Default for FailoverConfig {
    fn default() -> Self {
        FailoverConfig {
            auto: false,
            drain_wait: Duration::from_secs(3),
            catch_up: Duration::from_secs(5),
            max_lag: Duration::from_secs(5),
        }
    }
}

/// Planned or not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// An operator asked; the old primary answers.
    Planned,
    /// The primary is down.
    Unplanned,
}

/// One failover as `SHOW FAILOVERS` shows it.
#[derive(Debug, Clone)]
pub struct Record {
    /// The cluster.
    pub cluster: String,
    /// Planned or unplanned.
    pub kind: Kind,
    /// The old primary.
    pub from: String,
    /// The new primary (empty when none could be chosen).
    pub to: String,
    /// Who asked (`auto` for the policy).
    pub by: String,
    /// When it started.
    pub started: SystemTime,
    /// Each step and when it happened, in seconds since the start.
    pub steps: Vec<(f64, String)>,
    /// Most statements waiting in the buffer at once.
    pub buffered: usize,
    /// Ok, or why it stopped (and what state it left).
    pub outcome: Result<(), String>,
}

struct Timeline {
    began: Instant,
    record: Record,
}

impl Timeline {
    fn step(&mut self, what: impl Into<String>) {
        let what = what.into();
        let at = self.began.elapsed().as_secs_f64();
        tracing::info!(cluster = %self.record.cluster, at_s = at, step = %what, "failover");
        self.record.steps.push((at, what));
    }
}

/// With `failover = "auto"`: a failover of `cluster` in the background, unless one is
/// under way already. Called by the health monitor when the primary goes `down`.
pub fn on_down(shared: &Arc<Shared>, cluster: &str) {
    if !shared.config.failover.auto {
        return;
    }
    let shared = shared.clone();
    let cluster = cluster.to_string();
    tokio::spawn(async move {
        match failover(&shared, &cluster, None, Kind::Unplanned, "auto").await {
            Ok(_) => {}
            // Another proxy of the fleet runs it.
            Err(e) if e.message.contains("holds the failover lease") => {
                tracing::info!(%cluster, reason = %e, "automatic failover left to its lease holder");
            }
            Err(e) => tracing::error!(%cluster, error = %e, "automatic failover failed"),
        }
    });
}

/// Runs a failover of `cluster` to `to` (or the best standby). One at a time per
/// cluster; the record is kept for `SHOW FAILOVERS` whatever the outcome.
pub async fn failover(
    shared: &Arc<Shared>,
    cluster: &str,
    to: Option<&str>,
    kind: Kind,
    by: &str,
) -> Result<Record, ProxyError> {
    let rt = shared.runtime();
    let pool = rt.pool(cluster).cloned().ok_or_else(|| {
        ProxyError::unroutable(format!(
            "shardgate: there is no cluster '{cluster}' (SHOW CLUSTERS lists them)"
        ))
    })?;
    drop(rt);
    let Some(_turn) = shared.failover_turn(cluster) else {
        return Err(ProxyError::unroutable(format!(
            "shardgate: a failover of cluster '{cluster}' is already under way"
        )));
    };
    // One proxy of a fleet at a time (topo = "etcd"); held until this returns.
    let lease = match super::saved::take_failover_lease(shared, cluster).await {
        Ok(lease) => lease,
        Err(why) => {
            return Err(ProxyError::unroutable(format!(
                "shardgate: no failover of cluster '{cluster}' here: {why}"
            )))
        }
    };
    let old = (*pool.cluster()).clone();
    let config = shared.config.failover.clone();
    let mut t = Timeline {
        began: Instant::now(),
        record: Record {
            cluster: cluster.to_string(),
            kind,
            from: old.primary.clone(),
            to: String::new(),
            by: by.to_string(),
            started: SystemTime::now(),
            steps: Vec::new(),
            buffered: 0,
            outcome: Ok(()),
        },
    };
    t.step(match kind {
        Kind::Planned => "requested",
        Kind::Unplanned => "primary down: detected",
    });
    let standbys = members::probe_all(&old, shared.config.health.probe_timeout).await;
    let target = match choose(&standbys, to, kind, &config) {
        Ok(s) => s,
        Err(why) => {
            t.record.outcome = Err(why.clone());
            shared.keep_failover(t.record.clone());
            return Err(ProxyError::unroutable(format!(
                "shardgate: no failover of cluster '{cluster}': {why}"
            )));
        }
    };
    t.record.to = target.addr.clone();
    pool.traffic.set_switching(Some(target.addr.clone()));
    t.step(format!(
        "buffering new statements; chosen standby {}",
        target.addr
    ));
    // Every step is bounded (connects by `catch_up`, the drain by `drain_wait`, the GTID
    // wait by `catch_up`); the whole is bounded too, so a member that hangs mid-statement
    // cannot hold the buffer and the failover turn forever.
    let limit = config.drain_wait + config.catch_up * 3 + Duration::from_secs(10);
    let result = match crate::timer::timeout(limit, async {
        if !lease.held() {
            return Err("the failover lease was lost before the switch (the topology store \
                        stopped answering); nothing switched"
                .to_string());
        }
        switch(shared, &pool, &old, &target, kind, &config, &mut t, &*lease).await
    })
    .await
    {
        Ok(r) => r,
        Err(_) => Err(format!(
            "not done within {} ms (a member stopped answering); check SHOW CLUSTERS before retrying",
            limit.as_millis()
        )),
    };
    t.record.buffered = t.record.buffered.max(
        pool.traffic
            .buffered
            .load(std::sync::atomic::Ordering::Relaxed),
    );
    pool.traffic.set_switching(None);
    match &result {
        Ok(()) => t.step("buffer released"),
        Err(e) => {
            t.step(format!("stopped: {e}; buffer released to the old primary"));
            t.record.outcome = Err(e.clone());
        }
    }
    shared.keep_failover(t.record.clone());
    match result {
        Ok(()) => Ok(t.record),
        Err(e) => Err(ProxyError::cluster_unavailable(
            cluster,
            format!("failover stopped: {e}"),
        )),
    }
}

/// The standby to promote: the one named (it must be a reachable, replicating
/// standby), else the most advanced reachable one (most GTIDs applied, planned; most
/// received, unplanned), the least lagging among equals.
fn choose(
    standbys: &[StandbyStatus],
    to: Option<&str>,
    kind: Kind,
    config: &FailoverConfig,
) -> Result<StandbyStatus, String> {
    if standbys.is_empty() {
        return Err("it has no standbys in the vschema".into());
    }
    if let Some(addr) = to {
        let s = standbys
            .iter()
            .find(|s| s.addr == addr)
            .ok_or_else(|| format!("{addr} is not one of its standbys"))?;
        if !s.reachable {
            return Err(format!(
                "{addr} does not answer: {}",
                s.error.clone().unwrap_or_default()
            ));
        }
        return Ok(s.clone());
    }
    let progress = |s: &StandbyStatus| match kind {
        Kind::Planned => members::gtid_progress(&s.gtid_current_pos),
        Kind::Unplanned => {
            members::gtid_progress(&s.gtid_io_pos).max(members::gtid_progress(&s.gtid_current_pos))
        }
    };
    standbys
        .iter()
        .filter(|s| s.reachable && (kind == Kind::Unplanned || s.replicating))
        .filter(|s| kind == Kind::Unplanned || s.lag.is_some_and(|l| l <= config.max_lag))
        .max_by(|a, b| {
            progress(a)
                .cmp(&progress(b))
                .then_with(|| b.lag.cmp(&a.lag))
        })
        .cloned()
        .ok_or_else(|| {
            let states: Vec<String> = standbys
                .iter()
                .map(|s| format!("{} {}", s.addr, s.state(config.max_lag)))
                .collect();
            format!("no standby can take over ({})", states.join(", "))
        })
}

async fn connect(m: &Cluster, config: &FailoverConfig) -> Result<SqlConn, String> {
    SqlConn::connect(m, None, config.catch_up)
        .await
        .map_err(|e| format!("{}: {e}", m.primary))
}

async fn run(c: &mut SqlConn, sql: &str, who: &str) -> Result<(), String> {
    c.execute(sql)
        .await
        .map(|_| ())
        .map_err(|e| format!("{who}: {sql}: {e}"))
}

/// Everything between buffering and releasing the buffer; Err leaves the old primary
/// the primary (writable again, planned) and routing unchanged.
#[allow(clippy::too_many_arguments)]
async fn switch(
    shared: &Arc<Shared>,
    pool: &Arc<crate::backend::ClusterPool>,
    old: &Cluster,
    target: &StandbyStatus,
    kind: Kind,
    config: &FailoverConfig,
    t: &mut Timeline,
    lease: &dyn crate::topo::Lease,
) -> Result<(), String> {
    let new = members::member(old, &target.addr);
    let mut promote = connect(&new, config).await?;
    let mut old_conn = None;
    if kind == Kind::Planned {
        let deadline = Instant::now() + config.drain_wait;
        while pool.leased() > 0 && Instant::now() < deadline {
            crate::timer::sleep(Duration::from_millis(10)).await;
        }
        t.step(format!(
            "in-flight statements done ({} still leased)",
            pool.leased()
        ));
        let mut c = connect(old, config).await?;
        run(&mut c, "SET GLOBAL read_only = 1", "old primary").await?;
        let left = pool.leased_threads();
        for id in &left {
            // Gone already: 1094, which is fine.
            let _ = c.execute(&format!("KILL CONNECTION {id}")).await;
        }
        t.step(format!(
            "old primary read_only; {} connection(s) on it ended",
            left.len()
        ));
        let pos = c
            .query("SELECT @@gtid_binlog_pos")
            .await
            .map_err(|e| format!("old primary: {e}"))?
            .scalar()
            .unwrap_or_default()
            .to_string();
        if let Err(e) = wait_gtid(&mut promote, &pos, config.catch_up).await {
            // Nothing switched: the old primary takes writes again.
            let _ = c.execute("SET GLOBAL read_only = 0").await;
            return Err(e);
        }
        t.step(format!("{} applied the old primary's {pos}", target.addr));
        old_conn = Some(c);
    } else {
        // What it received, applied: nothing acknowledged by it is left behind.
        let pos = target.gtid_io_pos.clone();
        if !pos.is_empty() {
            wait_gtid(&mut promote, &pos, config.catch_up).await?;
        }
        t.step(format!("{} applied what it received ({pos})", target.addr));
    }
    // Another proxy of the fleet may take the lease once this one stops renewing it
    // (cut off from the topology store): promote only while it is still held.
    if !lease.held() {
        return Err(
            "the failover lease was lost during the switch (the topology store \
                    stopped answering); the standby was not promoted"
                .to_string(),
        );
    }
    for sql in ["STOP SLAVE", "RESET SLAVE ALL", "SET GLOBAL read_only = 0"] {
        run(&mut promote, sql, "new primary").await?;
    }
    t.step(format!("{} promoted", target.addr));
    // The new topology: the old primary becomes a standby when planned; fenced when not.
    let mut standbys: Vec<String> = old
        .standbys
        .iter()
        .filter(|s| **s != target.addr)
        .cloned()
        .collect();
    if kind == Kind::Planned {
        standbys.push(old.primary.clone());
    }
    // The rest of the definition as it is now (a vschema change may have come since).
    let next = Cluster {
        primary: target.addr.clone(),
        standbys: standbys.clone(),
        ..(*pool.cluster()).clone()
    };
    pool.retarget(next.clone());
    shared.replace_cluster(next.clone());
    // The old primary's state (down, its failures, its traffic) is not the new one's.
    pool.stats.clear_window();
    if let Some(change) = pool.health.reset_after_failover(&old.name, &target.addr) {
        tracing::info!(cluster = %change.cluster, from = change.from.name(), to = change.to.name(), reason = %change.reason, "cluster health changed");
    }
    t.step("routing switched");
    // Repointing can lag behind the switch: the new primary serves already.
    let (host, port) = split_addr(&target.addr);
    for addr in &standbys {
        let mut c = match (addr == &old.primary, old_conn.take()) {
            (true, Some(c)) => c,
            (_, o) => {
                old_conn = o;
                match connect(&members::member(old, addr), config).await {
                    Ok(c) => c,
                    Err(e) => {
                        t.step(format!("{addr} not repointed: {e}"));
                        continue;
                    }
                }
            }
        };
        // A former primary has no slave position: its own binlog is where it stands.
        let use_gtid = if addr == &old.primary {
            "current_pos"
        } else {
            "slave_pos"
        };
        let change = format!(
            "CHANGE MASTER TO MASTER_HOST = {}, MASTER_PORT = {port}, MASTER_USER = {}, \
             MASTER_PASSWORD = {}, MASTER_USE_GTID = {use_gtid}",
            crate::backend::sql::quote_literal(host),
            crate::backend::sql::quote_literal(&old.user),
            crate::backend::sql::quote_literal(&old.password),
        );
        let mut done = Ok(());
        for sql in [
            "STOP SLAVE",
            "SET GLOBAL read_only = 1",
            &change,
            "START SLAVE",
        ] {
            done = run(&mut c, sql, addr).await;
            if done.is_err() {
                break;
            }
        }
        match done {
            Ok(()) => t.step(format!("{addr} replicates from {}", target.addr)),
            Err(e) => t.step(format!("{addr} not repointed: {e}")),
        }
    }
    if kind == Kind::Unplanned {
        shared.fence(&old.name, &old.primary);
        t.step(format!(
            "{} fenced: never routed to again, made read_only when it answers",
            old.primary
        ));
    }
    if let Err(e) = shared.save_traffic_state() {
        t.step(format!("topology not kept: {e}"));
    }
    if let Err(e) = super::saved::save_cluster(shared, &old.name).await {
        t.step(format!("topology not saved for the fleet: {e}"));
    }
    Ok(())
}

/// `MASTER_GTID_WAIT(pos, timeout)` on `c`: Ok once applied.
async fn wait_gtid(c: &mut SqlConn, pos: &str, timeout: Duration) -> Result<(), String> {
    let sql = format!(
        "SELECT MASTER_GTID_WAIT({}, {:.3})",
        crate::backend::sql::quote_literal(pos),
        timeout.as_secs_f64()
    );
    let r = c
        .query(&sql)
        .await
        .map_err(|e| format!("new primary: {e}"))?;
    match r.scalar() {
        Some("0") => Ok(()),
        other => Err(format!(
            "the standby did not apply {pos} within {} ms ({other:?})",
            timeout.as_millis()
        )),
    }
}

/// `host:port` as (host, port), `[v6]:port` included.
fn split_addr(addr: &str) -> (&str, &str) {
    match addr.rsplit_once(':') {
        Some((h, p)) => (h.trim_start_matches('[').trim_end_matches(']'), p),
        None => (addr, "3306"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn standby(addr: &str, pos: &str, lag_ms: u64) -> StandbyStatus {
        StandbyStatus {
            addr: addr.into(),
            reachable: true,
            replicating: true,
            lag: Some(Duration::from_millis(lag_ms)),
            gtid_current_pos: pos.into(),
            gtid_io_pos: pos.into(),
            ..StandbyStatus::default()
        }
    }

    #[test]
    fn the_most_advanced_reachable_standby_is_chosen() {
        let c = FailoverConfig::default();
        let a = standby("a:1", "0-1-10", 100);
        let b = standby("b:1", "0-1-12", 900);
        let mut down = standby("c:1", "0-1-99", 0);
        down.reachable = false;
        let all = [a.clone(), b.clone(), down];
        assert_eq!(
            choose(&all, None, Kind::Planned, &c).map(|s| s.addr),
            Ok("b:1".into())
        );
        assert_eq!(
            choose(&all, Some("a:1"), Kind::Planned, &c).map(|s| s.addr),
            Ok("a:1".into())
        );
        assert!(
            choose(&all, Some("c:1"), Kind::Planned, &c).is_err(),
            "unreachable"
        );
        assert!(
            choose(&all, Some("x:1"), Kind::Planned, &c).is_err(),
            "not a standby"
        );
        assert!(choose(&[], None, Kind::Planned, &c).is_err());
        let mut behind = b;
        behind.lag = Some(Duration::from_secs(60));
        assert_eq!(
            choose(&[a, behind.clone()], None, Kind::Planned, &c).map(|s| s.addr),
            Ok("a:1".into()),
            "a lagging standby is not chosen for a planned failover"
        );
        behind.replicating = false;
        assert_eq!(
            choose(&[behind], None, Kind::Unplanned, &c).map(|s| s.addr),
            Ok("b:1".into()),
            "unplanned: its replication stopped with the primary"
        );
    }

    #[test]
    fn addresses_split() {
        assert_eq!(split_addr("127.0.0.1:3307"), ("127.0.0.1", "3307"));
        assert_eq!(split_addr("[::1]:3307"), ("::1", "3307"));
    }
}
