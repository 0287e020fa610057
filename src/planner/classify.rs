//! Classifying a statement by its first keyword(s), without parsing.
//!
//! Session statements, SHOW and DDL are recognised here for every statement, because
//! sqlparser misses several MariaDB forms of them and their route does not depend on
//! anything deeper than their first words.

use super::lex::{Tok, Token};
use super::{DdlKind, StatementKind};

/// The class of a statement as its first keywords show it: a [`StatementKind`] when
/// that is all there is to know, else what the planner still has to work out.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Head {
    /// Any kind but `Insert` and `Show` (which need more than their first words).
    Kind(StatementKind),
    /// INSERT or REPLACE: its shape comes from the planner's INSERT reader.
    Insert,
    /// SHOW / DESCRIBE / EXPLAIN / HELP; `inner` is the token index of an explained
    /// statement (`EXPLAIN SELECT ...`), if any.
    Show { inner: Option<usize> },
    /// `CREATE TEMPORARY TABLE`, `DROP TEMPORARY TABLE`: state on the connection.
    Temporary,
    /// `LOCK TABLE(S)`.
    Lock,
}

fn kw(t: Option<&Token>, sql: &str, word: &str) -> bool {
    t.is_some_and(|t| t.is_kw(sql, word))
}

fn kw_any(t: Option<&Token>, sql: &str, words: &[&str]) -> bool {
    t.is_some_and(|t| words.iter().any(|w| t.is_kw(sql, w)))
}

/// Classifies the statement made of `toks` (comments already left out).
pub(crate) fn classify(sql: &str, toks: &[Token]) -> Head {
    let Some(first) = toks.first() else {
        return Head::Kind(StatementKind::Other);
    };
    if first.is_punct(b'(') {
        let inner = toks.iter().find(|t| !t.is_punct(b'('));
        return if kw_any(inner, sql, &["SELECT", "WITH", "VALUES", "TABLE"]) {
            Head::Kind(StatementKind::Select)
        } else {
            Head::Kind(StatementKind::Other)
        };
    }
    if first.kind != Tok::Word {
        return Head::Kind(StatementKind::Other);
    }
    // Upper-case the first word on the stack: this runs for every statement.
    let mut buf = [0u8; 12];
    let raw = first.text(sql).as_bytes();
    let word = if raw.len() <= buf.len() {
        for (d, s) in buf.iter_mut().zip(raw) {
            *d = s.to_ascii_uppercase();
        }
        std::str::from_utf8(&buf[..raw.len()]).unwrap_or("")
    } else {
        ""
    };
    let second = toks.get(1);
    match word {
        "SELECT" | "WITH" => Head::Kind(StatementKind::Select),
        "INSERT" | "REPLACE" => Head::Insert,
        "UPDATE" => Head::Kind(StatementKind::Update),
        "DELETE" => Head::Kind(StatementKind::Delete),
        "BEGIN" if second.is_none() || (kw(second, sql, "WORK") && toks.len() == 2) => {
            Head::Kind(StatementKind::Begin)
        }
        "START" if kw(second, sql, "TRANSACTION") => Head::Kind(StatementKind::Begin),
        "COMMIT" => Head::Kind(StatementKind::Commit),
        "ROLLBACK" if toks.iter().any(|t| t.is_kw(sql, "TO")) => Head::Kind(StatementKind::Other),
        "ROLLBACK" => Head::Kind(StatementKind::Rollback),
        "USE" => use_target(sql, toks),
        "SET" => classify_set(sql, toks),
        "SHOW" | "HELP" => Head::Show { inner: None },
        "DESCRIBE" | "DESC" | "EXPLAIN" => Head::Show {
            inner: explained_statement(sql, toks),
        },
        "CREATE" => classify_create(sql, toks),
        "DROP" => {
            let next = toks.get(1);
            if kw(next, sql, "TEMPORARY") {
                Head::Temporary
            } else if kw_any(next, sql, &["TABLE", "TABLES"]) {
                Head::Kind(StatementKind::Ddl(DdlKind::DropTable))
            } else if kw_any(next, sql, &["DATABASE", "SCHEMA"]) {
                Head::Kind(StatementKind::Ddl(DdlKind::DropDatabase))
            } else if kw(next, sql, "INDEX") {
                Head::Kind(StatementKind::Ddl(DdlKind::DropIndex))
            } else {
                Head::Kind(StatementKind::Ddl(DdlKind::Other))
            }
        }
        "ALTER" => {
            let next = toks[1..]
                .iter()
                .find(|t| !t.is_kw(sql, "ONLINE") && !t.is_kw(sql, "IGNORE"));
            if kw(next, sql, "TABLE") {
                Head::Kind(StatementKind::Ddl(DdlKind::AlterTable))
            } else {
                Head::Kind(StatementKind::Ddl(DdlKind::Other))
            }
        }
        "RENAME" if kw_any(second, sql, &["TABLE", "TABLES"]) => {
            Head::Kind(StatementKind::Ddl(DdlKind::RenameTable))
        }
        "RENAME" => Head::Kind(StatementKind::Ddl(DdlKind::Other)),
        "TRUNCATE" => Head::Kind(StatementKind::Ddl(DdlKind::Truncate)),
        "LOCK" => Head::Lock,
        _ => Head::Kind(StatementKind::Other),
    }
}

fn classify_create(sql: &str, toks: &[Token]) -> Head {
    let mut i = 1;
    if kw(toks.get(i), sql, "OR") && kw(toks.get(i + 1), sql, "REPLACE") {
        i += 2;
    }
    let next = toks.get(i);
    if kw(next, sql, "TEMPORARY") {
        Head::Temporary
    } else if kw(next, sql, "TABLE") {
        Head::Kind(StatementKind::Ddl(DdlKind::CreateTable))
    } else if kw_any(next, sql, &["DATABASE", "SCHEMA"]) {
        Head::Kind(StatementKind::Ddl(DdlKind::CreateDatabase))
    } else if kw(next, sql, "INDEX")
        || (kw_any(next, sql, &["UNIQUE", "FULLTEXT", "SPATIAL"])
            && kw(toks.get(i + 1), sql, "INDEX"))
    {
        Head::Kind(StatementKind::Ddl(DdlKind::CreateIndex))
    } else {
        Head::Kind(StatementKind::Ddl(DdlKind::Other))
    }
}

/// The token index where the statement explained by `EXPLAIN`/`DESCRIBE` starts.
fn explained_statement(sql: &str, toks: &[Token]) -> Option<usize> {
    toks.iter().enumerate().skip(1).take(8).find_map(|(i, t)| {
        let starts = ["SELECT", "WITH", "INSERT", "REPLACE", "UPDATE", "DELETE"]
            .iter()
            .any(|w| t.is_kw(sql, w))
            || t.is_punct(b'(');
        starts.then_some(i)
    })
}

/// Whether a `SET` statement (`toks[0]` is `SET`) assigns a global variable
/// (`SET GLOBAL x`, `SET @@global.x`, `PERSIST`).
pub(crate) fn set_assigns_global(sql: &str, toks: &[Token]) -> bool {
    let rest = toks.get(1..).unwrap_or_default();
    rest.windows(2).any(|w| {
        (w[0].is_kw(sql, "GLOBAL") || w[0].is_kw(sql, "PERSIST") || w[0].is_kw(sql, "PERSIST_ONLY"))
            || (w[0].is_punct(b'@') && w[1].is_kw(sql, "GLOBAL"))
    }) || rest.last().is_some_and(|t| t.is_kw(sql, "GLOBAL"))
}

fn classify_set(sql: &str, toks: &[Token]) -> Head {
    let rest = &toks[1..];
    // Anything global belongs to the server, not to this session.
    if set_assigns_global(sql, toks) {
        return Head::Kind(StatementKind::Other);
    }
    let first = rest.first();
    if kw(first, sql, "TRANSACTION")
        || (kw_any(first, sql, &["SESSION", "LOCAL"]) && kw(rest.get(1), sql, "TRANSACTION"))
    {
        return Head::Kind(StatementKind::SetTransaction);
    }
    if kw_any(first, sql, &["PASSWORD", "ROLE", "DEFAULT", "STATEMENT"]) {
        return Head::Kind(StatementKind::Other);
    }
    autocommit_value(sql, rest).map_or(Head::Kind(StatementKind::SetSession), |b| {
        Head::Kind(StatementKind::SetAutocommit(b))
    })
}

/// `autocommit = v` (with an optional scope) as the only assignment of a SET.
fn autocommit_value(sql: &str, rest: &[Token]) -> Option<bool> {
    let mut i = 0;
    if kw_any(rest.first(), sql, &["SESSION", "LOCAL"]) {
        i = 1;
    } else if rest.first().is_some_and(|t| t.is_punct(b'@'))
        && rest.get(1).is_some_and(|t| t.is_punct(b'@'))
    {
        i = 2;
        if kw_any(rest.get(2), sql, &["SESSION", "LOCAL"])
            && rest.get(3).is_some_and(|t| t.is_punct(b'.'))
        {
            i = 4;
        }
    }
    if !kw(rest.get(i), sql, "AUTOCOMMIT") {
        return None;
    }
    let op = rest.get(i + 1)?;
    if !(op.is_punct(b'=') || (op.kind == Tok::Op && op.text(sql) == ":=")) {
        return None;
    }
    let value = rest.get(i + 2)?;
    if rest.len() != i + 3 {
        return None;
    }
    let text = match value.kind {
        Tok::Str => value.str_inner(sql),
        _ => value.text(sql),
    };
    match text.to_ascii_uppercase().as_str() {
        "1" | "ON" | "TRUE" | "DEFAULT" => Some(true),
        "0" | "OFF" | "FALSE" => Some(false),
        _ => None,
    }
}

/// `USE db`, `` USE `db` ``, or an explicit shard target such as `USE app/80-c0`
/// (kept as written, for the session to interpret).
fn use_target(sql: &str, toks: &[Token]) -> Head {
    match toks {
        [_, t] if t.is_ident() => Head::Kind(StatementKind::Use(t.ident(sql).into_owned())),
        [_, first, .., last]
            if first.is_ident()
                && toks[1..].iter().all(|t| {
                    matches!(
                        t.kind,
                        Tok::Word | Tok::Num | Tok::Punct(b'/' | b'-' | b':' | b'.')
                    )
                }) =>
        {
            Head::Kind(StatementKind::Use(
                sql.get(first.start..last.end).unwrap_or("").to_owned(),
            ))
        }
        _ => Head::Kind(StatementKind::Other),
    }
}

/// Whether `text` may mention anything the session answers with shardgate's own
/// identity instead of the backend's (`@@` variables, `CONNECTION_ID()`, the process
/// list, `SHOW`): cheap, for every statement. Only what stands outside literals
/// matters to that rewrite; a `true` for a string's content is a false alarm (the plan
/// cache keeps this answer for a statement's shape: see `PlanCache::plan_noting_identity`).
pub fn may_mention_identity(text: &str) -> bool {
    let b = text.as_bytes();
    let show = b
        .trim_ascii_start()
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"SHOW"));
    if show {
        return true;
    }
    // Any `@`; `CONNECTION_ID()`, `PROCESSLIST`: both have a `C` (at 4 and at 2), rarer
    // in SQL than their first letters, so windows are compared only around one. One
    // vectorized search for all three bytes: this runs over every statement's text.
    let at = |start: Option<usize>, needle: &[u8]| {
        start
            .and_then(|s| b.get(s..s + needle.len()))
            .is_some_and(|w| w.eq_ignore_ascii_case(needle))
    };
    // The byte before the `C` rules out most hits (`workspace`, `account`) with one
    // comparison before the two windows are compared.
    memchr::memchr3_iter(b'@', b'c', b'C', b).any(|p| {
        let before = p
            .checked_sub(1)
            .and_then(|q| b.get(q))
            .map(u8::to_ascii_uppercase);
        b.get(p) == Some(&b'@')
            || (before == Some(b'E') && at(p.checked_sub(4), b"ONNECTION_"))
            || (before == Some(b'O') && at(p.checked_sub(2), b"ROCESSLIST"))
    })
}
