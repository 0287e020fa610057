//! `KILL` and `CONNECTION_ID()` in terms of shardgate's own session ids (the id the
//! handshake announced), answered by shardgate and never forwarded: a backend's thread
//! ids belong to every tenant's sessions.
//!
//! - `KILL [HARD|SOFT] [CONNECTION] n` ends session `n`: its client connection is
//!   closed after `ERROR 1927`, and its reserved backend connections are closed with
//!   it (an open transaction rolls back); a statement it is running is interrupted.
//! - `KILL [HARD|SOFT] QUERY n` interrupts the statement session `n` runs now, with
//!   `KILL QUERY <thread>` on that statement's backend (over a pool connection of that
//!   cluster); the session goes on.
//!
//! A user may kill its own sessions; an admin user any session. An unknown id gets
//! `ERROR 1094`, another user's session `ERROR 1095`, as on MariaDB.
//!
//! `SELECT CONNECTION_ID()` (that statement alone) is answered here; anywhere else in a
//! statement `CONNECTION_ID()` is replaced by the session's id before the statement
//! runs (see `identity`). `COM_PROCESS_KILL` is `KILL CONNECTION`. A backend
//! connection's own thread id is `@@pseudo_thread_id` (for operators and tests).

use std::sync::Arc;

use crate::error::ProxyError;
use crate::planner::lex::{self, Tok, Token};
use crate::protocol::relay::ResponseKind;
use crate::protocol::wire;
use crate::shared::SessionHandle;

use super::{Answered, Session};

/// A statement about sessions that shardgate answers itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum SessionStatement {
    /// `KILL [CONNECTION] n`
    KillConnection(u64),
    /// `KILL QUERY n`
    KillQuery(u64),
    /// A form of `KILL` shardgate does not run; the text says which.
    KillUnsupported(&'static str),
    /// `SELECT CONNECTION_ID()`
    ConnectionId,
    /// `SHOW [FULL] PROCESSLIST`: shardgate's sessions, the user's own unless it is an
    /// admin (as MariaDB shows without the PROCESS privilege).
    ProcessList {
        /// `FULL`: the whole statement text, not its first 100 characters.
        full: bool,
    },
}

/// `text` as one of shardgate's session statements, if it is one. Cheap for every
/// other statement: it lexes only a text that contains `kill`, or a short one that starts
/// with `S` and contains `connection_id`.
pub(super) fn parse(text: &str) -> Option<SessionStatement> {
    // The hot path pays two byte comparisons: only a query that starts with KILL, or a
    // short SELECT that names CONNECTION_ID, is looked at further. A KILL further into
    // a multi-statement query is left to the privilege check (admin-only: there it
    // would reach a backend).
    let trimmed = text.trim_start().as_bytes();
    let starts_kill = after_comments(trimmed)
        .get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"KILL"));
    let short_s = trimmed.first().map(u8::to_ascii_uppercase) == Some(b'S') && trimmed.len() <= 48;
    let short_select = short_s && (names_connection_id(trimmed) || shows_processlist(trimmed));
    if !(starts_kill || short_select) {
        return None;
    }
    let toks = lex::lex(text).tokens;
    let mut stmts: Vec<&[Token]> = toks
        .split(|t| t.is_punct(b';'))
        .filter(|s| !s.is_empty())
        .collect();
    let is_kill = |s: &&[Token]| s.first().is_some_and(|t| t.is_kw(text, "KILL"));
    if stmts.len() > 1 {
        // A KILL in a multi-statement query would reach a backend.
        return stmts
            .iter()
            .any(is_kill)
            .then_some(SessionStatement::KillUnsupported(
                "KILL inside a multi-statement query (send it on its own)",
            ));
    }
    let stmt = stmts.pop()?;
    if is_kill(&stmt) {
        return Some(kill(text, &stmt[1..]));
    }
    let show = |words: &[&str]| {
        stmt.len() == words.len() && stmt.iter().zip(words).all(|(t, w)| t.is_kw(text, w))
    };
    if show(&["SHOW", "PROCESSLIST"]) {
        return Some(SessionStatement::ProcessList { full: false });
    }
    if show(&["SHOW", "FULL", "PROCESSLIST"]) {
        return Some(SessionStatement::ProcessList { full: true });
    }
    let words = ["SELECT", "CONNECTION_ID"];
    let connection_id = stmt.len() == 4
        && stmt.iter().zip(words).all(|(t, w)| t.is_kw(text, w))
        && stmt[2].is_punct(b'(')
        && stmt[3].is_punct(b')');
    connection_id.then_some(SessionStatement::ConnectionId)
}

/// The rest of a `KILL` statement, after `KILL`.
fn kill(sql: &str, mut rest: &[Token]) -> SessionStatement {
    if rest
        .first()
        .is_some_and(|t| t.is_kw(sql, "HARD") || t.is_kw(sql, "SOFT"))
    {
        rest = &rest[1..];
    }
    let mut query = false;
    if let Some(t) = rest.first() {
        if t.is_kw(sql, "QUERY") {
            query = true;
            rest = &rest[1..];
        } else if t.is_kw(sql, "CONNECTION") {
            rest = &rest[1..];
        }
    }
    if rest.first().is_some_and(|t| t.is_kw(sql, "USER")) {
        return SessionStatement::KillUnsupported("KILL USER");
    }
    if rest.first().is_some_and(|t| t.is_kw(sql, "ID")) {
        return SessionStatement::KillUnsupported("KILL QUERY ID (a backend's query id)");
    }
    let id = match rest {
        [n] if n.kind == Tok::Num => n.text(sql).parse::<u64>().ok(),
        _ => None,
    };
    match (id, query) {
        (Some(n), true) => SessionStatement::KillQuery(n),
        (Some(n), false) => SessionStatement::KillConnection(n),
        (None, _) => {
            SessionStatement::KillUnsupported("KILL of anything but a session id given as a number")
        }
    }
}

impl Session {
    /// Answers one of shardgate's session statements.
    pub(super) async fn session_statement(&mut self, stmt: SessionStatement) -> Answered {
        match stmt {
            SessionStatement::ConnectionId => {
                let spec = wire::ColumnSpec {
                    name: "CONNECTION_ID()".to_string(),
                    column_type: wire::column_type::LONGLONG,
                };
                let row = vec![Some(self.id.to_string().into_bytes())];
                self.send_columns(&[spec], vec![row]).await
            }
            SessionStatement::KillUnsupported(what) => {
                self.send_error(&ProxyError::not_supported(what)).await
            }
            SessionStatement::ProcessList { full } => self.process_list(full).await,
            SessionStatement::KillConnection(n) => self.kill(n, false).await,
            SessionStatement::KillQuery(n) => self.kill(n, true).await,
        }
    }

    /// `SHOW [FULL] PROCESSLIST` from shardgate's registry, with MariaDB's columns:
    /// ids are the ones `KILL` and `CONNECTION_ID()` use; `Info` is the query a session
    /// runs now (its first 100 characters without `FULL`).
    async fn process_list(&mut self, full: bool) -> Answered {
        const COLUMNS: [(&str, u8); 9] = [
            ("Id", wire::column_type::LONGLONG),
            ("User", wire::column_type::VAR_STRING),
            ("Host", wire::column_type::VAR_STRING),
            ("db", wire::column_type::VAR_STRING),
            ("Command", wire::column_type::VAR_STRING),
            ("Time", wire::column_type::LONGLONG),
            ("State", wire::column_type::VAR_STRING),
            ("Info", wire::column_type::VAR_STRING),
            ("Progress", wire::column_type::VAR_STRING),
        ];
        let specs: Vec<wire::ColumnSpec> = COLUMNS
            .iter()
            .map(|(name, t)| wire::ColumnSpec {
                name: (*name).to_string(),
                column_type: *t,
            })
            .collect();
        let now = std::time::Instant::now();
        let rows = self
            .shared
            .sessions()
            .into_iter()
            .filter(|(_, h)| self.admin || h.current_user() == self.user)
            .map(|(id, h)| {
                let a = h.activity();
                let running = a.statement.is_some();
                let info = a.statement.map(|s| {
                    let text = String::from_utf8_lossy(&s).into_owned();
                    if full {
                        text
                    } else {
                        text.chars().take(100).collect()
                    }
                });
                let text = |s: &str| Some(s.as_bytes().to_vec());
                vec![
                    text(&id.to_string()),
                    text(&a.user),
                    text(&h.host),
                    a.db.map(String::into_bytes),
                    text(if running { "Query" } else { "Sleep" }),
                    text(&now.saturating_duration_since(a.since).as_secs().to_string()),
                    text(if running { "executing" } else { "" }),
                    info.map(String::into_bytes),
                    text("0.000"),
                ]
            })
            .collect();
        self.send_columns(&specs, rows).await
    }

    /// `COM_PROCESS_KILL` (a session id, 4 bytes): `KILL CONNECTION` of that id.
    pub(super) async fn process_kill(&mut self, payload: &[u8]) -> Answered {
        match payload.get(1..5) {
            Some(b) => {
                let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
                self.kill(u64::from(n), false).await
            }
            None => {
                self.send_error(&ProxyError::unknown_command(
                    crate::protocol::command::PROCESS_KILL,
                ))
                .await
            }
        }
    }

    async fn kill(&mut self, n: u64, query_only: bool) -> Answered {
        let handle = u32::try_from(n).ok().and_then(|id| self.shared.session(id));
        let Some(handle) = handle else {
            return self.send_error(&ProxyError::unknown_thread(n)).await;
        };
        if !(self.admin || handle.current_user() == self.user) {
            return self.send_error(&ProxyError::kill_denied(n)).await;
        }
        let own = n == u64::from(self.id);
        if own && !query_only {
            // As on MariaDB: the session ends, and says so.
            let _ = self.send_error(&ProxyError::connection_killed()).await;
            return Answered::Close;
        }
        tracing::info!(session = self.id, target = n, query_only, "KILL");
        if !own {
            // This session runs nothing but the KILL itself.
            if !query_only {
                handle.kill();
            }
            if let Err(e) = self.interrupt(&handle).await {
                return self.send_error(&e).await;
            }
        }
        self.send_ok(wire::OkInfo::default()).await
    }

    /// Interrupts the statement `handle`'s session runs now, if any, with
    /// `KILL QUERY` on its backend.
    async fn interrupt(&self, handle: &Arc<SessionHandle>) -> Result<(), ProxyError> {
        let Some(cluster) = handle.running.hold_for_kill().map(|r| r.cluster.clone()) else {
            return Ok(());
        };
        let rt = self.shared.runtime();
        let Some(pool) = rt.pool(&cluster) else {
            return Ok(());
        };
        let mut lease = pool
            .checkout(crate::backend::Wanted::plain(self.key, None))
            .await?;
        // Held while KILL QUERY runs: the session cannot give its connection back to
        // the pool (where the thread id would soon name another session's statement).
        let Some(r) = handle.running.hold_for_kill() else {
            return Ok(());
        };
        if r.cluster != cluster {
            return Ok(());
        }
        let q = format!("\x03KILL QUERY {}", r.thread_id);
        // Bounded: the killed session's statement end waits for this (a hung cluster
        // must not hold it, nor the KILL's own client, forever).
        let conn = lease.conn();
        let sent = crate::timer::timeout(
            KILL_QUERY_LIMIT,
            conn.exec(q.as_bytes(), ResponseKind::Query),
        );
        match sent.await {
            Ok(r) => {
                r.map_err(|e| ProxyError::lost_backend(&cluster, e))?;
            }
            Err(_) => {
                // Cut off mid-exchange: the connection is not pooled again.
                conn.broken = true;
                let why = format!("KILL QUERY took over {} s", KILL_QUERY_LIMIT.as_secs());
                return Err(ProxyError::lost_backend(&cluster, why));
            }
        }
        Ok(())
    }

    /// Tells the client its session was killed; the caller then ends it.
    pub(super) async fn end_killed(&mut self) {
        tracing::info!(session = self.id, "session ended by KILL");
        let e = ProxyError::connection_killed();
        let _ = crate::timer::timeout(std::time::Duration::from_secs(1), self.send_error(&e)).await;
    }
}

/// How long `KILL QUERY` on a backend may take.
const KILL_QUERY_LIMIT: std::time::Duration = std::time::Duration::from_secs(10);

/// `sql` without the `/* ... */` comments it starts with (a query-log tag), then white
/// space. Executable comments (`/*! ... */`) are kept: their content is SQL.
/// Whether `sql` contains `CONNECTION_` (any case): only where an underscore is
/// does it look back, so a text with none costs one `memchr`.
fn names_connection_id(sql: &[u8]) -> bool {
    memchr::memchr_iter(b'_', sql)
        .any(|i| i >= 10 && sql[i - 10..i].eq_ignore_ascii_case(b"CONNECTION"))
}

/// Whether `sql` starts with `SHOW` and contains `PROCESSLIST` (any case).
fn shows_processlist(sql: &[u8]) -> bool {
    sql.get(..4)
        .is_some_and(|w| w.eq_ignore_ascii_case(b"SHOW"))
        && sql
            .windows(11)
            .any(|w| w.eq_ignore_ascii_case(b"PROCESSLIST"))
}

fn after_comments(mut sql: &[u8]) -> &[u8] {
    while sql.starts_with(b"/*") && !sql.starts_with(b"/*!") && !sql.starts_with(b"/*M!") {
        match sql.windows(2).position(|w| w == b"*/") {
            Some(end) => sql = sql[end + 2..].trim_ascii_start(),
            None => return sql,
        }
    }
    sql
}

#[cfg(test)]
mod tests {
    use super::{parse, SessionStatement as S};

    #[test]
    fn parses_kill_and_connection_id() {
        assert_eq!(parse("KILL 5"), Some(S::KillConnection(5)));
        assert_eq!(parse("kill connection 7;"), Some(S::KillConnection(7)));
        assert_eq!(parse("KILL HARD QUERY 9 ;"), Some(S::KillQuery(9)));
        assert_eq!(parse("/* x */ KILL QUERY 3"), Some(S::KillQuery(3)));
        assert!(matches!(
            parse("KILL USER app"),
            Some(S::KillUnsupported(_))
        ));
        assert!(matches!(
            parse("KILL QUERY ID 4"),
            Some(S::KillUnsupported(_))
        ));
        assert!(matches!(
            parse("KILL CONNECTION_ID()"),
            Some(S::KillUnsupported(_))
        ));
        assert!(matches!(
            parse("KILL 3; SELECT 1"),
            Some(S::KillUnsupported(_))
        ));
        // A KILL further into a multi-statement query is the privilege check's: there it
        // would reach a backend.
        assert_eq!(parse("SELECT 1; KILL 3"), None);
        assert!(matches!(
            parse("KILL 99999999999999999999999"),
            Some(S::KillUnsupported(_))
        ));
        assert_eq!(parse("select connection_id();"), Some(S::ConnectionId));
        assert_eq!(parse("  SELECT CONNECTION_ID ( ) "), Some(S::ConnectionId));
        assert_eq!(parse("SELECT CONNECTION_ID() + 1"), None);
        assert_eq!(parse("SELECT 'KILL 3'"), None);
        assert_eq!(parse("UPDATE t SET kill = 1"), None);
        assert_eq!(parse("SELECT 1"), None);
    }

    #[test]
    fn the_quick_look_lets_every_form_through_to_the_lexer() {
        assert_eq!(
            parse("SELECT /* me */ Connection_Id()"),
            Some(S::ConnectionId)
        );
        assert_eq!(parse("SELECT CONNECTION_ID()\n"), Some(S::ConnectionId));
        assert_eq!(
            parse("show processlist"),
            Some(S::ProcessList { full: false })
        );
        assert_eq!(
            parse("SHOW /* all */ FULL ProcessList;"),
            Some(S::ProcessList { full: true })
        );
        // Underscores elsewhere, a PROCESSLIST that is not SHOW's: left to the backend.
        assert_eq!(parse("SELECT a_b, c_d FROM t_1 WHERE id=1"), None);
        assert_eq!(parse("SELECT processlist FROM t"), None);
        assert_eq!(parse("SELECT _CONNECTION_ID()"), None);
    }
}
