//! A small SQL client over [`BackendConn`] for shardgate's own work on clusters (the
//! migration executor, health probes, admin): run a statement, get its rows as text.
//! The data path never uses this: it relays client bytes raw. Statements are built as
//! text, so this is also where names and values are quoted: [`quote_ident`],
//! [`quote_literal`].

use std::fmt::Write as _;
use std::time::Duration;

use super::conn::{BackendConn, BackendError, ConnKey};
use crate::protocol::relay::ResponseKind;
use crate::protocol::wire::{get_lenenc_int, get_lenenc_str, parse_ok, ErrInfo, OkInfo};
use crate::protocol::{caps, command, packet};
use crate::vschema::Cluster;

/// `` `name` `` with backquotes doubled: an identifier under every `sql_mode`.
pub fn quote_ident(name: &str) -> String {
    format!("`{}`", name.replace('`', "``"))
}

/// `s` as an SQL string value that reads the same under every `sql_mode`. Our own
/// connections run with the server's default mode, which an operator may set to
/// include `NO_BACKSLASH_ESCAPES` (or `ANSI_QUOTES`), so backslash escaping is never
/// used:
/// - text without backslashes and NUL bytes is a real literal, single-quoted with
///   single quotes doubled (which every mode reads the same way);
/// - anything else is the hex expression `CONVERT(X'..' USING utf8mb4)`.
///
/// The second form is an expression, not a literal, so where the grammar takes only a
/// literal (`CREATE USER ... IDENTIFIED BY '...'`, `COMMENT '...'`) the caller must not
/// pass backslashes or NUL bytes.
pub fn quote_literal(s: &str) -> String {
    if !s.contains(['\\', '\0']) {
        return format!("'{}'", s.replace('\'', "''"));
    }
    let mut hex = String::with_capacity(s.len() * 2 + 32);
    hex.push_str("CONVERT(X'");
    for b in s.as_bytes() {
        let _ = write!(hex, "{b:02x}");
    }
    hex.push_str("' USING utf8mb4)");
    hex
}

/// Why a statement failed.
#[derive(Debug)]
pub enum SqlError {
    /// The server answered with an ERR packet.
    Server(ErrInfo),
    /// The connection failed; whether the statement ran is unknown.
    Connection(String),
}

impl std::fmt::Display for SqlError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SqlError::Server(e) => write!(f, "ERROR {} ({}): {}", e.code, e.sqlstate, e.message),
            SqlError::Connection(m) => write!(f, "connection failed: {m}"),
        }
    }
}

impl std::error::Error for SqlError {}

impl SqlError {
    /// The server's error number, if the server answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            SqlError::Server(e) => Some(e.code),
            SqlError::Connection(_) => None,
        }
    }
}

impl From<BackendError> for SqlError {
    fn from(e: BackendError) -> Self {
        SqlError::Connection(e.to_string())
    }
}

/// Rows of a text result set; `None` is SQL NULL.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rows {
    /// Column names.
    pub columns: Vec<String>,
    /// Values, as the server formatted them.
    pub rows: Vec<Vec<Option<String>>>,
}

impl Rows {
    /// The first column of the first row, if any and not NULL.
    pub fn scalar(&self) -> Option<&str> {
        self.rows.first()?.first()?.as_deref()
    }
}

/// A connection for shardgate's own statements.
pub struct SqlConn {
    conn: BackendConn,
}

impl SqlConn {
    /// Connects to a cluster's primary (no database selected unless given).
    pub async fn connect(
        cluster: &Cluster,
        database: Option<&str>,
        timeout: Duration,
    ) -> Result<SqlConn, SqlError> {
        let key = ConnKey {
            caps: caps::DEPRECATE_EOF | caps::MULTI_RESULTS | caps::FOUND_ROWS,
            collation: 45, // utf8mb4_general_ci
            ext: 0,
        };
        let (conn, _) = BackendConn::connect(cluster, key, database, timeout)
            .await
            .map_err(|e| SqlError::Connection(e.to_string()))?;
        Ok(SqlConn { conn })
    }

    /// Runs a statement that returns no rows.
    pub async fn execute(&mut self, sql: &str) -> Result<OkInfo, SqlError> {
        let c = self.run(sql).await?;
        if c.outcome.error {
            return Err(server_error(&c));
        }
        Ok(c.outcome.ok.unwrap_or_default())
    }

    /// Runs a query and decodes its (first) result set.
    pub async fn query(&mut self, sql: &str) -> Result<Rows, SqlError> {
        let c = self.run(sql).await?;
        if c.outcome.error {
            return Err(server_error(&c));
        }
        decode_rows(&c.bytes).ok_or_else(|| SqlError::Connection("malformed result set".into()))
    }

    async fn run(&mut self, sql: &str) -> Result<super::Collected, SqlError> {
        let mut p = Vec::with_capacity(sql.len() + 1);
        p.push(command::QUERY);
        p.extend_from_slice(sql.as_bytes());
        Ok(self.conn.exec(&p, ResponseKind::Query).await?)
    }

    /// COM_PING.
    pub async fn ping(&mut self) -> bool {
        self.conn.ping().await
    }

    /// Sends a command whose answer is a stream of packets (COM_BINLOG_DUMP); read
    /// them with [`Self::next_packet`]. The connection is good for nothing else after.
    pub async fn start_stream(&mut self, payload: &[u8]) -> Result<(), SqlError> {
        Ok(self.conn.send_streaming(payload).await?)
    }

    /// The next packet of a stream started with [`Self::start_stream`].
    pub async fn next_packet(&mut self, limit: usize) -> Result<bytes::Bytes, SqlError> {
        Ok(self.conn.read_streamed(limit).await?)
    }
}

fn server_error(c: &super::Collected) -> SqlError {
    SqlError::Server(c.err().unwrap_or(ErrInfo {
        code: 0,
        sqlstate: String::new(),
        message: "unreadable error".into(),
    }))
}

/// Decodes the first text result set of a collected response (DEPRECATE_EOF framing).
/// A response that is a plain OK decodes as no columns and no rows.
fn decode_rows(bytes: &[u8]) -> Option<Rows> {
    let mut packets = Vec::new();
    let mut at = 0;
    while at + 4 <= bytes.len() {
        let len = packet::physical_payload_len(&bytes[at..])?;
        packets.push(bytes.get(at + 4..at + 4 + len)?);
        at += 4 + len;
    }
    let first = packets.first()?;
    if first.first() == Some(&0) && parse_ok(first).is_some() {
        return Some(Rows::default());
    }
    let mut i = 0;
    let n = get_lenenc_int(first, &mut i)? as usize;
    let mut out = Rows::default();
    for def in packets.get(1..1 + n)? {
        let mut j = 0;
        for _ in 0..4 {
            get_lenenc_str(def, &mut j)?; // catalog, schema, table, org_table
        }
        let name = get_lenenc_str(def, &mut j)?;
        out.columns.push(String::from_utf8_lossy(name).into_owned());
    }
    for row in packets.get(1 + n..)? {
        if row.first() == Some(&0xfe) && row.len() < 0xff_ffff {
            break; // end of rows (OK with 0xfe header)
        }
        let mut j = 0;
        let mut values = Vec::with_capacity(n);
        for _ in 0..n {
            if row.get(j) == Some(&0xfb) {
                j += 1;
                values.push(None);
            } else {
                let v = get_lenenc_str(row, &mut j)?;
                values.push(Some(String::from_utf8_lossy(v).into_owned()));
            }
        }
        out.rows.push(values);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_double_their_backquotes() {
        assert_eq!(quote_ident("orders"), "`orders`");
        assert_eq!(quote_ident("a`b"), "`a``b`");
    }

    #[test]
    fn literals_double_quotes_and_hex_encode_backslashes_and_nul() {
        assert_eq!(quote_literal("ws_42"), "'ws_42'");
        assert_eq!(quote_literal(""), "''");
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_literal("\"a\"\n✓"), "'\"a\"\n✓'");
        assert_eq!(quote_literal("a\\"), "CONVERT(X'615c' USING utf8mb4)");
        assert_eq!(quote_literal("a\0"), "CONVERT(X'6100' USING utf8mb4)");
        assert_eq!(
            quote_literal("it's a \\ test"),
            "CONVERT(X'697427732061205c2074657374' USING utf8mb4)"
        );
    }
}
