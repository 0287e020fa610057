//! Statements over several shards: an INSERT whose rows span shards (split), a write
//! every shard gets (broadcast), and a query of several statements
//! (`CLIENT_MULTI_STATEMENTS`), each dispatched in turn. The one-backend path is in
//! `statement`.

use bytes::Bytes;

use super::leases::SessionCursor;
use super::{Answered, Session};
use crate::engine::{fanout, split_insert};
use crate::error::ProxyError;
use crate::planner::{self, Effects, StatementKind, StatementPlan};
use crate::router::{self, Dispatch, Target};
use crate::shared::Runtime;

impl Session {
    pub(super) async fn split_insert(
        &mut self,
        rt: &Runtime,
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
        let Some(writes) = split_insert::shard_inserts(&payload[1..], shape, &parts) else {
            return self
                .send_error(&ProxyError::internal("shardgate: bad INSERT row spans"))
                .await;
        };
        self.fan_out(rt, writes, fanout::Mode::Sequential).await
    }

    pub(super) async fn broadcast(
        &mut self,
        rt: &Runtime,
        targets: Vec<Target>,
        payload: &Bytes,
    ) -> Answered {
        if self.in_transaction() {
            return self
                .send_error(&ProxyError::in_transaction(
                    "shardgate: a statement for every shard (DDL or a reference-table write) cannot run inside a transaction; COMMIT first",
                ))
                .await;
        }
        let writes = targets
            .into_iter()
            .map(|target| fanout::ShardWrite {
                target,
                payload: payload.to_vec(),
            })
            .collect();
        self.fan_out(rt, writes, fanout::Mode::ParallelClusters)
            .await
    }

    async fn fan_out(
        &mut self,
        rt: &Runtime,
        writes: Vec<fanout::ShardWrite>,
        mode: fanout::Mode,
    ) -> Answered {
        let mut cursor = SessionCursor { session: self, rt };
        let result = fanout::run(&mut cursor, writes, mode).await;
        match result.err_payload() {
            Some(err) => self.send_raw(&err).await,
            None => {
                if result.total.last_insert_id != 0 {
                    self.last_insert_id = result.total.last_insert_id;
                }
                self.send_ok(result.total).await
            }
        }
    }

    /// Several statements in one COM_QUERY: they must all go to one backend.
    pub(super) async fn multi(
        &mut self,
        rt: &Runtime,
        stmts: &[StatementPlan],
        payload: Bytes,
    ) -> Answered {
        let vs = &rt.vschema;
        let mut target: Option<Target> = None;
        let mut target_is_any = false;
        let mut effects = Effects::default();
        for s in stmts {
            if matches!(s.kind, StatementKind::Use(_)) {
                return self
                    .send_error(&ProxyError::not_supported(
                        "USE inside a multi-statement query",
                    ))
                    .await;
            }
            effects = merge(effects, &s.effects);
            let t = match router::route(vs, &self.ctx, s) {
                Ok(d @ (Dispatch::Single(_) | Dispatch::AnyShard { .. })) => {
                    match self.one_target(vs, d, s) {
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
            .filter_map(|s| {
                let r = (1 + s.span.start)..(1 + s.span.end);
                (r.end <= payload.len()).then(|| payload.slice(r))
            })
            .collect();
        match self.relay_whole(rt, &target, &payload, true).await {
            Err(answered) => answered,
            Ok((mut lease, outcome)) => {
                if !sets.is_empty() {
                    if outcome.error {
                        // Some settings may have applied: this connection's state is
                        // unknown, so it stays with the session and is never pooled.
                        effects.reserve = effects.reserve.union(planner::Reserve::UNKNOWN);
                    } else {
                        for s in sets {
                            self.vars.push(s);
                        }
                        lease.conn().state_hash = self.vars.hash;
                    }
                }
                self.put_back(target, lease, &effects);
                Answered::Done
            }
        }
    }
}

/// The effects of several statements run as one query.
fn merge(a: Effects, b: &Effects) -> Effects {
    Effects {
        reserve: a.reserve.without(b.clears).union(b.reserve),
        clears: a.clears.without(b.reserve).union(b.clears),
        reads_insert_id: a.reads_insert_id || b.reads_insert_id,
        reads_diagnostics: a.reads_diagnostics || b.reads_diagnostics,
        calc_found_rows: a.calc_found_rows || b.calc_found_rows,
        changes_globals: a.changes_globals || b.changes_globals,
    }
}
