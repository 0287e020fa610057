//! The execution primitives a plan is made of, in the manner of a query engine: each
//! one a small piece with its own tests, so a new query shape is a new primitive, not a
//! new branch in the session.
//!
//! - routing one statement to one shard and relaying its answer raw is the session's
//!   own path ([`crate::session`]), because it is the hot path and needs nothing more;
//! - [`split_insert`]: one multi-row `INSERT` whose rows span shards becomes one
//!   `INSERT` per shard;
//! - [`fanout`]: one statement or one payload per shard, run on several shards
//!   (sequentially, or in parallel across clusters) with the OK packets summed and a
//!   failure that names what was applied and what was not.
//!
//! Primitives reach backends through a [`Cursor`], which the session implements: it
//! hands out connections already brought to the session's state and takes them back.

pub mod fanout;
pub mod split_insert;

use crate::backend::{Collected, Lease};
use crate::error::ProxyError;
use crate::router::Target;

/// Why a primitive could not get or use a backend connection.
#[derive(Debug)]
pub enum Failure {
    /// The backend answered with an ERR (relayed with shard context).
    Backend(Collected),
    /// shardgate's own error (cluster unavailable, connection lost, ...).
    Proxy(ProxyError),
}

/// How primitives get backend connections from the session that runs them.
#[allow(async_fn_in_trait)]
pub trait Cursor {
    /// A connection to `target`, in the session's database and session state.
    async fn ready(&mut self, target: &Target) -> Result<Lease, Failure>;

    /// Takes a connection back after the primitive used it.
    fn done(&mut self, target: Target, lease: Lease);

    /// How long one part may run on its shard (None: no limit), so a hung cluster
    /// holds a statement sent to several shards no longer than one sent to it alone.
    fn part_deadline(&self) -> Option<std::time::Duration> {
        None
    }
}
