//! `shardgate-pins-bench`: a million pins in the file topology store, loaded into the
//! pin directory. Writes `--pins N` pins (default 1,000,000) to a fresh FileTopo
//! directory in its bucket format (`<dir>/pins/<keyspace>/<B>.pins`, `workspace shard`
//! lines), then times `load_pins` and building the directory, and prints the time and
//! the process's memory (VmRSS growth and VmHWM from /proc/self/status). Then point
//! lookups, a range scan, one pin change, and a snapshot clone.
//!
//! ```text
//! cargo run --release --bin shardgate-pins-bench -- [--pins N] [--dir PATH]
//! ```
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

use std::io::Write as _;
use std::time::Instant;

use shardgate::topo::file::{FileTopo, PIN_BUCKETS};
use shardgate::topo::Topo;
use shardgate::vschema::VSchema;

const SHARDS: [&str; 4] = ["-40", "40-80", "80-c0", "c0-"];

fn status_kib(field: &str) -> u64 {
    let text = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    text.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// A pseudo-random sequence (splitmix64), so the bench needs no RNG crate state.
fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn write_pins(dir: &std::path::Path, n: u64) -> std::io::Result<()> {
    let root = dir.join("pins").join("app");
    std::fs::create_dir_all(&root)?;
    let mut buckets: Vec<String> = vec![String::new(); PIN_BUCKETS as usize];
    // Workspace ids spread over 0..n*8, as real ids are.
    for i in 0..n {
        let ws = i * 8 + mix(i) % 8;
        let shard = SHARDS[(mix(ws) % 4) as usize];
        let b = &mut buckets[(ws % PIN_BUCKETS) as usize];
        b.push_str(&ws.to_string());
        b.push(' ');
        b.push_str(shard);
        b.push('\n');
    }
    for (i, text) in buckets.iter().enumerate() {
        std::fs::File::create(root.join(format!("{i}.pins")))?.write_all(text.as_bytes())?;
    }
    Ok(())
}

fn vschema() -> VSchema {
    let shards: Vec<String> = SHARDS
        .iter()
        .enumerate()
        .map(|(i, s)| format!("{{ name = \"{s}\", cluster = \"c1\", database = \"d{i}\" }}"))
        .collect();
    let text = format!(
        "[clusters.c1]\nprimary = \"127.0.0.1:1\"\nuser = \"u\"\npassword = \"p\"\n\
         [keyspaces.app]\nsharded = true\nvindex = \"xxhash\"\nshards = [{}]\n",
        shards.join(", ")
    );
    match VSchema::from_toml_str(&text) {
        Ok(v) => v,
        Err(e) => panic!("bench vschema: {e}"),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let mut n: u64 = 1_000_000;
    let mut dir: Option<std::path::PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--pins" => n = args.next().and_then(|v| v.parse().ok()).expect("--pins N"),
            "--dir" => dir = args.next().map(Into::into),
            other => panic!("unknown argument {other}: [--pins N] [--dir PATH]"),
        }
    }
    let own_dir = dir.is_none();
    let dir = dir.unwrap_or_else(|| {
        std::env::temp_dir().join(format!("shardgate-pins-bench-{}", std::process::id()))
    });
    let _ = std::fs::remove_dir_all(&dir);
    let t = Instant::now();
    write_pins(&dir, n).expect("write the pin buckets");
    println!(
        "wrote {n} pins in {} buckets: {:.2} s",
        PIN_BUCKETS,
        t.elapsed().as_secs_f64()
    );

    let vs = vschema();
    let topo = FileTopo::new(dir.clone());
    let rss_before = status_kib("VmRSS:");
    let t = Instant::now();
    let loaded = topo.load_pins().await.expect("load_pins");
    let t_load = t.elapsed();
    let installed = shardgate::control::pins::install(&vs, loaded);
    let t_total = t.elapsed();
    let rss_after = status_kib("VmRSS:");
    println!(
        "load_pins {:.3} s, + directory {:.3} s = {:.3} s for {installed} pins",
        t_load.as_secs_f64(),
        (t_total - t_load).as_secs_f64(),
        t_total.as_secs_f64()
    );
    println!(
        "RSS before {:.1} MiB, after {:.1} MiB (growth {:.1} MiB), peak (VmHWM) {:.1} MiB",
        mib(rss_before),
        mib(rss_after),
        mib(rss_after.saturating_sub(rss_before)),
        mib(status_kib("VmHWM:"))
    );

    let ks = &vs.keyspaces["app"];
    let lookups = 2_000_000u64;
    let t = Instant::now();
    let mut hits = 0u64;
    for i in 0..lookups {
        let ws = mix(i) % (n * 8);
        if ks.pin_of(ws).is_some() {
            hits += 1;
        }
    }
    println!(
        "point lookup: {:.0} ns each ({hits} of {lookups} pinned)",
        t.elapsed().as_nanos() as f64 / lookups as f64
    );
    let empty = vschema();
    let eks = &empty.keyspaces["app"];
    let t = Instant::now();
    let mut sum = 0usize;
    for i in 0..lookups {
        sum = sum.wrapping_add(eks.shard_index_for_workspace(mix(i)));
    }
    println!(
        "shard_index_for_workspace, empty directory (vindex only): {:.0} ns each ({sum})",
        t.elapsed().as_nanos() as f64 / lookups as f64
    );
    let t = Instant::now();
    let mut sum = 0usize;
    for i in 0..lookups {
        sum = sum.wrapping_add(ks.shard_index_for_workspace(mix(i) % (n * 8)));
    }
    println!(
        "shard_index_for_workspace, {n} pins: {:.0} ns each ({sum})",
        t.elapsed().as_nanos() as f64 / lookups as f64
    );
    // For comparison: the document's PinMap kind of index, a hash map of the same pins.
    let rss = status_kib("VmRSS:");
    let map: std::collections::HashMap<u64, u32> = ks.directory.to_vec().into_iter().collect();
    let map_mib = mib(status_kib("VmRSS:").saturating_sub(rss));
    let t = Instant::now();
    let mut hits = 0u64;
    for i in 0..lookups {
        if map.contains_key(&(mix(i) % (n * 8))) {
            hits += 1;
        }
    }
    println!(
        "for comparison, std HashMap<u64, u32> of the same pins: {:.0} ns each ({hits} pinned), ~{map_mib:.1} MiB",
        t.elapsed().as_nanos() as f64 / lookups as f64
    );
    drop(map);
    let t = Instant::now();
    let mut in_range = 0;
    ks.directory.visit_range(1000, 1000 + 80_000, |_, _| {
        in_range += 1;
        true
    });
    println!(
        "range scan of {in_range} pins: {:.1} µs",
        t.elapsed().as_nanos() as f64 / 1000.0
    );
    let t = Instant::now();
    for i in 0..1000u64 {
        ks.directory.set(mix(i) % (n * 8), Some((i % 4) as usize));
    }
    println!(
        "pin change in memory: {:.1} µs each (1000 changes, overlay {})",
        t.elapsed().as_nanos() as f64 / 1000.0 / 1000.0,
        ks.directory.overlay_len()
    );
    let t = Instant::now();
    let copy = vs.clone();
    println!(
        "snapshot clone (VSchema::clone): {:.1} µs, shares the directory: {}",
        t.elapsed().as_nanos() as f64 / 1000.0,
        copy.keyspaces["app"].directory.same(&ks.directory)
    );
    let t = Instant::now();
    topo.set_pin(shardgate::topo::PinChange {
        keyspace: "app".into(),
        workspace: 12345,
        shard: Some("80-c0".into()),
    })
    .await
    .expect("set_pin");
    println!(
        "one pin change in the file store (one bucket rewritten, fsync): {:.2} ms",
        t.elapsed().as_secs_f64() * 1000.0
    );
    if own_dir {
        let _ = std::fs::remove_dir_all(&dir);
    }
}
