//! Backend connections for a session's statements: leasing one (the session's own
//! reserved connection first), bringing it to the session's state, relaying a
//! statement's answer, and deciding afterwards whether the connection stays with the
//! session or goes back to the pool.

use std::time::{Duration, Instant};

use bytes::Bytes;

use super::state::{Held, Outgoing, Taken};
use super::{Answered, Session};
use crate::backend::{BackendError, Collected, Lease, Reserve, Wanted};
use crate::engine::{Cursor, Failure};
use crate::error::{Fault, ProxyError};
use crate::name::Name;
use crate::planner::{Effects, StatementPlan};
use crate::protocol::command;
use crate::protocol::relay::ResponseKind;
use crate::router::Target;
use crate::shared::Runtime;

/// Run on a connection that last served another session before it answers a question
/// about "the previous statement": afterwards the connection's diagnostics are those of
/// a statement that did nothing (no warnings, `ROW_COUNT()` -1, `FOUND_ROWS()` 0), never
/// the other session's.
const CLEAR_DIAGNOSTICS: &[u8] = b"\x03SELECT 1 FROM DUAL WHERE 1 = 0";

impl Session {
    /// A lease for `target` from the pool, waiting for a slot if need be: what
    /// [`ready`](Self::ready) asks for when [`lease_now`](Self::lease_now) found none.
    async fn lease_from_pool(&self, rt: &Runtime, target: &Target) -> Result<Lease, ProxyError> {
        let pool = rt.pool(&target.cluster).ok_or_else(|| {
            ProxyError::internal(format!("no pool for cluster {}", target.cluster))
        })?;
        pool.checkout(self.wanted(target)).await
    }

    /// The lease for `target` when it needs no wait: the connection the session keeps
    /// on that cluster (its state lives there), or one the pool has idle and ready
    /// (`ClusterPool::checkout_now`). None: nothing was taken.
    fn lease_now(&mut self, rt: &Runtime, target: &Target) -> Option<Lease> {
        if let Some(i) = self.held_for(target) {
            return Some(self.held.swap_remove(i).lease);
        }
        rt.pool(&target.cluster)?
            .checkout_now(self.wanted(target), self.clock)
    }

    /// What the session asks a pool for to run on `target`.
    fn wanted<'a>(&self, target: &'a Target) -> Wanted<'a> {
        Wanted {
            key: self.key,
            database: target.database.as_deref(),
            state_hash: self.vars.hash,
            prefer: self.prefer_on(target),
        }
    }

    /// Which of the connections the session keeps serves `target`.
    fn held_for(&self, target: &Target) -> Option<usize> {
        self.held
            .iter()
            .position(|h| &h.target == target)
            .or_else(|| {
                // Another database on the same cluster: the same connection, unless it
                // would have to go back to no database at all (only a reserved one,
                // whose state matters more, does that).
                self.held.iter().position(|h| {
                    h.target.cluster == target.cluster
                        && (h.reserved()
                            || target.database.is_some()
                            || h.lease.conn_ref().database.is_none())
                })
            })
    }

    /// The connection that ran the session's previous statement on `target`'s cluster,
    /// if any: a question about that statement is answered there, and its state
    /// matches, so the pool hands it out first when it is idle.
    fn prefer_on(&self, target: &Target) -> Option<u32> {
        self.last
            .as_ref()
            .filter(|(t, _)| t.cluster == target.cluster)
            .map(|(_, id)| *id)
    }

    /// The session's state that would be lost with its connection to `cluster`: a
    /// transaction (open, pending, or implicit under `autocommit=0`) or what a reserved
    /// connection there holds.
    pub(super) fn state_on(&self, cluster: &str) -> Reserve {
        let mut state = Reserve::NONE;
        if self.in_transaction() || !self.autocommit {
            state = Reserve::TRANSACTION;
        }
        for h in &self.held {
            if h.target.cluster == cluster {
                state = state.union(h.why());
            }
        }
        state
    }

    /// A lease for `target` brought to the session's state (and, with `start`, with the
    /// pending transaction and one-shot settings begun). When that fails, the client
    /// has been answered (a backend's ERR as it came, or shardgate's error) and the
    /// answer is returned instead.
    pub(super) async fn ready_lease(
        &mut self,
        rt: &Runtime,
        target: &Target,
        start: bool,
        started: Instant,
    ) -> Result<Lease, Answered> {
        self.ready_lease_after(rt, target, start, started, None)
            .await
    }

    /// [`ready_lease`](Self::ready_lease)'s common case, with no future: the lease
    /// [`lease_now`](Self::lease_now) gives is already in the session's state and
    /// nothing is pending to start on it. Err: what was taken, if anything, for
    /// [`ready_lease_after`](Self::ready_lease_after) to go on with. `stateful`: the
    /// session's [`state_on`](Self::state_on) the target's cluster.
    pub(super) fn ready_now(
        &mut self,
        rt: &Runtime,
        target: &Target,
        start: bool,
        stateful: Reserve,
    ) -> Result<Lease, Option<Taken>> {
        // As `ready` reads them, before a kept connection leaves `held`.
        let from_pool = !self.held.iter().any(|h| h.target.cluster == target.cluster);
        let Some(lease) = self.lease_now(rt, target) else {
            return Err(None);
        };
        let pending = self.pending_begin.is_some() || !self.pending_once.is_empty();
        if !(start && pending) && self.in_state(lease.conn_ref(), target) {
            return Ok(lease);
        }
        Err(Some(Taken {
            lease,
            from_pool,
            stateful,
        }))
    }

    /// [`ready_lease`](Self::ready_lease), going on with a lease
    /// [`ready_now`](Self::ready_now) took, if any.
    pub(super) async fn ready_lease_after(
        &mut self,
        rt: &Runtime,
        target: &Target,
        start: bool,
        started: Instant,
        taken: Option<Taken>,
    ) -> Result<Lease, Answered> {
        let stateful = match &taken {
            Some(t) => t.stateful,
            None => self.state_on(&target.cluster),
        };
        match self.ready(rt, target, start, taken).await {
            Ok(lease) => Ok(lease),
            Err(Failure::Backend(err)) => Err(Box::pin(self.send_collected(&err)).await),
            Err(Failure::Proxy(e)) => {
                self.record(rt, target, started, Some(&e));
                Err(Box::pin(self.fail(e, stateful)).await)
            }
        }
    }

    /// [`ready_lease`](Self::ready_lease) without answering the client. Bringing a
    /// pooled connection to the session's state sends only the session's own settings:
    /// when the connection turns out dead there (the server closed it while it sat in
    /// the pool), nothing of the client's ran on it, and one other connection is tried.
    async fn ready(
        &mut self,
        rt: &Runtime,
        target: &Target,
        start: bool,
        mut taken: Option<Taken>,
    ) -> Result<Lease, Failure> {
        let from_pool = match &taken {
            Some(t) => t.from_pool,
            None => !self.held.iter().any(|h| h.target.cluster == target.cluster),
        };
        let mut retry = from_pool;
        let mut lease = loop {
            let now = match taken.take() {
                Some(t) => Some(t.lease),
                None => self.lease_now(rt, target),
            };
            let mut lease = match now {
                Some(lease) => lease,
                None => self
                    .lease_from_pool(rt, target)
                    .await
                    .map_err(Failure::Proxy)?,
            };
            if self.in_state(lease.conn_ref(), target) {
                break lease;
            }
            match self.sync(&mut lease, target).await {
                Ok(None) => break lease,
                Err(_) if retry && lease.conn_ref().broken => {
                    retry = false;
                    drop(lease);
                }
                Ok(Some(err)) => {
                    self.put_back(target.clone(), lease, &Effects::default());
                    return Err(Failure::Backend(err));
                }
                Err(e) => {
                    self.put_back(target.clone(), lease, &Effects::default());
                    return Err(Failure::Proxy(e));
                }
            }
        };
        // Boxed (rare): only a statement after BEGIN or SET TRANSACTION pays for it.
        let pending = self.pending_begin.is_some() || !self.pending_once.is_empty();
        let started = if start && pending {
            Box::pin(self.start_pending(&mut lease, target)).await
        } else {
            Ok(None)
        };
        match started {
            Ok(None) => Ok(lease),
            Ok(Some(err)) => {
                self.put_back(target.clone(), lease, &Effects::default());
                Err(Failure::Backend(err))
            }
            Err(e) => {
                self.put_back(target.clone(), lease, &Effects::default());
                Err(Failure::Proxy(e))
            }
        }
    }

    /// Starts the pending transaction and one-shot settings on a connection already
    /// in the session's state. Ok(Some) carries a backend ERR to forward.
    async fn start_pending(
        &mut self,
        lease: &mut Lease,
        target: &Target,
    ) -> Result<Option<Collected>, ProxyError> {
        let once = std::mem::take(&mut self.pending_once);
        let begin = self.pending_begin.take();
        for stmt in once.iter().chain(begin.iter()) {
            let c = exec_text(lease, target, stmt).await?;
            if c.outcome.error {
                return Ok(Some(c));
            }
        }
        Ok(None)
    }

    /// Whether `conn` is in the session's state for `target`: what
    /// [`sync`](Self::sync) would leave as it is.
    fn in_state(&self, conn: &crate::backend::BackendConn, target: &Target) -> bool {
        conn.state_hash == self.vars.hash
            && (target.database.is_none() || conn.database.as_deref() == target.database.as_deref())
    }

    /// Makes a connection's database and session variables match the session's.
    pub(super) async fn sync(
        &mut self,
        lease: &mut Lease,
        target: &Target,
    ) -> Result<Option<Collected>, ProxyError> {
        if self.in_state(lease.conn_ref(), target) {
            return Ok(None);
        }
        let conn = lease.conn();
        if conn.state_hash != self.vars.hash {
            if conn.state_hash != 0 {
                Box::pin(conn.reset())
                    .await
                    .map_err(|e| ProxyError::lost_backend(&target.cluster, e))?;
            }
            for stmt in &self.vars.statements {
                let c = Box::pin(exec_text(lease, target, stmt)).await?;
                if c.outcome.error {
                    lease.conn().broken = true;
                    return Ok(Some(c));
                }
            }
            lease.conn().state_hash = self.vars.hash;
        }
        let conn = lease.conn();
        if conn.database.as_deref() != target.database.as_deref() {
            if let Some(db) = &target.database {
                let r = Box::pin(conn.init_db(db))
                    .await
                    .map_err(|e| ProxyError::lost_backend(&target.cluster, e))?;
                if let Err(err) = r {
                    return Ok(Some(err));
                }
            }
        }
        Ok(None)
    }

    /// Makes the connection answer the statement as the session's own would: the
    /// session's `LAST_INSERT_ID()`, and no other session's diagnostics.
    async fn before_statement(
        &mut self,
        lease: &mut Lease,
        target: &Target,
        fx: &Effects,
    ) -> Result<Option<Collected>, ProxyError> {
        let id = self.id;
        let conn = lease.conn();
        if fx.reads_diagnostics && conn.last_session != id && conn.last_session != 0 {
            let c = Box::pin(conn.exec(CLEAR_DIAGNOSTICS, ResponseKind::Query))
                .await
                .map_err(|e| ProxyError::lost_backend(&target.cluster, e))?;
            if c.outcome.error {
                return Ok(Some(c));
            }
        }
        conn.last_session = id;
        if fx.reads_insert_id && conn.insert_id != self.last_insert_id {
            let set = format!("\x03DO LAST_INSERT_ID({})", self.last_insert_id);
            let c = Box::pin(conn.exec(set.as_bytes(), ResponseKind::Query))
                .await
                .map_err(|e| ProxyError::lost_backend(&target.cluster, e))?;
            if c.outcome.error {
                return Ok(Some(c));
            }
            conn.insert_id = self.last_insert_id;
        }
        Ok(None)
    }

    /// After a statement: records its effects on the connection, then keeps the
    /// connection if it holds session state (reserved), or until the next statement if
    /// a follow-up may ask about this one; otherwise it goes back to the pool.
    pub(super) fn put_back(&mut self, target: Target, mut lease: Lease, fx: &Effects) {
        // Only a SET GLOBAL that worked: a refused one must not let any user flush
        // the cluster's pool.
        if fx.changes_globals && !lease.conn_ref().last_error {
            lease.pool().renew();
        }
        let conn = lease.conn();
        if conn.broken {
            return;
        }
        conn.reserve = conn.reserve.union(fx.reserve).without(fx.clears);
        // The session's sql_mode as the backend reports it: the OK packets shardgate
        // builds itself must carry the same flag, or a client escapes strings for the
        // wrong mode.
        self.backend_flags = conn.status & crate::protocol::status::NO_BACKSLASH_ESCAPES;
        if conn.reported_insert_id != 0 {
            self.last_insert_id = conn.reported_insert_id;
        }
        let reserved =
            conn.status & crate::protocol::status::IN_TRANS != 0 || !conn.reserve.is_empty();
        // Warnings, an error and SQL_CALC_FOUND_ROWS are what people and drivers ask
        // about next (SHOW WARNINGS, FOUND_ROWS()): that connection stays until the
        // session's next statement. Any other connection goes back to the pool, but the
        // session's next statement prefers it (see `prefer_on`), so ROW_COUNT() after an
        // UPDATE reaches it unless another session took it meanwhile.
        let diagnostics =
            !reserved && (conn.last_warnings > 0 || conn.last_error || fx.calc_found_rows);
        let thread_id = conn.thread_id;
        if reserved || diagnostics {
            self.last = Some((target.clone(), thread_id));
            self.held.push(Held {
                target,
                lease,
                diagnostics,
                kept_at: self.statements,
            });
        } else {
            self.last = Some((target, thread_id));
        }
    }

    /// Gives back the connections kept only for questions about an earlier statement.
    pub(super) fn release_diagnostics(&mut self, older_than: u64) {
        if self.held.is_empty() {
            return;
        }
        self.held
            .retain(|h| !(h.diagnostics && h.kept_at < older_than));
    }

    /// Runs one command on one target and relays the answer. A command that certainly
    /// never ran on a pooled connection the server had closed (see
    /// [`BackendConn::never_ran`](crate::backend::BackendConn::never_ran)) is sent once
    /// more, on another connection, when the session had nothing on that one: no
    /// transaction begun on it, no reserved state, so nothing was lost with it.
    ///
    /// Not an `async fn`: it hands back [`run_outgoing`](Self::run_outgoing)'s future
    /// itself, one state machine less to build and poll on every statement.
    pub(super) fn run_on<'a>(
        &'a mut self,
        rt: &'a Runtime,
        target: Target,
        payload: Bytes,
        kind: ResponseKind,
        stmt: &'a StatementPlan,
    ) -> impl std::future::Future<Output = Answered> + 'a {
        self.run_outgoing(rt, target, Outgoing::Raw(payload), kind, stmt)
    }

    /// [`run_on`](Self::run_on) for a command that may first need the connection's
    /// help (a prepared statement's execute: prepared there, its id rewritten). Only a
    /// raw command is sent again; an execute that failed this way reaches the client.
    ///
    /// Not an `async fn`, like `run_on`: the attempt's future is the statement's.
    pub(super) fn run_outgoing<'a>(
        &'a mut self,
        rt: &'a Runtime,
        target: Target,
        outgoing: Outgoing,
        kind: ResponseKind,
        stmt: &'a StatementPlan,
    ) -> impl std::future::Future<Output = Answered> + 'a {
        self.run_attempt(rt, target, outgoing, kind, stmt, true)
    }

    /// One attempt of [`run_outgoing`](Self::run_outgoing). With `may_retry`, a raw
    /// command that certainly never ran (see [`run_on`](Self::run_on)) is sent once
    /// more by a second attempt, which may not retry.
    async fn run_attempt(
        &mut self,
        rt: &Runtime,
        target: Target,
        outgoing: Outgoing,
        kind: ResponseKind,
        stmt: &StatementPlan,
        may_retry: bool,
    ) -> Answered {
        // What a second attempt would send (a cheap clone: shared bytes).
        let again = match &outgoing {
            Outgoing::Raw(p) if may_retry => Some(p.clone()),
            _ => None,
        };
        // The command's arrival, or the end of the answer before this one of the same
        // command (a statement over several shards runs its attempts in turn).
        let started = self.clock;
        let stateful = self.state_on(&target.cluster);
        let may_retry = again.is_some()
            && self.pending_begin.is_none()
            && self.pending_once.is_empty()
            && !self.held.iter().any(|h| h.target.cluster == target.cluster);
        // Decided before the pending transaction starts (then it is state).
        let retries = self.deadlock_retries(stateful, &outgoing, kind, stmt);
        // The common case takes its lease with no future of its own; the rest is
        // boxed (a wait for the pool, a connection to bring to the session's state).
        let mut lease = match self.ready_now(rt, &target, true, stateful) {
            Ok(l) => l,
            Err(taken) => {
                let ready = self.ready_lease_after(rt, &target, true, started, taken);
                match Box::pin(ready).await {
                    Ok(l) => l,
                    Err(answered) => return answered,
                }
            }
        };
        match self
            .before_statement(&mut lease, &target, &stmt.effects)
            .await
        {
            Ok(None) => {}
            Ok(Some(err)) => {
                self.put_back(target, lease, &Effects::default());
                return Box::pin(self.send_collected(&err)).await;
            }
            Err(e) => return Box::pin(self.fail(e, stateful)).await,
        }
        let bound = match outgoing {
            Outgoing::Raw(p) => Ok(Ok(p)),
            // Boxed: their futures would grow every text statement's.
            Outgoing::Execute(x) => Box::pin(super::prepared_exec::bind(lease.conn(), *x)).await,
            Outgoing::Bulk(b) => Box::pin(super::prepared_bulk::bind(lease.conn(), *b)).await,
        };
        let payload = match bound {
            Ok(Ok(p)) => p,
            Ok(Err(err)) => {
                self.put_back(target, lease, &Effects::default());
                return Box::pin(self.send_collected(&err)).await;
            }
            Err(e) => {
                drop(lease);
                let e = ProxyError::lost_backend(&target.cluster, e);
                return Box::pin(self.fail(e, stateful)).await;
            }
        };
        let thread_id = lease.conn_ref().thread_id;
        self.handle.statement_started(&target.cluster, thread_id);
        let mut retried = 0;
        let limit = self.shared.config.pool.query_timeout;
        // The relay's future, made in place: without a limit it is awaited where it is
        // made (a local would be one more copy of a large future per statement).
        macro_rules! relay {
            ($first:expr) => {
                self.relay_retrying_deadlocks(
                    lease.conn(),
                    &payload,
                    kind,
                    &target.cluster,
                    retries,
                    &mut retried,
                    $first,
                )
            };
        }
        let result = match limit {
            None => {
                // The first try here, one level of futures up: only an answer held
                // back (a deadlock's) or one that asks for a local file goes on in
                // the boxed rest.
                let hold = retries > 0;
                let io = &mut self.client.io;
                match lease.conn().relay_or_hold(&payload, kind, io, hold).await {
                    Ok(o) if o.held || o.local_infile => Box::pin(relay!(Some(o))).await,
                    first => first,
                }
            }
            Some(limit) => {
                match Box::pin(crate::timer::timeout(limit, relay!(None))).await {
                    Ok(r) => r,
                    Err(_) => {
                        if retried > 0 {
                            let end = super::deadlock::RetryEnd::Error;
                            self.count_deadlock_retry(&target.cluster, end);
                        }
                        self.handle.statement_ended().await;
                        let conn = lease.conn();
                        conn.broken = true;
                        let mid_response = conn.relayed;
                        self.kill_query(rt, &target, conn.thread_id);
                        drop(lease);
                        let e = ProxyError::query_timeout(&target.cluster, limit.as_secs_f64());
                        self.record(rt, &target, started, Some(&e));
                        if mid_response {
                            // No ERR reaches the client, but the statement failed.
                            self.note_error(e.code, &e.message);
                            // Rows already reached the client: no packet it would
                            // expect can say what happened. Cut the stream.
                            tracing::warn!(session = self.id, cluster = %target.cluster,
                                "query timeout mid-response; closing the client connection");
                            return Answered::Close;
                        }
                        return Box::pin(self.fail(e, stateful)).await;
                    }
                }
            }
        };
        self.handle.statement_ended().await;
        let answered = match result {
            Ok(outcome) => {
                if outcome.error && self.watch_errors {
                    // The relay kept the ERR it forwarded: no second look at the bytes.
                    match &lease.conn_ref().last_err {
                        Some(e) => self.note_error(e.code, &e.message),
                        None => self.note_error(0, "malformed ERR packet"),
                    }
                }
                let code = outcome
                    .error
                    .then(|| lease.conn_ref().last_err.as_ref().map_or(0, |e| e.code));
                self.record_answer(lease.pool(), &target, started, code);
                // The answer's end (the reading `record_answer` took): the pool's idle
                // age of the connection starts there.
                lease.conn().last_used = self.clock;
                let mut fx = stmt.effects;
                if outcome.status.unwrap_or(0) & crate::protocol::status::CURSOR_EXISTS != 0 {
                    // An execute opened a cursor: its rows are read from this
                    // connection later.
                    fx.reserve = fx.reserve.union(Reserve::CURSOR);
                }
                self.put_back(target, lease, &fx);
                Answered::Done
            }
            Err(BackendError::Client(_)) => Answered::Close,
            Err(BackendError::LostAnswered(m)) => {
                let e = ProxyError::lost_backend(&target.cluster, m);
                self.record(rt, &target, started, Some(&e));
                self.note_error(e.code, &e.message);
                self.lost_after_answer(&target, stateful)
            }
            Err(BackendError::BackendMidResponse(m)) => {
                let e = ProxyError::lost_backend(&target.cluster, m);
                self.record(rt, &target, started, Some(&e));
                self.note_error(e.code, &e.message);
                tracing::warn!(session = self.id, error = %e, "backend lost mid-response; closing the client connection");
                Answered::Close
            }
            Err(BackendError::Backend(m)) => {
                let never_ran = lease.conn_ref().never_ran;
                drop(lease);
                if let Some(p) = again.filter(|_| never_ran && may_retry) {
                    tracing::info!(session = self.id, cluster = %target.cluster,
                        "pooled connection closed by the server before it ran the statement; sent again");
                    let retry = self.run_attempt(rt, target, Outgoing::Raw(p), kind, stmt, false);
                    return Box::pin(retry).await;
                }
                let e = ProxyError::lost_backend(&target.cluster, m);
                self.record(rt, &target, started, Some(&e));
                Box::pin(self.fail(e, stateful)).await
            }
        };
        answered
    }

    /// A backend lost after the client got its error (see
    /// [`BackendError::LostAnswered`]): the session goes on, unless it had state on
    /// that cluster's connection, which is gone (then, as in [`Self::fail`], the client
    /// connection is closed).
    pub(super) fn lost_after_answer(&mut self, target: &Target, state: Reserve) -> Answered {
        if !state.is_empty() {
            self.held.retain(|h| h.target.cluster != target.cluster);
            tracing::warn!(session = self.id, cluster = %target.cluster,
                "session state lost with a backend during LOAD DATA; closing the client connection");
            return Answered::Close;
        }
        self.pending_begin = None;
        Answered::Done
    }

    /// Answers a failure. When the session had state on the failed cluster's
    /// connection (a transaction, temporary tables, locks), that state is gone: the
    /// client learns it and its connection is closed, as a direct connection would
    /// have died; a later `COMMIT` can never succeed.
    pub(super) async fn fail(&mut self, e: ProxyError, state: Reserve) -> Answered {
        let lost = e.fault == Fault::Shard && e.code == crate::error::codes::NET_ERROR
            || e.code == crate::error::codes::STATEMENT_TIMEOUT;
        if !state.is_empty() && lost {
            let cluster = e.cluster.clone().unwrap_or_default();
            self.held.retain(|h| h.target.cluster != cluster);
            let e = ProxyError::session_state_lost(&e, &state.describe());
            tracing::warn!(session = self.id, error = %e, "session state lost; closing the client connection");
            let _ = self.send_error(&e).await;
            return Answered::Close;
        }
        if lost {
            // A transaction that was about to start on that connection is gone with it.
            self.pending_begin = None;
        }
        self.send_error(&e).await
    }

    /// Feeds the cluster's latency and failure window (the migration throttle, the
    /// health monitor and the metrics read it). Only failures of the cluster's own count
    /// against it, never a client's mistake.
    pub(super) fn record(
        &mut self,
        rt: &Runtime,
        target: &Target,
        started: Instant,
        error: Option<&ProxyError>,
    ) {
        let code = error.map(|e| e.code);
        if let Some(pool) = rt.pool(&target.cluster) {
            // A refusal (1053: down or drained) never reached the cluster and says
            // nothing about it. In the window it kept a resumed cluster's error rate
            // above the threshold for as long as clients kept asking, so the monitor
            // never let it recover under load (`shardgate-bench incident` showed it).
            if code == Some(crate::error::codes::CLUSTER_NOT_SERVING) {
                pool.stats.record_refusal();
                self.record_metrics(&target.cluster, None, code);
                return;
            }
            let failed = error.is_some_and(|e| e.fault == Fault::Shard);
            let now = self.read_clock(true);
            let elapsed = now.saturating_duration_since(started);
            pool.stats.record(elapsed, failed);
            self.record_metrics(&target.cluster, Some(elapsed), code);
        }
    }

    /// [`record`](Self::record) of a statement the cluster answered on a connection
    /// of `pool` (the lease's: no lookup by name): `code` is its ERR's (a SQL error is
    /// the client's, never a failure of the cluster's).
    fn record_answer(
        &mut self,
        pool: &crate::backend::ClusterPool,
        target: &Target,
        started: Instant,
        code: Option<u16>,
    ) {
        let now = self.read_clock(true);
        let elapsed = now.saturating_duration_since(started);
        pool.stats.record_in(self.clock_second(), elapsed, false);
        self.record_metrics(&target.cluster, Some(elapsed), code);
    }

    /// Counts a statement of `cluster` in the session's keyspace for `/metrics`. The
    /// handles of the last (cluster, keyspace) are kept: a session's statements mostly
    /// go to one, and this spares a map lookup per statement.
    fn record_metrics(&mut self, cluster: &Name, elapsed: Option<Duration>, code: Option<u16>) {
        let keyspace = crate::metrics::keyspace_label(&self.ctx);
        let m = &self.shared.metrics;
        match &self.metric_pair {
            Some((c, k, pair)) if c == cluster && *k == keyspace => {
                m.record_on_pair(pair, elapsed, code);
            }
            _ => {
                let pair = m.pair(cluster, keyspace);
                m.record_on_pair(&pair, elapsed, code);
                self.metric_pair = Some((cluster.clone(), Name::new(keyspace), pair));
            }
        }
    }

    /// Asks the cluster to stop a statement shardgate gave up on.
    fn kill_query(&self, rt: &Runtime, target: &Target, thread_id: u32) {
        let Some(pool) = rt.pool(&target.cluster).cloned() else {
            return;
        };
        let key = self.key;
        // Bounded like any statement: on a hung cluster the KILL hangs too, and must
        // not hold a pool slot longer than the statement it ends did.
        let limit = self
            .shared
            .config
            .pool
            .query_timeout
            .unwrap_or(Duration::from_secs(10));
        tokio::spawn(async move {
            let kill = async {
                if let Ok(mut lease) = pool.checkout(Wanted::plain(key, None)).await {
                    let q = format!("\x03KILL QUERY {thread_id}");
                    // Cut off by the deadline mid-exchange, the connection must not go
                    // back to the pool: it is pooled only once the answer is read.
                    lease.conn().broken = true;
                    if lease
                        .conn()
                        .exec(q.as_bytes(), ResponseKind::Query)
                        .await
                        .is_ok()
                    {
                        lease.conn().broken = false;
                    }
                }
            };
            let _ = crate::timer::timeout(limit, kill).await;
        });
    }
}

/// Runs one of the session's own statements (replayed `SET`, `BEGIN`) on a lease.
async fn exec_text(
    lease: &mut Lease,
    target: &Target,
    stmt: &[u8],
) -> Result<Collected, ProxyError> {
    let mut p = Vec::with_capacity(stmt.len() + 1);
    p.push(command::QUERY);
    p.extend_from_slice(stmt);
    lease
        .conn()
        .exec(&p, ResponseKind::Query)
        .await
        .map_err(|e| ProxyError::lost_backend(&target.cluster, e))
}

/// The engine's primitives get their connections from the session, with its runtime
/// snapshot.
pub(super) struct SessionCursor<'a> {
    pub session: &'a mut Session,
    pub rt: &'a Runtime,
}

impl Cursor for SessionCursor<'_> {
    async fn ready(&mut self, target: &Target) -> Result<Lease, Failure> {
        self.session.ready(self.rt, target, true, None).await
    }

    fn done(&mut self, target: Target, lease: Lease) {
        self.session.put_back(target, lease, &Effects::default());
    }

    fn part_deadline(&self) -> Option<Duration> {
        self.session.shared.config.pool.query_timeout
    }
}
