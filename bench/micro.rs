//! Criterion micro-benchmarks of shardgate's per-query work: packet framing, the
//! response scanner, the planner on a point select (planned, and from the plan cache),
//! routing among 1,000,000 pins, and
//! counting a statement for its workspace (`health::WorkspaceErrors`), recording a
//! statement's metrics (`metrics::Registry`).
//!
//! `cargo bench --bench micro` (add `-- pins` etc. to filter). The pins group also
//! prints what building the 1,000,000-pin map cost in time and resident memory.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::time::Instant;

use bytes::BytesMut;
use criterion::{criterion_group, criterion_main, Criterion};
use shardgate::planner::{self, Route, ShardingSchema};
use shardgate::protocol::packet::{logical_len, put_packet, take_logical};
use shardgate::protocol::relay::{ResponseKind, ResponseScanner};
use shardgate::protocol::wire::{column_type, put_result_set, ColumnSpec};
use shardgate::vschema::VSchema;

const POINT_SELECT: &str = "SELECT val FROM items WHERE workspace_id = 123456 AND id = 17";

fn bench_vschema(pins: usize) -> String {
    let mut t = String::from(
        "[clusters.s0]\nprimary = \"127.0.0.1:3306\"\nuser = \"u\"\n\
         [clusters.s1]\nprimary = \"127.0.0.1:3307\"\nuser = \"u\"\n\
         [keyspaces.bench]\nsharded = true\nvindex = \"xxhash\"\ndefault_column = \"workspace_id\"\n\
         shards = [ { name = \"-80\", cluster = \"s0\" }, { name = \"80-\", cluster = \"s1\" } ]\n\
         [keyspaces.bench.tables]\nitems = { column = \"workspace_id\" }\n",
    );
    if pins > 0 {
        t.push_str("[keyspaces.bench.pins]\n");
        for w in 0..pins {
            let shard = if w % 2 == 0 { "-80" } else { "80-" };
            let _ = writeln!(t, "\"{}\" = \"{shard}\"", w * 3);
        }
    }
    t
}

fn codec(c: &mut Criterion) {
    let mut g = c.benchmark_group("codec");
    let mut payload = vec![shardgate::protocol::command::QUERY];
    payload.extend_from_slice(POINT_SELECT.as_bytes());
    let mut wire = BytesMut::new();
    put_packet(&mut wire, 0, &payload);
    let wire = wire.freeze();
    g.bench_function(
        "read a COM_QUERY packet (logical_len + take_logical)",
        |b| {
            let mut buf = BytesMut::with_capacity(16 * 1024);
            b.iter(|| {
                buf.extend_from_slice(&wire);
                let (total, len) = logical_len(&buf, 1 << 24).unwrap().unwrap();
                black_box(take_logical(&mut buf, total, len));
            })
        },
    );
    g.bench_function("write a COM_QUERY packet (put_packet)", |b| {
        let mut out = BytesMut::with_capacity(16 * 1024);
        b.iter(|| {
            out.clear();
            black_box(put_packet(&mut out, 0, black_box(&payload)));
        })
    });
    // A point select's answer: one column, one row, the closing OK (DEPRECATE_EOF).
    let mut response = BytesMut::new();
    put_result_set(
        &mut response,
        &[ColumnSpec {
            name: "val".into(),
            column_type: column_type::VAR_STRING,
        }],
        &[vec![Some(b"item-123456-17".to_vec())]],
        true,
        false,
        0x0002,
    );
    g.bench_function("scan a point-select response (ResponseScanner)", |b| {
        b.iter(|| {
            let mut s = ResponseScanner::new(ResponseKind::Query, true);
            let n = s.scan(black_box(&response)).unwrap();
            assert!(s.is_done());
            black_box(n);
        })
    });
    g.finish();
}

fn planning(c: &mut Criterion) {
    let vs = VSchema::from_toml_str(&bench_vschema(0)).unwrap();
    let ks = vs.keyspace("bench").unwrap();
    let schema: &dyn ShardingSchema = ks;
    let mut g = c.benchmark_group("planner");
    g.bench_function("plan a point select", |b| {
        b.iter(|| black_box(planner::plan(black_box(POINT_SELECT), schema)))
    });
    g.bench_function("plan + shard of a point select", |b| {
        b.iter(|| {
            let plan = planner::plan(black_box(POINT_SELECT), schema);
            match &plan.statements[0].route {
                Route::Workspaces(ws) => black_box(ks.shard_index_for_workspace(ws[0])),
                other => panic!("unexpected route {other:?}"),
            }
        })
    });
    // The same point select through the plan cache, once its shape is cached: each
    // iteration another workspace (64 texts in turn), as a proxy sees them.
    let cache = planner::PlanCache::new(planner::cache::DEFAULT_CAPACITY);
    let key = planner::SchemaKey::Keyspace("bench");
    let texts: Vec<String> = (0..64)
        .map(|i| {
            format!(
                "SELECT val FROM items WHERE workspace_id = {} AND id = 17",
                123456 + i
            )
        })
        .collect();
    for t in &texts {
        black_box(cache.plan(t, schema, key, 1));
    }
    assert_eq!(
        cache.plan(POINT_SELECT, schema, key, 1),
        planner::plan(POINT_SELECT, schema)
    );
    let hits = cache.stats().hits;
    assert!(hits > 0, "the shape is cached");
    let mut next = 0;
    g.bench_function("plan cache hit: a point select", |b| {
        b.iter(|| {
            next = (next + 1) % texts.len();
            black_box(cache.plan(black_box(&texts[next]), schema, key, 1))
        })
    });
    // A shape the token fast path leaves to sqlparser (a join), planned and cached.
    let join = |w: u64| {
        format!(
            "SELECT i.val FROM items i JOIN items j ON j.workspace_id = i.workspace_id \
             WHERE i.workspace_id = {w} AND j.id = 17"
        )
    };
    let joins: Vec<String> = (0..64).map(|i| join(123456 + i)).collect();
    g.bench_function("plan a join", |b| {
        b.iter(|| black_box(planner::plan(black_box(&joins[0]), schema)))
    });
    for t in &joins {
        black_box(cache.plan(t, schema, key, 1));
    }
    assert!(cache.stats().hits > hits, "the join's shape is cached");
    g.bench_function("plan cache hit: a join", |b| {
        b.iter(|| {
            next = (next + 1) % joins.len();
            black_box(cache.plan(black_box(&joins[next]), schema, key, 1))
        })
    });
    let mut bulk = String::from("INSERT INTO items (workspace_id, id, val) VALUES ");
    for i in 0..100 {
        let _ = write!(
            bulk,
            "{}({}, {i}, 'value {i}')",
            if i > 0 { "," } else { "" },
            1000 + i
        );
    }
    g.bench_function("plan a 100-row INSERT", |b| {
        b.iter(|| black_box(planner::plan(black_box(&bulk), schema)))
    });
    g.finish();
}

fn workspace_counts(c: &mut Criterion) {
    use shardgate::health::WorkspaceErrors;
    let mut g = c.benchmark_group("workspaces");
    let t = WorkspaceErrors::default();
    // 1,000 workspaces, as in the point-select load.
    let mut ws = 0u64;
    g.bench_function("count a statement of one of 1,000 workspaces", |b| {
        b.iter(|| {
            ws = (ws + 1) % 1000;
            if let Some(k) = t.key(black_box("bench"), black_box(ws)) {
                t.record(k, None);
            }
        })
    });
    // 100,000 workspaces (the default cap) in a scattered order, as under sysbench's
    // point select: most counts find their workspace's line out of the caches.
    let many = WorkspaceErrors::default();
    let mut x = 1u64;
    for w in 0..100_000u64 {
        if let Some(k) = many.key("bench", w) {
            many.record(k, None);
        }
    }
    g.bench_function(
        "count a statement of one of 100,000 workspaces, scattered",
        |b| {
            b.iter(|| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                if let Some(k) = many.key(black_box("bench"), (x >> 33) % 100_000) {
                    many.record(k, None);
                }
            })
        },
    );
    // Past the cap: every new workspace may evict.
    let full = WorkspaceErrors::new(10_000);
    let mut fresh = 0u64;
    g.bench_function("count a statement of a new workspace, tracker full", |b| {
        b.iter(|| {
            fresh += 1;
            if let Some(k) = full.key("bench", fresh) {
                full.record(k, None);
            }
        })
    });
    g.finish();
}

fn statement_metrics(c: &mut Criterion) {
    use shardgate::metrics::{ClusterStats, Registry};
    use std::time::Duration;
    let mut g = c.benchmark_group("metrics");
    let stats = ClusterStats::default();
    let elapsed = Duration::from_micros(180);
    // What every statement cost before the metrics crate: the cluster's window.
    g.bench_function("record a statement in the cluster window", |b| {
        b.iter(|| stats.record(black_box(elapsed), false))
    });
    // What it costs now: the window, plus the (cluster, keyspace) counter and latency
    // buckets of the proxy's registry.
    let registry = Registry::new();
    g.bench_function("record a statement in the window and the registry", |b| {
        b.iter(|| {
            stats.record(black_box(elapsed), false);
            registry.record_statement(black_box("c1"), black_box("app"), Some(elapsed), None);
        })
    });
    // What the data path does: the session keeps its pair's handles.
    let pair = registry.pair("c1", "app");
    g.bench_function("record a statement on a kept pair", |b| {
        b.iter(|| {
            stats.record(black_box(elapsed), false);
            registry.record_on_pair(&pair, Some(elapsed), None);
        })
    });
    g.finish();
}

fn pins(c: &mut Criterion) {
    const PINS: usize = 1_000_000;
    let text = bench_vschema(PINS);
    let rss0 = rss_bytes();
    let start = Instant::now();
    let vs = VSchema::from_toml_str(&text).unwrap();
    let took = start.elapsed();
    drop(text);
    let rss1 = rss_bytes();
    let ks = vs.keyspace("bench").unwrap();
    assert_eq!(ks.pins.len(), PINS);
    // A hash map and an ordered map of the same pins (`PinMap`): their entries, plus
    // hash slots and B-tree nodes that are at least half full.
    let entries = 2 * ks.pins.len() * std::mem::size_of::<(u64, usize)>();
    eprintln!(
        "pins: {PINS} pins parsed and validated in {:.2} s; resident memory {} -> {} MiB \
         (text freed); the pin entries hold {:.1} MiB (slots and nodes up to twice that)",
        took.as_secs_f64(),
        rss0 / (1 << 20),
        rss1 / (1 << 20),
        entries as f64 / (1u64 << 20) as f64,
    );
    let mut g = c.benchmark_group("pins");
    let mut w = 0u64;
    g.bench_function("route a pinned workspace among 1M pins", |b| {
        b.iter(|| {
            w = (w + 7919 * 3) % (PINS as u64 * 3);
            black_box(ks.shard_index_for_workspace(black_box(w)))
        })
    });
    g.bench_function("route an unpinned workspace among 1M pins", |b| {
        b.iter(|| {
            w = (w + 7919 * 3) % (PINS as u64 * 3);
            black_box(ks.shard_index_for_workspace(black_box(w + 1)))
        })
    });
    g.finish();
}

fn rss_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<u64>().ok())
        })
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

criterion_group!(
    benches,
    codec,
    planning,
    workspace_counts,
    statement_metrics,
    pins
);
criterion_main!(benches);
