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

use std::io::{self, Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::process::{all_threads_stopped, send_signal, terminate, SIGCONT, SIGKILL, SIGSTOP};

use crate::backend::quote_literal;

/// How long a server may take to accept connections.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to shut down after SIGTERM before it is killed.
pub(super) const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// Attempts to start on a freshly picked port when another process took it first.
const PORT_ATTEMPTS: usize = 5;
/// InnoDB redo log size; the template and every server must agree.
const LOG_FILE_SIZE: &str = "8M";
/// Hint shown when MariaDB is missing.
const INSTALL_HINT: &str =
    "install it with `apt-get install mariadb-server mariadb-client` (or run scripts/ensure-deps)";

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
        run_client(&self.client, &self.socket(), sql)
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
        run_client(&self.client, &self.socket, sql)
    }
}

impl Drop for LocalMariaDb {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Where the MariaDB server binary is, or why it cannot be found.
pub fn find_mariadbd() -> Result<PathBuf, String> {
    find_binary(&["mariadbd", "mysqld"]).ok_or_else(|| {
        format!("MariaDB server (`mariadbd`) not found in PATH or /usr/sbin; {INSTALL_HINT}")
    })
}

/// The MariaDB programs a server needs.
#[derive(Debug)]
struct Binaries {
    server: PathBuf,
    install_db: PathBuf,
    client: PathBuf,
}

fn binaries() -> Result<&'static Binaries, String> {
    static BINARIES: OnceLock<Result<Binaries, String>> = OnceLock::new();
    BINARIES
        .get_or_init(|| {
            let server = find_mariadbd()?;
            let install_db = find_binary(&["mariadb-install-db", "mysql_install_db"])
                .ok_or_else(|| format!("`mariadb-install-db` not found; {INSTALL_HINT}"))?;
            let client = find_binary(&["mariadb", "mysql"])
                .ok_or_else(|| format!("MariaDB client (`mariadb`) not found; {INSTALL_HINT}"))?;
            Ok(Binaries {
                server,
                install_db,
                client,
            })
        })
        .as_ref()
        .map_err(Clone::clone)
}

fn find_binary(names: &[&str]) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    for extra in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        dirs.push(PathBuf::from(extra));
    }
    names.iter().find_map(|name| {
        dirs.iter()
            .map(|dir| dir.join(name))
            .find(|path| is_executable(path))
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// The effective user id: /proc/self belongs to it.
fn effective_uid() -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/self").map(|m| m.uid()).ok()
}

fn running_as_root() -> bool {
    effective_uid() == Some(0)
}

/// Base directory for servers and the template. Unix socket paths are limited to
/// 107 bytes, so a long `TMPDIR` falls back to /tmp.
fn base_dir() -> PathBuf {
    let tmp = std::env::temp_dir();
    if tmp.as_os_str().len() > 60 {
        PathBuf::from("/tmp")
    } else {
        tmp
    }
}

/// The initialized, never-started data directory every server copies.
///
/// Built once per machine and MariaDB build: into a private directory first, then
/// renamed into place, which is atomic, so concurrent test binaries never see a half
/// made template; the loser of a race discards its copy. The process caches the path.
fn template(binaries: &Binaries) -> Result<&'static Path, String> {
    static TEMPLATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    if let Some(done) = TEMPLATE.get() {
        return done.as_deref().map_err(Clone::clone);
    }
    let _guard = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    TEMPLATE
        .get_or_init(|| build_template(binaries))
        .as_deref()
        .map_err(Clone::clone)
}

fn build_template(binaries: &Binaries) -> Result<PathBuf, String> {
    let key = {
        use std::os::unix::fs::MetadataExt;
        let meta = std::fs::metadata(&binaries.server)
            .map_err(|e| format!("{}: {e}", binaries.server.display()))?;
        // Changes with the MariaDB build and with the options baked into the template.
        format!(
            "{:x}-{:x}-{LOG_FILE_SIZE}-u{}",
            meta.size(),
            meta.mtime(),
            effective_uid().unwrap_or(u32::MAX)
        )
    };
    let target = base_dir().join(format!("shardgate-mariadb-template-{key}"));
    if target.join("mysql").is_dir() {
        return Ok(target);
    }
    let scratch = unique_dir("sgtpl")?;
    let data = scratch.join("data");
    let mut cmd = mariadb_command(&binaries.install_db, &scratch);
    cmd.arg(format!("--datadir={}", data.display()))
        .arg("--auth-root-authentication-method=normal")
        .arg("--skip-test-db")
        .arg("--skip-name-resolve")
        .arg(format!("--innodb-log-file-size={LOG_FILE_SIZE}"))
        .arg("--innodb-buffer-pool-size=32M")
        .arg("--skip-log-bin");
    if running_as_root() {
        cmd.arg("--user=root");
    }
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running {}: {e}", binaries.install_db.display()));
    let output = match output {
        Ok(output) => output,
        Err(e) => {
            let _ = std::fs::remove_dir_all(&scratch);
            return Err(e);
        }
    };
    if !output.status.success() {
        let _ = std::fs::remove_dir_all(&scratch);
        return Err(format!(
            "{} failed ({}):\n{}{}",
            binaries.install_db.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let renamed = std::fs::rename(&data, &target);
    let _ = std::fs::remove_dir_all(&scratch);
    match renamed {
        Ok(()) => Ok(target),
        // Another process won the race; its template is as good as ours.
        Err(_) if target.join("mysql").is_dir() => Ok(target),
        Err(e) => Err(format!("creating {}: {e}", target.display())),
    }
}

/// A new, empty directory with a short unique name under [`base_dir`].
fn unique_dir(prefix: &str) -> Result<PathBuf, String> {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    for _ in 0..100 {
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let dir = base_dir().join(format!("{prefix}-{}-{n}-{:x}", std::process::id(), nanos));
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(format!("creating {}: {e}", dir.display())),
        }
    }
    Err("could not create a unique temp directory".to_string())
}

/// Stops servers (and removes directories) left behind by processes that died without
/// unwinding (SIGKILL, abort), once per process. A directory `sgdb-PID-...` whose PID
/// is gone is an orphan; its server is signalled only if its command line names that
/// directory, so a recycled pid is never hit.
fn reap_orphans_once() {
    static REAPED: OnceLock<()> = OnceLock::new();
    REAPED.get_or_init(|| {
        let Ok(entries) = std::fs::read_dir(base_dir()) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(owner) = name
                .strip_prefix("sgdb-")
                .and_then(|rest| rest.split('-').next())
                .and_then(|pid| pid.parse::<u32>().ok())
            else {
                continue;
            };
            if Path::new(&format!("/proc/{owner}")).exists() {
                continue;
            }
            let dir = entry.path();
            if let Some(server_pid) = std::fs::read_to_string(dir.join("mariadb.pid"))
                .ok()
                .and_then(|text| text.trim().parse::<u32>().ok())
            {
                let cmdline =
                    std::fs::read(format!("/proc/{server_pid}/cmdline")).unwrap_or_default();
                let needle = dir.to_string_lossy();
                if String::from_utf8_lossy(&cmdline).contains(needle.as_ref()) {
                    let _ = send_signal(server_pid, SIGCONT);
                    let _ = send_signal(server_pid, SIGKILL);
                }
            }
            let _ = std::fs::remove_dir_all(&dir);
        }
    });
}

fn copy_dir(from: &Path, to: &Path) -> io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_dir(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
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
        .arg("--skip-log-bin")
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
    let mut script = String::new();
    for host in ["%", "localhost"] {
        script.push_str(&format!(
            "CREATE USER IF NOT EXISTS {user}@'{host}' IDENTIFIED BY {password};\n\
             GRANT ALL PRIVILEGES ON *.* TO {user}@'{host}' WITH GRANT OPTION;\n"
        ));
    }
    server.sql(&script).map(|_| ())
}

fn run_client(client: &Path, socket: &Path, sql: &str) -> io::Result<String> {
    // The socket sits in the server's own directory, a harmless HOME.
    let home = socket.parent().unwrap_or_else(|| Path::new("/"));
    let mut child = mariadb_command(client, home)
        .arg("--protocol=SOCKET")
        .arg(format!("--socket={}", socket.display()))
        .arg("--user=root")
        .arg("--batch")
        .arg("--skip-column-names")
        .arg("--default-character-set=utf8mb4")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin"))?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout"))?;
    let mut stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr"))?;
    // Feed stdin and drain stderr on their own threads so a big script or a chatty
    // error can never block the pipe we are reading.
    let (out, err) = std::thread::scope(|scope| {
        let writer = scope.spawn(move || {
            let _ = stdin.write_all(sql.as_bytes());
            // Dropping stdin sends EOF.
        });
        let err_reader = scope.spawn(move || {
            let mut buf = Vec::new();
            let _ = stderr.read_to_end(&mut buf);
            buf
        });
        let mut out = Vec::new();
        let read = stdout.read_to_end(&mut out);
        let _ = writer.join();
        let err = err_reader.join().unwrap_or_default();
        (read.map(|_| out), err)
    });
    let status = child.wait()?;
    let out = out?;
    if status.success() {
        Ok(String::from_utf8_lossy(&out).into_owned())
    } else {
        Err(io::Error::other(format!(
            "mariadb ({status}): {}",
            String::from_utf8_lossy(&err).trim()
        )))
    }
}

/// Directories a MariaDB program may need on its `PATH` besides its own (the install
/// script calls `my_print_defaults`, `resolveip`, `hostname`, `cp`...).
const SYSTEM_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A command for the MariaDB program `program` that sees nothing of the user's MySQL
/// setup: an empty environment except `PATH` (the program's own directory, then the
/// system's), `HOME` (our own directory `home`, so no `~/.my.cnf` or `~/.mylogin.cnf`
/// is found) and `LANG=C`; and `--no-defaults` as the first argument, which MariaDB
/// only honours there. Without this, a `MYSQL_PWD` in the user's shell makes our root
/// logins fail and `MYSQL_HOST`/`MYSQL_TCP_PORT`/`MYSQL_UNIX_PORT` point them elsewhere.
fn mariadb_command(program: &Path, home: &Path) -> Command {
    let path = match program.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => {
            let mut path = dir.as_os_str().to_owned();
            path.push(":");
            path.push(SYSTEM_PATH);
            path
        }
        _ => SYSTEM_PATH.into(),
    };
    let mut cmd = Command::new(program);
    cmd.env_clear()
        .env("PATH", path)
        .env("HOME", home)
        .env("LANG", "C")
        .arg("--no-defaults");
    cmd
}

/// The last `lines` lines of a file, for error messages.
fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mariadb_commands_get_no_inherited_environment_and_no_option_files() {
        let cmd = mariadb_command(Path::new("/usr/sbin/mariadbd"), Path::new("/tmp/sgdb-x"));
        let args: Vec<_> = cmd.get_args().collect();
        assert_eq!(args.first().copied(), Some("--no-defaults".as_ref()));
        let mut envs: Vec<(String, Option<String>)> = cmd
            .get_envs()
            .map(|(k, v)| {
                (
                    k.to_string_lossy().into_owned(),
                    v.map(|v| v.to_string_lossy().into_owned()),
                )
            })
            .collect();
        envs.sort();
        assert_eq!(
            envs,
            [
                ("HOME".to_string(), Some("/tmp/sgdb-x".to_string())),
                ("LANG".to_string(), Some("C".to_string())),
                ("PATH".to_string(), Some(format!("/usr/sbin:{SYSTEM_PATH}"))),
            ]
        );
    }

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = unique_dir("sgtest").expect("temp dir");
        let path = dir.join("log");
        std::fs::write(&path, "1\n2\n3\n").expect("write log");
        assert_eq!(tail(&path, 2), "2\n3");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
