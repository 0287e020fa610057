//! `shardgate-bench wave`: the migration wave of the incident, with writes (issue 14).
//!
//! Two local MariaDB servers (row-based binary log) behind the release `shardgate`
//! binary, a `tenants` keyspace of one database per workspace, and clients that each
//! loop over random workspaces: `USE ws_N`, `SELECT COUNT(*) FROM conversations`,
//! `INSERT INTO messages ...`, and every third time an `UPDATE conversations ...`.
//! After a warm-up the wave is submitted for the whole keyspace (three column-type
//! changes and one added column, as in the incident); the load goes on until every
//! migration is final and a little after. Reported per arm (binlog capture, the
//! trigger fallback): application statements that failed and in how many workspaces,
//! p50/p99 of the application's statements before and during the wave, and how long
//! the wave took.

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate::backend::{SqlConn, SqlError};
use shardgate::vschema::Cluster;

use crate::setup::{self, Servers};
use crate::RemoveDir;

pub const USAGE: &str = "\
shardgate-bench wave: a wave of column-type changes over every workspace database under reads and writes

usage: shardgate-bench wave [options]
  --capture LIST     binlog,triggers (default: both, each on fresh servers)
  --workspaces N     workspace databases ws_1..ws_N over two clusters (default 50)
  --messages N       messages per workspace before the wave (default 2000)
  --clients N        client connections (default 8)
  --before S         load before the wave is submitted (default 10)
  --after S          load after the wave is final (default 3)
  --repeat N         runs per arm; medians at the end (default 1)
  --deadlock-retries N   shardgate's [pool] deadlock_retries (default: shardgate's, 2;
                     0 shows what the application itself would see)
  --smoke            10 workspaces, 300 messages, 3 s before, 1 s after (for CI)";

/// The wave, as in the incident.
const WAVE: [&str; 4] = [
    "ALTER TABLE messages MODIFY author VARCHAR(310) NOT NULL",
    "ALTER TABLE conversations MODIFY subject VARCHAR(610) NOT NULL",
    "ALTER TABLE messages MODIFY body LONGTEXT NOT NULL",
    "ALTER TABLE conversations ADD COLUMN note2 VARCHAR(20) NULL",
];
const CONVERSATIONS: u64 = 5;
/// The longest a wave may take before the run gives up on it.
const WAVE_LIMIT: Duration = Duration::from_secs(900);

#[derive(Debug, Clone)]
struct Options {
    captures: Vec<String>,
    workspaces: u64,
    messages: u64,
    clients: u64,
    before: Duration,
    after: Duration,
    repeat: usize,
    deadlock_retries: Option<u64>,
}

fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        captures: vec!["binlog".into(), "triggers".into()],
        workspaces: 50,
        messages: 2000,
        clients: 8,
        before: Duration::from_secs(10),
        after: Duration::from_secs(3),
        repeat: 1,
        deadlock_retries: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut value = || it.next().cloned().ok_or(format!("{a} needs a value"));
        let number = |v: String| v.parse::<u64>().map_err(|_| format!("{a}: {v:?}"));
        match a.as_str() {
            "--capture" => {
                o.captures = value()?.split(',').map(str::to_string).collect();
                if o.captures.iter().any(|c| c != "binlog" && c != "triggers") {
                    return Err(format!("--capture: {:?}", o.captures));
                }
            }
            "--workspaces" => o.workspaces = number(value()?)?.max(1),
            "--messages" => o.messages = number(value()?)?.max(1),
            "--clients" => o.clients = number(value()?)?.max(1),
            "--before" => o.before = Duration::from_secs(number(value()?)?),
            "--after" => o.after = Duration::from_secs(number(value()?)?),
            "--repeat" => o.repeat = number(value()?)?.max(1) as usize,
            "--deadlock-retries" => o.deadlock_retries = Some(number(value()?)?),
            "--smoke" => {
                o.workspaces = 10;
                o.messages = 300;
                o.before = Duration::from_secs(3);
                o.after = Duration::from_secs(1);
            }
            "-h" | "--help" => return Err(String::new()),
            other => return Err(format!("unknown option {other}")),
        }
    }
    Ok(o)
}

pub fn run(args: &[String]) -> Result<(), String> {
    let Some(opts) = setup::options_or_usage(parse_args(args), USAGE)? else {
        return Ok(());
    };
    let proxy_bin = setup::sibling_binary("shardgate")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    rt.block_on(async {
        let mut results: Vec<(String, Vec<Outcome>)> = Vec::new();
        for capture in &opts.captures {
            let mut runs = Vec::new();
            for i in 0..opts.repeat {
                eprintln!("wave: {capture} capture, run {}/{}", i + 1, opts.repeat);
                let outcome = tokio::select! {
                    r = one_run(&opts, capture, &proxy_bin) => r?,
                    _ = tokio::signal::ctrl_c() => return Err("interrupted".to_string()),
                };
                println!("{}", outcome.line(capture));
                runs.push(outcome);
            }
            results.push((capture.clone(), runs));
        }
        println!("\n{}", table(&opts, &results));
        Ok(())
    })
}

/// What one run measured.
#[derive(Debug, Clone, Default)]
struct Outcome {
    statements: u64,
    errors: u64,
    /// Error code -> count.
    codes: BTreeMap<u16, u64>,
    workspaces_with_errors: usize,
    p50_before_us: f64,
    p99_before_us: f64,
    p50_during_us: f64,
    p99_during_us: f64,
    wave: Duration,
    migrations: usize,
    complete: usize,
    /// Capture column values of the copies -> count.
    captures: BTreeMap<String, usize>,
    /// Deadlock victims shardgate retried for the application (its metrics).
    retried: u64,
}

impl Outcome {
    fn line(&self, arm: &str) -> String {
        format!(
            "{arm}: {} statements, {} failed {:?} in {} workspaces, {} deadlock victims \
             retried by shardgate; p99 before {:.0} us, during {:.0} us; wave {:.1} s, {}/{} \
             complete; capture {:?}",
            self.statements,
            self.errors,
            self.codes,
            self.workspaces_with_errors,
            self.retried,
            self.p99_before_us,
            self.p99_during_us,
            self.wave.as_secs_f64(),
            self.complete,
            self.migrations,
            self.captures
        )
    }
}

async fn one_run(
    opts: &Options,
    capture: &str,
    proxy_bin: &std::path::Path,
) -> Result<Outcome, String> {
    let servers = tokio::task::spawn_blocking(|| Servers::start(2, 256, None, 300))
        .await
        .map_err(|e| format!("starting servers: {e}"))??;
    let vschema_text = shardgate::demo::sample::tenants_vschema(
        &servers.addrs[0],
        &servers.addrs[1],
        &servers.user,
        &servers.password,
    );
    let vschema = shardgate::vschema::VSchema::from_toml_str(&vschema_text)
        .map_err(|e| format!("wave vschema: {e:?}"))?;
    let ks = vschema.keyspace("tenants").ok_or("no tenants keyspace")?;
    let mut scripts = [String::new(), String::new()];
    for ws in 1..=opts.workspaces {
        let i = usize::from(ks.shard_for_workspace(ws).cluster != "c1");
        scripts[i].push_str(&shardgate::demo::sample::workspace_database_sql(
            ws,
            CONVERSATIONS,
            opts.messages,
        ));
    }
    for (server, script) in servers.owned.iter().zip(scripts) {
        let client = server.sql_client();
        tokio::task::spawn_blocking(move || client.sql(&script))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("seeding the workspace databases: {e}"))?;
    }

    let dir = std::env::temp_dir().join(format!("shardgate-wave-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _cleanup = RemoveDir(dir.clone());
    std::fs::write(dir.join("vschema.toml"), &vschema_text).map_err(|e| e.to_string())?;
    let proxy_addr = setup::free_addr()?;
    let change_capture = if capture == "triggers" {
        "triggers"
    } else {
        "auto"
    };
    let metrics_addr = setup::free_addr()?;
    let retries = opts.deadlock_retries.map_or(String::new(), |n| {
        format!("[pool]\ndeadlock_retries = {n}\n")
    });
    let config = format!(
        "metrics_listen = \"{metrics_addr}\"\n{}\n{retries}[[users]]\nname = \"admin\"\npassword = \"admin\"\nadmin = true\n\
         [[users]]\nname = \"app\"\npassword = \"app\"\n\n\
         [migrations]\nchange_capture = \"{change_capture}\"\ninstant_spacing_s = 0.2\n",
        setup::config_toml(proxy_addr, None)
    );
    let _proxy = setup::spawn_proxy(&dir, proxy_bin, &config, proxy_addr)?;
    let proxy = proxy_addr.to_string();

    let started = Instant::now();
    let stop = Arc::new(AtomicBool::new(false));
    let clients: Vec<_> = (0..opts.clients)
        .map(|me| {
            tokio::spawn(client(
                proxy.clone(),
                me,
                opts.workspaces,
                started,
                stop.clone(),
            ))
        })
        .collect();
    tokio::time::sleep(opts.before).await;

    let wave_start = started.elapsed();
    let mut dba = proxy_conn(&proxy, "app", Some("tenants")).await?;
    let mut uuids = Vec::new();
    for ddl in WAVE {
        let answer = dba.query(ddl).await.map_err(|e| format!("{ddl}: {e}"))?;
        uuids.push(
            answer
                .scalar()
                .ok_or(format!("{ddl}: no uuid"))?
                .to_string(),
        );
    }
    let mut admin = proxy_conn(&proxy, "admin", None).await?;
    let expected = WAVE.len() * opts.workspaces as usize;
    let rows = loop {
        let rows = wave_rows(&mut admin, &uuids).await?;
        let done = rows.len() == expected
            && rows
                .iter()
                .all(|r| matches!(r.0.as_str(), "complete" | "failed" | "cancelled"));
        if done {
            break rows;
        }
        if started.elapsed() - wave_start > WAVE_LIMIT {
            stop.store(true, Ordering::SeqCst);
            return Err(format!("the wave did not finish in {WAVE_LIMIT:?}"));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let wave_end = started.elapsed();
    tokio::time::sleep(opts.after).await;
    stop.store(true, Ordering::SeqCst);
    let retried = deadlock_retries(metrics_addr).await?;

    let mut out = Outcome {
        wave: wave_end - wave_start,
        migrations: rows.len(),
        complete: rows.iter().filter(|r| r.0 == "complete").count(),
        retried,
        ..Outcome::default()
    };
    for (_, capture) in &rows {
        if let Some(c) = capture {
            *out.captures.entry(c.clone()).or_default() += 1;
        }
    }
    let (mut before, mut during) = (Vec::new(), Vec::new());
    let mut erring = HashSet::new();
    for c in clients {
        let log = c.await.map_err(|e| e.to_string())?;
        out.statements += log.samples.len() as u64 + log.errors.len() as u64;
        out.errors += log.errors.len() as u64;
        for (ws, code) in log.errors {
            erring.insert(ws);
            *out.codes.entry(code).or_default() += 1;
        }
        for (at, us) in log.samples {
            if at < wave_start {
                before.push(us);
            } else if at <= wave_end {
                during.push(us);
            }
        }
    }
    out.workspaces_with_errors = erring.len();
    (out.p50_before_us, out.p99_before_us) =
        (percentile(&mut before, 0.5), percentile(&mut before, 0.99));
    (out.p50_during_us, out.p99_during_us) =
        (percentile(&mut during, 0.5), percentile(&mut during, 0.99));
    Ok(out)
}

/// `shardgate_deadlock_retries_total`, all series summed, from the proxy's /metrics.
async fn deadlock_retries(addr: std::net::SocketAddr) -> Result<u64, String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .await
        .map_err(|e| format!("metrics: {e}"))?;
    let mut body = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut body))
        .await
        .map_err(|_| "metrics: no answer in 10 s".to_string())?
        .map_err(|e| format!("metrics: {e}"))?;
    Ok(body
        .lines()
        .filter(|l| l.starts_with("shardgate_deadlock_retries_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum::<f64>() as u64)
}

async fn proxy_conn(addr: &str, user: &str, db: Option<&str>) -> Result<SqlConn, String> {
    let as_cluster = Cluster {
        name: "shardgate".into(),
        standbys: Vec::new(),
        primary: addr.to_string(),
        user: user.to_string(),
        password: user.to_string(),
        tls: None,
    };
    SqlConn::connect(&as_cluster, db, Duration::from_secs(10))
        .await
        .map_err(|e| format!("connect to shardgate as {user}: {e}"))
}

/// `SHOW MIGRATIONS` rows of the wave: (status, capture).
async fn wave_rows(
    admin: &mut SqlConn,
    uuids: &[String],
) -> Result<Vec<(String, Option<String>)>, String> {
    let rows = admin
        .query("SHOW MIGRATIONS")
        .await
        .map_err(|e| format!("SHOW MIGRATIONS: {e}"))?;
    let col = |name: &str| rows.columns.iter().position(|c| c == name);
    let (uuid, status, capture) = match (col("uuid"), col("status"), col("capture")) {
        (Some(u), Some(s), Some(c)) => (u, s, c),
        _ => return Err("SHOW MIGRATIONS lacks uuid/status/capture".into()),
    };
    Ok(rows
        .rows
        .iter()
        .filter(|r| {
            r.get(uuid)
                .cloned()
                .flatten()
                .is_some_and(|u| uuids.contains(&u))
        })
        .map(|r| {
            (
                r.get(status).cloned().flatten().unwrap_or_default(),
                r.get(capture).cloned().flatten(),
            )
        })
        .collect())
}

#[derive(Default)]
struct ClientLog {
    /// (time since the run's start, latency in µs) of each statement that succeeded.
    samples: Vec<(Duration, f64)>,
    /// (workspace, error code; 0 for a lost connection) of each that failed.
    errors: Vec<(u64, u16)>,
}

async fn client(
    addr: String,
    me: u64,
    workspaces: u64,
    started: Instant,
    stop: Arc<AtomicBool>,
) -> ClientLog {
    let mut log = ClientLog::default();
    let mut conn = None;
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        let c = match conn.as_mut() {
            Some(c) => c,
            None => match proxy_conn(&addr, "app", None).await {
                Ok(c) => conn.insert(c),
                Err(_) => {
                    log.errors.push((0, 0));
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        i += 1;
        let ws = (i.wrapping_mul(2_654_435_761) ^ me.wrapping_mul(40_503)) % workspaces + 1;
        let conversation = ws * 10 + 1 + i % CONVERSATIONS;
        let mut statements = vec![
            format!("USE ws_{ws}"),
            "SELECT COUNT(*) FROM conversations".to_string(),
            format!(
                "INSERT INTO messages (conversation_id, workspace_id, author, body, created_at) \
                 VALUES ({conversation}, {ws}, 'client {me}', 'wave {me}-{i}', NOW())"
            ),
        ];
        if i.is_multiple_of(3) {
            statements.push(format!(
                "UPDATE conversations SET state = 'pending', updated_at = NOW() WHERE id = {conversation}"
            ));
        }
        for sql in statements {
            let t = Instant::now();
            match c.execute(&sql).await {
                Ok(_) => log
                    .samples
                    .push((started.elapsed(), t.elapsed().as_secs_f64() * 1e6)),
                Err(SqlError::Server(e)) => {
                    log.errors.push((ws, e.code));
                    break;
                }
                Err(SqlError::Connection(_)) => {
                    log.errors.push((ws, 0));
                    conn = None;
                    break;
                }
            }
        }
    }
    log
}

fn percentile(v: &mut [f64], q: f64) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    let i = ((v.len() - 1) as f64 * q).round() as usize;
    v[i.min(v.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    percentile(&mut v, 0.5)
}

/// The markdown table: one row per arm, medians over its runs.
fn table(opts: &Options, results: &[(String, Vec<Outcome>)]) -> String {
    let mut t = format!(
        "migration wave: {} workspaces x {} messages, {} clients, deadlock_retries {}, {} runs \
         per arm (medians)\n\n\
         | capture | app statements | failed | workspaces with errors | retried by shardgate | \
         p50 before / during (us) | p99 before / during (us) | p99 ratio | wave (s) | complete |\n\
         |---|---|---|---|---|---|---|---|---|---|\n",
        opts.workspaces,
        opts.messages,
        opts.clients,
        opts.deadlock_retries
            .map_or("default".to_string(), |n| n.to_string()),
        opts.repeat
    );
    for (arm, runs) in results {
        let m = |f: &dyn Fn(&Outcome) -> f64| median(runs.iter().map(f).collect());
        let p99b = m(&|o| o.p99_before_us);
        let p99d = m(&|o| o.p99_during_us);
        t.push_str(&format!(
            "| {arm} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} / {:.0} | {:.0} / {:.0} | {:.2} | {:.1} | {} |\n",
            m(&|o| o.statements as f64),
            m(&|o| o.errors as f64),
            m(&|o| o.workspaces_with_errors as f64),
            m(&|o| o.retried as f64),
            m(&|o| o.p50_before_us),
            m(&|o| o.p50_during_us),
            p99b,
            p99d,
            if p99b > 0.0 { p99d / p99b } else { 0.0 },
            m(&|o| o.wave.as_secs_f64()),
            runs.iter()
                .map(|o| format!("{}/{}", o.complete, o.migrations))
                .collect::<Vec<_>>()
                .join(", "),
        ));
    }
    t
}
