//! The monitor: one task per cluster that probes it every `probe_interval`, folds the
//! probe and the cluster's traffic window into its health, and reports every change
//! (log, metrics, webhook).

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::watch;

use super::{HealthConfig, Transition};
use crate::backend::SqlConn;
use crate::shared::Shared;
use crate::vschema::Cluster;

/// What a good probe measured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ProbeReading {
    /// The whole probe: connect (when needed), `SELECT 1`, the heartbeat UPSERT and
    /// `Threads_running`.
    pub took: Duration,
    /// `Threads_running` on the primary.
    pub threads_running: Option<u64>,
}

/// Starts a monitor for every cluster of the vschema in force; they stop when `stop`
/// turns true. Nothing is started when the probe interval is zero.
pub fn spawn_monitors(shared: &Arc<Shared>, config: HealthConfig, stop: watch::Receiver<bool>) {
    if config.probe_interval.is_zero() {
        return;
    }
    let config = Arc::new(config);
    for cluster in shared.vschema().clusters.values() {
        spawn_monitor(shared, &cluster.name, &config, &stop);
    }
}

/// Starts the monitor of one cluster (one added to the shard map while the proxy
/// runs); it stops when `stop` turns true or the cluster leaves the shard map.
pub fn spawn_monitor(
    shared: &Arc<Shared>,
    cluster: &str,
    config: &Arc<HealthConfig>,
    stop: &watch::Receiver<bool>,
) {
    if config.probe_interval.is_zero() {
        return;
    }
    tokio::spawn(monitor(
        shared.clone(),
        cluster.to_string(),
        config.clone(),
        shared.config.listen.to_string(),
        stop.clone(),
    ));
}

async fn monitor(
    shared: Arc<Shared>,
    name: String,
    config: Arc<HealthConfig>,
    me: String,
    mut stop: watch::Receiver<bool>,
) {
    let mut conn: Option<(String, SqlConn)> = None;
    let mut tick = crate::timer::interval(config.probe_interval);
    // A probe that timed out already took its interval: the next starts at once.
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => {}
        }
        if *stop.borrow() {
            return;
        }
        let rt = shared.runtime();
        let Some(pool) = rt.pool(&name).cloned() else {
            // The cluster left the vschema.
            return;
        };
        drop(rt);
        // The primary now: a failover moves it.
        let cluster = pool.cluster();
        if conn
            .as_ref()
            .is_some_and(|(addr, _)| *addr != cluster.primary)
        {
            conn = None;
        }
        let started = Instant::now();
        let standbys = super::members::probe_all(&cluster, config.probe_timeout);
        let primary = crate::timer::timeout(
            config.probe_timeout,
            probe(&cluster, &mut conn, config.probe_timeout, &me),
        );
        let (primary, standbys) = tokio::join!(primary, standbys);
        let outcome = match primary {
            Ok(Ok(mut reading)) => {
                reading.took = started.elapsed();
                Ok(reading)
            }
            Ok(Err(e)) => {
                conn = None;
                Err(e)
            }
            Err(_) => {
                // A hung connection is never reused.
                conn = None;
                Err(format!(
                    "no answer within {} ms",
                    config.probe_timeout.as_millis()
                ))
            }
        };
        pool.health.set_standbys(standbys);
        let window = pool.stats.window();
        if let Some(t) = pool.health.observe(&name, &config, outcome, window) {
            report(&t, config.webhook.as_deref());
            if t.to == super::Health::Down {
                // Idle connections to a cluster that stopped answering are suspect (a
                // crashed server's are dead): none is handed out when it is back.
                pool.close_idle();
                // The statements that failed on the way down must not hold its
                // recovery back once probes pass again.
                pool.stats.clear_window();
                // With `failover = "auto"`, a standby takes over.
                crate::traffic::failover::on_down(&shared, &name);
            }
            if t.to < t.from {
                // Statements waiting in the buffer may go on.
                pool.traffic.changed.notify_waiters();
            }
        }
    }
}

/// One probe: the connection (opened when there is none, with the heartbeat table
/// created), a round trip, a write, and the server's running threads.
async fn probe(
    cluster: &Cluster,
    conn: &mut Option<(String, SqlConn)>,
    timeout: Duration,
    me: &str,
) -> Result<ProbeReading, String> {
    if conn.is_none() {
        let mut c = SqlConn::connect(cluster, None, timeout)
            .await
            .map_err(|e| e.to_string())?;
        c.execute("CREATE DATABASE IF NOT EXISTS _shardgate")
            .await
            .map_err(|e| e.to_string())?;
        c.execute(
            "CREATE TABLE IF NOT EXISTS _shardgate.heartbeat (\
             id INT PRIMARY KEY, ts DATETIME(6) NOT NULL, proxy VARCHAR(255) NOT NULL)",
        )
        .await
        .map_err(|e| e.to_string())?;
        *conn = Some((cluster.primary.clone(), c));
    }
    let Some((_, c)) = conn.as_mut() else {
        return Err("no connection".into());
    };
    c.query("SELECT 1").await.map_err(|e| e.to_string())?;
    // The write is what a degraded primary stops doing first.
    let upsert = format!(
        "INSERT INTO _shardgate.heartbeat (id, ts, proxy) VALUES (1, NOW(6), {}) \
         ON DUPLICATE KEY UPDATE ts = VALUES(ts), proxy = VALUES(proxy)",
        crate::backend::sql::quote_literal(me)
    );
    c.execute(&upsert).await.map_err(|e| e.to_string())?;
    let rows = c
        .query("SHOW GLOBAL STATUS LIKE 'Threads_running'")
        .await
        .map_err(|e| e.to_string())?;
    let threads_running = rows
        .rows
        .first()
        .and_then(|r| r.get(1))
        .and_then(|v| v.as_deref())
        .and_then(|v| v.parse().ok());
    Ok(ProbeReading {
        took: Duration::ZERO,
        threads_running,
    })
}

/// Logs a change and POSTs it to the webhook (in the background, bounded in time).
fn report(t: &Transition, webhook: Option<&str>) {
    if t.to > t.from {
        tracing::warn!(cluster = %t.cluster, from = t.from.name(), to = t.to.name(), reason = %t.reason, "cluster health changed");
    } else {
        tracing::info!(cluster = %t.cluster, from = t.from.name(), to = t.to.name(), reason = %t.reason, "cluster health changed");
    }
    let Some(url) = webhook else { return };
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let body = format!(
        "{{\"cluster\":{},\"from\":\"{}\",\"to\":\"{}\",\"reason\":{},\"at\":{at:.3}}}",
        json_string(&t.cluster),
        t.from.name(),
        t.to.name(),
        json_string(&t.reason)
    );
    let url = url.to_string();
    tokio::spawn(async move {
        let sent = crate::timer::timeout(Duration::from_secs(2), post(&url, &body)).await;
        match sent {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!(%url, error = %e, "health webhook failed"),
            Err(_) => tracing::warn!(%url, "health webhook timed out"),
        }
    });
}

/// `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// A minimal HTTP/1.1 POST of a JSON body to an `http://host:port/path` URL; Ok when
/// the answer is 2xx.
async fn post(url: &str, body: &str) -> Result<(), String> {
    let rest = url
        .strip_prefix("http://")
        .ok_or("only http:// webhooks are supported")?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut s = tokio::net::TcpStream::connect(authority)
        .await
        .map_err(|e| e.to_string())?;
    let request = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(request.as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut head = [0u8; 12];
    s.read_exact(&mut head).await.map_err(|e| e.to_string())?;
    match &head[9..10] {
        b"2" => Ok(()),
        _ => Err(format!(
            "answered {}",
            String::from_utf8_lossy(&head).trim_end()
        )),
    }
}
