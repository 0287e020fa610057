//! What a session remembers between statements: the session variables it replays on
//! every backend connection that serves it, the connections it keeps (and why), and its
//! `@@ddl_*` settings.

use std::time::Duration;

use bytes::Bytes;

use crate::backend::{Lease, Reserve};
use crate::migrations::Strategy;
use crate::protocol::status;
use crate::router::Target;

/// Session statements replayed on every backend connection that serves the session.
#[derive(Default)]
pub(super) struct SessionVars {
    pub statements: Vec<Bytes>,
    /// A digest of `statements` (0: none), stored on each connection they were replayed
    /// on, so a connection already in this state is used as it is.
    pub hash: u64,
}

impl SessionVars {
    pub fn push(&mut self, stmt: Bytes) {
        self.statements.push(stmt);
        self.rehash();
    }

    pub fn set_autocommit(&mut self, on: bool) {
        self.statements
            .retain(|s| !s.starts_with(b"SET autocommit="));
        if !on {
            self.statements
                .push(Bytes::from_static(b"SET autocommit=0"));
        }
        self.rehash();
    }

    pub fn clear(&mut self) {
        self.statements.clear();
        self.hash = 0;
    }

    fn rehash(&mut self) {
        use std::hash::{Hash, Hasher};
        if self.statements.is_empty() {
            self.hash = 0;
            return;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        self.statements.hash(&mut h);
        self.hash = h.finish() | 1;
    }
}

/// A backend connection the session keeps between statements.
///
/// It is kept while the connection holds state of the session's (a transaction, or a
/// [`Reserve`] reason recorded on the connection itself): a *reserved* connection,
/// given back only once that state is gone. Or it is kept only until the session's
/// next statement, because the statement that ran on it left something a follow-up
/// may ask about (warnings, an error, `SQL_CALC_FOUND_ROWS`).
pub(super) struct Held {
    pub target: Target,
    pub lease: Lease,
    /// Kept only for a question about the statement that ran on it.
    pub diagnostics: bool,
    /// The statement number that put it here.
    pub kept_at: u64,
}

impl Held {
    /// Whether the connection holds session state (a transaction, or reserved state).
    pub fn reserved(&self) -> bool {
        let c = self.lease.conn_ref();
        c.status & status::IN_TRANS != 0 || !c.reserve.is_empty()
    }

    /// Why it is reserved, for messages (`transaction, temporary table`).
    pub fn why(&self) -> Reserve {
        let c = self.lease.conn_ref();
        if c.status & status::IN_TRANS != 0 {
            c.reserve.union(Reserve::TRANSACTION)
        } else {
            c.reserve
        }
    }
}

/// The session's `@@ddl_*` settings.
#[derive(Debug, Clone, Default)]
pub(super) struct DdlSettings {
    /// `SET @@ddl_wait`: how long a queued DDL statement blocks for its outcome.
    pub wait: Option<Duration>,
    /// `SET @@ddl_strategy`: a strategy forced on this session's queued changes.
    pub strategy: Option<Strategy>,
    /// `SET @@ddl_postpone_completion`.
    pub postpone: bool,
}

/// A lease [`Session::ready_now`](super::Session::ready_now) took but could not hand
/// out as it was.
pub(super) struct Taken {
    pub lease: Lease,
    /// The session kept no connection on the target's cluster before.
    pub from_pool: bool,
    /// The session's state on that cluster before.
    pub stateful: Reserve,
}

/// What [`Session::run_outgoing`](super::Session::run_outgoing) sends. A prepared
/// statement's binding is boxed: every text statement's future holds an `Outgoing`,
/// twice, and moves it.
pub(super) enum Outgoing {
    /// A command as it is.
    Raw(Bytes),
    /// A prepared statement's execute, bound on the connection first.
    Execute(Box<super::prepared_exec::BoundExecute>),
    /// A prepared statement's bulk execute, bound the same way.
    Bulk(Box<super::prepared_bulk::BoundBulk>),
}
