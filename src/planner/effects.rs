//! What a statement does to the backend connection it runs on, beyond its result:
//! state that only that connection holds (so the session must keep it, a *reserved*
//! connection), and questions about an earlier statement that only the connection that
//! ran it can answer.
//!
//! Decided from tokens, so strings and comments never count (`SELECT 'GET_LOCK('` is
//! not a lock).

pub use crate::backend::Reserve;

use super::classify::Head;
use super::lex::{Tok, Token};
use super::StatementKind;

/// A statement's effects on its connection.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Effects {
    /// State it leaves that reserves the connection.
    pub reserve: Reserve,
    /// State it clears (`UNLOCK TABLES` clears [`Reserve::TABLE_LOCK`]).
    pub clears: Reserve,
    /// It reads `LAST_INSERT_ID()` (or `@@identity`, `@@last_insert_id`): the value
    /// must be the session's, whichever connection runs it.
    pub reads_insert_id: bool,
    /// It asks about the previous statement (`SHOW WARNINGS`, `SHOW ERRORS`,
    /// `@@warning_count`, `@@error_count`, `ROW_COUNT()`, `FOUND_ROWS()`): it must run on
    /// the connection that ran that statement, and never see another session's.
    pub reads_diagnostics: bool,
    /// `SQL_CALC_FOUND_ROWS`: a `FOUND_ROWS()` will follow, so the connection stays
    /// with the session until its next statement.
    pub calc_found_rows: bool,
    /// It assigns a global variable (`SET GLOBAL wait_timeout = 3`): connections opened
    /// before it took their session values from the old globals, so the pool renews
    /// them and later sessions see the new defaults, as new connections would.
    pub changes_globals: bool,
}

/// The effects of the statement made of `toks`.
pub(crate) fn effects(sql: &str, toks: &[Token], head: &Head) -> Effects {
    let mut fx = Effects::default();
    match head {
        Head::Temporary if toks.first().is_some_and(|t| t.is_kw(sql, "CREATE")) => {
            fx.reserve = Reserve::TEMPORARY_TABLE;
        }
        Head::Lock => fx.reserve = Reserve::TABLE_LOCK,
        _ => {}
    }
    let first = toks.first();
    if first.is_some_and(|t| t.is_kw(sql, "SET")) && super::classify::set_assigns_global(sql, toks)
    {
        fx.changes_globals = true;
    }
    if first.is_some_and(|t| t.is_kw(sql, "UNLOCK")) {
        fx.clears = Reserve::TABLE_LOCK;
    } else if first.is_some_and(|t| t.is_kw(sql, "PREPARE")) {
        fx.reserve = fx.reserve.union(Reserve::PREPARED_STATEMENT);
    } else if first.is_some_and(|t| t.is_kw(sql, "HANDLER")) {
        fx.reserve = fx.reserve.union(Reserve::HANDLER);
    } else if first.is_some_and(|t| t.is_kw(sql, "CALL") || t.is_kw(sql, "XA"))
        || (first.is_some_and(|t| t.is_kw(sql, "SET"))
            && toks.get(1).is_some_and(|t| t.is_kw(sql, "ROLE")))
    {
        // A procedure may leave anything behind; an XA transaction and `SET ROLE` are
        // session state that is not replayed.
        fx.reserve = fx.reserve.union(Reserve::UNKNOWN);
    } else if first.is_some_and(|t| t.is_kw(sql, "SHOW")) {
        let second = toks.get(1);
        let asks = |w: &str| second.is_some_and(|t| t.is_kw(sql, w));
        // SHOW WARNINGS, SHOW ERRORS, SHOW COUNT(*) WARNINGS ...
        if asks("WARNINGS") || asks("ERRORS") || asks("COUNT") {
            fx.reads_diagnostics = true;
        }
    }
    let is_set = matches!(
        head,
        Head::Kind(
            StatementKind::SetSession
                | StatementKind::SetAutocommit(_)
                | StatementKind::SetTransaction
        )
    );
    for (i, t) in toks.iter().enumerate() {
        let call = || toks.get(i + 1).is_some_and(|p| p.is_punct(b'('));
        // `@@name` or `@@session.name`.
        let sysvar = || {
            i.checked_sub(1)
                .and_then(|p| toks.get(p))
                .is_some_and(|p| p.is_punct(b'@') || p.is_punct(b'.'))
        };
        match t.kind {
            Tok::Word => {
                let w = t.text(sql);
                // Cheap filter before the case-insensitive comparisons.
                match w.len() {
                    8 if w.eq_ignore_ascii_case("GET_LOCK") && call() => {
                        fx.reserve = fx.reserve.union(Reserve::NAMED_LOCK);
                    }
                    14 if w.eq_ignore_ascii_case("LAST_INSERT_ID") => {
                        if sysvar() {
                            fx.reads_insert_id = true; // @@last_insert_id
                        } else if call() {
                            // LAST_INSERT_ID(expr) sets the value on this connection.
                            let empty = toks.get(i + 2).is_some_and(|p| p.is_punct(b')'));
                            if empty {
                                fx.reads_insert_id = true;
                            } else {
                                fx.reserve = fx.reserve.union(Reserve::UNKNOWN);
                            }
                        }
                    }
                    8 if w.eq_ignore_ascii_case("IDENTITY") && sysvar() => {
                        fx.reads_insert_id = true;
                    }
                    9 if w.eq_ignore_ascii_case("ROW_COUNT") && call() => {
                        fx.reads_diagnostics = true;
                    }
                    10 if w.eq_ignore_ascii_case("FOUND_ROWS") && call() => {
                        fx.reads_diagnostics = true;
                    }
                    11 | 13
                        if (w.eq_ignore_ascii_case("ERROR_COUNT")
                            || w.eq_ignore_ascii_case("WARNING_COUNT"))
                            && sysvar() =>
                    {
                        fx.reads_diagnostics = true;
                    }
                    19 if w.eq_ignore_ascii_case("SQL_CALC_FOUND_ROWS") => {
                        fx.calc_found_rows = true;
                    }
                    4 if !is_set
                        && w.eq_ignore_ascii_case("INTO")
                        && toks.get(i + 1).is_some_and(|p| p.is_punct(b'@')) =>
                    {
                        // SELECT ... INTO @var
                        fx.reserve = fx.reserve.union(Reserve::USER_VARIABLE);
                    }
                    _ => {}
                }
            }
            // `@var := expr` inside a query (in SET it is ordinary, replayed state).
            Tok::Op
                if !is_set
                    && t.text(sql) == ":="
                    && i >= 2
                    && toks[i - 2].is_punct(b'@')
                    && !toks
                        .get(i.wrapping_sub(3))
                        .is_some_and(|p| p.is_punct(b'@')) =>
            {
                fx.reserve = fx.reserve.union(Reserve::USER_VARIABLE);
            }
            _ => {}
        }
    }
    fx
}
