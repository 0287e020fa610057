//! The proxy's own configuration: where it listens, who may log in, pool limits.
//! The shard map itself lives in [`crate::vschema`].

use std::net::SocketAddr;
use std::time::Duration;

use crate::vschema::VSchema;

/// A user that may log in to shardgate (mysql_native_password).
#[derive(Debug, Clone)]
pub struct User {
    /// Login name.
    pub name: String,
    /// Password in clear; only its double SHA1 is kept at run time.
    pub password: String,
    /// Admin users may run shardgate's admin statements.
    pub admin: bool,
    /// Default `@@ddl_wait` of this user's sessions (what an ORM's migration tool needs
    /// to see its schema change finished when its statement returns).
    pub ddl_wait: Option<Duration>,
    /// This user may log in only over TLS.
    pub require_tls: bool,
}

impl User {
    /// A user without a default `ddl_wait`.
    pub fn new(name: &str, password: &str, admin: bool) -> User {
        User {
            name: name.to_string(),
            password: password.to_string(),
            admin,
            ddl_wait: None,
            require_tls: false,
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
    /// Most client connections served at once.
    pub max_client_connections: usize,
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
}

/// The config file, as written (see `docs/configuration.md`).
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    listen: Option<String>,
    metrics_listen: Option<String>,
    vschema: String,
    max_packet_size: Option<usize>,
    max_client_connections: Option<usize>,
    admin_cluster_timeout_ms: Option<u64>,
    #[serde(default)]
    users: Vec<UserFile>,
    #[serde(default)]
    pool: PoolFile,
    #[serde(default)]
    migrations: MigrationsFile,
    tls: Option<TlsFile>,
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
}

#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct UserFile {
    name: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    admin: bool,
    ddl_wait_s: Option<f64>,
    #[serde(default)]
    require_tls: bool,
}

#[derive(Debug, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct PoolFile {
    max_connections: Option<usize>,
    checkout_timeout_ms: Option<u64>,
    connect_timeout_ms: Option<u64>,
    query_timeout_ms: Option<u64>,
    idle_timeout_s: Option<u64>,
}

/// Default listen address.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:15306";
/// Default largest client packet.
pub const DEFAULT_MAX_PACKET: usize = 64 << 20;
/// Default most client connections.
pub const DEFAULT_MAX_CLIENTS: usize = 10_000;

impl ProxyConfig {
    /// A config with defaults around a vschema and users.
    pub fn new(listen: SocketAddr, users: Vec<User>, vschema: VSchema) -> ProxyConfig {
        ProxyConfig {
            listen,
            users,
            pool: PoolConfig::default(),
            max_packet_size: DEFAULT_MAX_PACKET,
            max_client_connections: DEFAULT_MAX_CLIENTS,
            vschema,
            migrations: Some(crate::migrations::executor::ExecutorConfig::default()),
            metrics_listen: None,
            admin_cluster_timeout: crate::admin::DEFAULT_CLUSTER_TIMEOUT,
            tls: None,
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
        let vschema = VSchema::load(&vpath).map_err(|e| format!("{}:\n{e}", vpath.display()))?;
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
        if let Some(s) = p.idle_timeout_s {
            pool.idle_timeout = Duration::from_secs(s);
        }
        let m = &file.migrations;
        let migrations = (m.enabled != Some(false)).then(|| {
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
            c
        });
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
        Ok(ProxyConfig {
            tls,
            admin_cluster_timeout,
            metrics_listen,
            migrations,
            listen,
            users: file
                .users
                .into_iter()
                .map(|u| User {
                    name: u.name,
                    password: u.password,
                    admin: u.admin,
                    ddl_wait: u
                        .ddl_wait_s
                        .filter(|s| s.is_finite() && *s > 0.0)
                        .map(Duration::from_secs_f64),
                    require_tls: u.require_tls,
                })
                .collect(),
            pool,
            max_packet_size: file.max_packet_size.unwrap_or(DEFAULT_MAX_PACKET),
            max_client_connections: file.max_client_connections.unwrap_or(DEFAULT_MAX_CLIENTS),
            vschema,
        })
    }
}
