//! Routing from tokens alone, for text sqlparser cannot parse (`... LOCK IN SHARE MODE`,
//! MariaDB-only syntax) and for statements it has no model of.
//!
//! It is deliberately timid: it finds a workspace only in a single-table statement
//! without subqueries or OR, from `C = lit`, `lit = C` or `C IN (lit, ...)` conjuncts
//! of its WHERE; whenever it names a sharded table and cannot be sure, it answers
//! `MissingWorkspace` rather than guess.

use super::lex::{Tok, Token};
use super::tables::TableName;
use super::tag::parse_workspace_digits;
use super::{Route, ShardingSchema};

/// Ends the WHERE clause of a simple statement.
const WHERE_END: &[&str] = &[
    "GROUP",
    "ORDER",
    "LIMIT",
    "HAVING",
    "FOR",
    "LOCK",
    "INTO",
    "WINDOW",
    "UNION",
    "PROCEDURE",
    "RETURNING",
];

fn is_any(t: &Token, sql: &str, words: &[&str]) -> bool {
    words.iter().any(|w| t.is_kw(sql, w))
}

/// Routes `toks` without a parse tree. `write` says whether the statement modifies the
/// tables it names (so a reference table must be written on every shard).
pub(crate) fn route(
    sql: &str,
    toks: &[Token],
    tables: &[TableName<'_>],
    schema: &dyn ShardingSchema,
    write: bool,
    tag: Option<u64>,
) -> Route {
    // Any identifier naming a listed sharded table counts, not only those after FROM:
    // without a parse tree we cannot tell a table from a column, so err towards
    // "sharded". Words in table positions count even when only a default sharding
    // column covers them.
    let mut sharded: Option<(String, String)> = None;
    let mut several_sharded = false;
    let mut reference = false;
    for t in toks.iter().filter(|t| t.is_ident()) {
        let name = t.ident(sql);
        let in_table_position = tables.iter().any(|tn| tn.name == name && !tn.is_system());
        if !in_table_position && tables.iter().any(|tn| tn.name == name) {
            // Only a table of the server's own schemas has this name here.
            continue;
        }
        if !in_table_position && !schema.is_listed(&name) {
            continue;
        }
        if let Some(c) = schema.sharding_column(&name) {
            match &sharded {
                None => sharded = Some((name.into_owned(), c.to_owned())),
                Some((first, _)) if *first != name => several_sharded = true,
                Some(_) => {}
            }
        } else if schema.is_reference(&name) {
            reference = true;
        }
    }
    let Some((table, column)) = sharded else {
        return if reference && write {
            Route::AllShards
        } else {
            Route::AnyShard
        };
    };
    if write && reference {
        // Without a parse tree we cannot tell whether the reference table is written.
        return Route::Unroutable(format!(
            "cannot tell whether this write changes a reference table or {table}; \
             split it or write it in a form the parser understands"
        ));
    }
    if let Some(tag) = tag {
        return Route::Workspaces(smallvec::smallvec![tag]);
    }
    let missing = Route::MissingWorkspace {
        table: table.clone(),
        column: column.clone(),
    };
    let uses = tables.iter().filter(|t| t.name == table).count();
    let selects = toks.iter().filter(|t| t.is_kw(sql, "SELECT")).count();
    if several_sharded || uses > 1 || selects > 1 {
        return missing;
    }
    let aliases: Vec<&str> = tables
        .iter()
        .filter(|t| t.name == table)
        .map(|t| t.alias.as_deref().unwrap_or(&table))
        .collect();
    match where_pins(sql, toks, &column, &aliases) {
        Ok(Some(ids)) if ids.is_empty() => Route::Unroutable(format!(
            "the conditions on {table}.{column} contradict each other"
        )),
        Ok(Some(ids)) => Route::Workspaces(ids.into()),
        Ok(None) => missing,
        Err(msg) => Route::Unroutable(msg),
    }
}

/// The workspaces the WHERE clause pins `column` to (intersection of its conjuncts).
fn where_pins(
    sql: &str,
    toks: &[Token],
    column: &str,
    qualifiers: &[&str],
) -> Result<Option<Vec<u64>>, String> {
    let Some(start) = toks.iter().position(|t| t.is_kw(sql, "WHERE")) else {
        return Ok(None);
    };
    let end = toks[start..]
        .iter()
        .position(|t| is_any(t, sql, WHERE_END))
        .map_or(toks.len(), |p| start + p);
    let clause = &toks[start..end];
    let has_or = clause
        .iter()
        .any(|t| is_any(t, sql, &["OR", "XOR"]) || (t.kind == Tok::Op && t.text(sql) == "||"));
    if has_or {
        return Ok(None);
    }
    // A condition counts only where it is a top-level conjunct: after WHERE or AND, or
    // inside parentheses that are themselves such a place.
    let mut plain_parens: Vec<bool> = Vec::new();
    let mut between_pending = false;
    let mut pins: Option<Vec<u64>> = None;
    let mut i = 1;
    let mut at_conjunct_start = true;
    while i < clause.len() {
        let t = &clause[i];
        if t.is_punct(b'(') {
            let plain = at_conjunct_start && plain_parens.iter().all(|&p| p);
            plain_parens.push(plain);
            at_conjunct_start = plain;
            i += 1;
            continue;
        }
        if at_conjunct_start && plain_parens.iter().all(|&p| p) {
            if let Some((ids, used)) = condition(sql, &clause[i..], column, qualifiers)? {
                pins = Some(match pins {
                    None => ids,
                    Some(old) => old.into_iter().filter(|w| ids.contains(w)).collect(),
                });
                i += used;
                at_conjunct_start = false;
                continue;
            }
        }
        at_conjunct_start = false;
        if t.is_punct(b')') {
            plain_parens.pop();
        } else if t.is_kw(sql, "BETWEEN") {
            between_pending = true;
        } else if t.is_kw(sql, "AND") || (t.kind == Tok::Op && t.text(sql) == "&&") {
            if between_pending {
                between_pending = false;
            } else {
                at_conjunct_start = true;
            }
        }
        i += 1;
    }
    Ok(pins)
}

/// `[q.]C = lit`, `lit = [q.]C` or `[q.]C IN (lit, ...)` at the start of `toks`,
/// followed by the end of the conjunct; returns the ids and the tokens used.
fn condition(
    sql: &str,
    toks: &[Token],
    column: &str,
    qualifiers: &[&str],
) -> Result<Option<(Vec<u64>, usize)>, String> {
    let column_ref = |at: usize| -> Option<usize> {
        let t = toks.get(at)?;
        if toks.get(at + 1).is_some_and(|d| d.is_punct(b'.')) {
            let c = toks.get(at + 2)?;
            let q = t.ident(sql);
            let ok = t.is_ident()
                && c.is_ident()
                && c.ident(sql).eq_ignore_ascii_case(column)
                && qualifiers.iter().any(|a| a.eq_ignore_ascii_case(&q));
            return ok.then_some(3);
        }
        (t.is_ident() && t.ident(sql).eq_ignore_ascii_case(column)).then_some(1)
    };
    let ends_conjunct = |at: usize| {
        toks.get(at).is_none_or(|t| {
            t.is_kw(sql, "AND") || t.is_punct(b')') || (t.kind == Tok::Op && t.text(sql) == "&&")
        })
    };
    if let Some(n) = column_ref(0) {
        let op = toks.get(n);
        if op.is_some_and(|t| t.is_punct(b'=')) {
            if let Some((id, m)) = literal(sql, &toks[n + 1..]) {
                if ends_conjunct(n + 1 + m) {
                    return Ok(Some((vec![id?], n + 1 + m)));
                }
            }
        } else if op.is_some_and(|t| t.is_kw(sql, "IN"))
            && toks.get(n + 1).is_some_and(|t| t.is_punct(b'('))
        {
            let mut at = n + 2;
            let mut ids = Vec::new();
            loop {
                let Some((id, m)) = literal(sql, &toks[at.min(toks.len())..]) else {
                    return Ok(None);
                };
                let id = id?;
                if !ids.contains(&id) {
                    ids.push(id);
                }
                at += m;
                match toks.get(at) {
                    Some(t) if t.is_punct(b',') => at += 1,
                    Some(t) if t.is_punct(b')') => break,
                    _ => return Ok(None),
                }
            }
            return Ok(ends_conjunct(at + 1).then_some((ids, at + 1)));
        }
        return Ok(None);
    }
    if let Some((id, m)) = literal(sql, toks) {
        if toks.get(m).is_some_and(|t| t.is_punct(b'=')) {
            if let Some(n) = column_ref(m + 1) {
                if ends_conjunct(m + 1 + n) {
                    return Ok(Some((vec![id?], m + 1 + n)));
                }
            }
        }
    }
    Ok(None)
}

/// A literal at the start of `toks`: its workspace id (or why it is not one) and the
/// number of tokens it takes.
fn literal(sql: &str, toks: &[Token]) -> Option<(Result<u64, String>, usize)> {
    let (negative, at) = match toks.first() {
        Some(t) if t.is_punct(b'-') => (true, 1),
        Some(t) if t.is_punct(b'+') => (false, 1),
        _ => (false, 0),
    };
    let t = toks.get(at)?;
    let text = match t.kind {
        Tok::Num => t.text(sql),
        Tok::Str => t.str_inner(sql),
        _ => return None,
    };
    let id = match parse_workspace_digits(text) {
        Some(0) => Ok(0),
        Some(n) if negative => Err(format!("workspace id -{n} is negative")),
        Some(n) => Ok(n),
        None => Err(format!(
            "workspace id {} is not a non-negative integer",
            t.text(sql)
        )),
    };
    Some((id, at + 1))
}
