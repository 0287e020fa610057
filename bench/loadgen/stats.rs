//! What one arm of one round measured, medians over rounds, and the table.

use std::fmt::Write as _;
use std::time::Duration;

/// The three ways the same workload reaches the same MariaDB server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Arm {
    /// Straight to the shard.
    Direct,
    /// Through `shardgate-relay` (a plain tokio byte pipe) to the shard.
    Relay,
    /// Through shardgate, to workspaces that all live on that shard.
    Shardgate,
}

impl Arm {
    pub const ALL: [Arm; 3] = [Arm::Direct, Arm::Relay, Arm::Shardgate];

    pub fn name(self) -> &'static str {
        match self {
            Arm::Direct => "direct",
            Arm::Relay => "relay",
            Arm::Shardgate => "shardgate",
        }
    }
}

/// One arm, one round.
#[derive(Debug, Clone, Default)]
pub struct Sample {
    pub queries: u64,
    pub errors: u64,
    pub elapsed: Duration,
    /// Latencies in nanoseconds, sorted.
    pub latencies: Vec<u64>,
    /// CPU seconds the proxy process (relay or shardgate) spent during the arm.
    pub proxy_cpu: Option<f64>,
    /// The user-space part of `proxy_cpu` (the rest is the kernel's, on the proxy's behalf).
    pub proxy_user_cpu: Option<f64>,
    /// CPU seconds the MariaDB server spent during the arm.
    pub server_cpu: Option<f64>,
    /// shardgate's resident set at the end of the arm, bytes.
    pub proxy_rss: Option<u64>,
    /// The most `Threads_connected` the measured server showed during the arm.
    pub backend_conns: Option<u64>,
    /// `--syscalls`: what the relay or shardgate did during the arm.
    pub syscalls: Option<crate::syscalls::Counts>,
}

impl Sample {
    pub fn qps(&self) -> f64 {
        self.queries as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// Latency at quantile `q` (0..=1), microseconds.
    pub fn latency_us(&self, q: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        let rank =
            ((self.latencies.len() as f64 * q).ceil() as usize).clamp(1, self.latencies.len());
        self.latencies[rank - 1] as f64 / 1000.0
    }

    /// CPU seconds per 1,000 queries.
    pub fn per_1k(cpu: Option<f64>, queries: u64) -> Option<f64> {
        cpu.filter(|_| queries > 0)
            .map(|c| c * 1000.0 / queries as f64)
    }
}

/// Median of what is there (NaN-free values only).
pub fn median(mut v: Vec<f64>) -> Option<f64> {
    v.retain(|x| x.is_finite());
    if v.is_empty() {
        return None;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    Some(if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    })
}

/// The medians of one arm over its rounds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    pub qps: Option<f64>,
    pub p50: Option<f64>,
    pub p99: Option<f64>,
    pub p999: Option<f64>,
    pub proxy_cpu_1k: Option<f64>,
    pub proxy_user_cpu_1k: Option<f64>,
    pub server_cpu_1k: Option<f64>,
    pub rss: Option<f64>,
    pub backend_conns: Option<f64>,
    /// Per query, in the order of [`crate::syscalls::Counts::values`].
    pub syscalls_per_query: Option<Vec<f64>>,
    pub errors: u64,
}

pub fn summarize(samples: &[Sample]) -> Summary {
    let col = |f: &dyn Fn(&Sample) -> Option<f64>| median(samples.iter().filter_map(f).collect());
    Summary {
        qps: col(&|s| Some(s.qps())),
        p50: col(&|s| Some(s.latency_us(0.50))),
        p99: col(&|s| Some(s.latency_us(0.99))),
        p999: col(&|s| Some(s.latency_us(0.999))),
        proxy_cpu_1k: col(&|s| Sample::per_1k(s.proxy_cpu, s.queries)),
        proxy_user_cpu_1k: col(&|s| Sample::per_1k(s.proxy_user_cpu, s.queries)),
        server_cpu_1k: col(&|s| Sample::per_1k(s.server_cpu, s.queries)),
        rss: col(&|s| s.proxy_rss.map(|b| b as f64)),
        backend_conns: col(&|s| s.backend_conns.map(|n| n as f64)),
        syscalls_per_query: syscalls_per_query(samples),
        errors: samples.iter().map(|s| s.errors).sum(),
    }
}

/// Medians over the rounds of each count per query (rounds without a reading left out).
fn syscalls_per_query(samples: &[Sample]) -> Option<Vec<f64>> {
    let per_query: Vec<[f64; 10]> = samples
        .iter()
        .filter(|s| s.queries > 0)
        .filter_map(|s| {
            let c = s.syscalls?;
            Some(c.values().map(|v| v as f64 / s.queries as f64))
        })
        .collect();
    if per_query.is_empty() {
        return None;
    }
    (0..10)
        .map(|i| median(per_query.iter().map(|v| v[i]).collect()))
        .collect()
}

pub const HEADER: &str = "| workload | conns | arm | QPS | p50 µs | p99 µs | p999 µs | proxy CPU s/1k q | mariadbd CPU s/1k q | shardgate RSS MiB | backend conns | QPS vs direct | QPS vs relay | CPU vs relay | errors |\n| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";

fn f(v: Option<f64>, decimals: usize) -> String {
    match v {
        Some(x) => format!("{x:.decimals$}"),
        None => "-".to_string(),
    }
}

fn ratio(a: Option<f64>, b: Option<f64>) -> Option<f64> {
    match (a, b) {
        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
        _ => None,
    }
}

/// The table rows (one per arm) of one workload at one connection count.
pub fn rows(workload: &str, conns: usize, arms: &[(Arm, Summary)]) -> String {
    let get = |arm: Arm| arms.iter().find(|(a, _)| *a == arm).map(|(_, s)| s);
    let direct = get(Arm::Direct);
    let relay = get(Arm::Relay);
    let mut out = String::new();
    for (arm, s) in arms {
        let (vs_direct, vs_relay, cpu_vs_relay) = match arm {
            Arm::Direct => (None, None, None),
            _ => (
                ratio(s.qps, direct.and_then(|d| d.qps)),
                if *arm == Arm::Shardgate {
                    ratio(s.qps, relay.and_then(|r| r.qps))
                } else {
                    None
                },
                if *arm == Arm::Shardgate {
                    ratio(s.proxy_cpu_1k, relay.and_then(|r| r.proxy_cpu_1k))
                } else {
                    None
                },
            ),
        };
        let _ = writeln!(
            out,
            "| {workload} | {conns} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            arm.name(),
            f(s.qps, 0),
            f(s.p50, 0),
            f(s.p99, 0),
            f(s.p999, 0),
            f(s.proxy_cpu_1k, 4),
            f(s.server_cpu_1k, 4),
            f(s.rss.map(|b| b / (1024.0 * 1024.0)), 1),
            f(s.backend_conns, 0),
            f(vs_direct, 2),
            f(vs_relay, 2),
            f(cpu_vs_relay, 2),
            s.errors,
        );
    }
    out
}

/// The `--syscalls` rows (per query) of one workload at one connection count: arms
/// with a reading only (the direct arm has no process in between).
pub fn syscall_rows(workload: &str, conns: usize, arms: &[(Arm, Summary)]) -> String {
    let mut out = String::new();
    for (arm, s) in arms {
        let Some(v) = &s.syscalls_per_query else {
            continue;
        };
        let cells: Vec<String> = v.iter().map(|x| format!("{x:.2}")).collect();
        let _ = writeln!(
            out,
            "| {workload} | {conns} | {} | {} |",
            arm.name(),
            cells.join(" | ")
        );
    }
    out
}

/// CPU seconds (user + system) a process has used, from `/proc/PID/stat`.
pub fn cpu_seconds(pid: u32, ticks_per_second: f64) -> Option<f64> {
    cpu_split(pid, ticks_per_second).map(|(user, system)| user + system)
}

/// CPU seconds a process has used in user space and in the kernel, from `/proc/PID/stat`.
pub fn cpu_split(pid: u32, ticks_per_second: f64) -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields we want follow its closing paren.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime / ticks_per_second, stime / ticks_per_second))
}

/// Resident set size of a process in bytes, from `/proc/PID/status`.
pub fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Clock ticks per second for `/proc` CPU times (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> f64 {
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100.0)
}
