//! One client connection: handshake and login, then the command loop. The session keeps
//! what the client believes its connection holds (database, session variables,
//! autocommit, transaction) and makes every backend connection that serves it match.
//!
//! Backend connections are leased per statement and returned at once, except while the
//! backend reports an open transaction, or after a statement that leaves connection
//! state behind (temporary tables, locks): then the session keeps that lease.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::{watch, OwnedSemaphorePermit};

use crate::backend::{BackendError, Collected, ConnKey, Lease};
use crate::error::ProxyError;
use crate::migrations::Strategy;
use crate::planner::{self, ShardingSchema, StatementKind, StatementPlan};
use crate::protocol::auth::{self, NATIVE_PASSWORD};
use crate::protocol::handshake::{self, Greeting};
use crate::protocol::packet::{PacketConn, ReadError};
use crate::protocol::relay::ResponseKind;
use crate::protocol::wire::{self, OkInfo};
use crate::protocol::{caps, command, status};
use crate::router::{self, DbContext, Dispatch, Target, Unsharded};
use crate::server::Shared;
use crate::vschema::VSchema;
use crate::{admin, ddl};

/// How long the connection that ran a statement stays with an idle session, so that a
/// driver's follow-up (`SELECT LAST_INSERT_ID()`, `ROW_COUNT()`, `FOUND_ROWS()`) reaches
/// it.
const DIAGNOSTICS_HOLD: Duration = Duration::from_millis(100);

/// The same after a statement with warnings, long enough for a person to type
/// `SHOW WARNINGS`.
const WARNINGS_HOLD: Duration = Duration::from_secs(5);

/// A far-off instant for a timer that is disabled.
const IDLE_FOREVER: Duration = Duration::from_secs(86_400);

/// How long a client may take to log in.
const LOGIN_TIMEOUT: Duration = Duration::from_secs(10);

/// Serves one client until it quits, fails, or the server shuts down.
pub async fn run(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    permit: Option<OwnedSemaphorePermit>,
    stop: watch::Receiver<bool>,
) {
    let mut client = PacketConn::with_capacity(stream, 2 * 1024, 0);
    let Some(_permit) = permit else {
        let e = ProxyError::too_many_connections();
        let _ = client.send(0, &wire::proxy_err_payload(&e)).await;
        return;
    };
    let id = shared.next_connection_id();
    shared
        .clients
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _count = ClientCount(shared.clone());
    let login = tokio::time::timeout(LOGIN_TIMEOUT, login(&shared, &mut client, id, peer)).await;
    let Ok(Some(mut session)) =
        login.map(|r| r.map(|l| Session::new(shared.clone(), client, id, l)))
    else {
        return;
    };
    session.serve(stop).await;
}

/// Counts a client connection for `/metrics` while it lives.
struct ClientCount(Arc<Shared>);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0
            .clients
            .fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// What a successful login established.
struct Login {
    user: String,
    admin: bool,
    ddl_wait: Option<Duration>,
    capabilities: u32,
    ext_capabilities: u32,
    collation: u8,
    ctx: DbContext,
}

async fn login(
    shared: &Arc<Shared>,
    client: &mut PacketConn<TcpStream>,
    id: u32,
    peer: SocketAddr,
) -> Option<Login> {
    let scramble = auth::new_scramble();
    let greeting = Greeting {
        server_version: shared.server_version.clone(),
        connection_id: id,
        scramble: scramble.to_vec(),
        capabilities: shared.offered_capabilities,
        collation: shared.default_collation,
        status: status::AUTOCOMMIT,
        auth_plugin: NATIVE_PASSWORD.to_string(),
        ext_capabilities: shared.offered_ext_capabilities,
    };
    client
        .send(0, &handshake::build_greeting(&greeting))
        .await
        .ok()?;
    let (seq, payload) = match client.read_packet(64 * 1024).await {
        Ok(p) => p,
        Err(ReadError::TooLarge(_)) => {
            let _ = client
                .send(2, &wire::proxy_err_payload(&ProxyError::bad_handshake()))
                .await;
            return None;
        }
        Err(_) => return None,
    };
    let mut seq = seq.wrapping_add(1);
    if handshake::is_ssl_request(&payload) {
        let e = ProxyError::not_supported("TLS connections");
        let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
        return None;
    }
    let Some(resp) = handshake::parse_handshake_response(&payload) else {
        let _ = client
            .send(seq, &wire::proxy_err_payload(&ProxyError::bad_handshake()))
            .await;
        return None;
    };
    let mut token = resp.auth_response.clone();
    if resp
        .auth_plugin
        .as_deref()
        .is_some_and(|p| p != NATIVE_PASSWORD)
    {
        // The client computed its answer for another plugin: ask again in ours.
        let switch = handshake::build_auth_switch(NATIVE_PASSWORD, &scramble);
        client.send(seq, &switch).await.ok()?;
        let (s, reply) = client.read_packet(64 * 1024).await.ok()?;
        seq = s.wrapping_add(1);
        token = reply.to_vec();
    }
    let host = peer.ip().to_string();
    let user = shared.users.get(&resp.user);
    let ok = user.is_some_and(|u| auth::verify_native(&token, &scramble, u.password_hash.as_ref()));
    if !ok {
        tracing::info!(user = %resp.user, %peer, "access denied");
        let e = ProxyError::access_denied(&resp.user, &host, !token.is_empty());
        let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
        return None;
    }
    let capabilities = resp.capabilities & caps::SERVER_OFFERED;
    let ext_capabilities = resp.ext_capabilities & shared.offered_ext_capabilities;
    let vs = shared.vschema();
    let ctx = match resp.database.as_deref() {
        None => DbContext::None,
        Some(db) => match resolve_database(&vs, db) {
            Some(ctx) => ctx,
            None => {
                let e = ProxyError::unknown_database(db);
                let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
                return None;
            }
        },
    };
    if let DbContext::PassThrough(db) | DbContext::Workspace { database: db, .. } = &ctx {
        // Only its cluster knows whether a pass-through or workspace database exists; a
        // direct server refuses the login when it does not, and so do we.
        let key = ConnKey {
            caps: capabilities & caps::RELAY_SENSITIVE,
            collation: resp.collation,
            ext: ext_capabilities,
        };
        if let Err(e) = check_passthrough(shared, &vs, &ctx, key, db).await {
            let _ = client.send(seq, &wire::proxy_err_payload(&e)).await;
            return None;
        }
    }
    let ok = wire::ok_payload(&OkInfo {
        status: status::AUTOCOMMIT,
        ..OkInfo::default()
    });
    client.send(seq, &ok).await.ok()?;
    let entry = shared.users.get(&resp.user);
    Some(Login {
        admin: entry.is_some_and(|u| u.admin),
        ddl_wait: entry.and_then(|u| u.ddl_wait),
        user: resp.user,
        capabilities,
        ext_capabilities,
        collation: resp.collation,
        ctx,
    })
}

/// Checks that a pass-through database exists on the default cluster.
async fn check_passthrough(
    shared: &Arc<Shared>,
    vs: &VSchema,
    ctx: &DbContext,
    key: ConnKey,
    db: &str,
) -> Result<(), ProxyError> {
    let Dispatch::Single(target) = router::route(vs, ctx, &any_statement())? else {
        return Err(ProxyError::internal("bad pass-through route"));
    };
    let pool = shared
        .pools
        .get(&target.cluster)
        .ok_or_else(|| ProxyError::internal("no pool for the default cluster"))?;
    let mut lease = pool.checkout(key, Some(db), 0).await?;
    let conn = lease.conn();
    if conn.database.as_deref() != Some(db) {
        match conn.init_db(db).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return Err(ProxyError::unknown_database(db)),
            Err(e) => return Err(ProxyError::lost_backend(&target.cluster, e)),
        }
    }
    Ok(())
}

/// What a database name means in the vschema, without asking a backend.
fn resolve_database(vs: &VSchema, db: &str) -> Option<DbContext> {
    if vs.keyspace(db).is_some() {
        Some(DbContext::Keyspace(db.to_string()))
    } else if let Some((ks, workspace)) = vs.workspace_database(db) {
        Some(DbContext::Workspace {
            keyspace: ks.name.clone(),
            workspace,
            database: db.to_string(),
        })
    } else if vs.default_keyspace.is_some() {
        Some(DbContext::PassThrough(db.to_string()))
    } else {
        None
    }
}

/// Session statements replayed on every backend connection that serves the session.
#[derive(Default)]
struct SessionVars {
    statements: Vec<Bytes>,
    hash: u64,
}

impl SessionVars {
    fn push(&mut self, stmt: Bytes) {
        self.statements.push(stmt);
        self.rehash();
    }

    fn set_autocommit(&mut self, on: bool) {
        self.statements
            .retain(|s| !s.starts_with(b"SET autocommit="));
        if !on {
            self.statements
                .push(Bytes::from_static(b"SET autocommit=0"));
        }
        self.rehash();
    }

    fn clear(&mut self) {
        self.statements.clear();
        self.hash = 0;
    }

    fn rehash(&mut self) {
        use std::hash::{Hash, Hasher};
        if self.statements.is_empty() {
            self.hash = 0;
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.statements.hash(&mut h);
        self.hash = h.finish() | 1;
    }
}

/// A backend lease the session keeps between statements.
struct Held {
    target: Target,
    lease: Lease,
    /// Kept for connection state (temporary tables, locks), not only a transaction.
    sticky: bool,
    /// Kept only so the next statement can ask about this one (`SHOW WARNINGS`,
    /// `LAST_INSERT_ID()`, `ROW_COUNT()`, `FOUND_ROWS()`), until this moment; released
    /// after the next statement unless that one used it again.
    diagnostics: Option<tokio::time::Instant>,
    /// The statement number that put it here.
    kept_at: u64,
}

/// How a statement's answer reached the client.
enum Answered {
    /// Done; the session goes on.
    Done,
    /// The client connection must close (it is gone, or its stream was cut).
    Close,
}

struct Session {
    shared: Arc<Shared>,
    client: PacketConn<TcpStream>,
    id: u32,
    user: String,
    admin: bool,
    /// `SET @@ddl_wait`: how long a queued DDL statement blocks for its outcome.
    ddl_wait: Option<Duration>,
    /// `SET @@ddl_strategy`: a strategy forced on this session's queued changes.
    ddl_strategy: Option<Strategy>,
    /// `SET @@ddl_postpone_completion`.
    ddl_postpone: bool,
    capabilities: u32,
    key: ConnKey,
    ctx: DbContext,
    vars: SessionVars,
    autocommit: bool,
    pending_begin: Option<Bytes>,
    /// `SET TRANSACTION ...` for the next transaction only.
    pending_once: Vec<Bytes>,
    held: Vec<Held>,
    /// Statements served so far (ages `Held::diagnostics` leases).
    statements: u64,
}

impl Session {
    fn new(shared: Arc<Shared>, client: PacketConn<TcpStream>, id: u32, login: Login) -> Session {
        Session {
            key: ConnKey {
                caps: login.capabilities & caps::RELAY_SENSITIVE,
                collation: login.collation,
                ext: login.ext_capabilities,
            },
            shared,
            client,
            id,
            user: login.user,
            admin: login.admin,
            ddl_wait: login.ddl_wait,
            ddl_strategy: None,
            ddl_postpone: false,
            capabilities: login.capabilities,
            ctx: login.ctx,
            vars: SessionVars::default(),
            autocommit: true,
            pending_begin: None,
            pending_once: Vec::new(),
            held: Vec::new(),
            statements: 0,
        }
    }

    fn deprecate_eof(&self) -> bool {
        self.capabilities & caps::DEPRECATE_EOF != 0
    }

    fn in_transaction(&self) -> bool {
        self.pending_begin.is_some() || self.tx_target().is_some()
    }

    fn tx_target(&self) -> Option<&Target> {
        self.held
            .iter()
            .find(|h| h.lease.conn_ref().status & status::IN_TRANS != 0)
            .map(|h| &h.target)
    }

    fn idle_status(&self) -> u16 {
        let mut s = wire::idle_status(self.autocommit);
        if self.in_transaction() {
            s |= status::IN_TRANS;
        }
        s
    }

    async fn serve(&mut self, mut stop: watch::Receiver<bool>) {
        let limit = self.shared.config.max_packet_size;
        loop {
            let read = loop {
                let expiry = self.held.iter().filter_map(|h| h.diagnostics).min();
                let wake = expiry.unwrap_or_else(|| tokio::time::Instant::now() + IDLE_FOREVER);
                let expired = tokio::select! {
                    r = self.client.read_packet(limit) => break r,
                    _ = stop.changed() => return,
                    _ = tokio::time::sleep_until(wake), if expiry.is_some() => true,
                };
                if expired {
                    // Nobody asked about the last statement in time: give the
                    // connection back so idle sessions never hold the pool.
                    let now = tokio::time::Instant::now();
                    self.held.retain(|h| h.diagnostics.is_none_or(|t| t > now));
                }
            };
            let payload = match read {
                Ok((_, p)) => p,
                Err(ReadError::TooLarge(n)) => {
                    let _ = self.send_error(&ProxyError::packet_too_large(n)).await;
                    return;
                }
                Err(_) => return,
            };
            let Some(&cmd) = payload.first() else {
                let _ = self.send_error(&ProxyError::unknown_command(0)).await;
                continue;
            };
            let answered = match cmd {
                command::QUIT => return,
                command::PING => self.send_ok(OkInfo::default()).await,
                command::QUERY => self.query(payload).await,
                command::INIT_DB => {
                    let db = String::from_utf8_lossy(&payload[1..]).into_owned();
                    self.use_database(&db).await
                }
                command::FIELD_LIST => self.field_list(payload).await,
                command::RESET_CONNECTION => {
                    self.held.clear();
                    self.vars.clear();
                    self.autocommit = true;
                    self.pending_begin = None;
                    self.pending_once.clear();
                    self.send_ok(OkInfo::default()).await
                }
                command::SET_OPTION => self.set_option(&payload).await,
                command::STATISTICS => {
                    let msg = format!("shardgate: session {} of user {}", self.id, self.user);
                    self.send_raw(msg.as_bytes()).await
                }
                command::STMT_CLOSE | command::STMT_SEND_LONG_DATA => Answered::Done,
                command::STMT_PREPARE
                | command::STMT_EXECUTE
                | command::STMT_RESET
                | command::STMT_FETCH => {
                    self.send_error(&ProxyError::prepared_statements_unsupported())
                        .await
                }
                command::CHANGE_USER => {
                    self.send_error(&ProxyError::not_supported("COM_CHANGE_USER"))
                        .await
                }
                other => self.send_error(&ProxyError::unknown_command(other)).await,
            };
            if let Answered::Close = answered {
                return;
            }
        }
    }

    // ---- answers ----

    async fn send_raw(&mut self, payload: &[u8]) -> Answered {
        match self.client.send(1, payload).await {
            Ok(_) => Answered::Done,
            Err(_) => Answered::Close,
        }
    }

    async fn send_error(&mut self, e: &ProxyError) -> Answered {
        tracing::debug!(session = self.id, error = %e, "statement refused");
        self.send_raw(&wire::proxy_err_payload(e)).await
    }

    async fn send_ok(&mut self, mut info: OkInfo) -> Answered {
        info.status |= self.idle_status();
        self.send_raw(&wire::ok_payload(&info)).await
    }

    /// Forwards a collected backend response (already numbered from 1).
    async fn send_collected(&mut self, c: &Collected) -> Answered {
        self.client.wbuf.extend_from_slice(&c.bytes);
        match self.client.flush().await {
            Ok(()) => Answered::Done,
            Err(_) => Answered::Close,
        }
    }

    async fn set_option(&mut self, payload: &[u8]) -> Answered {
        match payload.get(1..3).map(|b| u16::from_le_bytes([b[0], b[1]])) {
            Some(0) => self.capabilities |= caps::MULTI_STATEMENTS,
            Some(1) => self.capabilities &= !caps::MULTI_STATEMENTS,
            _ => {
                return self
                    .send_error(&ProxyError::unknown_command(command::SET_OPTION))
                    .await
            }
        }
        self.key.caps = self.capabilities & caps::RELAY_SENSITIVE;
        let st = self.idle_status();
        if self.deprecate_eof() {
            let mut p = wire::ok_payload(&OkInfo {
                status: st,
                ..OkInfo::default()
            });
            p[0] = 0xfe;
            self.send_raw(&p).await
        } else {
            self.send_raw(&wire::eof_payload(st)).await
        }
    }

    // ---- database selection ----

    async fn use_database(&mut self, db: &str) -> Answered {
        let vs = self.shared.vschema();
        match resolve_database(&vs, db) {
            None => self.send_error(&ProxyError::unknown_database(db)).await,
            Some(ctx @ DbContext::Keyspace(_)) => {
                self.ctx = ctx;
                self.send_ok(OkInfo::default()).await
            }
            Some(ctx) => {
                // A pass-through database: only its cluster knows whether it exists.
                let target = match router::route(&vs, &ctx, &any_statement()) {
                    Ok(Dispatch::Single(t)) => t,
                    Ok(_) => {
                        return self
                            .send_error(&ProxyError::internal("bad pass-through route"))
                            .await
                    }
                    Err(e) => return self.send_error(&e).await,
                };
                let mut lease = match self.lease_for(&target).await {
                    Ok(l) => l,
                    Err(e) => return self.send_error(&e).await,
                };
                let answer = match self.sync(&mut lease, &target).await {
                    Ok(None) => {
                        self.ctx = ctx;
                        self.send_ok(OkInfo::default()).await
                    }
                    Ok(Some(err)) => self.send_collected(&err).await,
                    Err(e) => self.send_error(&e).await,
                };
                self.put_back(target, lease, false);
                answer
            }
        }
    }

    // ---- queries ----

    async fn query(&mut self, payload: Bytes) -> Answered {
        self.statements += 1;
        let answer = self.query_inner(payload).await;
        self.release_stale_diagnostics();
        answer
    }

    async fn query_inner(&mut self, payload: Bytes) -> Answered {
        let vs = self.shared.vschema();
        let sql_bytes = payload.slice(1..);
        let (text, exact) = match std::str::from_utf8(&sql_bytes) {
            Ok(t) => (std::borrow::Cow::Borrowed(t), true),
            Err(_) => (String::from_utf8_lossy(&sql_bytes), false),
        };
        if let Some(admin) = admin::parse_admin(&text) {
            return self.admin_statement(&vs, admin).await;
        }
        if let Some(setting) = ddl::parse_ddl_setting(&text) {
            return match setting {
                Ok(ddl::DdlSetting::Wait(d)) => {
                    self.ddl_wait = (!d.is_zero()).then_some(d);
                    self.send_ok(OkInfo::default()).await
                }
                Ok(ddl::DdlSetting::Strategy(Some(Strategy::Direct))) if !self.admin => {
                    let e = ProxyError::admin_only(&self.user);
                    self.send_error(&e).await
                }
                Ok(ddl::DdlSetting::Strategy(s)) => {
                    self.ddl_strategy = s;
                    self.send_ok(OkInfo::default()).await
                }
                Ok(ddl::DdlSetting::PostponeCompletion(on)) => {
                    self.ddl_postpone = on;
                    self.send_ok(OkInfo::default()).await
                }
                Err(e) => self.send_error(&e).await,
            };
        }
        let mut plan = planner::plan(&text, schema_for(&vs, &self.ctx));
        // A statement that qualifies its tables with another keyspace is planned with
        // that keyspace's sharding.
        if let [only] = plan.statements.as_slice() {
            if let Some(q) = &only.qualified_schema {
                if let Some(ks) = vs.keyspace(q) {
                    if DbContext::Keyspace(q.clone()) != self.ctx {
                        plan = planner::plan(&text, ks as &dyn ShardingSchema);
                    }
                }
            }
        }
        match plan.statements.len() {
            0 => {
                // Empty text: let a backend answer with its own error.
                let stmt = any_statement();
                self.single(&vs, &stmt, payload).await
            }
            1 => {
                let stmt = plan.statements.swap_remove(0);
                self.statement(&vs, stmt, payload, &text, exact).await
            }
            _ => self.multi(&vs, &plan.statements, payload).await,
        }
    }

    async fn statement(
        &mut self,
        vs: &VSchema,
        stmt: StatementPlan,
        payload: Bytes,
        text: &str,
        exact: bool,
    ) -> Answered {
        match &stmt.kind {
            StatementKind::Use(db) => {
                let db = db.clone();
                self.use_database(&db).await
            }
            StatementKind::Begin => {
                if self.tx_target().is_some() {
                    // BEGIN inside a transaction commits it first, as MySQL does.
                    self.single(vs, &stmt, payload).await
                } else {
                    self.pending_begin = Some(payload.slice(1..));
                    self.send_ok(OkInfo::default()).await
                }
            }
            StatementKind::Commit | StatementKind::Rollback => {
                if self.tx_target().is_some() {
                    self.single(vs, &stmt, payload).await
                } else {
                    self.pending_begin = None;
                    self.send_ok(OkInfo::default()).await
                }
            }
            StatementKind::SetAutocommit(on) => {
                let on = *on;
                let forwarded = self.tx_target().is_some();
                let answer = if forwarded {
                    // `SET autocommit=1` commits the open transaction: its backend does it.
                    self.single(vs, &stmt, payload).await
                } else {
                    Answered::Done
                };
                self.autocommit = on;
                self.vars.set_autocommit(on);
                let text: &[u8] = if on {
                    b"SET autocommit=1"
                } else {
                    b"SET autocommit=0"
                };
                self.apply_to_held(text).await;
                if forwarded {
                    answer
                } else {
                    self.send_ok(OkInfo::default()).await
                }
            }
            StatementKind::SetTransaction if !is_session_scope(text) => {
                self.pending_once.push(payload.slice(1..));
                self.send_ok(OkInfo::default()).await
            }
            StatementKind::SetTransaction | StatementKind::SetSession => {
                self.set_session(vs, &stmt, payload).await
            }
            StatementKind::Insert(_) if !exact => {
                // Byte spans are only trusted on valid UTF-8 text.
                match router::route(vs, &self.ctx, &stmt) {
                    Ok(Dispatch::SplitInsert(_)) => {
                        self.send_error(&ProxyError::unroutable(
                            "shardgate: a multi-shard INSERT must be valid UTF-8 to be split; send one INSERT per shard",
                        ))
                        .await
                    }
                    _ => self.single(vs, &stmt, payload).await,
                }
            }
            StatementKind::Ddl(kind) => {
                if self.in_transaction() {
                    return self
                        .send_error(&ProxyError::in_transaction(
                            "shardgate: schema changes are not allowed inside a transaction; COMMIT or ROLLBACK first",
                        ))
                        .await;
                }
                let keyspace = router::statement_keyspace(vs, &self.ctx, &stmt);
                match ddl::action(kind, keyspace) {
                    ddl::DdlAction::RunNow => self.single(vs, &stmt, payload).await,
                    ddl::DdlAction::Queue => self.queue_ddl(vs, &stmt, text).await,
                }
            }
            _ => self.single(vs, &stmt, payload).await,
        }
    }

    /// Queues a schema change; answers with its uuid, or (with `@@ddl_wait`) with its
    /// outcome.
    async fn queue_ddl(&mut self, vs: &VSchema, stmt: &StatementPlan, text: &str) -> Answered {
        let uuid = ddl::new_uuid();
        let mut rows = match ddl::rows_for(
            &self.shared.control,
            vs,
            &self.ctx,
            stmt.qualified_schema.as_deref(),
            text,
            &uuid,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => return self.send_error(&e).await,
        };
        for r in &mut rows {
            // Only a change that could be copied can be forced to a copy.
            if let Some(forced) = self.ddl_strategy {
                if forced == Strategy::Direct || r.strategy != Strategy::Direct {
                    r.strategy = forced;
                }
            }
            r.postpone_completion = self.ddl_postpone && r.strategy == Strategy::Copy;
        }
        if let Err(e) = ddl::enqueue(&self.shared.control, vs, &rows).await {
            return self.send_error(&e).await;
        }
        tracing::info!(session = self.id, %uuid, targets = rows.len(), "schema change queued");
        let Some(limit) = self.ddl_wait else {
            let strategy = rows.first().map(|r| r.strategy.as_str()).unwrap_or("");
            let row = vec![
                Some(uuid.into_bytes()),
                Some(strategy.as_bytes().to_vec()),
                Some(rows.len().to_string().into_bytes()),
            ];
            return self
                .send_result_set(&["uuid", "strategy", "targets"], vec![row])
                .await;
        };
        match ddl::wait(&self.shared.control, vs, &rows, limit).await {
            Ok((crate::migrations::Status::Complete, _)) => self.send_ok(OkInfo::default()).await,
            Ok((status, message)) => {
                let why = match (status, message) {
                    (crate::migrations::Status::Failed, Some(m)) => format!("failed: {m}"),
                    (s, _) if s.is_final() => s.as_str().to_string(),
                    (s, _) => format!(
                        "still {} after {:?} (ddl_wait); it goes on: SHOW MIGRATIONS LIKE '{uuid}'",
                        s.as_str(),
                        limit
                    ),
                };
                self.send_error(&ProxyError::unroutable(format!(
                    "shardgate: migration {uuid} {why}"
                )))
                .await
            }
            Err(e) => self.send_error(&e).await,
        }
    }

    async fn send_result_set(
        &mut self,
        columns: &[&str],
        rows: Vec<Vec<Option<Vec<u8>>>>,
    ) -> Answered {
        let specs: Vec<wire::ColumnSpec> = columns
            .iter()
            .map(|c| wire::ColumnSpec {
                name: (*c).to_string(),
                column_type: wire::column_type::VAR_STRING,
            })
            .collect();
        let st = self.idle_status();
        let mut out = BytesMut::new();
        let extended = self.key.ext & caps::MARIADB_EXTENDED_METADATA != 0;
        wire::put_result_set(&mut out, &specs, &rows, self.deprecate_eof(), extended, st);
        self.client.wbuf.extend_from_slice(&out);
        match self.client.flush().await {
            Ok(()) => Answered::Done,
            Err(_) => Answered::Close,
        }
    }

    async fn admin_statement(
        &mut self,
        vs: &VSchema,
        parsed: Result<admin::AdminStatement, ProxyError>,
    ) -> Answered {
        if !self.admin {
            let e = ProxyError::admin_only(&self.user);
            return self.send_error(&e).await;
        }
        match parsed {
            Err(e) => self.send_error(&e).await,
            Ok(admin::AdminStatement::ShowMigrations(pattern)) => {
                match admin::show_migrations(&self.shared.control, vs, pattern.as_deref()).await {
                    Ok((cols, rows)) => self.send_result_set(&cols, rows).await,
                    Err(e) => self.send_error(&e).await,
                }
            }
            Ok(admin::AdminStatement::AlterMigration { target, request }) => {
                match admin::alter_migration(&self.shared.control, vs, &target, request).await {
                    Ok(n) => {
                        self.send_ok(OkInfo {
                            affected_rows: n,
                            ..OkInfo::default()
                        })
                        .await
                    }
                    Err(e) => self.send_error(&e).await,
                }
            }
        }
    }

    /// Applies a session setting to the connections the session holds, so they stay in
    /// step without a reset (which would drop their temporary tables or transaction).
    async fn apply_to_held(&mut self, stmt: &[u8]) {
        let hash = self.vars.hash;
        let mut p = Vec::with_capacity(stmt.len() + 1);
        p.push(command::QUERY);
        p.extend_from_slice(stmt);
        for h in &mut self.held {
            let conn = h.lease.conn();
            if conn.state_hash == hash {
                continue;
            }
            match conn.exec(&p, ResponseKind::Query).await {
                Ok(c) if !c.outcome.error => conn.state_hash = hash,
                _ => conn.broken = true,
            }
        }
        self.held.retain(|h| !h.lease.conn_ref().broken);
    }

    async fn set_session(
        &mut self,
        vs: &VSchema,
        stmt: &StatementPlan,
        payload: Bytes,
    ) -> Answered {
        // Run it once on a backend so errors come from MariaDB itself; remember it only
        // if it worked.
        let target = match self.target_for(vs, stmt) {
            Ok(d) => self
                .one_target(vs, d)
                .unwrap_or_else(|| self.default_target(vs)),
            Err(e) => return self.send_error(&e).await,
        };
        let target = self.tx_target().cloned().unwrap_or(target);
        let mut lease = match self.ready_lease(&target, false).await {
            Ok(l) => l,
            Err(answered) => return answered,
        };
        let result = lease
            .conn()
            .relay(&payload, ResponseKind::Query, &mut self.client.io)
            .await;
        let answer = match result {
            Ok(outcome) => {
                if !outcome.error {
                    self.vars.push(payload.slice(1..));
                    lease.conn().state_hash = self.vars.hash;
                    self.apply_to_held(&payload[1..]).await;
                }
                Answered::Done
            }
            Err(e) => self.backend_failed(&target, e).await,
        };
        self.put_back(target, lease, stmt.pins_connection);
        answer
    }

    fn default_target(&self, vs: &VSchema) -> Target {
        match router::route(vs, &self.ctx, &any_statement()).map(|d| self.one_target(vs, d)) {
            Ok(Some(t)) => t,
            _ => Target {
                cluster: vs.clusters.keys().next().cloned().unwrap_or_default(),
                database: None,
                label: "default".into(),
            },
        }
    }

    fn target_for(&self, vs: &VSchema, stmt: &StatementPlan) -> Result<Dispatch, ProxyError> {
        router::route(vs, &self.ctx, stmt)
    }

    async fn single(&mut self, vs: &VSchema, stmt: &StatementPlan, payload: Bytes) -> Answered {
        let dispatch = match self.target_for(vs, stmt) {
            Ok(d) => d,
            Err(e) => return self.send_error(&e).await,
        };
        match dispatch {
            d @ (Dispatch::Single(_) | Dispatch::AnyShard { .. }) => {
                let Some(target) = self.one_target(vs, d) else {
                    return self.send_error(&ProxyError::internal("no target")).await;
                };
                if let Err(e) = self.check_transaction(&target) {
                    return self.send_error(&e).await;
                }
                self.run_on(target, payload, ResponseKind::Query, stmt.pins_connection)
                    .await
            }
            Dispatch::SplitInsert(parts) => self.split_insert(stmt, parts, &payload).await,
            Dispatch::Broadcast(targets) => self.broadcast(targets, &payload).await,
        }
    }

    /// The one backend for a dispatch that needs one: a fixed target, or, when any shard
    /// of a keyspace may answer, the shard whose connection the session already holds
    /// (its transaction; the connection of its last statement, which `SHOW WARNINGS` or
    /// `SELECT LAST_INSERT_ID()` ask about; one with temporary tables), else the first.
    fn one_target(&self, vs: &VSchema, d: Dispatch) -> Option<Target> {
        match d {
            Dispatch::Single(t) => Some(t),
            Dispatch::AnyShard { keyspace, fallback } => {
                let ours = |t: &Target| router::is_shard_of(vs, &keyspace, t);
                let held = |pred: &dyn Fn(&Held) -> bool| {
                    self.held
                        .iter()
                        .find(|h| pred(h) && ours(&h.target))
                        .map(|h| h.target.clone())
                };
                if let Some(t) = self.tx_target().filter(|t| ours(t)) {
                    return Some(t.clone());
                }
                held(&|h| h.diagnostics.is_some())
                    .or_else(|| held(&|h| h.sticky))
                    .or(Some(fallback))
            }
            Dispatch::SplitInsert(_) | Dispatch::Broadcast(_) => None,
        }
    }

    fn check_transaction(&self, target: &Target) -> Result<(), ProxyError> {
        match self.tx_target() {
            Some(t) if t != target => Err(ProxyError::unroutable(format!(
                "shardgate: this transaction runs on {} (cluster {}), but the statement routes to {} (cluster {}); \
                 cross-shard transactions are not supported yet: COMMIT or ROLLBACK first",
                t.label, t.cluster, target.label, target.cluster
            ))),
            _ => Ok(()),
        }
    }

    /// Runs one command on one target and relays the answer.
    async fn run_on(
        &mut self,
        target: Target,
        payload: Bytes,
        kind: ResponseKind,
        sticky: bool,
    ) -> Answered {
        let started = std::time::Instant::now();
        let mut lease = match self.ready_lease(&target, true).await {
            Ok(l) => l,
            Err(answered) => return answered,
        };
        let timeout = self.shared.config.pool.query_timeout;
        let result = match timeout {
            None => {
                lease
                    .conn()
                    .relay(&payload, kind, &mut self.client.io)
                    .await
            }
            Some(limit) => {
                match tokio::time::timeout(
                    limit,
                    lease.conn().relay(&payload, kind, &mut self.client.io),
                )
                .await
                {
                    Ok(r) => r,
                    Err(_) => {
                        lease.conn().broken = true;
                        self.kill_query(&target, lease.conn().thread_id);
                        drop(lease);
                        self.record(&target, started, true);
                        let e = ProxyError::query_timeout(&target.cluster, limit.as_secs_f64());
                        return self.send_error(&e).await;
                    }
                }
            }
        };
        self.record(
            &target,
            started,
            matches!(
                result,
                Err(BackendError::Backend(_) | BackendError::BackendMidResponse(_))
            ),
        );
        let answer = match result {
            Ok(_) => Answered::Done,
            Err(e) => self.backend_failed(&target, e).await,
        };
        self.put_back(target, lease, sticky);
        answer
    }

    /// Feeds the cluster's latency and failure window (the migration throttle reads it).
    fn record(&self, target: &Target, started: std::time::Instant, failed: bool) {
        if let Some(pool) = self.shared.pools.get(&target.cluster) {
            pool.stats.record(started.elapsed(), failed);
        }
    }

    /// A lease for `target` brought to the session's state (and, with `start`, with the
    /// pending transaction and one-shot settings begun). When that fails, the client
    /// has been answered (a backend's ERR as it came, or shardgate's error) and the
    /// answer is returned instead.
    async fn ready_lease(&mut self, target: &Target, start: bool) -> Result<Lease, Answered> {
        let started = std::time::Instant::now();
        let mut lease = match self.lease_for(target).await {
            Ok(l) => l,
            Err(e) => {
                self.record(target, started, true);
                return Err(self.send_error(&e).await);
            }
        };
        let ready = if start {
            self.prepare(&mut lease, target).await
        } else {
            self.sync(&mut lease, target).await
        };
        match ready {
            Ok(None) => Ok(lease),
            Ok(Some(err)) => {
                let a = self.send_collected(&err).await;
                self.put_back(target.clone(), lease, false);
                Err(a)
            }
            Err(e) => {
                self.put_back(target.clone(), lease, false);
                Err(self.send_error(&e).await)
            }
        }
    }

    /// Asks the cluster to stop a statement shardgate gave up on.
    fn kill_query(&self, target: &Target, thread_id: u32) {
        let Some(pool) = self.shared.pools.get(&target.cluster).cloned() else {
            return;
        };
        let key = self.key;
        tokio::spawn(async move {
            if let Ok(mut lease) = pool.checkout(key, None, 0).await {
                let q = format!("\x03KILL QUERY {thread_id}");
                let _ = lease.conn().exec(q.as_bytes(), ResponseKind::Query).await;
            }
        });
    }

    async fn backend_failed(&mut self, target: &Target, e: BackendError) -> Answered {
        tracing::warn!(session = self.id, cluster = %target.cluster, error = %e, "backend failed");
        match e {
            BackendError::Client(_) | BackendError::BackendMidResponse(_) => Answered::Close,
            BackendError::Backend(m) => {
                // A transaction on that connection is gone with it.
                self.pending_begin = None;
                self.send_error(&ProxyError::lost_backend(&target.cluster, m))
                    .await
            }
        }
    }

    /// Brings a leased connection to the session's state, then starts the pending
    /// transaction and one-shot settings. Ok(Some) carries a backend ERR to forward.
    async fn prepare(
        &mut self,
        lease: &mut Lease,
        target: &Target,
    ) -> Result<Option<Collected>, ProxyError> {
        if let Some(err) = self.sync(lease, target).await? {
            return Ok(Some(err));
        }
        let once = std::mem::take(&mut self.pending_once);
        let begin = self.pending_begin.take();
        for stmt in once.iter().chain(begin.iter()) {
            let mut p = Vec::with_capacity(stmt.len() + 1);
            p.push(command::QUERY);
            p.extend_from_slice(stmt);
            let c = lease
                .conn()
                .exec(&p, ResponseKind::Query)
                .await
                .map_err(|e| ProxyError::lost_backend(&target.cluster, e))?;
            if c.outcome.error {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Makes a connection's database and session variables match the session's.
    async fn sync(
        &mut self,
        lease: &mut Lease,
        target: &Target,
    ) -> Result<Option<Collected>, ProxyError> {
        let cluster = target.cluster.clone();
        let lost = |e: BackendError| ProxyError::lost_backend(&cluster, e);
        let conn = lease.conn();
        if conn.state_hash != self.vars.hash {
            if conn.state_hash != 0 {
                conn.reset().await.map_err(lost)?;
                conn.database = None;
            }
            for stmt in &self.vars.statements {
                let mut p = Vec::with_capacity(stmt.len() + 1);
                p.push(command::QUERY);
                p.extend_from_slice(stmt);
                let c = conn.exec(&p, ResponseKind::Query).await.map_err(lost)?;
                if c.outcome.error {
                    conn.broken = true;
                    return Ok(Some(c));
                }
            }
            conn.state_hash = self.vars.hash;
        }
        if conn.database != target.database {
            if let Some(db) = &target.database {
                if let Err(err) = conn.init_db(db).await.map_err(lost)? {
                    return Ok(Some(err));
                }
            }
        }
        Ok(None)
    }

    /// The lease for `target`: the one the session holds, else a fresh one.
    async fn lease_for(&mut self, target: &Target) -> Result<Lease, ProxyError> {
        if let Some(i) = self.held.iter().position(|h| &h.target == target) {
            let h = self.held.swap_remove(i);
            return Ok(h.lease);
        }
        let pool = self
            .shared
            .pools
            .get(&target.cluster)
            .cloned()
            .ok_or_else(|| {
                ProxyError::internal(format!("no pool for cluster {}", target.cluster))
            })?;
        pool.checkout(self.key, target.database.as_deref(), self.vars.hash)
            .await
    }

    /// Keeps the lease if the backend is in a transaction or holds connection state,
    /// else returns it to the pool.
    fn put_back(&mut self, target: Target, mut lease: Lease, sticky: bool) {
        let conn = lease.conn();
        if conn.broken {
            return;
        }
        let in_tx = conn.status & status::IN_TRANS != 0;
        // Every statement's connection stays a moment, so a follow-up question about it
        // reaches the same connection (and a next statement on the same shard skips the
        // pool). Warnings are kept longer: a person may type SHOW WARNINGS.
        let hold = if conn.last_warnings > 0 {
            WARNINGS_HOLD
        } else {
            DIAGNOSTICS_HOLD
        };
        let diagnostics = (!in_tx && !sticky).then(|| tokio::time::Instant::now() + hold);
        self.held.push(Held {
            target,
            lease,
            sticky,
            diagnostics,
            kept_at: self.statements,
        });
    }

    /// Returns leases kept only for diagnostics of an earlier statement.
    fn release_stale_diagnostics(&mut self) {
        let now = self.statements;
        self.held
            .retain(|h| !(h.diagnostics.is_some() && h.kept_at < now));
    }

    // ---- statements over several shards ----

    async fn split_insert(
        &mut self,
        stmt: &StatementPlan,
        parts: Vec<(Target, Vec<usize>)>,
        payload: &Bytes,
    ) -> Answered {
        let StatementKind::Insert(shape) = &stmt.kind else {
            return self
                .send_error(&ProxyError::internal("split of a non-INSERT"))
                .await;
        };
        if self.in_transaction() {
            let names: Vec<&str> = parts.iter().map(|(t, _)| t.label.as_str()).collect();
            return self
                .send_error(&ProxyError::unroutable(format!(
                    "shardgate: this INSERT's rows span shards ({}), which a transaction cannot do yet; \
                     insert each shard's rows separately",
                    names.join(", ")
                )))
                .await;
        }
        let sql = &payload[1..];
        let mut total = OkInfo::default();
        let mut done: Vec<String> = Vec::new();
        for (target, rows) in &parts {
            let mut p = Vec::with_capacity(payload.len());
            p.push(command::QUERY);
            p.extend_from_slice(&sql[shape.prefix.clone()]);
            for (n, &r) in rows.iter().enumerate() {
                if n > 0 {
                    p.push(b',');
                }
                p.extend_from_slice(&sql[shape.rows[r].0.clone()]);
            }
            p.extend_from_slice(&sql[shape.suffix.clone()]);
            match self.exec_on(target, &p).await {
                Ok(c) if !c.outcome.error => {
                    if let Some(ok) = c.outcome.ok {
                        total.affected_rows += ok.affected_rows;
                        if total.last_insert_id == 0 {
                            total.last_insert_id = ok.last_insert_id;
                        }
                        total.warnings = total.warnings.saturating_add(ok.warnings);
                    }
                    done.push(target.label.clone());
                }
                Ok(c) => return self.shard_error(&c, target, &done, &parts).await,
                Err(e) => return self.send_error(&e).await,
            }
        }
        self.send_ok(total).await
    }

    async fn broadcast(&mut self, targets: Vec<Target>, payload: &Bytes) -> Answered {
        if self.in_transaction() {
            return self
                .send_error(&ProxyError::in_transaction(
                    "shardgate: a statement for every shard (DDL or a reference-table write) cannot run inside a transaction; COMMIT first",
                ))
                .await;
        }
        let mut total = OkInfo::default();
        let mut done: Vec<String> = Vec::new();
        let parts: Vec<(Target, Vec<usize>)> = targets.into_iter().map(|t| (t, vec![])).collect();
        for (target, _) in &parts {
            match self.exec_on(target, payload).await {
                Ok(c) if !c.outcome.error => {
                    if let Some(ok) = c.outcome.ok {
                        total.affected_rows += ok.affected_rows;
                        total.warnings = total.warnings.saturating_add(ok.warnings);
                    }
                    done.push(target.label.clone());
                }
                Ok(c) => return self.shard_error(&c, target, &done, &parts).await,
                Err(e) => return self.send_error(&e).await,
            }
        }
        self.send_ok(total).await
    }

    /// Runs a command on a target and collects its answer.
    async fn exec_on(&mut self, target: &Target, payload: &[u8]) -> Result<Collected, ProxyError> {
        let mut lease = self.lease_for(target).await?;
        if let Some(err) = self.prepare(&mut lease, target).await? {
            return Ok(err);
        }
        let r = lease
            .conn()
            .exec(payload, ResponseKind::Query)
            .await
            .map_err(|e| ProxyError::lost_backend(&target.cluster, e));
        self.put_back(target.clone(), lease, false);
        r
    }

    /// Reports a shard's error during a multi-shard statement, naming the shard and
    /// what was already applied; the backend's code and SQLSTATE are kept.
    async fn shard_error(
        &mut self,
        c: &Collected,
        target: &Target,
        done: &[String],
        parts: &[(Target, Vec<usize>)],
    ) -> Answered {
        let Some(e) = c.err() else {
            return self.send_collected(c).await;
        };
        let pending: Vec<&str> = parts
            .iter()
            .map(|(t, _)| t.label.as_str())
            .skip_while(|l| *l != target.label)
            .skip(1)
            .collect();
        let mut msg = format!(
            "shard {} (cluster {}): {}",
            target.label, target.cluster, e.message
        );
        if !done.is_empty() {
            msg.push_str(&format!(" [already applied on: {}]", done.join(", ")));
        }
        if !pending.is_empty() {
            msg.push_str(&format!(" [not attempted on: {}]", pending.join(", ")));
        }
        let mut state = [b'H', b'Y', b'0', b'0', b'0'];
        if e.sqlstate.len() == 5 {
            state.copy_from_slice(e.sqlstate.as_bytes());
        }
        let p = wire::err_payload(e.code, &state, &msg);
        self.send_raw(&p).await
    }

    /// Several statements in one COM_QUERY: they must all go to one backend.
    async fn multi(&mut self, vs: &VSchema, stmts: &[StatementPlan], payload: Bytes) -> Answered {
        let mut target: Option<Target> = None;
        let mut target_is_any = false;
        let mut sticky = false;
        for s in stmts {
            if matches!(s.kind, StatementKind::Use(_)) {
                return self
                    .send_error(&ProxyError::not_supported(
                        "USE inside a multi-statement query",
                    ))
                    .await;
            }
            sticky |= s.pins_connection;
            let t = match self.target_for(vs, s) {
                Ok(d @ (Dispatch::Single(_) | Dispatch::AnyShard { .. })) => {
                    match self.one_target(vs, d) {
                        Some(t) => t,
                        None => return self.send_error(&ProxyError::internal("no target")).await,
                    }
                }
                Ok(_) => {
                    return self
                        .send_error(&ProxyError::unroutable(
                            "shardgate: a statement in this multi-statement query needs several shards; send it on its own",
                        ))
                        .await
                }
                Err(e) => return self.send_error(&e).await,
            };
            // A statement any shard can answer follows the others; the first one that
            // names a shard decides.
            let any = matches!(s.route, planner::Route::AnyShard);
            match &target {
                None => {
                    target = Some(t);
                    target_is_any = any;
                }
                Some(prev) if *prev == t => target_is_any &= any,
                Some(_) if any => {}
                Some(_) if target_is_any => {
                    target = Some(t);
                    target_is_any = false;
                }
                Some(prev) => {
                    let e = ProxyError::unroutable(format!(
                        "shardgate: the statements of this multi-statement query route to different shards ({} and {}); \
                         every statement must name workspaces on one shard",
                        prev.label, t.label
                    ));
                    return self.send_error(&e).await;
                }
            }
        }
        let Some(target) = target else {
            return self
                .send_error(&ProxyError::internal("empty multi-statement"))
                .await;
        };
        if let Err(e) = self.check_transaction(&target) {
            return self.send_error(&e).await;
        }
        // Session settings inside are remembered only if the whole query succeeds.
        let sets: Vec<Bytes> = stmts
            .iter()
            .filter(|s| matches!(s.kind, StatementKind::SetSession))
            .map(|s| payload.slice(1 + s.span.start..1 + s.span.end))
            .collect();
        let mut lease = match self.ready_lease(&target, true).await {
            Ok(l) => l,
            Err(answered) => return answered,
        };
        let result = lease
            .conn()
            .relay(&payload, ResponseKind::Query, &mut self.client.io)
            .await;
        let answer = match result {
            Ok(outcome) => {
                if !sets.is_empty() {
                    if outcome.error {
                        // Some settings may have applied: this connection's state is unknown.
                        lease.conn().broken = true;
                    } else {
                        for s in sets {
                            self.vars.push(s);
                        }
                        lease.conn().state_hash = self.vars.hash;
                    }
                }
                Answered::Done
            }
            Err(e) => self.backend_failed(&target, e).await,
        };
        self.put_back(target, lease, sticky);
        answer
    }

    async fn field_list(&mut self, payload: Bytes) -> Answered {
        let vs = self.shared.vschema();
        let stmt = any_statement();
        let target = match router::route(&vs, &self.ctx, &stmt) {
            Ok(d) => self
                .one_target(&vs, d)
                .unwrap_or_else(|| self.default_target(&vs)),
            Err(e) => return self.send_error(&e).await,
        };
        self.run_on(target, payload, ResponseKind::FieldList, false)
            .await
    }
}

/// The planner's view of the session's keyspace.
fn schema_for<'a>(vs: &'a VSchema, ctx: &DbContext) -> &'a dyn ShardingSchema {
    match ctx {
        DbContext::Keyspace(k) => match vs.keyspace(k) {
            Some(ks) => ks,
            None => &Unsharded,
        },
        _ => &Unsharded,
    }
}

/// A plan that any shard of the session's keyspace may answer.
fn any_statement() -> StatementPlan {
    StatementPlan {
        span: 0..0,
        kind: StatementKind::Other,
        route: planner::Route::AnyShard,
        qualified_schema: None,
        pins_connection: false,
    }
}

/// Whether a `SET ... TRANSACTION` applies to the session rather than the next
/// transaction only.
fn is_session_scope(text: &str) -> bool {
    let upper = text.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().take(3).collect();
    words.iter().any(|w| *w == "SESSION" || *w == "GLOBAL")
}
