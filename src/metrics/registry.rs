//! The proxy's metrics on the `metrics` facade, held by a Prometheus recorder of its
//! own (one per [`Shared`](crate::shared::Shared)), rendered by `GET /metrics`.
//!
//! Why a recorder per proxy rather than the process-wide one: a test process (and an
//! embedding program) runs several proxies, and each one's `/metrics` must show its
//! own traffic only. A global recorder would mix them, and
//! `metrics::with_local_recorder` only lasts for a closure on one thread, which an
//! async session moving between workers cannot keep. So handles are registered
//! directly on this proxy's recorder ([`Recorder::register_counter`] and friends): no
//! global or thread-local state, and no label lookup per statement.
//!
//! The data path records through [`Registry::record_on_pair`] with the handles of a
//! (cluster, keyspace) pair a session keeps ([`Registry::pair`]: one load of a
//! copy-on-write map of pre-registered handles, on the pair's first statement), a
//! counter increment and a histogram sample; [`Registry::record_statement`] does both. The map is bounded ([`MAX_PAIRS`]); the error
//! counters per code of one pair too ([`MAX_CODES`]). Everything that is a state rather
//! than an event (pool use, health, intent, buffers, migrations, versions) is read from
//! where it lives when a scrape renders, not recorded on the hot path.
//!
//! The statement latency histogram is not the exporter's: each pair counts its samples
//! in buckets of its own ([`Latency`]: one relaxed add to a bucket and one to the sum,
//! no sample buffer to fold, no epoch to pin), and [`Registry::render`] writes them
//! after the exporter's text in the same Prometheus format.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ::metrics::{Counter, Gauge, Key, Label, Level, Metadata, Recorder};
use arc_swap::ArcSwap;
use metrics_exporter_prometheus::PrometheusRecorder;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use metrics_util::MetricKindMask;

/// (cluster, keyspace) pairs with their own statement series; further pairs are
/// counted under the keyspace [`OVERFLOW`].
pub const MAX_PAIRS: usize = 1024;
/// Error codes with their own series per (cluster, keyspace); further codes are counted
/// as `code="other"`.
pub const MAX_CODES: usize = 64;
/// The keyspace label of statements past [`MAX_PAIRS`].
pub const OVERFLOW: &str = "(other)";
/// The keyspace label of statements with no database selected.
pub const NO_KEYSPACE: &str = "(none)";
/// The keyspace label of statements in a pass-through database (one the vschema does
/// not name: the client chooses its name, so it is not a label).
pub const PASS_THROUGH: &str = "(passthrough)";

/// (cluster, table) pairs with their own `shardgate_deadlock_retries_total` series;
/// further tables count as `table="(other)"` (a table name comes from client text).
pub const MAX_DEADLOCK_TABLES: usize = 256;

/// Gauges not set by a render for this long drop out of `/metrics` (a cluster removed
/// from the vschema, a throttle reason that no longer holds).
const GAUGE_IDLE: Duration = Duration::from_secs(10);

/// Latency histogram bucket upper bounds, in seconds (the same bounds as the
/// throttle's window, [`super::BOUNDS_US`]).
fn latency_buckets() -> Vec<f64> {
    super::BOUNDS_US
        .iter()
        .map(|us| *us as f64 / 1_000_000.0)
        .collect()
}

/// Every metric: name, kind, unit, help. `docs/metrics.md` documents the same list.
pub(crate) const DESCRIBED: &[(&str, Kind, &str)] = &[
    ("shardgate_statements_total", Kind::Counter, "Statements sent to a cluster (or refused for it), by cluster and the session's keyspace."),
    ("shardgate_statement_errors_total", Kind::Counter, "Statements sent to a cluster that ended in an error, by cluster, keyspace and MySQL error code (the backend's own or shardgate's)."),
    ("shardgate_statement_duration_seconds", Kind::Histogram, "Time from sending a statement to the cluster to the end of its answer, by cluster and keyspace."),
    ("shardgate_client_connections", Kind::Gauge, "Client sessions open now (logged in)."),
    ("shardgate_pending_logins", Kind::Gauge, "Sockets in the handshake now (not logged in yet)."),
    ("shardgate_cluster_statements_total", Kind::Counter, "Statements sent to the cluster."),
    ("shardgate_cluster_failures_total", Kind::Counter, "Statements the cluster did not answer (lost, timed out, unavailable)."),
    ("shardgate_cluster_p99_seconds", Kind::Gauge, "p99 statement latency over the last 10 seconds (bucket upper bound; 0 without statements)."),
    ("shardgate_cluster_health", Kind::Gauge, "1 for the cluster's health state now (healthy, degraded, down), 0 for the others."),
    ("shardgate_cluster_health_changes_total", Kind::Counter, "Changes of the cluster's health state since start."),
    ("shardgate_cluster_intent", Kind::Gauge, "1 for what operators want of the cluster now (serving, draining, drained), 0 for the others."),
    ("shardgate_cluster_buffered", Kind::Gauge, "Statements waiting in the cluster's failover buffer now."),
    ("shardgate_cluster_in_flight", Kind::Gauge, "Backend connections leased now (statements running, sessions holding one)."),
    ("shardgate_pool_connections", Kind::Gauge, "Backend connections by state: open (idle or leased), idle, leased."),
    ("shardgate_pool_waiters", Kind::Gauge, "Checkouts waiting for a backend connection now (the pool is at max_connections)."),
    ("shardgate_pool_wait_seconds", Kind::Histogram, "How long checkouts that found every backend connection of the cluster in use waited for one (those that got one and those that gave up)."),
    ("shardgate_pool_checkout_timeouts_total", Kind::Counter, "Checkouts that waited checkout_timeout for a backend connection of the cluster and gave up (the statement got ERROR 1105)."),
    ("shardgate_workspaces_with_errors", Kind::Gauge, "Workspaces whose statements got at least one error in the last 60 seconds (SHOW WORKSPACES WITH ERRORS lists them)."),
    ("shardgate_failovers_total", Kind::Counter, "Failovers since start, by cluster, kind (planned, unplanned) and outcome (done, stopped)."),
    ("shardgate_failover_buffered_statements_total", Kind::Counter, "Statements that waited in a cluster's buffer while it failed over."),
    ("shardgate_migrations_queue_depth", Kind::Gauge, "Migrations queued on the cluster (as of the executor's last poll)."),
    ("shardgate_migrations_running", Kind::Gauge, "Migrations running on the cluster."),
    ("shardgate_migrations_running_copies", Kind::Gauge, "Copy migrations running on the cluster."),
    ("shardgate_migrations_throttled", Kind::Gauge, "1 while the cluster's throttle holds copies back; the reason is a label."),
    ("shardgate_migrations_rows_copied_total", Kind::Counter, "Rows copied by this proxy's copy migrations (rate() gives rows per second)."),
    ("shardgate_migrations_completed_total", Kind::Counter, "Migrations completed by this proxy's executor."),
    ("shardgate_migrations_failed_total", Kind::Counter, "Migrations that failed under this proxy's executor."),
    ("shardgate_vschema_version", Kind::Gauge, "Version of the vschema this proxy serves now."),
    ("shardgate_plan_cache_hits_total", Kind::Counter, "Statements whose plan came from the plan cache (no planning)."),
    ("shardgate_plan_cache_misses_total", Kind::Counter, "Statements of a cacheable shape planned in full: not in the plan cache yet."),
    ("shardgate_plan_cache_uncacheable_total", Kind::Counter, "Statements planned in full because their plan cannot be cached (not a single SELECT/UPDATE/DELETE, an INSERT, a range, an error, strings with escapes, texts over 4 KiB)."),
    ("shardgate_plan_cache_entries", Kind::Gauge, "Entries in the plan cache now (at most plan_cache_size)."),
    ("shardgate_deadlock_retries_total", Kind::Counter, "Autocommit statements a deadlock made their victim and shardgate sent again, by cluster, first table named and how they ended (retried_ok, retried_error, gave_up)."),
    ("shardgate_caching_sha2_logins_total", Kind::Counter, "Passwords caching_sha2_password verified, by path: fast (the cache) or full (the password over TLS or RSA, which fills the cache)."),
];

/// A metric's kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// The handles of one (cluster, keyspace) pair.
struct Pair {
    cluster: String,
    keyspace: String,
    statements: Counter,
    latency: Latency,
    /// Error counters by code, registered on first use; bounded by [`MAX_CODES`].
    errors: Mutex<Vec<(u16, Counter)>>,
    other_errors: Counter,
}

/// Durations in the latency buckets (50 µs to 5 s; each counts the samples of its
/// own range; rendered cumulative) and their sum: a statement latency histogram of a
/// pair, or a pool's waits for a connection.
#[derive(Default)]
pub struct Latency {
    buckets: [AtomicU64; super::BUCKETS],
    sum_ns: AtomicU64,
}

impl Latency {
    /// Counts one sample: two relaxed adds.
    pub fn record(&self, elapsed: Duration) {
        self.buckets[super::bucket_of(elapsed)].fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX);
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }
}

/// The metric handles of one (cluster, keyspace) pair ([`Registry::pair`]).
#[derive(Clone)]
pub struct PairHandle(Arc<Pair>);

type Fast = foldhash::fast::RandomState;
type Pairs = HashMap<String, HashMap<String, Arc<Pair>, Fast>, Fast>;

/// One proxy's metrics.
pub struct Registry {
    recorder: PrometheusRecorder,
    handle: PrometheusHandle,
    /// Statement handles by cluster, then keyspace: read with one atomic load per
    /// statement, replaced whole (under `grow`) when a pair is first seen.
    pairs: ArcSwap<Pairs>,
    grow: Mutex<usize>,
    /// The (cluster, table) pairs of the deadlock-retry series so far (a rare path).
    deadlock_tables: Mutex<HashSet<(String, String)>>,
}

fn metadata() -> Metadata<'static> {
    Metadata::new(module_path!(), Level::INFO, Some(module_path!()))
}

fn key(name: &'static str, labels: &[(&'static str, &str)]) -> Key {
    let labels: Vec<Label> = labels
        .iter()
        .map(|(k, v)| Label::new(*k, v.to_string()))
        .collect();
    Key::from_parts(name, labels)
}

impl Registry {
    /// A recorder of its own, every metric described (the latency histogram is
    /// described by [`Registry::render`] itself).
    pub fn new() -> Arc<Registry> {
        let recorder = PrometheusBuilder::new()
            .idle_timeout(MetricKindMask::GAUGE, Some(GAUGE_IDLE))
            .build_recorder();
        for (name, kind, help) in DESCRIBED {
            // No unit: the names carry theirs (`_seconds`), and the exporter would add it
            // again.
            let (name, help) = ((*name).into(), (*help).into());
            match kind {
                Kind::Counter => recorder.describe_counter(name, None, help),
                Kind::Gauge => recorder.describe_gauge(name, None, help),
                Kind::Histogram => {}
            }
        }
        Arc::new(Registry {
            handle: recorder.handle(),
            recorder,
            pairs: ArcSwap::from_pointee(Pairs::default()),
            grow: Mutex::new(0),
            deadlock_tables: Mutex::new(HashSet::new()),
        })
    }

    /// Records one statement sent to `cluster` (or refused for it) in the session's
    /// `keyspace` (see [`keyspace_label`]): `elapsed` None for a refusal that never
    /// reached the cluster (no latency sample), `error` the MySQL code of the error the
    /// client got, if any.
    pub fn record_statement(
        &self,
        cluster: &str,
        keyspace: &str,
        elapsed: Option<Duration>,
        error: Option<u16>,
    ) {
        let pair = self.pair(cluster, keyspace);
        self.record_on_pair(&pair, elapsed, error);
    }

    /// The handles of (`cluster`, `keyspace`), for a caller that records many
    /// statements of the same pair ([`Registry::record_on_pair`]): no map lookup each.
    /// Pairs are never removed, so a handle stays the one the map has.
    pub fn pair(&self, cluster: &str, keyspace: &str) -> PairHandle {
        let found = self
            .pairs
            .load()
            .get(cluster)
            .and_then(|m| m.get(keyspace))
            .cloned();
        PairHandle(found.unwrap_or_else(|| self.add_pair(cluster, keyspace)))
    }

    /// [`Registry::record_statement`] on a pair's handles.
    pub fn record_on_pair(&self, pair: &PairHandle, elapsed: Option<Duration>, error: Option<u16>) {
        Self::record_on(&pair.0, self, elapsed, error);
    }

    fn record_on(pair: &Pair, reg: &Registry, elapsed: Option<Duration>, error: Option<u16>) {
        pair.statements.increment(1);
        if let Some(d) = elapsed {
            pair.latency.record(d);
        }
        if let Some(code) = error {
            reg.error_counter(pair, code).increment(1);
        }
    }

    /// The error counter of `code` for a pair (errors are not the hot path: a short
    /// lock and a scan of at most [`MAX_CODES`]).
    fn error_counter(&self, pair: &Pair, code: u16) -> Counter {
        let mut errors = pair.errors.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((_, c)) = errors.iter().find(|(c, _)| *c == code) {
            return c.clone();
        }
        if errors.len() >= MAX_CODES {
            return pair.other_errors.clone();
        }
        let c = self.counter(
            "shardgate_statement_errors_total",
            &[
                ("cluster", &pair.cluster),
                ("keyspace", &pair.keyspace),
                ("code", &code.to_string()),
            ],
        );
        errors.push((code, c.clone()));
        c
    }

    /// Registers the handles of a pair first seen (or finds those another session just
    /// registered); past [`MAX_PAIRS`], the cluster's overflow pair.
    fn add_pair(&self, cluster: &str, keyspace: &str) -> Arc<Pair> {
        let mut count = self.grow.lock().unwrap_or_else(|p| p.into_inner());
        let pairs = self.pairs.load_full();
        if let Some(p) = pairs.get(cluster).and_then(|m| m.get(keyspace)) {
            return p.clone();
        }
        let keyspace = if *count >= MAX_PAIRS {
            if let Some(p) = pairs.get(cluster).and_then(|m| m.get(OVERFLOW)) {
                return p.clone();
            }
            OVERFLOW
        } else {
            keyspace
        };
        let labels = [("cluster", cluster), ("keyspace", keyspace)];
        let pair = Arc::new(Pair {
            cluster: cluster.to_string(),
            keyspace: keyspace.to_string(),
            statements: self.counter("shardgate_statements_total", &labels),
            latency: Latency::default(),
            errors: Mutex::new(Vec::new()),
            other_errors: self.counter(
                "shardgate_statement_errors_total",
                &[
                    ("cluster", cluster),
                    ("keyspace", keyspace),
                    ("code", "other"),
                ],
            ),
        });
        let mut next: Pairs = (*pairs).clone();
        next.entry(cluster.to_string())
            .or_default()
            .insert(keyspace.to_string(), pair.clone());
        self.pairs.store(Arc::new(next));
        *count += 1;
        pair
    }

    /// Counts an autocommit statement that a deadlock made its victim and that was sent
    /// again, by how it ended: `retried_ok`, `retried_error` (another error, a lost
    /// backend, the query timeout) or `gave_up` (every try deadlocked). `table` is the
    /// first table it names ("(none)" if none); past [`MAX_DEADLOCK_TABLES`], "(other)".
    pub fn record_deadlock_retry(&self, cluster: &str, table: Option<&str>, result: &str) {
        let table = table.unwrap_or("(none)");
        let table = {
            let mut seen = self
                .deadlock_tables
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let pair = (cluster.to_string(), table.to_string());
            if seen.contains(&pair) {
                table
            } else if seen.len() < MAX_DEADLOCK_TABLES {
                seen.insert(pair);
                table
            } else {
                OVERFLOW
            }
        };
        let labels = [("cluster", cluster), ("table", table), ("result", result)];
        self.counter("shardgate_deadlock_retries_total", &labels)
            .increment(1);
    }

    /// A counter of this proxy's (registered once, then the same handle).
    pub fn counter(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Counter {
        self.recorder
            .register_counter(&key(name, labels), &metadata())
    }

    /// A gauge of this proxy's.
    pub fn gauge(&self, name: &'static str, labels: &[(&'static str, &str)]) -> Gauge {
        self.recorder
            .register_gauge(&key(name, labels), &metadata())
    }

    /// Everything in the Prometheus text format: the exporter's series, then the
    /// statement latency histogram of every pair.
    pub fn render(&self) -> String {
        let mut out = self.handle.render();
        self.render_latency(&mut out);
        out
    }

    fn render_latency(&self, out: &mut String) {
        const NAME: &str = "shardgate_statement_duration_seconds";
        let pairs = self.pairs.load();
        let mut all: Vec<&Arc<Pair>> = pairs.values().flat_map(|m| m.values()).collect();
        all.sort_by(|a, b| (&a.cluster, &a.keyspace).cmp(&(&b.cluster, &b.keyspace)));
        let series = all.iter().map(|p| {
            let labels = format!(
                "cluster=\"{}\",keyspace=\"{}\"",
                escape_label(&p.cluster),
                escape_label(&p.keyspace)
            );
            (labels, &p.latency)
        });
        render_histograms(out, NAME, series);
    }
}

/// Appends the histogram `name` (a described metric) to `out` in the Prometheus text
/// format: one series per (labels, samples), labels already escaped
/// ([`cluster_label`]); nothing without a series.
pub fn render_histograms<'a>(
    out: &mut String,
    name: &str,
    series: impl IntoIterator<Item = (String, &'a Latency)>,
) {
    use std::fmt::Write;
    let mut series = series.into_iter().peekable();
    if series.peek().is_none() {
        return;
    }
    let help = DESCRIBED
        .iter()
        .find(|(n, _, _)| *n == name)
        .map_or("", |(_, _, h)| *h);
    if !out.is_empty() && !out.ends_with('\n') {
        out.push('\n');
    }
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} histogram");
    let bounds = latency_buckets();
    for (labels, h) in series {
        let mut total = 0u64;
        for (i, b) in h.buckets.iter().enumerate() {
            total += b.load(Ordering::Relaxed);
            match bounds.get(i) {
                Some(le) => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"{le}\"}} {total}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{{labels},le=\"+Inf\"}} {total}");
                }
            }
        }
        let sum = h.sum_ns.load(Ordering::Relaxed) as f64 / 1e9;
        let _ = writeln!(out, "{name}_sum{{{labels}}} {sum}");
        let _ = writeln!(out, "{name}_count{{{labels}}} {total}");
    }
}

/// `cluster="name"`, escaped for the text format.
pub fn cluster_label(cluster: &str) -> String {
    format!("cluster=\"{}\"", escape_label(cluster))
}

/// A label value in the text format: backslash, double quote and line feed escaped.
fn escape_label(v: &str) -> std::borrow::Cow<'_, str> {
    if !v.contains(['\\', '"', '\n']) {
        return std::borrow::Cow::Borrowed(v);
    }
    std::borrow::Cow::Owned(
        v.replace('\\', "\\\\")
            .replace('"', "\\\"")
            .replace('\n', "\\n"),
    )
}

/// The keyspace label of a session's database: the keyspace, [`NO_KEYSPACE`] or
/// [`PASS_THROUGH`] (never a name the client chose that the vschema does not know).
pub fn keyspace_label(ctx: &crate::router::DbContext) -> &str {
    use crate::router::DbContext;
    match ctx {
        DbContext::None => NO_KEYSPACE,
        DbContext::Keyspace(k) => k,
        DbContext::Workspace { keyspace, .. } => keyspace,
        DbContext::PassThrough(_) => PASS_THROUGH,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line<'a>(body: &'a str, series: &str) -> Option<&'a str> {
        body.lines()
            .find_map(|l| l.strip_prefix(series).map(str::trim))
    }

    #[test]
    fn two_registries_do_not_share_series() {
        let a = Registry::new();
        let b = Registry::new();
        a.record_statement("c1", "app", Some(Duration::from_micros(300)), None);
        a.record_statement("c1", "app", Some(Duration::from_millis(3)), Some(1146));
        let body = a.render();
        assert_eq!(
            line(
                &body,
                "shardgate_statements_total{cluster=\"c1\",keyspace=\"app\"}"
            ),
            Some("2")
        );
        assert_eq!(
            line(
                &body,
                "shardgate_statement_errors_total{cluster=\"c1\",keyspace=\"app\",code=\"1146\"}"
            ),
            Some("1")
        );
        assert_eq!(
            line(
                &body,
                "shardgate_statement_duration_seconds_bucket{cluster=\"c1\",keyspace=\"app\",le=\"0.0005\"}"
            ),
            Some("1"),
            "{body}"
        );
        assert_eq!(
            line(
                &body,
                "shardgate_statement_duration_seconds_count{cluster=\"c1\",keyspace=\"app\"}"
            ),
            Some("2")
        );
        assert!(!b.render().contains("keyspace=\"app\""));
    }

    #[test]
    fn the_latency_histogram_is_cumulative_with_prometheus_bounds() {
        let r = Registry::new();
        let us = Duration::from_micros;
        for d in [
            us(500),
            Duration::from_nanos(500_400),
            us(40),
            us(7_000_000),
        ] {
            r.record_statement("c\"1", "app", Some(d), None);
        }
        // A refusal: counted as a statement, no latency sample.
        r.record_statement("c\"1", "app", None, Some(1053));
        let body = r.render();
        let series = |s: &str| {
            format!("shardgate_statement_duration_seconds{s}{{cluster=\"c\\\"1\",keyspace=\"app\"")
        };
        let bucket = |le: &str| line(&body, &format!("{},le=\"{le}\"}}", series("_bucket")));
        assert_eq!(bucket("0.00005"), Some("1"), "{body}");
        assert_eq!(bucket("0.0005"), Some("2"), "500 µs is at most 0.0005 s");
        assert_eq!(bucket("0.001"), Some("3"), "500.4 µs is past it");
        assert_eq!(bucket("5"), Some("3"));
        assert_eq!(bucket("+Inf"), Some("4"));
        assert_eq!(line(&body, &format!("{}}}", series("_count"))), Some("4"));
        let sum: f64 = line(&body, &format!("{}}}", series("_sum")))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0.0);
        assert!((sum - 7.001_040_4).abs() < 1e-9, "{sum}");
        assert_eq!(
            body.matches("# TYPE shardgate_statement_duration_seconds histogram")
                .count(),
            1
        );
    }

    #[test]
    fn deadlock_retries_are_counted_by_cluster_table_and_result_with_bounded_tables() {
        let r = Registry::new();
        r.record_deadlock_retry("c1", Some("t"), "retried_ok");
        r.record_deadlock_retry("c1", Some("t"), "retried_ok");
        r.record_deadlock_retry("c1", None, "gave_up");
        for i in 0..MAX_DEADLOCK_TABLES + 3 {
            r.record_deadlock_retry("c2", Some(&format!("t{i}")), "retried_ok");
        }
        let body = r.render();
        let series = |labels: &str| format!("shardgate_deadlock_retries_total{{{labels}}}");
        assert_eq!(
            line(
                &body,
                &series(r#"cluster="c1",table="t",result="retried_ok""#)
            ),
            Some("2")
        );
        assert_eq!(
            line(
                &body,
                &series(r#"cluster="c1",table="(none)",result="gave_up""#)
            ),
            Some("1")
        );
        // c1's two tables took two of the slots.
        assert_eq!(
            line(
                &body,
                &series(r#"cluster="c2",table="(other)",result="retried_ok""#)
            ),
            Some("5")
        );
    }

    #[test]
    fn pairs_and_codes_are_bounded() {
        let r = Registry::new();
        for i in 0..MAX_PAIRS + 10 {
            r.record_statement("c1", &format!("ks{i}"), None, Some(1000 + i as u16));
        }
        assert_eq!(
            r.pairs.load().get("c1").map(|m| m.len()),
            Some(MAX_PAIRS + 1)
        );
        let body = r.render();
        assert_eq!(
            line(
                &body,
                &format!("shardgate_statements_total{{cluster=\"c1\",keyspace=\"{OVERFLOW}\"}}")
            ),
            Some("10")
        );
        for code in 0..MAX_CODES as u16 + 5 {
            r.record_statement("c1", "ks0", None, Some(2000 + code));
        }
        let body = r.render();
        assert_eq!(
            line(
                &body,
                "shardgate_statement_errors_total{cluster=\"c1\",keyspace=\"ks0\",code=\"other\"}"
            ),
            Some("6"),
            "1000 took one of the {MAX_CODES} slots, so 6 of the new codes did not get one"
        );
    }
}
