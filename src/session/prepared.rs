//! Server-side prepared statements (`COM_STMT_*`), the session's side.
//!
//! The session hands out its own statement ids: a client never sees a backend's id,
//! and ids never leak between sessions. For each statement it keeps the SQL text, where
//! its `?` markers are, and the parameter count the first backend reported; the
//! PREPARE_OK answer (parameter and column definitions) is relayed as that backend sent
//! it, with the statement id rewritten.
//!
//! A statement is prepared on a backend connection only when an execute needs it there
//! ([`crate::backend::stmts`] keeps each connection's statements). An execute is routed
//! as the text statement with its bound values would be (`prepared_exec`), so a
//! sharding column given as `?` finds its shard.
//!
//! Long data (`COM_STMT_SEND_LONG_DATA`) is kept per statement, bounded by
//! `max_packet_size`, and sent to the backend right before the execute it belongs to.

use std::collections::HashMap;

use bytes::{Bytes, BytesMut};

use super::{Answered, Session};
use crate::error::{Fault, ProxyError};
use crate::planner::{self, Effects, ShardingSchema};
use crate::protocol::binary;
use crate::protocol::status;
use crate::router::{self, DbContext, Dispatch, Target, Unsharded};
use crate::shared::Runtime;
use crate::vschema::VSchema;

/// Prepared statements one session may hold at once (MariaDB's
/// `max_prepared_stmt_count` is server-wide; this is shardgate's per-session bound).
pub(super) const MAX_PER_SESSION: usize = 1024;

/// The SQL text of one session's prepared statements, at most this many
/// `max_packet_size`s together.
const TEXT_BUDGET_PACKETS: usize = 4;

/// One statement the client prepared.
pub(super) struct ClientStmt {
    /// The SQL text as the client sent it (what backends prepare).
    pub sql: Bytes,
    /// The same, as text for planning.
    pub text: String,
    /// Byte offsets of the `?` markers in `text`.
    pub markers: Vec<usize>,
    /// Parameters (from the PREPARE_OK).
    pub params: u16,
    /// Result columns (from the PREPARE_OK): a statement that answers with rows
    /// (`INSERT ... RETURNING`).
    pub columns: u16,
    /// The parameter types the last execute that sent types bound (2 bytes each).
    pub types: Option<Vec<u8>>,
    /// Long data per parameter, sent since the last execute.
    pub long_data: HashMap<u16, Vec<u8>>,
    /// Total long data held.
    pub long_bytes: usize,
    /// Set when long data went over the bound: the next execute fails with it.
    pub long_error: Option<String>,
    /// Where a cursor this statement opened lives (the connection is reserved).
    pub cursor: Option<OpenCursor>,
}

/// A cursor open on a backend connection the session holds.
#[derive(Debug, Clone)]
pub(super) struct OpenCursor {
    /// The backend connection's thread id: the held connection is found by it (its
    /// target changes if the session uses it for another database meanwhile).
    pub thread: u32,
    /// The backend statement that holds the cursor, as it was keyed when it ran.
    pub key: crate::backend::stmts::StmtKey,
}

/// The session's prepared statements by the ids it gave them.
#[derive(Default)]
pub(super) struct Statements {
    pub map: HashMap<u32, ClientStmt>,
    next: u32,
    /// The id given last (what MariaDB's id `0xffffffff` means).
    pub last: u32,
}

impl Statements {
    /// A fresh id (never 0, never one in use, never `0xffffffff`).
    fn allocate(&mut self) -> u32 {
        loop {
            self.next = self.next.wrapping_add(1);
            if self.next != 0 && self.next != u32::MAX && !self.map.contains_key(&self.next) {
                return self.next;
            }
        }
    }

    /// The statement a request names (`0xffffffff`: the last prepared).
    /// The session statement a `COM_STMT_*` payload names (0, never allocated, when
    /// the payload is too short to name one).
    pub fn id_in(&self, payload: &[u8]) -> u32 {
        self.resolve(binary::stmt_id(payload).unwrap_or(0))
    }

    pub fn resolve(&self, id: u32) -> u32 {
        if id == binary::LAST_PREPARED {
            self.last
        } else {
            id
        }
    }
}

/// An error of the prepared-statement protocol, with MariaDB's code and SQLSTATE.
pub(super) fn ps_error(code: u16, sqlstate: &[u8; 5], message: String) -> ProxyError {
    ProxyError {
        code,
        sqlstate: *sqlstate,
        message,
        fault: Fault::Client,
        retryable: false,
        cluster: None,
    }
}

/// 1243 (HY000): an id the session never gave or already closed.
pub(super) fn unknown_stmt(id: u32, command: &str) -> ProxyError {
    ps_error(
        1243,
        b"HY000",
        format!("Unknown prepared statement handler ({id}) given to {command}"),
    )
}

impl Session {
    /// Drops every prepared statement of the session (`COM_RESET_CONNECTION`, the
    /// session's end). Cursors go with the connections the caller resets.
    pub(super) fn clear_prepared(&mut self) {
        self.prepared = Statements::default();
    }

    fn no_backslash_escapes(&self) -> bool {
        self.backend_flags & status::NO_BACKSLASH_ESCAPES != 0
    }

    /// The plan of `text` in the session's keyspace, or with the keyspace its only
    /// statement qualifies its tables with (as a text query is planned).
    pub(super) fn plan_text(&self, rt: &Runtime, text: &str) -> planner::Plan {
        self.plan_text_noting_identity(rt, text).0
    }

    /// [`plan_text`](Self::plan_text), and whether the plan cache knows the text to
    /// mention nothing [`identity_rewrite`](Self::identity_rewrite) would change.
    pub(super) fn plan_text_noting_identity(
        &self,
        rt: &Runtime,
        text: &str,
    ) -> (planner::Plan, bool) {
        self.plan_text_with(rt, text, None)
    }

    /// [`plan_text_noting_identity`](Self::plan_text_noting_identity) with the plan
    /// cache entry of the session's last text query (`Session::plan_memo`): a text of
    /// its shape is planned from it directly.
    pub(super) fn plan_query_text(&mut self, rt: &Runtime, text: &str) -> (planner::Plan, bool) {
        let mut memo = std::mem::take(&mut self.plan_memo);
        let planned = self.plan_text_with(rt, text, Some(&mut memo));
        self.plan_memo = memo;
        planned
    }

    fn plan_text_with(
        &self,
        rt: &Runtime,
        text: &str,
        memo: Option<&mut planner::cache::Memo>,
    ) -> (planner::Plan, bool) {
        let cache = &self.shared.plan_cache;
        let (plan, no_identity) = cached_plan(cache, rt, &self.ctx, text, memo);
        if let [only] = plan.statements.as_slice() {
            if let Some(q) = &only.qualified_schema {
                if let Some(ks) = rt.vschema.keyspace(q) {
                    if DbContext::Keyspace(q.clone()) != self.ctx {
                        let key = planner::SchemaKey::Keyspace(q);
                        let schema = ks as &dyn ShardingSchema;
                        return cache.plan_noting_identity(text, schema, key, rt.generation);
                    }
                }
            }
        }
        (plan, no_identity)
    }

    /// `COM_STMT_PREPARE`.
    pub(super) async fn stmt_prepare(&mut self, payload: Bytes) -> Answered {
        self.statements += 1;
        let answer = self.stmt_prepare_inner(payload).await;
        self.release_diagnostics(self.statements);
        answer
    }

    async fn stmt_prepare_inner(&mut self, payload: Bytes) -> Answered {
        // A prepare that fails leaves no "last statement" (id 0xffffffff) behind, as on
        // MariaDB: an execute sent right after it, unanswered, gets 1243 instead of
        // running the statement prepared before.
        self.prepared.last = 0;
        let sql = payload.slice(1..);
        let text = planner::sql_text(&sql).into_owned();
        if crate::admin::parse_admin(&text).is_some()
            || crate::admin::vschema::parse(&text).is_some()
            || crate::ddl::parse_ddl_setting(&text).is_some()
            || super::kill::parse(&text).is_some()
        {
            let e = ps_error(
                crate::error::codes::UNSUPPORTED_PS,
                b"HY000",
                "This command is not supported in the prepared statement protocol: shardgate answers it itself; send it as a text query".into(),
            );
            return self.send_error(&e).await;
        }
        if let Some(e) = self.protected_database().or_else(|| self.unsafe_charset()) {
            return self.send_error(&e).await;
        }
        if self.prepared.map.len() >= MAX_PER_SESSION {
            let e = ps_error(
                1461,
                b"42000",
                format!(
                    "Can't create more than max_prepared_stmt_count statements (current value: {MAX_PER_SESSION}): shardgate's limit per session; close statements you no longer use"
                ),
            );
            return self.send_error(&e).await;
        }
        let texts: usize = self.prepared.map.values().map(|s| s.sql.len()).sum();
        if texts + sql.len() > TEXT_BUDGET_PACKETS * self.shared.config.max_packet_size {
            let e = ps_error(
                1461,
                b"42000",
                format!(
                    "Can't create more than max_prepared_stmt_count statements: the session's prepared statements hold {texts} bytes of SQL, and shardgate keeps at most {TEXT_BUDGET_PACKETS} x max_packet_size per session; close statements you no longer use"
                ),
            );
            return self.send_error(&e).await;
        }
        let markers = binary::placeholders(&text, !self.no_backslash_escapes());
        let rt = self.shared.runtime();
        let vs = &rt.vschema;
        // Checked again at each execute with the values; here what the text alone shows.
        let plan = self.plan_text(&rt, &binary::substitute(&text, &markers, &[]));
        if let (planner::Privilege::Admin(what), false) = (plan.privilege, self.admin) {
            let e = ProxyError::admin_statement(&self.user, what);
            return self.send_error(&e).await;
        }
        if !self.scope.is_unrestricted() {
            for stmt in &plan.statements {
                for db in planner::qualified_schemas(&text, stmt.span.clone()) {
                    if !self.scope.allows_database(vs, &db) {
                        let e = ProxyError::db_access_denied(&self.user, &db);
                        return self.send_error(&e).await;
                    }
                }
            }
        }
        let target = self.prepare_target(vs, &plan);
        let stateful = self.state_on(&target.cluster);
        let mut lease = match self
            .ready_lease(&rt, &target, false, std::time::Instant::now())
            .await
        {
            Ok(l) => l,
            Err(answered) => return answered,
        };
        let key = crate::backend::stmts::StmtKey {
            sql: sql.clone(),
            database: lease.conn_ref().database.clone(),
            state: lease.conn_ref().state_hash,
            owner: None,
        };
        let prepared = lease.conn().prepare_fresh(&key).await;
        self.put_back(target.clone(), lease, &Effects::default());
        let stmt = match prepared {
            Err(e) => {
                let e = ProxyError::lost_backend(&target.cluster, e);
                return self.fail(e, stateful).await;
            }
            Ok(Err(err)) => return self.send_collected(&err).await,
            Ok(Ok(s)) => s,
        };
        if usize::from(stmt.params) != markers.len() {
            let e = ProxyError::not_supported(format!(
                "this prepared statement: the server counts {} parameters, shardgate's lexer found {} `?` markers, so it cannot route its executes",
                stmt.params,
                markers.len()
            ));
            return self.send_error(&e).await;
        }
        let id = self.prepared.allocate();
        let mut answer = BytesMut::from(&stmt.answer[..]);
        if answer.len() < 9 {
            return self
                .send_error(&ProxyError::internal("short PREPARE_OK"))
                .await;
        }
        answer[5..9].copy_from_slice(&id.to_le_bytes());
        self.prepared.map.insert(
            id,
            ClientStmt {
                sql,
                text,
                markers,
                params: stmt.params,
                // The PREPARE_OK payload (after its 4-byte header): 0x00, the
                // statement id (4 bytes), the column count (2 bytes).
                columns: stmt
                    .answer
                    .get(9..11)
                    .map_or(0, |b| u16::from_le_bytes([b[0], b[1]])),
                types: None,
                long_data: HashMap::new(),
                long_bytes: 0,
                long_error: None,
                cursor: None,
            },
        );
        self.prepared.last = id;
        self.client.wbuf.extend_from_slice(&answer);
        match self.client.flush().await {
            Ok(()) => Answered::Done,
            Err(_) => Answered::Close,
        }
    }

    /// Where a statement is prepared to learn its metadata: the session's transaction,
    /// else where it routes with NULL parameters, else any shard of its keyspace.
    fn prepare_target(&self, vs: &VSchema, plan: &planner::Plan) -> Target {
        if let Some(t) = self.tx_target() {
            return t.clone();
        }
        let routed = match plan.statements.as_slice() {
            [only] => match router::route(vs, &self.ctx, only) {
                Ok(d @ (Dispatch::Single(_) | Dispatch::AnyShard { .. })) => {
                    self.one_target(vs, d, only)
                }
                Ok(Dispatch::SplitInsert(parts)) => parts.into_iter().next().map(|p| p.0),
                Ok(Dispatch::Broadcast(ts)) => ts.into_iter().next(),
                Err(_) => None,
            },
            _ => None,
        };
        routed.unwrap_or_else(|| self.default_target(vs))
    }

    /// `COM_STMT_SEND_LONG_DATA` (no answer): kept for the statement's next execute.
    pub(super) fn stmt_long_data(&mut self, payload: &[u8]) {
        let limit = self.shared.config.max_packet_size;
        let (Some(id), Some(param)) = (
            binary::stmt_id(payload),
            payload.get(5..7).map(|b| u16::from_le_bytes([b[0], b[1]])),
        ) else {
            return;
        };
        let id = self.prepared.resolve(id);
        // One bound for the whole session: every statement may hold some.
        let held: usize = self.prepared.map.values().map(|s| s.long_bytes).sum();
        let Some(st) = self.prepared.map.get_mut(&id) else {
            return;
        };
        if param >= st.params {
            st.long_error = Some(format!(
                "long data for parameter {param} of a statement with {} parameters",
                st.params
            ));
            return;
        }
        let data = &payload[7..];
        if held + data.len() > limit {
            st.long_error = Some(format!(
                "Parameter of prepared statement which is set through mysql_send_long_data() is longer than 'max_allowed_packet' bytes: shardgate keeps at most {limit} bytes of long data per session (max_packet_size)"
            ));
            st.long_data.clear();
            st.long_bytes = 0;
            return;
        }
        st.long_bytes += data.len();
        st.long_data
            .entry(param)
            .or_default()
            .extend_from_slice(data);
    }

    /// `COM_STMT_RESET`: drops the statement's long data and closes its cursor.
    pub(super) async fn stmt_reset(&mut self, payload: &[u8]) -> Answered {
        let id = self.prepared.id_in(payload);
        let Some(st) = self.prepared.map.get_mut(&id) else {
            return self
                .send_error(&unknown_stmt(id, "mysqld_stmt_reset"))
                .await;
        };
        st.long_data.clear();
        st.long_bytes = 0;
        st.long_error = None;
        self.close_cursor(id, false).await;
        self.send_ok(crate::protocol::wire::OkInfo::default()).await
    }

    /// `COM_STMT_CLOSE` (no answer).
    pub(super) async fn stmt_close(&mut self, payload: &[u8]) {
        let id = self.prepared.id_in(payload);
        if self.prepared.map.contains_key(&id) {
            self.close_cursor(id, true).await;
            self.prepared.map.remove(&id);
            if self.prepared.last == id {
                self.prepared.last = 0;
            }
        }
    }

    /// Closes statement `id`'s cursor, if it has one, on its backend connection
    /// (`COM_STMT_RESET` there; with `forget`, the backend statement that held it is
    /// closed too). The connection goes back to the pool once no cursor holds it.
    pub(super) async fn close_cursor(&mut self, id: u32, forget: bool) {
        let Some(st) = self.prepared.map.get_mut(&id) else {
            return;
        };
        let Some(cursor) = st.cursor.take() else {
            return;
        };
        let others = self
            .prepared
            .map
            .values()
            .any(|s| s.cursor.as_ref().is_some_and(|c| c.thread == cursor.thread));
        let Some(i) = self
            .held
            .iter()
            .position(|h| h.lease.conn_ref().thread_id == cursor.thread)
        else {
            return;
        };
        let held = self.held.swap_remove(i);
        let (target, mut lease) = (held.target, held.lease);
        let conn = lease.conn();
        let key = cursor.key;
        if let Some(s) = conn.stmts.get(&key).cloned() {
            let mut p = vec![crate::protocol::command::STMT_RESET];
            p.extend_from_slice(&s.id.to_le_bytes());
            let reset = conn
                .exec(&p, crate::protocol::relay::ResponseKind::Query)
                .await;
            if reset.is_ok() && forget {
                let _ = conn.close_stmt(&key).await;
            }
        }
        let fx = if others {
            Effects::default()
        } else {
            Effects {
                clears: crate::backend::Reserve::CURSOR,
                ..Effects::default()
            }
        };
        self.put_back(target, lease, &fx);
    }
}

/// `planner::plan(text, schema)` through the plan cache, where `schema` is the session's
/// keyspace (unsharded without one), keyed on it and the snapshot's generation.
fn cached_plan(
    cache: &planner::PlanCache,
    rt: &Runtime,
    ctx: &DbContext,
    text: &str,
    memo: Option<&mut planner::cache::Memo>,
) -> (planner::Plan, bool) {
    // A text of the memo's shape needs no look at the vschema: its entry's key names
    // the keyspace and the generation it was planned under.
    let key = match ctx {
        DbContext::Keyspace(k) => planner::SchemaKey::Keyspace(k),
        _ => planner::SchemaKey::Unsharded,
    };
    if let Some(planned) = memo
        .as_deref()
        .and_then(|m| cache.remembered(m, text, key, rt.generation))
    {
        return planned;
    }
    let unsharded = (
        &Unsharded as &dyn ShardingSchema,
        planner::SchemaKey::Unsharded,
    );
    let (schema, key) = match key {
        planner::SchemaKey::Keyspace(k) => match rt.vschema.keyspace(k) {
            Some(ks) => (ks as &dyn ShardingSchema, key),
            None => unsharded,
        },
        planner::SchemaKey::Unsharded => unsharded,
    };
    match memo {
        Some(memo) => cache.plan_remembering(memo, text, schema, key, rt.generation),
        None => cache.plan_noting_identity(text, schema, key, rt.generation),
    }
}
