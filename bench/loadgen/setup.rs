//! Everything before the load: MariaDB servers, the bench schema and data, the vschema
//! and config files, and the relay and shardgate child processes.

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use shardgate::backend::{BackendConn, ConnKey};
use shardgate::demo::localdb::{LocalDbOptions, LocalDbTls, LocalMariaDb};
use shardgate::protocol::relay::ResponseKind;
use shardgate::protocol::{caps, command};
use shardgate::vschema::{Cluster, VSchema};

/// The database every shard keeps the bench tables in, and the keyspace name.
pub const DATABASE: &str = "bench";
/// The user shardgate lets the load generator in as.
pub const PROXY_USER: &str = "bench";
pub const PROXY_PASSWORD: &str = "bench";

/// How much data to load.
#[derive(Debug, Clone, Copy)]
pub struct DataSize {
    /// Workspaces living on the measured shard.
    pub workspaces: usize,
    /// `items` rows per workspace (point-select).
    pub items: usize,
    /// Conversations per workspace (app-mix).
    pub conversations: usize,
    /// Messages per conversation at the start (app-mix).
    pub messages: usize,
}

/// The MariaDB servers the shards live on.
pub struct Servers {
    /// Servers this process started (stopped on drop); empty with `--reuse`.
    pub owned: Vec<LocalMariaDb>,
    /// `127.0.0.1:PORT` of each shard's server; index 0 is the measured shard.
    pub addrs: Vec<String>,
    pub user: String,
    pub password: String,
}

impl Servers {
    /// Starts `count` local servers (blocking), serving TLS with `tls` if given, each
    /// taking up to `max_connections` client connections (set once it runs, as
    /// `SET GLOBAL max_connections`; it inherits this process's open-files limit).
    pub fn start(
        count: usize,
        buffer_pool_mb: u32,
        tls: Option<LocalDbTls>,
        max_connections: usize,
    ) -> Result<Servers, String> {
        let opts = LocalDbOptions {
            buffer_pool_mb,
            tls,
            ..LocalDbOptions::default()
        };
        let mut owned = Vec::new();
        for _ in 0..count {
            let server = LocalMariaDb::start(&opts).map_err(|e| format!("start MariaDB: {e}"))?;
            server
                .sql(&format!("SET GLOBAL max_connections = {max_connections}"))
                .map_err(|e| format!("MariaDB max_connections: {e}"))?;
            owned.push(server);
        }
        let addrs = owned.iter().map(LocalMariaDb::addr).collect();
        Ok(Servers {
            owned,
            addrs,
            user: opts.user,
            password: opts.password,
        })
    }

    pub fn reuse(addrs: Vec<String>, user: String, password: String) -> Servers {
        Servers {
            owned: Vec::new(),
            addrs,
            user,
            password,
        }
    }

    /// Process id of the measured shard's server, when this process started it.
    pub fn measured_pid(&self) -> Option<u32> {
        self.owned.first().and_then(LocalMariaDb::pid)
    }
}

/// `--backend-tls`: a throwaway CA and a certificate it signed for 127.0.0.1, which
/// every server presents (clear text stays allowed, for the direct and relay arms).
pub struct BackendTlsMaterial {
    pub ca_pem: String,
    pub server: LocalDbTls,
}

impl BackendTlsMaterial {
    pub fn new() -> Result<BackendTlsMaterial, String> {
        use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyPair, KeyUsagePurpose};
        let e = |e: rcgen::Error| e.to_string();
        let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let ca_key = KeyPair::generate().map_err(e)?;
        let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
        let leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).map_err(e)?;
        let key = KeyPair::generate().map_err(e)?;
        let cert = leaf.signed_by(&key, &ca_cert, &ca_key).map_err(e)?;
        Ok(BackendTlsMaterial {
            ca_pem: ca_cert.pem(),
            server: LocalDbTls {
                cert_pem: cert.pem(),
                key_pem: key.serialize_pem(),
                ca_pem: None,
                require_secure_transport: false,
            },
        })
    }
}

/// The capabilities the load generator's connections ask for (like a modern client).
pub fn client_key() -> ConnKey {
    ConnKey {
        caps: caps::DEPRECATE_EOF | caps::MULTI_RESULTS,
        collation: 45,
        ext: 0,
    }
}

/// Opens a client connection with shardgate's own lean codec.
pub async fn connect(
    addr: &str,
    user: &str,
    password: &str,
    database: Option<&str>,
) -> Result<BackendConn, String> {
    let target = Cluster {
        name: "bench".into(),
        standbys: Vec::new(),
        primary: addr.into(),
        user: user.into(),
        password: password.into(),
        tls: None,
    };
    BackendConn::connect(&target, client_key(), database, Duration::from_secs(10))
        .await
        .map(|(conn, _)| conn)
        .map_err(|e| e.to_string())
}

/// Runs one statement; an ERR from the server is an error here.
pub async fn exec(conn: &mut BackendConn, sql: &str) -> Result<(), String> {
    let mut payload = Vec::with_capacity(sql.len() + 1);
    payload.push(command::QUERY);
    payload.extend_from_slice(sql.as_bytes());
    let c = tokio::time::timeout(
        Duration::from_secs(300),
        conn.exec(&payload, ResponseKind::Query),
    )
    .await
    .map_err(|_| format!("timed out: {}", short(sql)))?
    .map_err(|e| format!("{e}: {}", short(sql)))?;
    if let Some(err) = c.err() {
        return Err(format!("{}: {}", err.message, short(sql)));
    }
    Ok(())
}

fn short(sql: &str) -> &str {
    &sql[..sql.len().min(120)]
}

const SCHEMA: &[&str] = &[
    "DROP TABLE IF EXISTS items, conversations, messages, events, bench_ws",
    "CREATE TABLE items (workspace_id BIGINT NOT NULL, id INT NOT NULL, \
     val VARCHAR(64) NOT NULL, PRIMARY KEY (workspace_id, id)) ENGINE=InnoDB",
    "CREATE TABLE conversations (workspace_id BIGINT NOT NULL, id INT NOT NULL, \
     title VARCHAR(100) NOT NULL, state VARCHAR(16) NOT NULL, updated_at BIGINT NOT NULL, \
     PRIMARY KEY (workspace_id, id)) ENGINE=InnoDB",
    "CREATE TABLE messages (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
     workspace_id BIGINT NOT NULL, conversation_id INT NOT NULL, author INT NOT NULL, \
     body VARCHAR(255) NOT NULL, created_at BIGINT NOT NULL, \
     KEY by_conversation (workspace_id, conversation_id, id)) ENGINE=InnoDB",
    "CREATE TABLE events (id BIGINT NOT NULL AUTO_INCREMENT PRIMARY KEY, \
     workspace_id BIGINT NOT NULL, kind INT NOT NULL, payload VARCHAR(100) NOT NULL) ENGINE=InnoDB",
    "CREATE TABLE bench_ws (workspace_id BIGINT NOT NULL PRIMARY KEY) ENGINE=InnoDB",
];

/// Creates the bench tables on every shard and loads the measured shard (index 0)
/// with `size` worth of rows for `workspaces`. Rows are generated server-side with
/// MariaDB's sequence engine, so loading takes seconds.
pub async fn load(servers: &Servers, workspaces: &[u64], size: DataSize) -> Result<(), String> {
    load_shards(servers, &[workspaces.to_vec()], size).await
}

/// Creates the bench tables on every shard and loads shard `i` with `size` worth of
/// rows for the workspaces `per_shard[i]` (none for a shard past the list's end).
pub async fn load_shards(
    servers: &Servers,
    per_shard: &[Vec<u64>],
    size: DataSize,
) -> Result<(), String> {
    for (i, addr) in servers.addrs.iter().enumerate() {
        let workspaces = per_shard.get(i).map(Vec::as_slice).unwrap_or_default();
        let mut conn = connect(addr, &servers.user, &servers.password, None).await?;
        exec(
            &mut conn,
            &format!("CREATE DATABASE IF NOT EXISTS {DATABASE}"),
        )
        .await?;
        exec(&mut conn, &format!("USE {DATABASE}")).await?;
        for stmt in SCHEMA {
            exec(&mut conn, stmt).await?;
        }
        if workspaces.is_empty() {
            continue;
        }
        for chunk in workspaces.chunks(1000) {
            let mut sql = String::from("INSERT INTO bench_ws VALUES ");
            for (j, w) in chunk.iter().enumerate() {
                let _ = write!(sql, "{}({w})", if j > 0 { "," } else { "" });
            }
            exec(&mut conn, &sql).await?;
        }
        let DataSize {
            items,
            conversations,
            messages,
            ..
        } = size;
        exec(
            &mut conn,
            &format!(
                "INSERT INTO items SELECT w.workspace_id, s.seq, CONCAT('item-', w.workspace_id, '-', s.seq) \
                 FROM bench_ws w JOIN seq_1_to_{items} s"
            ),
        )
        .await?;
        exec(
            &mut conn,
            &format!(
                "INSERT INTO conversations SELECT w.workspace_id, s.seq, CONCAT('Conversation ', s.seq), \
                 'open', s.seq FROM bench_ws w JOIN seq_1_to_{conversations} s"
            ),
        )
        .await?;
        exec(
            &mut conn,
            &format!(
                "INSERT INTO messages (workspace_id, conversation_id, author, body, created_at) \
                 SELECT w.workspace_id, c.seq, m.seq % 7, \
                 CONCAT('Message ', m.seq, ': thanks, that fixed it; one more question about billing'), m.seq \
                 FROM bench_ws w JOIN seq_1_to_{conversations} c JOIN seq_1_to_{messages} m"
            ),
        )
        .await?;
    }
    Ok(())
}

/// The bench vschema: keyspace `bench` sharded by `workspace_id` (xxhash) over one
/// shard per server, shard `s0` first.
pub fn vschema_toml(servers: &Servers) -> String {
    let mut t = String::new();
    for (i, addr) in servers.addrs.iter().enumerate() {
        let _ = writeln!(
            t,
            "[clusters.s{i}]\nprimary = \"{addr}\"\nuser = \"{}\"\npassword = \"{}\"\n",
            servers.user, servers.password
        );
    }
    let n = servers.addrs.len();
    let _ = writeln!(
        t,
        "[keyspaces.{DATABASE}]\nsharded = true\nvindex = \"xxhash\"\ndefault_column = \"workspace_id\"\nshards = ["
    );
    for i in 0..n {
        let _ = writeln!(
            t,
            "  {{ name = \"{}\", cluster = \"s{i}\", database = \"{DATABASE}\" }},",
            shard_name(i, n)
        );
    }
    let _ = writeln!(t, "]\n\n[keyspaces.{DATABASE}.tables]");
    for table in ["items", "conversations", "messages", "events", "bench_ws"] {
        let _ = writeln!(t, "{table} = {{ column = \"workspace_id\" }}");
    }
    t
}

/// Name of shard `i` of `n` equal key ranges split on the first byte (`-80`, `80-`).
fn shard_name(i: usize, n: usize) -> String {
    let bound = |k: usize| {
        if k == 0 || k == n {
            String::new()
        } else {
            format!("{:02x}", k * 256 / n)
        }
    };
    if n == 1 {
        return "-".into();
    }
    format!("{}-{}", bound(i), bound(i + 1))
}

/// The first `count` workspace ids (from 1) that the vschema places on cluster `s0`.
pub fn workspaces_on_first_shard(vschema: &VSchema, count: usize) -> Result<Vec<u64>, String> {
    let ks = vschema
        .keyspace(DATABASE)
        .ok_or("the bench vschema has no bench keyspace")?;
    Ok((1u64..)
        .filter(|w| ks.shard_for_workspace(*w).cluster == "s0")
        .take(count)
        .collect())
}

/// shardgate's config; `pool`: `[pool] max_connections` per cluster (None: shardgate's
/// default, 64).
pub fn config_toml(listen: SocketAddr, pool: Option<usize>) -> String {
    let mut t = format!(
        "listen = \"{listen}\"\nvschema = \"vschema.toml\"\nmax_client_connections = 20000\n\
         max_pending_logins = 1000\nmax_pending_logins_per_ip = 1000\n\n\
         [[users]]\nname = \"{PROXY_USER}\"\npassword = \"{PROXY_PASSWORD}\"\n"
    );
    if let Some(pool) = pool {
        let _ = write!(t, "\n[pool]\nmax_connections = {pool}\n");
    }
    t
}

/// shardgate's default `[pool] max_connections` (per cluster), for the bench's output.
pub fn default_pool_max() -> usize {
    shardgate::config::PoolConfig::default().max_connections
}

/// A free TCP port on 127.0.0.1 (free when asked; used at once).
pub fn free_addr() -> Result<SocketAddr, String> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    l.local_addr().map_err(|e| e.to_string())
}

/// A child process killed (and reaped) on drop.
pub struct ChildGuard {
    child: Child,
}

impl ChildGuard {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for ChildGuard {
    /// SIGTERM first (SIGINT may be ignored in a background job), so that shardgate shuts down gracefully and a profiler wrapped
    /// around it (perf, strace, valgrind) writes its report; SIGKILL after 15 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .stderr(Stdio::null())
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `program args` with output to `log`, and waits (at most 20 s) until `addr`
/// accepts connections.
pub fn spawn_listening(
    name: &'static str,
    program: &Path,
    args: &[&str],
    log: &Path,
    addr: SocketAddr,
) -> Result<ChildGuard, String> {
    let out = std::fs::File::create(log).map_err(|e| format!("{}: {e}", log.display()))?;
    let err = out.try_clone().map_err(|e| e.to_string())?;
    // SHARDGATE_BENCH_WRAP="perf record -g -o FILE --" runs shardgate under a profiler;
    // SHARDGATE_BENCH_WRAP_RELAY the relay.
    let var = match name {
        "shardgate" => Some("SHARDGATE_BENCH_WRAP"),
        "shardgate-relay" => Some("SHARDGATE_BENCH_WRAP_RELAY"),
        _ => None,
    };
    let wrap: Vec<String> = match var.map(std::env::var) {
        Some(Ok(w)) => w.split_whitespace().map(str::to_string).collect(),
        _ => Vec::new(),
    };
    let mut command = match wrap.split_first() {
        Some((first, rest)) => {
            let mut c = Command::new(first);
            c.args(rest).arg(program);
            c
        }
        None => Command::new(program),
    };
    let child = command
        .args(args)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .map_err(|e| format!("start {}: {e}", program.display()))?;
    let mut guard = ChildGuard { child };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(guard);
        }
        if let Ok(Some(status)) = guard.child.try_wait() {
            let log_text = std::fs::read_to_string(log).unwrap_or_default();
            return Err(format!("{name} exited with {status}:\n{log_text}"));
        }
        if Instant::now() > deadline {
            return Err(format!("{name} did not listen on {addr} within 20 s"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes `config` as `dir/shardgate.toml` and starts the release `shardgate serve`
/// with it (log in `dir/shardgate.log`), waiting until it listens on `addr`.
pub fn spawn_proxy(
    dir: &Path,
    program: &Path,
    config: &str,
    addr: SocketAddr,
) -> Result<ChildGuard, String> {
    let path = dir.join("shardgate.toml");
    std::fs::write(&path, config).map_err(|e| format!("{}: {e}", path.display()))?;
    spawn_listening(
        "shardgate",
        program,
        &["serve", "--config", &path.to_string_lossy()],
        &dir.join("shardgate.log"),
        addr,
    )
}

/// A subcommand's parsed options, or `None` once its usage is printed (`--help`, which
/// the parsers report as an empty error).
pub fn options_or_usage<T>(parsed: Result<T, String>, usage: &str) -> Result<Option<T>, String> {
    match parsed {
        Ok(o) => Ok(Some(o)),
        Err(msg) if msg.is_empty() => {
            println!("{usage}");
            Ok(None)
        }
        Err(msg) => Err(format!("{msg}\n\n{usage}")),
    }
}

/// The directory the bench binaries live in (shardgate and the relay sit beside it).
pub fn sibling_binary(name: &str) -> Result<PathBuf, String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let path = exe.with_file_name(name);
    if path.exists() {
        Ok(path)
    } else {
        Err(format!(
            "{} not found; build it first (`cargo build --release`)",
            path.display()
        ))
    }
}
