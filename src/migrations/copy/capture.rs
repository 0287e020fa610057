//! Change capture: how application writes to the original reach the ghost while the
//! copy runs. Today: triggers. The seam is [`ChangeCapture`]; a binlog reader can
//! implement it later (install = start tailing, remove = stop) without touching the
//! copy loop, the checksum or the cut-over.

use std::time::Duration;

use crate::backend::{quote_ident, SqlConn};

use super::schema;
use super::sql::{code, lock_wait_secs, qualified, server_err, TRIGGER_MODE};
use super::CopyError;

/// Keeps the ghost in step with the original from `install` until `remove`.
pub trait ChangeCapture {
    /// Starts capturing (idempotent: what already exists is kept).
    fn install(
        &self,
        conn: &mut SqlConn,
    ) -> impl std::future::Future<Output = Result<(), CopyError>> + Send;
    /// Whether capture is fully in place (a resumed copy relies on it having run
    /// since its first chunk).
    fn is_installed(
        &self,
        conn: &mut SqlConn,
    ) -> impl std::future::Future<Output = Result<bool, CopyError>> + Send;
    /// Stops capturing (idempotent).
    fn remove(
        &self,
        conn: &mut SqlConn,
    ) -> impl std::future::Future<Output = Result<(), CopyError>> + Send;
}

/// AFTER INSERT/UPDATE/DELETE triggers on the original that apply each change to the
/// ghost in the application's own transaction.
pub struct TriggerCapture {
    /// Database of both tables.
    pub database: String,
    /// The original table.
    pub table: String,
    /// The ghost table.
    pub ghost: String,
    /// Trigger names: insert, update, delete.
    pub names: [String; 3],
    /// Columns written to the ghost (present in both, not generated in the ghost).
    pub columns: Vec<String>,
    /// Columns of the unique key shared by both tables.
    pub key: Vec<String>,
    /// Lock wait for each CREATE/DROP TRIGGER (they need a metadata lock on the table).
    pub lock_wait: Duration,
    /// Attempts (with backoff) when that lock is not granted in time.
    pub attempts: u32,
}

impl TriggerCapture {
    /// The three CREATE TRIGGER statements (insert, update, delete).
    pub fn create_statements(&self) -> [String; 3] {
        let db = &self.database;
        let t = qualified(db, &self.table);
        let g = qualified(db, &self.ghost);
        let cols: Vec<String> = self.columns.iter().map(|c| quote_ident(c)).collect();
        let cols = cols.join(", ");
        let new_vals: Vec<String> = self
            .columns
            .iter()
            .map(|c| format!("NEW.{}", quote_ident(c)))
            .collect();
        let new_vals = new_vals.join(", ");
        let replace = format!("REPLACE INTO {g} ({cols}) VALUES ({new_vals})");
        let old_key: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("{0} = OLD.{0}", quote_ident(k)))
            .collect();
        let delete_old = format!("DELETE FROM {g} WHERE {}", old_key.join(" AND "));
        let key_same: Vec<String> = self
            .key
            .iter()
            .map(|k| format!("OLD.{0} <=> NEW.{0}", quote_ident(k)))
            .collect();
        let trg = |i: usize| qualified(db, &self.names[i]);
        [
            format!(
                "CREATE TRIGGER {} AFTER INSERT ON {t} FOR EACH ROW {replace}",
                trg(0)
            ),
            format!(
                "CREATE TRIGGER {} AFTER UPDATE ON {t} FOR EACH ROW BEGIN \
                 IF NOT ({}) THEN {delete_old}; END IF; {replace}; END",
                trg(1),
                key_same.join(" AND ")
            ),
            format!(
                "CREATE TRIGGER {} AFTER DELETE ON {t} FOR EACH ROW {delete_old}",
                trg(2)
            ),
        ]
    }

    /// Runs a statement that needs the table's metadata lock: a short lock wait, and
    /// retries with backoff, so application queries never queue behind it for long.
    async fn with_mdl_retries(&self, conn: &mut SqlConn, sql: &str) -> Result<(), CopyError> {
        let mut attempt = 0;
        loop {
            match conn.execute(sql).await {
                Ok(_) => return Ok(()),
                Err(e) if e.code() == Some(code::LOCK_WAIT_TIMEOUT) => {
                    attempt += 1;
                    if attempt >= self.attempts.max(1) {
                        return Err(CopyError::Failed(format!(
                            "no metadata lock on {} after {attempt} attempts: {e}",
                            self.table
                        )));
                    }
                    crate::timer::sleep(super::sql::backoff(attempt)).await;
                }
                Err(e) => return Err(server_err("changing triggers", e)),
            }
        }
    }
}

impl ChangeCapture for TriggerCapture {
    async fn install(&self, conn: &mut SqlConn) -> Result<(), CopyError> {
        let existing = schema::existing_triggers(conn, &self.database, &self.names).await?;
        conn.execute(&format!(
            "SET SESSION sql_mode = '{TRIGGER_MODE}', lock_wait_timeout = {}",
            lock_wait_secs(self.lock_wait)
        ))
        .await
        .map_err(|e| server_err("setting up trigger creation", e))?;
        let result = async {
            for (name, sql) in self.names.iter().zip(self.create_statements()) {
                if !existing.contains(name) {
                    self.with_mdl_retries(conn, &sql).await?;
                }
            }
            Ok(())
        }
        .await;
        conn.execute(&format!(
            "SET SESSION sql_mode = '{}'",
            super::sql::STRICT_MODE
        ))
        .await
        .map_err(|e| server_err("restoring the session", e))?;
        result
    }

    async fn is_installed(&self, conn: &mut SqlConn) -> Result<bool, CopyError> {
        let existing = schema::existing_triggers(conn, &self.database, &self.names).await?;
        Ok(self.names.iter().all(|n| existing.contains(n)))
    }

    async fn remove(&self, conn: &mut SqlConn) -> Result<(), CopyError> {
        drop_triggers(
            conn,
            &self.database,
            &self.names,
            self.lock_wait,
            self.attempts,
        )
        .await
    }
}

/// Drops the copy's triggers wherever they are (on the original, or on the old table
/// after a cut-over); needs nothing but their names.
pub(crate) async fn drop_triggers(
    conn: &mut SqlConn,
    db: &str,
    names: &[String; 3],
    lock_wait: Duration,
    attempts: u32,
) -> Result<(), CopyError> {
    conn.execute(&format!(
        "SET SESSION lock_wait_timeout = {}",
        lock_wait_secs(lock_wait)
    ))
    .await
    .map_err(|e| server_err("setting up trigger removal", e))?;
    let existing = schema::existing_triggers(conn, db, names).await?;
    let capture = TriggerCapture {
        database: db.to_string(),
        table: String::new(),
        ghost: String::new(),
        names: names.clone(),
        columns: Vec::new(),
        key: Vec::new(),
        lock_wait,
        attempts,
    };
    for name in names.iter().filter(|n| existing.contains(n)) {
        capture
            .with_mdl_retries(
                conn,
                &format!("DROP TRIGGER IF EXISTS {}", qualified(db, name)),
            )
            .await?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triggers_replace_new_rows_and_delete_old_keys() {
        let c = TriggerCapture {
            database: "d".into(),
            table: "t".into(),
            ghost: "g".into(),
            names: ["i".into(), "u".into(), "x".into()],
            columns: vec!["id".into(), "v".into()],
            key: vec!["id".into()],
            lock_wait: Duration::from_secs(1),
            attempts: 3,
        };
        let [ins, upd, del] = c.create_statements();
        assert_eq!(
            ins,
            "CREATE TRIGGER `d`.`i` AFTER INSERT ON `d`.`t` FOR EACH ROW \
             REPLACE INTO `d`.`g` (`id`, `v`) VALUES (NEW.`id`, NEW.`v`)"
        );
        assert!(upd.contains("IF NOT (OLD.`id` <=> NEW.`id`) THEN DELETE FROM `d`.`g` WHERE `id` = OLD.`id`; END IF;"));
        assert!(del.ends_with("FOR EACH ROW DELETE FROM `d`.`g` WHERE `id` = OLD.`id`"));
    }
}
