//! `shardgate-bench incident`: the replay of a stalled cluster (issue 9).
//!
//! Four local MariaDB servers behind the release `shardgate` binary, the `bench`
//! keyspace sharded over all four, live load over every workspace from a few clients;
//! after a warm-up one server is frozen with SIGSTOP (connections stay open, nothing is
//! answered: the worst kind of sick host), resumed with SIGCONT later, and the run goes
//! on a little longer. An admin connection polls `SHOW CLUSTERS` meanwhile, so the
//! report can say when shardgate called the cluster degraded, down and healthy again,
//! next to what the clients saw second by second (`incident_report`).
//!
//! Whatever ends the run (the end, an error, Ctrl-C, SIGTERM), the frozen server is
//! resumed and every process started here is stopped: `Resume` and the drop of
//! `Servers` / `ChildGuard` do that on the way out.

use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardgate::backend::{SqlConn, SqlError};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::Cluster;

use crate::incident_report::{self as report, Event, Outcome, Run, Transition};
use crate::setup::{self, DataSize, Servers};
use crate::RemoveDir;

pub const USAGE: &str = "\
shardgate-bench incident: freeze one of 4 clusters under live load and time shardgate's reaction

usage: shardgate-bench incident [options]
  --stall-seconds S    how long the cluster stays frozen (SIGSTOP .. SIGCONT; default 60)
  --warmup S           load before the stall (default 10)
  --after S            load after SIGCONT (default 15)
  --repeat N           replays on the same servers and proxy; medians at the end (default 1)
  --clients N          client connections, each on random workspaces (default 8)
  --client-timeout S   a statement unanswered this long is given up, the connection
                       reopened (what an application's read timeout does; default 2)
  --stalled N          index of the cluster to freeze, s0..s3 (default 1)
  --workspaces N       workspaces, spread over all four clusters (default 1000)
  --update-percent N   share of UPDATEs among the point statements (default 10)
  --poll-ms N          how often SHOW CLUSTERS is polled (default 150)
  --seed N             RNG seed (default 1)
  --smoke              a 6 s stall (long enough for `down` at the default thresholds)
                       with short phases and little data (for CI)";

/// Clusters (local servers) the replay starts.
const CLUSTERS: usize = 4;
/// The admin user the poller logs in as.
const ADMIN_USER: &str = "incident_admin";
const ADMIN_PASSWORD: &str = "incident_admin";
/// Most events kept per client; a longer run still counts statements but stops storing.
const MAX_EVENTS_PER_CLIENT: usize = 4_000_000;
/// How long after the load ends the poller keeps waiting for the frozen cluster to be
/// `healthy` again, so a slow recovery is measured rather than cut off.
const RECOVERY_GRACE: Duration = Duration::from_secs(30);
/// How long every cluster may take to be `healthy` before a replay starts.
const READY_TIMEOUT: Duration = Duration::from_secs(60);

/// Settings of one `incident` invocation.
#[derive(Debug, Clone)]
pub struct Options {
    pub stall: Duration,
    pub warmup: Duration,
    pub after: Duration,
    pub repeat: usize,
    pub clients: usize,
    pub client_timeout: Duration,
    pub stalled: usize,
    pub size: DataSize,
    pub update_percent: u32,
    pub poll: Duration,
    pub seed: u64,
    pub buffer_pool_mb: u32,
}

pub fn parse_args(args: &[String]) -> Result<Options, String> {
    let mut o = Options {
        stall: Duration::from_secs(60),
        warmup: Duration::from_secs(10),
        after: Duration::from_secs(15),
        repeat: 1,
        clients: 8,
        client_timeout: Duration::from_secs(2),
        stalled: 1,
        size: DataSize {
            workspaces: 1000,
            items: 20,
            conversations: 1,
            messages: 1,
        },
        update_percent: 10,
        poll: Duration::from_millis(150),
        seed: 1,
        buffer_pool_mb: 64,
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        if flag == "--help" || flag == "-h" {
            return Err(String::new());
        }
        if flag == "--smoke" {
            o.stall = Duration::from_secs(6);
            o.warmup = Duration::from_secs(3);
            o.after = Duration::from_secs(8);
            o.clients = 4;
            o.size.workspaces = 100;
            o.size.items = 5;
            o.buffer_pool_mb = 32;
            continue;
        }
        let v = it.next().ok_or_else(|| format!("{flag} needs a value"))?;
        let num = |v: &str| v.parse::<f64>().map_err(|e| format!("{flag} {v}: {e}"));
        let secs = |v: &str, max: f64| num(v).map(|s| Duration::from_secs_f64(s.clamp(0.0, max)));
        match flag.as_str() {
            "--stall-seconds" => o.stall = secs(v, 3600.0)?,
            "--warmup" => o.warmup = secs(v, 600.0)?,
            "--after" => o.after = secs(v, 600.0)?,
            "--repeat" => o.repeat = (num(v)? as usize).clamp(1, 50),
            "--clients" => o.clients = (num(v)? as usize).clamp(1, 256),
            "--client-timeout" => o.client_timeout = secs(v, 600.0)?.max(Duration::from_millis(10)),
            "--stalled" => o.stalled = (num(v)? as usize).min(CLUSTERS - 1),
            "--workspaces" => o.size.workspaces = (num(v)? as usize).clamp(CLUSTERS, 1_000_000),
            "--update-percent" => o.update_percent = (num(v)? as u32).min(100),
            "--poll-ms" => o.poll = Duration::from_millis((num(v)? as u64).clamp(10, 5000)),
            "--seed" => o.seed = num(v)? as u64,
            _ => return Err(format!("unknown argument {flag:?}")),
        }
    }
    Ok(o)
}

/// Everything one replay needs to reach the proxy and the servers.
struct Rig {
    servers: Servers,
    proxy_addr: String,
    /// Cluster index (0..4) of each workspace id; index 0 unused.
    cluster_of: Arc<Vec<u8>>,
}

pub fn run(args: &[String]) -> Result<(), String> {
    let Some(opts) = setup::options_or_usage(parse_args(args), USAGE)? else {
        return Ok(());
    };
    let proxy_bin = setup::sibling_binary("shardgate")?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| e.to_string())?;
    // Ctrl-C and SIGTERM end the replay by returning an error, so that every drop on
    // the way out runs: the frozen server is resumed, servers and proxy are stopped.
    rt.block_on(async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        let sigterm = async {
            match term.as_mut() {
                Some(t) => {
                    t.recv().await;
                }
                None => std::future::pending::<()>().await,
            }
        };
        tokio::select! {
            r = replay_all(&opts, &proxy_bin) => r,
            _ = tokio::signal::ctrl_c() => Err("interrupted (Ctrl-C); servers resumed and stopped".into()),
            _ = sigterm => Err("interrupted (SIGTERM); servers resumed and stopped".into()),
        }
    })
}

async fn replay_all(opts: &Options, proxy_bin: &std::path::Path) -> Result<(), String> {
    eprintln!("incident: starting {CLUSTERS} MariaDB servers");
    let pool_mb = opts.buffer_pool_mb;
    let servers = tokio::task::spawn_blocking(move || Servers::start(CLUSTERS, pool_mb, None, 300))
        .await
        .map_err(|e| format!("starting servers: {e}"))??;
    let dir = std::env::temp_dir().join(format!("shardgate-incident-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let _cleanup = RemoveDir(dir.clone());

    let vschema_text = setup::vschema_toml(&servers);
    let vschema = shardgate::vschema::VSchema::from_toml_str(&vschema_text)
        .map_err(|e| format!("bench vschema: {e:?}"))?;
    let ks = vschema
        .keyspace(setup::DATABASE)
        .ok_or("the bench vschema has no bench keyspace")?;
    let mut cluster_of = vec![0u8; opts.size.workspaces + 1];
    let mut per_shard = vec![Vec::new(); CLUSTERS];
    for w in 1..=opts.size.workspaces as u64 {
        let name = &ks.shard_for_workspace(w).cluster;
        let i = name
            .strip_prefix('s')
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < CLUSTERS)
            .ok_or_else(|| format!("unexpected cluster name {name:?}"))?;
        cluster_of[w as usize] = i as u8;
        per_shard[i].push(w);
    }
    eprintln!(
        "incident: loading {} workspaces ({} per cluster)",
        opts.size.workspaces,
        per_shard
            .iter()
            .map(|s| s.len().to_string())
            .collect::<Vec<_>>()
            .join("/")
    );
    setup::load_shards(&servers, &per_shard, opts.size).await?;

    let proxy_addr = setup::free_addr()?;
    std::fs::write(dir.join("vschema.toml"), &vschema_text).map_err(|e| e.to_string())?;
    // The proxy runs with the default [health] and [traffic] settings: the replay
    // measures what an operator gets without tuning.
    let config = format!(
        "{}\n[[users]]\nname = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n",
        setup::config_toml(proxy_addr, Some(opts.clients * 4 + 16))
    );
    let _proxy = setup::spawn_proxy(&dir, proxy_bin, &config, proxy_addr)?;
    let rig = Rig {
        servers,
        proxy_addr: proxy_addr.to_string(),
        cluster_of: Arc::new(cluster_of),
    };

    let mut runs = Vec::new();
    for i in 0..opts.repeat {
        wait_all_healthy(&rig).await?;
        eprintln!(
            "incident: replay {}/{}: {:.0} s load, s{} frozen for {:.0} s, {:.0} s after",
            i + 1,
            opts.repeat,
            opts.warmup.as_secs_f64(),
            opts.stalled,
            opts.stall.as_secs_f64(),
            opts.after.as_secs_f64()
        );
        let run = replay(&rig, opts, opts.seed ^ ((i as u64) << 32)).await?;
        print!("{}", report::timeline(&run));
        let summary = report::summarize(&run);
        print!("{}", report::summary_text(&run, &summary));
        runs.push(summary);
    }
    println!(
        "\n{}",
        report::runs_table(
            &runs,
            opts,
            std::thread::available_parallelism().map_or(0, |n| n.get())
        )
    );
    Ok(())
}

fn cluster(addr: &str, user: &str, password: &str) -> Cluster {
    Cluster {
        name: "incident".into(),
        primary: addr.into(),
        standbys: Vec::new(),
        user: user.into(),
        password: password.into(),
        tls: None,
    }
}

async fn admin_conn(rig: &Rig) -> Result<SqlConn, String> {
    SqlConn::connect(
        &cluster(&rig.proxy_addr, ADMIN_USER, ADMIN_PASSWORD),
        None,
        Duration::from_secs(5),
    )
    .await
    .map_err(|e| format!("admin login to shardgate: {e}"))
}

/// `Health` of each cluster s0..s3 from one `SHOW CLUSTERS`, by column name.
async fn cluster_health(conn: &mut SqlConn) -> Result<Vec<Option<String>>, String> {
    let rows = tokio::time::timeout(Duration::from_secs(2), conn.query("SHOW CLUSTERS"))
        .await
        .map_err(|_| "SHOW CLUSTERS took over 2 s".to_string())?
        .map_err(|e| format!("SHOW CLUSTERS: {e}"))?;
    let col = |name: &str| rows.columns.iter().position(|c| c == name);
    let (Some(c_name), Some(c_health)) = (col("Cluster"), col("Health")) else {
        return Err("SHOW CLUSTERS has no Cluster or Health column".into());
    };
    let mut health = vec![None; CLUSTERS];
    for row in &rows.rows {
        let name = row.get(c_name).and_then(|v| v.as_deref());
        let idx = name
            .and_then(|n| n.strip_prefix('s'))
            .and_then(|n| n.parse::<usize>().ok())
            .filter(|&i| i < CLUSTERS);
        if let Some(i) = idx {
            health[i] = row.get(c_health).cloned().flatten();
        }
    }
    Ok(health)
}

/// Waits until shardgate calls every cluster healthy (the previous replay's frozen
/// cluster must have recovered, and a fresh proxy has probed everything once).
async fn wait_all_healthy(rig: &Rig) -> Result<(), String> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut conn = admin_conn(rig).await?;
    loop {
        let health = cluster_health(&mut conn).await?;
        if health.iter().all(|h| h.as_deref() == Some("healthy")) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "clusters not all healthy within {} s: {health:?}",
                READY_TIMEOUT.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Resumes the frozen server when dropped: an early return or a panic between SIGSTOP
/// and SIGCONT must not leave it frozen (its drop in `Servers` would resume it too, but
/// only when the whole bench ends).
struct Resume<'a>(&'a LocalMariaDb);

impl Drop for Resume<'_> {
    fn drop(&mut self) {
        let _ = self.0.resume();
    }
}

/// One replay: load, freeze, resume, load; the clients' events and the transitions.
async fn replay(rig: &Rig, opts: &Options, seed: u64) -> Result<Run, String> {
    let stalled_server = rig
        .servers
        .owned
        .get(opts.stalled)
        .ok_or("no server to freeze")?;
    let t0 = Instant::now();
    let load_end = t0 + opts.warmup + opts.stall + opts.after;
    let mut clients = Vec::with_capacity(opts.clients);
    for i in 0..opts.clients {
        clients.push(tokio::spawn(client(
            rig.proxy_addr.clone(),
            rig.cluster_of.clone(),
            ClientPlan {
                t0,
                end: load_end,
                timeout: opts.client_timeout,
                items: opts.size.items,
                update_percent: opts.update_percent,
                seed: seed ^ (i as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15),
            },
        )));
    }
    let poll_conn = admin_conn(rig).await?;
    let stop_polling = Arc::new(tokio::sync::Notify::new());
    let poller = tokio::spawn(poll(
        poll_conn,
        t0,
        opts.poll,
        opts.stalled,
        load_end + RECOVERY_GRACE,
        stop_polling.clone(),
    ));

    tokio::time::sleep_until((t0 + opts.warmup).into()).await;
    // pause() returns once every thread of the server is stopped (a few ms): the stall
    // is timed from just before the signal.
    let stall_at = t0.elapsed();
    stalled_server
        .pause()
        .map_err(|e| format!("SIGSTOP s{}: {e}", opts.stalled))?;
    let resume = Resume(stalled_server);
    tokio::time::sleep_until((t0 + opts.warmup + opts.stall).into()).await;
    drop(resume);
    let resume_at = t0.elapsed();

    let mut events = Vec::new();
    let mut broken = 0;
    for c in clients {
        let r = c.await.map_err(|e| format!("client task: {e}"))?;
        events.extend(r.events);
        broken += r.reconnects;
    }
    events.sort_unstable_by_key(|e| e.at_us);
    // The load is over; the poller stops at the frozen cluster's recovery or the grace.
    stop_polling.notify_one();
    let (transitions, poll_errors) = poller.await.map_err(|e| format!("poller task: {e}"))?;
    Ok(Run {
        stalled: opts.stalled,
        clusters: CLUSTERS,
        warmup: opts.warmup,
        stall_at,
        resume_at,
        load_end: load_end - t0,
        events,
        transitions,
        poll_errors,
        reconnects: broken,
    })
}

/// What one client does, and until when.
struct ClientPlan {
    t0: Instant,
    end: Instant,
    timeout: Duration,
    items: usize,
    update_percent: u32,
    seed: u64,
}

struct ClientResult {
    events: Vec<Event>,
    reconnects: u64,
}

/// One application connection: point selects and updates on random workspaces, each
/// statement bounded by the client timeout. A statement that times out or breaks the
/// connection closes it and the next one reconnects, as a pooled application client
/// would; every statement becomes an event (its cluster, when it ended, how).
async fn client(proxy_addr: String, cluster_of: Arc<Vec<u8>>, plan: ClientPlan) -> ClientResult {
    let mut rng = StdRng::seed_from_u64(plan.seed);
    let target = cluster(&proxy_addr, setup::PROXY_USER, setup::PROXY_PASSWORD);
    let mut conn: Option<SqlConn> = None;
    let mut connected_once = false;
    let mut out = ClientResult {
        events: Vec::new(),
        reconnects: 0,
    };
    let since = |at: Instant| at.saturating_duration_since(plan.t0).as_micros() as u64;
    while Instant::now() < plan.end {
        let Some(c) = conn.as_mut() else {
            match tokio::time::timeout(
                plan.timeout,
                SqlConn::connect(&target, Some(setup::DATABASE), plan.timeout),
            )
            .await
            {
                Ok(Ok(c)) => {
                    conn = Some(c);
                    if connected_once {
                        out.reconnects += 1;
                    }
                    connected_once = true;
                }
                // Logging in to shardgate does not touch a cluster; a failure here is the
                // proxy's, and is retried after a pause rather than spun on.
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
            continue;
        };
        let w = rng.gen_range(1..cluster_of.len());
        let id = rng.gen_range(1..=plan.items);
        let update = rng.gen_range(0..100) < plan.update_percent;
        let start = Instant::now();
        let result = if update {
            let v: u32 = rng.gen();
            let sql =
                format!("UPDATE items SET val = 'v{v}' WHERE workspace_id = {w} AND id = {id}");
            tokio::time::timeout(plan.timeout, c.execute(&sql))
                .await
                .map(|r| r.map(|_| ()))
        } else {
            let sql = format!("SELECT val FROM items WHERE workspace_id = {w} AND id = {id}");
            tokio::time::timeout(plan.timeout, c.query(&sql))
                .await
                .map(|r| r.map(|_| ()))
        };
        let ended = Instant::now();
        let outcome = match result {
            Ok(Ok(())) => Outcome::Ok,
            Ok(Err(SqlError::Server(e))) if e.code == 1053 => Outcome::FailFast,
            Ok(Err(SqlError::Server(_))) => Outcome::Error,
            Ok(Err(SqlError::Connection(_))) => {
                conn = None;
                Outcome::Error
            }
            Err(_) => {
                // The answer may still come; the connection cannot be reused.
                conn = None;
                Outcome::Timeout
            }
        };
        if out.events.len() < MAX_EVENTS_PER_CLIENT {
            out.events.push(Event {
                at_us: since(ended),
                latency_us: ended.duration_since(start).as_micros() as u64,
                cluster: cluster_of.get(w).copied().unwrap_or(0),
                outcome,
            });
        }
    }
    out
}

/// Polls `SHOW CLUSTERS` every `every` and records each change of a cluster's health
/// (the first poll's states are the starting point, not changes). After `stop` it goes
/// on until the frozen cluster is healthy again or `until`. Returns the transitions and
/// the number of failed polls.
async fn poll(
    mut conn: SqlConn,
    t0: Instant,
    every: Duration,
    stalled: usize,
    until: Instant,
    stop: Arc<tokio::sync::Notify>,
) -> (Vec<Transition>, u64) {
    let mut last: Vec<Option<String>> = vec![None; CLUSTERS];
    let mut transitions = Vec::new();
    let mut errors = 0;
    let mut stopping = false;
    let mut ticker = tokio::time::interval(every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = ticker.tick() => {}
            _ = stop.notified(), if !stopping => stopping = true,
        }
        if Instant::now() > until {
            break;
        }
        let at = t0.elapsed();
        match cluster_health(&mut conn).await {
            Ok(health) => {
                for (i, h) in health.into_iter().enumerate() {
                    if h != last[i] {
                        if let (Some(from), Some(to)) = (&last[i], &h) {
                            transitions.push(Transition {
                                at,
                                cluster: i,
                                from: from.clone(),
                                to: to.clone(),
                            });
                        }
                        last[i] = h;
                    }
                }
            }
            Err(_) => errors += 1,
        }
        let recovered = transitions
            .iter()
            .any(|t| t.cluster == stalled && t.to == "healthy");
        if stopping && recovered {
            break;
        }
    }
    (transitions, errors)
}
