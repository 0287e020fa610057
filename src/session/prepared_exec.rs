//! `COM_STMT_EXECUTE` and `COM_STMT_FETCH`: an execute is planned as the text
//! statement with its bound values substituted (planning only: the backend still gets
//! the binary execute), checked against the user's scope with those values, and sent to
//! the one backend it routes to, where the statement is prepared first if that
//! connection has not prepared it yet. Statements that change the session (`BEGIN`,
//! `COMMIT`, `SET`, `USE`, DDL) run as the text statement, so the session keeps track
//! of them as it does for text queries.

use bytes::Bytes;

use super::prepared::{ps_error, unknown_stmt};
use super::state::Outgoing;
use super::{Answered, Session};
use crate::backend::stmts::StmtKey;
use crate::backend::{BackendConn, BackendError, Collected, Reserve};
use crate::error::ProxyError;
use crate::planner::{Effects, StatementKind};
use crate::protocol::binary::{self, ExecuteRequest};
use crate::protocol::relay::{Outcome, ResponseKind};
use crate::protocol::{command, status};
use crate::router::{self, Dispatch};

/// An execute ready for a backend connection: what to prepare there and how to
/// rewrite the client's request.
pub(super) struct BoundExecute {
    /// The statement's text (the cache key with the connection's database).
    pub sql: Bytes,
    /// The cursor's owner, for an execute that opens one.
    pub owner: Option<(u32, u32)>,
    /// Parameters.
    pub params: u16,
    /// The client's request.
    pub request: Bytes,
    /// Where its parts are.
    pub layout: ExecuteRequest,
    /// The types to send when the request has none (2 bytes a parameter).
    pub types: Vec<u8>,
    /// Long data to send first, by parameter.
    pub long_data: Vec<(u16, Vec<u8>)>,
}

/// Prepares `x`'s statement on `conn` if needed, sends its long data, and returns the
/// execute with the backend's statement id (and the parameter types, always: this
/// connection may not have seen them). `Ok(Err(..))`: an ERR to relay.
pub(super) async fn bind(
    conn: &mut BackendConn,
    x: BoundExecute,
) -> Result<Result<Bytes, Collected>, BackendError> {
    let key = StmtKey {
        sql: x.sql,
        database: conn.database.clone(),
        state: conn.state_hash,
        owner: x.owner,
    };
    let s = match conn.prepared(&key).await? {
        Ok(s) => s,
        Err(err) => return Ok(Err(err)),
    };
    if s.params != x.params {
        let e = ps_error(
            1210,
            b"HY000",
            format!(
                "Incorrect arguments to mysqld_stmt_execute: the statement has {} parameters on this shard but had {} when it was prepared (the table changed?)",
                s.params, x.params
            ),
        );
        return Ok(Err(error_response(&e)));
    }
    for (param, data) in &x.long_data {
        conn.send_long_data(s.id, *param, data).await?;
    }
    let r = &x.request;
    let l = &x.layout;
    let mut p = Vec::with_capacity(r.len() + x.types.len() + 1);
    p.push(command::STMT_EXECUTE);
    p.extend_from_slice(&s.id.to_le_bytes());
    p.extend_from_slice(&r[5..10]);
    if x.params > 0 {
        p.extend_from_slice(&r[l.null_bitmap.clone()]);
        p.push(1);
        match &l.types {
            Some(t) => p.extend_from_slice(&r[t.clone()]),
            None => p.extend_from_slice(&x.types),
        }
        p.extend_from_slice(&r[l.values_at..]);
    }
    Ok(Ok(Bytes::from(p)))
}

/// shardgate's own error as a response to relay.
pub(super) fn error_response(e: &ProxyError) -> Collected {
    let mut bytes = bytes::BytesMut::new();
    crate::protocol::packet::put_packet(
        &mut bytes,
        1,
        &crate::protocol::wire::proxy_err_payload(e),
    );
    Collected {
        bytes,
        outcome: Outcome {
            error: true,
            ..Outcome::default()
        },
    }
}

/// Short text of a statement for messages.
pub(super) fn excerpt(sql: &str) -> String {
    let one_line: String = sql.split_whitespace().collect::<Vec<_>>().join(" ");
    match one_line.char_indices().nth(80) {
        Some((i, _)) => format!("{}...", &one_line[..i]),
        None => one_line,
    }
}

impl Session {
    /// `COM_STMT_EXECUTE`.
    pub(super) async fn stmt_execute(&mut self, payload: Bytes) -> Answered {
        self.statements += 1;
        let answer = self.stmt_execute_inner(payload).await;
        self.end_statement();
        answer
    }

    async fn stmt_execute_inner(&mut self, payload: Bytes) -> Answered {
        let id = self.prepared.id_in(&payload);
        let nbe = self.backend_flags & status::NO_BACKSLASH_ESCAPES != 0;
        let Some(st) = self.prepared.map.get_mut(&id) else {
            return self
                .send_error(&unknown_stmt(id, "mysqld_stmt_execute"))
                .await;
        };
        if let Some(why) = st.long_error.take() {
            st.long_data.clear();
            st.long_bytes = 0;
            return self.send_error(&ps_error(1153, b"08S01", why)).await;
        }
        let long: Vec<bool> = (0..st.params)
            .map(|i| st.long_data.contains_key(&i))
            .collect();
        let layout = match binary::parse_execute(
            &payload,
            usize::from(st.params),
            st.types.as_deref(),
            &long,
            nbe,
        ) {
            Ok(r) => r,
            Err(m) => {
                let e = ps_error(
                    1210,
                    b"HY000",
                    format!("Incorrect arguments to mysqld_stmt_execute: {}", m.0),
                );
                return self.send_error(&e).await;
            }
        };
        if let Some(t) = &layout.types {
            st.types = Some(payload[t.clone()].to_vec());
        }
        let literals: Vec<Option<String>> = layout
            .literals
            .iter()
            .enumerate()
            .map(|(i, l)| {
                l.clone().or_else(|| {
                    let i = u16::try_from(i).ok()?;
                    st.long_data.get(&i).map(|d| binary::string_literal(d, nbe))
                })
            })
            .collect();
        let text = binary::substitute(&st.text, &st.markers, &literals);
        let long_data: Vec<(u16, Vec<u8>)> = st.long_data.drain().collect();
        st.long_bytes = 0;
        let bound = BoundExecute {
            sql: st.sql.clone(),
            owner: None,
            params: st.params,
            request: payload.clone(),
            layout,
            types: st.types.clone().unwrap_or_default(),
            long_data,
        };
        self.handle
            .set_statement(Some(Bytes::from(text.clone())), self.clock);
        self.execute_text(id, text, bound).await
    }

    /// Plans, checks and runs an execute whose values are substituted into `text`.
    async fn execute_text(&mut self, id: u32, text: String, mut bound: BoundExecute) -> Answered {
        let rt = self.shared.runtime();
        let vs = &rt.vschema;
        let mut plan = self.plan_text(&rt, &text);
        if let (crate::planner::Privilege::Admin(what), false) = (plan.privilege, self.admin) {
            let e = ProxyError::admin_statement(&self.user, what);
            return self.send_error(&e).await;
        }
        if !self.scope.is_unrestricted() {
            if let Some(e) = self.out_of_scope(vs, &plan, &text) {
                return self.send_error(&e).await;
            }
        }
        if !plan.statements.iter().any(|s| s.effects.reads_diagnostics) {
            self.release_diagnostics(self.statements);
        }
        if plan.statements.len() != 1 {
            let e = ProxyError::not_supported(format!(
                "prepared statement {id} ({}): it holds {} statements",
                excerpt(&text),
                plan.statements.len()
            ));
            return self.send_error(&e).await;
        }
        let stmt = plan.statements.swap_remove(0);
        if matches!(
            stmt.kind,
            StatementKind::Use(_)
                | StatementKind::Begin
                | StatementKind::Commit
                | StatementKind::Rollback
                | StatementKind::SetAutocommit(_)
                | StatementKind::SetSession
                | StatementKind::SetTransaction
                | StatementKind::Ddl(_)
        ) {
            // The session keeps these in step itself: run the text statement (its
            // answer is an OK or ERR, the same in both protocols).
            let mut q = Vec::with_capacity(text.len() + 1);
            q.push(command::QUERY);
            q.extend_from_slice(text.as_bytes());
            return self.statement(&rt, stmt, Bytes::from(q), &text).await;
        }
        let dispatch = router::route(vs, &self.ctx, &stmt);
        let keyspace = router::statement_keyspace(vs, &self.ctx, &stmt)
            .map(|k| k.name.clone())
            .unwrap_or_default();
        let target = match dispatch {
            Ok(d @ (Dispatch::Single(_) | Dispatch::AnyShard { .. })) => {
                match self.one_target(vs, d, &stmt) {
                    Some(t) => t,
                    None => return self.send_error(&ProxyError::internal("no target")).await,
                }
            }
            Ok(Dispatch::SplitInsert(_) | Dispatch::Broadcast(_)) => {
                let e = ProxyError::not_supported(format!(
                    "prepared statement {id} ({}) in keyspace '{keyspace}': with these values it reaches several shards, \
                     which a prepared statement cannot do; send it as a text query, or one execute per shard",
                    excerpt(&text)
                ));
                return self.send_error(&e).await;
            }
            Err(mut e) => {
                e.message = format!(
                    "prepared statement {id} ({}) in keyspace '{keyspace}': {}",
                    excerpt(&text),
                    e.message
                );
                return self.send_error(&e).await;
            }
        };
        if let Err(e) = self.check_transaction(&target) {
            return self.send_error(&e).await;
        }
        let target = if self.replica_reads {
            self.read_target(&rt, &stmt, text.as_bytes(), target)
        } else {
            target
        };
        let cursor = bound.layout.flags & binary::CURSOR_TYPE_READ_ONLY != 0;
        if cursor {
            // A new execute closes the statement's previous cursor, as on the server.
            self.close_cursor(id, false).await;
            bound.owner = Some((self.id, id));
        }
        let answer = self
            .run_outgoing(
                &rt,
                target.clone(),
                Outgoing::Execute(Box::new(bound)),
                ResponseKind::Query,
                &stmt,
            )
            .await;
        if cursor {
            let open = self.held.iter().find_map(|h| {
                let c = h.lease.conn_ref();
                (h.target == target
                    && c.reserve.contains(Reserve::CURSOR)
                    && c.status & status::CURSOR_EXISTS != 0)
                    .then(|| (c.thread_id, c.database.clone(), c.state_hash))
            });
            if let (Some((thread, database, state)), Some(st)) =
                (open, self.prepared.map.get_mut(&id))
            {
                // Keyed as the execute bound it on that connection just now.
                let key = StmtKey {
                    sql: st.sql.clone(),
                    database,
                    state,
                    owner: Some((self.id, id)),
                };
                st.cursor = Some(super::prepared::OpenCursor { thread, key });
            }
        }
        answer
    }

    /// `COM_STMT_FETCH`: rows of the statement's cursor, from the connection it holds.
    pub(super) async fn stmt_fetch(&mut self, payload: Bytes) -> Answered {
        self.statements += 1;
        let id = self.prepared.id_in(&payload);
        let Some(st) = self.prepared.map.get(&id) else {
            return self
                .send_error(&unknown_stmt(id, "mysqld_stmt_fetch"))
                .await;
        };
        let no_cursor = || {
            ps_error(
                1421,
                b"HY000",
                format!("The statement ({id}) has no open cursor."),
            )
        };
        let (Some(cursor), Some(rows)) = (st.cursor.clone(), payload.get(5..9)) else {
            return self.send_error(&no_cursor()).await;
        };
        let Some(i) = self
            .held
            .iter()
            .position(|h| h.lease.conn_ref().thread_id == cursor.thread)
        else {
            return self.send_error(&no_cursor()).await;
        };
        let held = self.held.swap_remove(i);
        let (target, mut lease) = (held.target, held.lease);
        let conn = lease.conn();
        let key = cursor.key;
        let Some(backend_id) = conn.stmts.get(&key).map(|s| s.id) else {
            self.put_back(target, lease, &Effects::default());
            return self.send_error(&no_cursor()).await;
        };
        let mut p = vec![command::STMT_FETCH];
        p.extend_from_slice(&backend_id.to_le_bytes());
        p.extend_from_slice(rows);
        let stateful = self.state_on(&target.cluster).union(Reserve::CURSOR);
        match conn
            .relay(&p, ResponseKind::Fetch, &mut self.client.io)
            .await
        {
            Ok(outcome) => {
                let st = outcome.status.unwrap_or(0);
                let done = outcome.error || st & status::LAST_ROW_SENT != 0;
                let mut fx = Effects::default();
                if done {
                    if let Some(s) = self.prepared.map.get_mut(&id) {
                        s.cursor = None;
                    }
                    let others = self
                        .prepared
                        .map
                        .values()
                        .any(|s| s.cursor.as_ref().is_some_and(|c| c.thread == cursor.thread));
                    if !others {
                        fx.clears = Reserve::CURSOR;
                    }
                }
                self.put_back(target, lease, &fx);
                Answered::Done
            }
            Err(e) => {
                if let Some(s) = self.prepared.map.get_mut(&id) {
                    s.cursor = None;
                }
                self.relay_failed(target, e, stateful).await
            }
        }
    }
}
