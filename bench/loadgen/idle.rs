//! `shardgate-bench idle`: shardgate's resident memory per idle client connection.
//! Each round starts a fresh shardgate, logs in a few connections as a baseline, then
//! holds 1,000 and then 10,000 logged-in idle connections and reads its RSS.

use std::time::Duration;

use shardgate::backend::BackendConn;

use crate::setup::{self, Servers};
use crate::stats;

/// Connections logged in before the baseline is read (warms the allocator and runtime).
const BASELINE_CONNS: usize = 10;
/// Logins in flight at once.
const BATCH: usize = 200;

pub fn run(args: &[String]) -> Result<(), String> {
    let mut levels = vec![1_000usize, 10_000];
    let mut rounds = 3usize;
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--connections" => {
                levels = v
                    .split(',')
                    .map(|c| {
                        c.parse::<usize>()
                            .map_err(|e| format!("--connections: {e}"))
                    })
                    .collect::<Result<_, _>>()?;
                levels.sort_unstable();
            }
            "--rounds" => rounds = v.parse::<usize>().map_err(|e| e.to_string())?.clamp(1, 20),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    if levels.iter().any(|n| *n > 30_000) {
        return Err("at most 30000 connections".into());
    }
    let proxy_bin = setup::sibling_binary("shardgate")?;
    let servers = Servers::start(1, 32, None, 300)?;
    let dir = std::env::temp_dir().join(format!("shardgate-bench-idle-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let _cleanup = crate::RemoveDir(dir.clone());
    std::fs::write(dir.join("vschema.toml"), setup::vschema_toml(&servers))
        .map_err(|e| e.to_string())?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // per level: bytes per connection of each round
    let mut per_conn: Vec<Vec<f64>> = vec![Vec::new(); levels.len()];
    let mut totals: Vec<Vec<f64>> = vec![Vec::new(); levels.len()];
    for round in 0..rounds {
        let addr = setup::free_addr()?;
        let proxy = setup::spawn_proxy(&dir, &proxy_bin, &setup::config_toml(addr, Some(8)), addr)?;
        let addr = addr.to_string();
        let mut held: Vec<BackendConn> = Vec::new();
        rt.block_on(open(&addr, BASELINE_CONNS, &mut held))?;
        std::thread::sleep(Duration::from_millis(500));
        let base = stats::rss_bytes(proxy.pid()).ok_or("cannot read shardgate's RSS")?;
        for (i, &level) in levels.iter().enumerate() {
            let want = level + BASELINE_CONNS;
            rt.block_on(open(&addr, want - held.len(), &mut held))?;
            std::thread::sleep(Duration::from_millis(1000));
            let rss = stats::rss_bytes(proxy.pid()).ok_or("cannot read shardgate's RSS")?;
            let per = (rss.saturating_sub(base)) as f64 / level as f64;
            eprintln!(
                "round {}/{rounds}: {level} idle connections: shardgate RSS {:.1} MiB (baseline {:.1} MiB), {:.0} bytes per connection",
                round + 1,
                rss as f64 / 1048576.0,
                base as f64 / 1048576.0,
                per
            );
            per_conn[i].push(per);
            totals[i].push(rss as f64);
        }
        drop(held);
        drop(proxy);
    }
    println!("| idle client connections | shardgate RSS MiB | bytes per connection | KiB per connection |");
    println!("| ---: | ---: | ---: | ---: |");
    for (i, level) in levels.iter().enumerate() {
        let per = stats::median(per_conn[i].clone()).unwrap_or(f64::NAN);
        let total = stats::median(totals[i].clone()).unwrap_or(f64::NAN);
        println!(
            "| {level} | {:.1} | {per:.0} | {:.1} |",
            total / 1048576.0,
            per / 1024.0
        );
    }
    println!("(medians of {rounds} rounds; per connection = (RSS - RSS with {BASELINE_CONNS} connections) / N)");
    Ok(())
}

async fn open(addr: &str, count: usize, held: &mut Vec<BackendConn>) -> Result<(), String> {
    let mut left = count;
    while left > 0 {
        let n = left.min(BATCH);
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let addr = addr.to_string();
            tasks.push(tokio::spawn(async move {
                setup::connect(
                    &addr,
                    setup::PROXY_USER,
                    setup::PROXY_PASSWORD,
                    Some(setup::DATABASE),
                )
                .await
            }));
        }
        for t in tasks {
            held.push(t.await.map_err(|e| e.to_string())??);
        }
        left -= n;
    }
    Ok(())
}
