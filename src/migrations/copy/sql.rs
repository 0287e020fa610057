//! Qualified names and session settings shared by the copy's statements.

use std::time::Duration;

use crate::backend::{quote_ident, SqlConn, SqlError};

use super::CopyError;

/// Strict mode for the copy: any truncation or conversion is an error, never a
/// warning. `NO_AUTO_VALUE_ON_ZERO` keeps a copied 0 in an AUTO_INCREMENT column.
/// Zero dates are not refused: they are copied as they are, not truncated.
pub(crate) const STRICT_MODE: &str = "STRICT_ALL_TABLES,ERROR_FOR_DIVISION_BY_ZERO,\
NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION";

/// Mode stored with the triggers (a trigger runs with the mode it was created with):
/// not strict, so an application write never fails because of the ghost table. A value
/// the ghost cannot hold is stored converted, and the checksum then fails the copy.
pub(crate) const TRIGGER_MODE: &str = "NO_AUTO_VALUE_ON_ZERO,NO_ENGINE_SUBSTITUTION";

/// MySQL error numbers the copy reacts to.
pub(crate) mod code {
    /// Lock wait timeout (row lock or metadata lock).
    pub const LOCK_WAIT_TIMEOUT: u16 = 1205;
    /// Deadlock; the transaction was rolled back.
    pub const DEADLOCK: u16 = 1213;
}

/// `` `db`.`name` ``.
pub(crate) fn qualified(db: &str, name: &str) -> String {
    format!("{}.{}", quote_ident(db), quote_ident(name))
}

/// Whole seconds for `lock_wait_timeout`, at least 1.
pub(crate) fn lock_wait_secs(d: Duration) -> u64 {
    (d.as_millis().div_ceil(1000) as u64).max(1)
}

/// A server error means the copy cannot go on as asked; a connection error means it
/// may be resumed.
pub(crate) fn server_err(doing: &str, e: SqlError) -> CopyError {
    match e {
        SqlError::Server(_) => CopyError::Failed(format!("{doing}: {e}")),
        SqlError::Connection(m) => CopyError::Connection(format!("{doing}: {m}")),
    }
}

/// Opens a connection for the copy's own statements, in strict mode, UTC (so TIMESTAMP
/// values are never shifted) and with short lock waits.
pub(crate) async fn connect(
    cluster: &crate::vschema::Cluster,
    db: &str,
    lock_wait: Duration,
    isolation: &str,
) -> Result<SqlConn, CopyError> {
    let mut conn = SqlConn::connect(cluster, Some(db), Duration::from_secs(10))
        .await
        .map_err(|e| CopyError::Connection(format!("connecting to {}: {e}", cluster.name)))?;
    let secs = lock_wait_secs(lock_wait);
    let setup = format!(
        "SET SESSION sql_mode = '{STRICT_MODE}', time_zone = '+00:00', \
         lock_wait_timeout = {secs}, innodb_lock_wait_timeout = {secs}"
    );
    conn.execute(&setup)
        .await
        .map_err(|e| server_err("setting up the session", e))?;
    conn.execute(&format!(
        "SET SESSION TRANSACTION ISOLATION LEVEL {isolation}"
    ))
    .await
    .map_err(|e| server_err("setting up the session", e))?;
    Ok(conn)
}

/// Backoff before retry `attempt` (0-based): 100 ms doubling, at most 3 s.
pub(crate) fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(100u64.saturating_mul(1 << attempt.min(5))).min(Duration::from_secs(3))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quotes_qualified_names_and_rounds_lock_waits_up() {
        assert_eq!(qualified("d", "t"), "`d`.`t`");
        assert_eq!(qualified("d", "a`b"), "`d`.`a``b`");
        assert_eq!(lock_wait_secs(Duration::from_millis(200)), 1);
        assert_eq!(lock_wait_secs(Duration::from_millis(2500)), 3);
    }
}
