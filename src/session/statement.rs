//! One COM_QUERY: text to plan, plan to dispatch. Transactions, `USE` and `SET` are
//! kept here in step with the backends; statements for several shards are in
//! `shards`.

use bytes::Bytes;

use super::{any_statement, Answered, Session};
use crate::error::ProxyError;
use crate::name::Name;
use crate::planner::{self, Effects, StatementKind, StatementPlan};
use crate::protocol::command;
use crate::protocol::relay::ResponseKind;
use crate::protocol::wire::OkInfo;
use crate::router::{self, DbContext, Dispatch, Target};
use crate::shared::Runtime;
use crate::vschema::VSchema;

impl Session {
    /// Before a COM_QUERY: counted, and shown in the registry. The command loop calls
    /// this, [`query`](Self::query) and [`end_statement`](Self::end_statement) itself
    /// (no wrapping state machine per statement).
    pub(super) fn begin_query(&mut self, payload: &Bytes) {
        self.statements += 1;
        self.handle
            .set_statement(Some(payload.slice(1..)), self.clock);
    }

    /// After a statement (text or prepared): the registry no longer shows it, and
    /// connections kept for a question about an earlier statement, and not used by
    /// this one, go back to the pool.
    pub(super) fn end_statement(&mut self) {
        // No cluster answered last (shardgate's own statement, an error it gave): the
        // clock says when the command arrived, not when it ended.
        if !self.clock_ends_work {
            self.read_clock(true);
        }
        self.handle.set_statement(None, self.clock);
        self.release_diagnostics(self.statements);
    }

    pub(super) async fn query(&mut self, payload: Bytes) -> Answered {
        let rt = self.shared.runtime();
        let vs = &rt.vschema;
        let sql_bytes = payload.slice(1..);
        let text = planner::sql_text(&sql_bytes);
        // shardgate's own statements start with SHOW, SET, ALTER, PIN, ...: a query
        // that starts with a DML verb is none of them and skips their parsers.
        if !crate::admin::starts_with_dml(&text) {
            if let Some(admin) = crate::admin::parse_admin(&text) {
                return Box::pin(self.admin_statement(vs, admin)).await;
            }
            if let Some(v) = crate::admin::vschema::parse(&text) {
                return Box::pin(self.vschema_statement(v)).await;
            }
            if let Some(setting) = crate::ddl::parse_ddl_setting(&text) {
                return Box::pin(self.ddl_setting(setting)).await;
            }
        }
        if let Some(e) = self.protected_database().or_else(|| self.unsafe_charset()) {
            return self.send_error(&e).await;
        }
        if let Some(stmt) = super::kill::parse(&text) {
            return Box::pin(self.session_statement(stmt)).await;
        }
        // Planned in the session's keyspace, or in the keyspace its only statement
        // qualifies its tables with. A plan from the cache may say that the text
        // mentions nothing of the backend's identity (most statements): then there is
        // nothing to rewrite and no need to look.
        let (plan, no_identity) = self.plan_query_text(&rt, &text);
        // Only a text that is valid UTF-8 is rewritten: the bytes sent are then exactly
        // the client's, but for the rewritten parts.
        let valid = matches!(text, std::borrow::Cow::Borrowed(_));
        let rewritten = (valid && !no_identity)
            .then(|| self.identity_rewrite(&text))
            .flatten();
        let (payload, text, mut plan) = match rewritten {
            Some(rewritten) => {
                if let Some(stmt) = super::kill::parse(&rewritten) {
                    return Box::pin(self.session_statement(stmt)).await;
                }
                let mut p = Vec::with_capacity(rewritten.len() + 1);
                p.push(command::QUERY);
                p.extend_from_slice(rewritten.as_bytes());
                // The rewritten text is what runs: its plan, not the client's text's.
                let plan = self.plan_text(&rt, &rewritten);
                (Bytes::from(p), std::borrow::Cow::Owned(rewritten), plan)
            }
            None => (payload, text, plan),
        };
        if let (planner::Privilege::Admin(what), false) = (plan.privilege, self.admin) {
            // Nothing of a query with such a statement reaches a backend.
            let e = ProxyError::admin_statement(&self.user, what);
            return self.send_error(&e).await;
        }
        if !self.scope.is_unrestricted() {
            if let Some(e) = self.out_of_scope(vs, &plan, &text) {
                return self.send_error(&e).await;
            }
        }
        if !plan.statements.iter().any(|s| s.effects.reads_diagnostics) {
            // Nobody asks about the previous statement: its connection is free.
            self.release_diagnostics(self.statements);
        }
        match plan.statements.len() {
            0 => {
                // Empty text: let a backend answer with its own error.
                let stmt = any_statement();
                self.single(&rt, &stmt, payload).await
            }
            1 => {
                let stmt = plan.statements.swap_remove(0);
                planner::cache::recycle(std::mem::take(&mut plan.statements));
                if stmt.kind.is_plain() {
                    // What `statement` would do, without its state machine around it.
                    self.single(&rt, &stmt, payload).await
                } else {
                    self.statement(&rt, stmt, payload, &text).await
                }
            }
            _ => Box::pin(self.multi(&rt, &plan.statements, payload)).await,
        }
    }

    pub(super) async fn statement(
        &mut self,
        rt: &Runtime,
        stmt: StatementPlan,
        payload: Bytes,
        text: &str,
    ) -> Answered {
        match &stmt.kind {
            StatementKind::Use(db) => {
                let db = db.clone();
                Box::pin(self.use_database(&db)).await
            }
            StatementKind::Begin => {
                if self.tx_target().is_some() {
                    // BEGIN inside a transaction commits it first, as MySQL does.
                    Box::pin(self.single(rt, &stmt, payload)).await
                } else {
                    self.pending_begin = Some(payload.slice(1..));
                    self.send_ok(OkInfo::default()).await
                }
            }
            StatementKind::Commit | StatementKind::Rollback => {
                if self.tx_target().is_some() {
                    Box::pin(self.single(rt, &stmt, payload)).await
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
                    Box::pin(self.single(rt, &stmt, payload)).await
                } else {
                    Answered::Done
                };
                if let Answered::Close = answer {
                    return answer;
                }
                self.autocommit = on;
                self.vars.set_autocommit(on);
                let text: &[u8] = if on {
                    b"SET autocommit=1"
                } else {
                    b"SET autocommit=0"
                };
                Box::pin(self.apply_to_held(text)).await;
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
                Box::pin(self.set_session(rt, &stmt, payload)).await
            }
            StatementKind::Ddl(kind) => {
                let keyspace = router::ddl_policy_keyspace(&rt.vschema, &self.ctx, &stmt);
                let action = crate::ddl::action(kind, keyspace);
                // As on MariaDB, a schema change commits the open transaction first.
                if let Err(answered) = Box::pin(self.commit_before_ddl(rt, &stmt, action)).await {
                    return answered;
                }
                match action {
                    crate::ddl::DdlAction::RunNow => {
                        Box::pin(self.single(rt, &stmt, payload)).await
                    }
                    crate::ddl::DdlAction::Queue => {
                        Box::pin(self.queue_ddl(&rt.vschema, &stmt, text)).await
                    }
                }
            }
            _ => self.single(rt, &stmt, payload).await,
        }
    }

    pub(super) async fn use_database(&mut self, db: &str) -> Answered {
        let (db, replica) = match super::replica_suffix(db) {
            Some(base) => (base, true),
            None => (db, false),
        };
        let before = self.database_changes;
        let answer = self.use_database_inner(db).await;
        if self.database_changes != before {
            self.replica_reads = replica;
        }
        answer
    }

    async fn use_database_inner(&mut self, db: &str) -> Answered {
        if let (Some(what), false) = (planner::protected_schema(db), self.admin) {
            // COM_INIT_DB; `USE db` was already refused by its plan.
            return self
                .send_error(&ProxyError::admin_statement(&self.user, what))
                .await;
        }
        let rt = self.shared.runtime();
        if !self.scope.allows_database(&rt.vschema, db) {
            return self
                .send_error(&ProxyError::db_access_denied(&self.user, db))
                .await;
        }
        match super::login::resolve_database(&rt.vschema, db) {
            None => self.send_error(&ProxyError::unknown_database(db)).await,
            Some(ctx @ DbContext::Keyspace(_)) => {
                self.ctx = ctx;
                self.handle.set_db(Some(db.to_string()));
                self.database_changes += 1;
                self.send_ok(OkInfo::default()).await
            }
            Some(ctx) => {
                // A pass-through database: only its cluster knows whether it exists.
                let target = match router::route(&rt.vschema, &ctx, &any_statement()) {
                    Ok(Dispatch::Single(t)) => t,
                    Ok(_) => {
                        return self
                            .send_error(&ProxyError::internal("bad pass-through route"))
                            .await
                    }
                    Err(e) => return self.send_error(&e).await,
                };
                let lease = match self
                    .ready_lease(&rt, &target, false, std::time::Instant::now())
                    .await
                {
                    Ok(l) => l,
                    Err(answered) => return answered,
                };
                self.ctx = ctx;
                self.handle.set_db(Some(db.to_string()));
                self.database_changes += 1;
                self.put_back(target, lease, &Effects::default());
                self.send_ok(OkInfo::default()).await
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
                // Its state no longer matches the session's and cannot be fixed
                // without a reset: keep it with the session, marked as unknown.
                Ok(_) => conn.reserve = conn.reserve.union(planner::Reserve::UNKNOWN),
                Err(_) => conn.broken = true,
            }
        }
        self.held.retain(|h| !h.lease.conn_ref().broken);
    }

    async fn set_session(
        &mut self,
        rt: &Runtime,
        stmt: &StatementPlan,
        payload: Bytes,
    ) -> Answered {
        // Run it once on a backend so errors come from MariaDB itself; remember it only
        // if it worked.
        let target = match router::route(&rt.vschema, &self.ctx, stmt) {
            Ok(d) => self
                .one_target(&rt.vschema, d, stmt)
                .unwrap_or_else(|| self.default_target(&rt.vschema)),
            Err(e) => return self.send_error(&e).await,
        };
        let target = self.tx_target().cloned().unwrap_or(target);
        match self.relay_whole(rt, &target, &payload, false).await {
            Err(answered) => answered,
            Ok((mut lease, outcome)) => {
                if !outcome.error {
                    if let Some(secs) =
                        super::idle::assigned_wait_timeout(&String::from_utf8_lossy(&payload[1..]))
                    {
                        // MariaDB takes 0 as its minimum, 1.
                        self.own_wait_timeout =
                            secs.map(|s| std::time::Duration::from_secs(s.max(1)));
                    }
                    self.vars.push(payload.slice(1..));
                    lease.conn().state_hash = self.vars.hash;
                    self.apply_to_held(&payload[1..]).await;
                }
                self.put_back(target, lease, &stmt.effects);
                Answered::Done
            }
        }
    }

    /// Relays one command to `target` on a lease brought to the session's state (with
    /// the pending transaction begun when `start`). Ok: the lease and how the answer
    /// ended, for the caller to act on and give back; Err: the client has been
    /// answered, or must be closed.
    pub(super) async fn relay_whole(
        &mut self,
        rt: &Runtime,
        target: &Target,
        payload: &[u8],
        start: bool,
    ) -> Result<(crate::backend::Lease, crate::protocol::relay::Outcome), Answered> {
        let stateful = self.state_on(&target.cluster);
        let mut lease = self
            .ready_lease(rt, target, start, std::time::Instant::now())
            .await?;
        let max_packet = self.shared.config.max_packet_size;
        match lease
            .conn()
            .relay_command(
                payload,
                ResponseKind::Query,
                &mut self.client,
                max_packet,
                &target.cluster,
                false,
            )
            .await
        {
            Ok(outcome) => Ok((lease, outcome)),
            Err(e) => Err(self.relay_failed(target.clone(), e, stateful).await),
        }
    }

    /// A relay that failed: the client is gone, the stream was cut (close), or the
    /// backend failed before any byte reached the client (answer with the error).
    pub(super) async fn relay_failed(
        &mut self,
        target: Target,
        e: crate::backend::BackendError,
        stateful: planner::Reserve,
    ) -> Answered {
        use crate::backend::BackendError;
        tracing::warn!(session = self.id, cluster = %target.cluster, error = %e, "backend failed");
        match e {
            BackendError::Client(_) | BackendError::BackendMidResponse(_) => Answered::Close,
            BackendError::LostAnswered(_) => self.lost_after_answer(&target, stateful),
            BackendError::Backend(m) => {
                self.fail(ProxyError::lost_backend(&target.cluster, m), stateful)
                    .await
            }
        }
    }

    pub(super) fn default_target(&self, vs: &VSchema) -> Target {
        let stmt = any_statement();
        match router::route(vs, &self.ctx, &stmt).map(|d| self.one_target(vs, d, &stmt)) {
            Ok(Some(t)) => t,
            _ => Target {
                cluster: vs
                    .clusters
                    .keys()
                    .next()
                    .map(|c| Name::new(c))
                    .unwrap_or_default(),
                database: None,
                label: "default".into(),
            },
        }
    }

    /// Runs a statement on its one backend (or its shards). A statement of exactly one
    /// workspace is counted for that workspace, with the error its client got, if any.
    pub(super) async fn single(
        &mut self,
        rt: &Runtime,
        stmt: &StatementPlan,
        payload: Bytes,
    ) -> Answered {
        // One async fn, not a watching one around an unwatched one: every level of
        // futures is entered again on each poll of the statement.
        let key = one_workspace(&rt.vschema, &self.ctx, stmt).and_then(|(keyspace, workspace)| {
            let tracker = &self.shared.workspaces;
            workspace_key(&mut self.last_workspace_key, tracker, keyspace, workspace)
        });
        if key.is_some() {
            self.watch_errors = true;
            self.answer_error = None;
        }
        let answer = match self.single_target(rt, stmt, &payload) {
            Ok(Ok(target)) => {
                self.run_on(rt, target, payload, ResponseKind::Query, stmt)
                    .await
            }
            Ok(Err(Dispatch::SplitInsert(parts))) => {
                Box::pin(self.split_insert(rt, stmt, parts, &payload)).await
            }
            Ok(Err(Dispatch::Broadcast(targets))) => {
                Box::pin(self.broadcast(rt, targets, &payload)).await
            }
            Ok(Err(_)) => self.send_error(&ProxyError::internal("no target")).await,
            Err(e) => self.send_error(&e).await,
        };
        if let Some(key) = key {
            self.watch_errors = false;
            let error = self.answer_error.take();
            // The window counts whole seconds: the latest reading (the answer's, or
            // the command's arrival when no cluster answered) is close enough.
            let second = self.clock_second();
            self.shared
                .workspaces
                .record_answered_in(key, error, second);
        }
        answer
    }

    /// Where a statement for one backend goes (a standby for a session's plain read
    /// where it may), or the dispatch of a statement for several shards (a split
    /// insert, a broadcast).
    fn single_target(
        &mut self,
        rt: &Runtime,
        stmt: &StatementPlan,
        payload: &Bytes,
    ) -> Result<Result<Target, Dispatch>, ProxyError> {
        let d = match router::route(&rt.vschema, &self.ctx, stmt)? {
            d @ (Dispatch::Single(_) | Dispatch::AnyShard { .. }) => d,
            many => return Ok(Err(many)),
        };
        let target = self
            .one_target(&rt.vschema, d, stmt)
            .ok_or_else(|| ProxyError::internal("no target"))?;
        self.check_transaction(&target)?;
        Ok(Ok(if self.replica_reads {
            self.read_target(rt, stmt, payload, target)
        } else {
            target
        }))
    }

    /// For a session that reads from standbys: a healthy standby of `target`'s cluster
    /// (replicating, lag under `max_replica_lag_ms`) for a plain read outside a
    /// transaction; `target` itself for anything else (writes, locking reads, reads that
    /// keep state or ask about the previous statement), or when no standby qualifies.
    pub(super) fn read_target(
        &self,
        rt: &Runtime,
        stmt: &StatementPlan,
        payload: &[u8],
        target: Target,
    ) -> Target {
        let fx = &stmt.effects;
        let plain_read = stmt.kind == StatementKind::Select
            && !self.in_transaction()
            && self.autocommit
            && fx.reserve.is_empty()
            && !fx.reads_diagnostics
            && !fx.reads_insert_id;
        if !plain_read || locking_read(payload) {
            return target;
        }
        let Some(pool) = rt.pool(&target.cluster) else {
            return target;
        };
        let max_lag = self.shared.config.failover.max_lag;
        let members = pool.cluster();
        let standbys = pool.health.standbys();
        let current =
            |s: &&crate::health::members::StandbyStatus| members.standbys.contains(&s.addr);
        let mut standby = standbys
            .iter()
            .filter(current)
            .find(|s| s.state(max_lag) == "healthy");
        if standby.is_none()
            && (pool.not_serving().is_some() || pool.health.get() != crate::health::Health::Healthy)
        {
            // The primary is in trouble: its heartbeat stopped, so every standby looks
            // as lagging as the outage is long. What a reachable one has is the best
            // read there is.
            standby = standbys.iter().filter(current).find(|s| s.reachable);
        }
        match standby {
            Some(s) => Target {
                cluster: crate::shared::replica_pool_name(&target.cluster, &s.addr).into(),
                label: format!("{} (standby {})", target.label, s.addr).into(),
                database: target.database,
            },
            None => target,
        }
    }

    /// The one backend for a dispatch that needs one: a fixed target, or, when any shard
    /// of a keyspace may answer, the shard whose connection the session already holds
    /// (its transaction; for a question about the previous statement, the connection
    /// that ran it; a reserved one, with temporary tables), else the first.
    pub(super) fn one_target(
        &self,
        vs: &VSchema,
        d: Dispatch,
        stmt: &StatementPlan,
    ) -> Option<Target> {
        match d {
            Dispatch::Single(t) => Some(t),
            Dispatch::AnyShard { keyspace, fallback } => {
                let ours = |t: &Target| router::is_shard_of(vs, &keyspace, t);
                if let Some(t) = self.tx_target().filter(|t| ours(t)) {
                    return Some(t.clone());
                }
                let held = |pred: &dyn Fn(&super::state::Held) -> bool| {
                    self.held
                        .iter()
                        .find(|h| pred(h) && ours(&h.target))
                        .map(|h| h.target.clone())
                };
                if stmt.effects.reads_diagnostics || stmt.effects.reads_insert_id {
                    // A question about the previous statement: where it ran.
                    let last = self.last.as_ref().map(|(t, _)| t).filter(|t| ours(t));
                    if let Some(t) = held(&|h| h.diagnostics).or_else(|| last.cloned()) {
                        return Some(t);
                    }
                }
                held(&|h| h.reserved())
                    .or_else(|| held(&|_| true))
                    .or_else(|| Some(self.serving_shard(vs, &keyspace, fallback)))
            }
            Dispatch::SplitInsert(_) | Dispatch::Broadcast(_) => None,
        }
    }

    /// `fallback` if its cluster serves, else the first shard of `keyspace` whose
    /// cluster does (any shard answers a statement that names no sharded table, so a
    /// drained or down first shard must not fail it).
    fn serving_shard(&self, vs: &VSchema, keyspace: &str, fallback: Target) -> Target {
        let rt = self.shared.runtime();
        let serves = |cluster: &str| rt.pool(cluster).is_some_and(|p| p.not_serving().is_none());
        if serves(&fallback.cluster) {
            return fallback;
        }
        vs.keyspace(keyspace)
            .and_then(|ks| {
                let i = ks.shards.iter().position(|s| serves(&s.cluster))?;
                Some(router::shard_target(ks, i))
            })
            .unwrap_or(fallback)
    }

    pub(super) fn check_transaction(&self, target: &Target) -> Result<(), ProxyError> {
        match self.tx_target() {
            Some(t) if t != target => Err(ProxyError::unroutable(format!(
                "shardgate: this transaction runs on {} (cluster {}), but the statement routes to {} (cluster {}); \
                 cross-shard transactions are not supported yet: COMMIT or ROLLBACK first",
                t.label, t.cluster, target.label, target.cluster
            ))),
            _ => Ok(()),
        }
    }
}

/// The tracker's key of `workspace` of `keyspace`, through the session's last one
/// (`last`): a statement in the same keyspace as the session's previous one needs no
/// lookup of the keyspace's name, whichever workspace it runs for.
fn workspace_key(
    last: &mut Option<(Name, crate::health::WorkspaceKey)>,
    tracker: &crate::health::WorkspaceErrors,
    keyspace: &str,
    workspace: u64,
) -> Option<crate::health::WorkspaceKey> {
    if let Some((k, key)) = last {
        if *k == keyspace {
            return Some(key.with_workspace(workspace));
        }
    }
    let key = tracker.key(keyspace, workspace)?;
    *last = Some((Name::new(keyspace), key));
    Some(key)
}

/// The one workspace a statement runs for, if it is exactly one: a workspace's own
/// database (named in the statement, or the session's), or one workspace id of a
/// shared-tables keyspace. Routing decides the same way (`router::route`).
fn one_workspace<'a>(
    vs: &'a VSchema,
    ctx: &'a DbContext,
    stmt: &StatementPlan,
) -> Option<(&'a str, u64)> {
    if let Some(q) = &stmt.qualified_schema {
        if let Some((ks, ws)) = vs.workspace_database(q) {
            return Some((&ks.name, ws));
        }
    }
    if let DbContext::Workspace {
        keyspace,
        workspace,
        ..
    } = ctx
    {
        if stmt
            .qualified_schema
            .as_deref()
            .is_none_or(|q| vs.keyspace(q).is_none())
        {
            return Some((keyspace, *workspace));
        }
    }
    let planner::Route::Workspaces(ids) = &stmt.route else {
        return None;
    };
    let [id] = ids.as_slice() else {
        return None;
    };
    let ks = router::statement_keyspace(vs, ctx, stmt)?;
    (ks.sharded && ks.tenancy == crate::vschema::Tenancy::SharedTables).then_some((&ks.name, *id))
}

/// Whether a `SET ... TRANSACTION` applies to the session rather than the next
/// transaction only.
fn is_session_scope(text: &str) -> bool {
    text.split_ascii_whitespace()
        .take(3)
        .any(|w| w.eq_ignore_ascii_case("SESSION") || w.eq_ignore_ascii_case("GLOBAL"))
}

/// `SELECT ... FOR UPDATE` / `FOR SHARE` / `LOCK IN SHARE MODE`: a read that locks,
/// which only the primary can serve.
fn locking_read(payload: &[u8]) -> bool {
    let has = |needle: &[u8]| {
        payload
            .windows(needle.len())
            .any(|w| w.eq_ignore_ascii_case(needle))
    };
    has(b"FOR UPDATE") || has(b"FOR SHARE") || has(b"SHARE MODE")
}
