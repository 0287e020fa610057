//! Key ranges: parsing Vitess-style shard names and comparing bounds.
//!
//! A bound is a byte string compared *left-aligned*: `40` and `4000` are the same bound,
//! both meaning `0x40 00 00 ...`. So every comparison here pads the shorter side with
//! zero bytes instead of comparing lengths, and an empty end means "to the end".

use std::cmp::Ordering;
use std::fmt;

use super::KeyRange;

impl KeyRange {
    /// Parses a Vitess-style shard name (`-40`, `40-80`, `80-`, `-`).
    pub fn parse(name: &str) -> Result<KeyRange, String> {
        // Vitess names the single shard of an unsharded keyspace `0`.
        if name == "0" || name == "-" {
            return Ok(KeyRange::full());
        }
        let Some((start, end)) = name.split_once('-') else {
            return Err(format!(
                "malformed shard name {name:?}: expected `start-end` in hex, like `40-80`, `-40` or `c0-`"
            ));
        };
        if end.contains('-') {
            return Err(format!(
                "malformed shard name {name:?}: more than one `-`; expected `start-end`"
            ));
        }
        let start = parse_bound(name, start)?;
        let end = parse_bound(name, end)?;
        if !end.is_empty() && cmp_bounds(&start, &end) != Ordering::Less {
            return Err(format!(
                "shard name {name:?} is an empty key range: its start is not below its end"
            ));
        }
        Ok(KeyRange { start, end })
    }

    /// Whether the range holds keyspace id `id`.
    pub fn contains(&self, id: &[u8; 8]) -> bool {
        cmp_bounds(&self.start, id) != Ordering::Greater
            && (self.end.is_empty() || cmp_bounds(id, &self.end) == Ordering::Less)
    }

    /// The range of every keyspace id (shard `-`).
    pub fn full() -> KeyRange {
        KeyRange {
            start: Vec::new(),
            end: Vec::new(),
        }
    }

    /// Whether the range holds every keyspace id.
    pub fn is_full(&self) -> bool {
        self.end.is_empty() && is_zero(&self.start)
    }
}

/// Formats the range as a Vitess shard name (`40-80`, `-` for the full range).
impl fmt::Display for KeyRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", hex(&self.start), hex(&self.end))
    }
}

fn parse_bound(name: &str, text: &str) -> Result<Vec<u8>, String> {
    if !text.len().is_multiple_of(2) {
        return Err(format!(
            "malformed shard name {name:?}: bound {text:?} has an odd number of hex digits"
        ));
    }
    let digits = text.as_bytes();
    let mut out = Vec::with_capacity(digits.len() / 2);
    for pair in digits.chunks_exact(2) {
        match (hex_value(pair[0]), hex_value(pair[1])) {
            (Some(hi), Some(lo)) => out.push(hi << 4 | lo),
            _ => {
                return Err(format!(
                    "malformed shard name {name:?}: bound {text:?} is not hexadecimal"
                ))
            }
        }
    }
    Ok(out)
}

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// Lower-case hex of a bound.
pub(crate) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn is_zero(bound: &[u8]) -> bool {
    bound.iter().all(|&b| b == 0)
}

/// Compares two bounds left-aligned, as if the shorter were padded with zero bytes.
/// (Both are finite here: callers handle an empty *end* meaning "to the end".)
pub(crate) fn cmp_bounds(a: &[u8], b: &[u8]) -> Ordering {
    let common = a.len().min(b.len());
    match a[..common].cmp(&b[..common]) {
        Ordering::Equal => {}
        other => return other,
    }
    match (is_zero(&a[common..]), is_zero(&b[common..])) {
        (true, true) => Ordering::Equal,
        (false, _) => Ordering::Greater,
        (_, false) => Ordering::Less,
    }
}

/// Compares two *end* bounds, where empty means "to the end" (above everything).
pub(crate) fn cmp_ends(a: &[u8], b: &[u8]) -> Ordering {
    match (a.is_empty(), b.is_empty()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater,
        (false, true) => Ordering::Less,
        (false, false) => cmp_bounds(a, b),
    }
}

/// Compares a start bound with an end bound (empty end = above everything).
pub(crate) fn cmp_start_end(start: &[u8], end: &[u8]) -> Ordering {
    if end.is_empty() {
        Ordering::Less
    } else {
        cmp_bounds(start, end)
    }
}

/// A bound for messages: its hex, or what an empty bound means.
pub(crate) fn describe_start(start: &[u8]) -> String {
    if is_zero(start) {
        "the start".to_string()
    } else {
        hex(start)
    }
}

/// An end bound for messages.
pub(crate) fn describe_end(end: &[u8]) -> String {
    if end.is_empty() {
        "the end".to_string()
    } else {
        hex(end)
    }
}
