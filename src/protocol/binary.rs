//! The binary (prepared-statement) protocol, as far as shardgate needs it: the layout
//! of a `COM_STMT_EXECUTE` request, its parameter values decoded to SQL literals (so an
//! execute is routed as the text statement with those values would be), the `?`
//! markers of a statement's text, and the `COM_STMT_PREPARE` answer's header.
//!
//! Rows of binary result sets are never decoded: they are relayed raw like text rows.

use std::ops::Range;

use super::wire::get_lenenc_int;

/// `COM_STMT_EXECUTE` flag: open a read-only cursor (rows come with `COM_STMT_FETCH`).
pub const CURSOR_TYPE_READ_ONLY: u8 = 1;

/// The statement id MariaDB reads as "the statement this connection prepared last".
pub const LAST_PREPARED: u32 = u32::MAX;

/// Why an execute request could not be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Malformed(pub &'static str);

/// A `COM_STMT_EXECUTE` payload, read: where its parts are and what its values are.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecuteRequest {
    /// The client's statement id.
    pub stmt_id: u32,
    /// Cursor flags.
    pub flags: u8,
    /// Where the null bitmap is (empty without parameters).
    pub null_bitmap: Range<usize>,
    /// Where the parameter types are, when the request carries them
    /// (`new_params_bound = 1`).
    pub types: Option<Range<usize>>,
    /// Where the values start.
    pub values_at: usize,
    /// Each parameter's value as a SQL literal (`NULL` for NULL, `None` for a parameter
    /// whose value came with `COM_STMT_SEND_LONG_DATA`).
    pub literals: Vec<Option<String>>,
}

/// The statement id of an execute-like request (`COM_STMT_EXECUTE`, `_FETCH`,
/// `_RESET`, `_CLOSE`, `_SEND_LONG_DATA`): the 4 bytes after the command byte.
pub fn stmt_id(payload: &[u8]) -> Option<u32> {
    let b = payload.get(1..5)?;
    Some(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
}

/// Reads a `COM_STMT_EXECUTE` for a statement of `params` parameters. `known_types` are
/// the types an earlier execute bound (2 bytes each), used when this one does not send
/// them; `long_data[i]` says parameter `i` got its value with `SEND_LONG_DATA` (no
/// value in the request). Strings are quoted for a server that reads backslashes as
/// escapes unless `no_backslash_escapes`.
pub fn parse_execute(
    payload: &[u8],
    params: usize,
    known_types: Option<&[u8]>,
    long_data: &[bool],
    no_backslash_escapes: bool,
) -> Result<ExecuteRequest, Malformed> {
    let stmt_id = stmt_id(payload).ok_or(Malformed("too short for a statement id"))?;
    let flags = *payload.get(5).ok_or(Malformed("no flags"))?;
    if payload.len() < 10 {
        return Err(Malformed("no iteration count"));
    }
    let mut at = 10;
    let mut req = ExecuteRequest {
        stmt_id,
        flags,
        null_bitmap: at..at,
        types: None,
        values_at: at,
        literals: Vec::with_capacity(params),
    };
    if params == 0 {
        return Ok(req);
    }
    let bitmap_len = params.div_ceil(8);
    req.null_bitmap = at..at + bitmap_len;
    let bitmap = payload
        .get(req.null_bitmap.clone())
        .ok_or(Malformed("null bitmap cut short"))?;
    at += bitmap_len;
    let bound = *payload
        .get(at)
        .ok_or(Malformed("no new-params-bound flag"))?;
    at += 1;
    let types: &[u8] = if bound == 1 {
        let r = at..at + 2 * params;
        let t = payload.get(r.clone()).ok_or(Malformed("types cut short"))?;
        req.types = Some(r);
        at += 2 * params;
        t
    } else {
        known_types.ok_or(Malformed(
            "no parameter types: the statement's first execute must bind them",
        ))?
    };
    if types.len() != 2 * params {
        return Err(Malformed("parameter types of the wrong length"));
    }
    req.values_at = at;
    for i in 0..params {
        if bitmap[i / 8] & (1 << (i % 8)) != 0 {
            req.literals.push(Some("NULL".into()));
            continue;
        }
        if long_data.get(i).copied().unwrap_or(false) {
            req.literals.push(None);
            continue;
        }
        let (ty, unsigned) = (types[2 * i], types[2 * i + 1] & 0x80 != 0);
        let lit = read_value(payload, &mut at, ty, unsigned, no_backslash_escapes)?;
        req.literals.push(Some(lit));
    }
    Ok(req)
}

/// `COM_STMT_BULK_EXECUTE` flag: answer with one result per row (MariaDB 11.5+).
pub const BULK_SEND_UNIT_RESULTS: u16 = 64;
/// `COM_STMT_BULK_EXECUTE` flag: the parameter types follow the flags.
pub const BULK_SEND_TYPES_TO_SERVER: u16 = 128;

/// A `COM_STMT_BULK_EXECUTE` payload's header: statement id, flags, where its types
/// are (when sent) and where its rows start. The rows are read one by one with
/// [`read_bulk_row`].
#[derive(Debug, Clone, PartialEq)]
pub struct BulkRequest {
    /// The client's statement id.
    pub stmt_id: u32,
    /// `BULK_SEND_*` flags.
    pub flags: u16,
    /// Where the parameter types are, when the request carries them.
    pub types: Option<Range<usize>>,
    /// Where the first row starts.
    pub rows_at: usize,
}

/// Reads the header of a `COM_STMT_BULK_EXECUTE` for a statement of `params`
/// parameters; `known_types` are those an earlier execute bound, needed when this one
/// sends none. A bulk needs parameters and at least one row.
pub fn parse_bulk(
    payload: &[u8],
    params: usize,
    known_types: Option<&[u8]>,
) -> Result<BulkRequest, Malformed> {
    let stmt_id = stmt_id(payload).ok_or(Malformed("too short for a statement id"))?;
    let f = payload.get(5..7).ok_or(Malformed("no flags"))?;
    let flags = u16::from_le_bytes([f[0], f[1]]);
    if params == 0 {
        return Err(Malformed("the statement has no parameters to bind rows to"));
    }
    let mut at = 7;
    let mut types = None;
    if flags & BULK_SEND_TYPES_TO_SERVER != 0 {
        let r = at..at + 2 * params;
        payload.get(r.clone()).ok_or(Malformed("types cut short"))?;
        at = r.end;
        types = Some(r);
    } else if known_types.map(<[u8]>::len) != Some(2 * params) {
        return Err(Malformed(
            "no parameter types: the first execute must send them",
        ));
    }
    if at >= payload.len() {
        return Err(Malformed("no rows"));
    }
    Ok(BulkRequest {
        stmt_id,
        flags,
        types,
        rows_at: at,
    })
}

/// Reads the row of a bulk execute at `at` (moved past it) into `literals`, one per
/// parameter: the value as a SQL literal, `NULL` for the NULL indicator, `DEFAULT` for
/// the DEFAULT and IGNORE indicators. `types` are 2 bytes a parameter.
pub fn read_bulk_row(
    payload: &[u8],
    at: &mut usize,
    types: &[u8],
    no_backslash_escapes: bool,
    literals: &mut Vec<Option<String>>,
) -> Result<(), Malformed> {
    literals.clear();
    for t in types.chunks_exact(2) {
        let indicator = *payload.get(*at).ok_or(Malformed("row cut short"))?;
        *at += 1;
        let lit = match indicator {
            0 => read_value(payload, at, t[0], t[1] & 0x80 != 0, no_backslash_escapes)?,
            1 => "NULL".into(),
            2 | 3 => "DEFAULT".into(),
            _ => return Err(Malformed("unknown parameter indicator")),
        };
        literals.push(Some(lit));
    }
    Ok(())
}

fn take<'a>(p: &'a [u8], at: &mut usize, n: usize) -> Result<&'a [u8], Malformed> {
    let end = at
        .checked_add(n)
        .ok_or(Malformed("parameter value too long"))?;
    let b = p
        .get(*at..end)
        .ok_or(Malformed("parameter value cut short"))?;
    *at = end;
    Ok(b)
}

fn int_le(b: &[u8]) -> u64 {
    b.iter()
        .rev()
        .fold(0u64, |acc, &x| (acc << 8) | u64::from(x))
}

/// One value of type `ty` at `at`, as a SQL literal.
fn read_value(
    p: &[u8],
    at: &mut usize,
    ty: u8,
    unsigned: bool,
    nbe: bool,
) -> Result<String, Malformed> {
    let signed = |b: &[u8]| -> i64 {
        let bits = 8 * b.len() as u32;
        let v = int_le(b);
        if bits == 64 {
            v as i64
        } else {
            ((v << (64 - bits)) as i64) >> (64 - bits)
        }
    };
    let int = |at: &mut usize, n: usize| -> Result<String, Malformed> {
        let b = take(p, at, n)?;
        Ok(if unsigned {
            int_le(b).to_string()
        } else {
            signed(b).to_string()
        })
    };
    match ty {
        0x06 => Ok("NULL".into()),
        0x01 => int(at, 1),
        0x02 | 0x0d => int(at, 2),
        0x03 | 0x09 => int(at, 4),
        0x08 => int(at, 8),
        0x04 => {
            let b = take(p, at, 4)?;
            Ok(float_literal(f64::from(f32::from_le_bytes([
                b[0], b[1], b[2], b[3],
            ]))))
        }
        0x05 => {
            let b = take(p, at, 8)?;
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            Ok(float_literal(f64::from_le_bytes(a)))
        }
        0x07 | 0x0a | 0x0c => {
            let n = take(p, at, 1)?[0] as usize;
            let b = take(p, at, n)?;
            Ok(datetime_literal(b, ty == 0x0a))
        }
        0x0b => {
            let n = take(p, at, 1)?[0] as usize;
            let b = take(p, at, n)?;
            Ok(time_literal(b))
        }
        _ => {
            let len = get_lenenc_int(p, at).ok_or(Malformed("bad value length"))?;
            let len = usize::try_from(len).map_err(|_| Malformed("value too long"))?;
            let b = take(p, at, len)?;
            Ok(if ty == 0xf6 || ty == 0x00 {
                decimal_literal(b, nbe)
            } else {
                string_literal(b, nbe)
            })
        }
    }
}

fn float_literal(v: f64) -> String {
    if v.is_finite() {
        // Display is exact (it round-trips) and never uses an exponent.
        format!("{v}")
    } else {
        "NULL".into()
    }
}

/// `YYYY-MM-DD[ HH:MM:SS[.ffffff]]` from the binary DATE/DATETIME/TIMESTAMP form.
fn datetime_literal(b: &[u8], date_only: bool) -> String {
    let year = b.get(0..2).map(int_le).unwrap_or(0);
    let get = |i: usize| b.get(i).copied().unwrap_or(0);
    let mut s = format!("'{year:04}-{:02}-{:02}", get(2), get(3));
    if !date_only || b.len() > 4 {
        s.push_str(&format!(" {:02}:{:02}:{:02}", get(4), get(5), get(6)));
        if let Some(us) = b.get(7..11).map(int_le).filter(|&u| u != 0) {
            s.push_str(&format!(".{us:06}"));
        }
    }
    s.push('\'');
    s
}

/// `[-]HHH:MM:SS[.ffffff]` from the binary TIME form (days folded into hours).
fn time_literal(b: &[u8]) -> String {
    let get = |i: usize| u64::from(b.get(i).copied().unwrap_or(0));
    let neg = get(0) == 1;
    let days = b.get(1..5).map(int_le).unwrap_or(0);
    let hours = days * 24 + get(5);
    let mut s = format!(
        "'{}{hours:02}:{:02}:{:02}",
        if neg { "-" } else { "" },
        get(6),
        get(7)
    );
    if let Some(us) = b.get(8..12).map(int_le).filter(|&u| u != 0) {
        s.push_str(&format!(".{us:06}"));
    }
    s.push('\'');
    s
}

/// A DECIMAL sent as text: bare when it is a number, else a quoted string (the server
/// reads it as a string too).
fn decimal_literal(b: &[u8], nbe: bool) -> String {
    let numeric = !b.is_empty()
        && b.iter()
            .all(|c| c.is_ascii_digit() || matches!(c, b'-' | b'+' | b'.' | b'e' | b'E'))
        && b.iter().any(u8::is_ascii_digit);
    match std::str::from_utf8(b) {
        Ok(s) if numeric => s.to_string(),
        _ => string_literal(b, nbe),
    }
}

/// A quoted string; bytes that are not UTF-8 become a hex literal.
pub fn string_literal(b: &[u8], no_backslash_escapes: bool) -> String {
    let Ok(s) = std::str::from_utf8(b) else {
        let mut out = String::with_capacity(3 + 2 * b.len());
        out.push_str("X'");
        for c in b {
            out.push_str(&format!("{c:02x}"));
        }
        out.push('\'');
        return out;
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\'' => out.push_str("''"),
            '\\' if !no_backslash_escapes => out.push_str("\\\\"),
            '\0' if !no_backslash_escapes => out.push_str("\\0"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The byte offsets of the `?` parameter markers of `sql`, found by the planner's lexer
/// (a `?` in a string, a quoted identifier or a comment is not one).
pub fn placeholders(sql: &str, backslash_escapes: bool) -> Vec<usize> {
    crate::planner::lex::lex_with(sql, backslash_escapes)
        .tokens
        .iter()
        .filter(|t| t.is_punct(b'?'))
        .map(|t| t.start)
        .collect()
}

/// `sql` with the marker at each offset of `at` replaced by the literal of the same
/// index (`NULL` where none is given).
pub fn substitute(sql: &str, at: &[usize], literals: &[Option<String>]) -> String {
    let extra: usize = literals.iter().flatten().map(String::len).sum();
    let mut out = String::with_capacity(sql.len() + extra);
    let mut from = 0;
    for (i, &pos) in at.iter().enumerate() {
        out.push_str(sql.get(from..pos).unwrap_or(""));
        match literals.get(i) {
            Some(Some(l)) => out.push_str(l),
            _ => out.push_str("NULL"),
        }
        from = pos + 1;
    }
    out.push_str(sql.get(from..).unwrap_or(""));
    out
}

/// The header of a `COM_STMT_PREPARE` OK: statement id, columns, parameters.
pub fn parse_prepare_ok(payload: &[u8]) -> Option<(u32, u16, u16)> {
    if payload.first() != Some(&0x00) || payload.len() < 9 {
        return None;
    }
    let id = stmt_id(payload)?;
    let cols = u16::from_le_bytes([payload[5], payload[6]]);
    let params = u16::from_le_bytes([payload[7], payload[8]]);
    Some((id, cols, params))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec(params: &[(u8, &[u8])], nulls: u8) -> Vec<u8> {
        let mut p = vec![0x17, 7, 0, 0, 0, 0, 1, 0, 0, 0];
        p.push(nulls);
        p.push(1);
        for (t, _) in params {
            p.extend_from_slice(&[*t, 0]);
        }
        for (_, v) in params {
            p.extend_from_slice(v);
        }
        p
    }

    #[test]
    fn decodes_values_to_literals() {
        let p = exec(
            &[
                (0x08, &42i64.to_le_bytes()),
                (0xfd, b"\x04it's"),
                (0x03, &(-5i32).to_le_bytes()),
                (0x0a, &[4, 0xe8, 0x07, 1, 31]),
                (0xf6, b"\x0412.5"),
                (0x05, &1.5f64.to_le_bytes()),
                (0x0b, &[8, 1, 1, 0, 0, 0, 2, 3, 4]),
            ],
            0,
        );
        let r = parse_execute(&p, 7, None, &[], false).unwrap();
        assert_eq!(r.stmt_id, 7);
        let lits: Vec<String> = r.literals.into_iter().map(Option::unwrap).collect();
        assert_eq!(
            lits,
            [
                "42",
                "'it''s'",
                "-5",
                "'2024-01-31'",
                "12.5",
                "1.5",
                "'-26:03:04'"
            ]
        );
    }

    #[test]
    fn nulls_long_data_and_remembered_types() {
        let mut p = vec![0x17, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0b01, 0];
        p.extend_from_slice(&9i64.to_le_bytes());
        let types = [0x08, 0, 0x08, 0, 0xfc, 0];
        let r = parse_execute(&p, 3, Some(&types), &[false, false, true], false).unwrap();
        assert_eq!(r.literals, [Some("NULL".into()), Some("9".into()), None]);
        assert_eq!(r.types, None);
        assert!(parse_execute(&p, 3, None, &[], false).is_err());
    }

    #[test]
    fn malformed_requests_are_errors() {
        for cut in 0..12 {
            let p = exec(&[(0x08, &1i64.to_le_bytes())], 0);
            let _ = parse_execute(&p[..cut], 1, None, &[], false);
        }
        let p = exec(&[(0xfd, b"\xfe\xff\xff\xff\xff\xff\xff\xff\xff")], 0);
        assert!(parse_execute(&p, 1, None, &[], false).is_err());
    }

    #[test]
    fn bulk_rows_are_read_one_by_one() {
        let mut p = vec![0xfa, 3, 0, 0, 0, 128, 0, 0x08, 0, 0xfd, 0];
        let rows_at = p.len();
        p.extend_from_slice(&[0]);
        p.extend_from_slice(&7i64.to_le_bytes());
        p.extend_from_slice(b"\x00\x02ab");
        p.extend_from_slice(&[1, 2]);
        let b = parse_bulk(&p, 2, None).unwrap();
        assert_eq!((b.stmt_id, b.flags, b.rows_at), (3, 128, rows_at));
        let types = p[b.types.clone().unwrap()].to_vec();
        let (mut at, mut lits) = (b.rows_at, Vec::new());
        read_bulk_row(&p, &mut at, &types, false, &mut lits).unwrap();
        assert_eq!(lits, [Some("7".into()), Some("'ab'".into())]);
        read_bulk_row(&p, &mut at, &types, false, &mut lits).unwrap();
        assert_eq!(lits, [Some("NULL".into()), Some("DEFAULT".into())]);
        assert_eq!(at, p.len());
        // Cut anywhere inside a row, or a bad indicator: an error, never a panic.
        for cut in b.rows_at..p.len() - 1 {
            let mut at = b.rows_at;
            let first = read_bulk_row(&p[..cut], &mut at, &types, false, &mut lits);
            let second =
                first.and_then(|()| read_bulk_row(&p[..cut], &mut at, &types, false, &mut lits));
            assert!(second.is_err(), "cut at {cut}");
        }
        let mut bad = p.clone();
        bad[rows_at] = 9;
        let mut at = rows_at;
        assert!(read_bulk_row(&bad, &mut at, &types, false, &mut lits).is_err());
        assert!(parse_bulk(&p[..8], 2, None).is_err());
        assert!(parse_bulk(&[0xfa, 3, 0, 0, 0, 0, 0, 1], 2, None).is_err());
        assert!(parse_bulk(&p, 0, None).is_err());
        assert!(parse_bulk(&p[..rows_at], 2, None).is_err());
    }

    #[test]
    fn markers_skip_strings_comments_and_backquotes() {
        let sql = "SELECT '?', `a?`, ? /* ? */ FROM t WHERE x = ? -- ?\n";
        let at = placeholders(sql, true);
        assert_eq!(at.len(), 2);
        let out = substitute(sql, &at, &[Some("1".into()), Some("'a\\\\b'".into())]);
        assert_eq!(
            out,
            "SELECT '?', `a?`, 1 /* ? */ FROM t WHERE x = 'a\\\\b' -- ?\n"
        );
        assert_eq!(string_literal(b"a\\b", true), "'a\\b'");
        assert_eq!(string_literal(b"\xff", false), "X'ff'");
    }
}
