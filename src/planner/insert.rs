//! INSERT / REPLACE, read from tokens so that every row's byte range is exact.
//!
//! `INSERT [modifiers] [INTO] t [PARTITION (..)] [(cols)] VALUES (..), (..) [tail]`:
//! the prefix runs to the first row's `(`, each row is its `( ... )`, and the tail
//! (`AS new`, `ON DUPLICATE KEY UPDATE ...`) is the suffix, so the rows of one shard
//! reassemble into a valid statement.

use std::collections::HashSet;
use std::ops::Range;

use super::lex::{Tok, Token};
use super::tag::parse_workspace_digits;
use super::{InsertShape, Route, ShardingSchema};

/// How the rest of the planner must finish routing an INSERT.
pub(crate) enum InsertRoute {
    Done(Route),
    /// `INSERT INTO plain_table SELECT ...`: route the SELECT starting at this token.
    Select(usize),
    /// Not understood: use the token-level fallback.
    Fallback,
}

/// What one row says about the sharding column.
enum RowValue {
    Id(u64),
    Bad(String),
    NotLiteral,
}

enum Body {
    Values(Vec<(Range<usize>, Option<RowValue>)>),
    Set(Option<RowValue>),
    Select(usize),
    Unknown,
}

fn kw_any(t: Option<&Token>, sql: &str, words: &[&str]) -> bool {
    t.is_some_and(|t| words.iter().any(|w| t.is_kw(sql, w)))
}

/// The index of the `)` that closes the `(` at `open`.
fn closing_paren(toks: &[Token], open: usize) -> Option<usize> {
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(open) {
        if t.is_punct(b'(') {
            depth += 1;
        } else if t.is_punct(b')') {
            depth = depth.saturating_sub(1);
            if depth == 0 {
                return Some(i);
            }
        }
    }
    None
}

/// `toks` split on commas at depth 0, without allocating (it runs for every row).
fn items(toks: &[Token]) -> impl Iterator<Item = &[Token]> {
    let mut depth = 0usize;
    let mut start = Some(0);
    let mut i = 0;
    std::iter::from_fn(move || {
        let from = start?;
        while let Some(t) = toks.get(i) {
            i += 1;
            match t.kind {
                Tok::Punct(b'(') => depth += 1,
                Tok::Punct(b')') => depth = depth.saturating_sub(1),
                Tok::Punct(b',') if depth == 0 => {
                    start = Some(i);
                    return toks.get(from..i - 1);
                }
                _ => {}
            }
        }
        start = None;
        toks.get(from..)
    })
}

fn row_value(sql: &str, value: &[Token]) -> RowValue {
    let bad =
        |text: &str| RowValue::Bad(format!("workspace id {text} is not a non-negative integer"));
    match value {
        [t] if t.kind == Tok::Num || t.kind == Tok::Str => {
            let text = if t.kind == Tok::Str {
                t.str_inner(sql)
            } else {
                t.text(sql)
            };
            parse_workspace_digits(text).map_or_else(|| bad(t.text(sql)), RowValue::Id)
        }
        [t] if t.is_kw(sql, "NULL") => RowValue::Bad("workspace id is NULL".to_owned()),
        [sign, t] if sign.is_punct(b'+') && t.kind == Tok::Num => row_value(sql, &value[1..]),
        [sign, t] if sign.is_punct(b'-') && matches!(t.kind, Tok::Num | Tok::Str) => {
            match row_value(sql, &value[1..]) {
                RowValue::Id(0) => RowValue::Id(0),
                RowValue::Id(n) => RowValue::Bad(format!("workspace id -{n} is negative")),
                other => other,
            }
        }
        _ => RowValue::NotLiteral,
    }
}

/// Plans an INSERT/REPLACE made of `toks`, spanning `span` of `sql`.
pub(crate) fn plan_insert(
    sql: &str,
    toks: &[Token],
    span: Range<usize>,
    schema: &dyn ShardingSchema,
    tag: Option<u64>,
) -> (InsertShape, InsertRoute) {
    let whole = InsertShape {
        prefix: span.clone(),
        rows: Vec::new(),
        suffix: span.end..span.end,
    };
    let mut i = 1;
    while kw_any(
        toks.get(i),
        sql,
        &["LOW_PRIORITY", "DELAYED", "HIGH_PRIORITY", "IGNORE", "INTO"],
    ) {
        i += 1;
    }
    let Some(mut table) = toks.get(i).filter(|t| t.is_ident()) else {
        return (whole, InsertRoute::Fallback);
    };
    i += 1;
    if toks.get(i).is_some_and(|t| t.is_punct(b'.')) {
        match toks.get(i + 1).filter(|t| t.is_ident()) {
            Some(t) => table = t,
            None => return (whole, InsertRoute::Fallback),
        }
        i += 2;
    }
    let table_name = table.ident(sql);
    let column = if schema.is_sharded() {
        schema.sharding_column(&table_name)
    } else {
        None
    };
    if kw_any(toks.get(i), sql, &["PARTITION"]) {
        match toks.get(i + 1).filter(|t| t.is_punct(b'(')) {
            Some(_) => match closing_paren(toks, i + 1) {
                Some(close) => i = close + 1,
                None => return (whole, InsertRoute::Fallback),
            },
            None => return (whole, InsertRoute::Fallback),
        }
    }
    // The column list, and where the sharding column sits in it.
    let mut position: Option<usize> = None;
    if toks.get(i).is_some_and(|t| t.is_punct(b'('))
        && !kw_any(toks.get(i + 1), sql, &["SELECT", "WITH"])
        && !toks.get(i + 1).is_some_and(|t| t.is_punct(b'('))
    {
        let Some(close) = closing_paren(toks, i) else {
            return (whole, InsertRoute::Fallback);
        };
        if let Some(c) = column {
            position = items(&toks[i + 1..close]).position(|item| {
                item.last()
                    .is_some_and(|t| t.is_ident() && t.ident(sql).eq_ignore_ascii_case(c))
            });
        }
        i = close + 1;
    }
    let body = match toks.get(i) {
        Some(t) if t.is_kw(sql, "VALUES") || t.is_kw(sql, "VALUE") => {
            read_rows(sql, toks, i + 1, position)
        }
        Some(t) if t.is_kw(sql, "SET") => match column {
            Some(c) => Body::Set(set_value(sql, &toks[i + 1..], c)),
            None => Body::Set(None),
        },
        Some(t) if t.is_kw(sql, "SELECT") || t.is_kw(sql, "WITH") || t.is_punct(b'(') => {
            Body::Select(i)
        }
        _ => Body::Unknown,
    };

    let is_reference = schema.is_sharded() && schema.is_reference(&table_name);
    let (shape, route) = match body {
        Body::Values(rows) => {
            let (Some(first), Some(last)) = (rows.first(), rows.last()) else {
                return (whole, InsertRoute::Fallback);
            };
            let prefix = span.start..first.0.start;
            let suffix = last.0.end..span.end;
            let rows_len = rows.len();
            let mut out_rows = Vec::with_capacity(rows_len);
            let mut route: Option<Route> = None;
            let mut ids: Vec<u64> = Vec::new();
            // Beside `ids` once a statement names many workspaces: one lookup per row
            // instead of a scan of every workspace seen so far.
            let mut seen: Option<HashSet<u64, foldhash::fast::RandomState>> = None;
            for (range, value) in rows {
                let id = match column {
                    Some(c) => match resolve(value, tag, &table_name, c) {
                        Ok(id) => Some(id),
                        Err(r) => {
                            route.get_or_insert(r);
                            None
                        }
                    },
                    None => None,
                };
                if let Some(id) = id {
                    let new = match &mut seen {
                        Some(set) => set.insert(id),
                        None if ids.len() < 16 => !ids.contains(&id),
                        None => {
                            let mut set = HashSet::with_capacity_and_hasher(
                                rows_len,
                                foldhash::fast::RandomState::default(),
                            );
                            set.extend(ids.iter().copied());
                            seen.insert(set).insert(id)
                        }
                    };
                    if new {
                        ids.push(id);
                    }
                }
                out_rows.push((range, id));
            }
            let shape = InsertShape {
                prefix,
                rows: out_rows,
                suffix,
            };
            let route = match (route, column) {
                (Some(r), _) => r,
                (None, Some(_)) => Route::Workspaces(ids.into()),
                (None, None) if is_reference => Route::AllShards,
                (None, None) => Route::AnyShard,
            };
            (shape, InsertRoute::Done(route))
        }
        Body::Set(value) => {
            let route = match column {
                Some(c) => match resolve(value, tag, &table_name, c) {
                    Ok(id) => Route::Workspaces(smallvec::smallvec![id]),
                    Err(r) => r,
                },
                None if is_reference => Route::AllShards,
                None => Route::AnyShard,
            };
            (whole, InsertRoute::Done(route))
        }
        Body::Select(start) => {
            let route = match (column, tag) {
                (Some(_), Some(tag)) => {
                    InsertRoute::Done(Route::Workspaces(smallvec::smallvec![tag]))
                }
                (Some(c), None) => InsertRoute::Done(missing(&table_name, c)),
                (None, _) if is_reference => InsertRoute::Done(Route::AllShards),
                (None, _) => InsertRoute::Select(start),
            };
            (whole, route)
        }
        Body::Unknown => (whole, InsertRoute::Fallback),
    };
    if !schema.is_sharded() {
        return (shape, InsertRoute::Done(Route::AnyShard));
    }
    (shape, route)
}

fn missing(table: &str, column: &str) -> Route {
    Route::MissingWorkspace {
        table: table.to_owned(),
        column: column.to_owned(),
    }
}

/// A row's workspace: its literal, or the tag when the row has none.
fn resolve(
    value: Option<RowValue>,
    tag: Option<u64>,
    table: &str,
    column: &str,
) -> Result<u64, Route> {
    match (value, tag) {
        (Some(RowValue::Id(id)), Some(tag)) if id != tag => Err(Route::Unroutable(format!(
            "a row of {table} has {column} {id} but the query is tagged workspace_id:{tag}"
        ))),
        (Some(RowValue::Id(id)), _) => Ok(id),
        (Some(RowValue::Bad(msg)), _) => Err(Route::Unroutable(msg)),
        (_, Some(tag)) => Ok(tag),
        (_, None) => Err(missing(table, column)),
    }
}

fn read_rows(sql: &str, toks: &[Token], mut i: usize, position: Option<usize>) -> Body {
    let mut rows = Vec::new();
    loop {
        let Some(open) = toks.get(i).filter(|t| t.is_punct(b'(')) else {
            return Body::Unknown;
        };
        let Some(close) = closing_paren(toks, i) else {
            return Body::Unknown;
        };
        let value = position.and_then(|p| {
            items(&toks[i + 1..close])
                .nth(p)
                .map(|item| row_value(sql, item))
        });
        rows.push((open.start..toks[close].end, value));
        if toks.get(close + 1).is_some_and(|t| t.is_punct(b',')) {
            i = close + 2;
        } else {
            return Body::Values(rows);
        }
    }
}

/// The value assigned to `column` in `SET a = 1, column = 2 [ON DUPLICATE ...]`.
fn set_value(sql: &str, toks: &[Token], column: &str) -> Option<RowValue> {
    let end = toks
        .iter()
        .position(|t| t.is_kw(sql, "ON"))
        .unwrap_or(toks.len());
    items(&toks[..end]).find_map(|item| {
        let eq = item
            .iter()
            .position(|t| t.is_punct(b'=') || (t.kind == Tok::Op && t.text(sql) == ":="))?;
        let name = item.get(eq.checked_sub(1)?)?;
        (name.is_ident() && name.ident(sql).eq_ignore_ascii_case(column))
            .then(|| row_value(sql, &item[eq + 1..]))
    })
}
