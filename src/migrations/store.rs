//! The durable queue: `_shardgate.schema_migrations` on each cluster.
//!
//! One row per migration and target database, keyed by `(uuid, database_name)`. The
//! queue of a cluster lives on that cluster, so it survives any proxy and is run by
//! whichever proxy holds the cluster's executor lock (see [`super::executor`]).
//!
//! Every function takes the `&mut SqlConn` to use, so callers decide which connection
//! (a session's admin connection, the executor's control connection) runs it. State
//! changes are single `UPDATE`s guarded by the current status, so an admin request and
//! the executor racing on one row never produce a transition that is not listed here.
//!
//! | request  | from                         | to                                          |
//! | -------- | ---------------------------- | ------------------------------------------- |
//! | Pause    | queued                       | paused                                      |
//! | Pause    | running                      | paused at the next chunk (`requested=pause`) |
//! | Resume   | paused                       | queued (checkpoint kept)                    |
//! | Cancel   | queued/paused, never started | cancelled                                   |
//! | Cancel   | other non-final              | cancelled after clean-up (`requested=cancel`) |
//! | Retry    | failed/cancelled             | queued, `retries+1`, checkpoint cleared     |
//! | Complete | non-final                    | `postpone_completion` cleared               |

use std::fmt::Write as _;

use super::copy::CopyProgress;
use super::{NewMigration, Request, Status, Strategy};
use crate::backend::{quote_literal, SqlConn, SqlError};

/// The sidecar schema.
pub const SCHEMA: &str = "_shardgate";
/// The queue table, qualified.
pub const TABLE: &str = "_shardgate.schema_migrations";
/// Version of the queue table's layout this build writes.
pub const SCHEMA_VERSION: u32 = 2;

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The statement failed on the cluster.
    #[error("{0}")]
    Sql(#[from] SqlError),
    /// The cluster returned something this build cannot read.
    #[error("unreadable migration row: {0}")]
    Malformed(String),
    /// The queue was created by a newer shardgate; this one refuses to touch it.
    #[error(
        "_shardgate.schema_migrations is at version {found}, this shardgate knows up to {known}"
    )]
    NewerSchema {
        /// Version found on the cluster.
        found: u32,
        /// Newest version this build knows.
        known: u32,
    },
}

/// A pending admin request stored on a row, for the executor to act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PendingRequest {
    /// Stop the running copy at its next chunk and mark it paused.
    Pause,
    /// Stop and clean up, then mark it cancelled.
    Cancel,
}

impl PendingRequest {
    /// Name as stored.
    pub fn as_str(&self) -> &'static str {
        match self {
            PendingRequest::Pause => "pause",
            PendingRequest::Cancel => "cancel",
        }
    }

    /// Parses a stored name.
    pub fn parse(s: &str) -> Option<PendingRequest> {
        match s {
            "pause" => Some(PendingRequest::Pause),
            "cancel" => Some(PendingRequest::Cancel),
            _ => None,
        }
    }
}

/// One row of the queue: one migration on one database.
#[derive(Debug, Clone, PartialEq)]
pub struct MigrationRow {
    /// What was queued: the statement, where it runs, how, and whether its cut-over
    /// waits for `ALTER MIGRATION ... COMPLETE`.
    pub spec: NewMigration,
    /// Where it is in its life.
    pub status: Status,
    /// The copy engine's stage (`preflight` ... `done`), empty before it starts.
    pub stage: String,
    /// Percent done (0-100).
    pub progress: f64,
    /// Rows copied so far.
    pub rows_copied: u64,
    /// Estimated rows in the table.
    pub rows_total: u64,
    /// Estimated seconds left, while copying.
    pub eta_seconds: Option<u64>,
    /// Why the copy is held back right now, if it is.
    pub throttle_reason: Option<String>,
    /// An admin request the executor has not acted on yet.
    pub requested: Option<PendingRequest>,
    /// Error (failed), or a note (cancelled, resumed after a lost owner).
    pub message: Option<String>,
    /// When it was queued (UTC, `YYYY-MM-DD HH:MM:SS.ffffff`).
    pub created_at: String,
    /// When it last started running.
    pub started_at: Option<String>,
    /// When it reached a final status.
    pub completed_at: Option<String>,
    /// How many times RETRY queued it again.
    pub retries: u32,
    /// The copy engine's resume point.
    pub checkpoint: Option<String>,
    /// The executor running it (`host:pid:random`).
    pub owner: Option<String>,
    /// The owner's last heartbeat for this row.
    pub liveness_at: Option<String>,
    /// The old table kept after a copy's cut-over, until it is dropped.
    pub old_table: Option<String>,
    /// How a copy's changes reach the new table: `binlog`, or `triggers (why)`.
    pub capture: Option<String>,
}

/// Which rows an admin request applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Every row of one migration (all its databases on this cluster).
    Uuid(String),
    /// Every row on this server, or only those queued for the named cluster.
    All {
        /// `ALL ON CLUSTER c`.
        cluster: Option<String>,
    },
}

const COLUMNS: &str = "uuid, keyspace, shard, cluster, database_name, table_name, statement, \
     strategy, status, stage, progress, rows_copied, rows_total, eta_seconds, throttle_reason, \
     requested, postpone_completion, message, created_at, started_at, completed_at, retries, \
     checkpoint, owner, liveness_at, old_table, capture";

/// Creates `_shardgate` and the queue table if missing; refuses a newer layout.
pub async fn ensure_schema(conn: &mut SqlConn) -> Result<(), StoreError> {
    conn.execute(&format!(
        "CREATE DATABASE IF NOT EXISTS {SCHEMA} CHARACTER SET utf8mb4"
    ))
    .await?;
    conn.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {SCHEMA}.versions (\
           component VARCHAR(64) NOT NULL PRIMARY KEY, \
           version INT UNSIGNED NOT NULL\
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    ))
    .await?;
    let found = conn
        .query(&format!(
            "SELECT version FROM {SCHEMA}.versions WHERE component = 'schema_migrations'"
        ))
        .await?;
    if let Some(v) = found.scalar() {
        let found: u32 = v
            .parse()
            .map_err(|_| StoreError::Malformed(format!("schema version {v:?}")))?;
        if found > SCHEMA_VERSION {
            return Err(StoreError::NewerSchema {
                found,
                known: SCHEMA_VERSION,
            });
        }
        // Upgrades from older layouts go here, one step per version.
        if found < 2 {
            // 2: how a copy's changes reach the new table (binlog or triggers).
            conn.execute(&format!(
                "ALTER TABLE {TABLE} ADD COLUMN IF NOT EXISTS capture VARCHAR(255) NULL"
            ))
            .await?;
        }
    }
    conn.execute(&format!(
        "CREATE TABLE IF NOT EXISTS {TABLE} (\
           uuid VARCHAR(64) COLLATE utf8mb4_bin NOT NULL, \
           keyspace VARCHAR(255) NOT NULL, \
           shard VARCHAR(255) NOT NULL, \
           cluster VARCHAR(255) NOT NULL, \
           database_name VARCHAR(64) COLLATE utf8mb4_bin NOT NULL, \
           table_name VARCHAR(64) COLLATE utf8mb4_bin NOT NULL, \
           statement MEDIUMTEXT NOT NULL, \
           strategy VARCHAR(16) NOT NULL, \
           status VARCHAR(16) NOT NULL, \
           stage VARCHAR(32) NOT NULL DEFAULT '', \
           progress DOUBLE NOT NULL DEFAULT 0, \
           rows_copied BIGINT UNSIGNED NOT NULL DEFAULT 0, \
           rows_total BIGINT UNSIGNED NOT NULL DEFAULT 0, \
           eta_seconds BIGINT UNSIGNED NULL, \
           throttle_reason VARCHAR(255) NULL, \
           requested VARCHAR(16) NULL, \
           postpone_completion TINYINT NOT NULL DEFAULT 0, \
           message TEXT NULL, \
           created_at DATETIME(6) NOT NULL, \
           started_at DATETIME(6) NULL, \
           completed_at DATETIME(6) NULL, \
           retries INT UNSIGNED NOT NULL DEFAULT 0, \
           checkpoint TEXT NULL, \
           owner VARCHAR(255) NULL, \
           liveness_at DATETIME(6) NULL, \
           old_table VARCHAR(64) COLLATE utf8mb4_bin NULL, \
           capture VARCHAR(255) NULL, \
           PRIMARY KEY (uuid, database_name), \
           KEY pick (status, created_at, database_name), \
           KEY by_table (database_name, table_name, status), \
           KEY by_owner (owner, status)\
         ) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4"
    ))
    .await?;
    conn.execute(&format!(
        "INSERT INTO {SCHEMA}.versions (component, version) \
         VALUES ('schema_migrations', {SCHEMA_VERSION}) \
         ON DUPLICATE KEY UPDATE version = GREATEST(version, VALUES(version))"
    ))
    .await?;
    Ok(())
}

/// Queues rows; a row whose `(uuid, database)` is already queued is left as it is, so
/// a proxy may safely enqueue again after an unclear failure. Returns rows inserted.
pub async fn enqueue(conn: &mut SqlConn, rows: &[NewMigration]) -> Result<u64, StoreError> {
    let mut inserted = 0;
    for batch in rows.chunks(200) {
        let keys: Vec<String> = batch
            .iter()
            .map(|m| {
                format!(
                    "({}, {})",
                    quote_literal(&m.uuid),
                    quote_literal(&m.database)
                )
            })
            .collect();
        let existing = conn
            .query(&format!(
                "SELECT uuid, database_name FROM {TABLE} WHERE (uuid, database_name) IN ({})",
                keys.join(", ")
            ))
            .await?;
        let existing: std::collections::HashSet<(String, String)> = existing
            .rows
            .into_iter()
            .filter_map(|r| Some((r.first()?.clone()?, r.get(1)?.clone()?)))
            .collect();
        let fresh: Vec<&NewMigration> = batch
            .iter()
            .filter(|m| !existing.contains(&(m.uuid.clone(), m.database.clone())))
            .collect();
        if fresh.is_empty() {
            continue;
        }
        let mut sql = format!(
            "INSERT INTO {TABLE} (uuid, keyspace, shard, cluster, database_name, table_name, \
             statement, strategy, status, postpone_completion, created_at) VALUES "
        );
        for (i, m) in fresh.iter().enumerate() {
            if i > 0 {
                sql.push_str(", ");
            }
            let _ = write!(
                sql,
                "({}, {}, {}, {}, {}, {}, {}, {}, 'queued', {}, UTC_TIMESTAMP(6))",
                quote_literal(&m.uuid),
                quote_literal(&m.keyspace),
                quote_literal(&m.shard),
                quote_literal(&m.cluster),
                quote_literal(&m.database),
                quote_literal(&m.table),
                quote_literal(&m.statement),
                quote_literal(m.strategy.as_str()),
                u8::from(m.postpone_completion),
            );
        }
        // Another proxy may have queued the same rows since the SELECT: keep theirs.
        sql.push_str(" ON DUPLICATE KEY UPDATE uuid = uuid");
        conn.execute(&sql).await?;
        inserted += fresh.len() as u64;
    }
    Ok(inserted)
}

/// Rows whose uuid, table, database, status or keyspace matches the `LIKE` pattern
/// (all rows without one), oldest first. What `SHOW MIGRATIONS [LIKE ...]` shows.
pub async fn list(
    conn: &mut SqlConn,
    pattern: Option<&str>,
) -> Result<Vec<MigrationRow>, StoreError> {
    let filter = match pattern {
        Some(p) => {
            let p = quote_literal(p);
            format!(
                " WHERE uuid LIKE {p} OR table_name LIKE {p} OR database_name LIKE {p} \
                 OR status LIKE {p} OR keyspace LIKE {p}"
            )
        }
        None => String::new(),
    };
    select(
        conn,
        &format!("{filter} ORDER BY created_at, uuid, database_name"),
    )
    .await
}

/// All rows of one migration on this cluster (one per database).
pub async fn get(conn: &mut SqlConn, uuid: &str) -> Result<Vec<MigrationRow>, StoreError> {
    select(
        conn,
        &format!(
            " WHERE uuid = {} ORDER BY database_name",
            quote_literal(uuid)
        ),
    )
    .await
}

/// One row.
pub async fn get_one(
    conn: &mut SqlConn,
    uuid: &str,
    database: &str,
) -> Result<Option<MigrationRow>, StoreError> {
    Ok(select(
        conn,
        &format!(
            " WHERE uuid = {} AND database_name = {}",
            quote_literal(uuid),
            quote_literal(database)
        ),
    )
    .await?
    .pop())
}

/// The status of a migration as a whole, from its rows (on one or more clusters):
/// failed if any failed, else cancelled if any was cancelled, complete when all are,
/// otherwise the least advanced (running before queued before paused). `None` when
/// there are no rows. What `@@ddl_wait` reports.
pub fn overall_status(rows: &[MigrationRow]) -> Option<Status> {
    if rows.is_empty() {
        return None;
    }
    let any = |s: Status| rows.iter().any(|r| r.status == s);
    if rows.iter().all(|r| r.status.is_final()) {
        return Some(if any(Status::Failed) {
            Status::Failed
        } else if any(Status::Cancelled) {
            Status::Cancelled
        } else {
            Status::Complete
        });
    }
    Some(if any(Status::Running) {
        Status::Running
    } else if any(Status::Queued) {
        Status::Queued
    } else {
        Status::Paused
    })
}

/// Applies an admin request (see the module table). Returns how many rows it changed;
/// 0 means nothing was in a state the request applies to.
pub async fn request(
    conn: &mut SqlConn,
    target: &Target,
    request: Request,
) -> Result<u64, StoreError> {
    let scope = match target {
        Target::Uuid(uuid) => format!("uuid = {}", quote_literal(uuid)),
        Target::All { cluster: None } => "1 = 1".to_string(),
        Target::All {
            cluster: Some(cluster),
        } => format!("cluster = {}", quote_literal(cluster)),
    };
    let statements: Vec<String> = match request {
        Request::Pause => vec![
            format!(
                "UPDATE {TABLE} SET status = 'paused', throttle_reason = NULL \
                 WHERE {scope} AND status = 'queued' AND requested IS NULL"
            ),
            format!(
                "UPDATE {TABLE} SET requested = 'pause' \
                 WHERE {scope} AND status = 'running' AND requested IS NULL"
            ),
        ],
        Request::Resume => vec![
            format!(
                "UPDATE {TABLE} SET status = 'queued' \
                 WHERE {scope} AND status = 'paused' AND requested IS NULL"
            ),
            format!(
                "UPDATE {TABLE} SET requested = NULL \
                 WHERE {scope} AND status = 'running' AND requested = 'pause'"
            ),
        ],
        Request::Cancel => vec![
            // Never started: nothing to clean up.
            format!(
                "UPDATE {TABLE} SET status = 'cancelled', requested = NULL, \
                 message = 'cancelled', completed_at = UTC_TIMESTAMP(6) \
                 WHERE {scope} AND status IN ('queued', 'paused') AND started_at IS NULL"
            ),
            // Started: the executor stops it and removes its ghost table and triggers.
            format!(
                "UPDATE {TABLE} SET requested = 'cancel' \
                 WHERE {scope} AND status IN ('queued', 'running', 'paused') \
                 AND (requested IS NULL OR requested <> 'cancel')"
            ),
        ],
        Request::Retry => vec![format!(
            "UPDATE {TABLE} SET status = 'queued', retries = retries + 1, checkpoint = NULL, \
             stage = '', progress = 0, rows_copied = 0, rows_total = 0, eta_seconds = NULL, capture = NULL, \
             throttle_reason = NULL, requested = NULL, message = NULL, owner = NULL, \
             started_at = NULL, completed_at = NULL, liveness_at = NULL \
             WHERE {scope} AND status IN ('failed', 'cancelled')"
        )],
        Request::Complete => vec![format!(
            "UPDATE {TABLE} SET postpone_completion = 0 \
             WHERE {scope} AND postpone_completion = 1 \
             AND status NOT IN ('complete', 'failed', 'cancelled')"
        )],
    };
    let mut changed = 0;
    for sql in statements {
        changed += conn.execute(&sql).await?.affected_rows;
    }
    Ok(changed)
}

/// The `UPDATE` that records `progress`; the copy engine runs it inside each chunk's
/// transaction, so the checkpoint and the chunk commit together.
pub fn checkpoint_update_sql(uuid: &str, database: &str, progress: &CopyProgress) -> String {
    let checkpoint = match &progress.checkpoint {
        Some(c) => quote_literal(c),
        None => "NULL".to_string(),
    };
    format!(
        "UPDATE {TABLE} SET stage = {}, rows_copied = {}, rows_total = {}, progress = {}, \
         checkpoint = {checkpoint}, capture = COALESCE({}, capture), liveness_at = UTC_TIMESTAMP(6) \
         WHERE uuid = {} AND database_name = {}",
        quote_literal(&progress.stage),
        progress.rows_copied,
        progress.rows_total,
        percent(progress),
        capture_value(progress),
        quote_literal(uuid),
        quote_literal(database),
    )
}

/// The `capture` column's value: NULL until the copy has chosen.
fn capture_value(progress: &CopyProgress) -> String {
    if progress.capture.is_empty() {
        "NULL".to_string()
    } else {
        quote_literal(&progress.capture)
    }
}

/// Percent done of a copy, 0-100 (100 once its stage is `done`).
pub fn percent(progress: &CopyProgress) -> f64 {
    if progress.stage == "done" {
        return 100.0;
    }
    if progress.rows_total == 0 {
        return 0.0;
    }
    let p = progress.rows_copied as f64 * 100.0 / progress.rows_total as f64;
    // The total is an estimate; never claim done before the copy says so.
    (p * 100.0).round().clamp(0.0, 9_900.0) / 100.0
}

/// Sets a row's status (and `message`); a final status records `completed_at` and
/// clears the pending request, paused clears it too.
pub async fn set_status(
    conn: &mut SqlConn,
    uuid: &str,
    database: &str,
    status: Status,
    message: Option<&str>,
) -> Result<(), StoreError> {
    let mut set = format!("status = {}", quote_literal(status.as_str()));
    if let Some(m) = message {
        let _ = write!(set, ", message = {}", quote_literal(m));
    }
    if status.is_final() {
        set.push_str(", completed_at = UTC_TIMESTAMP(6), requested = NULL, throttle_reason = NULL, eta_seconds = NULL");
    }
    if status == Status::Complete {
        set.push_str(", progress = 100");
    }
    if status == Status::Paused {
        set.push_str(", requested = NULL, throttle_reason = NULL, eta_seconds = NULL");
    }
    conn.execute(&format!(
        "UPDATE {TABLE} SET {set} WHERE uuid = {} AND database_name = {}",
        quote_literal(uuid),
        quote_literal(database)
    ))
    .await?;
    Ok(())
}

/// Marks every row `owner` is running as alive now. Returns rows touched.
pub async fn heartbeat(conn: &mut SqlConn, owner: &str) -> Result<u64, StoreError> {
    Ok(conn
        .execute(&format!(
            "UPDATE {TABLE} SET liveness_at = UTC_TIMESTAMP(6) \
             WHERE owner = {} AND status = 'running'",
            quote_literal(owner)
        ))
        .await?
        .affected_rows)
}

/// Takes a queued row for `owner`: running, started now. False if it is no longer
/// queued (an admin paused or cancelled it in the meantime).
pub async fn claim(
    conn: &mut SqlConn,
    uuid: &str,
    database: &str,
    owner: &str,
) -> Result<bool, StoreError> {
    let ok = conn
        .execute(&format!(
            "UPDATE {TABLE} SET status = 'running', owner = {}, \
             started_at = UTC_TIMESTAMP(6), liveness_at = UTC_TIMESTAMP(6), \
             throttle_reason = NULL \
             WHERE uuid = {} AND database_name = {} AND status = 'queued'",
            quote_literal(owner),
            quote_literal(uuid),
            quote_literal(database)
        ))
        .await?;
    Ok(ok.affected_rows == 1)
}

/// Queues again the rows left `running` by an owner other than `owner` whose last
/// heartbeat is older than `stale_seconds`; their checkpoints are kept, so they resume.
/// Only the holder of the cluster's executor lock calls this: holding it proves the
/// previous owner is gone. Returns rows requeued.
pub async fn requeue_orphans(
    conn: &mut SqlConn,
    owner: &str,
    stale_seconds: f64,
) -> Result<u64, StoreError> {
    Ok(conn
        .execute(&format!(
            "UPDATE {TABLE} SET status = 'queued', throttle_reason = NULL, \
             message = CONCAT('resumed after its executor ', COALESCE(owner, '?'), ' was lost'), \
             owner = NULL \
             WHERE status = 'running' AND (owner IS NULL OR owner <> {}) \
             AND (liveness_at IS NULL OR liveness_at < UTC_TIMESTAMP(6) - INTERVAL {} MICROSECOND)",
            quote_literal(owner),
            (stale_seconds * 1e6) as u64
        ))
        .await?
        .affected_rows)
}

/// Rows the executor may start (queued), or must clean up (a pending cancel on a
/// paused row), in queue order: oldest first, then by database, so one logical DDL's
/// rows take turns across databases.
pub async fn runnable(conn: &mut SqlConn, limit: u32) -> Result<Vec<MigrationRow>, StoreError> {
    select(
        conn,
        &format!(
            " WHERE status = 'queued' OR (status = 'paused' AND requested = 'cancel') \
             ORDER BY created_at, database_name, uuid LIMIT {limit}"
        ),
    )
    .await
}

/// Rows running under `owner`.
pub async fn running_of(conn: &mut SqlConn, owner: &str) -> Result<Vec<MigrationRow>, StoreError> {
    select(
        conn,
        &format!(
            " WHERE status = 'running' AND owner = {}",
            quote_literal(owner)
        ),
    )
    .await
}

/// Rows waiting to run (queued).
pub async fn queue_depth(conn: &mut SqlConn) -> Result<u64, StoreError> {
    let rows = conn
        .query(&format!(
            "SELECT COUNT(*) FROM {TABLE} WHERE status = 'queued'"
        ))
        .await?;
    parse_u64(rows.scalar(), "COUNT(*)")
}

/// Records what observers see of a running copy (not its checkpoint).
pub async fn report_progress(
    conn: &mut SqlConn,
    uuid: &str,
    database: &str,
    progress: &CopyProgress,
    eta_seconds: Option<u64>,
    throttle_reason: Option<&str>,
) -> Result<(), StoreError> {
    let eta = eta_seconds.map_or("NULL".to_string(), |e| e.to_string());
    let reason = throttle_reason.map_or("NULL".to_string(), quote_literal);
    conn.execute(&format!(
        "UPDATE {TABLE} SET stage = {}, rows_copied = GREATEST(rows_copied, {}), \
         rows_total = {}, progress = {}, eta_seconds = {eta}, throttle_reason = {reason}, \
         capture = COALESCE({}, capture) \
         WHERE uuid = {} AND database_name = {} AND status = 'running'",
        quote_literal(&progress.stage),
        progress.rows_copied,
        progress.rows_total,
        percent(progress),
        capture_value(progress),
        quote_literal(uuid),
        quote_literal(database)
    ))
    .await?;
    Ok(())
}

/// Records the old table a copy's cut-over kept (dropped later).
pub async fn set_old_table(
    conn: &mut SqlConn,
    uuid: &str,
    database: &str,
    old_table: Option<&str>,
) -> Result<(), StoreError> {
    let old = old_table.map_or("NULL".to_string(), quote_literal);
    conn.execute(&format!(
        "UPDATE {TABLE} SET old_table = {old} WHERE uuid = {} AND database_name = {}",
        quote_literal(uuid),
        quote_literal(database)
    ))
    .await?;
    Ok(())
}

/// Completed rows whose old table was kept for longer than `keep_seconds`.
pub async fn old_tables_due(
    conn: &mut SqlConn,
    keep_seconds: u64,
) -> Result<Vec<MigrationRow>, StoreError> {
    select(
        conn,
        &format!(
            " WHERE status = 'complete' AND old_table IS NOT NULL \
             AND completed_at <= UTC_TIMESTAMP(6) - INTERVAL {keep_seconds} SECOND \
             ORDER BY completed_at LIMIT 100"
        ),
    )
    .await
}

async fn select(conn: &mut SqlConn, rest: &str) -> Result<Vec<MigrationRow>, StoreError> {
    let rows = conn
        .query(&format!("SELECT {COLUMNS} FROM {TABLE}{rest}"))
        .await?;
    rows.rows.iter().map(|r| parse_row(r)).collect()
}

fn parse_row(r: &[Option<String>]) -> Result<MigrationRow, StoreError> {
    let text = |i: usize| -> Result<String, StoreError> {
        r.get(i)
            .cloned()
            .flatten()
            .ok_or_else(|| StoreError::Malformed(format!("column {i} is missing or NULL")))
    };
    let opt = |i: usize| -> Option<String> { r.get(i).cloned().flatten() };
    let strategy = text(7)?;
    let status = text(8)?;
    let requested = match opt(15) {
        Some(s) => Some(
            PendingRequest::parse(&s)
                .ok_or_else(|| StoreError::Malformed(format!("requested {s:?}")))?,
        ),
        None => None,
    };
    let progress = text(10)?;
    Ok(MigrationRow {
        spec: NewMigration {
            uuid: text(0)?,
            keyspace: text(1)?,
            shard: text(2)?,
            cluster: text(3)?,
            database: text(4)?,
            table: text(5)?,
            statement: text(6)?,
            strategy: Strategy::parse(&strategy)
                .ok_or_else(|| StoreError::Malformed(format!("strategy {strategy:?}")))?,
            postpone_completion: opt(16).as_deref() == Some("1"),
        },
        status: Status::parse(&status)
            .ok_or_else(|| StoreError::Malformed(format!("status {status:?}")))?,
        stage: text(9)?,
        progress: progress
            .parse()
            .map_err(|_| StoreError::Malformed(format!("progress {progress:?}")))?,
        rows_copied: parse_u64(opt(11).as_deref(), "rows_copied")?,
        rows_total: parse_u64(opt(12).as_deref(), "rows_total")?,
        eta_seconds: match opt(13) {
            Some(e) => Some(parse_u64(Some(&e), "eta_seconds")?),
            None => None,
        },
        throttle_reason: opt(14),
        requested,
        message: opt(17),
        created_at: text(18)?,
        started_at: opt(19),
        completed_at: opt(20),
        retries: parse_u64(opt(21).as_deref(), "retries")?
            .try_into()
            .map_err(|_| StoreError::Malformed("retries out of range".into()))?,
        checkpoint: opt(22),
        owner: opt(23),
        liveness_at: opt(24),
        old_table: opt(25),
        capture: opt(26),
    })
}

fn parse_u64(v: Option<&str>, what: &str) -> Result<u64, StoreError> {
    v.and_then(|v| v.parse().ok())
        .ok_or_else(|| StoreError::Malformed(format!("{what} {v:?}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_never_claims_done_before_the_copy_does() {
        let mut p = CopyProgress {
            stage: "copy".into(),
            rows_copied: 150,
            rows_total: 100,
            checkpoint: None,
            capture: String::new(),
        };
        assert_eq!(percent(&p), 99.0);
        p.rows_copied = 50;
        assert_eq!(percent(&p), 50.0);
        p.stage = "done".into();
        assert_eq!(percent(&p), 100.0);
    }
}
