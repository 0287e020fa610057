//! The plan cache's one-pass key scan (`cache_key::shape`) against the lexer: for the
//! planner tests' statements and for generated texts full of quotes, comments, numbers
//! and separators, the scan must find exactly the literals the lexer's tokens give
//! (which is what the key promises the planner), or refuse exactly when they do.

use super::cache::SchemaKey;
use super::cache_key::{self, Class, Scratch, MAX_LITERALS, MAX_TEXT};
use super::lex::{self, Tok};
use super::tag;

/// The key's literals as the lexer's tokens give them: (span, class, value) in text
/// order, or None where the key scan must refuse the text.
fn literals_by_tokens(sql: &str) -> Option<Vec<(std::ops::Range<usize>, Class, u64)>> {
    if sql.len() > MAX_TEXT || sql.contains('\0') {
        return None;
    }
    let lexed = lex::lex(sql);
    let toks = &lexed.tokens;
    let first = toks.first()?;
    let head = ["SELECT", "UPDATE", "DELETE", "WITH"];
    if first.kind != Tok::Word || !head.iter().any(|w| first.text(sql).eq_ignore_ascii_case(w)) {
        return None;
    }
    if toks[..toks.len() - 1].iter().any(|t| t.is_punct(b';')) {
        return None;
    }
    let zero = |v: u64, nonzero: Class, zero: Class| if v == 0 { zero } else { nonzero };
    let bytes = sql.as_bytes();
    let mut out = Vec::new();
    for t in toks {
        match t.kind {
            Tok::Num => {
                if let Some(v) = tag::parse_workspace_digits(t.text(sql)) {
                    out.push((t.start..t.end, zero(v, Class::Num, Class::NumZero), v));
                }
            }
            Tok::Str
                if bytes[t.start] == b'\''
                    && !(t.start > 0 && lex::is_word_byte(bytes[t.start - 1])) =>
            {
                let text = t.text(sql);
                let inner = t.str_inner(sql);
                if text.len() < 2 || !text.ends_with('\'') || inner.contains(['\\', '\'']) {
                    return None;
                }
                let lit = match tag::parse_workspace_digits(inner) {
                    Some(v) => (zero(v, Class::Str, Class::StrZero), v),
                    None => (Class::StrOther, 0),
                };
                out.push((t.start + 1..t.end - 1, lit.0, lit.1));
            }
            _ => {}
        }
    }
    for c in &lexed.comments {
        if let Some((digits, v)) = tag::workspace_digits_in_comment(&sql[c.clone()]) {
            let span = c.start + digits.start..c.start + digits.end;
            out.push((span, zero(v, Class::Tag, Class::TagZero), v));
        }
    }
    out.sort_by_key(|l| l.0.start);
    (out.len() <= MAX_LITERALS).then_some(out)
}

fn check(sql: &str, s: &mut Scratch) {
    let expected = literals_by_tokens(sql);
    let hash = cache_key::shape(sql, SchemaKey::Keyspace("app"), 7, s);
    let Some(expected) = expected else {
        assert_eq!(hash, None, "keyed, but the lexer says no: {sql:?}");
        return;
    };
    assert!(hash.is_some(), "not keyed, but the lexer says yes: {sql:?}");
    let got: Vec<_> = s
        .literals
        .iter()
        .map(|l| (l.span.clone(), l.class, l.value))
        .collect();
    assert_eq!(got, expected, "{sql:?}");
    // The key: the text with each literal's value replaced by its mark.
    let mut text = Vec::new();
    let mut at = 0;
    for (span, class, _) in &expected {
        text.extend_from_slice(&sql.as_bytes()[at..span.start]);
        text.extend_from_slice(&[0, *class as u8]);
        at = span.end;
    }
    text.extend_from_slice(&sql.as_bytes()[at..]);
    text.extend_from_slice(&[0, 0xff]);
    let header = 8 + 1 + 4 + "app".len();
    assert_eq!(&s.key[header..header + text.len()], &text[..], "{sql:?}");
    assert_eq!(
        s.key.len(),
        header + text.len() + 2 * s.values.len(),
        "{sql:?}"
    );
}

#[test]
fn the_key_scan_finds_the_planner_tests_literals_as_the_lexer_does() {
    let mut s = Scratch::default();
    for sql in super::cache_tests::corpus() {
        check(&sql, &mut s);
    }
}

/// Texts made of pieces where the lexer's rules meet: quotes and their escapes,
/// comment starts and ends, numbers with fractions and exponents, separators.
#[test]
fn the_key_scan_agrees_with_the_lexer_on_generated_texts() {
    const PIECES: [&str; 48] = [
        "SELECT ",
        "select ",
        "UPDATE t SET a = ",
        "DELETE FROM t WHERE ",
        "WITH ",
        " ",
        "\n",
        "\t",
        "'",
        "''",
        "'7'",
        "'0'",
        "'abc'",
        "\\",
        "\\'",
        "\"",
        "\"x\"",
        "`",
        "`a``b`",
        "/*",
        "*/",
        "/*!",
        "/*!40101",
        "/*M!",
        "-- ",
        "--",
        "-",
        "#",
        "#x\n",
        ";",
        "7",
        "0",
        "007",
        "1.5",
        "1.5e-3",
        ".5",
        "e",
        "E+2",
        "12ab",
        "x'35'",
        "N'9'",
        "_utf8mb4'4'",
        "18446744073709551616",
        "/*workspace_id:42*/",
        "/*application='a',workspace_id='0'*/",
        "a1",
        "$",
        "->>",
    ];
    let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut s = Scratch::default();
    let mut keyed = 0;
    for _ in 0..100_000 {
        let n = 1 + next() % 12;
        // Most texts start as a statement would; some with anything.
        let mut sql = String::from(if next() % 4 == 0 { "" } else { "SELECT " });
        for _ in 0..n {
            sql.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        check(&sql, &mut s);
        keyed += usize::from(literals_by_tokens(&sql).is_some());
    }
    // The generator reaches both answers often.
    assert!(keyed > 10_000 && keyed < 90_000, "{keyed}");
}
