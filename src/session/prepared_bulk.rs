//! `COM_STMT_BULK_EXECUTE` (MariaDB's array binding: one statement, many rows of
//! parameters, one answer), offered to clients with the extended capability
//! `MARIADB_CLIENT_STMT_BULK_OPERATIONS`.
//!
//! Each row is planned and checked as an execute with its values would be (the values
//! substituted into the statement's text, the user's scope checked on every row). Then:
//! - every row goes to one target: the bulk is bound on that backend connection like an
//!   execute (prepared lazily, statement id rewritten, types always sent) and the
//!   backend's answer is relayed as it is, per-row results (`SEND_UNIT_RESULTS`)
//!   included;
//! - the rows go to several shards (outside a transaction only): one bulk per shard,
//!   holding that shard's rows in their order, the shards in the order their first row
//!   came, one after another. The client gets one OK (affected rows summed, the first
//!   shard's last insert id) or the first shard's error, naming the shards that already
//!   applied their rows: those stay written, as MariaDB's own bulk does not roll back
//!   the rows before a failing one without a transaction. Per-row results cannot be
//!   merged that way and are refused.
//!
//! Bounds: the payload is at most `max_packet_size`; shardgate keeps 8 bytes per run
//! of consecutive rows for one shard (where it starts, which shard: one entry when all
//! rows go to one shard), and each shard's rows are copied once, into that shard's
//! command.

use std::ops::Range;

use bytes::Bytes;

use super::leases::SessionCursor;
use super::prepared::{ps_error, unknown_stmt};
use super::prepared_exec::{error_response, excerpt};
use super::state::Outgoing;
use super::{Answered, Session};
use crate::backend::stmts::StmtKey;
use crate::backend::{BackendConn, BackendError, Collected};
use crate::engine::{fanout, Cursor, Failure};
use crate::error::ProxyError;
use crate::planner::{Privilege, StatementKind, StatementPlan};
use crate::protocol::binary::{self, BULK_SEND_TYPES_TO_SERVER, BULK_SEND_UNIT_RESULTS};
use crate::protocol::relay::ResponseKind;
use crate::protocol::{command, status};
use crate::router::{self, Dispatch, Target};
use crate::shared::Runtime;

/// Shards one bulk may be split over (a row's target is kept as a `u16`).
const MAX_TARGETS: usize = u16::MAX as usize;

/// A bulk execute ready for a backend connection.
pub(super) struct BoundBulk {
    /// The statement's text (the cache key with the connection's database).
    pub sql: Bytes,
    /// Parameters.
    pub params: u16,
    /// The client's flags, without `SEND_TYPES_TO_SERVER` (always added).
    pub flags: u16,
    /// Parameter types (2 bytes a parameter).
    pub types: Vec<u8>,
    /// The client's request.
    pub request: Bytes,
    /// The parts of `request` that hold this backend's rows, in order.
    pub rows: Vec<Range<usize>>,
}

/// Prepares `b`'s statement on `conn` if needed and returns the bulk command with the
/// backend's statement id and the types. `Ok(Err(..))`: an ERR to relay.
pub(super) async fn bind(
    conn: &mut BackendConn,
    b: BoundBulk,
) -> Result<Result<Bytes, Collected>, BackendError> {
    let key = StmtKey {
        sql: b.sql,
        database: conn.database.clone(),
        state: conn.state_hash,
        owner: None,
    };
    let s = match conn.prepared(&key).await? {
        Ok(s) => s,
        Err(err) => return Ok(Err(err)),
    };
    if s.params != b.params {
        let e = ps_error(
            1210,
            b"HY000",
            format!(
                "Incorrect arguments to mysqld_stmt_bulk_execute: the statement has {} parameters on this shard but had {} when it was prepared (the table changed?)",
                s.params, b.params
            ),
        );
        return Ok(Err(error_response(&e)));
    }
    let rows: usize = b.rows.iter().map(|r| r.len()).sum();
    let mut p = Vec::with_capacity(7 + b.types.len() + rows);
    p.push(command::STMT_BULK_EXECUTE);
    p.extend_from_slice(&s.id.to_le_bytes());
    p.extend_from_slice(&(b.flags | BULK_SEND_TYPES_TO_SERVER).to_le_bytes());
    p.extend_from_slice(&b.types);
    for r in &b.rows {
        match b.request.get(r.clone()) {
            Some(part) => p.extend_from_slice(part),
            None => {
                let e = ProxyError::internal("bulk row outside its request");
                return Ok(Err(error_response(&e)));
            }
        }
    }
    Ok(Ok(Bytes::from(p)))
}

/// 1210 (HY000) for a bulk request shardgate cannot read.
fn incorrect(why: impl std::fmt::Display) -> ProxyError {
    ps_error(
        1210,
        b"HY000",
        format!("Incorrect arguments to mysqld_stmt_bulk_execute: {why}"),
    )
}

/// The ranges of `request` holding the rows routed to target `which`, adjacent rows
/// merged. `starts` are where each run of rows for one target begins (with that
/// target), `end` where the last row ends.
fn rows_of(starts: &[(u32, u16)], end: usize, which: u16) -> Vec<Range<usize>> {
    let mut out: Vec<Range<usize>> = Vec::new();
    for (i, &(start, t)) in starts.iter().enumerate() {
        if t != which {
            continue;
        }
        let start = start as usize;
        let stop = starts.get(i + 1).map_or(end, |&(s, _)| s as usize);
        match out.last_mut() {
            Some(last) if last.end == start => last.end = stop,
            _ => out.push(start..stop),
        }
    }
    out
}

impl Session {
    /// `COM_STMT_BULK_EXECUTE`.
    pub(super) async fn stmt_bulk_execute(&mut self, payload: Bytes) -> Answered {
        self.statements += 1;
        let answer = self.stmt_bulk_inner(payload).await;
        self.end_statement();
        answer
    }

    async fn stmt_bulk_inner(&mut self, payload: Bytes) -> Answered {
        let id = self.prepared.id_in(&payload);
        let nbe = self.backend_flags & status::NO_BACKSLASH_ESCAPES != 0;
        let Some(st) = self.prepared.map.get_mut(&id) else {
            return self
                .send_error(&unknown_stmt(id, "mysqld_stmt_bulk_execute"))
                .await;
        };
        // Long data has no place in a bulk (each row carries its values).
        st.long_data.clear();
        st.long_bytes = 0;
        st.long_error = None;
        let head = match binary::parse_bulk(&payload, usize::from(st.params), st.types.as_deref()) {
            Ok(h) => h,
            Err(m) => return self.send_error(&incorrect(m.0)).await,
        };
        let types = match &head.types {
            Some(r) => payload[r.clone()].to_vec(),
            None => st.types.clone().unwrap_or_default(),
        };
        st.types = Some(types.clone());
        let (sql, text, markers, params) = (
            st.sql.clone(),
            st.text.clone(),
            st.markers.clone(),
            st.params,
        );
        self.handle.set_statement(Some(sql.clone()), self.clock);

        let rt = self.shared.runtime();
        let mut targets: Vec<Target> = Vec::new();
        // Where each run of consecutive rows for one target starts, and that target.
        let mut runs: Vec<(u32, u16)> = Vec::new();
        let mut row_no = 0usize;
        let mut first: Option<StatementPlan> = None;
        let mut literals = Vec::with_capacity(usize::from(params));
        let mut at = head.rows_at;
        while at < payload.len() {
            let start = at;
            row_no += 1;
            if let Err(m) = binary::read_bulk_row(&payload, &mut at, &types, nbe, &mut literals) {
                let e = incorrect(format!("row {row_no}: {}", m.0));
                return self.send_error(&e).await;
            }
            let row_text = binary::substitute(&text, &markers, &literals);
            let (target, stmt) = match self.route_row(&rt, id, &row_text) {
                Ok(r) => r,
                Err(mut e) => {
                    e.message = format!("row {row_no} of the bulk: {}", e.message);
                    return self.send_error(&e).await;
                }
            };
            let which = match targets.iter().position(|t| *t == target) {
                Some(i) => i,
                None if targets.len() < MAX_TARGETS => {
                    targets.push(target);
                    targets.len() - 1
                }
                None => {
                    let e = ProxyError::not_supported("a bulk execute over that many shards");
                    return self.send_error(&e).await;
                }
            };
            let Ok(start) = u32::try_from(start) else {
                return self.send_error(&incorrect("request too long")).await;
            };
            if runs.last().map(|r| r.1) != Some(which as u16) {
                runs.push((start, which as u16));
            }
            first.get_or_insert(stmt);
        }
        let Some(stmt) = first else {
            return self.send_error(&incorrect("no rows")).await;
        };
        let bound = |rows: Vec<Range<usize>>| BoundBulk {
            sql: sql.clone(),
            params,
            flags: head.flags & !BULK_SEND_TYPES_TO_SERVER,
            types: types.clone(),
            request: payload.clone(),
            rows,
        };
        if targets.len() == 1 {
            let target = targets.swap_remove(0);
            let b = bound(std::iter::once(head.rows_at..payload.len()).collect());
            return self
                .run_outgoing(
                    &rt,
                    target,
                    Outgoing::Bulk(Box::new(b)),
                    ResponseKind::Query,
                    &stmt,
                )
                .await;
        }
        let names: Vec<&str> = targets.iter().map(|t| t.label.as_str()).collect();
        let returns_rows = self.prepared.map.get(&id).is_some_and(|s| s.columns > 0);
        if returns_rows {
            let e = ProxyError::not_supported(format!(
                "a bulk execute of a statement that returns rows (RETURNING) whose rows go to \
                 several shards ({}): their result sets cannot be merged; send each shard's \
                 rows in a bulk of its own",
                names.join(", ")
            ));
            return self.send_error(&e).await;
        }
        if head.flags & BULK_SEND_UNIT_RESULTS != 0 {
            let e = ProxyError::not_supported(format!(
                "per-row results (SEND_UNIT_RESULTS) of a bulk execute whose rows go to several shards ({}): \
                 send each shard's rows in a bulk of its own, or leave the flag off",
                names.join(", ")
            ));
            return self.send_error(&e).await;
        }
        if self.in_transaction() {
            let e = ProxyError::unroutable(format!(
                "shardgate: this bulk execute's rows span shards ({}), which a transaction cannot do yet; \
                 send each shard's rows separately",
                names.join(", ")
            ));
            return self.send_error(&e).await;
        }
        let parts: Vec<(Target, BoundBulk)> = targets
            .into_iter()
            .enumerate()
            .map(|(i, t)| (t, bound(rows_of(&runs, payload.len(), i as u16))))
            .collect();
        drop(runs);
        self.bulk_over_shards(&rt, parts).await
    }

    /// Plans one row's statement and picks its one target, with the checks an execute
    /// makes (admin statements, the user's scope, the transaction's shard).
    fn route_row(
        &self,
        rt: &Runtime,
        id: u32,
        text: &str,
    ) -> Result<(Target, StatementPlan), ProxyError> {
        let vs = &rt.vschema;
        let mut plan = self.plan_text(rt, text);
        if let (Privilege::Admin(what), false) = (plan.privilege, self.admin) {
            return Err(ProxyError::admin_statement(&self.user, what));
        }
        if !self.scope.is_unrestricted() {
            if let Some(e) = self.out_of_scope(vs, &plan, text) {
                return Err(e);
            }
        }
        if plan.statements.len() != 1 {
            return Err(ProxyError::not_supported(format!(
                "prepared statement {id} ({}): it holds {} statements",
                excerpt(text),
                plan.statements.len()
            )));
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
            return Err(ProxyError::not_supported(format!(
                "a bulk execute of prepared statement {id} ({}): it changes the session or the schema; execute it once",
                excerpt(text)
            )));
        }
        let keyspace = || {
            router::statement_keyspace(vs, &self.ctx, &stmt)
                .map(|k| k.name.clone())
                .unwrap_or_default()
        };
        let target = match router::route(vs, &self.ctx, &stmt) {
            Ok(d @ (Dispatch::Single(_) | Dispatch::AnyShard { .. })) => self
                .one_target(vs, d, &stmt)
                .ok_or_else(|| ProxyError::internal("no target"))?,
            Ok(Dispatch::SplitInsert(_) | Dispatch::Broadcast(_)) => {
                return Err(ProxyError::not_supported(format!(
                    "prepared statement {id} ({}) in keyspace '{}': with these values one row reaches several shards, \
                     which a prepared statement cannot do; send it as a text query",
                    excerpt(text),
                    keyspace()
                )));
            }
            Err(mut e) => {
                e.message = format!(
                    "prepared statement {id} ({}) in keyspace '{}': {}",
                    excerpt(text),
                    keyspace(),
                    e.message
                );
                return Err(e);
            }
        };
        self.check_transaction(&target)?;
        Ok((target, stmt))
    }

    /// One bulk per shard, one after another, stopping at the first failure; one OK
    /// (or that failure) to the client.
    async fn bulk_over_shards(
        &mut self,
        rt: &Runtime,
        parts: Vec<(Target, BoundBulk)>,
    ) -> Answered {
        let deadline = self.shared.config.pool.query_timeout;
        let mut out = fanout::Fanout {
            total: Default::default(),
            applied: Vec::new(),
            failure: None,
            not_attempted: Vec::new(),
        };
        let mut cursor = SessionCursor { session: self, rt };
        for (target, b) in parts {
            if out.failure.is_some() {
                out.not_attempted.push(target.label.into());
                continue;
            }
            let mut lease = match cursor.ready(&target).await {
                Ok(l) => l,
                Err(f) => {
                    out.failure = Some(fanout::ShardFailure { target, failure: f });
                    continue;
                }
            };
            // KILL QUERY from another session reaches this part; the cluster's
            // latency and failure window count it.
            let handle = cursor.session.handle.clone();
            handle.statement_started(&target.cluster, lease.conn_ref().thread_id);
            let started = std::time::Instant::now();
            let run = run_part(lease.conn(), &target, b);
            let result = match deadline {
                None => run.await,
                Some(limit) => match crate::timer::timeout(limit, run).await {
                    Ok(r) => r,
                    Err(_) => {
                        lease.conn().broken = true;
                        Err(Failure::Proxy(ProxyError::query_timeout(
                            &target.cluster,
                            limit.as_secs_f64(),
                        )))
                    }
                },
            };
            handle.statement_ended().await;
            let proxy_error = match &result {
                Err(Failure::Proxy(e)) => Some(e),
                _ => None,
            };
            cursor.session.record(rt, &target, started, proxy_error);
            cursor.done(target.clone(), lease);
            match result {
                Ok(ok) => {
                    out.total.affected_rows += ok.affected_rows;
                    if out.total.last_insert_id == 0 {
                        out.total.last_insert_id = ok.last_insert_id;
                    }
                    out.total.warnings = out.total.warnings.saturating_add(ok.warnings);
                    out.applied.push(target.label.into());
                }
                Err(failure) => out.failure = Some(fanout::ShardFailure { target, failure }),
            }
        }
        match out.err_payload() {
            Some(err) => {
                if let Some(f) = &out.failure {
                    let (code, message) = match &f.failure {
                        Failure::Backend(c) => {
                            c.err().map_or((0, String::new()), |e| (e.code, e.message))
                        }
                        Failure::Proxy(e) => (e.code, e.message.clone()),
                    };
                    self.note_error(code, &message);
                }
                self.send_raw(&err).await
            }
            None => {
                if out.total.last_insert_id != 0 {
                    self.last_insert_id = out.total.last_insert_id;
                }
                self.send_ok(out.total).await
            }
        }
    }
}

/// Runs one shard's bulk on its connection (in the shard's database): its OK, or why
/// not.
async fn run_part(
    conn: &mut BackendConn,
    target: &Target,
    b: BoundBulk,
) -> Result<crate::protocol::wire::OkInfo, Failure> {
    let lost = |e: BackendError| Failure::Proxy(ProxyError::lost_backend(&target.cluster, e));
    if let Some(db) = &target.database {
        if conn.database.as_deref() != Some(db) {
            match conn.init_db(db).await {
                Ok(Ok(())) => {}
                Ok(Err(c)) => return Err(Failure::Backend(c)),
                Err(e) => return Err(lost(e)),
            }
        }
    }
    let p = match bind(conn, b).await {
        Ok(Ok(p)) => p,
        Ok(Err(c)) => return Err(Failure::Backend(c)),
        Err(e) => return Err(lost(e)),
    };
    match conn.exec(&p, ResponseKind::Query).await {
        Ok(c) if c.outcome.error => Err(Failure::Backend(c)),
        Ok(c) => Ok(c.outcome.ok.unwrap_or_default()),
        Err(e) => Err(lost(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::rows_of;

    #[test]
    fn each_target_gets_its_rows_merged_in_order() {
        let rows = [(10, 0), (14, 0), (20, 1), (25, 0), (30, 1)];
        assert_eq!(rows_of(&rows, 40, 0), [10..20, 25..30]);
        assert_eq!(rows_of(&rows, 40, 1), [20..25, 30..40]);
        assert!(rows_of(&rows, 40, 2).is_empty());
    }
}
