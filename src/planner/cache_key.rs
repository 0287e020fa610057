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

use super::lex;
use super::tag;

/// Texts longer than this are planned without the cache (it also bounds what one
/// entry and the per-thread buffers hold).
pub(crate) const MAX_TEXT: usize = 4096;
/// The seed of the keys' hash.
const KEY_SEED: u64 = 0x5348_4152_4447_4154;

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
///
/// One pass over the bytes, by the lexer's rules ([`lex`]) but without its token
/// list: it only needs to know where strings, quoted identifiers, comments and numbers
/// start and end, whether the first token is a cacheable verb, and whether a token
/// follows a `;`. Punctuation is read a byte at a time: no multi-byte operator holds a
/// byte that starts anything else (they continue with `=`, `>`, `<`, `|`, `&`).
/// `cache_key_tests` holds it to the lexer's token list on generated texts.
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
    s.literals.clear();
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
    let rest = scan(sql, s)?;
    s.key.extend_from_slice(sql.as_bytes().get(rest..)?);
    s.key.extend_from_slice(&[0, 0xff]);
    s.values.clear();
    s.values.extend(
        s.literals
            .iter()
            .filter(|l| l.class.is_id())
            .map(|l| l.value),
    );
    equal_values(&s.values, &mut s.order, &mut s.classes);
    for c in &s.classes {
        s.key.extend_from_slice(&c.to_le_bytes());
    }
    // The key is compared in full on a hit: the hash only picks the set, so a fast
    // one (a fixed seed: the same in every thread) is enough.
    let hash = std::hash::BuildHasher::hash_one(
        &foldhash::fast::FixedState::with_seed(KEY_SEED),
        &s.key[..],
    );
    Some(hash.max(1))
}

/// Whether `sql`'s key would be `key` (a key [`shape`] made under `schema` and
/// `generation`), told without scanning `sql`: its text parts must be the key's bytes,
/// and each literal the same kind in the same place, read as the scan reads it. Fills
/// `s.values` as [`shape`] would (not `s.key`, `s.literals` or `s.classes`).
///
/// Why comparing is enough: up to a literal, the bytes are the ones the scan read when
/// it made `key`, so it is in the same state there (not in a comment or string, the
/// same tokens behind it); a literal is read by the scan's own rule for its kind (a
/// run of digits, or a string's content up to its closing quote), and what follows is
/// again the key's bytes, which ended it there before. A session whose statements
/// repeat one shape (`cache::Memo`) skips the scan and the lookup this way. `marks`:
/// [`marks`] of `key`. Some: it would.
pub(crate) fn same_shape(
    key: &[u8],
    marks: &[u32],
    sql: &str,
    schema: SchemaKey<'_>,
    generation: u64,
    s: &mut Scratch,
) -> Option<()> {
    if sql.len() > MAX_TEXT {
        return None;
    }
    // The header as `shape` writes it, compared as bytes (no UTF-8 check of the name).
    let mut at = header_len(schema);
    let header_ok = key.get(..8)? == generation.to_le_bytes()
        && match schema {
            SchemaKey::Unsharded => key.get(8) == Some(&0),
            SchemaKey::Keyspace(name) => {
                key.get(8) == Some(&1)
                    && key.get(9..13)? == u32::try_from(name.len()).ok()?.to_le_bytes()
                    && key.get(13..at)? == name.as_bytes()
            }
        };
    if !header_ok {
        return None;
    }
    let b = sql.as_bytes();
    let mut i = 0;
    s.values.clear();
    for &mark in marks {
        let mark = mark as usize;
        let fixed = key.get(at..mark)?;
        if b.get(i..i + fixed.len())? != fixed {
            return None;
        }
        i += fixed.len();
        let class = *key.get(mark + 1)?;
        at = mark + 2;
        let kind = match class {
            0xff => break,
            c if c == Class::Num as u8 || c == Class::NumZero as u8 => Kind::Num,
            c if c == Class::Tag as u8 || c == Class::TagZero as u8 => Kind::Tag,
            _ => Kind::Str,
        };
        let (found, value) = match kind {
            Kind::Num | Kind::Tag => {
                let start = i;
                let value;
                (i, value) = digits(b, i);
                let value = value?;
                // Digits alone, as the scan takes them: not part of a word or of a
                // longer number.
                if i == start
                    || b.get(i).is_some_and(|&w| lex::is_word_byte(w) || w == b'.')
                        && lex::number_end(b, i).0 != i
                {
                    return None;
                }
                (Class::of(kind, value), value)
            }
            Kind::Str => {
                let len = memchr::memchr(b'\'', b.get(i..)?)?;
                let inner = sql.get(i..i + len)?;
                if memchr::memchr2(b'\\', 0, inner.as_bytes()).is_some() {
                    return None;
                }
                i += len;
                string_class(inner)
            }
        };
        if found as u8 != class {
            return None;
        }
        if found.is_id() {
            s.values.push(value);
        }
    }
    if i != b.len() || key.get(at.checked_sub(1)?) != Some(&0xff) {
        return None;
    }
    // Which values are equal: as the key says.
    let rest = key.get(at..)?;
    let v = &s.values;
    if rest.len() != 2 * v.len() {
        return None;
    }
    if v.len() > 16 {
        equal_values(v, &mut s.order, &mut s.classes);
        return (s.classes.iter().zip(rest.chunks_exact(2)))
            .all(|(c, pair)| c.to_le_bytes() == pair)
            .then_some(());
    }
    (rest.chunks_exact(2).enumerate())
        .all(|(i, pair)| {
            let first = v[..i].iter().position(|w| *w == v[i]).unwrap_or(i);
            (first as u16).to_le_bytes() == pair
        })
        .then_some(())
}

/// Where the literal marks of `key` (made by [`shape`]) are, its final one included:
/// what [`same_shape`] takes with it, so that it need not look for them.
pub(crate) fn marks(key: &[u8]) -> Option<Box<[u32]>> {
    let mut at = header_len(schema_of(key)?);
    let mut marks = Vec::new();
    loop {
        let mark = at + memchr::memchr(0, key.get(at..)?)?;
        marks.push(u32::try_from(mark).ok()?);
        if *key.get(mark + 1)? == 0xff {
            return Some(marks.into());
        }
        at = mark + 2;
    }
}

/// The length of the generation and keyspace part of a key made for `schema` (as
/// [`shape`] writes it).
fn header_len(schema: SchemaKey<'_>) -> usize {
    match schema {
        SchemaKey::Unsharded => 9,
        SchemaKey::Keyspace(name) => 13 + name.len(),
    }
}

/// The digits from `i`: where they end, and their value if it fits a u64.
fn digits(b: &[u8], mut i: usize) -> (usize, Option<u64>) {
    let mut value = Some(0u64);
    while let Some(&d) = b.get(i).filter(|d| d.is_ascii_digit()) {
        value = value
            .and_then(|v| v.checked_mul(10))
            .and_then(|v| v.checked_add(u64::from(d - b'0')));
        i += 1;
    }
    (i, value)
}

/// The class and id value of a single-quoted string's content (no quote or backslash
/// in it).
fn string_class(inner: &str) -> (Class, u64) {
    match tag::parse_workspace_digits(inner) {
        Some(v) => (Class::of(Kind::Str, v), v),
        None => (Class::StrOther, 0),
    }
}

/// The keyspace part of a key, back.
pub(crate) fn schema_of(key: &[u8]) -> Option<SchemaKey<'_>> {
    match key.get(8)? {
        0 => Some(SchemaKey::Unsharded),
        _ => {
            let len = u32::from_le_bytes(key.get(9..13)?.try_into().ok()?) as usize;
            let name = std::str::from_utf8(key.get(13..13 + len)?).ok()?;
            Some(SchemaKey::Keyspace(name))
        }
    }
}

/// [`scan`]'s skip states, as offsets into [`SKIP`]: the last byte was not part of a
/// word, or was.
const AFTER_OTHER: usize = 0;
const AFTER_WORD: usize = 256;
/// The byte needs a look of its own.
const STOP: usize = 512;

/// The skip state after a byte (`SKIP[state + byte]`): spaces and the bytes of words
/// are skipped, and digits too where they continue a word (`t1`, `utf8mb4`).
const SKIP: [u16; 512] = {
    let mut t = [STOP as u16; 512];
    let mut c = 0;
    while c < 256 {
        let k = lex::CLASSES[c];
        if k & lex::SPACE != 0 {
            t[AFTER_OTHER + c] = AFTER_OTHER as u16;
            t[AFTER_WORD + c] = AFTER_OTHER as u16;
        } else if k & lex::WORD != 0 {
            t[AFTER_WORD + c] = AFTER_WORD as u16;
            if k & lex::DIGIT == 0 {
                t[AFTER_OTHER + c] = AFTER_WORD as u16;
            }
        }
        c += 1;
    }
    t
};

/// What [`scan`] has seen of the token stream.
struct Tokens {
    /// No token yet.
    none: bool,
    /// A `;` was a token.
    after_semicolon: bool,
}

impl Tokens {
    /// Whether a token may come here: never after a `;`, and first only as a cacheable
    /// verb (`head`, when the token is a word).
    fn admit(&mut self, head: Option<&str>) -> Option<()> {
        if self.after_semicolon {
            return None;
        }
        if self.none {
            self.none = false;
            if !head.is_some_and(cacheable_head) {
                return None;
            }
        }
        Some(())
    }
}

/// Finds the literals of `sql` into `s.literals` and writes the key's text part up to
/// the last of them into `s.key`; returns where the rest of the text (copied verbatim)
/// starts, or None when the text is not keyed.
fn scan(sql: &str, s: &mut Scratch) -> Option<usize> {
    let b = sql.as_bytes();
    let len = b.len();
    let mut toks = Tokens {
        none: true,
        after_semicolon: false,
    };
    // The key holds the text up to here.
    let mut at = 0;
    let mut push = |s: &mut Scratch, span: Range<usize>, class: Class, value: u64| {
        s.key.extend_from_slice(b.get(at..span.start)?);
        s.key.extend_from_slice(&[0, class as u8]);
        at = span.end;
        s.literals.push(Literal { span, class, value });
        (s.literals.len() <= MAX_LITERALS).then_some(())
    };
    let mut i = 0;
    // Inside `/*! ... */`: lexed as SQL, as MySQL runs it.
    let mut in_executable_comment = false;
    while i < len {
        if !toks.none && !toks.after_semicolon {
            // The bulk of a statement is words and spaces: skipped a byte at a time by
            // one table lookup, until something that may matter (a digit starting a
            // token, a quote, a comment, punctuation).
            let mut state = AFTER_OTHER;
            while let Some(&c) = b.get(i) {
                // The mask keeps the index provably in the table: no bounds check.
                state = usize::from(SKIP[(state | usize::from(c)) & 0x1ff]);
                if state == STOP {
                    break;
                }
                i += 1;
            }
            if i == len {
                break;
            }
        }
        let c = b[i];
        let class = lex::CLASSES[usize::from(c)];
        if class & lex::SPACE != 0 {
            i += 1;
            continue;
        }
        if class & lex::WORD != 0 {
            let start = i;
            // A run of digits: a number, unless word bytes follow (`12ab` is a word).
            let value;
            (i, value) = digits(b, i);
            if i == start || b.get(i).is_some_and(|&w| lex::is_word_byte(w)) {
                i += b[i..]
                    .iter()
                    .position(|&w| !lex::is_word_byte(w))
                    .unwrap_or(len - i);
                // The word is only read when it is the first token.
                toks.admit(sql.get(start..i).filter(|_| toks.none))?;
                continue;
            }
            toks.admit(None)?;
            let (end, _) = lex::number_end(b, i);
            if end == i {
                // Digits alone: an id literal when it fits a u64.
                if let Some(v) = value {
                    push(s, start..i, Class::of(Kind::Num, v), v)?;
                }
            }
            i = end;
            continue;
        }
        let next = b.get(i + 1).copied();
        match c {
            b'#' | b'-' if lex::line_comment_at(b, i) => i = lex::line_end(b, i),
            b'/' if next == Some(b'*') => {
                if let Some(body) = lex::executable_comment_body(b, i) {
                    i = body;
                    in_executable_comment = true;
                    continue;
                }
                let start = i;
                i = lex::block_comment_end(b, i);
                let tagged = sql.get(start..i).and_then(tag::workspace_digits_in_comment);
                if let Some((digits, v)) = tagged {
                    let span = start + digits.start..start + digits.end;
                    push(s, span, Class::of(Kind::Tag, v), v)?;
                }
            }
            b'*' if next == Some(b'/') && in_executable_comment => {
                in_executable_comment = false;
                i += 2;
            }
            b'\'' | b'"' | b'`' => {
                toks.admit(None)?;
                let start = i;
                i = lex::quoted_end(b, i, true);
                // A prefixed string (`X'..'`, `_utf8mb4'..'`, `N'..'`) is kept as it is:
                // its content may decide whether it parses at all.
                let prefixed = start
                    .checked_sub(1)
                    .and_then(|p| b.get(p))
                    .is_some_and(|&p| lex::is_word_byte(p));
                if c == b'\'' && !prefixed {
                    let inner = sql.get(start + 1..i.checked_sub(1)?)?;
                    if i - start < 2
                        || b[i - 1] != b'\''
                        || memchr::memchr2(b'\\', b'\'', inner.as_bytes()).is_some()
                    {
                        return None;
                    }
                    let (class, value) = string_class(inner);
                    push(s, start + 1..i - 1, class, value)?;
                }
            }
            _ => {
                toks.admit(None)?;
                if c == b';' {
                    // The server lexes each statement of a multi-statement query afresh:
                    // an executable comment does not reach past its `;`.
                    in_executable_comment = false;
                    toks.after_semicolon = true;
                }
                i += 1;
            }
        }
    }
    if toks.none {
        return None;
    }
    Some(at)
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
