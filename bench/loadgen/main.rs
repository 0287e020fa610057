//! `shardgate-bench`: drives the same workload against the same MariaDB server three
//! ways (direct, through the plain relay, through shardgate), alternating the arms
//! round by round, and prints one table with the ratios. See `bench/README.md`.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod arm;
mod idle;
mod incident;
mod incident_report;
mod probe;
mod setup;
mod stats;
mod syscalls;
mod wave;
mod workload;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use setup::{DataSize, Servers};
use stats::{Arm, Sample};
use workload::Workload;

const USAGE: &str = "\
shardgate-bench: direct vs plain relay vs shardgate, same workload, same server, one run

usage: shardgate-bench [options]
  --workload LIST      point-select,app-mix,bulk-insert (default: all three)
  --connections LIST   client connections, e.g. 1,16,64 (default: 16)
  --duration SECS      measured time per arm and round (default: 10)
  --warmup SECS        unmeasured time before each arm (default: 2)
  --arms LIST          direct,relay,shardgate (default: all three)
  --rounds N           rounds of A B C (default: 3; the table shows medians)
  --seed N             RNG seed (default: 1)
  --workspaces N       workspaces loaded on the measured shard (default: 1000)
  --shards N           local MariaDB servers / shards to start (default: 2)
  --buffer-pool-mb N   InnoDB buffer pool of each started server (default: 256)
  --reuse A,B,...      use running servers (shard 0 is measured) instead of starting them
  --db-user U --db-password P   login for --reuse servers (default: shardgate/shardgate)
  --pool N             shardgate's [pool] max_connections per cluster (default: shardgate's
                       own default, 64: 1,000 clients share at most 64 backend connections)
  --syscalls           count the relay's and shardgate's system calls and context switches
                       per query with `perf stat` over each measured phase (second table;
                       skipped if perf is missing; QPS under perf is not for quoting)
  --backend-tls        the servers serve TLS (a throwaway CA) and shardgate connects to
                       them with [backend_tls] verify_identity; direct and relay stay plain
  --smoke              everything, tiny, ~3 s (for CI); no figures worth quoting
  env SHARDGATE_BENCH_WRAP=\"CMD ARGS\"  runs shardgate under CMD (perf record, strace -c, valgrind)
  env SHARDGATE_BENCH_WRAP_RELAY=\"CMD ARGS\"  the same for the relay

       shardgate-bench servers [--count N] [--buffer-pool-mb N] [--max-connections N]
  starts N local MariaDB servers (user/password shardgate), prints `ready ADDR ...`,
  and keeps them until its standard input closes (used by bench/sysbench.sh)

       shardgate-bench incident [--stall-seconds 60] [--repeat 5] [--smoke]
  freezes one of 4 clusters (SIGSTOP) under live load and prints a per-second timeline
  and when shardgate called it degraded, down and healthy again (`incident --help`)

       shardgate-bench wave [--capture binlog,triggers] [--workspaces 50] [--smoke]
  a wave of column-type changes over every workspace database while clients read and
  write them: failed statements, workspaces with errors, p99 before/during (`wave --help`)

       shardgate-bench idle [--connections 1000,10000] [--rounds 3]
  shardgate's RSS with that many idle logged-in clients (run via bench/idle.sh,
  which raises `ulimit -n`)";

struct Options {
    workloads: Vec<Workload>,
    arms: Vec<Arm>,
    connections: Vec<usize>,
    duration: Duration,
    warmup: Duration,
    rounds: usize,
    seed: u64,
    size: DataSize,
    shards: usize,
    buffer_pool_mb: u32,
    reuse: Option<Vec<String>>,
    db_user: String,
    db_password: String,
    backend_tls: bool,
    syscalls: bool,
    pool: Option<usize>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        workloads: Workload::ALL.to_vec(),
        arms: Arm::ALL.to_vec(),
        connections: vec![16],
        duration: Duration::from_secs(10),
        warmup: Duration::from_secs(2),
        rounds: 3,
        seed: 1,
        size: DataSize {
            workspaces: 1000,
            items: 20,
            conversations: 10,
            messages: 30,
        },
        shards: 2,
        buffer_pool_mb: 256,
        reuse: None,
        db_user: "shardgate".into(),
        db_password: "shardgate".into(),
        backend_tls: false,
        syscalls: false,
        pool: None,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--smoke" {
            o.connections = vec![2];
            o.duration = Duration::from_millis(200);
            o.warmup = Duration::from_millis(50);
            o.rounds = 1;
            o.size = DataSize {
                workspaces: 20,
                items: 5,
                conversations: 3,
                messages: 25,
            };
            o.buffer_pool_mb = 32;
            continue;
        }
        if flag == "--backend-tls" {
            o.backend_tls = true;
            continue;
        }
        if flag == "--syscalls" {
            o.syscalls = true;
            continue;
        }
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
        match flag.as_str() {
            "--workload" => {
                o.workloads = v
                    .split(',')
                    .map(|w| Workload::parse(w).ok_or_else(|| format!("unknown workload {w:?}")))
                    .collect::<Result<_, _>>()?
            }
            "--arms" => {
                o.arms = v
                    .split(',')
                    .map(|a| {
                        Arm::ALL
                            .into_iter()
                            .find(|x| x.name() == a)
                            .ok_or_else(|| format!("unknown arm {a:?}"))
                    })
                    .collect::<Result<_, _>>()?
            }
            "--connections" => {
                o.connections = v
                    .split(',')
                    .map(|c| match c.parse::<usize>() {
                        Ok(n) if (1..=10_000).contains(&n) => Ok(n),
                        _ => Err(format!("--connections: {c:?} is not 1..=10000")),
                    })
                    .collect::<Result<_, _>>()?
            }
            "--duration" => o.duration = Duration::from_secs_f64(num(v)?.clamp(0.05, 3600.0)),
            "--warmup" => o.warmup = Duration::from_secs_f64(num(v)?.clamp(0.0, 600.0)),
            "--rounds" => o.rounds = (num(v)? as usize).clamp(1, 100),
            "--seed" => o.seed = num(v)? as u64,
            "--workspaces" => o.size.workspaces = (num(v)? as usize).clamp(1, 1_000_000),
            "--shards" => o.shards = (num(v)? as usize).clamp(1, 16),
            "--buffer-pool-mb" => o.buffer_pool_mb = (num(v)? as u32).clamp(8, 16_384),
            "--pool" => o.pool = Some((num(v)? as usize).clamp(1, 100_000)),
            "--reuse" => o.reuse = Some(v.split(',').map(str::to_string).collect()),
            "--db-user" => o.db_user = v.clone(),
            "--db-password" => o.db_password = v.clone(),
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(o)
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    type Subcommand = fn(&[String]) -> Result<(), String>;
    let sub: Option<(&str, Subcommand)> = match args.first().map(String::as_str) {
        Some("idle") => Some(("idle", idle::run)),
        Some("incident") => Some(("incident", incident::run)),
        Some("wave") => Some(("wave", wave::run)),
        Some("servers") => Some(("servers", hold_servers)),
        _ => None,
    };
    if let Some((name, run)) = sub {
        return match run(&args[1..]) {
            Ok(()) => ExitCode::SUCCESS,
            Err(msg) => {
                eprintln!("shardgate-bench {name}: {msg}");
                ExitCode::FAILURE
            }
        };
    }
    let opts = match parse_args(&args) {
        Ok(o) => o,
        Err(msg) if msg.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(msg) => {
            eprintln!("shardgate-bench: {msg}\n\n{USAGE}");
            return ExitCode::FAILURE;
        }
    };
    match run(opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(msg) => {
            eprintln!("shardgate-bench: {msg}");
            ExitCode::FAILURE
        }
    }
}

/// MariaDB's `max_connections` (at least) for the bench's servers and for
/// `shardgate-bench servers` (sysbench.sh at 256 threads: the relay's 256, shardgate's
/// pool and the direct arm's leftovers).
const HELD_MAX_CONNECTIONS: usize = 1200;

/// `shardgate-bench servers`: starts servers for a script and stops them (removing
/// their directories) when the script closes our standard input, or after 4 hours.
fn hold_servers(args: &[String]) -> Result<(), String> {
    let (mut count, mut pool_mb, mut max_conns) = (2usize, 256u32, HELD_MAX_CONNECTIONS);
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--count" => count = v.parse().map_err(|e| format!("--count: {e}"))?,
            "--buffer-pool-mb" => {
                pool_mb = v.parse().map_err(|e| format!("--buffer-pool-mb: {e}"))?
            }
            "--max-connections" => {
                max_conns = v.parse().map_err(|e| format!("--max-connections: {e}"))?
            }
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    probe::raise_nofile();
    let servers = Servers::start(
        count.clamp(1, 16),
        pool_mb.clamp(8, 16_384),
        None,
        max_conns.clamp(10, 100_000),
    )?;
    println!("ready {}", servers.addrs.join(" "));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut std::io::sink());
        let _ = tx.send(());
    });
    let _ = rx.recv_timeout(Duration::from_secs(4 * 3600));
    drop(servers);
    Ok(())
}

/// The running pieces one arm is measured against.
struct Rig {
    servers: Servers,
    relay_addr: String,
    proxy_addr: String,
    relay_pid: u32,
    proxy_pid: u32,
    ticks: f64,
    /// Scratch directory (perf's files for `--syscalls`).
    dir: PathBuf,
    /// `--syscalls` and perf is there.
    syscalls: bool,
}

fn run(opts: Options) -> Result<(), String> {
    let max_conns = opts.connections.iter().max().copied().unwrap_or(16);
    // The relay holds two sockets per client; MariaDB and the bench one each.
    let files_needed = 2 * max_conns as u64 + 256;
    match probe::raise_nofile() {
        Some(n) if n < files_needed => {
            return Err(format!(
                "--connections {max_conns} needs {files_needed} open files, the limit is {n} \
                 (raise the hard limit: ulimit -Hn)"
            ))
        }
        Some(_) => {}
        None => eprintln!("bench: cannot read the open-files limit"),
    }
    let syscalls = opts.syscalls
        && {
            let ok = syscalls::perf_available();
            if !ok {
                eprintln!("bench: --syscalls: perf not found (scripts/ensure-deps installs linux-perf); no syscall table");
            }
            ok
        };
    let relay_bin = setup::sibling_binary("shardgate-relay")?;
    let proxy_bin = setup::sibling_binary("shardgate")?;
    let backend_tls = match (opts.backend_tls, &opts.reuse) {
        (false, _) => None,
        (true, None) => Some(setup::BackendTlsMaterial::new()?),
        (true, Some(_)) => return Err("--backend-tls starts its own servers: no --reuse".into()),
    };
    let servers = match &opts.reuse {
        Some(addrs) => Servers::reuse(
            addrs.clone(),
            opts.db_user.clone(),
            opts.db_password.clone(),
        ),
        None => {
            eprintln!("bench: starting {} MariaDB servers", opts.shards);
            let tls = backend_tls.as_ref().map(|m| m.server.clone());
            Servers::start(
                opts.shards,
                opts.buffer_pool_mb,
                tls,
                HELD_MAX_CONNECTIONS.max(max_conns + 200),
            )?
        }
    };
    let dir = std::env::temp_dir().join(format!("shardgate-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _cleanup = RemoveDir(dir.clone());

    let vschema_text = setup::vschema_toml(&servers);
    let vschema = shardgate::vschema::VSchema::from_toml_str(&vschema_text)
        .map_err(|e| format!("bench vschema: {e:?}"))?;
    let workspaces = Arc::new(setup::workspaces_on_first_shard(
        &vschema,
        opts.size.workspaces,
    )?);

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    eprintln!(
        "bench: loading {} workspaces on shard s0 ({})",
        workspaces.len(),
        servers.addrs[0]
    );
    let started = Instant::now();
    rt.block_on(setup::load(&servers, &workspaces, opts.size))?;
    eprintln!("bench: loaded in {:.1} s", started.elapsed().as_secs_f64());

    let relay_addr = setup::free_addr()?;
    let relay_backend = servers.addrs[0].clone();
    let relay = setup::spawn_listening(
        "shardgate-relay",
        &relay_bin,
        &[
            "--listen",
            &relay_addr.to_string(),
            "--backend",
            &relay_backend,
        ],
        &dir.join("relay.log"),
        relay_addr,
    )?;
    let proxy_addr = setup::free_addr()?;
    std::fs::write(dir.join("vschema.toml"), &vschema_text).map_err(|e| e.to_string())?;
    let mut config_text = setup::config_toml(proxy_addr, opts.pool);
    if let Some(m) = &backend_tls {
        std::fs::write(dir.join("backend-ca.pem"), &m.ca_pem).map_err(|e| e.to_string())?;
        config_text
            .push_str("\n[backend_tls]\nmode = \"verify_identity\"\nca = \"backend-ca.pem\"\n");
    }
    let proxy = setup::spawn_proxy(&dir, &proxy_bin, &config_text, proxy_addr)?;
    let rig = Rig {
        relay_addr: relay_addr.to_string(),
        proxy_addr: proxy_addr.to_string(),
        relay_pid: relay.pid(),
        proxy_pid: proxy.pid(),
        ticks: stats::clock_ticks(),
        servers,
        dir: dir.clone(),
        syscalls,
    };

    let mut table = String::new();
    let mut sys_table = String::new();
    let mut notes = String::new();
    for &workload in &opts.workloads {
        for &conns in &opts.connections {
            let mut samples: Vec<(Arm, Vec<Sample>)> =
                opts.arms.iter().map(|a| (*a, Vec::new())).collect();
            for round in 0..opts.rounds {
                for (arm, list) in samples.iter_mut() {
                    let label = format!(
                        "[{} c={conns} round {}/{}] {:<9}",
                        workload.name(),
                        round + 1,
                        opts.rounds,
                        arm.name()
                    );
                    let seed = opts.seed ^ ((round as u64) << 40);
                    let s = rt.block_on(arm::run_arm(
                        &rig,
                        *arm,
                        workload,
                        conns,
                        &opts,
                        &workspaces,
                        seed,
                        &label,
                    ))?;
                    list.push(s);
                }
            }
            let summaries: Vec<(Arm, stats::Summary)> = samples
                .iter()
                .map(|(a, l)| (*a, stats::summarize(l)))
                .collect();
            table.push_str(&stats::rows(workload.name(), conns, &summaries));
            sys_table.push_str(&stats::syscall_rows(workload.name(), conns, &summaries));
            notes.push_str(&note(workload, conns, &summaries));
        }
    }
    drop(proxy);
    drop(relay);

    println!(
        "\nshardgate-bench: {} round(s) of direct / relay / shardgate, {:.1} s each after {:.1} s warm-up; \
         medians over rounds; machine: {} cores, {:.1} GiB; \
         client: shardgate's codec on one current-thread tokio runtime",
        opts.rounds,
        opts.duration.as_secs_f64(),
        opts.warmup.as_secs_f64(),
        std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        mem_total_gib(),
    );
    println!(
        "shardgate: [pool] max_connections {} per cluster{}; backend conns: the most \
         Threads_connected the measured MariaDB showed in the phase (sampled; counts the \
         sampler's own connection and connections shardgate's pool keeps idle between arms)",
        opts.pool.unwrap_or_else(setup::default_pool_max),
        if opts.pool.is_none() {
            " (shardgate's default)"
        } else {
            " (--pool)"
        },
    );
    println!("{}\n{table}\n{notes}", stats::HEADER);
    if syscalls {
        println!(
            "\nsystem calls and context switches per query of the process in between \
             (perf stat -p over each measured phase; medians over rounds)\n{}\n{sys_table}",
            syscalls::HEADER
        );
    }
    Ok(())
}

fn note(workload: Workload, conns: usize, arms: &[(Arm, stats::Summary)]) -> String {
    let get = |arm: Arm| arms.iter().find(|(a, _)| *a == arm).map(|(_, s)| s);
    let (Some(d), Some(r), Some(s)) = (get(Arm::Direct), get(Arm::Relay), get(Arm::Shardgate))
    else {
        return String::new();
    };
    let div = |a: Option<f64>, b: Option<f64>| match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => format!("{:.2}", a / b),
        _ => "-".into(),
    };
    let added = match (s.p50, d.p50) {
        (Some(a), Some(b)) => format!("{:.0}", a - b),
        _ => "-".into(),
    };
    // µs per query in user space / in the kernel.
    let split = |x: &stats::Summary| match (x.proxy_user_cpu_1k, x.proxy_cpu_1k) {
        (Some(u), Some(t)) => format!("{:.1} / {:.1}", u * 1000.0, (t - u) * 1000.0),
        _ => "-".into(),
    };
    format!(
        "{} c={conns}: QPS shardgate/direct {}, shardgate/relay {}, relay/direct {}; \
         CPU per query shardgate/relay {} (user / kernel µs: shardgate {}, relay {}); \
         p50 added over direct {added} µs\n",
        workload.name(),
        div(s.qps, d.qps),
        div(s.qps, r.qps),
        div(r.qps, d.qps),
        div(s.proxy_cpu_1k, r.proxy_cpu_1k),
        split(s),
        split(r),
    )
}

fn mem_total_gib() -> f64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / (1024.0 * 1024.0))
        .unwrap_or(0.0)
}

/// Removes the bench's scratch directory when the run ends, however it ends.
pub(crate) struct RemoveDir(pub(crate) PathBuf);

impl Drop for RemoveDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
