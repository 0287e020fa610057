//! `shardgate demo`: local clusters, the demo shard map, sample data, and the proxy.
//!
//! One local MariaDB server per cluster of the shard map (ports `base_port`,
//! `base_port + 1`, ... in cluster-name order), each shard's database created on its
//! cluster and filled with the rows of the workspaces it owns, then the proxy in front.
//! With `standbys > 0` each cluster's primary gets that many replicating standbys (see
//! [`replication`]) on the ports after the primaries'.
//! Ctrl-C or SIGTERM stops the proxy and every server and removes their directories.

pub mod localdb;
mod process;
pub mod replication;
pub mod sample;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::net::TcpListener;
use tokio::sync::oneshot;

use crate::backend::quote_ident;
use crate::config::{PoolConfig, ProxyConfig, User};
use crate::vschema::VSchema;
use localdb::LocalDbOptions;
use replication::{LocalCluster, LocalClusterOptions};

/// Writes a line about the demo's progress to stderr, only when stderr is a terminal:
/// it helps the person watching and would only clutter a log file or a pipe. The
/// banner with the addresses to connect to is the demo's output and goes to stdout.
macro_rules! progress {
    ($($arg:tt)*) => {
        if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
            eprintln!($($arg)*);
        }
    };
}

/// The demo shard map: clusters c1..c4, keyspace `app` sharded over four shards,
/// unsharded default keyspace `main`.
const DEMO_VSCHEMA: &str = include_str!("../../vschema/demo.toml");

/// Most standbys per cluster the demo starts: every one is a whole server.
const MAX_STANDBYS: usize = 8;

/// How long the proxy may take to finish open sessions at shutdown.
const PROXY_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Settings of `shardgate demo`.
#[derive(Debug, Clone)]
pub struct DemoOptions {
    /// Where the proxy listens for MySQL clients.
    pub listen: SocketAddr,
    /// Port of the first cluster's server; the others follow.
    pub base_port: u16,
    /// Number of sample workspaces (ids 1..=N).
    pub workspaces: u64,
    /// A vschema file to use instead of the built-in demo map; its clusters are
    /// started locally whatever their `primary` says.
    pub vschema_path: Option<PathBuf>,
    /// Standbys per cluster, replicating from its primary; 0: one plain server.
    pub standbys: usize,
}

impl Default for DemoOptions {
    fn default() -> Self {
        DemoOptions {
            listen: SocketAddr::from(([127, 0, 0, 1], 15306)),
            base_port: 15401,
            workspaces: 1000,
            vschema_path: None,
            standbys: 1,
        }
    }
}

/// Runs the demo until Ctrl-C or SIGTERM. Everything it started is stopped and
/// removed on return, whether it succeeded or not.
pub async fn run(opts: DemoOptions) -> Result<(), String> {
    let begun = Instant::now();
    if opts.standbys > MAX_STANDBYS {
        return Err(format!(
            "at most {MAX_STANDBYS} standbys per cluster, not {}",
            opts.standbys
        ));
    }
    localdb::find_mariadbd()?;
    let mut vschema = match &opts.vschema_path {
        Some(path) => {
            VSchema::load(path).map_err(|e| format!("vschema {}:\n{e}", path.display()))?
        }
        None => VSchema::from_toml_str(DEMO_VSCHEMA)
            .map_err(|e| format!("built-in demo vschema:\n{e}"))?,
    };
    // Bind first: a busy proxy port should fail before anything is started.
    let listener = TcpListener::bind(opts.listen)
        .await
        .map_err(|e| format!("cannot listen on {}: {e}", opts.listen))?;

    let mut servers = BTreeMap::new();
    let result = serve_demo(&opts, &mut vschema, listener, &mut servers, begun).await;
    let members: usize = servers.values().map(|c| 1 + c.standbys.len()).sum();
    if members > 0 {
        progress!("stopping {members} MariaDB servers...");
    }
    let stopping = tokio::task::spawn_blocking(move || {
        for (_, cluster) in servers {
            cluster.stop();
        }
    });
    let _ = stopping.await;
    if result.is_ok() {
        progress!("demo stopped; temp directories removed");
    }
    result
}

async fn serve_demo(
    opts: &DemoOptions,
    vschema: &mut VSchema,
    listener: TcpListener,
    servers: &mut BTreeMap<String, LocalCluster>,
    begun: Instant,
) -> Result<(), String> {
    start_clusters(opts, vschema, servers).await?;
    progress!(
        "[{:>5.1}s] {} MariaDB servers up",
        begun.elapsed().as_secs_f64(),
        servers.len() * (1 + opts.standbys)
    );
    let rows = load_sample_data(opts.workspaces, vschema, servers).await?;
    wait_standbys_caught_up(servers)?;
    progress!(
        "[{:>5.1}s] schemas created, {} workspaces loaded ({rows} rows)",
        begun.elapsed().as_secs_f64(),
        opts.workspaces
    );

    let tls = DemoCert::create(opts.listen)?;
    let config = Arc::new(ProxyConfig {
        listen: opts.listen,
        users: User::demo_users(),
        pool: PoolConfig::default(),
        max_packet_size: 64 << 20,
        local_infile: true,
        max_client_connections: 1000,
        plan_cache_size: crate::planner::cache::DEFAULT_CAPACITY,
        vschema: vschema.clone(),
        migrations: Some(crate::migrations::executor::ExecutorConfig::default()),
        metrics_listen: None,
        admin_cluster_timeout: crate::admin::DEFAULT_CLUSTER_TIMEOUT,
        tls: Some(crate::protocol::tls::ServerTls::from_pem(
            tls.cert_pem.as_bytes(),
            tls.key_pem.as_bytes(),
            false,
        )?),
        limits: crate::config::LimitsConfig::default(),
        health: crate::health::HealthConfig::default(),
        traffic_state_file: None,
        failover: crate::traffic::failover::FailoverConfig::default(),
        rsa_key: None,
        vschema_file: None,
        vschema_text: None,
        topo: crate::config::TopoConfig::Memory,
    });
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let mut proxy = tokio::spawn(crate::server::serve(config, listener, async move {
        let _ = stop_rx.await;
    }));
    print_banner(opts, vschema, servers, begun, &tls.cert_path);

    let outcome = tokio::select! {
        signal = shutdown_signal() => {
            progress!("\n{signal}: shutting down");
            Ok(())
        }
        ended = &mut proxy => match ended {
            Ok(Ok(())) => Err("the proxy stopped unexpectedly".to_string()),
            Ok(Err(e)) => Err(format!("the proxy failed: {e}")),
            Err(e) => Err(format!("the proxy task failed: {e}")),
        },
    };
    let _ = stop_tx.send(());
    // A finished JoinHandle must not be polled again.
    if !proxy.is_finished()
        && crate::timer::timeout(PROXY_STOP_TIMEOUT, &mut proxy)
            .await
            .is_err()
    {
        proxy.abort();
    }
    outcome
}

/// Starts one server per cluster (with its standbys), in parallel, and points the
/// vschema's clusters at the primaries (with the user and password each cluster names).
/// Primaries take the ports from `base_port` on, in cluster-name order, and the
/// standbys the ones after them, cluster by cluster.
async fn start_clusters(
    opts: &DemoOptions,
    vschema: &mut VSchema,
    servers: &mut BTreeMap<String, LocalCluster>,
) -> Result<(), String> {
    let clusters = vschema.clusters.len();
    progress!(
        "starting {} MariaDB servers on 127.0.0.1:{}..",
        clusters * (1 + opts.standbys),
        opts.base_port
    );
    let port_at = |i: usize| {
        u16::try_from(i)
            .ok()
            .and_then(|i| opts.base_port.checked_add(i))
            .ok_or_else(|| {
                format!(
                    "no port left for {} servers above {}",
                    i + 1,
                    opts.base_port
                )
            })
    };
    // (primary port, standby ports) per cluster.
    let mut cluster_ports = Vec::new();
    for i in 0..clusters {
        let standbys = (0..opts.standbys)
            .map(|j| port_at(clusters + i * opts.standbys + j))
            .collect::<Result<Vec<u16>, String>>()?;
        cluster_ports.push((port_at(i)?, standbys));
    }
    let ports: Vec<u16> = cluster_ports
        .iter()
        .flat_map(|(primary, standbys)| std::iter::once(*primary).chain(standbys.clone()))
        .collect();
    // Check every port before starting anything, so a clash costs nothing.
    let busy: Vec<String> = ports
        .iter()
        .filter(|&&port| std::net::TcpListener::bind(("127.0.0.1", port)).is_err())
        .map(u16::to_string)
        .collect();
    if !busy.is_empty() {
        return Err(format!(
            "port(s) {} on 127.0.0.1 already in use (another demo running?); \
             pass a different base port",
            busy.join(", ")
        ));
    }
    let mut starting = Vec::new();
    for ((name, cluster), (port, standby_ports)) in vschema.clusters.iter().zip(cluster_ports) {
        let cluster_opts = LocalClusterOptions {
            server: LocalDbOptions {
                port: Some(port),
                user: cluster.user.clone(),
                password: cluster.password.clone(),
                ..LocalDbOptions::default()
            },
            standbys: opts.standbys,
            standby_ports,
            ..LocalClusterOptions::default()
        };
        let name = name.clone();
        starting.push(tokio::task::spawn_blocking(move || {
            (name, LocalCluster::start(&cluster_opts))
        }));
    }
    let mut errors = Vec::new();
    for task in starting {
        match task.await {
            Ok((name, Ok(server))) => {
                servers.insert(name, server);
            }
            Ok((name, Err(e))) => errors.push(format!("cluster {name}: {e}")),
            Err(e) => errors.push(format!("starting a server panicked: {e}")),
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "could not start MariaDB:\n{}\n(is another demo running? pass a different base port)",
            errors.join("\n")
        ));
    }
    for (name, cluster) in vschema.clusters.iter_mut() {
        if let Some(server) = servers.get(name) {
            cluster.primary = server.primary.addr();
            // The proxy probes them, shows them in SHOW CLUSTERS, and fails over to
            // them (FAILOVER CLUSTER).
            cluster.standbys = server.standby_addrs();
        }
    }
    Ok(())
}

/// How long the standbys may take to apply the sample data.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(60);

/// Waits until every standby has applied everything its primary wrote, so that the
/// banner only appears once the standbys hold the sample data too. Blocking: it runs
/// before the proxy serves, when nothing else needs the runtime.
fn wait_standbys_caught_up(servers: &BTreeMap<String, LocalCluster>) -> Result<(), String> {
    // Blocking waits, all clusters at once: a scoped thread per cluster.
    std::thread::scope(|scope| {
        let waiting: Vec<_> = servers
            .iter()
            .filter(|(_, cluster)| !cluster.standbys.is_empty())
            .map(|(name, cluster)| {
                scope.spawn(move || {
                    cluster
                        .wait_caught_up(CATCH_UP_TIMEOUT)
                        .map_err(|e| format!("cluster {name}: standbys not caught up: {e}"))
                })
            })
            .collect();
        waiting
            .into_iter()
            .map(|t| {
                t.join()
                    .unwrap_or_else(|_| Err("waiting for standbys panicked".to_string()))
            })
            .collect::<Result<Vec<()>, String>>()
            .map(|_| ())
    })
}

/// Workspace databases the demo creates in a `database_per_workspace` keyspace.
const PER_WORKSPACE_DATABASES: u64 = 50;

/// Creates every keyspace's databases (with the sample tables for sharded ones) and
/// inserts each workspace's rows on the shard that owns it: one script per server,
/// all servers in parallel. Returns the number of rows written.
async fn load_sample_data(
    workspaces: u64,
    vschema: &VSchema,
    servers: &BTreeMap<String, LocalCluster>,
) -> Result<usize, String> {
    let mut scripts: BTreeMap<String, String> = BTreeMap::new();
    let mut loaded = 0;
    for keyspace in vschema.keyspaces.values() {
        if keyspace.tenancy != crate::vschema::Tenancy::SharedTables {
            // Every workspace its own database, on the cluster that owns it.
            for ws in 1..=workspaces.min(PER_WORKSPACE_DATABASES) {
                let Some(database) = keyspace.database_for_workspace(ws) else {
                    continue;
                };
                let cluster = keyspace.shard_for_workspace(ws).cluster.clone();
                let script = scripts.entry(cluster).or_default();
                let db = quote_ident(&database);
                script.push_str(&format!("CREATE DATABASE IF NOT EXISTS {db};\nUSE {db};\n"));
                script.push_str(sample::SHARDED_TABLES);
                loaded += sample::append_inserts(script, &[ws]);
            }
            continue;
        }
        // (cluster, database) -> workspaces it owns.
        let mut owned: BTreeMap<(String, String), Vec<u64>> = BTreeMap::new();
        for shard in &keyspace.shards {
            owned
                .entry((shard.cluster.clone(), shard.database.clone()))
                .or_default();
        }
        if keyspace.sharded {
            for ws in 1..=workspaces {
                let shard = keyspace.shard_for_workspace(ws);
                owned
                    .entry((shard.cluster.clone(), shard.database.clone()))
                    .or_default()
                    .push(ws);
            }
        }
        for ((cluster, database), ids) in owned {
            let script = scripts.entry(cluster).or_default();
            let db = quote_ident(&database);
            script.push_str(&format!("CREATE DATABASE IF NOT EXISTS {db};\nUSE {db};\n"));
            if keyspace.sharded {
                script.push_str(sample::SHARDED_TABLES);
                loaded += sample::append_inserts(script, &ids);
            }
        }
    }
    let mut running = Vec::new();
    for (cluster, script) in scripts {
        let server = servers
            .get(&cluster)
            .ok_or_else(|| format!("no server for cluster {cluster}"))?;
        let client = server.primary.sql_client();
        running.push(tokio::task::spawn_blocking(move || {
            (cluster, client.sql(&script).map(|_| ()))
        }));
    }
    let mut errors = Vec::new();
    for task in running {
        match task.await {
            Ok((_, Ok(()))) => {}
            Ok((cluster, Err(e))) => errors.push(format!("loading cluster {cluster}: {e}")),
            Err(e) => errors.push(format!("loading data panicked: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(loaded)
    } else {
        Err(errors.join("\n"))
    }
}

fn print_banner(
    opts: &DemoOptions,
    vschema: &VSchema,
    servers: &BTreeMap<String, LocalCluster>,
    begun: Instant,
    cert: &std::path::Path,
) {
    let port = opts.listen.port();
    let host = opts.listen.ip();
    println!();
    println!(
        "shardgate demo is running (ready in {:.1}s)",
        begun.elapsed().as_secs_f64()
    );
    println!(
        "  proxy     {}  users app/app, admin/admin (admin)",
        opts.listen
    );
    println!(
        "  TLS       self-signed certificate {} (mariadb --ssl; --ssl-ca=that file to verify it)",
        cert.display()
    );
    for (name, server) in servers {
        let shards: Vec<String> = vschema
            .keyspaces
            .values()
            .flat_map(|ks| {
                ks.shards
                    .iter()
                    .filter(|s| &s.cluster == name)
                    .map(move |s| format!("{}/{}", ks.name, s.name))
            })
            .collect();
        println!(
            "  cluster   {name:<4} {}  {}  (data in {})",
            server.primary.addr(),
            shards.join(", "),
            server.primary.dir.display()
        );
        if !server.standbys.is_empty() {
            println!(
                "            standbys {}  (read_only, semi-sync)",
                server.standby_addrs().join(", ")
            );
        }
    }
    println!();
    println!("Try:");
    println!(
        "  mariadb -h{host} -P{port} -uapp -papp app -e \"SELECT * FROM conversations WHERE workspace_id=7\""
    );
    println!(
        "  mariadb --ssl --ssl-ca={} -h{host} -P{port} -uapp -papp app -e \"SELECT 1\"   # over TLS",
        cert.display()
    );
    if let (Some(ks), Some((first_name, first))) = (
        vschema.keyspace("app"),
        servers.iter().next().map(|(name, c)| (name, &c.primary)),
    ) {
        if ks.sharded {
            let owner = &ks.shard_for_workspace(7).cluster;
            println!("  (workspace 7 lives on cluster {owner})");
        }
        if let Some(tenants) = vschema.keyspace("tenants") {
            if let Some(db) = tenants.database_for_workspace(7) {
                println!(
                    "  mariadb -h{host} -P{port} -uapp -papp {db} -e \"SELECT * FROM conversations\"   # one database per workspace"
                );
            }
        }
        println!(
            "  mariadb -h{host} -P{port} -uadmin -padmin app -e \"SHOW MIGRATIONS\"   # the migration queue"
        );
        println!("Look at a shard directly (cluster {first_name}):");
        println!(
            "  mariadb -h127.0.0.1 -P{} -u{} -p{} app",
            first.port, first.user, first.password
        );
    }
    println!();
    println!("Press Ctrl-C to stop the proxy and all servers.");
}

/// The demo's self-signed certificate, written to a temp directory (removed on drop) so
/// that clients can verify it with `--ssl-ca`.
struct DemoCert {
    dir: PathBuf,
    cert_path: PathBuf,
    cert_pem: String,
    key_pem: String,
}

impl DemoCert {
    fn create(listen: SocketAddr) -> Result<DemoCert, String> {
        let ip = listen.ip().to_string();
        let (cert_pem, key_pem) =
            crate::protocol::tls::self_signed(&["localhost", "127.0.0.1", &ip])
                .map_err(|e| format!("demo certificate: {e}"))?;
        let dir = std::env::temp_dir().join(format!("shardgate-demo-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let cert_path = dir.join("cert.pem");
        std::fs::write(&cert_path, &cert_pem)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        Ok(DemoCert {
            dir,
            cert_path,
            cert_pem,
            key_pem,
        })
    }
}

impl Drop for DemoCert {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Waits for Ctrl-C or SIGTERM and names which came.
async fn shutdown_signal() -> &'static str {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
    let sigterm = async {
        match term.as_mut() {
            Some(term) => {
                term.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "Ctrl-C",
        _ = sigterm => "SIGTERM",
    }
}
