//! The chunked copy: key ranges walked in key order, each chunk copied in one
//! transaction together with its checkpoint.

use std::time::{Duration, Instant};

use crate::backend::{quote_ident, SqlConn};

use super::binlog::{BinlogCapture, BinlogPos, Watermark};
use super::schema::{cell, Column};
use super::sql::{code, qualified, server_err};
use super::{CopyControl, CopyError, CopyProgress};

/// Smallest and largest chunk, in rows.
const MIN_CHUNK: u64 = 50;
const MAX_CHUNK: u64 = 100_000;
/// First chunk, before the timing of real chunks is known.
const FIRST_CHUNK: u64 = 1_000;
/// Lock waits and deadlocks tolerated in a row before the copy fails.
const CHUNK_RETRIES: u32 = 10;

/// How a key column's values are written back into SQL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum KeyKind {
    /// Integers and decimals: an exact numeric literal.
    Number,
    /// Dates and times: a quoted literal.
    Temporal,
    /// Character strings: the bytes, converted into the column's charset and collation
    /// (so comparisons follow the index order).
    Text { charset: String, collation: String },
    /// Binary strings: the bytes.
    Binary,
}

impl KeyKind {
    /// The kind for a column, or `None` if chunking by it is not supported.
    pub(crate) fn of(c: &Column) -> Option<KeyKind> {
        match c.data_type.as_str() {
            "tinyint" | "smallint" | "mediumint" | "int" | "bigint" | "decimal" => {
                Some(KeyKind::Number)
            }
            "date" | "datetime" | "timestamp" | "time" | "year" => Some(KeyKind::Temporal),
            "char" | "varchar" => match (&c.charset, &c.collation) {
                (Some(cs), Some(co)) => Some(KeyKind::Text {
                    charset: cs.clone(),
                    collation: co.clone(),
                }),
                _ => None,
            },
            "binary" | "varbinary" => Some(KeyKind::Binary),
            _ => None,
        }
    }

    /// Expression that reads a value as hex text (exact for every kind).
    fn select(&self, column: &str) -> String {
        match self {
            KeyKind::Number | KeyKind::Temporal => {
                format!("HEX(CAST({} AS CHAR))", quote_ident(column))
            }
            KeyKind::Text { .. } | KeyKind::Binary => format!("HEX({})", quote_ident(column)),
        }
    }

    /// SQL literal for a hex value read by `select`.
    pub(crate) fn literal(&self, hex: &str) -> Result<String, CopyError> {
        if !hex.bytes().all(|b| b.is_ascii_hexdigit()) || !hex.len().is_multiple_of(2) {
            return Err(CopyError::Failed(format!("malformed key value {hex:?}")));
        }
        let text = || -> Result<String, CopyError> {
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .filter_map(|i| u8::from_str_radix(&hex[i..i + 2], 16).ok())
                .collect();
            String::from_utf8(bytes)
                .map_err(|_| CopyError::Failed(format!("malformed key value {hex:?}")))
        };
        match self {
            KeyKind::Number => {
                let t = text()?;
                let ok = !t.is_empty()
                    && t.bytes()
                        .enumerate()
                        .all(|(i, b)| b.is_ascii_digit() || b == b'.' || (i == 0 && b == b'-'));
                if ok {
                    Ok(t)
                } else {
                    Err(CopyError::Failed(format!("malformed numeric key {t:?}")))
                }
            }
            KeyKind::Temporal => {
                let t = text()?;
                if t.bytes()
                    .all(|b| b.is_ascii_digit() || b"-:. ".contains(&b))
                {
                    Ok(format!("'{t}'"))
                } else {
                    Err(CopyError::Failed(format!("malformed temporal key {t:?}")))
                }
            }
            KeyKind::Text { charset, collation } => Ok(format!(
                "CONVERT(X'{hex}' USING {}) COLLATE {}",
                quote_ident(charset),
                quote_ident(collation)
            )),
            KeyKind::Binary => Ok(format!("X'{hex}'")),
        }
    }
}

/// The unique key the copy walks (shared by the original and the ghost).
#[derive(Debug, Clone)]
pub(crate) struct ChunkKey {
    /// Index name in the original (for FORCE INDEX).
    pub index: String,
    /// Its columns, in index order, with their kinds.
    pub columns: Vec<(String, KeyKind)>,
}

impl ChunkKey {
    fn order_by(&self, desc: bool) -> String {
        let dir = if desc { " DESC" } else { "" };
        let cols: Vec<String> = self
            .columns
            .iter()
            .map(|(c, _)| format!("{}{dir}", quote_ident(c)))
            .collect();
        cols.join(", ")
    }

    fn select_hex(&self) -> String {
        let cols: Vec<String> = self.columns.iter().map(|(c, k)| k.select(c)).collect();
        cols.join(", ")
    }

    /// SQL literals of one key value (hex per column); `what` names it in the error.
    fn literals(&self, key: &[String], what: &str) -> Result<Vec<String>, CopyError> {
        if key.len() != self.columns.len() {
            return Err(CopyError::Failed(format!(
                "{what} does not match the table's key"
            )));
        }
        self.columns
            .iter()
            .zip(key)
            .map(|((_, kind), h)| kind.literal(h))
            .collect()
    }

    /// `key IN (...)` over the given keys (hex per column), a row constructor for a
    /// composite key.
    pub(crate) fn in_list(&self, keys: &[Vec<String>]) -> Result<String, CopyError> {
        let mut items = Vec::with_capacity(keys.len());
        for k in keys {
            let lits = self.literals(k, "a key")?;
            items.push(if lits.len() == 1 {
                lits.join("")
            } else {
                format!("({})", lits.join(", "))
            });
        }
        let cols: Vec<String> = self.columns.iter().map(|(c, _)| quote_ident(c)).collect();
        let target = if cols.len() == 1 {
            cols.join("")
        } else {
            format!("({})", cols.join(", "))
        };
        if items.is_empty() {
            return Ok("FALSE".into());
        }
        Ok(format!("{target} IN ({})", items.join(", ")))
    }

    /// `key > bound` (strict) or `key <= bound`, over a composite key in index order.
    pub(crate) fn compare(&self, bound: &[String], after: bool) -> Result<String, CopyError> {
        let lits = self.literals(bound, "checkpoint")?;
        let mut ors = Vec::new();
        for i in 0..self.columns.len() {
            let mut ands: Vec<String> = (0..i)
                .map(|j| format!("{} = {}", quote_ident(&self.columns[j].0), lits[j]))
                .collect();
            let last = i + 1 == self.columns.len();
            let op = match (after, last) {
                (true, _) => ">",
                (false, false) => "<",
                (false, true) => "<=",
            };
            ands.push(format!(
                "{} {op} {}",
                quote_ident(&self.columns[i].0),
                lits[i]
            ));
            ors.push(format!("({})", ands.join(" AND ")));
        }
        Ok(format!("({})", ors.join(" OR ")))
    }
}

/// A resume point: rows copied so far and the last copied key (hex per column).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// Rows copied up to and including this chunk.
    pub rows_copied: u64,
    /// Last copied key, each column as hex text (see the copy docs).
    pub last_key: Vec<String>,
    /// With binlog capture: every event before this position was in the ghost when
    /// the chunk began (a resumed capture reads from here).
    pub binlog: Option<BinlogPos>,
}

impl Checkpoint {
    /// `v1 <rows> <hex>,<hex>...[ <binlog file>:<pos>]`
    pub fn encode(&self) -> String {
        let mut s = format!("v1 {} {}", self.rows_copied, self.last_key.join(","));
        if let Some(b) = &self.binlog {
            s.push(' ');
            s.push_str(&b.encode());
        }
        s
    }

    /// Parses what [`Checkpoint::encode`] wrote.
    pub fn decode(s: &str) -> Option<Checkpoint> {
        let mut parts = s.trim().splitn(4, ' ');
        if parts.next()? != "v1" {
            return None;
        }
        let rows_copied = parts.next()?.parse().ok()?;
        let keys = parts.next().unwrap_or("");
        let binlog = match parts.next() {
            Some(b) => Some(BinlogPos::decode(b)?),
            None => None,
        };
        let last_key: Vec<String> = keys.split(',').map(str::to_string).collect();
        if last_key
            .iter()
            .any(|k| !k.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return None;
        }
        Some(Checkpoint {
            rows_copied,
            last_key,
            binlog,
        })
    }
}

/// What the copy loop needs to know.
pub(crate) struct CopyPlan<'a> {
    pub database: &'a str,
    pub table: &'a str,
    pub ghost: &'a str,
    pub key: &'a ChunkKey,
    /// Columns copied (present in both, writable in the ghost).
    pub columns: &'a [String],
    pub chunk_target: Duration,
    /// Binlog capture, when it keeps the ghost in step (else triggers do).
    pub capture: Option<&'a BinlogCapture>,
}

/// Copies every row after `start` (or from the beginning), chunk by chunk, each in a
/// transaction with `control.checkpoint_sql`. `progress` is updated after each commit.
pub(crate) async fn copy_rows<C: CopyControl>(
    conn: &mut SqlConn,
    plan: &CopyPlan<'_>,
    start: Option<Vec<String>>,
    progress: &mut CopyProgress,
    control: &C,
) -> Result<(), CopyError> {
    let t = qualified(plan.database, plan.table);
    let g = qualified(plan.database, plan.ghost);
    let force = format!("FORCE INDEX ({})", quote_ident(&plan.key.index));
    let cols: Vec<String> = plan.columns.iter().map(|c| quote_ident(c)).collect();
    let col_list = cols.join(", ");
    // With triggers, a chunk reads under shared locks and its row wins (see below).
    // With binlog capture, a chunk reads without locks and a row the capture already
    // wrote wins: the capture wrote the original's latest version.
    let (lock, update) = match plan.capture {
        None => {
            let update: Vec<String> = cols.iter().map(|c| format!("{c} = VALUES({c})")).collect();
            (" LOCK IN SHARE MODE", update.join(", "))
        }
        Some(_) => {
            let k = format!("{g}.{}", quote_ident(&plan.key.columns[0].0));
            ("", format!("{k} = {k}"))
        }
    };
    let mut last = start;
    let mut size = FIRST_CHUNK;
    let mut retries = 0;
    loop {
        control.gate().await.map_err(CopyError::Stopped)?;
        let after = match &last {
            Some(k) => plan.key.compare(k, true)?,
            None => "TRUE".to_string(),
        };
        // The chunk's upper bound: the size-th key after the last one, or the last key
        // of the table for the final chunk.
        let bound = conn
            .query(&format!(
                "SELECT {} FROM {t} {force} WHERE {after} ORDER BY {} LIMIT 1 OFFSET {}",
                plan.key.select_hex(),
                plan.key.order_by(false),
                size - 1
            ))
            .await
            .map_err(|e| server_err("finding the next chunk", e))?;
        if let Some(c) = plan.capture {
            c.check()?;
        }
        let (hi, rows) = match bound.rows.first() {
            Some(r) => (hex_row(r, plan.key.columns.len())?, size),
            None => {
                if let Some(c) = plan.capture {
                    // The end of the table: from here on every change is the
                    // capture's, including rows added after the query below.
                    c.set_watermark(Watermark::All);
                }
                let tail = conn
                    .query(&format!(
                        "SELECT {}, (SELECT COUNT(*) FROM {t} WHERE {after}) FROM {t} {force} \
                         WHERE {after} ORDER BY {} LIMIT 1",
                        plan.key.select_hex(),
                        plan.key.order_by(true),
                    ))
                    .await
                    .map_err(|e| server_err("finding the last chunk", e))?;
                match tail.rows.first() {
                    None => return Ok(()),
                    Some(r) => {
                        let n = plan.key.columns.len();
                        let count = cell(r, n).and_then(|c| c.parse().ok()).unwrap_or(0);
                        (hex_row(r, n)?, count)
                    }
                }
            }
        };
        let upto = plan.key.compare(&hi, false)?;
        let mut next = progress.clone();
        next.rows_copied += rows;
        let binlog = plan.capture.map(|c| {
            // Before the chunk reads: a change to one of its rows from now on is
            // applied by the capture, one before it is in what the chunk reads.
            c.begin_chunk(&hi);
            c.applied()
        });
        next.checkpoint = Some(
            Checkpoint {
                rows_copied: next.rows_copied,
                last_key: hi.clone(),
                binlog,
            }
            .encode(),
        );
        let checkpoint_sql = control.checkpoint_sql(&next);
        // Triggers: LOCK IN SHARE MODE: the rows are read at their latest committed version and
        // no application write can change them until this chunk commits, so a row a
        // trigger already wrote to the ghost is the same row again (the duplicate
        // update changes nothing). Lock order is original, then ghost, as in the
        // application's own writes through the triggers.
        let insert = format!(
            "INSERT INTO {g} ({col_list}) SELECT {col_list} FROM {t} {force} \
             WHERE {after} AND {upto}{lock} ON DUPLICATE KEY UPDATE {update}"
        );
        let started = Instant::now();
        let ran = run_chunk(conn, &insert, &checkpoint_sql).await;
        if let Some(c) = plan.capture {
            c.end_chunk(conn).await?;
        }
        match ran {
            Ok(()) => {
                retries = 0;
                *progress = next;
                control.report(progress);
                last = Some(hi);
                size = next_size(size, started.elapsed(), plan.chunk_target);
            }
            Err(ChunkError::Retry(e)) => {
                retries += 1;
                if retries > CHUNK_RETRIES {
                    return Err(CopyError::Failed(format!(
                        "chunk kept failing on locks ({retries} attempts): {e}"
                    )));
                }
                size = (size / 2).max(MIN_CHUNK);
                crate::timer::sleep(super::sql::backoff(retries)).await;
            }
            Err(ChunkError::Fatal(e)) => return Err(e),
        }
    }
}

enum ChunkError {
    /// Lock wait timeout or deadlock: rolled back, try again.
    Retry(String),
    Fatal(CopyError),
}

async fn run_chunk(
    conn: &mut SqlConn,
    insert: &str,
    checkpoint_sql: &str,
) -> Result<(), ChunkError> {
    let result = async {
        conn.execute("START TRANSACTION").await?;
        let ok = conn.execute(insert).await?;
        if ok.warnings > 0 {
            let warnings = conn
                .query("SHOW WARNINGS LIMIT 3")
                .await
                .map(|r| {
                    r.rows
                        .iter()
                        .map(|w| w.iter().flatten().cloned().collect::<Vec<_>>().join(" "))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default();
            return Ok(Some(warnings));
        }
        if !checkpoint_sql.trim().is_empty() {
            conn.execute(checkpoint_sql).await?;
        }
        conn.execute("COMMIT").await?;
        Ok::<_, crate::backend::SqlError>(None)
    }
    .await;
    match result {
        Ok(None) => Ok(()),
        Ok(Some(warnings)) => {
            let _ = conn.execute("ROLLBACK").await;
            Err(ChunkError::Fatal(CopyError::Failed(format!(
                "copying a chunk raised warnings (data would change): {warnings}"
            ))))
        }
        Err(e) => {
            let _ = conn.execute("ROLLBACK").await;
            match e.code() {
                Some(code::LOCK_WAIT_TIMEOUT | code::DEADLOCK) => {
                    Err(ChunkError::Retry(e.to_string()))
                }
                _ => Err(ChunkError::Fatal(server_err(
                    "copying a chunk (the data does not fit the new schema?)",
                    e,
                ))),
            }
        }
    }
}

fn hex_row(row: &[Option<String>], n: usize) -> Result<Vec<String>, CopyError> {
    (0..n)
        .map(|i| {
            cell(row, i)
                .map(str::to_string)
                .ok_or_else(|| CopyError::Failed("a key value is NULL".into()))
        })
        .collect()
}

/// Adapts the chunk size towards `target`, at most doubling or halving at once.
fn next_size(size: u64, took: Duration, target: Duration) -> u64 {
    let took = took.as_secs_f64().max(0.001);
    let factor = (target.as_secs_f64() / took).clamp(0.5, 2.0);
    ((size as f64 * factor) as u64).clamp(MIN_CHUNK, MAX_CHUNK)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> ChunkKey {
        ChunkKey {
            index: "PRIMARY".into(),
            columns: vec![
                ("a".into(), KeyKind::Number),
                (
                    "b".into(),
                    KeyKind::Text {
                        charset: "utf8mb4".into(),
                        collation: "utf8mb4_general_ci".into(),
                    },
                ),
            ],
        }
    }

    #[test]
    fn composite_ranges_follow_index_order() {
        let b = vec!["3132".to_string(), "6869".to_string()];
        assert_eq!(
            key().compare(&b, true).ok(),
            Some(
                "((`a` > 12) OR (`a` = 12 AND `b` > CONVERT(X'6869' USING `utf8mb4`) \
                 COLLATE `utf8mb4_general_ci`))"
                    .to_string()
            )
        );
        let upto = key().compare(&b, false).ok().unwrap_or_default();
        assert!(
            upto.starts_with("((`a` < 12) OR (`a` = 12 AND `b` <= "),
            "{upto}"
        );
        assert!(key().compare(&["zz".into(), "00".into()], true).is_err());
        assert!(KeyKind::Number.literal(&hex("1; DROP")).is_err());
    }

    fn hex(s: &str) -> String {
        s.bytes().map(|b| format!("{b:02X}")).collect()
    }

    #[test]
    fn checkpoints_round_trip() {
        let c = Checkpoint {
            rows_copied: 4200,
            last_key: vec!["3432".into(), "".into()],
            binlog: None,
        };
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c.clone()));
        let c = Checkpoint {
            binlog: BinlogPos::decode("mariadb-bin.000003:1234"),
            ..c
        };
        assert_eq!(Checkpoint::decode(&c.encode()), Some(c));
        assert_eq!(Checkpoint::decode("v2 1 00"), None);
        assert_eq!(Checkpoint::decode("v1 x 00"), None);
    }

    #[test]
    fn chunk_size_moves_towards_the_target() {
        let t = Duration::from_millis(200);
        assert_eq!(next_size(1000, Duration::from_millis(100), t), 2000);
        assert_eq!(next_size(1000, Duration::from_secs(2), t), 500);
        assert_eq!(next_size(60, Duration::from_secs(2), t), MIN_CHUNK);
    }
}
