//! Idle limits: a session that sends nothing for too long is ended.
//!
//! Two limits, the shorter one applies: `idle_transaction_timeout` while the session
//! holds a reserved backend connection (an open transaction, locks, temporary tables:
//! state that pins a pool slot and, for a transaction, row locks on the backend), and
//! `wait_timeout` always, as MySQL's own. The session's end closes its reserved
//! connections, so the backend rolls the transaction back and the pool slot is freed.
//!
//! A session may also set its own `wait_timeout` (`SET wait_timeout = 1`): shardgate
//! keeps the number and ends the session after that long without a command, closing
//! it without a word as MariaDB does (the client sees 2006/2013 on its next command).
//!
//! **How a limit is kept.** A session waiting for a command arms no timer of its own:
//! it writes when its wait would pass the limit into its registry entry
//! (`SessionHandle::idle_deadline`, on the coarse [`IdleClock`]), and one watcher on
//! the main runtime ([`watch_idle`]) advances that clock every [`IDLE_TICK`] and
//! raises the session's `IDLE` signal once its deadline is behind. The session then
//! reads its own clock: past the limit it ends, else (the coarse clock runs up to a tick
//! behind) it waits on and is told again at a later tick. A limit is so kept to about
//! a tick late, and the session workers' runtimes hold no timers at all: their polls of
//! the kernel wait without a timeout, and a statement costs no timer-wheel work.
//!
//! For shardgate's own limits, the client gets `ERROR 1927 (70100) Connection was killed: ...` before the close:
//! MariaDB's answer to a connection that was killed, which the backends behind
//! shardgate would send themselves. MySQL 8's `ER_CLIENT_INTERACTION_TIMEOUT` (4031)
//! was not used: in MariaDB 4031 is an unrelated error (a missing trigger). The packet
//! has sequence id 1, so a client that sends its next command before it notices the
//! close reads it as that command's answer.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::error::ProxyError;
use crate::frontdoor::LogSafe;
use crate::planner::lex::{self, Tok};

use super::Session;

/// The idle limit in force while the session waits for its next command.
#[derive(Debug, Clone, Copy)]
pub(super) struct IdleLimit {
    /// How long the session may stay silent.
    pub after: Duration,
    /// Whether it is the limit for sessions holding a reserved connection.
    pub reserved: bool,
    /// Whether it is the session's own `wait_timeout` (`SET wait_timeout = n`): then
    /// the connection is closed without a word, as MariaDB closes it.
    pub own: bool,
}

/// How often [`watch_idle`] advances the [`IdleClock`] and looks at the sessions.
pub const IDLE_TICK: Duration = Duration::from_millis(100);

/// Milliseconds since the proxy started, as of the idle watcher's last tick: read by a
/// session with one load instead of a clock reading.
pub struct IdleClock {
    epoch: Instant,
    now: AtomicU64,
}

impl Default for IdleClock {
    fn default() -> IdleClock {
        IdleClock {
            epoch: Instant::now(),
            now: AtomicU64::new(0),
        }
    }
}

impl IdleClock {
    /// Its time now (up to one tick behind the real one).
    pub fn now(&self) -> u64 {
        self.now.load(Ordering::Relaxed)
    }

    /// Its time `after` from now.
    pub fn after(&self, after: Duration) -> u64 {
        let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
        self.now().saturating_add(after)
    }

    /// Reads the real clock into it; returns its new time.
    fn advance(&self) -> u64 {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.now.store(now, Ordering::Relaxed);
        now
    }
}

/// Advances the [`IdleClock`] every `IDLE_TICK` (100 ms) and signals the sessions whose idle
/// deadline passed (see the module docs), until `stop` turns true.
pub async fn watch_idle(shared: Arc<crate::shared::Shared>, mut stop: watch::Receiver<bool>) {
    let mut tick = crate::timer::interval(IDLE_TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        let now = shared.idle_clock.advance();
        shared.signal_idle_sessions(now);
    }
}

/// The session `wait_timeout` a `SET` statement assigns: `Some(Some(secs))` for an
/// integer, `Some(None)` for `DEFAULT`, None when it assigns none (or a global one,
/// or an expression shardgate does not evaluate: then the backend keeps it, as
/// before).
pub(super) fn assigned_wait_timeout(sql: &str) -> Option<Option<u64>> {
    // Every successful SET comes here: lex only the ones that can mention it.
    let named = sql
        .as_bytes()
        .windows(12)
        .any(|w| w.eq_ignore_ascii_case(b"wait_timeout"));
    if !named {
        return None;
    }
    let toks = lex::lex(sql).tokens;
    let mut found = None;
    for (i, t) in toks.iter().enumerate() {
        if !t.is_kw(sql, "WAIT_TIMEOUT") {
            continue;
        }
        let before = |k: usize| i.checked_sub(k).and_then(|j| toks.get(j));
        let global = before(1).is_some_and(|p| p.is_kw(sql, "GLOBAL"))
            || (before(1).is_some_and(|p| p.is_punct(b'.'))
                && before(2).is_some_and(|p| p.is_kw(sql, "GLOBAL")));
        let Some(op) = toks.get(i + 1) else { continue };
        let assigns = op.is_punct(b'=') || (op.kind == Tok::Op && op.text(sql) == ":=");
        if global || !assigns {
            continue;
        }
        match toks.get(i + 2) {
            Some(v) if v.kind == Tok::Num => {
                found = v.text(sql).parse::<u64>().ok().map(Some);
            }
            Some(v) if v.is_kw(sql, "DEFAULT") => found = Some(None),
            _ => {}
        }
    }
    found
}

impl Session {
    /// The limit on the wait for the next command (None: no limit).
    pub(super) fn idle_limit(&self) -> Option<IdleLimit> {
        let limits = &self.shared.config.limits;
        let configured = limits.wait_timeout.map(|after| IdleLimit {
            after,
            reserved: false,
            own: false,
        });
        let own = self.own_wait_timeout.map(|after| IdleLimit {
            after,
            reserved: false,
            own: true,
        });
        let plain = match (configured, own) {
            (Some(c), Some(o)) if c.after <= o.after => Some(c),
            (c, None) => c,
            (_, o) => o,
        };
        let reserved = limits
            .idle_transaction_timeout
            .filter(|_| self.held.iter().any(|h| h.reserved()))
            .map(|after| IdleLimit {
                after,
                reserved: true,
                own: false,
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
        if limit.own {
            tracing::info!(session = self.id, user = %LogSafe(&self.user), secs,
                "session ended by its own wait_timeout");
            return;
        }
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
        let _ = crate::timer::timeout(Duration::from_secs(1), self.send_error(&e)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::assigned_wait_timeout as w;

    #[test]
    fn finds_the_sessions_own_wait_timeout() {
        assert_eq!(w("SET wait_timeout=1"), Some(Some(1)));
        assert_eq!(w("SET SESSION wait_timeout = 30"), Some(Some(30)));
        assert_eq!(
            w("set @@session.wait_timeout := 5, names utf8mb4"),
            Some(Some(5))
        );
        assert_eq!(w("SET @@wait_timeout = DEFAULT"), Some(None));
        assert_eq!(w("SET GLOBAL wait_timeout = 3"), None);
        assert_eq!(w("SET @@global.wait_timeout = 3"), None);
        assert_eq!(w("SET wait_timeout = @x"), None);
        assert_eq!(w("SET names utf8mb4"), None);
        assert_eq!(w("SET @v = 'wait_timeout = 3'"), None);
    }
}
