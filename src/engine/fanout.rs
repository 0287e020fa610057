//! Runs one payload per shard on several shards and merges their OK packets: DDL and
//! reference-table writes sent to every shard, and the parts of a split `INSERT`.
//!
//! Two modes:
//! - [`Mode::Sequential`]: in the given order, stopping at the first failure (a split
//!   `INSERT`, whose summary promises "the shards before it keep their rows");
//! - [`Mode::ParallelClusters`]: every cluster at once, one connection per cluster, the
//!   shards of one cluster in order on it (a broadcast: its latency is the slowest
//!   cluster's, not the sum of all). A cluster stops at its first failure; the others go
//!   on, and the failure names what was applied and what was not attempted.

use bytes::BytesMut;

use crate::backend::{BackendError, Collected, Lease};
use crate::error::ProxyError;
use crate::protocol::relay::ResponseKind;
use crate::protocol::wire::{self, OkInfo};
use crate::router::Target;

use super::{Cursor, Failure};

/// One shard's part of a multi-shard statement.
#[derive(Debug, Clone)]
pub struct ShardWrite {
    /// Where it runs.
    pub target: Target,
    /// The COM_QUERY payload (command byte included).
    pub payload: Vec<u8>,
}

/// How the parts run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// One after another in the given order; stop at the first failure.
    Sequential,
    /// All clusters at once; within a cluster, in the given order.
    ParallelClusters,
}

/// What happened on each shard.
#[derive(Debug)]
pub struct Fanout {
    /// The OK packets summed: affected rows and warnings added, the last-insert id of
    /// the first part (in the given order) that reported one.
    pub total: OkInfo,
    /// Labels of the shards that applied their part, in the given order.
    pub applied: Vec<String>,
    /// The first failure in the given order, if any.
    pub failure: Option<ShardFailure>,
    /// Labels of the shards whose part was never sent.
    pub not_attempted: Vec<String>,
}

/// A shard's failure during a multi-shard statement.
#[derive(Debug)]
pub struct ShardFailure {
    /// The shard.
    pub target: Target,
    /// What went wrong.
    pub failure: Failure,
}

impl Fanout {
    /// The ERR packet payload for a failed fan-out: the backend's code and SQLSTATE (or
    /// shardgate's), with the shard and cluster named and what was and was not applied.
    pub fn err_payload(&self) -> Option<BytesMut> {
        let f = self.failure.as_ref()?;
        let (code, state, message) = match &f.failure {
            Failure::Backend(c) => {
                let e = c.err()?;
                let mut state = *b"HY000";
                if e.sqlstate.len() == 5 {
                    state.copy_from_slice(e.sqlstate.as_bytes());
                }
                (e.code, state, e.message)
            }
            Failure::Proxy(e) => (e.code, e.sqlstate, e.message.clone()),
        };
        let mut msg = format!(
            "shard {} (cluster {}): {}",
            f.target.label, f.target.cluster, message
        );
        if !self.applied.is_empty() {
            msg.push_str(&format!(
                " [already applied on: {}]",
                self.applied.join(", ")
            ));
        }
        if !self.not_attempted.is_empty() {
            msg.push_str(&format!(
                " [not attempted on: {}]",
                self.not_attempted.join(", ")
            ));
        }
        Some(wire::err_payload(code, &state, &msg))
    }
}

/// Result of one part.
enum Part {
    Applied(OkInfo),
    Failed(Failure),
    NotAttempted,
}

/// Runs `writes` through connections from `cursor`.
pub async fn run<C: Cursor>(cursor: &mut C, writes: Vec<ShardWrite>, mode: Mode) -> Fanout {
    let parts = match mode {
        Mode::Sequential => sequential(cursor, &writes).await,
        Mode::ParallelClusters => parallel(cursor, &writes).await,
    };
    let mut out = Fanout {
        total: OkInfo::default(),
        applied: Vec::new(),
        failure: None,
        not_attempted: Vec::new(),
    };
    for (w, part) in writes.into_iter().zip(parts) {
        match part {
            Part::Applied(ok) => {
                out.total.affected_rows += ok.affected_rows;
                if out.total.last_insert_id == 0 {
                    out.total.last_insert_id = ok.last_insert_id;
                }
                out.total.warnings = out.total.warnings.saturating_add(ok.warnings);
                out.applied.push(w.target.label.into());
            }
            Part::Failed(failure) if out.failure.is_none() => {
                out.failure = Some(ShardFailure {
                    target: w.target,
                    failure,
                });
            }
            // A later failure on another cluster: it was attempted and did not apply.
            Part::Failed(_) => {}
            Part::NotAttempted => out.not_attempted.push(w.target.label.into()),
        }
    }
    out
}

async fn sequential<C: Cursor>(cursor: &mut C, writes: &[ShardWrite]) -> Vec<Part> {
    let mut parts = Vec::with_capacity(writes.len());
    for w in writes {
        if parts.iter().any(|p| matches!(p, Part::Failed(_))) {
            parts.push(Part::NotAttempted);
            continue;
        }
        let mut lease = match cursor.ready(&w.target).await {
            Ok(l) => l,
            Err(f) => {
                parts.push(Part::Failed(f));
                continue;
            }
        };
        let part = exec(&mut lease, w, cursor.part_deadline()).await;
        cursor.done(w.target.clone(), lease);
        parts.push(part);
    }
    parts
}

async fn parallel<C: Cursor>(cursor: &mut C, writes: &[ShardWrite]) -> Vec<Part> {
    // Group by cluster, keeping the given order inside each group.
    let mut groups: Vec<(String, Vec<usize>)> = Vec::new();
    for (i, w) in writes.iter().enumerate() {
        match groups.iter_mut().find(|(c, _)| *c == w.target.cluster) {
            Some((_, members)) => members.push(i),
            None => groups.push((w.target.cluster.to_string(), vec![i])),
        }
    }
    // One connection per cluster, taken before anything runs: if one cluster cannot
    // serve, nothing is applied anywhere.
    let mut leases: Vec<Lease> = Vec::with_capacity(groups.len());
    for (_, members) in &groups {
        match cursor.ready(&writes[members[0]].target).await {
            Ok(l) => leases.push(l),
            Err(f) => {
                for (lease, (_, m)) in leases.into_iter().zip(&groups) {
                    cursor.done(writes[m[0]].target.clone(), lease);
                }
                let failed = members[0];
                return (0..writes.len())
                    .map(|i| {
                        if i == failed {
                            Part::Failed(clone_failure(&f))
                        } else {
                            Part::NotAttempted
                        }
                    })
                    .collect();
            }
        }
    }
    let mut tasks = Vec::with_capacity(groups.len());
    let deadline = cursor.part_deadline();
    for (lease, (_, members)) in leases.into_iter().zip(&groups) {
        let group: Vec<ShardWrite> = members.iter().map(|&i| writes[i].clone()).collect();
        tasks.push(tokio::spawn(async move {
            let mut lease = lease;
            let mut parts = Vec::with_capacity(group.len());
            for w in &group {
                if parts.iter().any(|p| matches!(p, Part::Failed(_))) {
                    parts.push(Part::NotAttempted);
                    continue;
                }
                parts.push(exec(&mut lease, w, deadline).await);
            }
            (lease, parts)
        }));
    }
    let mut parts: Vec<Option<Part>> = (0..writes.len()).map(|_| None).collect();
    for (task, (_, members)) in tasks.into_iter().zip(&groups) {
        match task.await {
            Ok((lease, group_parts)) => {
                cursor.done(writes[members[0]].target.clone(), lease);
                for (&i, p) in members.iter().zip(group_parts) {
                    parts[i] = Some(p);
                }
            }
            Err(e) => {
                for &i in members {
                    parts[i] = Some(Part::Failed(Failure::Proxy(ProxyError::internal(format!(
                        "shardgate: a shard's part stopped unexpectedly: {e}"
                    )))));
                }
            }
        }
    }
    parts
        .into_iter()
        .map(|p| p.unwrap_or(Part::NotAttempted))
        .collect()
}

/// Runs one part on a connection within `deadline`; a part cut off by it leaves its
/// connection broken (never pooled) and fails with the statement-timeout error.
async fn exec(lease: &mut Lease, w: &ShardWrite, deadline: Option<std::time::Duration>) -> Part {
    let Some(limit) = deadline else {
        return exec_part(lease, w).await;
    };
    match crate::timer::timeout(limit, exec_part(lease, w)).await {
        Ok(part) => part,
        Err(_) => {
            lease.conn().broken = true;
            Part::Failed(Failure::Proxy(ProxyError::query_timeout(
                &w.target.cluster,
                limit.as_secs_f64(),
            )))
        }
    }
}

/// Runs one part on a connection, switching its database to the part's if needed.
async fn exec_part(lease: &mut Lease, w: &ShardWrite) -> Part {
    let cluster = &w.target.cluster;
    let lost = |e: BackendError| Part::Failed(Failure::Proxy(ProxyError::lost_backend(cluster, e)));
    let conn = lease.conn();
    if let Some(db) = &w.target.database {
        if conn.database.as_deref() != Some(db) {
            match conn.init_db(db).await {
                Ok(Ok(())) => {}
                Ok(Err(c)) => return Part::Failed(Failure::Backend(c)),
                Err(e) => return lost(e),
            }
        }
    }
    match conn.exec(&w.payload, ResponseKind::Query).await {
        Ok(c) if c.outcome.error => Part::Failed(Failure::Backend(c)),
        Ok(c) => Part::Applied(c.outcome.ok.unwrap_or_default()),
        Err(e) => lost(e),
    }
}

fn clone_failure(f: &Failure) -> Failure {
    match f {
        Failure::Backend(c) => Failure::Backend(Collected {
            bytes: c.bytes.clone(),
            outcome: c.outcome,
        }),
        Failure::Proxy(e) => Failure::Proxy(e.clone()),
    }
}
