//! Idle limits: a session that sends nothing for too long is ended.
//!
//! Two limits, the shorter one applies: `idle_transaction_timeout` while the session
//! holds a reserved backend connection (an open transaction, locks, temporary tables:
//! state that pins a pool slot and, for a transaction, row locks on the backend), and
//! `wait_timeout` always, as MySQL's own. The session's end closes its reserved
//! connections, so the backend rolls the transaction back and the pool slot is freed.
//!
//! The client gets `ERROR 1927 (70100) Connection was killed: ...` before the close:
//! MariaDB's answer to a connection that was killed, which the backends behind
//! shardgate would send themselves. MySQL 8's `ER_CLIENT_INTERACTION_TIMEOUT` (4031)
//! was not used: in MariaDB 4031 is an unrelated error (a missing trigger). The packet
//! has sequence id 1, so a client that sends its next command before it notices the
//! close reads it as that command's answer.

use std::time::Duration;

use crate::error::ProxyError;
use crate::frontdoor::LogSafe;

use super::Session;

/// The idle limit in force while the session waits for its next command.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdleLimit {
    /// How long the session may stay silent.
    pub after: Duration,
    /// Whether it is the limit for sessions holding a reserved connection.
    pub reserved: bool,
}

impl Session {
    /// The limit on the wait for the next command (None: no limit).
    pub(super) fn idle_limit(&self) -> Option<IdleLimit> {
        let limits = &self.shared.config.limits;
        let plain = limits.wait_timeout.map(|after| IdleLimit {
            after,
            reserved: false,
        });
        let reserved = limits
            .idle_transaction_timeout
            .filter(|_| self.held.iter().any(|h| h.reserved()))
            .map(|after| IdleLimit {
                after,
                reserved: true,
            });
        match (plain, reserved) {
            (Some(p), Some(r)) if p.after < r.after => Some(p),
            (p, None) => p,
            (_, r) => r,
        }
    }

    /// Tells the client why its session ends; the caller then ends it.
    pub(super) async fn end_idle(&mut self, limit: IdleLimit) {
        let secs = limit.after.as_secs_f64();
        let e = if limit.reserved {
            let why = self
                .held
                .iter()
                .filter(|h| h.reserved())
                .map(|h| h.why().describe())
                .collect::<Vec<_>>()
                .join(", ");
            ProxyError::idle_session_ended(format!(
                "shardgate ended this session after {secs}s without a command while it \
                 held a backend connection ({why}; idle_transaction_timeout_ms): an open \
                 transaction is rolled back"
            ))
        } else {
            ProxyError::idle_session_ended(format!(
                "shardgate ended this session after {secs}s without a command (wait_timeout_s)"
            ))
        };
        tracing::info!(session = self.id, user = %LogSafe(&self.user), reserved = limit.reserved,
            "idle session ended");
        let _ = tokio::time::timeout(Duration::from_secs(1), self.send_error(&e)).await;
    }
}
