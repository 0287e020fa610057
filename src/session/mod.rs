//! One client connection: login, then the command loop. The session keeps what the
//! client believes its connection holds (database, session variables, autocommit,
//! transaction, temporary tables, locks) and makes every backend connection that serves
//! it match.
//!
//! Rooms:
//! - `login`: greeting, authentication, the database asked for at login;
//! - `state`: replayed session variables, the connections the session keeps and why;
//! - `statement`: one COM_QUERY from text to plan to dispatch; transactions and `SET`;
//! - `leases`: getting a backend connection ready for a statement, relaying the answer,
//!   and deciding afterwards whether the connection goes back to the pool;
//! - `deadlock`: an autocommit statement InnoDB made a deadlock's victim, sent again
//!   before the client sees anything (`pool.deadlock_retries`);
//! - `shards`: statements over several shards (split INSERTs, broadcasts,
//!   multi-statement queries);
//! - `schema`: application DDL into the migration queue, and the admin statements.
//! - `kill`: `KILL` and `SELECT CONNECTION_ID()` with shardgate's own session ids (the
//!   session registry is in [`crate::shared`]).
//! - `prepared`, `prepared_exec`: server-side prepared statements (`COM_STMT_*`) with
//!   the session's own statement ids, routed at each execute by their bound values;
//!   `prepared_bulk`: MariaDB's `COM_STMT_BULK_EXECUTE`, each row routed the same way.
//!
//! **Reserved connections.** A backend connection returns to its cluster's pool after
//! every statement, unless the session left state on it that no other connection has:
//! an open transaction, a temporary table, `GET_LOCK()`, `LOCK TABLES`, a user variable
//! set inside a query, a SQL `PREPARE`, an open `HANDLER`, a prepared statement's open
//! cursor, or state shardgate cannot see
//! (`CALL`, `LAST_INSERT_ID(expr)`). Then the connection is *reserved* for the session
//! until that state is gone (`COMMIT`, `UNLOCK TABLES`, `COM_RESET_CONNECTION`, or the
//! session's end), and is closed rather than pooled if the session ends with it. If a
//! reserved connection is lost, so is the session's state: the client gets the error
//! and its connection is closed, as a direct connection would have died.

mod access;
mod deadlock;
mod identity;
mod idle;
mod kill;
mod leases;
mod login;
mod passthrough;
mod prepared;
mod prepared_bulk;
mod prepared_exec;
mod schema;
mod sha2_login;
mod shards;
mod state;
mod statement;
mod vschema;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::backend::{Collected, ConnKey};
use crate::error::ProxyError;
use crate::frontdoor::{LogSafe, PendingLogin};
use crate::planner::{self, StatementKind, StatementPlan};
use crate::protocol::packet::{PacketConn, ReadError};
use crate::protocol::relay::ResponseKind;
use crate::protocol::tls::ClientStream;
use crate::protocol::wire::{self, OkInfo};
use crate::protocol::{caps, command, status};
use crate::router::{self, DbContext, Target};
use crate::shared::{Shared, Signal};

pub use idle::{watch_idle, IdleClock};
use login::Login;
use state::{DdlSettings, Held, SessionVars};

/// Serves one client until it quits, fails, or the server shuts down. `admission` is
/// the socket's pending-login slot, or the error it is refused with.
pub async fn run(
    shared: Arc<Shared>,
    stream: TcpStream,
    peer: SocketAddr,
    admission: Result<PendingLogin, ProxyError>,
    stop: watch::Receiver<bool>,
) {
    let mut client =
        PacketConn::with_capacity(crate::protocol::tls::client_stream(stream), 2 * 1024, 0);
    client.limits = Some(shared.door.read_limits());
    let pending = match admission {
        Ok(p) => p,
        Err(e) => {
            let refusal = wire::proxy_err_payload(&e);
            let _ =
                crate::timer::timeout(std::time::Duration::from_secs(1), client.send(0, &refusal))
                    .await;
            return;
        }
    };
    let id = shared.next_connection_id();
    let login = login::login(&shared, &mut client, id, peer);
    let login = crate::timer::timeout(shared.door.login_timeout, login).await;
    drop(pending);
    let Ok(Some(mut login)) = login else {
        return;
    };
    let _slot = login.slot.take();
    shared.clients.fetch_add(1, Ordering::Relaxed);
    let _count = ClientCount(shared.clone());
    let db = match &login.ctx {
        DbContext::None => None,
        DbContext::Keyspace(d)
        | DbContext::PassThrough(d)
        | DbContext::Workspace { database: d, .. } => Some(d.clone()),
    };
    let handle = shared.register_session(id, &login.user, peer.to_string(), db);
    let _registered = Registered(shared.clone(), id);
    if *stop.borrow() {
        // The server stopped before the session was registered, so its stop signal
        // (`Shared::stop_sessions`) did not reach it.
        return;
    }
    let mut session = Session::new(shared.clone(), client, id, login, handle);
    session.serve().await;
}

/// The database part of `db@replica` (a session that reads from standbys), if `db`
/// has that suffix.
fn replica_suffix(db: &str) -> Option<&str> {
    db.strip_suffix("@replica").filter(|b| !b.is_empty())
}

/// Keeps a session in the registry `KILL` looks in while it lives.
struct Registered(Arc<Shared>, u32);

impl Drop for Registered {
    fn drop(&mut self) {
        self.0.unregister_session(self.1);
    }
}

/// Counts a client connection for `/metrics` while it lives.
struct ClientCount(Arc<Shared>);

impl Drop for ClientCount {
    fn drop(&mut self) {
        self.0.clients.fetch_sub(1, Ordering::Relaxed);
    }
}

/// How a command's answer reached the client.
enum Answered {
    /// Done; the session goes on.
    Done,
    /// The client connection must close (it is gone, its stream was cut mid-response,
    /// or the session's state on a backend was lost).
    Close,
}

struct Session {
    shared: Arc<Shared>,
    client: PacketConn<ClientStream>,
    id: u32,
    user: String,
    /// What the user may do; `admin` is `role.is_admin()`.
    role: crate::access::Role,
    admin: bool,
    /// Where the user may go (keyspaces, workspaces).
    scope: Arc<crate::access::Scope>,
    /// Reads outside transactions go to a healthy standby (`USE \`app@replica\``).
    replica_reads: bool,
    /// The nonce of the login's authentication (see [`login::Login::scramble`]).
    scramble: [u8; 20],
    /// Successful `USE` / `COM_INIT_DB` so far.
    database_changes: u64,
    /// Status flags that follow the session's settings on the backends
    /// (`NO_BACKSLASH_ESCAPES`), as the last backend answer carried them.
    backend_flags: u16,

    /// The login's default `@@ddl_wait` (restored by `COM_RESET_CONNECTION`).
    login_ddl_wait: Option<std::time::Duration>,
    ddl: DdlSettings,
    capabilities: u32,
    key: ConnKey,
    ctx: DbContext,
    vars: SessionVars,
    autocommit: bool,
    pending_begin: Option<Bytes>,
    /// `SET TRANSACTION ...` for the next transaction only.
    pending_once: Vec<Bytes>,
    held: Vec<Held>,
    /// Statements served so far (ages `Held::diagnostics` connections).
    statements: u64,
    /// What `LAST_INSERT_ID()` answers for this session: the last insert id its
    /// statements generated, whichever connection ran them.
    last_insert_id: u64,
    /// Where the previous statement ran: its target and the backend connection's
    /// thread id (a question about that statement goes there).
    last: Option<(Target, u32)>,
    /// This session in the registry: where it says which backend statement it runs.
    handle: Arc<crate::shared::SessionHandle>,
    /// Set while a statement of one workspace runs: its answer's error, if any, is
    /// kept in `answer_error` for the per-workspace counts
    /// ([`crate::health::WorkspaceErrors`]).
    watch_errors: bool,
    /// The error the client got for the watched statement.
    answer_error: Option<crate::health::LastError>,
    /// Statements the client prepared (`COM_STMT_PREPARE`), by shardgate's ids.
    prepared: prepared::Statements,
    /// Prepared-statement commands received, for `SHOW STATUS LIKE 'Com_stmt_%'`
    /// (see [`identity::STMT_COUNTERS`]).
    stmt_commands: [u64; 6],
    /// The session's place in its user's `max_connections` (moves to the new user's
    /// on `COM_CHANGE_USER`).
    user_slot: Option<crate::frontdoor::UserSlot>,
    /// The session's own `SET wait_timeout` (see [`idle`]).
    own_wait_timeout: Option<std::time::Duration>,
    /// The metric handles of the (cluster, keyspace) its last statement was counted
    /// for (see `record_metrics`).
    metric_pair: Option<(
        crate::name::Name,
        crate::name::Name,
        crate::metrics::PairHandle,
    )>,
    /// The keyspace of its last watched statement and that statement's workspace key
    /// (see `workspace_key`).
    last_workspace_key: Option<(crate::name::Name, crate::health::WorkspaceKey)>,
    /// Its latest clock reading: when the command it runs arrived, or when a cluster's
    /// answer to it ended, whichever came last. A statement's latency, the registry's
    /// times and the per-workspace count start or end here instead of reading the
    /// clock again.
    clock: std::time::Instant,
    /// `clock` in whole seconds of `crate::clock` (the windows' unit), once asked for.
    clock_second: Option<u64>,
    /// `clock` was read when the last command's work ended (a cluster's answer, or the
    /// end of a statement): the command loop takes it as the start of the idle time
    /// that follows (no reading of its own).
    clock_ends_work: bool,
    /// The plan cache entry its last text query was planned from (see
    /// [`planner::cache::Memo`]).
    plan_memo: planner::cache::Memo,
}

impl Session {
    fn new(
        shared: Arc<Shared>,
        client: PacketConn<ClientStream>,
        id: u32,
        login: Login,
        handle: Arc<crate::shared::SessionHandle>,
    ) -> Session {
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
            admin: login.role.is_admin(),
            role: login.role,
            scope: login.scope,
            replica_reads: login.replica_reads,
            scramble: login.scramble,
            database_changes: 0,
            backend_flags: 0,

            login_ddl_wait: login.ddl_wait,
            ddl: DdlSettings {
                wait: login.ddl_wait,
                ..DdlSettings::default()
            },
            capabilities: login.capabilities,
            ctx: login.ctx,
            vars: SessionVars::default(),
            autocommit: true,
            pending_begin: None,
            pending_once: Vec::new(),
            held: Vec::new(),
            statements: 0,
            last_insert_id: 0,
            last: None,
            handle,
            watch_errors: false,
            answer_error: None,
            prepared: prepared::Statements::default(),
            stmt_commands: [0; 6],
            own_wait_timeout: None,
            metric_pair: None,
            last_workspace_key: None,
            clock: std::time::Instant::now(),
            clock_second: None,
            clock_ends_work: false,
            plan_memo: planner::cache::Memo::default(),
            user_slot: login.user_slot,
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
        let mut s = wire::idle_status(self.autocommit) | self.backend_flags;
        if self.in_transaction() {
            s |= status::IN_TRANS;
        }
        s
    }

    /// Reads the clock into [`Session::clock`]; `ends_work`: the reading marks the end
    /// of the last command's work (see `clock_ends_work`).
    fn read_clock(&mut self, ends_work: bool) -> std::time::Instant {
        self.clock = std::time::Instant::now();
        self.clock_second = None;
        self.clock_ends_work = ends_work;
        self.clock
    }

    /// [`Session::clock`] in whole seconds of `crate::clock`, worked out once per
    /// reading and only when asked for.
    fn clock_second(&mut self) -> u64 {
        *self
            .clock_second
            .get_or_insert_with(|| crate::clock::second(self.clock))
    }

    async fn serve(&mut self) {
        let limit = self.shared.config.max_packet_size;
        // Kills, the server's stop and the idle watcher's word arrive through the
        // session's signal: one waker registration per wait, no timer and no lock per
        // statement.
        let handle = self.handle.clone();
        let signal = std::future::poll_fn(|cx| handle.signal.poll(cx));
        tokio::pin!(signal);
        loop {
            // The idle limit is kept by the idle watcher (see `idle`): no timer here.
            let idle = self.idle_limit();
            if idle.is_some() && !self.clock_ends_work {
                self.read_clock(false);
            }
            let due = idle.map(|l| (self.clock + l.after, l));
            let watched = idle.map_or(u64::MAX, |l| self.shared.idle_clock.after(l.after));
            handle.idle_deadline.store(watched, Ordering::Relaxed);
            let read = loop {
                tokio::select! {
                    // The client's next command first: when the session wakes, that is
                    // what is ready, and the other waits cost a poll each. A kill or
                    // stop that comes while commands keep coming is seen below.
                    biased;
                    r = self.client.read_packet(limit) => break r,
                    bits = &mut signal => {
                        if bits & Signal::ENDING == 0 {
                            // The watcher's word only: ended if the session's own clock
                            // agrees, else told again at a later tick.
                            handle.signal.clear(Signal::IDLE);
                            match due {
                                Some((due, l)) if std::time::Instant::now() >= due => {
                                    self.end_idle(l).await;
                                    return;
                                }
                                _ => continue,
                            }
                        }
                        if bits & Signal::KILLED != 0 {
                            self.end_killed().await;
                        }
                        return;
                    }
                }
            };
            // The command's arrival (whatever it turns out to be); not idle while it runs.
            self.read_clock(false);
            handle.idle_deadline.store(u64::MAX, Ordering::Relaxed);
            // A killed connection runs nothing more, and a stopping server starts
            // nothing new: checked after each command is read (the read goes first in
            // the select above, so a client that never pauses never lets it look).
            let bits = handle.signal.get();
            if bits & Signal::KILLED != 0 {
                self.end_killed().await;
                return;
            }
            if bits & Signal::ENDING != 0 {
                return;
            }
            let payload = match read {
                Ok((_, p)) => p,
                Err(ReadError::TooLarge(n)) => {
                    let _ = self.send_error(&ProxyError::packet_too_large(n)).await;
                    return;
                }
                Err(ReadError::OutOfBudget) => {
                    tracing::info!(session = self.id, "closed: client buffer budget exhausted");
                    let e = ProxyError::out_of_buffer_budget();
                    let _ = self.send_error(&e).await;
                    let linger = std::time::Duration::from_secs(2);
                    self.client.discard_input(linger).await;
                    return;
                }
                Err(ReadError::Stalled) => {
                    tracing::info!(session = self.id, "closed: packet stalled");
                    return;
                }
                Err(ReadError::Io(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
                    // A compressed frame that cannot be read: the stream is lost.
                    tracing::info!(session = self.id, error = %e, "closed: bad compressed packet");
                    let _ = self.send_error(&ProxyError::bad_compressed_packet(e)).await;
                    return;
                }
                Err(_) => return,
            };
            let Some(&cmd) = payload.first() else {
                let _ = self.send_error(&ProxyError::unknown_command(0)).await;
                continue;
            };
            if let Some(i) = stmt_counter(cmd) {
                self.stmt_commands[i] += 1;
            }
            let answered = match cmd {
                command::QUIT => return,
                command::PING => self.send_ok(OkInfo::default()).await,
                command::QUERY => {
                    self.begin_query(&payload);
                    let answered = self.query(payload).await;
                    self.end_statement();
                    answered
                }
                command::INIT_DB => {
                    let db = String::from_utf8_lossy(&payload[1..]).into_owned();
                    Box::pin(self.use_database(&db)).await
                }
                command::FIELD_LIST => Box::pin(self.field_list(payload)).await,
                command::RESET_CONNECTION => Box::pin(self.reset_connection()).await,
                command::SET_OPTION => Box::pin(self.set_option(&payload)).await,
                command::PROCESS_KILL => Box::pin(self.process_kill(&payload)).await,
                command::STATISTICS => {
                    let msg = format!("shardgate: session {} of user {}", self.id, self.user);
                    self.send_raw(msg.as_bytes()).await
                }
                command::STMT_PREPARE => Box::pin(self.stmt_prepare(payload)).await,
                command::STMT_EXECUTE => self.stmt_execute(payload).await,
                command::STMT_FETCH => Box::pin(self.stmt_fetch(payload)).await,
                command::STMT_BULK_EXECUTE => Box::pin(self.stmt_bulk_execute(payload)).await,
                command::STMT_RESET => Box::pin(self.stmt_reset(&payload)).await,
                command::STMT_CLOSE => {
                    self.stmt_close(&payload).await;
                    Answered::Done
                }
                command::STMT_SEND_LONG_DATA => {
                    self.stmt_long_data(&payload);
                    Answered::Done
                }
                command::CHANGE_USER => Box::pin(self.change_user(&payload)).await,
                other => self.send_error(&ProxyError::unknown_command(other)).await,
            };
            if let Answered::Close = answered {
                return;
            }
        }
    }

    /// `COM_RESET_CONNECTION`: the session starts over as if just logged in (see
    /// [`Session::reset_session_state`]).
    async fn reset_connection(&mut self) -> Answered {
        self.reset_session_state().await;
        self.send_ok(OkInfo::default()).await
    }

    // ---- answers ----

    async fn send_raw(&mut self, payload: &[u8]) -> Answered {
        match self.client.send(1, payload).await {
            Ok(_) => Answered::Done,
            Err(_) => Answered::Close,
        }
    }

    async fn send_error(&mut self, e: &ProxyError) -> Answered {
        tracing::debug!(session = self.id, error = %LogSafe(e), "statement refused");
        self.note_error(e.code, &e.message);
        self.send_raw(&wire::proxy_err_payload(e)).await
    }

    async fn send_ok(&mut self, mut info: OkInfo) -> Answered {
        info.status |= self.idle_status();
        self.send_raw(&wire::ok_payload(&info)).await
    }

    /// Forwards a collected backend response (already numbered from 1).
    async fn send_collected(&mut self, c: &Collected) -> Answered {
        if self.watch_errors && c.outcome.error {
            match c.err() {
                Some(e) => self.note_error(e.code, &e.message),
                None => self.note_error(0, "malformed ERR packet"),
            }
        }
        self.client.wbuf.extend_from_slice(&c.bytes);
        match self.client.flush().await {
            Ok(()) => Answered::Done,
            Err(_) => Answered::Close,
        }
    }

    /// Keeps the error a watched statement was answered with (see `watch_errors`).
    fn note_error(&mut self, code: u16, message: &str) {
        if self.watch_errors {
            self.answer_error = Some(crate::health::LastError::new(code, message));
        }
    }

    /// A result set of shardgate's own (text columns).
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
        self.send_columns(&specs, rows).await
    }

    /// A result set of shardgate's own with typed columns (a
    /// [`wire::column_type::LONGLONG`] column is sent as a binary, not-null BIGINT, so
    /// drivers read an integer); values in text form.
    async fn send_columns(
        &mut self,
        specs: &[wire::ColumnSpec],
        rows: Vec<Vec<Option<Vec<u8>>>>,
    ) -> Answered {
        let st = self.idle_status();
        let mut out = BytesMut::new();
        let extended = self.key.ext & caps::MARIADB_EXTENDED_METADATA != 0;
        wire::put_result_set(&mut out, specs, &rows, self.deprecate_eof(), extended, st);
        self.client.wbuf.extend_from_slice(&out);
        match self.client.flush().await {
            Ok(()) => Answered::Done,
            Err(_) => Answered::Close,
        }
    }

    async fn field_list(&mut self, payload: Bytes) -> Answered {
        let rt = self.shared.runtime();
        let vs = &rt.vschema;
        let stmt = any_statement();
        let target = match router::route(vs, &self.ctx, &stmt) {
            Ok(d) => self
                .one_target(vs, d, &stmt)
                .unwrap_or_else(|| self.default_target(vs)),
            Err(e) => return self.send_error(&e).await,
        };
        self.run_on(&rt, target, payload, ResponseKind::FieldList, &stmt)
            .await
    }
}

/// Where a prepared-statement command is counted in `Session::stmt_commands`.
fn stmt_counter(cmd: u8) -> Option<usize> {
    match cmd {
        command::STMT_PREPARE => Some(0),
        command::STMT_EXECUTE => Some(1),
        command::STMT_FETCH => Some(2),
        command::STMT_RESET => Some(3),
        command::STMT_CLOSE => Some(4),
        command::STMT_SEND_LONG_DATA => Some(5),
        _ => None,
    }
}

/// A plan that any shard of the session's keyspace may answer.
fn any_statement() -> StatementPlan {
    StatementPlan {
        span: 0..0,
        kind: StatementKind::Other,
        route: planner::Route::AnyShard,
        qualified_schema: None,
        effects: planner::Effects::default(),
    }
}
