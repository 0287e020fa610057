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
}
