//! What an incident replay saw, as a per-second timeline, a summary, and a table of
//! runs with medians (`shardgate-bench incident`).

use std::fmt::Write as _;
use std::time::Duration;

use crate::incident::Options;
use crate::stats::median;

/// How one statement ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Ok,
    /// `ERROR 1053`: shardgate refused it at once because its cluster is not serving.
    FailFast,
    /// Any other error, or a broken connection.
    Error,
    /// No answer within the client timeout.
    Timeout,
}

/// One statement a client sent.
#[derive(Debug, Clone, Copy)]
pub struct Event {
    /// When it ended, µs since the replay began.
    pub at_us: u64,
    pub latency_us: u64,
    /// The cluster its workspace lives on (0..4).
    pub cluster: u8,
    pub outcome: Outcome,
}

/// A change of one cluster's `Health` in `SHOW CLUSTERS`, as the poller saw it.
#[derive(Debug, Clone)]
pub struct Transition {
    /// When the poll that saw it was sent, since the replay began.
    pub at: Duration,
    pub cluster: usize,
    pub from: String,
    pub to: String,
}

/// Everything one replay recorded.
#[derive(Debug)]
pub struct Run {
    /// Index of the frozen cluster.
    pub stalled: usize,
    pub clusters: usize,
    pub warmup: Duration,
    /// SIGSTOP and SIGCONT, since the replay began.
    pub stall_at: Duration,
    pub resume_at: Duration,
    pub load_end: Duration,
    /// Sorted by `at_us`.
    pub events: Vec<Event>,
    pub transitions: Vec<Transition>,
    pub poll_errors: u64,
    pub reconnects: u64,
}

/// The figures issue 9 asks for, of one replay. Times are seconds.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// SIGSTOP to the first poll that saw the frozen cluster not healthy.
    pub to_degraded: Option<f64>,
    /// SIGSTOP to the first poll that saw it down.
    pub to_down: Option<f64>,
    /// SIGSTOP to the first ERROR 1053 a client got.
    pub to_first_fail_fast: Option<f64>,
    /// SIGCONT to the first poll that saw it healthy again.
    pub to_healthy: Option<f64>,
    /// Errors and timeouts of statements for the other clusters between SIGSTOP and
    /// SIGCONT, and over the whole replay.
    pub healthy_errors_stall: u64,
    pub healthy_errors_total: u64,
    /// p99 (ms) of the other clusters' statements before the stall, during it, and
    /// during it once the frozen cluster was down.
    pub p99_before: Option<f64>,
    pub p99_stall: Option<f64>,
    pub p99_stall_down: Option<f64>,
    /// Statements per second on the other clusters before and during the stall.
    pub qps_before: f64,
    pub qps_stall: f64,
    /// The frozen cluster's statements between SIGSTOP and SIGCONT, by outcome.
    pub stalled_fail_fast: u64,
    pub stalled_timeouts: u64,
    pub stalled_errors: u64,
}

impl Summary {
    pub fn went_down(&self) -> bool {
        self.to_down.is_some()
    }

    pub fn came_back(&self) -> bool {
        self.to_healthy.is_some()
    }

    pub fn p99_ratio(&self) -> Option<f64> {
        match (self.p99_stall, self.p99_before) {
            (Some(a), Some(b)) if b > 0.0 => Some(a / b),
            _ => None,
        }
    }
}

fn us(d: Duration) -> u64 {
    d.as_micros() as u64
}

/// p99 in ms of the latencies (µs) of `events` (nearest rank).
fn p99_ms<'a>(events: impl Iterator<Item = &'a Event>) -> Option<f64> {
    let mut v: Vec<u64> = events.map(|e| e.latency_us).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_unstable();
    let rank = ((v.len() as f64 * 0.99).ceil() as usize).clamp(1, v.len());
    Some(v[rank - 1] as f64 / 1000.0)
}

fn first_transition(run: &Run, after: Duration, to: &[&str]) -> Option<Duration> {
    run.transitions
        .iter()
        .find(|t| t.cluster == run.stalled && t.at >= after && to.contains(&t.to.as_str()))
        .map(|t| t.at)
}

pub fn summarize(run: &Run) -> Summary {
    let secs = |from: Duration, to: Option<Duration>| to.map(|t| (t - from).as_secs_f64());
    let degraded_at = first_transition(run, run.stall_at, &["degraded", "down"]);
    let down_at = first_transition(run, run.stall_at, &["down"]);
    let healthy_at = first_transition(run, run.resume_at, &["healthy"]);
    let (stall, resume) = (us(run.stall_at), us(run.resume_at));
    let stalled = run.stalled as u8;
    let first_fail_fast = run
        .events
        .iter()
        .find(|e| e.at_us >= stall && e.outcome == Outcome::FailFast)
        .map(|e| Duration::from_micros(e.at_us));
    let healthy = || run.events.iter().filter(move |e| e.cluster != stalled);
    let ok = |e: &&Event| e.outcome == Outcome::Ok;
    let within = |a: u64, b: u64| move |e: &&Event| e.at_us >= a && e.at_us < b;
    // The first second (or third of the warm-up) is connections opening and cold
    // caches; "before" starts after it.
    let before_from = us(Duration::from_secs(1).min(run.warmup / 3));
    let stall_window = within(stall, resume);
    let window_s = |a: u64, b: u64| (b.saturating_sub(a) as f64 / 1e6).max(1e-9);
    let not_ok = |e: &&Event| e.outcome != Outcome::Ok;
    let count_stalled = |o: Outcome| {
        run.events
            .iter()
            .filter(|e| e.cluster == stalled && e.at_us >= stall && e.at_us < resume)
            .filter(|e| e.outcome == o)
            .count() as u64
    };
    Summary {
        to_degraded: secs(run.stall_at, degraded_at),
        to_down: secs(run.stall_at, down_at),
        to_first_fail_fast: secs(run.stall_at, first_fail_fast),
        to_healthy: secs(run.resume_at, healthy_at),
        healthy_errors_stall: healthy().filter(stall_window).filter(not_ok).count() as u64,
        healthy_errors_total: healthy().filter(not_ok).count() as u64,
        p99_before: p99_ms(healthy().filter(within(before_from, stall)).filter(ok)),
        p99_stall: p99_ms(healthy().filter(stall_window).filter(ok)),
        p99_stall_down: down_at
            .and_then(|d| p99_ms(healthy().filter(within(us(d), resume)).filter(ok))),
        qps_before: healthy().filter(within(before_from, stall)).count() as f64
            / window_s(before_from, stall),
        qps_stall: healthy().filter(stall_window).count() as f64 / window_s(stall, resume),
        stalled_fail_fast: count_stalled(Outcome::FailFast),
        stalled_timeouts: count_stalled(Outcome::Timeout),
        stalled_errors: count_stalled(Outcome::Error),
    }
}

fn opt(v: Option<f64>, decimals: usize) -> String {
    v.map_or_else(|| "-".to_string(), |x| format!("{x:.decimals$}"))
}

/// Per second, per cluster: statements that ended in it, how many failed (errors,
/// 1053s and timeouts), their p99 in ms; and what happened in that second.
pub fn timeline(run: &Run) -> String {
    let mut out = String::new();
    let _ = write!(out, "\n   t |");
    for c in 0..run.clusters {
        let mark = if c == run.stalled { "*" } else { " " };
        let _ = write!(out, " s{c}{mark} stmts  fail  p99ms |");
    }
    let _ = writeln!(out, " events");
    let mut marks: Vec<(Duration, String)> = vec![
        (run.stall_at, format!("SIGSTOP s{}", run.stalled)),
        (run.resume_at, format!("SIGCONT s{}", run.stalled)),
    ];
    for t in &run.transitions {
        marks.push((t.at, format!("s{} {} -> {}", t.cluster, t.from, t.to)));
    }
    let stall = us(run.stall_at);
    if let Some(e) = run
        .events
        .iter()
        .find(|e| e.at_us >= stall && e.outcome == Outcome::FailFast)
    {
        marks.push((
            Duration::from_micros(e.at_us),
            "first ERROR 1053 at a client".to_string(),
        ));
    }
    marks.sort_by_key(|(at, _)| *at);
    let seconds = run
        .load_end
        .max(marks.last().map_or(Duration::ZERO, |(at, _)| *at))
        .as_secs()
        + 1;
    let mut at = 0;
    for s in 0..seconds {
        let end = (s + 1) * 1_000_000;
        let from = at;
        while at < run.events.len() && run.events[at].at_us < end {
            at += 1;
        }
        let slice = &run.events[from..at];
        let _ = write!(out, "{s:>4} |");
        for c in 0..run.clusters as u8 {
            let mine = || slice.iter().filter(move |e| e.cluster == c);
            let n = mine().count();
            let fail = mine().filter(|e| e.outcome != Outcome::Ok).count();
            let _ = write!(out, " {n:>9} {fail:>5} {:>6} |", opt(p99_ms(mine()), 1));
        }
        let here: Vec<String> = marks
            .iter()
            .filter(|(at, _)| at.as_secs() == s)
            .map(|(at, what)| format!("{what} @{:.2}s", at.as_secs_f64()))
            .collect();
        let _ = writeln!(out, " {}", here.join("; "));
    }
    out
}

pub fn summary_text(run: &Run, s: &Summary) -> String {
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut out = String::new();
    let _ = writeln!(
        out,
        "\nsummary (s{} frozen {:.2}s..{:.2}s; health as polled from SHOW CLUSTERS):",
        run.stalled,
        run.stall_at.as_secs_f64(),
        run.resume_at.as_secs_f64()
    );
    let _ = writeln!(out, "  went down: {}", yes(s.went_down()));
    let _ = writeln!(out, "  healthy again: {}", yes(s.came_back()));
    let _ = writeln!(
        out,
        "  healthy again while the load ran: {}",
        yes(s
            .to_healthy
            .is_some_and(|t| run.resume_at.as_secs_f64() + t <= run.load_end.as_secs_f64()))
    );
    let _ = writeln!(out, "  SIGSTOP -> degraded: {} s", opt(s.to_degraded, 2));
    let _ = writeln!(out, "  SIGSTOP -> down: {} s", opt(s.to_down, 2));
    let _ = writeln!(
        out,
        "  SIGSTOP -> first ERROR 1053 at a client: {} s",
        opt(s.to_first_fail_fast, 2)
    );
    let _ = writeln!(out, "  SIGCONT -> healthy: {} s", opt(s.to_healthy, 2));
    let _ = writeln!(
        out,
        "  errors on healthy clusters during the stall: {}",
        s.healthy_errors_stall
    );
    let _ = writeln!(
        out,
        "  errors on healthy clusters over the whole replay: {}",
        s.healthy_errors_total
    );
    let _ = writeln!(
        out,
        "  healthy clusters p99: before {} ms, during the stall {} ms (ratio {}), once down {} ms",
        opt(s.p99_before, 2),
        opt(s.p99_stall, 2),
        opt(s.p99_ratio(), 2),
        opt(s.p99_stall_down, 2)
    );
    let _ = writeln!(
        out,
        "  healthy clusters statements/s: before {:.0}, during the stall {:.0}",
        s.qps_before, s.qps_stall
    );
    let _ = writeln!(
        out,
        "  frozen cluster during the stall: {} fail-fast (1053), {} client timeouts, {} other errors",
        s.stalled_fail_fast, s.stalled_timeouts, s.stalled_errors
    );
    let _ = writeln!(
        out,
        "  client reconnects: {}; failed SHOW CLUSTERS polls: {}",
        run.reconnects, run.poll_errors
    );
    out
}

const TABLE_HEADER: &str = "| run | SIGSTOP→degraded s | SIGSTOP→down s | SIGSTOP→first 1053 s | SIGCONT→healthy s | errors on healthy clusters (stall) | healthy p99 before ms | healthy p99 stall ms | ratio | healthy p99 once down ms | healthy stmt/s before | healthy stmt/s stall | frozen: timeouts |\n| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |";

fn row(label: &str, s: &Summary) -> String {
    format!(
        "| {label} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {:.0} | {:.0} | {} |\n",
        opt(s.to_degraded, 2),
        opt(s.to_down, 2),
        opt(s.to_first_fail_fast, 2),
        opt(s.to_healthy, 2),
        s.healthy_errors_stall,
        opt(s.p99_before, 2),
        opt(s.p99_stall, 2),
        opt(s.p99_ratio(), 2),
        opt(s.p99_stall_down, 2),
        s.qps_before,
        s.qps_stall,
        s.stalled_timeouts,
    )
}

/// One row per replay and, with more than one, a row of medians.
pub fn runs_table(runs: &[Summary], opts: &Options, cores: usize) -> String {
    let mut out = format!(
        "shardgate-bench incident: {} replay(s), {} clients, {:.0} s warm-up, {:.0} s stall, \
         {:.0} s after, client timeout {:.1} s, SHOW CLUSTERS every {} ms; machine: {cores} cores\n{TABLE_HEADER}\n",
        runs.len(),
        opts.clients,
        opts.warmup.as_secs_f64(),
        opts.stall.as_secs_f64(),
        opts.after.as_secs_f64(),
        opts.client_timeout.as_secs_f64(),
        opts.poll.as_millis(),
    );
    for (i, s) in runs.iter().enumerate() {
        out.push_str(&row(&(i + 1).to_string(), s));
    }
    if runs.len() > 1 {
        let med = |f: &dyn Fn(&Summary) -> Option<f64>| median(runs.iter().filter_map(f).collect());
        let m = Summary {
            to_degraded: med(&|s| s.to_degraded),
            to_down: med(&|s| s.to_down),
            to_first_fail_fast: med(&|s| s.to_first_fail_fast),
            to_healthy: med(&|s| s.to_healthy),
            healthy_errors_stall: runs.iter().map(|s| s.healthy_errors_stall).sum(),
            p99_before: med(&|s| s.p99_before),
            p99_stall: med(&|s| s.p99_stall),
            p99_stall_down: med(&|s| s.p99_stall_down),
            qps_before: med(&|s| Some(s.qps_before)).unwrap_or(0.0),
            qps_stall: med(&|s| Some(s.qps_stall)).unwrap_or(0.0),
            stalled_timeouts: runs.iter().map(|s| s.stalled_timeouts).sum(),
            ..Summary::default()
        };
        out.push_str(&row("**median**", &m));
        let ratios = median(runs.iter().filter_map(Summary::p99_ratio).collect());
        let _ = writeln!(
            out,
            "(median row: errors and timeouts are sums over the runs; ratio column: \
             median p99 stall / median p99 before; median of the per-run ratios: {})",
            opt(ratios, 2)
        );
    }
    out
}
