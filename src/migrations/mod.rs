//! The migration queue: DDL sent through shardgate is never run blindly. It is queued
//! durably (a sidecar schema on each cluster), and run per cluster by one executor at a
//! time with a safe strategy, a concurrency limit and a throttle driven by the
//! cluster's health.
//!
//! - [`strategy`]: which strategy a change needs (copy unless provably instant).
//! - [`copy`]: the online copy-table engine (ghost table, triggers, chunked copy with
//!   checkpoints, checksum, atomic cut-over).
//! - [`store`]: the durable queue in `_shardgate.schema_migrations`.
//! - [`executor`]: one runner per cluster: ownership lock, limits, throttle, control.

pub mod copy;
pub mod executor;
pub mod store;
pub mod strategy;

/// How a migration changes the table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Strategy {
    /// Online copy: ghost table, triggers, chunked copy, checksum, atomic rename.
    Copy,
    /// `ALGORITHM=INSTANT` with a short lock wait; never falls back to a copy.
    Instant,
    /// The statement as written (admin only), still serialized through the queue.
    Direct,
}

impl Strategy {
    /// Name as stored and shown (`copy`, `instant`, `direct`).
    pub fn as_str(&self) -> &'static str {
        match self {
            Strategy::Copy => "copy",
            Strategy::Instant => "instant",
            Strategy::Direct => "direct",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Strategy> {
        match s {
            "copy" => Some(Strategy::Copy),
            "instant" => Some(Strategy::Instant),
            "direct" => Some(Strategy::Direct),
            _ => None,
        }
    }
}

/// Where a migration is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    /// Waiting for its turn.
    Queued,
    /// Being run by an executor.
    Running,
    /// Done; the table has its new schema.
    Complete,
    /// Stopped by an error; the original table is untouched (RETRY runs it again).
    Failed,
    /// Stopped by an admin; nothing of it is left (no ghost table, no triggers).
    Cancelled,
    /// Held by an admin (RESUME continues it from its checkpoint).
    Paused,
}

impl Status {
    /// Name as stored and shown.
    pub fn as_str(&self) -> &'static str {
        match self {
            Status::Queued => "queued",
            Status::Running => "running",
            Status::Complete => "complete",
            Status::Failed => "failed",
            Status::Cancelled => "cancelled",
            Status::Paused => "paused",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "queued" => Some(Status::Queued),
            "running" => Some(Status::Running),
            "complete" => Some(Status::Complete),
            "failed" => Some(Status::Failed),
            "cancelled" => Some(Status::Cancelled),
            "paused" => Some(Status::Paused),
            _ => None,
        }
    }

    /// Whether the migration will not change any more by itself.
    pub fn is_final(&self) -> bool {
        matches!(self, Status::Complete | Status::Failed | Status::Cancelled)
    }
}

/// What an admin asks of a migration (`ALTER MIGRATION 'uuid' ...`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Stop at the next chunk boundary, keep everything for RESUME.
    Pause,
    /// Continue a paused migration from its checkpoint.
    Resume,
    /// Stop and remove the ghost table and triggers; the original is untouched.
    Cancel,
    /// Run a failed or cancelled migration again from the start.
    Retry,
    /// Cut over a migration whose completion was postponed.
    Complete,
}

/// One logical DDL statement on one target database, as it is queued (one row of the
/// queue; [`store::MigrationRow`] adds its state).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewMigration {
    /// Shared by all rows of one logical DDL (what the client gets back).
    pub uuid: String,
    /// Keyspace the statement was sent to.
    pub keyspace: String,
    /// Shard name (or workspace database) this row is for.
    pub shard: String,
    /// Cluster that runs it (as named in the vschema when it was queued).
    pub cluster: String,
    /// Database on that cluster.
    pub database: String,
    /// Table it changes.
    pub table: String,
    /// The statement exactly as the client sent it.
    pub statement: String,
    /// Chosen strategy.
    pub strategy: Strategy,
    /// Wait for `ALTER MIGRATION ... COMPLETE` before cutting over.
    pub postpone_completion: bool,
}
