//! The plan cache's one-pass key scan (`cache_key::shape`) against the lexer: for the
//! planner tests' statements and for generated texts full of quotes, comments, numbers
//! and separators, the scan must find exactly the literals the lexer's tokens give
//! (which is what the key promises the planner), or refuse exactly when they do.

use super::cache::SchemaKey;
use super::cache_key::{self, Class, Scratch, MAX_LITERALS, MAX_TEXT};
use super::lex::{self, Tok};
use super::tag;
use crate::testing::xorshift;

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
    let mut next = xorshift(0x9E37_79B9_7F4A_7C15);
    let mut s = Scratch::default();
    let mut keyed = 0;
    for _ in 0..100_000 {
        let n = 1 + next() % 12;
        // Most texts start as a statement would; some with anything.
        let mut sql = String::from(if next().is_multiple_of(4) {
            ""
        } else {
            "SELECT "
        });
        for _ in 0..n {
            sql.push_str(PIECES[(next() % PIECES.len() as u64) as usize]);
        }
        check(&sql, &mut s);
        keyed += usize::from(literals_by_tokens(&sql).is_some());
    }
    // The generator reaches both answers often.
    assert!(keyed > 10_000 && keyed < 90_000, "{keyed}");
}

/// Texts `same_shape` takes as having `key` must be texts `shape` gives that key, with
/// the same id values and their equalities: the memo's shortcut may never find a plan
/// the cache would not.
fn check_same_shape(key: &[u8], sql: &str, s: &mut Scratch) -> bool {
    let schema = SchemaKey::Keyspace("app");
    let marks = cache_key::marks(key).expect("a key's marks");
    if cache_key::same_shape(key, &marks, sql, schema, 7, s).is_none() {
        return false;
    }
    let values = s.values.clone();
    let mut full = Scratch::default();
    assert!(
        cache_key::shape(sql, schema, 7, &mut full).is_some(),
        "taken as keyed, but the scan does not key it: {sql:?}"
    );
    assert_eq!(
        full.key, key,
        "taken as the same shape, but its key differs: {sql:?}"
    );
    assert_eq!(values, full.values, "{sql:?}");
    true
}

#[test]
fn same_shape_takes_exactly_the_texts_of_the_same_key() {
    // What a literal's place gets in the second text: other ids, zeros, strings with
    // quotes, escapes, NUL and comment marks, numbers that are not plain digits.
    const VALUES: [&str; 24] = [
        "5",
        "42",
        "0",
        "007",
        "00",
        "18446744073709551615",
        "18446744073709551616",
        "",
        "1.5",
        "1e3",
        "12ab",
        "7 ",
        " 7",
        "abc",
        "sg",
        "a'b",
        "a\\b",
        "a\0b",
        "*/",
        "'",
        "--",
        "9,workspace_id:8",
        ";",
        "0x1",
    ];
    let mut next = xorshift(0x2545_F491_4F6C_DD1D);
    let mut statements: Vec<String> = super::cache_tests::corpus();
    statements.extend(
        [
            "SELECT c FROM sbtest1 WHERE id=17",
            "SELECT * FROM t WHERE a = 1 AND b = 1",
            "SELECT * FROM t WHERE a = 1 AND b = 2",
            "SELECT * FROM t WHERE name = 'x' AND workspace_id = '3' /*workspace_id:3*/",
            "SELECT * FROM t WHERE workspace_id IN (1, 2, 0, 2)",
            "UPDATE t SET a = 'q' WHERE workspace_id = 9 /*application='a',workspace_id='9'*/",
            "SELECT 1 /*! AND a = '2' */ FROM t WHERE b = 3",
        ]
        .map(String::from),
    );
    let (mut s, mut taken, mut variants) = (Scratch::default(), 0, 0);
    for round in 0..40 {
        for sql in &statements {
            if cache_key::shape(sql, SchemaKey::Keyspace("app"), 7, &mut s).is_none() {
                continue;
            }
            let key = s.key.clone();
            let spans: Vec<_> = s.literals.iter().map(|l| l.span.clone()).collect();
            // The text itself, and the variant the cache proves templates with.
            assert!(check_same_shape(&key, sql, &mut s), "its own text: {sql:?}");
            let mut k = Scratch::default();
            cache_key::shape(sql, SchemaKey::Keyspace("app"), 7, &mut k);
            let variant = cache_key::variant(sql, &k);
            assert!(check_same_shape(&key, &variant, &mut s), "{variant:?}");
            // Not under another generation or keyspace.
            let marks = cache_key::marks(&key).expect("a key's marks");
            for (schema, generation) in [
                (SchemaKey::Keyspace("ap"), 7),
                (SchemaKey::Unsharded, 7),
                (SchemaKey::Keyspace("app"), 8),
            ] {
                let taken = cache_key::same_shape(&key, &marks, sql, schema, generation, &mut s);
                assert!(taken.is_none(), "{sql:?} under {schema:?} {generation}");
            }
            // Each literal replaced by anything from the list; sometimes a byte of the
            // text around them changed as well.
            let mut text = String::new();
            let mut at = 0;
            for span in &spans {
                text.push_str(&sql[at..span.start]);
                text.push_str(VALUES[(next() % VALUES.len() as u64) as usize]);
                at = span.end;
            }
            text.push_str(&sql[at..]);
            if round % 5 == 4 && !text.is_empty() {
                let at = (next() % text.len() as u64) as usize;
                if text.is_char_boundary(at) && text.is_char_boundary(at + 1) {
                    let byte = ["'", "1", " ", "*", "x", "\\", "0"][(next() % 7) as usize];
                    text.replace_range(at..at + 1, byte);
                }
            }
            variants += 1;
            taken += usize::from(check_same_shape(&key, &text, &mut s));
        }
    }
    // Both answers are reached often.
    assert!(
        taken > variants / 20 && taken < variants * 9 / 10,
        "{taken} of {variants}"
    );
}
