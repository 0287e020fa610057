//! Names the copy derives from a migration, what it reads from `information_schema`,
//! and the preflight that refuses what a copy cannot do.

use crate::backend::{quote_literal, Rows, SqlConn};

use super::sql::server_err;
use super::{CopyError, CopyTask};

/// MariaDB's identifier length limit.
pub(crate) const MAX_NAME: usize = 64;

/// Names of everything a copy creates, derived from the migration's uuid so that a
/// resumed run finds them again: `_<table>_<8 hex>_<suffix>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyNames {
    /// The ghost table (the new schema, filled by the copy).
    pub ghost: String,
    /// The old table after the cut-over.
    pub old: String,
    /// Change-capture triggers (insert, update, delete).
    pub triggers: [String; 3],
}

impl CopyNames {
    /// The names for `task`.
    pub fn of(task: &CopyTask) -> CopyNames {
        let tag = uuid_tag(&task.uuid);
        let name = |suffix: &str| {
            // `_` + table + `_` + 8 hex + `_` + 3 letters.
            let room = MAX_NAME - (1 + 1 + tag.len() + 1 + suffix.len());
            format!("_{}_{tag}_{suffix}", prefix_chars(&task.table, room))
        };
        CopyNames {
            ghost: name("gho"),
            old: name("old"),
            triggers: [name("ins"), name("upd"), name("del")],
        }
    }
}

/// The first 8 hex digits of the uuid (a hash of it if it has fewer).
fn uuid_tag(uuid: &str) -> String {
    let hex: String = uuid
        .chars()
        .filter(char::is_ascii_hexdigit)
        .take(8)
        .collect::<String>()
        .to_ascii_lowercase();
    if hex.len() == 8 {
        hex
    } else {
        format!(
            "{:08x}",
            xxhash_rust::xxh64::xxh64(uuid.as_bytes(), 0) as u32
        )
    }
}

/// At most `max` characters of `s` (identifier limits count characters).
fn prefix_chars(s: &str, max: usize) -> &str {
    match s.char_indices().nth(max) {
        Some((at, _)) => &s[..at],
        None => s,
    }
}

/// A column as `information_schema.COLUMNS` describes it.
#[derive(Debug, Clone)]
pub(crate) struct Column {
    pub name: String,
    /// `DATA_TYPE`, lower case (`int`, `varchar`, ...).
    pub data_type: String,
    /// Generated (virtual or stored): cannot be written.
    pub generated: bool,
    pub charset: Option<String>,
    pub collation: Option<String>,
    /// An integer declared UNSIGNED.
    pub unsigned: bool,
}

/// A unique index over NOT NULL, whole (not prefix) columns.
#[derive(Debug, Clone)]
pub(crate) struct UniqueKey {
    pub name: String,
    pub columns: Vec<String>,
}

pub(crate) async fn table_exists(
    conn: &mut SqlConn,
    db: &str,
    table: &str,
) -> Result<bool, CopyError> {
    let rows = query(
        conn,
        &format!(
            "SELECT 1 FROM information_schema.TABLES WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {}",
            quote_literal(db),
            quote_literal(table)
        ),
    )
    .await?;
    Ok(!rows.rows.is_empty())
}

/// `(ENGINE, TABLE_ROWS estimate)` of a base table, `None` if there is none.
pub(crate) async fn table_info(
    conn: &mut SqlConn,
    db: &str,
    table: &str,
) -> Result<Option<(String, u64)>, CopyError> {
    let rows = query(
        conn,
        &format!(
            "SELECT ENGINE, TABLE_ROWS FROM information_schema.TABLES \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} AND TABLE_TYPE = 'BASE TABLE'",
            quote_literal(db),
            quote_literal(table)
        ),
    )
    .await?;
    Ok(rows.rows.first().map(|r| {
        let engine = cell(r, 0).unwrap_or_default().to_string();
        let estimate = cell(r, 1).and_then(|v| v.parse().ok()).unwrap_or(0);
        (engine, estimate)
    }))
}

pub(crate) async fn columns(
    conn: &mut SqlConn,
    db: &str,
    table: &str,
) -> Result<Vec<Column>, CopyError> {
    let rows = query(
        conn,
        &format!(
            "SELECT COLUMN_NAME, LOWER(DATA_TYPE), IS_GENERATED, CHARACTER_SET_NAME, \
             COLLATION_NAME, COLUMN_TYPE LIKE '%unsigned%' FROM information_schema.COLUMNS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} ORDER BY ORDINAL_POSITION",
            quote_literal(db),
            quote_literal(table)
        ),
    )
    .await?;
    Ok(rows
        .rows
        .iter()
        .map(|r| Column {
            name: cell(r, 0).unwrap_or_default().to_string(),
            data_type: cell(r, 1).unwrap_or_default().to_string(),
            generated: cell(r, 2).is_some_and(|g| !g.eq_ignore_ascii_case("NEVER")),
            charset: cell(r, 3).map(str::to_string),
            collation: cell(r, 4).map(str::to_string),
            unsigned: cell(r, 5) == Some("1"),
        })
        .collect())
}

/// Unique indexes whose columns are all NOT NULL and whole, PRIMARY first.
pub(crate) async fn unique_keys(
    conn: &mut SqlConn,
    db: &str,
    table: &str,
) -> Result<Vec<UniqueKey>, CopyError> {
    let rows = query(
        conn,
        &format!(
            "SELECT s.INDEX_NAME, s.COLUMN_NAME, s.SUB_PART, c.IS_NULLABLE, s.INDEX_TYPE \
             FROM information_schema.STATISTICS s JOIN information_schema.COLUMNS c \
               ON c.TABLE_SCHEMA = s.TABLE_SCHEMA AND c.TABLE_NAME = s.TABLE_NAME \
              AND c.COLUMN_NAME = s.COLUMN_NAME \
             WHERE s.TABLE_SCHEMA = {} AND s.TABLE_NAME = {} AND s.NON_UNIQUE = 0 \
             ORDER BY s.INDEX_NAME = 'PRIMARY' DESC, s.INDEX_NAME, s.SEQ_IN_INDEX",
            quote_literal(db),
            quote_literal(table)
        ),
    )
    .await?;
    let mut keys: Vec<(UniqueKey, bool)> = Vec::new();
    for r in &rows.rows {
        let name = cell(r, 0).unwrap_or_default();
        let usable = cell(r, 2).is_none()
            && cell(r, 3) == Some("NO")
            && cell(r, 4).is_some_and(|t| t.eq_ignore_ascii_case("BTREE"));
        match keys.last_mut() {
            Some((k, ok)) if k.name == name => {
                k.columns.push(cell(r, 1).unwrap_or_default().to_string());
                *ok &= usable;
            }
            _ => keys.push((
                UniqueKey {
                    name: name.to_string(),
                    columns: vec![cell(r, 1).unwrap_or_default().to_string()],
                },
                usable,
            )),
        }
    }
    Ok(keys
        .into_iter()
        .filter(|(_, ok)| *ok)
        .map(|(k, _)| k)
        .collect())
}

/// Names of all unique indexes (usable for chunking or not), as sorted column lists.
pub(crate) async fn unique_column_sets(
    conn: &mut SqlConn,
    db: &str,
    table: &str,
) -> Result<Vec<Vec<String>>, CopyError> {
    let rows = query(
        conn,
        &format!(
            "SELECT GROUP_CONCAT(LOWER(COLUMN_NAME) ORDER BY COLUMN_NAME SEPARATOR 0x00) \
             FROM information_schema.STATISTICS \
             WHERE TABLE_SCHEMA = {} AND TABLE_NAME = {} AND NON_UNIQUE = 0 \
             GROUP BY INDEX_NAME",
            quote_literal(db),
            quote_literal(table)
        ),
    )
    .await?;
    Ok(rows
        .rows
        .iter()
        .filter_map(|r| cell(r, 0))
        .map(|s| {
            let mut set: Vec<String> = s.split('\0').map(str::to_string).collect();
            set.sort();
            set
        })
        .collect())
}

/// Foreign keys that reference the table or that the table has.
pub(crate) async fn foreign_keys(
    conn: &mut SqlConn,
    db: &str,
    table: &str,
) -> Result<Vec<String>, CopyError> {
    first_column(
        conn,
        &format!(
            "SELECT DISTINCT CONCAT(CONSTRAINT_NAME, ' (', TABLE_SCHEMA, '.', TABLE_NAME, \
             ' -> ', REFERENCED_TABLE_SCHEMA, '.', REFERENCED_TABLE_NAME, ')') \
             FROM information_schema.KEY_COLUMN_USAGE \
             WHERE REFERENCED_TABLE_NAME IS NOT NULL AND \
             ((TABLE_SCHEMA = {0} AND TABLE_NAME = {1}) OR \
              (REFERENCED_TABLE_SCHEMA = {0} AND REFERENCED_TABLE_NAME = {1}))",
            quote_literal(db),
            quote_literal(table)
        ),
    )
    .await
}

/// Names of the triggers defined on a table.
pub(crate) async fn triggers_on(
    conn: &mut SqlConn,
    db: &str,
    table: &str,
) -> Result<Vec<String>, CopyError> {
    first_column(
        conn,
        &format!(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
             WHERE EVENT_OBJECT_SCHEMA = {} AND EVENT_OBJECT_TABLE = {}",
            quote_literal(db),
            quote_literal(table)
        ),
    )
    .await
}

/// Which of `names` exist as triggers in `db`.
pub(crate) async fn existing_triggers(
    conn: &mut SqlConn,
    db: &str,
    names: &[String],
) -> Result<Vec<String>, CopyError> {
    let list: Vec<String> = names.iter().map(|n| quote_literal(n)).collect();
    first_column(
        conn,
        &format!(
            "SELECT TRIGGER_NAME FROM information_schema.TRIGGERS \
             WHERE TRIGGER_SCHEMA = {} AND TRIGGER_NAME IN ({})",
            quote_literal(db),
            list.join(", ")
        ),
    )
    .await
}

const RENAME_COLUMN: &str = "a copy matches columns by name and would lose a renamed \
column's data; rename it in its own migration (RENAME COLUMN is instant)";

fn unquote_upper(name: &str) -> String {
    name.trim_matches('`').replace("``", "`").to_uppercase()
}

/// Refuses specs a copy cannot carry out (or must not), before anything is created.
pub(crate) fn refuse_spec(task: &CopyTask) -> Result<(), CopyError> {
    const MAINTENANCE: &[&str] = &[
        "DISCARD",
        "IMPORT",
        "EXCHANGE",
        "TRUNCATE",
        "COALESCE",
        "REORGANIZE",
        "ANALYZE",
        "CHECK",
        "OPTIMIZE",
        "REBUILD",
        "REPAIR",
        "REMOVE",
    ];
    let heads = crate::migrations::strategy::clause_heads(&task.spec);
    if heads.is_empty() {
        return Err(CopyError::Failed("empty ALTER specification".into()));
    }
    for head in &heads {
        let w = |i: usize| head.get(i).map(String::as_str).unwrap_or("");
        let refuse = |why: &str| Err(CopyError::Failed(format!("{why}: `{}`", head.join(" "))));
        match w(0) {
            "RENAME" if !matches!(w(1), "COLUMN" | "INDEX" | "KEY") => {
                return refuse("a copy cannot rename the table; RENAME TABLE is its own DDL")
            }
            "CONVERT" if w(1) == "PARTITION" => {
                return refuse("partition maintenance is not a copy")
            }
            x if MAINTENANCE.contains(&x) => {
                return refuse("partition or tablespace maintenance is not a copy")
            }
            "DROP" if w(1) == "PARTITION" => return refuse("dropping a partition drops data"),
            "RENAME" if w(1) == "COLUMN" => return refuse(RENAME_COLUMN),
            "CHANGE" => {
                // CHANGE [COLUMN] [IF EXISTS] old new type: a rename unless old = new.
                let mut i = 1;
                if w(i) == "COLUMN" {
                    i += 1;
                }
                if w(i) == "IF" && w(i + 1) == "EXISTS" {
                    i += 2;
                }
                let (old, new) = (unquote_upper(w(i)), unquote_upper(w(i + 1)));
                if old != new {
                    return refuse(RENAME_COLUMN);
                }
            }
            "ADD" if w(1) == "FOREIGN" && !task.options.allow_foreign_keys => {
                return refuse("foreign keys need allow_foreign_keys")
            }
            _ => {}
        }
    }
    Ok(())
}

/// The first column of every row a query returns (NULLs skipped).
async fn first_column(conn: &mut SqlConn, sql: &str) -> Result<Vec<String>, CopyError> {
    Ok(query(conn, sql)
        .await?
        .rows
        .iter()
        .filter_map(|r| cell(r, 0).map(str::to_string))
        .collect())
}

pub(crate) async fn query(conn: &mut SqlConn, sql: &str) -> Result<Rows, CopyError> {
    conn.query(sql)
        .await
        .map_err(|e| server_err("reading the schema", e))
}

pub(crate) fn cell(row: &[Option<String>], i: usize) -> Option<&str> {
    row.get(i)?.as_deref()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::migrations::copy::CopyOptions;

    fn task(table: &str, uuid: &str) -> CopyTask {
        CopyTask {
            uuid: uuid.into(),
            database: "d".into(),
            table: table.into(),
            spec: "MODIFY a BIGINT".into(),
            options: CopyOptions::default(),
        }
    }

    #[test]
    fn names_come_from_the_uuid_and_fit_in_64_characters() {
        let n = CopyNames::of(&task("orders", "5F0C1B2A-1234-4abc-8def-0123456789ab"));
        assert_eq!(n.ghost, "_orders_5f0c1b2a_gho");
        assert_eq!(n.old, "_orders_5f0c1b2a_old");
        assert_eq!(n.triggers[1], "_orders_5f0c1b2a_upd");
        let long = "t".repeat(64);
        let n = CopyNames::of(&task(&long, "0123456789"));
        assert_eq!(n.ghost.chars().count(), 64);
        assert!(n.ghost.ends_with("_01234567_gho"));
        let n = CopyNames::of(&task("é".repeat(64).as_str(), "x"));
        assert_eq!(n.old.chars().count(), 64);
    }

    #[test]
    fn refuses_renames_and_maintenance_but_not_index_renames() {
        let mut t = task("t", "u");
        for spec in [
            "RENAME TO x",
            "rename as y",
            "DISCARD TABLESPACE",
            "DROP PARTITION p1",
        ] {
            t.spec = spec.into();
            assert!(refuse_spec(&t).is_err(), "{spec}");
        }
        for spec in [
            "CHANGE COLUMN a `A` BIGINT",
            "RENAME INDEX i TO j",
            "CONVERT TO CHARACTER SET utf8mb4",
            "MODIFY a BIGINT, DROP INDEX i",
        ] {
            t.spec = spec.into();
            assert!(refuse_spec(&t).is_ok(), "{spec}");
        }
    }
}
