//! A small MySQL lexer that works on bytes and keeps byte offsets.
//!
//! sqlparser's tokenizer reports line/column (in characters); the planner needs byte
//! ranges into the original text (statement spans, INSERT rows), so it scans the text
//! itself. It only needs to know where strings, quoted identifiers and comments start
//! and end; everything else is words, numbers and punctuation.

use std::borrow::Cow;
use std::ops::Range;

/// What a token is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Tok {
    /// An unquoted word: keyword or identifier.
    Word,
    /// A backquoted identifier.
    Quoted,
    /// A single- or double-quoted string literal.
    Str,
    /// An unsigned decimal number (`42`, `4.2`, `4e2`).
    Num,
    /// A one-byte punctuation or operator character.
    Punct(u8),
    /// A multi-byte operator (`:=`, `<=>`, `<>`, `||`, ...).
    Op,
}

/// One token: its kind and its byte range in the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Token {
    pub kind: Tok,
    pub start: usize,
    pub end: usize,
}

impl Token {
    pub fn text<'a>(&self, sql: &'a str) -> &'a str {
        sql.get(self.start..self.end).unwrap_or("")
    }

    /// Whether this is the unquoted keyword `kw` (ASCII upper case expected).
    pub fn is_kw(&self, sql: &str, kw: &str) -> bool {
        self.kind == Tok::Word && self.text(sql).eq_ignore_ascii_case(kw)
    }

    pub fn is_punct(&self, c: u8) -> bool {
        self.kind == Tok::Punct(c)
    }

    pub fn is_ident(&self) -> bool {
        matches!(self.kind, Tok::Word | Tok::Quoted)
    }

    /// The identifier this token names, without backquotes.
    pub fn ident<'a>(&self, sql: &'a str) -> Cow<'a, str> {
        let text = self.text(sql);
        match self.kind {
            Tok::Quoted => {
                let inner = text
                    .strip_prefix('`')
                    .map(|t| t.strip_suffix('`').unwrap_or(t))
                    .unwrap_or(text);
                if inner.contains("``") {
                    Cow::Owned(inner.replace("``", "`"))
                } else {
                    Cow::Borrowed(inner)
                }
            }
            _ => Cow::Borrowed(text),
        }
    }

    /// The raw inside of a string literal (escapes left as they are).
    pub fn str_inner<'a>(&self, sql: &'a str) -> &'a str {
        let text = self.text(sql);
        if text.len() >= 2 {
            text.get(1..text.len() - 1).unwrap_or("")
        } else {
            ""
        }
    }
}

/// A lexed text: tokens, the plain `/* */` comments (tags live there) and the
/// statement separators.
#[derive(Debug, Default)]
pub(crate) struct Lexed {
    pub tokens: Vec<Token>,
    pub comments: Vec<Range<usize>>,
}

/// What a byte can be, one lookup per byte (the lexer runs on every statement).
pub(crate) const SPACE: u8 = 1;
pub(crate) const WORD: u8 = 2;
pub(crate) const DIGIT: u8 = 4;
/// The first byte of a multi-byte operator ([`MULTI_OPS`]).
const OP_START: u8 = 8;

pub(crate) const CLASSES: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut c = 0;
    while c < 256 {
        let b = c as u8;
        let mut k = 0;
        // ASCII whitespace (as `u8::is_ascii_whitespace`) and vertical tab, as MySQL.
        if matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0c | 0x0b) {
            k |= SPACE;
        }
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'$' || b >= 0x80 {
            k |= WORD;
        }
        if b.is_ascii_digit() {
            k |= DIGIT;
        }
        if matches!(b, b'<' | b'-' | b':' | b'>' | b'!' | b'|' | b'&') {
            k |= OP_START;
        }
        t[c] = k;
        c += 1;
    }
    t
};

/// Whitespace between tokens: ASCII only, as in MySQL's lexer.
pub(crate) fn is_space(c: u8) -> bool {
    CLASSES[usize::from(c)] & SPACE != 0
}

pub(crate) fn is_word_byte(c: u8) -> bool {
    CLASSES[usize::from(c)] & WORD != 0
}

/// Longest first where one starts another (`<=>` before `<=`). Each starts with an
/// [`OP_START`] byte.
const MULTI_OPS: [&[u8]; 12] = [
    b"<=>", b"->>", b":=", b"<=", b">=", b"<>", b"!=", b"||", b"&&", b"<<", b">>", b"->",
];

/// Splits `sql` into tokens. Never fails: unterminated strings and comments run to the
/// end of the text (the backend will reject them).
pub(crate) fn lex(sql: &str) -> Lexed {
    lex_with(sql, true)
}

/// [`lex`], reading a backslash in a string as an escape (the default) or, with
/// `backslash_escapes` false, as an ordinary character, as the server does under
/// `sql_mode=NO_BACKSLASH_ESCAPES`.
pub(crate) fn lex_with(sql: &str, backslash_escapes: bool) -> Lexed {
    let mut out = Lexed::default();
    lex_into(sql, backslash_escapes, &mut out);
    out
}

/// [`lex_with`] into `out`, whose buffers are cleared and reused (the plan cache lexes
/// every statement into one per thread, so a hit allocates nothing here).
pub(crate) fn lex_into(sql: &str, backslash_escapes: bool, out: &mut Lexed) {
    let b = sql.as_bytes();
    let len = b.len();
    out.tokens.clear();
    out.comments.clear();
    out.tokens.reserve(len / 4 + 4);
    let mut i = 0;
    // Inside `/*! ... */`: MySQL runs the content as SQL, so we lex it as SQL too.
    let mut in_executable_comment = false;
    while i < len {
        let c = b[i];
        let next = b.get(i + 1).copied();
        let class = CLASSES[usize::from(c)];
        if class & SPACE != 0 {
            i += 1;
        } else if class & WORD != 0 {
            // Words first: no comment, quote or operator starts with a word byte.
            let start = i;
            // Every byte of the word a digit: a number.
            let mut all = WORD | DIGIT;
            while let Some(&w) = b.get(i) {
                let class = CLASSES[usize::from(w)];
                if class & WORD == 0 {
                    break;
                }
                all &= class;
                i += 1;
            }
            let mut kind = Tok::Word;
            if all & DIGIT != 0 {
                (i, kind) = number_end(b, i);
            }
            out.tokens.push(Token {
                kind,
                start,
                end: i,
            });
        } else if line_comment_at(b, i) {
            i = line_end(b, i);
        } else if c == b'/' && next == Some(b'*') {
            if let Some(body) = executable_comment_body(b, i) {
                i = body;
                in_executable_comment = true;
                continue;
            }
            let start = i;
            i = block_comment_end(b, i);
            out.comments.push(start..i);
        } else if c == b'*' && next == Some(b'/') && in_executable_comment {
            in_executable_comment = false;
            i += 2;
        } else if c == b'\'' || c == b'"' || c == b'`' {
            let start = i;
            i = quoted_end(b, i, backslash_escapes);
            let kind = if c == b'`' { Tok::Quoted } else { Tok::Str };
            out.tokens.push(Token {
                kind,
                start,
                end: i,
            });
        } else {
            let start = i;
            let rest = b.get(i..).unwrap_or_default();
            let multi = (class & OP_START != 0)
                .then(|| MULTI_OPS.iter().find(|op| rest.starts_with(op)))
                .flatten();
            if let Some(op) = multi {
                i += op.len();
                out.tokens.push(Token {
                    kind: Tok::Op,
                    start,
                    end: i,
                });
            } else {
                i += 1;
                if c == b';' {
                    // The server lexes each statement of a multi-statement query afresh,
                    // so an executable comment does not reach past its `;` (the statement
                    // after it, forwarded alone, starts with a stray `*/`).
                    in_executable_comment = false;
                }
                out.tokens.push(Token {
                    kind: Tok::Punct(c),
                    start,
                    end: i,
                });
            }
        }
    }
}

/// Whether a `#` or `-- ` comment (to the end of the line) starts at `i`.
pub(crate) fn line_comment_at(b: &[u8], i: usize) -> bool {
    match b.get(i) {
        Some(b'#') => true,
        Some(b'-') => b.get(i + 1) == Some(&b'-') && b.get(i + 2).is_none_or(|&d| d <= b' '),
        _ => false,
    }
}

/// The end of a `#` or `-- ` comment that starts at `i`: its line break (or the end).
pub(crate) fn line_end(b: &[u8], i: usize) -> usize {
    memchr::memchr(b'\n', b.get(i..).unwrap_or_default()).map_or(b.len(), |e| i + e)
}

/// Where the SQL inside the executable comment (`/*!`, `/*M!`, then an optional version
/// number) that starts at `i` begins; None when the comment at `i` is a plain one.
pub(crate) fn executable_comment_body(b: &[u8], i: usize) -> Option<usize> {
    let mut at = match b.get(i + 2) {
        Some(b'!') => i + 3,
        Some(b'M') if b.get(i + 3) == Some(&b'!') => i + 4,
        _ => return None,
    };
    while b.get(at).is_some_and(u8::is_ascii_digit) {
        at += 1;
    }
    Some(at)
}

/// The end of the plain `/* */` comment that starts at `i`: after its `*/` (the first
/// one after the opening), or the end of the text.
pub(crate) fn block_comment_end(b: &[u8], i: usize) -> usize {
    let from = (i + 2).min(b.len());
    memchr::memmem::find(&b[from..], b"*/").map_or(b.len(), |e| from + e + 2)
}

/// Where the quoted string, identifier or string literal that starts at `start` (its
/// opening quote) ends: after its closing quote, or at the end of the text. A doubled
/// quote stays inside; so does an escaped character of a `'` or `"` string when
/// `backslash_escapes` holds.
pub(crate) fn quoted_end(b: &[u8], start: usize, backslash_escapes: bool) -> usize {
    let len = b.len();
    let Some(&q) = b.get(start) else {
        return len;
    };
    let escapes = backslash_escapes && q != b'`';
    let mut i = start + 1;
    // Jump from one byte that matters (the quote, or a backslash that escapes) to the
    // next: a string's content is most of an INSERT's bytes.
    while let Some(rest) = b.get(i..) {
        let next = if escapes {
            memchr::memchr2(q, b'\\', rest)
        } else {
            memchr::memchr(q, rest)
        };
        let Some(at) = next else {
            return len;
        };
        i += at;
        if b[i] != q {
            // A backslash: it and the byte after it stay inside.
            i += 2;
        } else if b.get(i + 1) == Some(&q) {
            i += 2;
        } else {
            return i + 1;
        }
    }
    len
}

/// The end and kind of a token whose first `i` bytes are a run of digits: a number,
/// with its fraction and exponent (`4.2`, `4.2e-1`), or a word when letters follow
/// (`1abc` is an identifier in MySQL).
pub(crate) fn number_end(b: &[u8], mut i: usize) -> (usize, Tok) {
    let len = b.len();
    if i < len && b[i] == b'.' && b.get(i + 1).is_some_and(u8::is_ascii_digit) {
        i += 1;
        while i < len && b[i].is_ascii_digit() {
            i += 1;
        }
    }
    if i < len && (b[i] == b'e' || b[i] == b'E') {
        let mut j = i + 1;
        if j < len && (b[j] == b'+' || b[j] == b'-') {
            j += 1;
        }
        if j < len && b[j].is_ascii_digit() {
            while j < len && b[j].is_ascii_digit() {
                j += 1;
            }
            i = j;
        }
    }
    if i < len && is_word_byte(b[i]) {
        while i < len && is_word_byte(b[i]) {
            i += 1;
        }
        return (i, Tok::Word);
    }
    (i, Tok::Num)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kinds(sql: &str) -> Vec<(Tok, &str)> {
        lex(sql)
            .tokens
            .iter()
            .map(|t| (t.kind, t.text(sql)))
            .collect()
    }

    #[test]
    fn strings_comments_and_operators_are_single_tokens() {
        let sql = "SELECT 'a''b\\'c', `x``y` -- c\n# d\n/* e */ FROM t WHERE a := 1.5e3";
        assert_eq!(
            kinds(sql),
            vec![
                (Tok::Word, "SELECT"),
                (Tok::Str, "'a''b\\'c'"),
                (Tok::Punct(b','), ","),
                (Tok::Quoted, "`x``y`"),
                (Tok::Word, "FROM"),
                (Tok::Word, "t"),
                (Tok::Word, "WHERE"),
                (Tok::Word, "a"),
                (Tok::Op, ":="),
                (Tok::Num, "1.5e3"),
            ]
        );
        assert_eq!(lex(sql).comments.len(), 1);
    }

    #[test]
    fn executable_comments_are_lexed_as_sql() {
        let sql = "/*!40101 SET NAMES utf8 */";
        assert_eq!(
            kinds(sql),
            vec![
                (Tok::Word, "SET"),
                (Tok::Word, "NAMES"),
                (Tok::Word, "utf8")
            ]
        );
    }

    #[test]
    fn an_executable_comment_ends_at_a_statement_separator() {
        let sql = "/*!40101 SET a = 1; */ BEGIN";
        assert_eq!(
            kinds(sql),
            vec![
                (Tok::Word, "SET"),
                (Tok::Word, "a"),
                (Tok::Punct(b'='), "="),
                (Tok::Num, "1"),
                (Tok::Punct(b';'), ";"),
                (Tok::Punct(b'*'), "*"),
                (Tok::Punct(b'/'), "/"),
                (Tok::Word, "BEGIN"),
            ]
        );
    }

    #[test]
    fn the_byte_table_agrees_with_the_rules_it_stands_for() {
        for c in 0..=255u8 {
            assert_eq!(is_space(c), c.is_ascii_whitespace() || c == 0x0b, "{c}");
            let word = c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80;
            assert_eq!(is_word_byte(c), word, "{c}");
            assert_eq!(
                CLASSES[usize::from(c)] & DIGIT != 0,
                c.is_ascii_digit(),
                "{c}"
            );
        }
        for op in MULTI_OPS {
            assert_ne!(CLASSES[usize::from(op[0])] & OP_START, 0, "{op:?}");
        }
        // Digits then letters make a word; letters then digits too.
        let sql = "SELECT 12ab, ab12, 007, 1.5, 4.2e1 <=> 4";
        assert_eq!(
            kinds(sql),
            vec![
                (Tok::Word, "SELECT"),
                (Tok::Word, "12ab"),
                (Tok::Punct(b','), ","),
                (Tok::Word, "ab12"),
                (Tok::Punct(b','), ","),
                (Tok::Num, "007"),
                (Tok::Punct(b','), ","),
                (Tok::Num, "1.5"),
                (Tok::Punct(b','), ","),
                (Tok::Num, "4.2e1"),
                (Tok::Op, "<=>"),
                (Tok::Num, "4"),
            ]
        );
    }

    #[test]
    fn quoted_ends_after_its_closing_quote_or_at_the_end_of_the_text() {
        let long = format!("'{}\\'{}' x", "é".repeat(40), "a".repeat(70));
        let cases: [(&str, bool, usize); 15] = [
            ("'ab' x", true, 4),
            ("'a''b' x", true, 6),
            ("'a\\'b' x", true, 6),
            ("'a\\'b' x", false, 4),
            ("'a\\\\' x", true, 5),
            ("`a\\` x", true, 4),
            ("\"a\"\"b\\\"\" x", true, 8),
            // Unterminated, also by a final backslash or a final doubled quote.
            ("'abc", true, 4),
            ("'abc\\", true, 5),
            ("'abc\\'", true, 6),
            ("'abc''", true, 6),
            ("'", true, 1),
            ("", true, 0),
            // Longer than a vector register, with multi-byte characters before the end.
            (&long, true, long.len() - 2),
            (&long, false, 83),
        ];
        for (text, escapes, end) in cases {
            assert_eq!(
                quoted_end(text.as_bytes(), 0, escapes),
                end,
                "{text:?} {escapes}"
            );
        }
    }

    #[test]
    fn non_ascii_words_keep_byte_offsets() {
        let sql = "SELECT 'héllo', naïve";
        let l = lex(sql);
        assert_eq!(l.tokens[3].text(sql), "naïve");
        assert_eq!(l.tokens[1].text(sql), "'héllo'");
    }
}
