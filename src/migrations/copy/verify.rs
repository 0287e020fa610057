//! The checksum before cut-over: both tables compared over the copied columns inside
//! one consistent snapshot. The triggers change the ghost in the same transaction as
//! the application's write, so at any snapshot the two tables agree, under load too.
//! With binlog capture the ghost lags; `copy/cutover.rs` compares outside the write
//! hold all rows but those changed since the capture's position, and under it only
//! those (`checksum_where`).

use crate::backend::{quote_ident, SqlConn};

use super::binlog::BinlogPos;
use super::schema::{cell, Column};
use super::sql::qualified;
use super::sql::server_err;
use super::CopyError;

/// Count and two order-independent aggregates of per-row CRC32s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableChecksum {
    /// Rows.
    pub rows: u64,
    /// BIT_XOR of the row hashes.
    pub xor: u64,
    /// SUM of the row hashes.
    pub sum: String,
}

/// How one column's values are made comparable across a type change.
fn normalized(name: &str, old: &Column, new: &Column) -> String {
    const EXACT: &[&str] = &[
        "tinyint",
        "smallint",
        "mediumint",
        "int",
        "bigint",
        "decimal",
    ];
    const DATETIME: &[&str] = &["date", "datetime", "timestamp"];
    let c = quote_ident(name);
    let (a, b) = (old.data_type.as_str(), new.data_type.as_str());
    if EXACT.contains(&a) && EXACT.contains(&b) {
        // INT -> BIGINT, DECIMAL(10,2) -> DECIMAL(12,4): equal as numbers.
        format!("CAST({c} AS DECIMAL(65,30))")
    } else if DATETIME.contains(&a) && DATETIME.contains(&b) {
        format!("CAST({c} AS DATETIME(6))")
    } else if old.charset.is_some() && new.charset.is_some() {
        // Charset changes compare the characters, not the bytes.
        format!("CONVERT({c} USING utf8mb4)")
    } else {
        format!("CAST({c} AS BINARY)")
    }
}

/// The per-row expression hashed on both sides (NULL flags keep NULL and '' apart).
pub(crate) fn row_expression(columns: &[(String, Column, Column)]) -> String {
    let values: Vec<String> = columns
        .iter()
        .map(|(n, old, new)| normalized(n, old, new))
        .collect();
    let nulls: Vec<String> = columns
        .iter()
        .map(|(n, _, _)| format!("ISNULL({})", quote_ident(n)))
        .collect();
    format!(
        "CONCAT_WS('#', {}, CONCAT({}))",
        values.join(", "),
        nulls.join(", ")
    )
}

/// Checksums both tables in one consistent snapshot; returns (original, ghost).
pub(crate) async fn checksum(
    conn: &mut SqlConn,
    db: &str,
    table: &str,
    ghost: &str,
    columns: &[(String, Column, Column)],
) -> Result<(TableChecksum, TableChecksum), CopyError> {
    begin_snapshot(conn).await?;
    let result = checksum_where(conn, db, table, ghost, columns, None).await;
    let _ = conn.execute("COMMIT").await;
    result
}

/// Starts a read-only consistent snapshot; returns the binary log position it
/// corresponds to (MariaDB's `Binlog_snapshot_file` / `_position`), when there is one.
/// End it with `COMMIT`.
pub(crate) async fn begin_snapshot(conn: &mut SqlConn) -> Result<Option<BinlogPos>, CopyError> {
    conn.execute("SET SESSION TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .await
        .map_err(|e| server_err("checksum", e))?;
    conn.execute("START TRANSACTION WITH CONSISTENT SNAPSHOT, READ ONLY")
        .await
        .map_err(|e| server_err("checksum", e))?;
    let status = conn
        .query("SHOW SESSION STATUS LIKE 'Binlog_snapshot_%'")
        .await
        .map_err(|e| server_err("checksum", e))?;
    let value = |name: &str| {
        status
            .rows
            .iter()
            .find(|r| cell(r, 0).is_some_and(|n| n.eq_ignore_ascii_case(name)))
            .and_then(|r| cell(r, 1))
            .map(str::to_string)
    };
    Ok(
        match (
            value("Binlog_snapshot_file"),
            value("Binlog_snapshot_position"),
        ) {
            (Some(file), Some(pos)) if !file.is_empty() => {
                pos.parse().ok().map(|pos| BinlogPos { file, pos })
            }
            _ => None,
        },
    )
}

/// Checksums both tables over the rows `condition` keeps (all without one), in the
/// transaction the connection is in; returns (original, ghost).
pub(crate) async fn checksum_where(
    conn: &mut SqlConn,
    db: &str,
    table: &str,
    ghost: &str,
    columns: &[(String, Column, Column)],
    condition: Option<&str>,
) -> Result<(TableChecksum, TableChecksum), CopyError> {
    let expr = row_expression(columns);
    let filter = condition.map_or(String::new(), |c| format!(" WHERE {c}"));
    let one = |t: &str| {
        format!(
            "SELECT COUNT(*), COALESCE(BIT_XOR(CRC32({expr})), 0), \
             COALESCE(SUM(CRC32({expr})), 0) FROM {}{filter}",
            qualified(db, t)
        )
    };
    let a = conn
        .query(&one(table))
        .await
        .map_err(|e| server_err("checksum", e))?;
    let b = conn
        .query(&one(ghost))
        .await
        .map_err(|e| server_err("checksum", e))?;
    let parse = |r: &crate::backend::Rows| -> Result<TableChecksum, CopyError> {
        let row = r
            .rows
            .first()
            .ok_or_else(|| CopyError::Failed("checksum returned no row".into()))?;
        Ok(TableChecksum {
            rows: cell(row, 0).and_then(|v| v.parse().ok()).unwrap_or(0),
            xor: cell(row, 1).and_then(|v| v.parse().ok()).unwrap_or(0),
            sum: cell(row, 2).unwrap_or("0").to_string(),
        })
    };
    Ok((parse(&a)?, parse(&b)?))
}

impl TableChecksum {
    /// The aggregate of two disjoint row sets.
    pub(crate) fn add(&self, other: &TableChecksum) -> TableChecksum {
        let sum = |s: &str| s.parse::<u128>().unwrap_or(0);
        TableChecksum {
            rows: self.rows + other.rows,
            xor: self.xor ^ other.xor,
            sum: (sum(&self.sum) + sum(&other.sum)).to_string(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn column(t: &str, charset: Option<&str>) -> Column {
        Column {
            name: "c".into(),
            data_type: t.into(),
            generated: false,
            charset: charset.map(str::to_string),
            collation: None,
            unsigned: false,
        }
    }

    #[test]
    fn type_changes_compare_by_value() {
        assert_eq!(
            normalized("c", &column("int", None), &column("bigint", None)),
            "CAST(`c` AS DECIMAL(65,30))"
        );
        assert_eq!(
            normalized(
                "c",
                &column("varchar", Some("latin1")),
                &column("text", Some("utf8mb4"))
            ),
            "CONVERT(`c` USING utf8mb4)"
        );
        assert_eq!(
            normalized("c", &column("float", None), &column("double", None)),
            "CAST(`c` AS BINARY)"
        );
    }
}
