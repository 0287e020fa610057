//! The plan cache's key of a statement: its text with the values of its literals taken
//! out, and what the planner can still tell about those values.
//!
//! Two texts with the same key differ only in the values of their *id literals*
//! (numbers made of digits, single-quoted strings, the id of a `workspace_id` tag),
//! and only in ways the planner cannot see:
//!
//! - everything else is the same bytes: keywords, identifiers, whitespace, comments,
//!   double-quoted strings, numbers that are not plain digits (`1.5`, `1e3`, an id past
//!   `u64::MAX`), so any rule that reads them reads the same thing;
//! - each literal keeps its *class*: a number or a string, and whether it reads as a
//!   workspace id, and whether that id is 0 (`-0` is a workspace id, `-5` is not);
//! - which of the id literals have equal values (the planner intersects `=` and `IN`
//!   conditions and deduplicates ids, so `c = 1 AND c = 2` and `c = 3 AND c = 3` must
//!   not share a plan).
//!
//! What the planner does with the values themselves (which ids a route names, error
//! messages, range bounds) the cache rebuilds or refuses to cache (`cache`).
//! Single-quoted strings with a backslash or a doubled quote are not keyed: under
//! `NO_BACKSLASH_ESCAPES` they end elsewhere, which the privilege check reads.

use std::ops::Range;

use super::lex::{self, Lexed, Tok};
use super::tag;

/// Texts longer than this are planned without the cache (it also bounds what one
/// entry and the per-thread buffers hold).
pub(crate) const MAX_TEXT: usize = 4096;
/// Texts with more literals than this are planned without the cache.
pub(crate) const MAX_LITERALS: usize = 256;

/// What the planner can tell about a literal without its value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// A number of ASCII digits that fits a u64, not 0.
    Num = 1,
    /// A number of ASCII digits that reads as 0.
    NumZero = 2,
    /// A single-quoted string whose content is such a number, not 0.
    Str = 3,
    /// A single-quoted string whose content reads as 0.
    StrZero = 4,
    /// Any other single-quoted string without backslash or quote inside.
    StrOther = 5,
    /// The id of a `workspace_id` tag in a comment, not 0.
    Tag = 6,
    /// A tag's id 0.
    TagZero = 7,
}

impl Class {
    fn of(kind: Kind, value: u64) -> Class {
        match (kind, value == 0) {
            (Kind::Num, false) => Class::Num,
            (Kind::Num, true) => Class::NumZero,
            (Kind::Str, false) => Class::Str,
            (Kind::Str, true) => Class::StrZero,
            (Kind::Tag, false) => Class::Tag,
            (Kind::Tag, true) => Class::TagZero,
        }
    }

    /// Whether the literal is a workspace id (everything but [`Class::StrOther`]).
    pub(crate) fn is_id(self) -> bool {
        self != Class::StrOther
    }
}

#[derive(Clone, Copy)]
enum Kind {
    Num,
    Str,
    Tag,
}

/// A literal whose value is not part of the key.
#[derive(Debug, Clone)]
pub(crate) struct Literal {
    /// What the key writes in its place: for a string, its content only.
    pub span: Range<usize>,
    pub class: Class,
    /// Its workspace id (0 for [`Class::StrOther`]).
    pub value: u64,
}

/// Which keyspace a statement is planned for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaKey<'a> {
    /// No keyspace, a pass-through database, or an unsharded context.
    Unsharded,
    /// The keyspace of this name in the vschema of the generation given with it.
    Keyspace(&'a str),
}

/// Buffers for computing keys, reused across statements (one per thread).
#[derive(Default)]
pub(crate) struct Scratch {
    pub lexed: Lexed,
    /// The key of the last text shaped.
    pub key: Vec<u8>,
    /// Its literals, in text order.
    pub literals: Vec<Literal>,
    /// The values of its id literals, in text order.
    pub values: Vec<u64>,
    /// For each id literal, the index (among id literals) of the first one with the
    /// same value.
    pub classes: Vec<u16>,
    order: Vec<(u64, u16)>,
}

impl Scratch {
    /// Drops buffers that a long text made large (the cache only keys short ones, so
    /// this rarely does anything).
    pub(crate) fn trim(&mut self) {
        const KEEP: usize = 4 * MAX_TEXT;
        if self.key.capacity() > KEEP {
            self.key = Vec::new();
        }
        if self.lexed.tokens.capacity() > MAX_TEXT {
            self.lexed = Lexed::default();
        }
    }
}

/// Whether a statement that starts with this word can be cached at all: the planner's
/// SELECT / UPDATE / DELETE paths, whose plans are rebuilt from ids alone.
fn cacheable_head(word: &str) -> bool {
    ["SELECT", "UPDATE", "DELETE", "WITH"]
        .iter()
        .any(|w| word.eq_ignore_ascii_case(w))
}

/// Computes the key of `sql` into `s` and returns its hash (never 0), or None when
/// the statement is not one the cache keys.
pub(crate) fn shape(
    sql: &str,
    schema: SchemaKey<'_>,
    generation: u64,
    s: &mut Scratch,
) -> Option<u64> {
    // A literal's mark in the key starts with a NUL: a text that has one is not keyed.
    if sql.len() > MAX_TEXT || memchr::memchr(0, sql.as_bytes()).is_some() {
        return None;
    }
    lex::lex_into(sql, true, &mut s.lexed);
    let toks = &s.lexed.tokens;
    let first = toks.first()?;
    if first.kind != Tok::Word || !cacheable_head(first.text(sql)) {
        return None;
    }
    // One statement, possibly with a trailing `;`.
    if toks[..toks.len() - 1].iter().any(|t| t.is_punct(b';')) {
        return None;
    }
    s.literals.clear();
    let bytes = sql.as_bytes();
    for t in toks {
        match t.kind {
            Tok::Num => {
                if let Some(v) = tag::parse_workspace_digits(t.text(sql)) {
                    s.literals.push(Literal {
                        span: t.start..t.end,
                        class: Class::of(Kind::Num, v),
                        value: v,
                    });
                }
            }
            // A prefixed string (`X'..'`, `_utf8mb4'..'`, `N'..'`) is kept as it is: its
            // content may decide whether it parses at all.
            Tok::Str
                if bytes.get(t.start) == Some(&b'\'')
                    && !t
                        .start
                        .checked_sub(1)
                        .and_then(|p| bytes.get(p))
                        .is_some_and(|&b| lex::is_word_byte(b)) =>
            {
                let text = t.text(sql);
                let inner = t.str_inner(sql);
                if text.len() < 2 || !text.ends_with('\'') || inner.contains(['\\', '\'']) {
                    return None;
                }
                let (class, value) = match tag::parse_workspace_digits(inner) {
                    Some(v) => (Class::of(Kind::Str, v), v),
                    None => (Class::StrOther, 0),
                };
                s.literals.push(Literal {
                    span: t.start + 1..t.end - 1,
                    class,
                    value,
                });
            }
            _ => {}
        }
    }
    let mut tagged = false;
    for c in &s.lexed.comments {
        let Some((digits, v)) = sql
            .get(c.clone())
            .and_then(tag::workspace_digits_in_comment)
        else {
            continue;
        };
        tagged = true;
        s.literals.push(Literal {
            span: c.start + digits.start..c.start + digits.end,
            class: Class::of(Kind::Tag, v),
            value: v,
        });
    }
    if tagged {
        s.literals.sort_by_key(|l| l.span.start);
    }
    s.values.clear();
    s.values.extend(
        s.literals
            .iter()
            .filter(|l| l.class.is_id())
            .map(|l| l.value),
    );
    if s.literals.len() > MAX_LITERALS {
        return None;
    }
    equal_values(&s.values, &mut s.order, &mut s.classes);
    s.key.clear();
    s.key.extend_from_slice(&generation.to_le_bytes());
    match schema {
        SchemaKey::Unsharded => s.key.push(0),
        SchemaKey::Keyspace(name) => {
            s.key.push(1);
            s.key
                .extend_from_slice(&u32::try_from(name.len()).ok()?.to_le_bytes());
            s.key.extend_from_slice(name.as_bytes());
        }
    }
    let mut at = 0;
    for l in &s.literals {
        let verbatim = bytes.get(at..l.span.start)?;
        s.key.extend_from_slice(verbatim);
        s.key.extend_from_slice(&[0, l.class as u8]);
        at = l.span.end;
    }
    let rest = bytes.get(at..)?;
    s.key.extend_from_slice(rest);
    s.key.extend_from_slice(&[0, 0xff]);
    for c in &s.classes {
        s.key.extend_from_slice(&c.to_le_bytes());
    }
    let hash = xxhash_rust::xxh64::xxh64(&s.key, 0);
    Some(hash.max(1))
}

/// For each value, the index of the first equal one.
fn equal_values(values: &[u64], order: &mut Vec<(u64, u16)>, out: &mut Vec<u16>) {
    out.clear();
    if values.len() <= 16 {
        for (i, v) in values.iter().enumerate() {
            let first = values.iter().position(|w| w == v).unwrap_or(i);
            out.push(first as u16);
        }
        return;
    }
    order.clear();
    order.extend(values.iter().enumerate().map(|(i, v)| (*v, i as u16)));
    order.sort_unstable();
    out.resize(values.len(), 0);
    let mut group_first = 0;
    for (n, (v, i)) in order.iter().enumerate() {
        if n == 0 || order[n - 1].0 != *v {
            // Sorted by (value, index): the group's first entry has the lowest index.
            group_first = *i;
        }
        out[usize::from(*i)] = group_first;
    }
}

/// `sql` with each id literal's value replaced by a fresh one (the same fresh value for
/// equal values, 0 kept as 0, none equal to an old value) and each other string's
/// content by another one: a text with the same key whose plan must be the template
/// filled with the fresh values. Returns the text.
pub(crate) fn variant(sql: &str, s: &Scratch) -> String {
    let mut fresh: Vec<u64> = Vec::with_capacity(s.values.len());
    let mut next: u64 = 1_000_003;
    for (i, (&v, &c)) in s.values.iter().zip(&s.classes).enumerate() {
        let f = if v == 0 {
            0
        } else if usize::from(c) < i {
            fresh[usize::from(c)]
        } else {
            while s.values.contains(&next) {
                next += 1;
            }
            next += 7919;
            next - 7919
        };
        fresh.push(f);
    }
    let mut out = String::with_capacity(sql.len() + 16 * s.literals.len());
    let mut at = 0;
    let mut ids = fresh.iter();
    for l in &s.literals {
        out.push_str(sql.get(at..l.span.start).unwrap_or(""));
        if l.class.is_id() {
            let v = ids.next().copied().unwrap_or(0);
            out.push_str(&v.to_string());
        } else {
            let old = sql.get(l.span.clone()).unwrap_or("");
            out.push_str(if old == "sg" { "gs" } else { "sg" });
        }
        at = l.span.end;
    }
    out.push_str(sql.get(at..).unwrap_or(""));
    out
}
