//! Deadlock victims sent again. When InnoDB picks a statement's transaction as the
//! victim of a deadlock it rolls the whole transaction back and answers ERROR 1213. For
//! a statement that ran alone in autocommit that transaction was the statement itself:
//! nothing of it stays, and the usual cure is to run it again, which every application
//! would otherwise have to do. shardgate does it on the same backend connection, after a
//! short random pause, before the client sees anything.
//!
//! Only when sending it again is the same as the client sending it again
//! ([`Session::deadlock_retries`]): no state of the session's on that cluster (no
//! transaction open or pending, `autocommit` on, no one-shot `SET TRANSACTION`, no
//! reserved connection), a plain `SELECT`/`INSERT`/`REPLACE`/`UPDATE`/`DELETE` that
//! leaves no state and reads no diagnostics or insert id, as a text query or a prepared
//! execute without long data, and an answer that is the ERR alone (the relay holds it
//! back only then: see [`BackendConn::relay_command`]). The last try's answer is relayed
//! as any answer is, so a client whose every try deadlocked gets the backend's last ERR
//! as it came. The rules for users: `docs/sessions.md#deadlock-victims`.

use std::time::Duration;

use rand::Rng;

use super::state::Outgoing;
use super::Session;
use crate::backend::{BackendConn, BackendError, Reserve};
use crate::planner::{StatementKind, StatementPlan};
use crate::protocol::command;
use crate::protocol::relay::{Outcome, ResponseKind};

/// Shortest and longest pause before a try, in microseconds: the first try waits
/// 2-10 ms, each later one up to twice as long, never over 30 ms. Long enough for the
/// other transaction of the deadlock to get its locks; random, so two victims of one
/// deadlock do not meet again in step.
const PAUSE_FLOOR_US: u64 = 2_000;
const PAUSE_FIRST_MAX_US: u64 = 10_000;
const PAUSE_MAX_US: u64 = 30_000;

/// How a statement that was sent again after a deadlock ended (the metric's `result`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum RetryEnd {
    /// A later try was answered without an error.
    Ok,
    /// A later try ended in another error, the backend was lost, or the query timeout
    /// fired.
    Error,
    /// Every try deadlocked: the client got the last ERR.
    GaveUp,
}

impl RetryEnd {
    fn label(self) -> &'static str {
        match self {
            RetryEnd::Ok => "retried_ok",
            RetryEnd::Error => "retried_error",
            RetryEnd::GaveUp => "gave_up",
        }
    }
}

/// The pause before try number `retry` (1 for the first one sent again).
fn pause(retry: u32) -> Duration {
    let shift = retry.saturating_sub(1).min(8);
    let max = (PAUSE_FIRST_MAX_US << shift).min(PAUSE_MAX_US);
    let min = (PAUSE_FLOOR_US * u64::from(retry)).min(max);
    Duration::from_micros(rand::thread_rng().gen_range(min..=max))
}

impl Session {
    /// How many times `stmt` may be sent again if its answer is a lone deadlock ERR:
    /// `pool.deadlock_retries` when running it again is the same as the first run,
    /// else 0. `stateful` is the session's state on the target's cluster
    /// ([`state_on`](Self::state_on)); only a few fields are read, on every statement.
    pub(super) fn deadlock_retries(
        &self,
        stateful: Reserve,
        outgoing: &Outgoing,
        kind: ResponseKind,
        stmt: &StatementPlan,
    ) -> u32 {
        let configured = self.shared.config.pool.deadlock_retries;
        if configured == 0 || kind != ResponseKind::Query {
            return 0;
        }
        let same_command = match outgoing {
            Outgoing::Raw(p) => p.first() == Some(&command::QUERY),
            // The server forgets long data after one execute: a second one would run
            // with different values.
            Outgoing::Execute(x) => x.long_data.is_empty(),
            // A bulk keeps the rows before a failing one, autocommit or not.
            Outgoing::Bulk(_) => false,
        };
        let fx = &stmt.effects;
        let plain = matches!(
            stmt.kind,
            StatementKind::Select
                | StatementKind::Insert(_)
                | StatementKind::Update
                | StatementKind::Delete
        ) && fx.reserve.is_empty()
            && !fx.reads_insert_id
            && !fx.reads_diagnostics
            && !fx.changes_globals;
        // A pending BEGIN or one-shot SET TRANSACTION would be started with the first
        // try only: the second would run outside them.
        let alone =
            stateful.is_empty() && self.pending_begin.is_none() && self.pending_once.is_empty();
        if same_command && plain && alone {
            configured
        } else {
            0
        }
    }

    /// Relays the answer to `payload` on `conn`. While the answer is a lone deadlock ERR
    /// and fewer than `retries` tries were sent again, it is held back: after a short
    /// random pause the command goes again on the same connection. `retried` counts
    /// the tries sent again, for a caller whose timeout cut this short. `first`: the
    /// first try's answer when the caller sent it (see `run_attempt`).
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn relay_retrying_deadlocks(
        &mut self,
        conn: &mut BackendConn,
        payload: &[u8],
        kind: ResponseKind,
        cluster: &str,
        retries: u32,
        retried: &mut u32,
        mut first: Option<Outcome>,
    ) -> Result<Outcome, BackendError> {
        let max_packet = self.shared.config.max_packet_size;
        let result = loop {
            let hold = *retried < retries;
            let r = match first.take() {
                // The first try's answer, relayed (or held) by the caller.
                Some(o) if o.held => Ok(o),
                Some(o) => {
                    conn.after_first_answer(o, &mut self.client, max_packet, cluster)
                        .await
                }
                None => {
                    conn.relay_command(payload, kind, &mut self.client, max_packet, cluster, hold)
                        .await
                }
            };
            match r {
                Ok(outcome) if outcome.held => {
                    *retried += 1;
                    let wait = pause(*retried);
                    tracing::info!(
                        session = self.id,
                        cluster,
                        table = self.statement_table().as_deref().unwrap_or("(none)"),
                        retry = *retried,
                        wait_ms = wait.as_secs_f64() * 1000.0,
                        "autocommit statement was a deadlock's victim (1213, rolled back); sending it again"
                    );
                    // Boxed: only this rare path pays for the timer's room.
                    Box::pin(crate::timer::sleep(wait)).await;
                }
                other => break other,
            }
        };
        if *retried > 0 {
            let end = match &result {
                Ok(o) if !o.error => RetryEnd::Ok,
                Ok(_) if conn.deadlocked() => RetryEnd::GaveUp,
                _ => RetryEnd::Error,
            };
            self.count_deadlock_retry(cluster, end);
        }
        result
    }

    /// Counts a statement sent again after a deadlock, by how it ended.
    pub(super) fn count_deadlock_retry(&self, cluster: &str, end: RetryEnd) {
        let table = self.statement_table();
        self.shared
            .metrics
            .record_deadlock_retry(cluster, table.as_deref(), end.label());
    }

    /// The first table the running statement names, read again from its text (the one
    /// the registry shows; a prepared execute's with its values).
    fn statement_table(&self) -> Option<String> {
        let text = self.handle.activity().statement?;
        crate::planner::first_table(&crate::planner::sql_text(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_are_short_grow_per_try_and_stay_bounded() {
        for _ in 0..200 {
            let first = pause(1);
            assert!((2..=10).contains(&first.as_millis()), "{first:?}");
            let second = pause(2);
            assert!((4..=20).contains(&second.as_millis()), "{second:?}");
            for retry in 3..=40 {
                let p = pause(retry);
                assert!(p <= Duration::from_millis(30), "{retry}: {p:?}");
                assert!(p >= Duration::from_millis(6), "{retry}: {p:?}");
            }
        }
    }
}
