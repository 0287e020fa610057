//! What the binlog capture does with a row change: the key it touched (from the row
//! image), and the statements that bring those keys up to date in the ghost.

use std::time::Duration;

use mysql_common::binlog::row::BinlogRow;
use mysql_common::binlog::value::BinlogValue;
use mysql_common::value::Value;

use crate::backend::{quote_ident, SqlConn};

use super::binlog::{CaptureSpec, KeyColumn, Watermark};
use super::schema::Column;
use super::sql::{code, qualified, server_err};
use super::CopyError;

/// Makes the ghost's rows for `keys` equal to the original's now: deleted where the
/// original has none, replaced (at or below the watermark) where it has one. Returns
/// rows changed.
pub(crate) async fn apply_keys(
    conn: &mut SqlConn,
    s: &CaptureSpec,
    keys: &[Vec<String>],
    watermark: &Watermark,
) -> Result<u64, CopyError> {
    let t = qualified(&s.database, &s.table);
    let g = qualified(&s.database, &s.ghost);
    let in_list = s.key.in_list(keys)?;
    let same: Vec<String> = s
        .key
        .columns
        .iter()
        .map(|(c, _)| format!("o.{0} = {g}.{0}", quote_ident(c)))
        .collect();
    let delete = format!(
        "DELETE FROM {g} WHERE {in_list} AND NOT EXISTS (SELECT 1 FROM {t} AS o WHERE {})",
        same.join(" AND ")
    );
    let deleted = retried(conn, &delete, "applying binlog deletes to the ghost").await?;
    let upto = match watermark {
        Watermark::All => String::new(),
        Watermark::Upto(hi) => format!(" AND {}", s.key.compare(hi, false)?),
        Watermark::Nothing => return Ok(deleted),
    };
    let cols: Vec<String> = s.columns.iter().map(|c| quote_ident(c)).collect();
    let cols = cols.join(", ");
    let replace = format!("REPLACE INTO {g} ({cols}) SELECT {cols} FROM {t} WHERE {in_list}{upto}");
    let replaced = retried(conn, &replace, "applying binlog changes to the ghost").await?;
    Ok(deleted + replaced)
}

/// Attempts at one apply statement that lost a lock conflict (with a chunk writing the
/// same ghost rows; the statement was rolled back whole, so it is simply run again).
const APPLY_ATTEMPTS: u32 = 10;

/// Runs an apply statement, again after a deadlock or lock wait timeout; rows changed.
async fn retried(conn: &mut SqlConn, sql: &str, doing: &str) -> Result<u64, CopyError> {
    let mut attempt = 0;
    loop {
        match conn.execute(sql).await {
            Ok(ok) => return Ok(ok.affected_rows),
            Err(e)
                if attempt + 1 < APPLY_ATTEMPTS
                    && matches!(e.code(), Some(code::DEADLOCK | code::LOCK_WAIT_TIMEOUT)) =>
            {
                attempt += 1;
                crate::timer::sleep(Duration::from_millis(5 << attempt.min(6))).await;
            }
            Err(e) => return Err(server_err(doing, e)),
        }
    }
}

/// The key of one row image, hex per key column (the checkpoint's form).
pub(crate) fn key_of(row: &BinlogRow, key: &[KeyColumn]) -> Result<Vec<String>, CopyError> {
    key.iter()
        .map(|k| {
            let v = row.as_ref(k.ordinal).ok_or_else(|| {
                CopyError::Failed(format!(
                    "a row image lacks key column {} (binlog_row_image must be FULL)",
                    k.column.name
                ))
            })?;
            let text = key_text(v, &k.column)?;
            Ok(text.iter().map(|b| format!("{b:02X}")).collect())
        })
        .collect()
}

/// A key value as the text (or bytes) the copy's key literals are built from.
fn key_text(v: &BinlogValue<'_>, c: &Column) -> Result<Vec<u8>, CopyError> {
    let bad = || CopyError::Failed(format!("cannot read key column {} from the binlog", c.name));
    let BinlogValue::Value(v) = v else {
        return Err(bad());
    };
    Ok(match v {
        Value::Int(i) => match (c.unsigned, int_bits(&c.data_type)) {
            (true, Some(bits)) if *i < 0 => {
                let mask = if bits == 64 {
                    u64::MAX
                } else {
                    (1u64 << bits) - 1
                };
                ((*i as u64) & mask).to_string().into_bytes()
            }
            _ => i.to_string().into_bytes(),
        },
        Value::UInt(u) => u.to_string().into_bytes(),
        Value::Bytes(b) => b.clone(),
        Value::Date(y, mo, d, h, mi, s, us) => {
            if c.data_type == "date" {
                format!("{y:04}-{mo:02}-{d:02}").into_bytes()
            } else {
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}.{us:06}").into_bytes()
            }
        }
        Value::Time(neg, days, h, mi, s, us) => {
            let hours = u64::from(*days) * 24 + u64::from(*h);
            let sign = if *neg { "-" } else { "" };
            format!("{sign}{hours:02}:{mi:02}:{s:02}.{us:06}").into_bytes()
        }
        Value::NULL | Value::Float(_) | Value::Double(_) => return Err(bad()),
    })
}

fn int_bits(data_type: &str) -> Option<u32> {
    Some(match data_type {
        "tinyint" => 8,
        "smallint" => 16,
        "mediumint" => 24,
        "int" => 32,
        "bigint" => 64,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsigned_keys_are_not_negative() {
        let c = Column {
            name: "id".into(),
            data_type: "int".into(),
            generated: false,
            charset: None,
            collation: None,
            unsigned: true,
        };
        let v = BinlogValue::Value(Value::Int(-1));
        assert_eq!(key_text(&v, &c).ok(), Some(b"4294967295".to_vec()));
        let d = Column {
            data_type: "datetime".into(),
            ..c.clone()
        };
        let v = BinlogValue::Value(Value::Date(2024, 2, 29, 13, 5, 9, 120));
        assert_eq!(
            key_text(&v, &d).ok(),
            Some(b"2024-02-29 13:05:09.000120".to_vec())
        );
    }
}
