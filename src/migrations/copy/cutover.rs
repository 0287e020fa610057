//! The cut-over of a copy whose changes come from the binary log.
//!
//! The ghost lags the original by whatever the capture has not applied yet, so the
//! swap needs a moment when the original takes no writes:
//!
//! 1. two guard tables are created: a *sentry* whose name sorts after the original's
//!    (`<table>~sg`) and a *stand-in* (`_<table>_<tag>_sgs`);
//! 2. a lock connection takes `LOCK TABLES original READ, sentry WRITE` (short lock
//!    wait, retried with backoff): writes to the original wait, reads go on;
//! 3. the binlog position now is where the capture must get to; once it has, the rows
//!    changed since the comparison made outside the hold ([`verify_unlocked`]) are
//!    compared (all rows, when there was none);
//! 4. the DDL connection sends
//!    `RENAME TABLE original TO old, ghost TO original, stand-in TO sentry`. It takes
//!    its metadata locks in name order: the ghost, old and stand-in names are free,
//!    so it waits on the original, and from then on writes that arrive queue behind
//!    it. Once the server shows it waiting, the lock connection drops the sentry and
//!    unlocks; the RENAME is granted before the waiting writes (a waiting exclusive
//!    lock goes first), which then run on the new table.
//!
//! If the lock connection dies at any point its locks go with it, but the sentry
//! stays, so the RENAME fails (its target exists) instead of swapping a table that
//! took writes the ghost never saw. Writes wait for steps 3-4 only: the drain, the
//! comparison of the rows written since the unlocked one, and the rename.
//!
//! The sentry's name must sort after the original's: were the RENAME to wait on the
//! sentry first, the unlock would free the original before the RENAME asked for it,
//! and a waiting write could slip into the old table.

use std::collections::HashSet;
use std::time::Duration;

use crate::backend::{quote_literal, SqlConn};

use super::binlog::{self, BinlogCapture, BinlogPos};
use super::chunk::ChunkKey;
use super::schema::MAX_NAME;
use super::schema::{cell, Column};
use super::sql::{self, code, qualified, server_err};
use super::verify;
use super::{CopyControl, CopyError, CopyNames, CopyTask};

/// How long the capture may take to reach the lock's position while writes wait.
const DRAIN_LIMIT: Duration = Duration::from_secs(2);
/// How long the RENAME may take to show up as waiting behind the lock.
const RENAME_QUEUE_WAIT: Duration = Duration::from_secs(2);

/// What the cut-over compares and swaps.
pub(crate) struct Swap<'a> {
    pub task: &'a CopyTask,
    pub names: &'a CopyNames,
    pub shared: &'a [(String, Column, Column)],
    pub adds_unique: bool,
    /// The key rows are addressed by.
    pub key: &'a ChunkKey,
}

/// The cut-over guard tables' comment: a table with it holds no data.
pub(crate) const SENTRY_COMMENT: &str = "shardgate cut-over sentry";

/// `CREATE TABLE` for a cut-over guard table.
pub(crate) fn sentry_sql(db: &str, name: &str) -> String {
    format!(
        "CREATE TABLE {} (sentry INT) ENGINE=InnoDB COMMENT={}",
        qualified(db, name),
        quote_literal(SENTRY_COMMENT)
    )
}

/// Keys per statement when the cut-over compares the rows changed lately.
const KEYS_PER_CHECK: usize = 1_000;

/// Compares both tables outside any write hold: in one consistent snapshot, every row
/// but those whose keys changed after the capture's applied position `A` (read before
/// the snapshot) up to the snapshot's own binlog position. A row that has not changed
/// since `A` is in the ghost as the capture last read it, which is the original's row
/// in the snapshot. Returns `A`: the cut-over then compares only the rows changed
/// after it. `None` when the server gives no snapshot position or the capture no
/// longer remembers those keys (then the cut-over compares everything).
pub(crate) async fn verify_unlocked(
    ddl: &mut SqlConn,
    capture: &BinlogCapture,
    swap: &Swap<'_>,
) -> Result<Option<BinlogPos>, CopyError> {
    let task = swap.task;
    let applied = capture.applied();
    let snapshot = verify::begin_snapshot(ddl).await;
    let result = async {
        let Some(at) = snapshot? else {
            return Ok(None);
        };
        capture.wait_read(&at, DRAIN_LIMIT * 5).await?;
        let Some(changed) = capture.keys_between(&applied, &at) else {
            return Ok(None);
        };
        let changed: Vec<Vec<String>> = changed.into_iter().collect();
        let skip = match changed.is_empty() {
            true => None,
            false => Some(format!("NOT ({})", swap.key.in_list(&changed)?)),
        };
        let (old, new) = verify::checksum_where(
            ddl,
            &task.database,
            &task.table,
            &swap.names.ghost,
            swap.shared,
            skip.as_deref(),
        )
        .await?;
        super::compared(&old, &new, swap.adds_unique)?;
        tracing::info!(uuid = %task.uuid, database = %task.database, table = %task.table,
            rows = old.rows, changed_meanwhile = changed.len(), "checksum outside the write hold matches");
        Ok(Some(applied))
    }
    .await;
    let _ = ddl.execute("COMMIT").await;
    result
}

/// Compares both tables over the given keys only (the tables cannot change now).
async fn verify_keys(
    ddl: &mut SqlConn,
    swap: &Swap<'_>,
    keys: &HashSet<Vec<String>>,
) -> Result<(), CopyError> {
    let keys: Vec<Vec<String>> = keys.iter().cloned().collect();
    let empty = verify::TableChecksum {
        rows: 0,
        xor: 0,
        sum: "0".into(),
    };
    let (mut old, mut new) = (empty.clone(), empty);
    for batch in keys.chunks(KEYS_PER_CHECK) {
        let only = swap.key.in_list(batch)?;
        let (o, n) = verify::checksum_where(
            ddl,
            &swap.task.database,
            &swap.task.table,
            &swap.names.ghost,
            swap.shared,
            Some(&only),
        )
        .await?;
        old = old.add(&o);
        new = new.add(&n);
    }
    super::compared(&old, &new, swap.adds_unique)
}

/// Runs the cut-over; on success the original has the new schema.
pub(crate) async fn binlog_cut_over<C: CopyControl>(
    lock: &mut SqlConn,
    ddl: &mut SqlConn,
    capture: &BinlogCapture,
    swap: &Swap<'_>,
    verified: Option<&BinlogPos>,
    control: &C,
) -> Result<(), CopyError> {
    let task = swap.task;
    let db = &task.database;
    let secs = sql::lock_wait_secs(task.options.lock_wait);
    for c in [&mut *lock, &mut *ddl] {
        c.execute(&format!("SET SESSION lock_wait_timeout = {secs}"))
            .await
            .map_err(|e| server_err("cut-over", e))?;
    }
    let ddl_id = ddl
        .query("SELECT CONNECTION_ID()")
        .await
        .map_err(|e| server_err("cut-over", e))?
        .scalar()
        .and_then(|v| v.parse::<u64>().ok())
        .ok_or_else(|| CopyError::Failed("cut-over: no connection id".into()))?;
    let attempts = task.options.cutover_attempts.max(1);
    let guards = [sentry_name(&task.table)?, stand_in_name(&swap.names.old)];
    for attempt in 0..attempts {
        control.gate().await.map_err(CopyError::Stopped)?;
        capture.check()?;
        for g in &guards {
            drop_guard(ddl, db, g).await?;
            ddl.execute(&sentry_sql(db, g))
                .await
                .map_err(|e| server_err("creating the cut-over guard tables", e))?;
        }
        let outcome = try_once(lock, ddl, ddl_id, capture, swap, &guards, verified).await;
        if !matches!(outcome, Ok(())) {
            let _ = lock.execute("UNLOCK TABLES").await;
        }
        // After a swap the stand-in sits at the sentry's name; either way both go.
        for g in &guards {
            let dropped = drop_guard(ddl, db, g).await;
            if let (Err(e), Ok(())) = (&dropped, &outcome) {
                tracing::warn!(uuid = %task.uuid, error = ?e, "cut-over guard table left");
            }
        }
        match outcome {
            Ok(()) => return Ok(()),
            Err(Attempt::Again(why)) => {
                tracing::info!(uuid = %task.uuid, attempt, why = %why, "cut-over not done; backing off");
                crate::timer::sleep(sql::backoff(attempt)).await;
            }
            Err(Attempt::Fatal(e)) => return Err(e),
        }
    }
    Err(CopyError::Failed(format!(
        "cut-over did not get its lock in {attempts} attempts (a long transaction holds {})",
        task.table
    )))
}

/// `<table>~sg`: a name that sorts right after the table's (the table's name is its
/// prefix), so a RENAME naming both waits on the table first.
pub(crate) fn sentry_name(table: &str) -> Result<String, CopyError> {
    let name = format!("{table}~sg");
    if name.chars().count() > MAX_NAME {
        return Err(CopyError::Failed(format!(
            "table name {table} is too long for the cut-over's sentry ({MAX_NAME} characters)"
        )));
    }
    Ok(name)
}

/// The table renamed onto the sentry's name by the RENAME (`_..._sgs`, beside the old
/// table's name).
fn stand_in_name(old: &str) -> String {
    match old.strip_suffix("_old") {
        Some(stem) => format!("{stem}_sgs"),
        None => format!("{old}_sgs"),
    }
}

enum Attempt {
    /// Not this time (lock not granted, capture behind); nothing changed.
    Again(String),
    Fatal(CopyError),
}

async fn try_once(
    lock: &mut SqlConn,
    ddl: &mut SqlConn,
    ddl_id: u64,
    capture: &BinlogCapture,
    swap: &Swap<'_>,
    guards: &[String; 2],
    verified: Option<&BinlogPos>,
) -> Result<(), Attempt> {
    let task = swap.task;
    let db = &task.database;
    let t = qualified(db, &task.table);
    let old = qualified(db, &swap.names.old);
    let sentry = qualified(db, &guards[0]);
    let stand_in = qualified(db, &guards[1]);
    match lock
        .execute(&format!("LOCK TABLES {t} READ, {sentry} WRITE"))
        .await
    {
        Ok(_) => {}
        Err(e) if e.code() == Some(code::LOCK_WAIT_TIMEOUT) => {
            return Err(Attempt::Again("table lock not granted".into()))
        }
        Err(e) => return Err(Attempt::Fatal(server_err("locking for the cut-over", e))),
    }
    let target = binlog::current_position(lock)
        .await
        .map_err(Attempt::Fatal)?;
    if let Err(e) = capture.drain_to(&target, DRAIN_LIMIT).await {
        return match e {
            CopyError::Connection(m) => Err(Attempt::Again(m)),
            e => Err(Attempt::Fatal(e)),
        };
    }
    // Rows changed since the unlocked comparison are compared now; without one, all.
    let checked = match verified.and_then(|a| capture.keys_between(a, &target)) {
        Some(changed) => verify_keys(ddl, swap, &changed).await,
        None => super::verify_tables(ddl, task, swap.names, swap.shared, swap.adds_unique).await,
    };
    checked.map_err(Attempt::Fatal)?;
    let rename = format!(
        "RENAME TABLE {t} TO {old}, {} TO {t}, {stand_in} TO {sentry}",
        qualified(db, &swap.names.ghost)
    );
    let release = async {
        // Unlock only once the RENAME waits: then it goes before the writes.
        let seen = tokio::time::Instant::now();
        let waiting = format!(
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {ddl_id} \
             AND STATE LIKE {}",
            quote_literal("%metadata lock%")
        );
        let mut queued = false;
        while seen.elapsed() < RENAME_QUEUE_WAIT {
            let n = lock
                .query(&waiting)
                .await
                .map_err(|e| server_err("cut-over", e))?;
            if n.scalar() == Some("1") {
                queued = true;
                break;
            }
            crate::timer::sleep(Duration::from_millis(2)).await;
        }
        if queued {
            lock.execute(&format!("DROP TABLE {sentry}"))
                .await
                .map_err(|e| server_err("dropping the cut-over sentry", e))?;
        }
        // Without the sentry dropped, the RENAME fails and nothing is swapped.
        lock.execute("UNLOCK TABLES")
            .await
            .map_err(|e| server_err("cut-over", e))?;
        Ok::<bool, CopyError>(queued)
    };
    let (renamed, released) = tokio::join!(ddl.execute(&rename), release);
    match (renamed, released) {
        (Ok(_), _) => Ok(()),
        (Err(e), Ok(false)) => Err(Attempt::Again(format!("the RENAME did not queue: {e}"))),
        (Err(e), _) if e.code() == Some(code::LOCK_WAIT_TIMEOUT) => {
            Err(Attempt::Again(format!("the RENAME waited too long: {e}")))
        }
        (Err(e), _) if e.code() == Some(TABLE_EXISTS) => {
            Err(Attempt::Again(format!("the sentry was still there: {e}")))
        }
        (Err(e), _) => Err(Attempt::Fatal(server_err("cut-over", e))),
    }
}

/// ER_TABLE_EXISTS_ERROR.
const TABLE_EXISTS: u16 = 1050;

/// Drops the guard tables a cut-over may have left (a crash mid-way).
pub(crate) async fn drop_guards(
    conn: &mut SqlConn,
    task: &CopyTask,
    names: &CopyNames,
) -> Result<(), CopyError> {
    if let Ok(sentry) = sentry_name(&task.table) {
        drop_guard(conn, &task.database, &sentry).await?;
    }
    drop_guard(conn, &task.database, &stand_in_name(&names.old)).await
}

/// Drops a guard table (only a table with the guards' comment: never real data).
async fn drop_guard(conn: &mut SqlConn, db: &str, name: &str) -> Result<(), CopyError> {
    let found = conn
        .query(&format!(
            "SELECT TABLE_COMMENT FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            quote_literal(db),
            quote_literal(name)
        ))
        .await
        .map_err(|e| server_err("looking for a cut-over sentry", e))?;
    let Some(row) = found.rows.first() else {
        return Ok(());
    };
    if cell(row, 0) != Some(SENTRY_COMMENT) {
        return Err(CopyError::Failed(format!(
            "a table named {name} already exists (a name the cut-over needs)"
        )));
    }
    conn.execute(&format!("DROP TABLE IF EXISTS {}", qualified(db, name)))
        .await
        .map_err(|e| server_err("dropping a cut-over sentry", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sentry_sorts_right_after_the_table_and_fits_a_name() {
        let s = sentry_name("messages").unwrap_or_default();
        assert_eq!(s, "messages~sg");
        // The RENAME takes its locks in name order: the table's comes first.
        assert!("messages" < s.as_str() && "_messages_0a1b2c3d_old" < "messages");
        assert!(sentry_name(&"t".repeat(61)).is_ok());
        assert!(sentry_name(&"t".repeat(62)).is_err());
        assert_eq!(stand_in_name("_t_0a1b2c3d_old"), "_t_0a1b2c3d_sgs");
    }
}
