//! One connection of our own to a MariaDB/MySQL server: handshake, login, commands,
//! and the raw relay of responses to a client.

use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use super::tls::{BackendStream, TlsFailure};

use crate::protocol::auth::{native_token, NATIVE_PASSWORD};
use crate::protocol::handshake::{
    build_handshake_response, parse_auth_switch, parse_greeting, Greeting, HandshakeResponse,
};
use crate::protocol::packet::{PacketConn, ReadError};
use crate::protocol::relay::{Outcome, ProtocolViolation, ResponseKind, ResponseScanner};
use crate::protocol::wire::{parse_err, ErrInfo};
use crate::protocol::{caps, command};
use crate::vschema::Cluster;

mod infile;

/// Largest single response packet shardgate reads when it collects (not relays) a reply.
const COLLECT_LIMIT: usize = 1 << 30;

/// What makes two backend connections interchangeable: the client capabilities that
/// shape responses, and the connection collation from the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ConnKey {
    /// The client's bits of [`caps::RELAY_SENSITIVE`].
    pub caps: u32,
    /// Collation id sent in the handshake.
    pub collation: u8,
    /// The client's MariaDB extended capabilities of [`caps::MARIADB_RELAYABLE`].
    pub ext: u32,
}

/// Why a backend exchange failed.
#[derive(Debug)]
pub enum BackendError {
    /// The backend connection failed (closed, reset, timed out) or broke the protocol
    /// before any byte of the response reached the client.
    Backend(String),
    /// The backend connection failed after part of the response was relayed: the
    /// client's stream is cut mid-response and cannot continue.
    BackendMidResponse(String),
    /// Writing to the client failed: the client is gone.
    Client(std::io::Error),
    /// The backend connection failed mid-exchange (during a LOAD DATA LOCAL file) and
    /// the client has already been answered with an ERR in its place; the connection
    /// is closed. The client's stream is in step: the session may go on, unless it had
    /// state on that connection.
    LostAnswered(String),
}

impl std::fmt::Display for BackendError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            BackendError::Backend(m)
            | BackendError::BackendMidResponse(m)
            | BackendError::LostAnswered(m) => write!(f, "{m}"),
            BackendError::Client(e) => write!(f, "client write failed: {e}"),
        }
    }
}

impl From<ReadError> for BackendError {
    fn from(e: ReadError) -> Self {
        BackendError::Backend(e.to_string())
    }
}

impl From<ProtocolViolation> for BackendError {
    fn from(e: ProtocolViolation) -> Self {
        BackendError::Backend(format!("protocol violation: {}", e.0))
    }
}

/// Why a backend connection could not be opened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectError {
    /// The server's error code when it refused the login (1045, 1049, 1040, ...); None
    /// when the network or the protocol failed.
    pub code: Option<u16>,
    /// What happened, naming the address.
    pub message: String,
    /// A configuration problem (TLS not offered, a certificate that does not verify):
    /// trying again will not help until someone changes the config or the server.
    pub permanent: bool,
}

impl ConnectError {
    fn network(message: String) -> ConnectError {
        ConnectError {
            code: None,
            message,
            permanent: false,
        }
    }

    fn permanent(message: String) -> ConnectError {
        ConnectError {
            code: None,
            message,
            permanent: true,
        }
    }
}

impl std::fmt::Display for ConnectError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<String> for ConnectError {
    fn from(message: String) -> Self {
        ConnectError::network(message)
    }
}

/// A whole response read into memory (for statements whose answers shardgate merges).
#[derive(Debug)]
pub struct Collected {
    /// The raw packets (headers included), sequence ids as the backend sent them.
    pub bytes: BytesMut,
    /// How it ended.
    pub outcome: Outcome,
}

impl Collected {
    /// The backend's ERR, if the response ended in one.
    pub fn err(&self) -> Option<ErrInfo> {
        if !self.outcome.error {
            return None;
        }
        // the ERR is the last packet
        let mut at = 0;
        let mut last = None;
        while at + 4 <= self.bytes.len() {
            let len = crate::protocol::packet::physical_payload_len(&self.bytes[at..])?;
            last = Some(&self.bytes[at + 4..(at + 4 + len).min(self.bytes.len())]);
            at += 4 + len;
        }
        last.and_then(parse_err)
    }
}

/// A logged-in backend connection.
pub struct BackendConn {
    conn: PacketConn<BackendStream>,
    /// Capabilities in force on this connection.
    pub capabilities: u32,
    /// Its pool key.
    pub key: ConnKey,
    /// The server's thread id (for `KILL QUERY`).
    pub thread_id: u32,
    /// The default database now in force.
    pub database: Option<String>,
    /// Hash of the session statements replayed on it (0 = none).
    pub state_hash: u64,
    /// Status flags of the last response.
    pub status: u16,
    /// Warnings the last response reported (what `SHOW WARNINGS` would list).
    pub last_warnings: u16,
    /// Whether the last response ended in an ERR (what `SHOW ERRORS` would list).
    pub last_error: bool,
    /// The ERR that ended the last relayed response (set only when one did: read
    /// `last_error` first), for the per-workspace error view.
    pub last_err: Option<ErrInfo>,
    /// The insert id the last response's OK packet reported (0: none).
    pub reported_insert_id: u64,
    /// What `LAST_INSERT_ID()` answers on this connection, as far as shardgate saw:
    /// the last non-zero insert id an OK packet reported (0 on a fresh connection).
    pub insert_id: u64,
    /// State that reserves this connection for one session (temporary tables, locks,
    /// ...); a connection holding any is closed, never pooled, when its lease ends.
    pub reserve: crate::backend::Reserve,
    /// The client session whose statement it ran last (0: none), so a question about
    /// "the previous statement" never reads another session's answer.
    pub last_session: u32,
    /// Whether any byte of the current response has reached the client (a failure
    /// after that cannot be reported with an ERR packet: the stream is mid-response).
    pub relayed: bool,
    /// When it was last used.
    pub last_used: Instant,
    /// Set when the connection can no longer be trusted; it is then closed, not pooled.
    pub broken: bool,
    /// Set when the last command certainly never ran: writing it failed, or the first
    /// thing read back was the server's own goodbye (an ERR with sequence id 0, sent
    /// before it read the command). Only then may a statement be sent again elsewhere.
    pub never_ran: bool,
    /// The pool's topology generation it was opened in: one opened to a primary that a
    /// failover replaced is closed when it comes back, never pooled.
    pub generation: u64,
    /// The session worker whose reactor drives its socket (see [`crate::workers`]).
    pub worker: u16,
    /// Statements prepared on it (emptied by [`reset`](Self::reset)).
    pub stmts: super::stmts::StmtCache,
}

impl BackendConn {
    /// Connects and logs in to `cluster`'s primary with the client capabilities of `key`.
    pub async fn connect(
        cluster: &Cluster,
        key: ConnKey,
        database: Option<&str>,
        timeout: Duration,
    ) -> Result<(BackendConn, Greeting), ConnectError> {
        match crate::timer::timeout(timeout, Self::connect_inner(cluster, key, database)).await {
            Ok(r) => r,
            Err(_) => Err(ConnectError::network(format!(
                "connect to {} timed out after {:?}",
                cluster.primary, timeout
            ))),
        }
    }

    async fn connect_inner(
        cluster: &Cluster,
        key: ConnKey,
        database: Option<&str>,
    ) -> Result<(BackendConn, Greeting), ConnectError> {
        let stream = TcpStream::connect(&cluster.primary)
            .await
            .map_err(|e| format!("connect to {}: {e}", cluster.primary))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        let mut plain = PacketConn::new(stream);
        let (greeting_seq, payload) = plain
            .read_packet(1 << 20)
            .await
            .map_err(|e| format!("reading greeting from {}: {e}", cluster.primary))?;
        if payload.first() == Some(&0xff) {
            let e = parse_err(&payload);
            return Err(ConnectError {
                code: e.as_ref().map(|e| e.code),
                message: format!(
                    "{} refused the connection: {}",
                    cluster.primary,
                    e.map(|e| e.message).unwrap_or_default()
                ),
                permanent: false,
            });
        }
        let greeting = parse_greeting(&payload)
            .ok_or_else(|| format!("{} sent a malformed greeting", cluster.primary))?;
        if greeting.capabilities & caps::PROTOCOL_41 == 0 {
            return Err(format!("{} does not speak protocol 4.1", cluster.primary).into());
        }
        let mut capabilities = (caps::BACKEND_BASE | (key.caps & caps::RELAY_SENSITIVE))
            & (greeting.capabilities | caps::CONNECT_WITH_DB);
        let server_has_ext = greeting.capabilities & caps::LONG_PASSWORD == 0;
        let ext_capabilities = if server_has_ext {
            key.ext & greeting.ext_capabilities
        } else {
            0
        };
        if ext_capabilities != 0 {
            // Clearing LONG_PASSWORD is how a MariaDB client says it sends extended
            // capabilities.
            capabilities &= !caps::LONG_PASSWORD;
        }
        let scramble = &greeting.scramble[..greeting.scramble.len().min(20)];
        let mut response = HandshakeResponse {
            capabilities,
            max_packet: 1 << 30,
            collation: key.collation,
            user: cluster.user.clone(),
            auth_response: native_token(cluster.password.as_bytes(), scramble),
            database: database.map(str::to_string),
            auth_plugin: Some(NATIVE_PASSWORD.to_string()),
            attributes: Vec::new(),
            ext_capabilities,
        };
        let (mut conn, seq) = match &cluster.tls {
            None => (
                rewrap(plain, BackendStream::Plain),
                greeting_seq.wrapping_add(1),
            ),
            Some(tls) => {
                response.capabilities |= caps::SSL;
                let seq = greeting_seq.wrapping_add(1);
                upgrade(plain, tls, cluster, &response, greeting.capabilities, seq).await?
            }
        };
        conn.send(seq, &build_handshake_response(&response))
            .await
            .map_err(|e| e.to_string())?;
        loop {
            let (s, reply) = conn
                .read_packet(1 << 20)
                .await
                .map_err(|e| format!("login to {}: {e}", cluster.primary))?;
            let seq = s.wrapping_add(1);
            match reply.first() {
                Some(0x00) => break,
                Some(0xff) => {
                    let e = parse_err(&reply);
                    return Err(ConnectError {
                        code: e.as_ref().map(|e| e.code),
                        message: format!(
                            "login to {} failed: {}",
                            cluster.primary,
                            e.map(|e| e.message).unwrap_or_default()
                        ),
                        permanent: false,
                    });
                }
                Some(0xfe) => {
                    let (plugin, data) = parse_auth_switch(&reply)
                        .ok_or_else(|| "malformed auth switch".to_string())?;
                    if plugin != NATIVE_PASSWORD {
                        return Err(format!(
                            "{} asks for auth plugin {plugin}; shardgate speaks mysql_native_password",
                            cluster.primary
                        )
                        .into());
                    }
                    let token = native_token(cluster.password.as_bytes(), &data);
                    conn.send(seq, &token).await.map_err(|e| e.to_string())?;
                }
                _ => {
                    return Err(
                        format!("{} sent an unexpected login reply", cluster.primary).into(),
                    )
                }
            }
        }
        let backend = BackendConn {
            conn,
            capabilities,
            key,
            thread_id: greeting.connection_id,
            database: database.map(str::to_string),
            state_hash: 0,
            status: greeting.status,
            last_warnings: 0,
            last_error: false,
            last_err: None,
            reported_insert_id: 0,
            insert_id: 0,
            reserve: crate::backend::Reserve::NONE,
            last_session: 0,
            relayed: false,
            last_used: Instant::now(),
            broken: false,
            never_ran: false,
            generation: 0,
            worker: crate::workers::current(),
            stmts: super::stmts::StmtCache::default(),
        };
        Ok((backend, greeting))
    }

    /// Whether the connection runs over TLS.
    pub fn is_tls(&self) -> bool {
        self.conn.io.is_tls()
    }

    fn deprecate_eof(&self) -> bool {
        self.capabilities & caps::DEPRECATE_EOF != 0
    }

    /// Sends a command (sequence id 0) and reads its whole response into memory.
    pub async fn exec(
        &mut self,
        payload: &[u8],
        kind: ResponseKind,
    ) -> Result<Collected, BackendError> {
        self.last_used = Instant::now();
        if let Err(e) = self.conn.send(0, payload).await {
            self.broken = true;
            return Err(BackendError::Backend(e.to_string()));
        }
        let mut scanner = ResponseScanner::new(kind, self.deprecate_eof());
        let mut out = BytesMut::new();
        loop {
            let n = match scanner.scan(&self.conn.rbuf) {
                Ok(n) => n,
                Err(e) => {
                    self.broken = true;
                    return Err(e.into());
                }
            };
            out.extend_from_slice(&self.conn.rbuf[..n]);
            self.conn.rbuf.advance(n);
            if scanner.is_done() {
                if scanner.outcome().local_infile {
                    // Only the relay streams a client's file; this backend now waits
                    // for one that will never come.
                    self.broken = true;
                    return Err(BackendError::Backend(
                        "LOAD DATA LOCAL is not supported in this statement".into(),
                    ));
                }
                break;
            }
            if out.len() > COLLECT_LIMIT {
                self.broken = true;
                return Err(BackendError::Backend(
                    "response too large to collect".into(),
                ));
            }
            if let Err(e) = self.conn.fill().await {
                self.broken = true;
                return Err(e.into());
            }
        }
        let outcome = scanner.outcome();
        self.note(&outcome);
        Ok(Collected {
            bytes: out,
            outcome,
        })
    }

    /// Sends a command (sequence id 0) and streams the response to `client` unchanged,
    /// writing whole batches of packets as they arrive.
    pub fn relay<'a, W: AsyncWrite + Unpin>(
        &'a mut self,
        payload: &'a [u8],
        kind: ResponseKind,
        client: &'a mut W,
    ) -> impl std::future::Future<Output = Result<Outcome, BackendError>> + 'a {
        self.last_used = Instant::now();
        self.relay_or_hold(payload, kind, client, false)
    }

    /// [`relay`](Self::relay); with `hold_deadlock`, an answer that is one ERR 1213
    /// (a deadlock's victim, rolled back) is read but not relayed: the outcome says
    /// `held`, and nothing reached the client, so the caller may send the command again.
    ///
    /// Not an `async fn`: the answer's future is the command's (one level of futures
    /// less to enter on each wake-up of a statement). It does not stamp `last_used`:
    /// its callers do, a session's statement with the clock reading it takes when the
    /// answer has ended.
    pub(crate) fn relay_or_hold<'a, W: AsyncWrite + Unpin>(
        &'a mut self,
        payload: &'a [u8],
        kind: ResponseKind,
        client: &'a mut W,
        hold_deadlock: bool,
    ) -> impl std::future::Future<Output = Result<Outcome, BackendError>> + 'a {
        self.never_ran = false;
        self.relay_answer(Some(payload), kind, client, hold_deadlock)
    }

    /// Streams the response to an already-sent command to `client`, when that answer's
    /// sequence id may be anything (after a LOAD DATA LOCAL file it follows the
    /// client's last packet and wraps to 0 one time in 256): an ERR with sequence id 0
    /// is then an answer, not the server's goodbye.
    pub fn relay_response<'a, W: AsyncWrite + Unpin>(
        &'a mut self,
        kind: ResponseKind,
        client: &'a mut W,
    ) -> impl std::future::Future<Output = Result<Outcome, BackendError>> + 'a {
        self.relay_answer(None, kind, client, false)
    }

    /// Streams a response to `client`. With `send`, the command (sequence id 0) is sent
    /// first, and the answer is fresh: an ERR with sequence id 0 before it is the
    /// server's goodbye. `hold_deadlock`: see [`relay_or_hold`](Self::relay_or_hold).
    async fn relay_answer<W: AsyncWrite + Unpin>(
        &mut self,
        send: Option<&[u8]>,
        kind: ResponseKind,
        client: &mut W,
        hold_deadlock: bool,
    ) -> Result<Outcome, BackendError> {
        let fresh = send.is_some();
        if let Some(payload) = send {
            if let Err(e) = self.conn.send(0, payload).await {
                // The kernel took none of it: the peer had already reset the connection.
                self.broken = true;
                self.never_ran = true;
                return Err(BackendError::Backend(e.to_string()));
            }
        }
        let mut scanner = ResponseScanner::new(kind, self.deprecate_eof());
        let mut wrote = false;
        self.relayed = false;
        let fail = |wrote: bool, m: String| {
            if wrote {
                BackendError::BackendMidResponse(m)
            } else {
                BackendError::Backend(m)
            }
        };
        loop {
            if fresh && !wrote && self.goodbye_first() {
                // Its answer to nothing we sent: the server closed this connection
                // before it read the command.
                self.broken = true;
                self.never_ran = true;
                let why = self
                    .conn
                    .rbuf
                    .get(4..)
                    .and_then(parse_err)
                    .map(|e| e.message)
                    .unwrap_or_default();
                return Err(BackendError::Backend(format!(
                    "the server closed the connection: {why}"
                )));
            }
            if !self.conn.rbuf.is_empty() {
                let n = match scanner.scan(&self.conn.rbuf) {
                    Ok(n) => n,
                    Err(e) => {
                        self.broken = true;
                        return Err(fail(wrote, format!("protocol violation: {}", e.0)));
                    }
                };
                if n > 0 {
                    if let Some(p) = scanner.error_payload(&self.conn.rbuf[..n]) {
                        // Only a response that ended in an ERR pays for this.
                        self.last_err = parse_err(p);
                        if hold_deadlock && scanner.single_packet() && self.deadlocked() {
                            self.conn.rbuf.advance(n);
                            let mut outcome = scanner.outcome();
                            self.note(&outcome);
                            outcome.held = true;
                            return Ok(outcome);
                        }
                    }
                    wrote = true;
                    self.relayed = true;
                    if let Err(e) = client.write_all(&self.conn.rbuf[..n]).await {
                        // the backend is mid-response: it cannot be reused
                        self.broken = !scanner.is_done();
                        return Err(BackendError::Client(e));
                    }
                    self.conn.rbuf.advance(n);
                }
                if scanner.is_done() {
                    break;
                }
            }
            if let Err(e) = self.conn.fill().await {
                self.broken = true;
                return Err(fail(wrote, e.to_string()));
            }
        }
        // Free on TCP; a TLS client stream may still hold the last records.
        if let Err(e) = client.flush().await {
            return Err(BackendError::Client(e));
        }
        let outcome = scanner.outcome();
        self.note(&outcome);
        Ok(outcome)
    }

    /// Whether the last ERR read was a deadlock's (1213).
    pub(crate) fn deadlocked(&self) -> bool {
        self.last_err
            .as_ref()
            .is_some_and(|e| e.code == crate::error::codes::LOCK_DEADLOCK)
    }

    /// Whether the read buffer starts with an ERR packet of sequence id 0: a response
    /// carries sequence id 1 and up, so that one was sent unasked (MySQL's
    /// "disconnected by the server because of inactivity" before it closes).
    fn goodbye_first(&self) -> bool {
        let b = &self.conn.rbuf;
        b.len() >= 5 && b[3] == 0 && b[4] == 0xff
    }

    fn note(&mut self, outcome: &Outcome) {
        if let Some(st) = outcome.status {
            self.status = st;
        }
        self.last_warnings = outcome.warnings;
        self.last_error = outcome.error;
        self.reported_insert_id = outcome.last_insert_id;
        if outcome.last_insert_id != 0 {
            self.insert_id = outcome.last_insert_id;
        }
    }

    /// Whether an idle connection is still open, as far as can be told without waiting:
    /// the server sends nothing on an idle connection, so anything readable (its close
    /// after `wait_timeout`, a reset, an error packet before the close) means it is
    /// gone. Some(true): nothing to read; Some(false): gone; None: bytes under TLS
    /// (possibly a late session ticket), which only a ping can tell.
    pub fn idle_alive(&self) -> Option<bool> {
        use std::task::{Context, Poll, Waker};
        if !self.conn.rbuf.is_empty() {
            return Some(false);
        }
        let tcp = match &self.conn.io {
            crate::protocol::stream::MaybeTls::Plain(s) => s,
            crate::protocol::stream::MaybeTls::Tls(t) => t.get_ref().0,
            crate::protocol::stream::MaybeTls::Detached => return Some(false),
        };
        let mut cx = Context::from_waker(Waker::noop());
        let mut byte = [0u8; 1];
        let mut buf = tokio::io::ReadBuf::new(&mut byte);
        match tcp.poll_peek(&mut cx, &mut buf) {
            Poll::Pending => Some(true),
            Poll::Ready(Ok(0)) | Poll::Ready(Err(_)) => Some(false),
            Poll::Ready(Ok(_)) if self.is_tls() => None,
            Poll::Ready(Ok(_)) => Some(false),
        }
    }

    /// Sends a command that has no answer (COM_STMT_CLOSE, COM_STMT_SEND_LONG_DATA).
    pub(super) async fn send_only(&mut self, payload: &[u8]) -> Result<(), BackendError> {
        self.last_used = Instant::now();
        if let Err(e) = self.conn.send(0, payload).await {
            self.broken = true;
            return Err(BackendError::Backend(e.to_string()));
        }
        Ok(())
    }

    /// Sends a command whose answer is a stream read with [`Self::read_streamed`]
    /// (COM_BINLOG_DUMP): nothing is read here.
    pub async fn send_streaming(&mut self, payload: &[u8]) -> Result<(), BackendError> {
        self.last_used = Instant::now();
        self.conn.send(0, payload).await.map_err(|e| {
            self.broken = true;
            BackendError::Backend(e.to_string())
        })?;
        Ok(())
    }

    /// The next packet of a streamed answer (cancel-safe: a partial packet stays
    /// buffered). At most `limit` bytes of payload.
    pub async fn read_streamed(&mut self, limit: usize) -> Result<bytes::Bytes, BackendError> {
        match self.conn.read_packet(limit).await {
            Ok((_, p)) => Ok(p),
            Err(e) => {
                self.broken = true;
                Err(BackendError::Backend(e.to_string()))
            }
        }
    }

    /// COM_PING; false if the connection is dead.
    pub async fn ping(&mut self) -> bool {
        match self.exec(&[command::PING], ResponseKind::Query).await {
            Ok(c) => !c.outcome.error,
            Err(_) => false,
        }
    }

    /// COM_RESET_CONNECTION: drops session variables, temporary tables, locks and any
    /// open transaction. The default database is re-sent afterwards by the caller.
    pub async fn reset(&mut self) -> Result<(), BackendError> {
        let c = self
            .exec(&[command::RESET_CONNECTION], ResponseKind::Query)
            .await?;
        if c.outcome.error {
            self.broken = true;
            return Err(BackendError::Backend(
                c.err()
                    .map(|e| e.message)
                    .unwrap_or_else(|| "reset failed".into()),
            ));
        }
        self.state_hash = 0;
        self.stmts.clear();
        self.reserve = crate::backend::Reserve::NONE;
        self.insert_id = 0;
        self.database = None;
        Ok(())
    }

    /// COM_SET_OPTION: multi-statements on or off for this connection, which then
    /// belongs under `key` (whose capabilities say the same).
    pub async fn set_multi_statements(
        &mut self,
        on: bool,
        key: ConnKey,
    ) -> Result<(), BackendError> {
        self.last_used = Instant::now();
        let option: u16 = if on { 0 } else { 1 };
        let [lo, hi] = option.to_le_bytes();
        if let Err(e) = self.conn.send(0, &[command::SET_OPTION, lo, hi]).await {
            self.broken = true;
            return Err(BackendError::Backend(e.to_string()));
        }
        // One packet: EOF (or an OK-shaped EOF), or ERR.
        let (_, reply) = self.conn.read_packet(1 << 16).await.map_err(|e| {
            self.broken = true;
            BackendError::from(e)
        })?;
        if reply.first() == Some(&0xff) {
            return Err(BackendError::Backend(
                parse_err(&reply)
                    .map(|e| e.message)
                    .unwrap_or_else(|| "COM_SET_OPTION failed".into()),
            ));
        }
        if on {
            self.capabilities |= caps::MULTI_STATEMENTS;
        } else {
            self.capabilities &= !caps::MULTI_STATEMENTS;
        }
        self.key = key;
        Ok(())
    }

    /// COM_INIT_DB; Ok(Err(collected)) carries the backend's ERR (e.g. 1049).
    pub async fn init_db(&mut self, db: &str) -> Result<Result<(), Collected>, BackendError> {
        let mut p = Vec::with_capacity(db.len() + 1);
        p.push(command::INIT_DB);
        p.extend_from_slice(db.as_bytes());
        let c = self.exec(&p, ResponseKind::Query).await?;
        if c.outcome.error {
            return Ok(Err(c));
        }
        self.database = Some(db.to_string());
        Ok(Ok(()))
    }
}

/// The same buffers around a new stream (plain, or TLS over the old socket).
fn rewrap<S, T>(old: PacketConn<S>, wrap: impl FnOnce(S) -> T) -> PacketConn<T> {
    PacketConn {
        io: wrap(old.io),
        rbuf: old.rbuf,
        wbuf: old.wbuf,
        limits: old.limits,
    }
}

/// Upgrades a connection whose greeting was just read to TLS: checks the server
/// offers it, sends the SSLRequest (the first 32 bytes of `response`, whose
/// capabilities already carry `SSL`) with sequence id `seq`, runs the handshake.
/// Returns the TLS connection and the sequence id of the real handshake response.
/// Never falls back to clear text: every failure fails the connect.
async fn upgrade(
    mut plain: PacketConn<TcpStream>,
    tls: &super::tls::BackendTls,
    cluster: &Cluster,
    response: &HandshakeResponse,
    offered: u32,
    seq: u8,
) -> Result<(PacketConn<BackendStream>, u8), ConnectError> {
    let at = format!("cluster {} ({})", cluster.name, cluster.primary);
    if offered & caps::SSL == 0 {
        return Err(ConnectError::permanent(format!(
            "{at}: backend does not offer TLS, and [backend_tls] requires it \
             (configure ssl_cert/ssl_key on the server, or set mode = \"disabled\")"
        )));
    }
    // A server says nothing between its greeting and our reply; bytes here would be
    // lost under TLS, so they are a protocol violation.
    if !plain.rbuf.is_empty() {
        return Err(format!("{at}: unexpected bytes after the greeting").into());
    }
    let full = build_handshake_response(response);
    let ssl_request = full.get(..32).unwrap_or(&full);
    let next = plain
        .send(seq, ssl_request)
        .await
        .map_err(|e| format!("{at}: sending the SSLRequest: {e}"))?;
    let PacketConn {
        io,
        rbuf,
        wbuf,
        limits,
    } = plain;
    let stream = match tls.handshake(io, &cluster.primary).await {
        Ok(s) => s,
        Err(TlsFailure::Certificate(e)) => {
            return Err(ConnectError::permanent(format!(
                "{at}: the backend's TLS certificate did not verify ({}): {e}",
                tls.mode.as_str()
            )))
        }
        Err(TlsFailure::Config(e)) => {
            return Err(ConnectError::permanent(format!(
                "{at}: TLS handshake failed: {e}"
            )))
        }
        Err(TlsFailure::Network(e)) => {
            return Err(format!("{at}: TLS handshake failed: {e}").into());
        }
    };
    let conn = PacketConn {
        io: BackendStream::Tls(Box::new(stream)),
        rbuf,
        wbuf,
        limits,
    };
    Ok((conn, next))
}
