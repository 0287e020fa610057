//! Errors shardgate itself raises. Each knows who is at fault, whether a retry can help
//! and which cluster it concerns, and becomes a MySQL ERR packet with the right code and
//! SQLSTATE. Errors a backend sends are never turned into these: they are relayed raw.

use std::fmt;

/// Who caused an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The client sent something wrong (bad SQL, unroutable statement, bad password).
    Client,
    /// A backend cluster failed or timed out.
    Shard,
    /// shardgate itself.
    Proxy,
}

/// An error destined for a client as an ERR packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    /// MySQL error number.
    pub code: u16,
    /// Five-character SQLSTATE.
    pub sqlstate: [u8; 5],
    /// Message for the client.
    pub message: String,
    /// Who is at fault.
    pub fault: Fault,
    /// Whether sending the same statement again may succeed.
    pub retryable: bool,
    /// The cluster concerned, if any.
    pub cluster: Option<String>,
}

impl fmt::Display for ProxyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "ERROR {} ({}): {}",
            self.code,
            String::from_utf8_lossy(&self.sqlstate),
            self.message
        )
    }
}

impl std::error::Error for ProxyError {}

/// MySQL error numbers shardgate raises.
pub mod codes {
    /// ER_CON_COUNT_ERROR
    pub const TOO_MANY_CONNECTIONS: u16 = 1040;
    /// ER_OUT_OF_RESOURCES
    pub const OUT_OF_RESOURCES: u16 = 1041;
    /// ER_USER_LIMIT_REACHED
    pub const USER_LIMIT_REACHED: u16 = 1226;
    /// ER_HANDSHAKE_ERROR
    pub const HANDSHAKE: u16 = 1043;
    /// ER_ACCESS_DENIED_ERROR
    pub const ACCESS_DENIED: u16 = 1045;
    /// ER_NOT_SUPPORTED_AUTH_MODE
    pub const NOT_SUPPORTED_AUTH_MODE: u16 = 1251;
    /// ER_UNKNOWN_COM_ERROR
    pub const UNKNOWN_COMMAND: u16 = 1047;
    /// ER_BAD_DB_ERROR
    pub const BAD_DB: u16 = 1049;
    /// ER_PARSE_ERROR
    pub const PARSE: u16 = 1064;
    /// ER_UNKNOWN_ERROR
    pub const UNKNOWN: u16 = 1105;
    /// ER_NET_PACKET_TOO_LARGE
    pub const PACKET_TOO_LARGE: u16 = 1153;
    /// ER_NET_UNCOMPRESS_ERROR.
    pub const NET_UNCOMPRESS: u16 = 1157;
    /// ER_NET_READ_ERROR_FROM_PIPE / generic network error from a backend
    pub const NET_ERROR: u16 = 2013;
    /// ER_LOCK_DEADLOCK: InnoDB chose the statement's transaction as a deadlock's
    /// victim and rolled it back.
    pub const LOCK_DEADLOCK: u16 = 1213;
    /// ER_UNSUPPORTED_PS
    pub const UNSUPPORTED_PS: u16 = 1295;
    /// ER_NOT_SUPPORTED_YET
    pub const NOT_SUPPORTED_YET: u16 = 1235;
    /// ER_SECURE_TRANSPORT_REQUIRED (MySQL's; MariaDB has no code of its own for it)
    pub const SECURE_TRANSPORT_REQUIRED: u16 = 3159;
    /// ER_STATEMENT_TIMEOUT (MariaDB max_statement_time)
    pub const STATEMENT_TIMEOUT: u16 = 1969;
    /// ER_SPECIFIC_ACCESS_DENIED_ERROR
    pub const SPECIFIC_ACCESS_DENIED: u16 = 1227;
    /// ER_CANT_DO_THIS_DURING_AN_TRANSACTION
    pub const CANT_DO_IN_TRANSACTION: u16 = 1179;
    /// ER_CONNECTION_KILLED (MariaDB)
    pub const CONNECTION_KILLED: u16 = 1927;
    /// ER_NO_SUCH_THREAD
    pub const NO_SUCH_THREAD: u16 = 1094;
    /// ER_KILL_DENIED_ERROR
    pub const KILL_DENIED: u16 = 1095;
    /// ER_SERVER_SHUTDOWN: the statement did not run because its cluster is not
    /// serving; drivers treat its SQLSTATE class 08 as a transient connection failure.
    pub const CLUSTER_NOT_SERVING: u16 = 1053;
    /// ER_DBACCESS_DENIED_ERROR
    pub const DB_ACCESS_DENIED: u16 = 1044;
    /// ER_TABLEACCESS_DENIED_ERROR
    pub const TABLE_ACCESS_DENIED: u16 = 1142;
}

impl ProxyError {
    fn new(code: u16, sqlstate: &[u8; 5], message: impl Into<String>, fault: Fault) -> Self {
        ProxyError {
            code,
            sqlstate: *sqlstate,
            message: message.into(),
            fault,
            retryable: false,
            cluster: None,
        }
    }

    /// 1045 (28000): wrong user or password.
    pub fn access_denied(user: &str, host: &str, using_password: bool) -> Self {
        let using = if using_password { "YES" } else { "NO" };
        Self::new(
            codes::ACCESS_DENIED,
            b"28000",
            format!("Access denied for user '{user}'@'{host}' (using password: {using})"),
            Fault::Client,
        )
    }

    /// 1251 (08004): the client cannot switch to the user's auth plugin (it did not
    /// announce `CLIENT_PLUGIN_AUTH`), as MySQL answers such old clients.
    pub fn auth_mode_not_supported() -> Self {
        Self::new(
            codes::NOT_SUPPORTED_AUTH_MODE,
            b"08004",
            "Client does not support authentication protocol requested by server; \
             consider upgrading MySQL client",
            Fault::Client,
        )
    }

    /// 1043 (08S01): the handshake response could not be read.
    pub fn bad_handshake() -> Self {
        Self::new(codes::HANDSHAKE, b"08S01", "Bad handshake", Fault::Client)
    }

    /// 1047 (08S01): a command byte shardgate does not know.
    pub fn unknown_command(command: u8) -> Self {
        Self::new(
            codes::UNKNOWN_COMMAND,
            b"08S01",
            format!("Unknown command 0x{command:02x}"),
            Fault::Client,
        )
    }

    /// 1049 (42000): unknown database.
    pub fn unknown_database(db: &str) -> Self {
        Self::new(
            codes::BAD_DB,
            b"42000",
            format!("Unknown database '{db}'"),
            Fault::Client,
        )
    }

    /// 1153 (08S01): a packet over the limit.
    pub fn packet_too_large(limit: usize) -> Self {
        Self::new(
            codes::PACKET_TOO_LARGE,
            b"08S01",
            format!("Got a packet bigger than 'max_allowed_packet' bytes ({limit})"),
            Fault::Client,
        )
    }

    /// 1157 (08S01): a compressed packet that cannot be inflated, or that lies about
    /// its lengths; the connection is closed after it.
    pub fn bad_compressed_packet(why: impl fmt::Display) -> Self {
        Self::new(
            codes::NET_UNCOMPRESS,
            b"08S01",
            format!("Couldn't uncompress communication packet: {why}"),
            Fault::Client,
        )
    }

    /// 1105 (HY000): a statement shardgate cannot route, with the reason.
    pub fn unroutable(message: impl Into<String>) -> Self {
        Self::new(codes::UNKNOWN, b"HY000", message, Fault::Client)
    }

    /// 1235 (42000): something shardgate does not support yet.
    pub fn not_supported(what: impl Into<String>) -> Self {
        Self::new(
            codes::NOT_SUPPORTED_YET,
            b"42000",
            format!("shardgate does not support {} yet", what.into()),
            Fault::Client,
        )
    }

    /// 3159 (HY000): a client that must use TLS logged in without it. Without a user
    /// (the proxy-wide `[tls] require`) the message is MySQL's own, which drivers and
    /// people recognise; with one, it names the user whose `require_tls` refused it.
    pub fn insecure_transport(user: Option<&str>) -> Self {
        let message = match user {
            None => "Connections using insecure transport are prohibited while --require_secure_transport=ON.".to_string(),
            Some(u) => format!("Connections using insecure transport are prohibited for user '{u}' (require_tls)"),
        };
        Self::new(
            codes::SECURE_TRANSPORT_REQUIRED,
            b"HY000",
            message,
            Fault::Client,
        )
    }

    /// 1295 (HY000): prepared statements are not supported yet.
    pub fn prepared_statements_unsupported() -> Self {
        Self::new(
            codes::UNSUPPORTED_PS,
            b"HY000",
            "shardgate does not support the prepared statement protocol yet; use text queries",
            Fault::Client,
        )
    }

    /// 1041 (HY000): the client read buffers' memory budget cannot hold this packet
    /// now; retrying later may work, when other large packets are done.
    pub fn out_of_buffer_budget() -> Self {
        let mut e = Self::new(
            codes::OUT_OF_RESOURCES,
            b"HY000",
            "Out of memory: the proxy's budget for client packets is in use; try again later",
            Fault::Proxy,
        );
        e.retryable = true;
        e
    }

    /// 1226 (42000): `user` already has its `max_connections` sessions (MariaDB's
    /// wording for `max_user_connections`).
    pub fn user_connections_exceeded(user: &str, limit: usize) -> Self {
        let mut e = Self::new(
            codes::USER_LIMIT_REACHED,
            b"42000",
            format!(
                "User '{user}' has exceeded the 'max_user_connections' resource (current value: {limit})"
            ),
            Fault::Client,
        );
        e.retryable = true;
        e
    }

    /// 1040 (08004): too many client connections.
    pub fn too_many_connections() -> Self {
        let mut e = Self::new(
            codes::TOO_MANY_CONNECTIONS,
            b"08004",
            "Too many connections",
            Fault::Proxy,
        );
        e.retryable = true;
        e
    }

    /// 1040 (08004): the pool of sockets still logging in is full (`per_ip`: this
    /// address's share of it).
    pub fn too_many_pending_logins(per_ip: bool) -> Self {
        let why = if per_ip {
            "Too many connections (pending logins from this address)"
        } else {
            "Too many connections (pending logins)"
        };
        let mut e = Self::new(codes::TOO_MANY_CONNECTIONS, b"08004", why, Fault::Client);
        e.retryable = true;
        e
    }

    /// 1927 (70100): shardgate ended an idle session, as MariaDB answers a connection
    /// that was killed; the connection closes after it.
    pub fn idle_session_ended(why: impl fmt::Display) -> Self {
        Self::new(
            codes::CONNECTION_KILLED,
            b"70100",
            format!("Connection was killed: {why}"),
            Fault::Client,
        )
    }

    /// 1927 (70100): the session was ended by `KILL CONNECTION`; the connection
    /// closes after it.
    pub fn connection_killed() -> Self {
        Self::new(
            codes::CONNECTION_KILLED,
            b"70100",
            "Connection was killed",
            Fault::Client,
        )
    }

    /// 1094 (HY000): `KILL` of a session id that is not live.
    pub fn unknown_thread(id: u64) -> Self {
        Self::new(
            codes::NO_SUCH_THREAD,
            b"HY000",
            format!("Unknown thread id: {id}"),
            Fault::Client,
        )
    }

    /// 1095 (HY000): `KILL` of another user's session by a non-admin user.
    pub fn kill_denied(id: u64) -> Self {
        Self::new(
            codes::KILL_DENIED,
            b"HY000",
            format!("You are not owner of thread {id}"),
            Fault::Client,
        )
    }

    /// 1105 (HY000): a cluster could not serve (connect failed, pool exhausted, lost).
    pub fn cluster_unavailable(cluster: &str, why: impl fmt::Display) -> Self {
        let mut e = Self::new(
            codes::UNKNOWN,
            b"HY000",
            format!("shardgate: cluster '{cluster}' is unavailable: {why}"),
            Fault::Shard,
        );
        e.retryable = true;
        e.cluster = Some(cluster.to_string());
        e
    }

    /// 1053 (08S01): `cluster` is not serving (health `down`, or drained by an
    /// operator): the statement did not run, and a retry after the cluster is back
    /// (or after a failover) can succeed. `why` says which, since when, and why.
    pub fn cluster_not_serving(cluster: &str, why: impl fmt::Display) -> Self {
        let mut e = Self::new(
            codes::CLUSTER_NOT_SERVING,
            b"08S01",
            format!("shardgate: cluster '{cluster}' is not serving: {why}; the statement did not run, retry later"),
            Fault::Shard,
        );
        e.retryable = true;
        e.cluster = Some(cluster.to_string());
        e
    }

    /// 2013 (HY000): the backend connection was lost during the statement; whether it
    /// ran is unknown.
    pub fn lost_backend(cluster: &str, why: impl fmt::Display) -> Self {
        let mut e = Self::new(
            codes::NET_ERROR,
            b"HY000",
            format!("Lost connection to cluster '{cluster}' during query: {why}"),
            Fault::Shard,
        );
        e.cluster = Some(cluster.to_string());
        e
    }

    /// 2013 (HY000): the backend connection that held the session's state (a
    /// transaction, temporary tables, locks) was lost, so that state is gone; the
    /// client connection is closed after this error, as a direct one would have died.
    pub fn session_state_lost(cause: &ProxyError, state: &str) -> Self {
        let mut e = Self::new(
            codes::NET_ERROR,
            b"HY000",
            format!(
                "{}; the session's state on that connection ({state}) is lost: nothing \
                 after the last COMMIT is committed, so shardgate closes this connection; \
                 reconnect and retry",
                cause.message
            ),
            Fault::Shard,
        );
        e.cluster = cause.cluster.clone();
        e
    }

    /// 1969 (70100): the statement ran past the configured query timeout.
    pub fn query_timeout(cluster: &str, secs: f64) -> Self {
        let mut e = Self::new(
            codes::STATEMENT_TIMEOUT,
            b"70100",
            format!(
                "Query execution was interrupted (shardgate query_timeout of {secs}s exceeded on cluster '{cluster}')"
            ),
            Fault::Shard,
        );
        e.cluster = Some(cluster.to_string());
        e
    }

    /// 1179 (25000): not allowed inside a transaction.
    pub fn in_transaction(message: impl Into<String>) -> Self {
        Self::new(
            codes::CANT_DO_IN_TRANSACTION,
            b"25000",
            message,
            Fault::Client,
        )
    }

    /// 1227 (42000): a migration statement from a user below role `dba`.
    pub fn migrations_role(user: &str, role: &str) -> Self {
        Self::new(
            codes::SPECIFIC_ACCESS_DENIED,
            b"42000",
            format!(
                "Access denied; shardgate's migration statements and @@ddl_strategy = 'direct' \
                 need a user of role dba or admin, and '{user}' has role {role}"
            ),
            Fault::Client,
        )
    }

    /// 1044 (42000): the user's scope does not include database `db` (MySQL's message,
    /// as a server gives it for a database its account has no grant on).
    pub fn db_access_denied(user: &str, db: &str) -> Self {
        Self::new(
            codes::DB_ACCESS_DENIED,
            b"42000",
            format!("Access denied for user '{user}'@'%' to database '{db}'"),
            Fault::Client,
        )
    }

    /// 1142 (42000) when `table` is known, else 1227 (42000): a statement outside the
    /// workspaces or keyspaces the user is bound to. `command` is the statement's verb
    /// (`SELECT`), `why` says what in the statement is outside the user's scope.
    pub fn out_of_scope(user: &str, command: &str, table: Option<&str>, why: &str) -> Self {
        match table {
            Some(t) => Self::new(
                codes::TABLE_ACCESS_DENIED,
                b"42000",
                format!("{command} command denied to user '{user}'@'%' for table '{t}': {why}"),
                Fault::Client,
            ),
            None => Self::new(
                codes::SPECIFIC_ACCESS_DENIED,
                b"42000",
                format!("Access denied for user '{user}'@'%': {why}"),
                Fault::Client,
            ),
        }
    }

    /// 1227 (42000): a statement only shardgate admin users may run, because it reaches
    /// the database host, other tenants or other sessions; `what` names its class.
    pub fn admin_statement(user: &str, what: &str) -> Self {
        Self::new(
            codes::SPECIFIC_ACCESS_DENIED,
            b"42000",
            format!(
                "Access denied; you need (at least one of) the SUPER privilege(s) for this operation: \
                 shardgate runs {what} only for its admin users, and '{user}' is not one"
            ),
            Fault::Client,
        )
    }

    /// 1105 (HY000): shardgate's own failure.
    pub fn internal(message: impl Into<String>) -> Self {
        Self::new(codes::UNKNOWN, b"HY000", message, Fault::Proxy)
    }
}
