//! The proxy's own configuration: where it listens, who may log in, pool limits.
//! The shard map itself lives in [`crate::vschema`].

use std::net::SocketAddr;
use std::time::Duration;

pub use crate::access::{Role, Scope};
use crate::vschema::VSchema;

/// A user that may log in to shardgate.
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password in clear; only its double SHA1 is kept at run time.
    pub password: String,
    /// What the user may do (`docs/security.md#roles`).
    pub role: Role,
    /// Where the user may go: keyspaces, and the workspaces it is bound to.
    pub scope: Scope,
    /// Default `@@ddl_wait` of this user's sessions (what an ORM's migration tool needs
    /// to see its schema change finished when its statement returns).
    pub ddl_wait: Option<Duration>,
    /// This user may log in only over TLS.
    pub require_tls: bool,
    /// Most sessions of this user at once; None: no limit of its own.
    pub max_connections: Option<usize>,
    /// The plugin this user authenticates with (`auth_plugin`).
    pub auth_plugin: crate::protocol::auth::AuthPlugin,
}

impl User {
    /// A user without a default `ddl_wait`, with every keyspace and workspace open to
    /// it: role `admin` when `admin`, else `app`.
    pub fn new(name: &str, password: &str, admin: bool) -> User {
        User {
            name: name.to_string(),
            password: password.to_string(),
            role: if admin { Role::Admin } else { Role::App },
            scope: Scope::default(),
            ddl_wait: None,
            require_tls: false,
            max_connections: None,
            auth_plugin: Default::default(),
        }
    }

    /// The demo's users, also what the tests log in as: `app`/`app`, and the admin
    /// `admin`/`admin`.
    pub fn demo_users() -> Vec<User> {
        vec![
            User::new("app", "app", false),
            User::new("admin", "admin", true),
        ]
    }
}

/// Backend pool limits, per cluster.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Most connections to one cluster (idle + in use).
    pub max_connections: usize,
    /// How long a statement may wait for a connection before it fails.
    pub checkout_timeout: Duration,
    /// How long opening a backend connection (TCP + handshake) may take.
    pub connect_timeout: Duration,
    /// How long a statement may run on a backend before shardgate gives up on it
    /// (None: no limit, as with a direct connection).
    pub query_timeout: Option<Duration>,
    /// How many times a deadlock's victim (ERROR 1213 as the whole answer to an
    /// autocommit statement with no session state on its connection) is sent again
    /// before the client gets the error; 0: never (see `docs/sessions.md`).
    pub deadlock_retries: u32,
    /// What a statement for a `down` or drained cluster gets (`[traffic]`).
    pub on_unavailable: crate::traffic::OnUnavailable,
    /// Most statements waiting in one cluster's buffer.
    pub buffer_size: usize,
    /// Longest wait in the buffer.
    pub buffer_timeout: Duration,
    /// Idle connections older than this are closed.
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            max_connections: 64,
            checkout_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(3),
            query_timeout: None,
            deadlock_retries: DEFAULT_DEADLOCK_RETRIES,
            on_unavailable: crate::traffic::OnUnavailable::Fail,
            buffer_size: 1000,
            buffer_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(300),
        }
    }
}

/// Everything the proxy needs to serve.
#[derive(Debug, Clone)]
pub struct ProxyConfig {
    /// Address to listen on for MySQL clients.
    pub listen: SocketAddr,
    /// Users that may log in.
    pub users: Vec<User>,
    /// Backend pool limits.
    pub pool: PoolConfig,
    /// Largest packet payload (joined) a client may send.
    pub max_packet_size: usize,
    /// Offer `CLIENT_LOCAL_FILES`: clients may run `LOAD DATA LOCAL INFILE` (on by
    /// default, like MariaDB's `local_infile`).
    pub local_infile: bool,
    /// Most client connections served at once.
    pub max_client_connections: usize,
    /// Most plans the plan cache holds (`planner::cache`); 0: no plan cache.
    pub plan_cache_size: usize,
    /// The shard map.
    pub vschema: VSchema,
    /// Where `GET /metrics` is served (Prometheus text format), if anywhere.
    pub metrics_listen: Option<SocketAddr>,
    /// The migration executors (one per cluster); None: this proxy runs none (another
    /// proxy of the fleet does, or migrations are run by hand).
    pub migrations: Option<crate::migrations::executor::ExecutorConfig>,
    /// Deadline of one control operation on one cluster (`SHOW MIGRATIONS`, `ALTER
    /// MIGRATION`, queueing DDL, one `@@ddl_wait` poll), connect included.
    pub admin_cluster_timeout: Duration,
    /// TLS towards clients (`[tls]`); None: `CLIENT_SSL` is not offered and an
    /// SSLRequest is refused.
    pub tls: Option<crate::protocol::tls::ServerTls>,
    /// The front door: pending logins, login throttling, idle limits
    /// (see `docs/security.md#limits`).
    pub limits: LimitsConfig,
    /// Probing the clusters and the thresholds of their health states (`[health]`).
    pub health: crate::health::HealthConfig,
    /// Where operators' intents (DRAIN/UNDRAIN) and failovers' topology are kept;
    /// None: not kept.
    pub traffic_state_file: Option<std::path::PathBuf>,
    /// Failover policy and deadlines (`[traffic]`).
    pub failover: crate::traffic::failover::FailoverConfig,
    /// The RSA key for `caching_sha2_password` without TLS (`[auth] rsa_private_key`);
    /// None: generated at start-up if a user needs it.
    pub rsa_key: Option<std::sync::Arc<crate::protocol::sha2_auth::RsaKeys>>,
    /// The vschema file: watched, and reloaded when it changes or on SIGHUP; None when
    /// the shard map was given in memory.
    pub vschema_file: Option<std::path::PathBuf>,
    /// Its text as read at start (None: the document is written from `vschema`).
    pub vschema_text: Option<String>,
    /// Where versions of the vschema, pins, intents and leases are kept.
    pub topo: TopoConfig,
}

/// The topology store (`topo` in the config; `docs/control-plane.md`).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum TopoConfig {
    /// In this process only: nothing survives a restart (a shard map given in memory,
    /// `serve --vschema` without `--topo-dir`).
    #[default]
    Memory,
    /// A directory of this proxy's disk (`topo = "file"`, the default with a config
    /// file).
    File {
        /// The directory.
        dir: std::path::PathBuf,
    },
    /// An etcd cluster shared by a fleet of proxies (`topo = "etcd"`).
    Etcd {
        /// `host:port` of each etcd member.
        endpoints: Vec<String>,
        /// The key prefix under which this fleet's state lives.
        prefix: String,
        /// A local directory for what is this proxy's own (which file text it last
        /// imported).
        dir: std::path::PathBuf,
    },
}

/// `[etcd]` in the config file.
#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct EtcdFile {
    #[serde(default)]
    endpoints: Vec<String>,
    prefix: Option<String>,
}

/// The config file, as written (see `docs/configuration.md`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    metrics_listen: Option<String>,
    vschema: String,
    max_packet_size: Option<usize>,
    local_infile: Option<bool>,
    max_client_connections: Option<usize>,
    plan_cache_size: Option<usize>,
    admin_cluster_timeout_ms: Option<u64>,
    #[serde(default)]
    users: Vec<UserFile>,
    #[serde(default)]
    pool: PoolFile,
    #[serde(default)]
    migrations: MigrationsFile,
    tls: Option<TlsFile>,
    max_pending_logins: Option<usize>,
    max_pending_logins_per_ip: Option<usize>,
    login_timeout_ms: Option<u64>,
    login_throttle_failures: Option<u32>,
    login_throttle_window_s: Option<u64>,
    login_throttle_delay_ms: Option<u64>,
    login_throttle_max_delay_ms: Option<u64>,
    idle_transaction_timeout_ms: Option<u64>,
    wait_timeout_s: Option<u64>,
    client_buffer_budget_mb: Option<u64>,
    packet_stall_timeout_ms: Option<u64>,
    #[serde(default)]
    health: crate::health::HealthFile,
    #[serde(default)]
    traffic: crate::traffic::TrafficFile,
    auth: Option<AuthFile>,
    backend_tls: Option<BackendTlsFile>,
    topo: Option<String>,
    topo_dir: Option<String>,
    etcd: Option<EtcdFile>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AuthFile {
    rsa_private_key: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct TlsFile {
    cert: String,
    key: String,
    #[serde(default)]
    require: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct MigrationsFile {
    enabled: Option<bool>,
    max_concurrent_copies: Option<usize>,
    instant_spacing_s: Option<f64>,
    keep_old_table_s: Option<u64>,
    threads_running_floor: Option<f64>,
    chunk_target_ms: Option<u64>,
    change_capture: Option<String>,
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    admin: bool,
    role: Option<String>,
    keyspaces: Option<Vec<String>>,
    workspaces: Option<Vec<u64>>,
    ddl_wait_s: Option<f64>,
    #[serde(default)]
    require_tls: bool,
    max_connections: Option<usize>,
    auth_plugin: Option<String>,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    max_connections: Option<usize>,
    checkout_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    query_timeout_ms: Option<u64>,
    deadlock_retries: Option<u32>,
    idle_timeout_s: Option<u64>,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:15306";
/// Default largest client packet.
pub const DEFAULT_MAX_PACKET: usize = 64 << 20;
/// Default most client connections.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;
/// Default times a deadlock's victim is sent again.
pub const DEFAULT_DEADLOCK_RETRIES: u32 = 2;
/// Most times a deadlock's victim may be sent again: each try waits for InnoDB's lock
/// again, so more only lengthens what the client waits for before its error.
pub const MAX_DEADLOCK_RETRIES: u32 = 10;

impl ProxyConfig {
    /// A config with defaults around a vschema and users.
    pub fn new(listen: SocketAddr, users: Vec<User>, vschema: VSchema) -> ProxyConfig {
        ProxyConfig {
            listen,
            users,
            pool: PoolConfig::default(),
            max_packet_size: DEFAULT_MAX_PACKET,
            local_infile: true,
            max_client_connections: DEFAULT_MAX_CLIENTS,
            plan_cache_size: crate::planner::cache::DEFAULT_CAPACITY,
            vschema,
            migrations: Some(crate::migrations::executor::ExecutorConfig::default()),
            metrics_listen: None,
            admin_cluster_timeout: crate::admin::DEFAULT_CLUSTER_TIMEOUT,
            tls: None,
            limits: LimitsConfig::default(),
            health: crate::health::HealthConfig::default(),
            traffic_state_file: None,
            failover: crate::traffic::failover::FailoverConfig::default(),
            rsa_key: None,
            vschema_file: None,
            vschema_text: None,
            topo: TopoConfig::Memory,
        }
    }

    /// Reads a config file; the vschema path in it is relative to the file.
    pub fn load(path: &std::path::Path) -> Result<ProxyConfig, String> {
        let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        let file: ConfigFile =
            toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
        let listen = file
            .listen
            .as_deref()
            .unwrap_or(DEFAULT_LISTEN)
            .parse::<SocketAddr>()
            .map_err(|e| format!("{}: listen: {e}", path.display()))?;
        let base = path.parent().unwrap_or(std::path::Path::new("."));
        let vpath = base.join(&file.vschema);
        let vschema_text = std::fs::read_to_string(&vpath)
            .map_err(|e| format!("{}: cannot read the vschema file: {e}", vpath.display()))?;
        let vschema = VSchema::from_toml_str(&vschema_text)
            .map_err(|e| format!("{}:\n{e}", vpath.display()))?;
        let topo = topo_config(&file, base).map_err(|e| format!("{}: {e}", path.display()))?;
        if file.users.is_empty() {
            return Err(format!(
                "{}: no [[users]]: nobody could log in",
                path.display()
            ));
        }
        let mut pool = PoolConfig::default();
        let p = &file.pool;
        if let Some(n) = p.max_connections {
            if n == 0 {
                return Err(format!(
                    "{}: pool.max_connections must be > 0",
                    path.display()
                ));
            }
            pool.max_connections = n;
        }
        if let Some(ms) = p.checkout_timeout_ms {
            pool.checkout_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = p.connect_timeout_ms {
            pool.connect_timeout = Duration::from_millis(ms);
        }
        if let Some(ms) = p.query_timeout_ms {
            pool.query_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(n) = p.deadlock_retries {
            if n > MAX_DEADLOCK_RETRIES {
                return Err(format!(
                    "{}: pool.deadlock_retries must be at most {MAX_DEADLOCK_RETRIES}",
                    path.display()
                ));
            }
            pool.deadlock_retries = n;
        }
        if let Some(s) = p.idle_timeout_s {
            pool.idle_timeout = Duration::from_secs(s);
        }
        let m = &file.migrations;
        let migrations = (m.enabled != Some(false))
            .then(|| -> Result<_, String> {
                let mut c = crate::migrations::executor::ExecutorConfig::default();
                if let Some(n) = m.max_concurrent_copies {
                    c.max_concurrent_copies_per_cluster = n.max(1);
                }
                if let Some(s) = m.instant_spacing_s.filter(|s| s.is_finite() && *s >= 0.0) {
                    c.instant_spacing = Duration::from_secs_f64(s);
                }
                if let Some(s) = m.keep_old_table_s {
                    c.keep_old_table = Duration::from_secs(s);
                }
                if let Some(f) = m.threads_running_floor {
                    c.throttle.threads_running_floor = f;
                }
                if let Some(ms) = m.chunk_target_ms {
                    c.copy.chunk_target = Duration::from_millis(ms.max(10));
                }
                c.copy.triggers_only = match m.change_capture.as_deref() {
                    None | Some("auto") => false,
                    Some("triggers") => true,
                    Some(other) => {
                        return Err(format!(
                            "{}: migrations.change_capture = {other:?}: expected \"auto\" \
                         (the binary log where the cluster allows it) or \"triggers\"",
                            path.display()
                        ))
                    }
                };
                Ok(c)
            })
            .transpose()?;
        let metrics_listen = match file.metrics_listen.as_deref() {
            None => None,
            Some(a) => Some(
                a.parse::<SocketAddr>()
                    .map_err(|e| format!("{}: metrics_listen: {e}", path.display()))?,
            ),
        };
        let admin_cluster_timeout = match file.admin_cluster_timeout_ms {
            None => crate::admin::DEFAULT_CLUSTER_TIMEOUT,
            Some(0) => {
                return Err(format!(
                    "{}: admin_cluster_timeout_ms must be > 0",
                    path.display()
                ))
            }
            Some(ms) => Duration::from_millis(ms),
        };
        let tls = match &file.tls {
            None => None,
            Some(t) => Some(
                crate::protocol::tls::ServerTls::from_pem_files(
                    &base.join(&t.cert),
                    &base.join(&t.key),
                    t.require,
                )
                .map_err(|e| format!("{}: [tls]: {e}", path.display()))?,
            ),
        };
        if tls.is_none() {
            if let Some(u) = file.users.iter().find(|u| u.require_tls) {
                return Err(format!(
                    "{}: user {} has require_tls but there is no [tls]: it could never log in",
                    path.display(),
                    u.name
                ));
            }
        }
        if let Some(u) = file.users.iter().find(|u| u.max_connections == Some(0)) {
            return Err(format!(
                "{}: user {}: max_connections must be > 0 (leave it out for no limit)",
                path.display(),
                u.name
            ));
        }
        let limits =
            LimitsConfig::from_file(&file).map_err(|e| format!("{}: {e}", path.display()))?;
        let health = file
            .health
            .to_config()
            .map_err(|e| format!("{}: [health]: {e}", path.display()))?;
        let traffic = file
            .traffic
            .to_config(base)
            .map_err(|e| format!("{}: [traffic]: {e}", path.display()))?;
        pool.on_unavailable = traffic.on_unavailable;
        pool.buffer_size = traffic.buffer_size;
        pool.buffer_timeout = traffic.buffer_timeout;
        let mut access = Vec::with_capacity(file.users.len());
        for u in &file.users {
            let (role, scope) = user_access(u, &vschema)
                .map_err(|e| format!("{}: user {}: {e}", path.display(), u.name))?;
            access.push((role, scope));
        }
        let (mut plugins, rsa_key) =
            auth_settings(&file, base).map_err(|e| format!("{}: {e}", path.display()))?;
        let backend_tls = backend_tls(file.backend_tls.as_ref(), base)
            .map_err(|e| format!("{}: [backend_tls]: {e}", path.display()))?;
        Ok(ProxyConfig {
            health,
            traffic_state_file: traffic.state_file,
            failover: traffic.failover,
            limits,
            tls,
            admin_cluster_timeout,
            metrics_listen,
            migrations,
            listen,
            users: file
                .users
                .into_iter()
                .zip(access)
                .map(|(u, (role, scope))| User {
                    name: u.name,
                    password: u.password,
                    role,
                    scope,
                    ddl_wait: u
                        .ddl_wait_s
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .map(Duration::from_secs_f64),
                    require_tls: u.require_tls,
                    max_connections: u.max_connections,
                    auth_plugin: plugins.next().unwrap_or_default(),
                })
                .collect(),
            pool,
            max_packet_size: file.max_packet_size.unwrap_or(DEFAULT_MAX_PACKET),
            local_infile: file.local_infile.unwrap_or(true),
            max_client_connections: file.max_client_connections.unwrap_or(DEFAULT_MAX_CLIENTS),
            plan_cache_size: file
                .plan_cache_size
                .unwrap_or(crate::planner::cache::DEFAULT_CAPACITY),
            vschema: vschema.with_backend_tls(backend_tls),
            rsa_key,
            vschema_file: Some(vpath),
            vschema_text: Some(vschema_text),
            topo,
        })
    }
}

/// `topo`, `topo_dir` and `[etcd]`: where the control plane keeps its state.
fn topo_config(file: &ConfigFile, base: &std::path::Path) -> Result<TopoConfig, String> {
    let dir = base.join(file.topo_dir.as_deref().unwrap_or("shardgate-topo"));
    match file.topo.as_deref() {
        None | Some("file") => {
            if file.etcd.is_some() {
                return Err("[etcd] is set but topo is not \"etcd\"".to_string());
            }
            Ok(TopoConfig::File { dir })
        }
        Some("etcd") => {
            let etcd = file.etcd.as_ref();
            let endpoints = etcd.map(|e| e.endpoints.clone()).unwrap_or_default();
            if endpoints.is_empty() {
                return Err(
                    "topo = \"etcd\" needs [etcd] endpoints = [\"host:port\", ...]".to_string(),
                );
            }
            let prefix = etcd
                .and_then(|e| e.prefix.clone())
                .unwrap_or_else(|| "/shardgate".to_string());
            if !prefix.starts_with('/') || prefix.len() < 2 {
                return Err(format!(
                    "[etcd] prefix {prefix:?}: must start with / and name something"
                ));
            }
            Ok(TopoConfig::Etcd {
                endpoints,
                prefix: prefix.trim_end_matches('/').to_string(),
                dir,
            })
        }
        Some("memory") => Ok(TopoConfig::Memory),
        Some(other) => Err(format!("topo = {other:?}: expected \"file\" or \"etcd\"")),
    }
}

/// A user's role and scope from its `[[users]]` table, checked against the vschema:
/// `admin = true` is role `admin`; a keyspace must exist; a workspace list must not be
/// empty.
fn user_access(u: &UserFile, vschema: &VSchema) -> Result<(Role, Scope), String> {
    let role = match (u.role.as_deref(), u.admin) {
        (None, admin) => {
            if admin {
                Role::Admin
            } else {
                Role::App
            }
        }
        (Some(r), admin) => {
            let role = Role::parse(r)
                .ok_or_else(|| format!("role = \"{r}\": expected \"app\", \"dba\" or \"admin\""))?;
            if admin && role != Role::Admin {
                return Err(format!("admin = true contradicts role = \"{r}\""));
            }
            role
        }
    };
    if let Some(names) = &u.keyspaces {
        if names.is_empty() {
            return Err(
                "keyspaces = []: the user could use no keyspace (leave it out for all)".into(),
            );
        }
        if let Some(k) = names.iter().find(|k| vschema.keyspace(k).is_none()) {
            return Err(format!("keyspaces: '{k}' is not a keyspace of the vschema"));
        }
    }
    if u.workspaces.as_ref().is_some_and(|w| w.is_empty()) {
        return Err(
            "workspaces = []: the user could reach no workspace (leave it out for all)".into(),
        );
    }
    if role != Role::App && u.workspaces.is_some() {
        return Err(format!(
            "workspaces: only role \"app\" users can be bound to workspaces, and this one is \"{}\"",
            role.name()
        ));
    }
    Ok((role, Scope::new(u.keyspaces.clone(), u.workspaces.clone())))
}

/// Each user's `auth_plugin`, in the order of `[[users]]` (an unknown name is an error
/// that names the user), and the `[auth] rsa_private_key` (a path relative to the
/// config file), loaded.
#[allow(clippy::type_complexity)]
fn auth_settings(
    file: &ConfigFile,
    base: &std::path::Path,
) -> Result<
    (
        std::vec::IntoIter<crate::protocol::auth::AuthPlugin>,
        Option<std::sync::Arc<crate::protocol::sha2_auth::RsaKeys>>,
    ),
    String,
> {
    use crate::protocol::auth::AuthPlugin;
    let mut plugins = Vec::with_capacity(file.users.len());
    for u in &file.users {
        let plugin = match u.auth_plugin.as_deref() {
            None => AuthPlugin::default(),
            Some(name) => AuthPlugin::from_name(name).ok_or_else(|| {
                format!(
                    "user {}: unknown auth_plugin {name:?} \
                     (mysql_native_password or caching_sha2_password)",
                    u.name
                )
            })?,
        };
        plugins.push(plugin);
    }
    let rsa_key = match file
        .auth
        .as_ref()
        .and_then(|a| a.rsa_private_key.as_deref())
    {
        None => None,
        Some(p) => {
            let p = base.join(p);
            let text = std::fs::read_to_string(&p)
                .map_err(|e| format!("[auth] rsa_private_key {}: {e}", p.display()))?;
            let keys = crate::protocol::sha2_auth::RsaKeys::from_pem(&text)
                .map_err(|e| format!("[auth] rsa_private_key {}: {e}", p.display()))?;
            Some(std::sync::Arc::new(keys))
        }
    };
    Ok((plugins.into_iter(), rsa_key))
}

/// Limits of the front door: sockets that have not logged in yet, failed logins, and
/// sessions that sit idle (see `docs/security.md#limits`).
#[derive(Debug, Clone)]
pub struct LimitsConfig {
    /// Most sockets in the handshake at once (their own pool, apart from
    /// `max_client_connections`, which only authenticated sessions take).
    pub max_pending_logins: usize,
    /// Most sockets in the handshake at once from one IP address (loopback included).
    pub max_pending_logins_per_ip: usize,
    /// How long a socket may take from accept to a logged-in session.
    pub login_timeout: Duration,
    /// Failed logins (per address, and per user name) within `login_throttle_window`
    /// before later attempts are delayed; 0: no throttling.
    pub login_throttle_failures: u32,
    /// A throttle record is forgotten once this long has passed without a failure.
    pub login_throttle_window: Duration,
    /// The first delay; it doubles with each further failure.
    pub login_throttle_delay: Duration,
    /// The longest delay (also kept within `login_timeout`).
    pub login_throttle_max_delay: Duration,
    /// A session idle this long while it holds a reserved backend connection (an open
    /// transaction, locks, temporary tables...) is ended; None: no limit.
    pub idle_transaction_timeout: Option<Duration>,
    /// Any session idle this long is ended; None: no limit.
    pub wait_timeout: Option<Duration>,
    /// Bytes that all client read buffers together may hold beyond each session's
    /// baseline ([`CLIENT_BUFFER_BASELINE`]); a session whose packet needs more than
    /// is left gets error 1041 and is closed.
    pub client_buffer_budget: usize,
    /// A packet whose bytes stop arriving for this long ends its session; None: no
    /// limit.
    pub packet_stall_timeout: Option<Duration>,
}

/// Read-buffer capacity a client session may have without drawing on
/// `client_buffer_budget` (every ordinary statement fits).
pub const CLIENT_BUFFER_BASELINE: usize = 64 * 1024;

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_pending_logins: 256,
            max_pending_logins_per_ip: 32,
            login_timeout: Duration::from_millis(5000),
            login_throttle_failures: 5,
            login_throttle_window: Duration::from_secs(60),
            login_throttle_delay: Duration::from_millis(100),
            login_throttle_max_delay: Duration::from_millis(5000),
            idle_transaction_timeout: Some(Duration::from_millis(60_000)),
            wait_timeout: Some(Duration::from_secs(28_800)),
            client_buffer_budget: 256 << 20,
            packet_stall_timeout: Some(Duration::from_millis(30_000)),
        }
    }
}

impl LimitsConfig {
    fn from_file(file: &ConfigFile) -> Result<LimitsConfig, String> {
        let mut l = LimitsConfig::default();
        let positive = |name: &str, v: Option<u64>| match v {
            Some(0) => Err(format!("{name} must be > 0")),
            _ => Ok(v),
        };
        if let Some(n) = positive(
            "max_pending_logins",
            file.max_pending_logins.map(|n| n as u64),
        )? {
            l.max_pending_logins = n as usize;
        }
        if let Some(n) = positive(
            "max_pending_logins_per_ip",
            file.max_pending_logins_per_ip.map(|n| n as u64),
        )? {
            l.max_pending_logins_per_ip = n as usize;
        }
        if let Some(ms) = positive("login_timeout_ms", file.login_timeout_ms)? {
            l.login_timeout = Duration::from_millis(ms);
        }
        if let Some(n) = file.login_throttle_failures {
            l.login_throttle_failures = n;
        }
        if let Some(s) = positive("login_throttle_window_s", file.login_throttle_window_s)? {
            l.login_throttle_window = Duration::from_secs(s);
        }
        if let Some(ms) = file.login_throttle_delay_ms {
            l.login_throttle_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = file.login_throttle_max_delay_ms {
            l.login_throttle_max_delay = Duration::from_millis(ms);
        }
        if let Some(ms) = file.idle_transaction_timeout_ms {
            l.idle_transaction_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        if let Some(s) = file.wait_timeout_s {
            l.wait_timeout = (s > 0).then(|| Duration::from_secs(s));
        }
        if let Some(mb) = positive("client_buffer_budget_mb", file.client_buffer_budget_mb)? {
            l.client_buffer_budget = usize::try_from(mb)
                .ok()
                .and_then(|mb| mb.checked_mul(1 << 20))
                .ok_or("client_buffer_budget_mb is too large")?;
        }
        if let Some(ms) = file.packet_stall_timeout_ms {
            l.packet_stall_timeout = (ms > 0).then(|| Duration::from_millis(ms));
        }
        Ok(l)
    }
}

/// `[backend_tls]`: TLS from shardgate to every cluster (see `docs/security.md`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct BackendTlsFile {
    /// `verify_identity` (default), `verify_ca` or `disabled`.
    mode: Option<String>,
    /// CA bundle (PEM) the backends' certificates must chain to.
    ca: Option<String>,
    /// Client certificate and key (PEM) for backends that require one.
    cert: Option<String>,
    key: Option<String>,
}

/// Loads `[backend_tls]`; paths are relative to the config file's directory.
fn backend_tls(
    t: Option<&BackendTlsFile>,
    base: &std::path::Path,
) -> Result<Option<std::sync::Arc<crate::backend::BackendTls>>, String> {
    use crate::backend::{BackendTls, BackendTlsMode};
    let Some(t) = t else { return Ok(None) };
    let Some(mode) = BackendTlsMode::parse(t.mode.as_deref().unwrap_or("verify_identity"))? else {
        return Ok(None);
    };
    // No system roots: a backend CA is the operator's own, and trusting every public
    // CA would let any publicly certified host pass for a database.
    let ca = t.ca.as_ref().ok_or(
        "ca (the CA bundle that signs the backends' certificates) is required unless mode = \"disabled\"",
    )?;
    let client = match (&t.cert, &t.key) {
        (Some(cert), Some(key)) => Some((base.join(cert), base.join(key))),
        (None, None) => None,
        _ => return Err("cert and key go together".to_string()),
    };
    let client = client.as_ref().map(|(c, k)| (c.as_path(), k.as_path()));
    BackendTls::from_pem_files(&base.join(ca), mode, client).map(|t| Some(std::sync::Arc::new(t)))
}
