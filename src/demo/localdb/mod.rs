//! Local MariaDB servers started from the system's `mariadbd`, for `shardgate demo`
//! and the integration tests.
//!
//! Each server gets its own directory under the system temp dir (data, unix socket,
//! pid file, error log) and listens on 127.0.0.1 only. Every MariaDB program started
//! here ignores the user's MySQL setup: `--no-defaults` comes first so no option file
//! (`/etc/mysql`, `~/.my.cnf`) is read, and the environment is cleared, so
//! `MYSQL_PWD`, `MYSQL_HOST`, `MYSQL_TCP_PORT` and the like cannot redirect or break
//! our own logins (see `mariadb_command`).
//!
//! `mariadb-install-db` runs once per machine and MariaDB build into a template
//! directory, which each server then copies: a server is ready in a few hundred
//! milliseconds instead of seconds.
//!
//! A server is stopped (SIGTERM, then SIGKILL after a grace period) and its directory
//! removed when [`LocalMariaDb::stop`] is called or the value is dropped, including
//! on a panic's unwind.

mod client;
mod files;

use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::process::{all_threads_stopped, send_signal, terminate, SIGCONT, SIGSTOP};
use super::replication::{member_args, ReplicationMember};
use client::{mariadb_command, run_client, tail};
pub use files::find_mariadbd;
use files::{
    binaries, copy_dir, reap_orphans_once, running_as_root, template, unique_dir, Binaries,
    LOG_FILE_SIZE,
};

use crate::backend::quote_literal;

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to shut down after SIGTERM before it is killed.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts to start on a freshly picked port when another process took it first.
const PORT_ATTEMPTS: usize = 5;

/// How to start a [`LocalMariaDb`].
#[derive(Debug, Clone)]
pub struct LocalDbOptions {
    /// TCP port on 127.0.0.1; `None` picks a free one.
    pub port: Option<u16>,
    /// InnoDB buffer pool size in MiB.
    pub buffer_pool_mb: u32,
    /// User created with all privileges for clients (and shardgate) to log in as.
    pub user: String,
    /// That user's password (mysql_native_password). Neither may contain a backslash
    /// or NUL: they are written as SQL literals that must read the same in any mode.
    pub password: String,
    /// Serve TLS (tests of shardgate's TLS to its backends); None: plain only.
    pub tls: Option<LocalDbTls>,
    /// Binary log, GTID and semi-sync settings of a replication member (see
    /// [`super::replication`]); None: a server of its own, still with a row-based
    /// binary log (`binlog_row_image=FULL`) for the copy engine's change capture.
    pub replication: Option<ReplicationMember>,
}

/// A local server's TLS: PEM text written into its directory as `ssl_cert`,
/// `ssl_key` and `ssl_ca`.
#[derive(Debug, Clone)]
pub struct LocalDbTls {
    /// The server's certificate chain.
    pub cert_pem: String,
    /// Its private key.
    pub key_pem: String,
    /// CA that client certificates must chain to, if any.
    pub ca_pem: Option<String>,
    /// `require_secure_transport=ON`: the server itself refuses clear-text TCP logins
    /// (the unix socket, which the harness uses for setup, still counts as secure).
    pub require_secure_transport: bool,
}

impl Default for LocalDbOptions {
    fn default() -> Self {
        LocalDbOptions {
            port: None,
            buffer_pool_mb: 32,
            user: "shardgate".to_string(),
            password: "shardgate".to_string(),
            tls: None,
            replication: None,
        }
    }
}

/// A running MariaDB server that this process started and owns.
#[derive(Debug)]
pub struct LocalMariaDb {
    /// TCP port it listens on (127.0.0.1 only).
    pub port: u16,
    /// Its private directory: `data/`, `mariadb.sock`, `mariadb.pid`, `error.log`.
    pub dir: PathBuf,
    /// User created for clients, with all privileges.
    pub user: String,
    /// That user's password.
    pub password: String,
    /// How long the start took, from copying the template to answering `SELECT 1`.
    pub started_in: Duration,
    child: Option<Child>,
    client: PathBuf,
}

impl LocalMariaDb {
    /// Starts a server and returns once it answers queries over TCP and its socket.
    /// Blocking. With `opts.port == None` a free port is picked, and picked again if
    /// another process takes it in the meantime; a given port that is busy fails
    /// with [`io::ErrorKind::AddrInUse`].
    pub fn start(opts: &LocalDbOptions) -> io::Result<LocalMariaDb> {
        let binaries = binaries().map_err(io::Error::other)?;
        let template = template(binaries).map_err(io::Error::other)?;
        reap_orphans_once();
        let mut last_err = None;
        for _ in 0..PORT_ATTEMPTS {
            let port = match opts.port {
                Some(port) => {
                    ensure_port_free(port)?;
                    port
                }
                None => free_port()?,
            };
            match start_on_port(binaries, template, opts, port) {
                Ok(server) => return Ok(server),
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && opts.port.is_none() => {
                    last_err = Some(e);
                }
                Err(e) => return Err(e),
            }
        }
        Err(last_err.unwrap_or_else(|| io::Error::other("could not start MariaDB")))
    }

    /// `127.0.0.1:PORT`.
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The TCP address as a [`SocketAddr`].
    pub fn socket_addr(&self) -> SocketAddr {
        SocketAddr::from((Ipv4Addr::LOCALHOST, self.port))
    }

    /// Path of its unix socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("mariadb.sock")
    }

    /// Path of its error log.
    pub fn error_log(&self) -> PathBuf {
        self.dir.join("error.log")
    }

    /// Process id of `mariadbd`, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Runs `sql` (any number of `;`-separated statements) as root over the unix socket
    /// with the `mariadb` CLI in batch mode without column names. The text goes in on
    /// stdin, so scripts of any size work. Returns stdout, or an error carrying stderr.
    pub fn sql(&self, sql: &str) -> io::Result<String> {
        run_client(&self.client, &self.socket(), sql, false)
    }

    /// Like [`LocalMariaDb::sql`], with a first line of column names, for answers read
    /// by name (`SHOW SLAVE STATUS` has dozens of columns).
    pub fn sql_with_column_names(&self, sql: &str) -> io::Result<String> {
        run_client(&self.client, &self.socket(), sql, true)
    }

    /// A handle that runs SQL like [`LocalMariaDb::sql`] and can be sent to another
    /// thread (e.g. `spawn_blocking`) while this value stays where it is.
    pub fn sql_client(&self) -> SqlClient {
        SqlClient {
            client: self.client.clone(),
            socket: self.socket(),
        }
    }

    /// Stops the server (SIGTERM, SIGKILL if it has not exited after a grace period)
    /// and removes its directory. Dropping the value does the same.
    pub fn stop(mut self) {
        self.shutdown();
    }

    /// Suspends the server process (SIGSTOP): connections stay open but nothing is
    /// answered, like a badly degraded host. [`LocalMariaDb::resume`] undoes it.
    /// Returns once every thread of the server has stopped, so nothing sent after it is
    /// answered (a thread busy on another core finishes its current step first).
    pub fn pause(&self) -> io::Result<()> {
        self.signal(SIGSTOP)?;
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !all_threads_stopped(pid) {
            if Instant::now() > deadline {
                return Err(io::Error::other(
                    "the server did not stop within 2 s of SIGSTOP",
                ));
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        Ok(())
    }

    /// Resumes a server suspended with [`LocalMariaDb::pause`] (SIGCONT).
    pub fn resume(&self) -> io::Result<()> {
        self.signal(SIGCONT)
    }

    /// Kills the server at once (SIGKILL), like a crashed host; the directory stays
    /// until the value is dropped.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    fn signal(&self, signal: i32) -> io::Result<()> {
        match &self.child {
            Some(child) => send_signal(child.id(), signal),
            None => Err(io::Error::other("the server is not running")),
        }
    }

    fn shutdown(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child);
        }
        if !self.dir.as_os_str().is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
            self.dir = PathBuf::new();
        }
    }
}

/// Runs SQL as root on one server over its unix socket; see [`LocalMariaDb::sql_client`].
#[derive(Debug, Clone)]
pub struct SqlClient {
    client: PathBuf,
    socket: PathBuf,
}

impl SqlClient {
    /// Same as [`LocalMariaDb::sql`].
    pub fn sql(&self, sql: &str) -> io::Result<String> {
        run_client(&self.client, &self.socket, sql, false)
    }
}

impl Drop for LocalMariaDb {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

fn ensure_port_free(port: u16) -> io::Result<()> {
    match TcpListener::bind((Ipv4Addr::LOCALHOST, port)) {
        Ok(_) => Ok(()),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("port {port} on 127.0.0.1 is not available for MariaDB: {e}"),
        )),
    }
}

fn start_on_port(
    binaries: &Binaries,
    template: &Path,
    opts: &LocalDbOptions,
    port: u16,
) -> io::Result<LocalMariaDb> {
    let begun = Instant::now();
    let dir = unique_dir("sgdb").map_err(io::Error::other)?;
    // From here on `server` owns the directory: an early return removes it.
    let mut server = LocalMariaDb {
        port,
        dir: dir.clone(),
        user: opts.user.clone(),
        password: opts.password.clone(),
        started_in: Duration::ZERO,
        child: None,
        client: binaries.client.clone(),
    };
    copy_dir(template, &dir.join("data"))?;
    std::fs::create_dir(dir.join("tmp"))?;
    let mut cmd = mariadb_command(&binaries.server, &dir);
    cmd.arg(format!("--datadir={}", dir.join("data").display()))
        .arg(format!("--socket={}", server.socket().display()))
        .arg(format!("--pid-file={}", dir.join("mariadb.pid").display()))
        .arg(format!("--log-error={}", server.error_log().display()))
        .arg(format!("--tmpdir={}", dir.join("tmp").display()))
        .arg(format!("--port={port}"))
        .arg("--bind-address=127.0.0.1")
        .arg(format!(
            "--innodb-buffer-pool-size={}M",
            opts.buffer_pool_mb
        ))
        .arg(format!("--innodb-log-file-size={LOG_FILE_SIZE}"))
        // Throwaway data: trade crash durability for speed on small machines.
        .arg("--innodb-flush-log-at-trx-commit=2")
        .arg("--innodb-doublewrite=0")
        .arg("--skip-name-resolve")
        .arg("--performance-schema=OFF")
        .arg("--max-connections=300")
        .arg("--max-allowed-packet=64M")
        .arg("--character-set-server=utf8mb4")
        .arg("--collation-server=utf8mb4_general_ci");
    if running_as_root() {
        cmd.arg("--user=root");
    }
    if let Some(tls) = &opts.tls {
        tls_args(&mut cmd, &dir, tls)?;
    }
    match &opts.replication {
        Some(member) => member_args(&mut cmd, member),
        None => {
            // A row-based binary log with full row images: online schema copies read
            // their change capture from it (see `migrations::copy`).
            cmd.arg("--log-bin=mariadb-bin")
                .arg("--binlog-format=ROW")
                .arg("--binlog-row-image=FULL")
                .arg(format!("--server-id={port}"));
        }
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", binaries.server.display())))?;
    server.child = Some(child);
    wait_ready(&mut server)?;
    create_user(&server, &opts.user, &opts.password)?;
    server.started_in = begun.elapsed();
    Ok(server)
}

fn tls_args(cmd: &mut Command, dir: &Path, tls: &LocalDbTls) -> io::Result<()> {
    let write = |name: &str, pem: &str| -> io::Result<PathBuf> {
        let path = dir.join(name);
        std::fs::write(&path, pem)?;
        Ok(path)
    };
    cmd.arg(format!(
        "--ssl-cert={}",
        write("server-cert.pem", &tls.cert_pem)?.display()
    ))
    .arg(format!(
        "--ssl-key={}",
        write("server-key.pem", &tls.key_pem)?.display()
    ));
    if let Some(ca) = &tls.ca_pem {
        cmd.arg(format!("--ssl-ca={}", write("ca.pem", ca)?.display()));
    }
    if tls.require_secure_transport {
        cmd.arg("--require-secure-transport=ON");
    }
    Ok(())
}

fn wait_ready(server: &mut LocalMariaDb) -> io::Result<()> {
    let deadline = Instant::now() + READY_TIMEOUT;
    let mut delay = Duration::from_millis(10);
    loop {
        if let Some(child) = server.child.as_mut() {
            if let Ok(Some(status)) = child.try_wait() {
                server.child = None;
                let log = tail(&server.error_log(), 30);
                let kind = if log.contains("Address already in use")
                    || log.contains("Do you already have another")
                {
                    io::ErrorKind::AddrInUse
                } else {
                    io::ErrorKind::Other
                };
                return Err(io::Error::new(
                    kind,
                    format!(
                        "mariadbd on port {} exited ({status}) during startup; error log:\n{log}",
                        server.port
                    ),
                ));
            }
        }
        let tcp_up =
            TcpStream::connect_timeout(&server.socket_addr(), Duration::from_millis(200)).is_ok();
        let last = if tcp_up {
            match server.sql("SELECT 1") {
                Ok(_) => return Ok(()),
                Err(e) => e.to_string(),
            }
        } else {
            "TCP port not accepting yet".to_string()
        };
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "mariadbd on port {} not ready after {READY_TIMEOUT:?} ({last}); error log:\n{}",
                    server.port,
                    tail(&server.error_log(), 30)
                ),
            ));
        }
        std::thread::sleep(delay);
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

fn create_user(server: &LocalMariaDb, user: &str, password: &str) -> io::Result<()> {
    // `IDENTIFIED BY` takes only a literal, and a backslash has no literal that reads
    // the same under every sql_mode (see `quote_literal`).
    if [user, password].iter().any(|s| s.contains(['\\', '\0'])) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a local server's user and password must not contain a backslash or NUL",
        ));
    }
    let user = quote_literal(user);
    let password = quote_literal(password);
    // Every member creates its own user; kept out of the binary log so that a standby's
    // log holds nothing the primary does not have (`gtid_strict_mode` would refuse the
    // primary's transactions after a local one).
    let mut script = String::from("SET SESSION sql_log_bin = 0;\n");
    for host in ["%", "localhost"] {
        script.push_str(&format!(
            "CREATE USER IF NOT EXISTS {user}@'{host}' IDENTIFIED BY {password};\n\
             GRANT ALL PRIVILEGES ON *.* TO {user}@'{host}' WITH GRANT OPTION;\n"
        ));
    }
    server.sql(&script).map(|_| ())
}
