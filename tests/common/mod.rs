//! Shared harness for the integration tests: local MariaDB servers, shard maps over
//! them, the proxy in-process or as the real binary, and clients to talk to either.
//!
//! Each test file uses part of it, so unused-item warnings are silenced here.
#![allow(dead_code)]

pub mod demo;
pub mod etcd;
pub mod passthrough;

use std::fmt::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate::config::{PoolConfig, ProxyConfig, User};
use shardgate::demo::localdb::{LocalDbOptions, LocalMariaDb};
use shardgate::demo::replication::{LocalCluster, LocalClusterOptions};
use shardgate::vschema::VSchema;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Starts `n` servers in parallel (free ports, user/password `shardgate`).
pub fn start_servers(n: usize) -> Vec<LocalMariaDb> {
    start_servers_with(&vec![LocalDbOptions::default(); n])
}

/// Starts one server per entry of `opts`, in parallel (e.g. with TLS).
pub fn start_servers_with(opts: &[LocalDbOptions]) -> Vec<LocalMariaDb> {
    shardgate::demo::replication::start_all(opts).expect("MariaDB servers should start")
}

/// Starts `n_clusters` replicated clusters in parallel, each a primary and
/// `standbys_per_cluster` standbys (free ports, user/password `shardgate`), returning
/// once every standby replicates.
pub fn start_replicated_clusters(
    n_clusters: usize,
    standbys_per_cluster: usize,
) -> Vec<LocalCluster> {
    start_replicated_clusters_with(
        n_clusters,
        &LocalClusterOptions {
            standbys: standbys_per_cluster,
            ..LocalClusterOptions::default()
        },
    )
}

/// [`start_replicated_clusters`] with other options (e.g. the semi-sync timeout).
pub fn start_replicated_clusters_with(
    n_clusters: usize,
    opts: &LocalClusterOptions,
) -> Vec<LocalCluster> {
    std::thread::scope(|scope| {
        let starting: Vec<_> = (0..n_clusters)
            .map(|_| scope.spawn(|| LocalCluster::start(opts)))
            .collect();
        starting
            .into_iter()
            .map(|t| {
                t.join()
                    .expect("starting a replicated cluster panicked")
                    .expect("replicated cluster should start")
            })
            .collect()
    })
}

/// Vitess-style names of `n` shards splitting the keyspace-id space evenly by its
/// first byte: 1 -> `-`, 2 -> `-80`, `80-`, 4 -> `-40`, `40-80`, `80-c0`, `c0-`.
pub fn shard_names(n: usize) -> Vec<String> {
    assert!((1..=256).contains(&n), "1 to 256 shards");
    if n == 1 {
        return vec!["-".to_string()];
    }
    let bounds: Vec<String> = (1..n).map(|i| format!("{:02x}", i * 256 / n)).collect();
    (0..n)
        .map(|i| {
            let start = if i == 0 { "" } else { &bounds[i - 1] };
            let end = if i == n - 1 { "" } else { &bounds[i] };
            format!("{start}-{end}")
        })
        .collect()
}

/// A vschema over local servers: cluster `cI` per server, keyspace `app` sharded by
/// `workspace_id` with one shard per server (database `app`), and the unsharded
/// default keyspace `main` (database `main`) on the first server.
/// [`ShardedVSchema::build`] also creates those databases.
pub struct ShardedVSchema<'a> {
    servers: Vec<&'a LocalMariaDb>,
    /// Each cluster's standby addresses (empty for plain servers).
    standbys: Vec<Vec<String>>,
    /// Write `standbys = [...]` into each cluster (see [`ShardedVSchema::with_standbys`]).
    emit_standbys: bool,
    vindex: String,
    tables: Vec<(String, String)>,
    pins: Vec<(u64, String)>,
    ddl: Option<String>,
}

impl<'a> ShardedVSchema<'a> {
    /// The default map over `servers` (xxhash vindex, no tables listed, no pins).
    pub fn new(servers: &'a [LocalMariaDb]) -> Self {
        assert!(!servers.is_empty(), "a vschema needs at least one server");
        ShardedVSchema {
            servers: servers.iter().collect(),
            standbys: vec![Vec::new(); servers.len()],
            emit_standbys: false,
            vindex: "xxhash".to_string(),
            tables: Vec::new(),
            pins: Vec::new(),
            ddl: None,
        }
    }

    /// The default map over replicated clusters: cluster `cI` is `clusters[I-1]`'s
    /// primary. Their standbys are listed in the TOML only after
    /// [`ShardedVSchema::with_standbys`].
    pub fn for_clusters(clusters: &'a [LocalCluster]) -> Self {
        assert!(!clusters.is_empty(), "a vschema needs at least one cluster");
        ShardedVSchema {
            servers: clusters.iter().map(|c| &c.primary).collect(),
            standbys: clusters.iter().map(LocalCluster::standby_addrs).collect(),
            emit_standbys: false,
            vindex: "xxhash".to_string(),
            tables: Vec::new(),
            pins: Vec::new(),
            ddl: None,
        }
    }

    /// Writes `standbys = ["127.0.0.1:PORT", ...]` into every `[clusters.cI]` that has
    /// standbys. Opt-in: a vschema parser that does not know the key refuses it.
    pub fn with_standbys(mut self) -> Self {
        self.emit_standbys = true;
        self
    }

    /// Sets keyspace `app`'s DDL policy (`queued` or `direct`).
    pub fn ddl(mut self, policy: &str) -> Self {
        self.ddl = Some(policy.to_string());
        self
    }

    /// Uses vindex `name` (`xxhash` or `numeric`).
    pub fn vindex(mut self, name: &str) -> Self {
        self.vindex = name.to_string();
        self
    }

    /// Lists table `name` of `app`, sharded by `column`.
    pub fn table(mut self, name: &str, column: &str) -> Self {
        self.tables
            .push((name.to_string(), format!("{{ column = \"{column}\" }}")));
        self
    }

    /// Lists table `name` of `app` as a reference table (a copy on every shard).
    pub fn reference_table(mut self, name: &str) -> Self {
        self.tables
            .push((name.to_string(), "{ type = \"reference\" }".to_string()));
        self
    }

    /// Pins `workspace` to the shard named `shard` (e.g. `80-`).
    pub fn pin(mut self, workspace: u64, shard: &str) -> Self {
        self.pins.push((workspace, shard.to_string()));
        self
    }

    /// The TOML text, without touching the servers.
    pub fn toml(&self) -> String {
        let mut out = String::new();
        for (i, server) in self.servers.iter().enumerate() {
            let _ = write!(
                out,
                "[clusters.c{}]\nprimary = \"{}\"\nuser = \"{}\"\npassword = \"{}\"\n",
                i + 1,
                server.addr(),
                server.user,
                server.password
            );
            match self.standbys.get(i) {
                Some(standbys) if self.emit_standbys && !standbys.is_empty() => {
                    let quoted: Vec<String> = standbys.iter().map(|a| format!("\"{a}\"")).collect();
                    let _ = writeln!(out, "standbys = [{}]\n", quoted.join(", "));
                }
                _ => out.push('\n'),
            }
        }
        let _ = writeln!(
            out,
            "[keyspaces.app]\nsharded = true\nvindex = \"{}\"\ndefault_column = \"workspace_id\"{}\nshards = [",
            self.vindex,
            self.ddl
                .as_ref()
                .map(|d| format!("\nddl = \"{d}\""))
                .unwrap_or_default()
        );
        for (i, name) in shard_names(self.servers.len()).iter().enumerate() {
            let _ = writeln!(
                out,
                "  {{ name = \"{name}\", cluster = \"c{}\", database = \"app\" }},",
                i + 1
            );
        }
        out.push_str("]\n\n");
        if !self.tables.is_empty() {
            out.push_str("[keyspaces.app.tables]\n");
            for (name, spec) in &self.tables {
                let _ = writeln!(out, "{name} = {spec}");
            }
            out.push('\n');
        }
        if !self.pins.is_empty() {
            out.push_str("[keyspaces.app.pins]\n");
            for (workspace, shard) in &self.pins {
                let _ = writeln!(out, "\"{workspace}\" = \"{shard}\"");
            }
            out.push('\n');
        }
        out.push_str("[keyspaces.main]\ncluster = \"c1\"\ndatabase = \"main\"\ndefault = true\n");
        out
    }

    /// Creates database `app` on every server and `main` on the first, then returns
    /// the TOML text.
    pub fn build(&self) -> String {
        for server in &self.servers {
            server
                .sql("CREATE DATABASE IF NOT EXISTS app")
                .expect("create database app");
        }
        self.servers[0]
            .sql("CREATE DATABASE IF NOT EXISTS main")
            .expect("create database main");
        self.toml()
    }
}

/// The default [`ShardedVSchema`] over `servers`, databases created.
pub fn sharded_vschema(servers: &[LocalMariaDb]) -> String {
    ShardedVSchema::new(servers).build()
}

/// Users every test proxy knows: `app`/`app` and the admin `admin`/`admin`.
pub fn test_users() -> Vec<User> {
    User::demo_users()
}

/// The proxy served in-process on a task of the current runtime.
pub struct Proxy {
    /// Where it listens (127.0.0.1, a free port).
    pub addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<std::io::Result<()>>>,
}

impl Proxy {
    /// `127.0.0.1:PORT`, for [`cli`] and [`mysql_opts`].
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// Signals shutdown and waits for the proxy to finish (at most 10 s).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            let result = tokio::time::timeout(Duration::from_secs(10), task)
                .await
                .expect("proxy should stop within 10 s")
                .expect("proxy task should not panic");
            result.expect("proxy should stop cleanly");
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }
}

/// Starts the proxy in-process with `vschema_toml` (see [`ShardedVSchema`]).
pub async fn start_proxy(vschema_toml: &str) -> Proxy {
    let vschema = VSchema::from_toml_str(vschema_toml)
        .unwrap_or_else(|e| panic!("test vschema should be valid:\n{e}\n{vschema_toml}"));
    start_proxy_with(vschema, PoolConfig::default()).await
}

impl Proxy {
    /// A `mysql_async` connection through the proxy as one of [`test_users`] (whose
    /// password is its name), into `db`.
    pub async fn connect(&self, user: &str, db: Option<&str>) -> mysql_async::Conn {
        mysql_async::Conn::new(mysql_opts(&self.addr.to_string(), user, user, db))
            .await
            .unwrap_or_else(|e| panic!("connect through the proxy as {user}: {e}"))
    }
}

/// Starts the proxy in-process with a parsed vschema and explicit pool limits.
pub async fn start_proxy_with(vschema: VSchema, pool: PoolConfig) -> Proxy {
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("addr"), test_users(), vschema);
    config.pool = pool;
    config.max_client_connections = 1000;
    // Tests queue many small changes: space instant DDL less than production does.
    config.migrations = Some(shardgate::migrations::executor::ExecutorConfig {
        instant_spacing: Duration::from_millis(200),
        poll_interval: Duration::from_millis(200),
        ..Default::default()
    });
    start_proxy_config(config).await
}

/// Starts the proxy in-process with a whole configuration (its `listen` is replaced by
/// a free loopback port).
pub async fn start_proxy_config(mut config: ProxyConfig) -> Proxy {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind a free port for the proxy");
    let addr = listener.local_addr().expect("proxy listener address");
    config.listen = addr;
    let config = Arc::new(config);
    let (stop, stopped) = oneshot::channel::<()>();
    // As `shardgate serve` runs by default: sessions on their own single-threaded
    // workers, the rest on this runtime.
    let task = tokio::spawn(async move {
        let workers = shardgate::workers::Workers::start(2).expect("start session workers");
        let served = shardgate::server::serve_on(
            config,
            listener,
            async move {
                let _ = stopped.await;
            },
            Some(&workers),
        )
        .await;
        // Joining their threads blocks: not on this runtime's.
        let _ = tokio::task::spawn_blocking(move || drop(workers)).await;
        served
    });
    Proxy {
        addr,
        stop: Some(stop),
        task: Some(task),
    }
}

/// The real `shardgate` binary, serving as a child process; killed on drop.
pub struct ProxyProcess {
    /// Where it listens.
    pub addr: SocketAddr,
    /// The config file it was started with.
    pub config_path: PathBuf,
    /// Its vschema file (tests may rewrite it to exercise reloads).
    pub vschema_path: PathBuf,
    child: Child,
    dir: tempfile::TempDir,
}

impl ProxyProcess {
    /// `127.0.0.1:PORT`.
    pub fn addr_string(&self) -> String {
        self.addr.to_string()
    }

    /// What the process wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("shardgate.log")).unwrap_or_default()
    }

    /// Its process id (for signals).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Whether it has exited, and how.
    pub fn try_wait(&mut self) -> Option<std::process::ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Kills it (SIGKILL) and starts it again with the same config file and port;
    /// returns once the port accepts connections.
    pub fn restart(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(self.dir.path().join("shardgate.log"))
            .expect("open log file");
        let log_err = log.try_clone().expect("clone log file handle");
        self.child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
            .arg("serve")
            .arg("--config")
            .arg(&self.config_path)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .expect("spawn the shardgate binary");
        wait_for_port(self);
    }

    /// Kills it and waits for it.
    pub fn kill(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ProxyProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A free TCP address on 127.0.0.1 (free when asked; bind it at once), e.g. for a
/// proxy's `metrics_listen`.
pub fn free_local_addr() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port on 127.0.0.1")
}

/// Runs `shardgate serve --config FILE` with `vschema_toml`, users app/app and
/// admin/admin, on a free port; returns once the port accepts connections.
/// `extra_config` is appended to the config file verbatim.
pub fn spawn_proxy_binary(vschema_toml: &str, extra_config: &str) -> ProxyProcess {
    let dir = tempfile::tempdir().expect("temp dir for the proxy's files");
    let vschema_path = dir.path().join("vschema.toml");
    std::fs::write(&vschema_path, vschema_toml).expect("write vschema file");
    let port = free_local_addr().port();
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let config = format!(
        "listen = \"{addr}\"\nvschema = \"{}\"\n{extra_config}\n\n\
         [[users]]\nname = \"app\"\npassword = \"app\"\nadmin = false\n\n\
         [[users]]\nname = \"admin\"\npassword = \"admin\"\nadmin = true\n",
        vschema_path.display()
    );
    let config_path = dir.path().join("shardgate.toml");
    std::fs::write(&config_path, config).expect("write config file");
    let log = std::fs::File::create(dir.path().join("shardgate.log")).expect("create log file");
    let log_err = log.try_clone().expect("clone log file handle");
    let child = Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .arg("serve")
        .arg("--config")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .expect("spawn the shardgate binary");
    let mut process = ProxyProcess {
        addr,
        config_path,
        vschema_path,
        child,
        dir,
    };
    wait_for_port(&mut process);
    process
}

fn wait_for_port(process: &mut ProxyProcess) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(status) = process.try_wait() {
            panic!(
                "shardgate exited ({status}) before listening:\n{}",
                process.log()
            );
        }
        if TcpStream::connect_timeout(&process.addr, Duration::from_millis(200)).is_ok() {
            return;
        }
        if Instant::now() >= deadline {
            panic!(
                "shardgate not listening on {} after 20 s:\n{}",
                process.addr,
                process.log()
            );
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Splits `host:port`.
fn host_port(addr: &str) -> (String, u16) {
    let (host, port) = addr.rsplit_once(':').expect("address should be host:port");
    let port = port.parse().expect("port should be a number");
    (host.trim_matches(['[', ']']).to_string(), port)
}

/// Runs `sql` with the `mariadb` CLI over TCP in batch mode without column names.
pub fn cli(addr: &str, user: &str, password: &str, db: Option<&str>, sql: &str) -> Output {
    cli_with_args(addr, user, password, db, sql, &[])
}

/// Like [`cli`], with extra CLI arguments (e.g. `--column-names`, `--table`).
pub fn cli_with_args(
    addr: &str,
    user: &str,
    password: &str,
    db: Option<&str>,
    sql: &str,
    extra: &[&str],
) -> Output {
    let (host, port) = host_port(addr);
    let mut cmd = Command::new("mariadb");
    cmd.arg("--no-defaults")
        .arg("--protocol=TCP")
        .arg(format!("-h{host}"))
        .arg(format!("-P{port}"))
        .arg(format!("--user={user}"))
        .arg(format!("--password={password}"))
        .arg("--batch")
        .arg("--skip-column-names")
        .arg("--connect-timeout=10")
        .args(extra)
        .arg("-e")
        .arg(sql);
    if let Some(db) = db {
        cmd.arg(db);
    }
    cmd.output().expect("run the mariadb CLI")
}

/// [`cli`]'s stdout, panicking with stderr if the CLI failed.
pub fn cli_ok(addr: &str, user: &str, password: &str, db: Option<&str>, sql: &str) -> String {
    let out = cli(addr, user, password, db, sql);
    assert!(
        out.status.success(),
        "mariadb CLI failed for `{sql}` on {addr}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Connection options for `mysql_async` over TCP.
pub fn mysql_opts(addr: &str, user: &str, password: &str, db: Option<&str>) -> mysql_async::Opts {
    let (host, port) = host_port(addr);
    mysql_async::OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some(user))
        .pass(Some(password))
        .db_name(db)
        .prefer_socket(false)
        .into()
}

/// Runs `sql` directly on `server` as root (bypassing the proxy); returns stdout.
pub fn direct_query(server: &LocalMariaDb, sql: &str) -> String {
    server
        .sql(sql)
        .unwrap_or_else(|e| panic!("direct query `{sql}` on {}: {e}", server.addr()))
}

/// A counter of the server's `SHOW GLOBAL STATUS` (`Com_change_db`, `Connections`, ...).
pub fn status_counter(server: &LocalMariaDb, name: &str) -> u64 {
    let value = server
        .global_status(name)
        .unwrap_or_else(|e| panic!("status {name} on {}: {e}", server.addr()));
    value
        .parse()
        .unwrap_or_else(|_| panic!("status {name} on {}: {value:?}", server.addr()))
}

/// Logs in to `addr` over a raw socket (DEPRECATE_EOF, mysql_native_password) and
/// returns it ready for commands, for tests that read the packets themselves.
pub async fn raw_login(
    addr: &str,
    user: &str,
    password: &str,
    db: Option<&str>,
) -> tokio::net::TcpStream {
    raw_login_with(addr, user, password, db, 0, 45).await
}

/// [`raw_login`] with extra client capabilities and a connection collation.
pub async fn raw_login_with(
    addr: &str,
    user: &str,
    password: &str,
    db: Option<&str>,
    extra_caps: u32,
    collation: u8,
) -> tokio::net::TcpStream {
    let mut s = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (_, g) = raw_read(&mut s).await.expect("greeting");
    let ok = raw_answer_greeting(&mut s, &g, user, password, db, extra_caps, collation).await;
    assert_eq!(ok.first(), Some(&0), "login ok");
    s
}

/// Answers greeting `g` on a raw connection with a `mysql_native_password` handshake
/// response (DEPRECATE_EOF plus `extra_caps`) and returns the server's reply packet.
pub async fn raw_answer_greeting(
    s: &mut tokio::net::TcpStream,
    g: &[u8],
    user: &str,
    password: &str,
    db: Option<&str>,
    extra_caps: u32,
    collation: u8,
) -> Vec<u8> {
    use shardgate::protocol::auth::native_token;
    use shardgate::protocol::handshake::{
        build_handshake_response, parse_greeting, HandshakeResponse,
    };
    use shardgate::protocol::{caps, packet::put_packet};
    use tokio::io::AsyncWriteExt;

    let g = parse_greeting(g).expect("valid greeting");
    let resp = HandshakeResponse {
        capabilities: caps::BACKEND_BASE | caps::DEPRECATE_EOF | extra_caps,
        max_packet: 1 << 24,
        collation,
        user: user.into(),
        auth_response: native_token(password.as_bytes(), &g.scramble),
        database: db.map(str::to_string),
        auth_plugin: Some("mysql_native_password".into()),
        attributes: vec![],
        ext_capabilities: 0,
    };
    let mut out = bytes::BytesMut::new();
    put_packet(&mut out, 1, &build_handshake_response(&resp));
    s.write_all(&out).await.expect("send login");
    raw_read(s).await.expect("login reply").1
}

/// Reads one packet from a raw connection: (sequence id, payload), or None when the
/// stream ends or nothing comes within 5 s.
pub async fn raw_read(s: &mut tokio::net::TcpStream) -> Option<(u8, Vec<u8>)> {
    use tokio::io::AsyncReadExt;
    let mut h = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .ok()?
        .ok()?;
    let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
    let mut p = vec![0u8; len];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut p))
        .await
        .ok()?
        .ok()?;
    Some((h[3], p))
}

/// Sends a COM_QUERY of raw bytes on a raw connection.
pub async fn raw_query(s: &mut tokio::net::TcpStream, sql: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut p = vec![0x03];
    p.extend_from_slice(sql);
    let mut out = bytes::BytesMut::new();
    shardgate::protocol::packet::put_packet(&mut out, 0, &p);
    s.write_all(&out).await.expect("send query");
}

/// `n` servers under the default [`ShardedVSchema`] with table `app.notes (id,
/// workspace_id)` sharded by `workspace_id` and created on every shard: the setup of the
/// schema-change tests. Returns the servers and the vschema.
pub fn servers_with_notes(n: usize) -> (Vec<LocalMariaDb>, VSchema) {
    let servers = start_servers(n);
    let toml = ShardedVSchema::new(&servers)
        .table("notes", "workspace_id")
        .build();
    for s in &servers {
        s.sql("CREATE TABLE app.notes (id INT PRIMARY KEY, workspace_id BIGINT NOT NULL)")
            .expect("create app.notes");
    }
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    (servers, vs)
}

/// The server error a statement must fail with: (code, message).
pub async fn server_error(conn: &mut mysql_async::Conn, sql: &str) -> (u16, String) {
    use mysql_async::prelude::Queryable;
    match conn.query_drop(sql).await {
        Err(mysql_async::Error::Server(e)) => (e.code, e.message),
        other => panic!("expected a server error for {sql:?}, got {other:?}"),
    }
}

/// A number `sql` answers when run directly on `server`.
pub fn number_on(server: &LocalMariaDb, sql: &str) -> u64 {
    direct_query(server, sql)
        .trim()
        .parse()
        .unwrap_or_else(|e| panic!("`{sql}` should answer a number: {e}"))
}

/// An ERR packet's (code, SQLSTATE, message); None for any other packet.
pub fn raw_err(p: &[u8]) -> Option<(u16, String, String)> {
    if p.first() != Some(&0xff) || p.len() < 9 {
        return None;
    }
    let code = u16::from_le_bytes([p[1], p[2]]);
    let state = String::from_utf8_lossy(&p[4..9]).into_owned();
    let msg = String::from_utf8_lossy(&p[9..]).into_owned();
    Some((code, state, msg))
}

/// The default [`ShardedVSchema`] over `servers` with table `app.messages (id,
/// workspace_id, body)` sharded by `workspace_id` and created on every shard; returns
/// the TOML text.
pub fn vschema_with_messages(servers: &[LocalMariaDb]) -> String {
    let toml = ShardedVSchema::new(servers)
        .table("messages", "workspace_id")
        .build();
    for s in servers {
        direct_query(
            s,
            "CREATE TABLE app.messages (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             workspace_id BIGINT NOT NULL, body VARCHAR(200))",
        );
    }
    toml
}

/// A self-signed certificate for 127.0.0.1 and localhost, written as PEM files.
pub struct TestCert {
    _dir: tempfile::TempDir,
    /// The certificate (also the CA clients verify against).
    pub cert: PathBuf,
    /// Its private key.
    pub key: PathBuf,
}

pub fn test_cert() -> TestCert {
    let certified =
        rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string(), "localhost".into()])
            .expect("generate a self-signed certificate");
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("cert.pem");
    let key = dir.path().join("key.pem");
    std::fs::write(&cert, certified.cert.pem()).expect("write cert");
    std::fs::write(&key, certified.key_pair.serialize_pem()).expect("write key");
    TestCert {
        _dir: dir,
        cert,
        key,
    }
}

/// One unsharded keyspace `app` on the first server.
pub fn unsharded(servers: &[LocalMariaDb]) -> VSchema {
    servers[0]
        .sql("CREATE DATABASE IF NOT EXISTS app")
        .expect("db");
    let toml = format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n\
         [keyspaces.app]\ncluster = \"c1\"\n",
        servers[0].addr()
    );
    VSchema::from_toml_str(&toml).expect("vschema")
}

/// The body (headers included) of `GET path` from shardgate's metrics listener.
pub async fn http_get(addr: SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect metrics");
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes())
        .await
        .expect("request");
    let mut out = String::new();
    s.read_to_string(&mut out).await.expect("response");
    out
}

/// Clusters `cI` over `servers` (two of them) and keyspace `tenants`, one database per
/// workspace (`ws_{id}`), shards `-80` on c1 and `80-` on c2, workspace 7 pinned to `80-`.
pub fn per_workspace_vschema(servers: &[LocalMariaDb]) -> String {
    let mut t = String::new();
    for (i, s) in servers.iter().enumerate() {
        t.push_str(&format!(
            "[clusters.c{}]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n",
            i + 1,
            s.addr()
        ));
    }
    t.push_str(
        "[keyspaces.tenants]\nsharded = true\nvindex = \"xxhash\"\ntenancy = \"database_per_workspace\"\n\
         database_template = \"ws_{id}\"\nshards = [{ name = \"-80\", cluster = \"c1\" }, { name = \"80-\", cluster = \"c2\" }]\n\
         [keyspaces.tenants.pins]\n\"7\" = \"80-\"\n",
    );
    t
}
