//! `GET /metrics` in the Prometheus text format, on its own loopback port
//! (`metrics_listen` in the config): statements, errors by code and latency histograms
//! per cluster and keyspace, pools, health, traffic intent, failover buffers,
//! migrations, the vschema version (every name and label: `docs/metrics.md`). The
//! metrics live on the proxy's own recorder ([`crate::metrics::Registry`]).

use std::sync::atomic::Ordering;

use crate::health::Health;
use crate::shared::Shared;
use crate::traffic::Intent;

/// The vschema version `/metrics` reports (`shardgate_vschema_version`).
pub fn vschema_version_for_metrics(shared: &Shared) -> u64 {
    shared.plane.version()
}

/// Renders every metric of this proxy: the events the data path recorded on its
/// registry, and the states read now from where they live (pools, health, traffic,
/// failovers, executors, caches).
pub fn render(shared: &Shared) -> String {
    let m = &shared.metrics;
    let gauge = |name, labels: &[(&'static str, &str)], v: f64| m.gauge(name, labels).set(v);
    let total = |name, labels: &[(&'static str, &str)], v: u64| m.counter(name, labels).absolute(v);
    gauge(
        "shardgate_client_connections",
        &[],
        shared.clients.load(Ordering::Relaxed) as f64,
    );
    gauge(
        "shardgate_pending_logins",
        &[],
        shared.door.pending_logins() as f64,
    );
    gauge(
        "shardgate_workspaces_with_errors",
        &[],
        shared.workspaces.count_with_errors() as f64,
    );
    gauge(
        "shardgate_vschema_version",
        &[],
        vschema_version_for_metrics(shared) as f64,
    );
    let runtime = shared.runtime();
    for (c, p) in runtime.cluster_pools() {
        let l: &[(&'static str, &str)] = &[("cluster", c)];
        total(
            "shardgate_cluster_statements_total",
            l,
            p.stats.statements.load(Ordering::Relaxed),
        );
        total(
            "shardgate_cluster_failures_total",
            l,
            p.stats.failures.load(Ordering::Relaxed),
        );
        let p99 = p.stats.window().p99.map_or(0.0, |d| d.as_secs_f64());
        gauge("shardgate_cluster_p99_seconds", l, p99);
        let health = p.health.get();
        for h in [Health::Healthy, Health::Degraded, Health::Down] {
            let labels = [("cluster", c.as_str()), ("state", h.name())];
            gauge(
                "shardgate_cluster_health",
                &labels,
                f64::from(u8::from(h == health)),
            );
        }
        total(
            "shardgate_cluster_health_changes_total",
            l,
            p.health.snapshot().transitions,
        );
        let intent = p.traffic.intent();
        for i in [Intent::Serving, Intent::Draining, Intent::Drained] {
            let labels = [("cluster", c.as_str()), ("intent", i.name())];
            gauge(
                "shardgate_cluster_intent",
                &labels,
                f64::from(u8::from(i == intent)),
            );
        }
        let buffered = p.traffic.buffered.load(Ordering::Relaxed);
        gauge("shardgate_cluster_buffered", l, buffered as f64);
        let leased = p.leased();
        gauge("shardgate_cluster_in_flight", l, leased as f64);
        let (open, idle) = p.counts();
        for (state, n) in [("open", open), ("idle", idle), ("leased", leased)] {
            let labels = [("cluster", c.as_str()), ("state", state)];
            gauge("shardgate_pool_connections", &labels, n as f64);
        }
        gauge("shardgate_pool_waiters", l, p.waiting() as f64);
        total(
            "shardgate_pool_checkout_timeouts_total",
            l,
            p.waits.timeouts.load(Ordering::Relaxed),
        );
    }
    // Every cluster's failover counters exist from the start, at 0, so that `rate()`
    // and `increase()` see the first failover.
    for c in runtime.vschema.clusters.keys() {
        for kind in ["planned", "unplanned"] {
            for outcome in ["done", "stopped"] {
                let labels = [
                    ("cluster", c.as_str()),
                    ("kind", kind),
                    ("outcome", outcome),
                ];
                total("shardgate_failovers_total", &labels, 0);
                total("shardgate_failover_buffered_statements_total", &labels, 0);
            }
        }
    }
    for ((c, kind, outcome), (n, buffered)) in shared.topology.counts().iter() {
        let labels = [
            ("cluster", c.as_str()),
            ("kind", kind),
            ("outcome", outcome),
        ];
        total("shardgate_failovers_total", &labels, *n);
        total(
            "shardgate_failover_buffered_statements_total",
            &labels,
            *buffered,
        );
    }
    let executors: Vec<_> = shared
        .executor_stats
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .map(|(c, s)| (c.clone(), s.snapshot()))
        .collect();
    for (c, s) in &executors {
        let l: &[(&'static str, &str)] = &[("cluster", c)];
        gauge("shardgate_migrations_queue_depth", l, s.queue_depth as f64);
        gauge("shardgate_migrations_running", l, s.running as f64);
        gauge(
            "shardgate_migrations_running_copies",
            l,
            s.running_copies as f64,
        );
        let reason = s.throttle_reason.as_deref().unwrap_or("");
        gauge(
            "shardgate_migrations_throttled",
            &[("cluster", c), ("reason", reason)],
            f64::from(u8::from(s.throttled)),
        );
        total("shardgate_migrations_rows_copied_total", l, s.rows_copied);
        total("shardgate_migrations_completed_total", l, s.completed);
        total("shardgate_migrations_failed_total", l, s.failed);
    }
    gauge(
        "shardgate_topology_store_reachable",
        &[("store", shared.plane.topo().kind())],
        f64::from(u8::from(shared.plane.reachable())),
    );
    let plans = shared.plan_cache.stats();
    total("shardgate_plan_cache_hits_total", &[], plans.hits);
    total("shardgate_plan_cache_misses_total", &[], plans.misses);
    total(
        "shardgate_plan_cache_uncacheable_total",
        &[],
        plans.uncacheable,
    );
    gauge("shardgate_plan_cache_entries", &[], plans.entries as f64);
    let (fast, full) = shared.sha2_cache.counts();
    for (path, n) in [("fast", fast), ("full", full)] {
        total("shardgate_caching_sha2_logins_total", &[("path", path)], n);
    }
    let mut out = m.render();
    let mut pools: Vec<_> = runtime.cluster_pools().collect();
    pools.sort_by(|a, b| a.0.cmp(b.0));
    let waits = pools
        .iter()
        .map(|(c, p)| (crate::metrics::cluster_label(c), &p.waits.waited));
    crate::metrics::render_histograms(&mut out, "shardgate_pool_wait_seconds", waits);
    out
}
