//! `GET /metrics` in the Prometheus text format, on its own loopback port
//! (`metrics_listen` in the config): per-cluster statements, failures, p99 latency and
//! pool connections, client connections, and the migration executors' counters.

use std::fmt::Write as _;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::shared::Shared;

/// Renders every metric.
pub fn render(shared: &Shared) -> String {
    let mut out = String::new();
    let mut metric = |name: &str, kind: &str, help: &str, rows: Vec<(String, String)>| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
        for (labels, value) in rows {
            let _ = writeln!(out, "{name}{labels} {value}");
        }
    };
    let runtime = shared.runtime();
    let mut pools: Vec<_> = runtime.cluster_pools().collect();
    pools.sort_by(|a, b| a.0.cmp(b.0));
    let label = |c: &str| format!("{{cluster=\"{}\"}}", escape(c));
    metric(
        "shardgate_client_connections",
        "gauge",
        "Client sessions open now (logged in).",
        vec![(
            String::new(),
            shared.clients.load(Ordering::Relaxed).to_string(),
        )],
    );
    metric(
        "shardgate_pending_logins",
        "gauge",
        "Sockets in the handshake now (not logged in yet).",
        vec![(String::new(), shared.door.pending_logins().to_string())],
    );
    metric(
        "shardgate_cluster_statements_total",
        "counter",
        "Statements sent to the cluster.",
        pools
            .iter()
            .map(|(c, p)| {
                (
                    label(c),
                    p.stats.statements.load(Ordering::Relaxed).to_string(),
                )
            })
            .collect(),
    );
    metric(
        "shardgate_cluster_failures_total",
        "counter",
        "Statements the cluster did not answer (lost, timed out, unavailable).",
        pools
            .iter()
            .map(|(c, p)| {
                (
                    label(c),
                    p.stats.failures.load(Ordering::Relaxed).to_string(),
                )
            })
            .collect(),
    );
    metric(
        "shardgate_cluster_p99_seconds",
        "gauge",
        "p99 statement latency over the last 10 seconds (bucket upper bound).",
        pools
            .iter()
            .filter_map(|(c, p)| {
                p.stats
                    .window()
                    .p99
                    .map(|d| (label(c), d.as_secs_f64().to_string()))
            })
            .collect(),
    );
    metric(
        "shardgate_cluster_health",
        "gauge",
        "1 for the cluster's health state now (healthy, degraded, down), 0 for the others.",
        pools
            .iter()
            .flat_map(|(c, p)| {
                let now = p.health.get();
                [
                    crate::health::Health::Healthy,
                    crate::health::Health::Degraded,
                    crate::health::Health::Down,
                ]
                .map(|h| {
                    (
                        format!("{{cluster=\"{}\",state=\"{}\"}}", escape(c), h.name()),
                        u8::from(h == now).to_string(),
                    )
                })
            })
            .collect(),
    );
    metric(
        "shardgate_workspaces_with_errors",
        "gauge",
        "Workspaces whose statements got at least one error in the last 60 seconds \
         (SHOW WORKSPACES WITH ERRORS lists them).",
        vec![(
            String::new(),
            shared.workspaces.count_with_errors().to_string(),
        )],
    );
    let failovers = shared.topology.counts();
    metric(
        "shardgate_failovers_total",
        "counter",
        "Failovers since start, by cluster, kind (planned, unplanned) and outcome (done, stopped).",
        failovers
            .iter()
            .map(|((c, kind, outcome), (n, _))| {
                (
                    format!(
                        "{{cluster=\"{}\",kind=\"{kind}\",outcome=\"{outcome}\"}}",
                        escape(c)
                    ),
                    n.to_string(),
                )
            })
            .collect(),
    );
    metric(
        "shardgate_failover_buffered_statements_total",
        "counter",
        "Statements that waited in a cluster's buffer while it failed over.",
        failovers
            .iter()
            .map(|((c, kind, outcome), (_, b))| {
                (
                    format!(
                        "{{cluster=\"{}\",kind=\"{kind}\",outcome=\"{outcome}\"}}",
                        escape(c)
                    ),
                    b.to_string(),
                )
            })
            .collect(),
    );
    metric(
        "shardgate_cluster_health_changes_total",
        "counter",
        "Changes of the cluster's health state since start.",
        pools
            .iter()
            .map(|(c, p)| (label(c), p.health.snapshot().transitions.to_string()))
            .collect(),
    );
    metric(
        "shardgate_cluster_intent",
        "gauge",
        "1 for what operators want of the cluster now (serving, draining, drained), 0 for the others.",
        pools
            .iter()
            .flat_map(|(c, p)| {
                let now = p.traffic.intent();
                [
                    crate::traffic::Intent::Serving,
                    crate::traffic::Intent::Draining,
                    crate::traffic::Intent::Drained,
                ]
                .map(|i| {
                    (
                        format!("{{cluster=\"{}\",intent=\"{}\"}}", escape(c), i.name()),
                        u8::from(i == now).to_string(),
                    )
                })
            })
            .collect(),
    );
    metric(
        "shardgate_cluster_buffered",
        "gauge",
        "Statements waiting in the cluster's buffer now.",
        pools
            .iter()
            .map(|(c, p)| {
                (
                    label(c),
                    p.traffic.buffered.load(Ordering::Relaxed).to_string(),
                )
            })
            .collect(),
    );
    metric(
        "shardgate_cluster_in_flight",
        "gauge",
        "Backend connections leased now (statements running, sessions holding one).",
        pools
            .iter()
            .map(|(c, p)| (label(c), p.leased().to_string()))
            .collect(),
    );
    metric(
        "shardgate_pool_connections",
        "gauge",
        "Backend connections by state.",
        pools
            .iter()
            .flat_map(|(c, p)| {
                let (open, idle) = p.counts();
                [
                    (
                        format!("{{cluster=\"{}\",state=\"open\"}}", escape(c)),
                        open.to_string(),
                    ),
                    (
                        format!("{{cluster=\"{}\",state=\"idle\"}}", escape(c)),
                        idle.to_string(),
                    ),
                ]
            })
            .collect(),
    );
    let executors: Vec<_> = shared
        .executor_stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(c, s)| (c.clone(), s.snapshot()))
        .collect();
    let per = |f: &dyn Fn(&crate::migrations::executor::StatsSnapshot) -> String| -> Vec<(String, String)> {
        executors.iter().map(|(c, s)| (label(c), f(s))).collect()
    };
    metric(
        "shardgate_migrations_queue_depth",
        "gauge",
        "Migrations queued on the cluster (as of the executor's last poll).",
        per(&|s| s.queue_depth.to_string()),
    );
    metric(
        "shardgate_migrations_running",
        "gauge",
        "Migrations running on the cluster.",
        per(&|s| s.running.to_string()),
    );
    metric(
        "shardgate_migrations_running_copies",
        "gauge",
        "Copy migrations running on the cluster.",
        per(&|s| s.running_copies.to_string()),
    );
    metric(
        "shardgate_migrations_throttled",
        "gauge",
        "1 while the cluster's throttle holds copies back; the reason is a label.",
        executors
            .iter()
            .map(|(c, s)| {
                let reason = s.throttle_reason.as_deref().unwrap_or("");
                (
                    format!(
                        "{{cluster=\"{}\",reason=\"{}\"}}",
                        escape(c),
                        escape(reason)
                    ),
                    u8::from(s.throttled).to_string(),
                )
            })
            .collect(),
    );
    metric(
        "shardgate_migrations_rows_copied_total",
        "counter",
        "Rows copied by this proxy's copy migrations (rate() gives rows per second).",
        per(&|s| s.rows_copied.to_string()),
    );
    metric(
        "shardgate_migrations_completed_total",
        "counter",
        "Migrations completed by this proxy's executor.",
        per(&|s| s.completed.to_string()),
    );
    metric(
        "shardgate_migrations_failed_total",
        "counter",
        "Migrations that failed under this proxy's executor.",
        per(&|s| s.failed.to_string()),
    );
    let (fast, full) = shared.sha2_cache.counts();
    metric(
        "shardgate_caching_sha2_logins_total",
        "counter",
        "Passwords caching_sha2_password verified, by path: fast (the cache) or full \
         (the password over TLS or RSA, which fills the cache).",
        vec![
            ("{path=\"fast\"}".to_string(), fast.to_string()),
            ("{path=\"full\"}".to_string(), full.to_string()),
        ],
    );
    out
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Serves `/metrics` until `stop` turns true.
pub async fn serve(shared: Arc<Shared>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let (mut stream, _) = tokio::select! {
            a = listener.accept() => match a {
                Ok(x) => x,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = stop.changed() => return,
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut buf = Vec::with_capacity(1024);
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    match stream.read(&mut chunk).await {
                        Ok(0) | Err(_) => return false,
                        Ok(n) => buf.extend_from_slice(&chunk[..n]),
                    }
                }
                true
            })
            .await;
            if !matches!(read, Ok(true)) {
                return;
            }
            let (status, body) =
                if buf.starts_with(b"GET /metrics ") || buf.starts_with(b"GET /metrics?") {
                    ("200 OK", render(&shared))
                } else {
                    (
                        "404 Not Found",
                        "only /metrics is served here\n".to_string(),
                    )
                };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
            let _ = stream.shutdown().await;
        });
    }
}
