//! Field encodings (length-encoded integers and strings) and the packets shardgate
//! builds itself: OK, ERR, EOF, and small text result sets.

use bytes::{BufMut, BytesMut};

use super::status;
use crate::error::ProxyError;

/// Appends a length-encoded integer.
pub fn put_lenenc_int(out: &mut BytesMut, v: u64) {
    if v < 251 {
        out.put_u8(v as u8);
    } else if v < 1 << 16 {
        out.put_u8(0xfc);
        out.put_u16_le(v as u16);
    } else if v < 1 << 24 {
        out.put_u8(0xfd);
        out.put_uint_le(v, 3);
    } else {
        out.put_u8(0xfe);
        out.put_u64_le(v);
    }
}

/// Appends a length-encoded string.
pub fn put_lenenc_str(out: &mut BytesMut, s: &[u8]) {
    put_lenenc_int(out, s.len() as u64);
    out.put_slice(s);
}

/// Reads a length-encoded integer at `*at`, advancing it. None if truncated or 0xff.
pub fn get_lenenc_int(buf: &[u8], at: &mut usize) -> Option<u64> {
    let first = *buf.get(*at)?;
    let (v, n) = match first {
        0..=250 => (first as u64, 1),
        0xfc => (le(buf.get(*at + 1..*at + 3)?), 3),
        0xfd => (le(buf.get(*at + 1..*at + 4)?), 4),
        0xfe => (le(buf.get(*at + 1..*at + 9)?), 9),
        _ => return None,
    };
    *at += n;
    Some(v)
}

/// Reads a length-encoded string at `*at`, advancing it.
pub fn get_lenenc_str<'a>(buf: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let len = get_lenenc_int(buf, at)? as usize;
    let s = buf.get(*at..at.checked_add(len)?)?;
    *at += len;
    Some(s)
}

/// Reads a NUL-terminated string at `*at`, advancing past the NUL.
pub fn get_nul_str<'a>(buf: &'a [u8], at: &mut usize) -> Option<&'a [u8]> {
    let rest = buf.get(*at..)?;
    let end = rest.iter().position(|&b| b == 0)?;
    *at += end + 1;
    Some(&rest[..end])
}

fn le(bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .rev()
        .fold(0u64, |acc, &b| (acc << 8) | b as u64)
}

/// What an OK packet says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OkInfo {
    /// Rows changed (or found, with CLIENT_FOUND_ROWS).
    pub affected_rows: u64,
    /// LAST_INSERT_ID() of the statement.
    pub last_insert_id: u64,
    /// Server status flags.
    pub status: u16,
    /// Warning count.
    pub warnings: u16,
}

/// Parses an OK packet payload (header 0x00, or 0xfe for the DEPRECATE_EOF terminator).
pub fn parse_ok(payload: &[u8]) -> Option<OkInfo> {
    let mut at = 1;
    let affected_rows = get_lenenc_int(payload, &mut at)?;
    let last_insert_id = get_lenenc_int(payload, &mut at)?;
    let status = u16::from_le_bytes([*payload.get(at)?, *payload.get(at + 1)?]);
    let warnings = match payload.get(at + 2..at + 4) {
        Some(w) => u16::from_le_bytes([w[0], w[1]]),
        None => 0,
    };
    Some(OkInfo {
        affected_rows,
        last_insert_id,
        status,
        warnings,
    })
}

/// Builds an OK packet payload.
pub fn ok_payload(info: &OkInfo) -> BytesMut {
    let mut p = BytesMut::with_capacity(16);
    p.put_u8(0);
    put_lenenc_int(&mut p, info.affected_rows);
    put_lenenc_int(&mut p, info.last_insert_id);
    p.put_u16_le(info.status);
    p.put_u16_le(info.warnings);
    p
}

/// Builds an ERR packet payload (protocol 4.1 form, with SQLSTATE).
pub fn err_payload(code: u16, sqlstate: &[u8; 5], message: &str) -> BytesMut {
    let mut p = BytesMut::with_capacity(9 + message.len());
    p.put_u8(0xff);
    p.put_u16_le(code);
    p.put_u8(b'#');
    p.put_slice(sqlstate);
    p.put_slice(message.as_bytes());
    p
}

/// The ERR packet payload of a [`ProxyError`].
pub fn proxy_err_payload(e: &ProxyError) -> BytesMut {
    err_payload(e.code, &e.sqlstate, &e.message)
}

/// A backend's ERR packet, decoded for logs and for naming a shard in a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ErrInfo {
    /// Error number.
    pub code: u16,
    /// SQLSTATE (empty if the packet had none).
    pub sqlstate: String,
    /// Message.
    pub message: String,
}

/// Parses an ERR packet payload.
pub fn parse_err(payload: &[u8]) -> Option<ErrInfo> {
    if payload.first() != Some(&0xff) || payload.len() < 3 {
        return None;
    }
    let code = u16::from_le_bytes([payload[1], payload[2]]);
    let (sqlstate, msg) = if payload.get(3) == Some(&b'#') && payload.len() >= 9 {
        (&payload[4..9], &payload[9..])
    } else {
        (&b""[..], &payload[3..])
    };
    Some(ErrInfo {
        code,
        sqlstate: String::from_utf8_lossy(sqlstate).into_owned(),
        message: String::from_utf8_lossy(msg).into_owned(),
    })
}

/// Builds an EOF packet payload.
pub fn eof_payload(status: u16) -> [u8; 5] {
    let s = status.to_le_bytes();
    [0xfe, 0, 0, s[0], s[1]]
}

/// The status of an EOF packet (or None if it is not one).
pub fn parse_eof_status(payload: &[u8]) -> Option<u16> {
    if payload.first() == Some(&0xfe) && payload.len() >= 5 && payload.len() < 9 {
        Some(u16::from_le_bytes([payload[3], payload[4]]))
    } else {
        None
    }
}

/// MySQL column type codes used by shardgate's own result sets.
pub mod column_type {
    pub const LONGLONG: u8 = 0x08;
    pub const VAR_STRING: u8 = 0xfd;
}

/// A column of a result set shardgate builds itself.
#[derive(Debug, Clone)]
pub struct ColumnSpec {
    /// Column name.
    pub name: String,
    /// Type code (see [`column_type`]).
    pub column_type: u8,
}

/// Appends a whole text-protocol result set (column count, definitions, rows, end) to
/// `out`, starting at sequence id 1. `deprecate_eof` and `extended_metadata` (MariaDB's
/// extended column type info, an extra field in each definition) are the client's
/// capabilities.
pub fn put_result_set(
    out: &mut BytesMut,
    columns: &[ColumnSpec],
    rows: &[Vec<Option<Vec<u8>>>],
    deprecate_eof: bool,
    extended_metadata: bool,
    server_status: u16,
) {
    let mut seq = 1u8;
    let mut p = BytesMut::with_capacity(256);
    put_lenenc_int(&mut p, columns.len() as u64);
    seq = super::packet::put_packet(out, seq, &p);
    for c in columns {
        p.clear();
        put_lenenc_str(&mut p, b"def");
        put_lenenc_str(&mut p, b"");
        put_lenenc_str(&mut p, b"");
        put_lenenc_str(&mut p, b"");
        put_lenenc_str(&mut p, c.name.as_bytes());
        put_lenenc_str(&mut p, c.name.as_bytes());
        if extended_metadata {
            put_lenenc_str(&mut p, b""); // no extended type info
        }
        p.put_u8(0x0c);
        let (charset, length, flags): (u16, u32, u16) = if c.column_type == column_type::LONGLONG {
            (63, 20, 0x0001 | 0x0080) // binary, NOT_NULL | BINARY
        } else {
            (45, 1024 * 4, 0) // utf8mb4_general_ci
        };
        p.put_u16_le(charset);
        p.put_u32_le(length);
        p.put_u8(c.column_type);
        p.put_u16_le(flags);
        p.put_u8(0); // decimals
        p.put_u16_le(0);
        seq = super::packet::put_packet(out, seq, &p);
    }
    if !deprecate_eof {
        seq = super::packet::put_packet(out, seq, &eof_payload(server_status));
    }
    for row in rows {
        p.clear();
        for v in row {
            match v {
                Some(bytes) => put_lenenc_str(&mut p, bytes),
                None => p.put_u8(0xfb),
            }
        }
        seq = super::packet::put_packet(out, seq, &p);
    }
    if deprecate_eof {
        let mut end = ok_payload(&OkInfo {
            status: server_status,
            ..OkInfo::default()
        });
        end[0] = 0xfe;
        super::packet::put_packet(out, seq, &end);
    } else {
        super::packet::put_packet(out, seq, &eof_payload(server_status));
    }
}

/// Status flags for a session that is not in a transaction.
pub fn idle_status(autocommit: bool) -> u16 {
    if autocommit {
        status::AUTOCOMMIT
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lenenc_roundtrip_at_every_boundary() {
        for v in [
            0u64,
            250,
            251,
            65535,
            65536,
            (1 << 24) - 1,
            1 << 24,
            u64::MAX,
        ] {
            let mut b = BytesMut::new();
            put_lenenc_int(&mut b, v);
            let mut at = 0;
            assert_eq!(get_lenenc_int(&b, &mut at), Some(v));
            assert_eq!(at, b.len());
        }
    }

    #[test]
    fn truncated_lenenc_is_none_not_a_panic() {
        let mut at = 0;
        assert_eq!(get_lenenc_int(&[0xfe, 1, 2], &mut at), None);
        assert_eq!(get_lenenc_int(&[0xff], &mut at), None);
        assert_eq!(get_lenenc_str(&[5, b'a'], &mut at), None);
    }

    #[test]
    fn ok_roundtrip() {
        let info = OkInfo {
            affected_rows: 300,
            last_insert_id: 7,
            status: 3,
            warnings: 1,
        };
        assert_eq!(parse_ok(&ok_payload(&info)), Some(info));
    }

    #[test]
    fn err_roundtrip() {
        let p = err_payload(1062, b"23000", "Duplicate entry");
        let e = parse_err(&p).unwrap();
        assert_eq!(e.code, 1062);
        assert_eq!(e.sqlstate, "23000");
        assert_eq!(e.message, "Duplicate entry");
    }
}
