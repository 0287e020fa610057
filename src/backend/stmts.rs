//! The statements prepared on one backend connection: a bounded cache from SQL text to
//! the backend's statement id, filled lazily the first time a session executes a
//! statement there.
//!
//! Sessions never see backend ids: a session keeps its own ids and maps them here at
//! each execute, so a pooled connection keeps its cache for the next session (a
//! prepared statement is no session state another session could observe). The cache is
//! emptied when the connection is reset (`COM_RESET_CONNECTION` drops the server's
//! statements); an entry evicted to stay in bounds is closed on the server.

use bytes::Bytes;

use super::conn::{BackendConn, BackendError, Collected};
use crate::protocol::binary::parse_prepare_ok;
use crate::protocol::command;
use crate::protocol::relay::ResponseKind;

/// Statements kept prepared per backend connection.
pub const MAX_PER_CONNECTION: usize = 256;

/// What a cache entry is for: the SQL text and the database it was prepared in, and,
/// for an execute that opens a cursor, the session statement that owns it (a cursor
/// lives on the server's statement, so two client statements of the same text must not
/// share one while a cursor is open).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct StmtKey {
    /// The SQL text as the client prepared it.
    pub sql: Bytes,
    /// The connection's database when it was prepared.
    pub database: Option<String>,
    /// The connection's session settings (`state_hash`) when it was prepared: MariaDB
    /// keeps the `sql_mode` and character set of prepare time, so a statement prepared
    /// under other settings (another session's `ANSI_QUOTES`) is not reused.
    pub state: u64,
    /// `(session id, client statement id)` of a cursor's owner; None when shared.
    pub owner: Option<(u32, u32)>,
}

/// One statement prepared on the backend.
#[derive(Debug, Clone)]
pub struct BackendStmt {
    /// The backend's statement id.
    pub id: u32,
    /// Parameters the backend counted.
    pub params: u16,
    /// The backend's PREPARE_OK answer (raw packets), for a session preparing the
    /// same text later.
    pub answer: Bytes,
    /// Last use, for eviction.
    used: u64,
}

/// A connection's prepared statements (bounded; least recently used evicted).
#[derive(Debug, Default)]
pub struct StmtCache {
    entries: std::collections::HashMap<StmtKey, BackendStmt>,
    clock: u64,
}

impl StmtCache {
    /// Forgets every statement (the server dropped them: the connection was reset).
    pub fn clear(&mut self) {
        self.entries.clear();
    }

    /// How many statements are prepared.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The statement for `key`, if prepared here.
    pub fn get(&mut self, key: &StmtKey) -> Option<&BackendStmt> {
        self.clock += 1;
        let now = self.clock;
        let e = self.entries.get_mut(key)?;
        e.used = now;
        Some(e)
    }
}

/// The outcome of preparing on a backend: the statement, or the backend's ERR.
pub type Prepared = Result<BackendStmt, Collected>;

impl BackendConn {
    /// The backend statement for `key`, prepared now if this connection has not
    /// prepared it yet. `Ok(Err(..))` is the backend's ERR (a table missing on this
    /// shard, bad SQL), to relay.
    pub async fn prepared(&mut self, key: &StmtKey) -> Result<Prepared, BackendError> {
        if let Some(s) = self.stmts.get(key) {
            return Ok(Ok(s.clone()));
        }
        let mut p = Vec::with_capacity(key.sql.len() + 1);
        p.push(command::STMT_PREPARE);
        p.extend_from_slice(&key.sql);
        let c = self.exec(&p, ResponseKind::Prepare).await?;
        if c.outcome.error {
            return Ok(Err(c));
        }
        let first = c.bytes.get(4..).and_then(parse_prepare_ok).ok_or_else(|| {
            self.broken = true;
            BackendError::Backend("malformed PREPARE_OK".into())
        })?;
        let (id, _, params) = first;
        if self.stmts.entries.len() >= MAX_PER_CONNECTION {
            self.evict_one().await?;
        }
        self.stmts.clock += 1;
        let stmt = BackendStmt {
            id,
            params,
            answer: c.bytes.freeze(),
            used: self.stmts.clock,
        };
        self.stmts.entries.insert(key.clone(), stmt.clone());
        Ok(Ok(stmt))
    }

    /// `key` prepared anew on this connection (a cached copy is closed first), so the
    /// answer carries the parameters and columns the tables have now: what a client's
    /// `COM_STMT_PREPARE` gets. Executes use [`prepared`](Self::prepared), the cached
    /// copy (MariaDB re-prepares a statement itself when its tables changed).
    pub async fn prepare_fresh(&mut self, key: &StmtKey) -> Result<Prepared, BackendError> {
        self.close_stmt(key).await?;
        self.prepared(key).await
    }

    /// Closes the least recently used statement on the server.
    async fn evict_one(&mut self) -> Result<(), BackendError> {
        // A statement a session owns may hold its open cursor: shared ones go first.
        let oldest = self
            .stmts
            .entries
            .iter()
            .min_by_key(|(k, s)| (k.owner.is_some(), s.used))
            .map(|(k, _)| k.clone());
        if let Some(k) = oldest {
            self.close_stmt(&k).await?;
        }
        Ok(())
    }

    /// Closes `key`'s statement on the server (COM_STMT_CLOSE has no answer) and
    /// forgets it.
    pub async fn close_stmt(&mut self, key: &StmtKey) -> Result<(), BackendError> {
        if let Some(s) = self.stmts.entries.remove(key) {
            let mut p = vec![command::STMT_CLOSE];
            p.extend_from_slice(&s.id.to_le_bytes());
            self.send_only(&p).await?;
        }
        Ok(())
    }

    /// `COM_STMT_SEND_LONG_DATA` for parameter `param` of backend statement `id`, in
    /// chunks under the packet limit (no answer).
    pub async fn send_long_data(
        &mut self,
        id: u32,
        param: u16,
        data: &[u8],
    ) -> Result<(), BackendError> {
        const CHUNK: usize = 1 << 20;
        if data.is_empty() {
            return self.send_only(&long_data_packet(id, param, &[])).await;
        }
        for chunk in data.chunks(CHUNK) {
            self.send_only(&long_data_packet(id, param, chunk)).await?;
        }
        Ok(())
    }
}

fn long_data_packet(id: u32, param: u16, data: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(7 + data.len());
    p.push(command::STMT_SEND_LONG_DATA);
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&param.to_le_bytes());
    p.extend_from_slice(data);
    p
}
