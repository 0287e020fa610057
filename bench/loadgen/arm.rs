//! One arm of one round: connect the clients, warm up, measure (with the
//! `Threads_connected` sampler and, with `--syscalls`, perf attached to the process in
//! between), and say how it went: a progress line every 0.5 s on a terminal, one plain
//! line per arm otherwise.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate::backend::BackendConn;

use crate::probe::ThreadsSampler;
use crate::setup;
use crate::stats::{self, Arm, Sample};
use crate::syscalls::PerfStat;
use crate::workload::{self, Generator, Workload};
use crate::{Options, Rig};

/// Client connections opened at once (a connection storm of 1,000 would overflow
/// listen backlogs and login limits on the way in, which is not what is measured).
const CONNECT_BATCH: usize = 50;

#[allow(clippy::too_many_arguments)]
pub(crate) async fn run_arm(
    rig: &Rig,
    arm: Arm,
    workload: Workload,
    conns: usize,
    opts: &Options,
    workspaces: &Arc<Vec<u64>>,
    seed: u64,
    label: &str,
) -> Result<Sample, String> {
    let s = &rig.servers;
    let (addr, user, password, proxy_pid) = match arm {
        Arm::Direct => (
            s.addrs[0].as_str(),
            s.user.as_str(),
            s.password.as_str(),
            None,
        ),
        Arm::Relay => (
            rig.relay_addr.as_str(),
            s.user.as_str(),
            s.password.as_str(),
            Some(rig.relay_pid),
        ),
        Arm::Shardgate => (
            rig.proxy_addr.as_str(),
            setup::PROXY_USER,
            setup::PROXY_PASSWORD,
            Some(rig.proxy_pid),
        ),
    };
    let conns_open = connect_all(arm, addr, user, password, conns).await?;
    let mut clients: Vec<(BackendConn, Generator)> = conns_open
        .into_iter()
        .enumerate()
        .map(|(i, conn)| {
            let g = Generator::new(workload, workspaces.clone(), opts.size, seed ^ i as u64);
            (conn, g)
        })
        .collect();
    let tty = std::io::stderr().is_terminal();
    let progress = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let ticker = tty.then(|| {
        let progress = progress.clone();
        let done = done.clone();
        let label = label.to_string();
        let total = opts.warmup + opts.duration;
        tokio::spawn(async move {
            let start = Instant::now();
            while !done.load(Ordering::Relaxed) && start.elapsed() < total + Duration::from_secs(30)
            {
                let q = progress.load(Ordering::Relaxed);
                eprint!(
                    "\r{label} {:5.1}/{:.1} s {q:>9} queries  ",
                    start.elapsed().as_secs_f64(),
                    total.as_secs_f64()
                );
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    });
    let result = phases(rig, arm, workload, opts, proxy_pid, &mut clients, &progress).await;
    done.store(true, Ordering::Relaxed);
    if let Some(t) = ticker {
        let _ = t.await;
    }
    let result = result?;
    let line = format!(
        "{label} {:>9.0} QPS  p50 {:>6.0} µs  p99 {:>6.0} µs  errors {}  backend conns {}",
        result.qps(),
        result.latency_us(0.5),
        result.latency_us(0.99),
        result.errors,
        result
            .backend_conns
            .map_or_else(|| "-".to_string(), |n| n.to_string()),
    );
    if tty {
        eprintln!("\r{line}          ");
    } else {
        eprintln!("{line}");
    }
    Ok(result)
}

/// Opens `conns` client connections, [`CONNECT_BATCH`] at a time.
async fn connect_all(
    arm: Arm,
    addr: &str,
    user: &str,
    password: &str,
    conns: usize,
) -> Result<Vec<BackendConn>, String> {
    let mut out = Vec::with_capacity(conns);
    while out.len() < conns {
        let n = (conns - out.len()).min(CONNECT_BATCH);
        let mut tasks = Vec::with_capacity(n);
        for _ in 0..n {
            let (addr, user, password) = (addr.to_string(), user.to_string(), password.to_string());
            tasks.push(tokio::spawn(async move {
                setup::connect(&addr, &user, &password, Some(setup::DATABASE)).await
            }));
        }
        for t in tasks {
            let i = out.len();
            let conn = t
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("{} connection {i}: {e}", arm.name()))?;
            out.push(conn);
        }
    }
    Ok(out)
}

/// Warm-up, then the measured phase, on the same connections; the measured phase's
/// sample.
async fn phases(
    rig: &Rig,
    arm: Arm,
    workload: Workload,
    opts: &Options,
    proxy_pid: Option<u32>,
    clients: &mut Vec<(BackendConn, Generator)>,
    progress: &Arc<AtomicU64>,
) -> Result<Sample, String> {
    let s = &rig.servers;
    let conns = clients.len();
    let mut result = Sample::default();
    for measured in [false, true] {
        let phase = if measured { opts.duration } else { opts.warmup };
        if phase.is_zero() {
            continue;
        }
        let sampler = if measured {
            let every = (phase / 5).clamp(Duration::from_millis(200), Duration::from_secs(2));
            Some(ThreadsSampler::start(&s.addrs[0], &s.user, &s.password, every).await?)
        } else {
            None
        };
        let mut perf = match (measured && rig.syscalls, proxy_pid) {
            (true, Some(pid)) => start_perf(pid, rig, arm, workload, conns),
            _ => None,
        };
        let proxy_cpu0 = proxy_pid.and_then(|p| stats::cpu_split(p, rig.ticks));
        let server_cpu0 = s
            .measured_pid()
            .and_then(|p| stats::cpu_seconds(p, rig.ticks));
        let start = Instant::now();
        let until = start + phase;
        let mut tasks = Vec::with_capacity(conns);
        for (mut conn, mut generator) in clients.drain(..) {
            let progress = progress.clone();
            tasks.push(tokio::spawn(async move {
                let r = workload::drive(
                    &mut conn,
                    &mut generator,
                    until,
                    50_000_000,
                    progress,
                    measured,
                )
                .await;
                (conn, generator, r)
            }));
        }
        let mut latencies = Vec::new();
        let (mut queries, mut errors) = (0, 0);
        let mut broken = None;
        for t in tasks {
            let (conn, generator, r) = t.await.map_err(|e| e.to_string())?;
            if let Some(why) = r.broken {
                broken.get_or_insert(why);
            }
            queries += r.queries;
            errors += r.errors;
            latencies.extend(r.latencies);
            clients.push((conn, generator));
        }
        let elapsed = start.elapsed();
        let syscalls = perf.take().and_then(|p| match p.finish() {
            Ok(c) => Some(c),
            Err(e) => {
                eprintln!("bench: --syscalls: {e}");
                None
            }
        });
        let backend_conns = match sampler {
            Some(x) => x.finish().await,
            None => None,
        };
        if let Some(why) = broken {
            return Err(format!("{} connection broke: {why}", arm.name()));
        }
        if measured {
            let delta = |pid: Option<u32>, before: Option<f64>| {
                let after = pid.and_then(|p| stats::cpu_seconds(p, rig.ticks))?;
                Some(after - before?)
            };
            let proxy_delta = proxy_pid
                .and_then(|p| stats::cpu_split(p, rig.ticks))
                .zip(proxy_cpu0)
                .map(|((u1, k1), (u0, k0))| (u1 - u0, k1 - k0));
            latencies.sort_unstable();
            result = Sample {
                queries,
                errors,
                elapsed,
                latencies,
                proxy_cpu: proxy_delta.map(|(u, k)| u + k),
                proxy_user_cpu: proxy_delta.map(|(u, _)| u),
                server_cpu: delta(s.measured_pid(), server_cpu0),
                proxy_rss: if arm == Arm::Shardgate {
                    stats::rss_bytes(rig.proxy_pid)
                } else {
                    None
                },
                backend_conns,
                syscalls,
            };
        }
    }
    Ok(result)
}

/// perf attached to `pid` and counting, or None (said why) if that failed: the run
/// goes on without this phase's syscall figures.
fn start_perf(pid: u32, rig: &Rig, arm: Arm, workload: Workload, conns: usize) -> Option<PerfStat> {
    let tag = format!("{}-{}-{conns}", arm.name(), workload.name());
    let started = PerfStat::start(pid, &rig.dir, &tag).and_then(|mut p| {
        p.enable()?;
        Ok(p)
    });
    match started {
        Ok(p) => Some(p),
        Err(e) => {
            eprintln!("bench: --syscalls: {e}");
            None
        }
    }
}
