//! What a client learns about "its server" is shardgate's, never a backend's: the
//! session's id in `CONNECTION_ID()` (anywhere in a statement), `@@socket`, `@@port`
//! and `@@hostname`, and the rows of `information_schema.PROCESSLIST`. A backend would
//! answer with its own thread ids (of a pooled connection other sessions use too) and
//! its own socket, which a driver on the same host uses to reconnect straight to
//! MariaDB (mysql_async's default `prefer_socket`).
//!
//! The statement text is rewritten with the lexer before it is planned:
//! `CONNECTION_ID()` becomes the session id, `@@socket` / `@@global.socket` (and
//! `port`, `hostname`) become shardgate's values, and `information_schema.PROCESSLIST`
//! becomes a derived table of shardgate's sessions (those `SHOW PROCESSLIST` shows the
//! user). An item of the select list that was rewritten and has no alias gets the
//! text the client wrote as its alias, so the column keeps the name the client expects
//! (`@@socket`, `CONNECTION_ID() + 1`). Strings, comments and quoted names are never
//! touched (the lexer knows where they are).

use std::ops::Range;

use crate::planner::lex::{self, Tok, Token};

/// shardgate's own answers.
pub(super) struct Identity<'a> {
    /// The session id (the handshake's).
    pub id: u32,
    /// The port shardgate listens on.
    pub port: u16,
    /// shardgate's Unix socket, if it has one.
    pub socket: Option<&'a str>,
    /// The derived table of `information_schema.PROCESSLIST`'s rows (built only when
    /// a statement names it).
    pub processlist: &'a dyn Fn() -> String,
    /// The prepared-statement commands the session sent, in [`STMT_COUNTERS`] order.
    pub stmt_commands: [u64; 6],
}

/// The session status counters of the prepared-statement commands (`SHOW STATUS`
/// names them `Com_stmt_...`). A backend connection counts what every session it
/// served sent, and shardgate keeps backend statements prepared for the next session,
/// so these are the session's own counts of what it sent to shardgate.
pub(super) const STMT_COUNTERS: [&str; 6] = [
    "COM_STMT_PREPARE",
    "COM_STMT_EXECUTE",
    "COM_STMT_FETCH",
    "COM_STMT_RESET",
    "COM_STMT_CLOSE",
    "COM_STMT_SEND_LONG_DATA",
];

/// The most characters of a statement `information_schema.PROCESSLIST`'s `INFO` shows
/// through shardgate (MariaDB shows all of it; here it is copied into the statement).
const PROCESSLIST_INFO_CHARS: usize = 1024;

use crate::planner::may_mention_identity as may_mention;

/// `text` with shardgate's identity in place of the backend's, or None when it
/// mentions none of it. `backslash_escapes`: how the session's strings read.
pub(super) fn rewrite(text: &str, me: &Identity<'_>, backslash_escapes: bool) -> Option<String> {
    let toks = lex::lex_with(text, backslash_escapes).tokens;
    if let Some(show) = show_variables(text, &toks, me) {
        return Some(show);
    }
    if let Some(show) = show_status(text, &toks, me) {
        return Some(show);
    }
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    // Token indexes of rewritten expressions (they may need an alias).
    let mut rewritten: Vec<usize> = Vec::new();
    let mut i = 0;
    // A definition (`CREATE VIEW`, a procedure's or trigger's body, a column default)
    // keeps `CONNECTION_ID()` as written: it runs later, in some other session.
    let defines = |at: usize| {
        toks.get(at)
            .is_some_and(|t| t.is_kw(text, "CREATE") || t.is_kw(text, "ALTER"))
    };
    let mut in_definition = defines(0);
    while i < toks.len() {
        if toks[i].is_punct(b';') {
            // A body's `;` does not end the definition: nothing after it is touched.
            in_definition = in_definition || defines(i + 1);
            i += 1;
        } else if in_definition {
            i += 1;
        } else if let Some((end, value)) = expression_at(text, &toks, i, me) {
            edits.push((toks[i].start..toks[end].end, value));
            rewritten.push(i);
            i = end + 1;
        } else if let Some(end) = processlist_at(text, &toks, i) {
            let alias = has_alias_after(text, toks.get(end + 1));
            let mut table = format!("({})", (me.processlist)());
            if !alias {
                table.push_str(" AS PROCESSLIST");
            }
            edits.push((toks[i].start..toks[end].end, table));
            i = end + 1;
        } else {
            i += 1;
        }
    }
    if edits.is_empty() {
        return None;
    }
    for item in select_items(text, &toks) {
        if rewritten.iter().any(|r| item.contains(r)) && !has_alias(text, &toks[item.clone()]) {
            let (first, last) = (&toks[item.start], &toks[item.end - 1]);
            let name = text
                .get(first.start..last.end)
                .unwrap_or("")
                .replace('`', "``");
            edits.push((last.end..last.end, format!(" AS `{name}`")));
        }
    }
    edits.sort_by_key(|(r, _)| (r.start, r.end));
    let mut out = String::with_capacity(text.len() + 64);
    let mut at = 0;
    for (r, with) in edits {
        out.push_str(text.get(at..r.start)?);
        out.push_str(&with);
        at = r.end;
    }
    out.push_str(text.get(at..)?);
    Some(out)
}

/// An expression shardgate answers starting at token `i`: the index of its last token
/// and its value as SQL.
fn expression_at(
    sql: &str,
    toks: &[Token],
    i: usize,
    me: &Identity<'_>,
) -> Option<(usize, String)> {
    let t = &toks[i];
    if t.is_kw(sql, "CONNECTION_ID")
        && toks.get(i + 1).is_some_and(|p| p.is_punct(b'('))
        && toks.get(i + 2).is_some_and(|p| p.is_punct(b')'))
        && !(i > 0 && toks[i - 1].is_punct(b'.'))
    {
        return Some((i + 2, me.id.to_string()));
    }
    // `@@name` or `@@global.name`, written without spaces.
    if !(t.is_punct(b'@')
        && toks
            .get(i + 1)
            .is_some_and(|n| n.is_punct(b'@') && n.start == t.end))
    {
        return None;
    }
    if i > 0 && toks[i - 1].is_punct(b'@') && toks[i - 1].end == t.start {
        return None;
    }
    let mut at = i + 2;
    let first = toks
        .get(at)
        .filter(|w| w.kind == Tok::Word && w.start == t.end + 1)?;
    if first.is_kw(sql, "GLOBAL") && toks.get(at + 1).is_some_and(|p| p.is_punct(b'.')) {
        at += 2;
    } else if first.is_kw(sql, "SESSION") || first.is_kw(sql, "LOCAL") {
        // Global-only variables: the backend answers with its error.
        return None;
    }
    let name = toks.get(at).filter(|w| w.kind == Tok::Word)?;
    let assigned = toks
        .get(at + 1)
        .is_some_and(|t| t.is_punct(b'=') || t.text(sql) == ":=");
    if assigned && toks.first().is_some_and(|t| t.is_kw(sql, "SET")) {
        // `SET @@port = ...`: the backend's own error (read-only variable).
        return None;
    }
    let value = if name.is_kw(sql, "SOCKET") {
        match me.socket {
            Some(path) => quote(path),
            None => "CAST(NULL AS CHAR)".to_string(),
        }
    } else if name.is_kw(sql, "PORT") {
        me.port.to_string()
    } else if name.is_kw(sql, "HOSTNAME") {
        quote(&hostname())
    } else {
        return None;
    };
    Some((at, value))
}

/// The variables shardgate answers, as `SHOW VARIABLES` names them.
const OWN_VARIABLES: [&str; 3] = ["socket", "port", "hostname"];

/// `SHOW [GLOBAL|SESSION] VARIABLES LIKE 'pattern'` whose pattern matches one of
/// shardgate's own variables, as a `SELECT` of the server's variables with shardgate's
/// values in place (same columns, same order).
fn show_variables(sql: &str, toks: &[Token], me: &Identity<'_>) -> Option<String> {
    let toks = match toks {
        [rest @ .., last] if last.is_punct(b';') => rest,
        all => all,
    };
    let (scope, rest) = match toks {
        [show, scope, rest @ ..]
            if show.is_kw(sql, "SHOW")
                && (scope.is_kw(sql, "GLOBAL")
                    || scope.is_kw(sql, "SESSION")
                    || scope.is_kw(sql, "LOCAL")) =>
        {
            let table = if scope.is_kw(sql, "GLOBAL") {
                "GLOBAL"
            } else {
                "SESSION"
            };
            (table, rest)
        }
        [show, rest @ ..] if show.is_kw(sql, "SHOW") => ("SESSION", rest),
        _ => return None,
    };
    let [vars, like, pattern] = rest else {
        return None;
    };
    if !(vars.is_kw(sql, "VARIABLES") && like.is_kw(sql, "LIKE") && pattern.kind == Tok::Str) {
        return None;
    }
    let inner = pattern.str_inner(sql);
    if !OWN_VARIABLES
        .iter()
        .any(|v| like_matches(inner.as_bytes(), v.as_bytes()))
    {
        return None;
    }
    let socket = me.socket.map_or_else(|| "''".to_string(), quote);
    Some(format!(
        "SELECT LOWER(VARIABLE_NAME) AS Variable_name, CASE VARIABLE_NAME \
         WHEN 'SOCKET' THEN {socket} WHEN 'PORT' THEN '{port}' WHEN 'HOSTNAME' THEN {host} \
         ELSE VARIABLE_VALUE END AS Value FROM information_schema.{scope}_VARIABLES \
         WHERE VARIABLE_NAME LIKE {pattern} ORDER BY VARIABLE_NAME",
        port = me.port,
        host = quote(&hostname()),
        pattern = pattern.text(sql),
    ))
}

/// `SHOW [SESSION|LOCAL] STATUS LIKE 'Com_...'` whose pattern matches one of the
/// [`STMT_COUNTERS`], as a `SELECT` of the session's status with the session's own
/// counts in their place (same columns, names as `SHOW STATUS` spells them).
fn show_status(sql: &str, toks: &[Token], me: &Identity<'_>) -> Option<String> {
    let toks = match toks {
        [rest @ .., last] if last.is_punct(b';') => rest,
        all => all,
    };
    let rest = match toks {
        [show, scope, rest @ ..]
            if show.is_kw(sql, "SHOW")
                && (scope.is_kw(sql, "SESSION") || scope.is_kw(sql, "LOCAL")) =>
        {
            rest
        }
        [show, rest @ ..] if show.is_kw(sql, "SHOW") => rest,
        _ => return None,
    };
    let [status, like, pattern] = rest else {
        return None;
    };
    if !(status.is_kw(sql, "STATUS") && like.is_kw(sql, "LIKE") && pattern.kind == Tok::Str) {
        return None;
    }
    let inner = pattern.str_inner(sql);
    // Only `Com_...` names (all spelled `Com_lower_case`), so the names can be rebuilt.
    let com = inner
        .as_bytes()
        .get(..4)
        .is_some_and(|p| p.eq_ignore_ascii_case(b"com_"));
    if !com
        || !STMT_COUNTERS
            .iter()
            .any(|v| like_matches(inner.as_bytes(), v.as_bytes()))
    {
        return None;
    }
    let cases: String = STMT_COUNTERS
        .iter()
        .zip(me.stmt_commands)
        .map(|(name, n)| format!(" WHEN '{name}' THEN '{n}'"))
        .collect();
    Some(format!(
        "SELECT CONCAT('Com', LOWER(SUBSTRING(VARIABLE_NAME, 4))) AS Variable_name, \
         CASE VARIABLE_NAME{cases} ELSE VARIABLE_VALUE END AS Value \
         FROM information_schema.SESSION_STATUS WHERE VARIABLE_NAME LIKE {pattern} \
         ORDER BY VARIABLE_NAME",
        pattern = pattern.text(sql),
    ))
}

/// Whether SQL `LIKE` pattern `p` (`%`, `_`, `\` escapes; ASCII case-insensitive)
/// matches `name`.
fn like_matches(p: &[u8], name: &[u8]) -> bool {
    match p.split_first() {
        None => name.is_empty(),
        Some((b'%', rest)) => (0..=name.len()).any(|i| like_matches(rest, &name[i..])),
        Some((b'_', rest)) => !name.is_empty() && like_matches(rest, &name[1..]),
        Some((b'\\', rest)) if !rest.is_empty() => {
            name.first()
                .is_some_and(|c| c.eq_ignore_ascii_case(&rest[0]))
                && like_matches(&rest[1..], &name[1..])
        }
        Some((c, rest)) => {
            name.first().is_some_and(|n| n.eq_ignore_ascii_case(c))
                && like_matches(rest, &name[1..])
        }
    }
}

/// `information_schema.PROCESSLIST` at token `i`: the index of its last token.
fn processlist_at(sql: &str, toks: &[Token], i: usize) -> Option<usize> {
    let schema = &toks[i];
    if !(schema.is_ident() && schema.ident(sql).eq_ignore_ascii_case("information_schema")) {
        return None;
    }
    // A table reference (after FROM, JOIN or a comma), not a column's qualifier.
    let table_position = i > 0
        && (toks[i - 1].is_kw(sql, "FROM")
            || toks[i - 1].is_kw(sql, "JOIN")
            || toks[i - 1].is_punct(b','));
    toks.get(i + 1).filter(|p| p.is_punct(b'.'))?;
    let table = toks.get(i + 2).filter(|t| t.is_ident())?;
    let followed_by_dot = toks.get(i + 3).is_some_and(|t| t.is_punct(b'.'));
    (table_position && !followed_by_dot && table.ident(sql).eq_ignore_ascii_case("PROCESSLIST"))
        .then_some(i + 2)
}

/// Words that end a select item or a table reference (no alias follows).
const CLAUSE_WORDS: [&str; 22] = [
    "FROM",
    "WHERE",
    "GROUP",
    "HAVING",
    "ORDER",
    "LIMIT",
    "INTO",
    "UNION",
    "FOR",
    "LOCK",
    "WINDOW",
    "EXCEPT",
    "INTERSECT",
    "PROCEDURE",
    "JOIN",
    "LEFT",
    "RIGHT",
    "INNER",
    "CROSS",
    "NATURAL",
    "STRAIGHT_JOIN",
    "ON",
];

/// Whether the token after a table reference is its alias (`AS x`, or a name).
fn has_alias_after(sql: &str, next: Option<&Token>) -> bool {
    match next {
        Some(t) if t.is_kw(sql, "AS") => true,
        Some(t) if t.kind == Tok::Quoted => true,
        Some(t) if t.kind == Tok::Word => {
            !CLAUSE_WORDS.iter().any(|w| t.is_kw(sql, w)) && !t.is_kw(sql, "USING")
        }
        _ => false,
    }
}

/// Whether a select item names its column: `expr AS name`, or `expr name`.
fn has_alias(sql: &str, item: &[Token]) -> bool {
    let mut depth = 0i32;
    for t in item {
        match t.kind {
            Tok::Punct(b'(') => depth += 1,
            Tok::Punct(b')') => depth -= 1,
            _ if depth == 0 && t.is_kw(sql, "AS") => return true,
            _ => {}
        }
    }
    // Words that end an expression or stand between operands: never an alias.
    const NOT_ALIAS: [&str; 21] = [
        "NULL", "TRUE", "FALSE", "UNKNOWN", "IS", "NOT", "AND", "OR", "XOR", "LIKE", "IN",
        "BETWEEN", "REGEXP", "RLIKE", "DIV", "MOD", "BINARY", "INTERVAL", "WHEN", "THEN", "ELSE",
    ];
    match item {
        [.., before, last] if matches!(last.kind, Tok::Word | Tok::Quoted | Tok::Str) => {
            let operator = |t: &Token| NOT_ALIAS.iter().any(|w| t.is_kw(sql, w));
            !matches!(before.kind, Tok::Punct(_) | Tok::Op) && !operator(last) && !operator(before)
        }
        _ => false,
    }
}

/// The token ranges of the items of every top-level select list (of each statement
/// that starts with `SELECT`).
fn select_items(sql: &str, toks: &[Token]) -> Vec<Range<usize>> {
    const MODIFIERS: [&str; 11] = [
        "ALL",
        "DISTINCT",
        "DISTINCTROW",
        "HIGH_PRIORITY",
        "STRAIGHT_JOIN",
        "SQL_SMALL_RESULT",
        "SQL_BIG_RESULT",
        "SQL_BUFFER_RESULT",
        "SQL_CACHE",
        "SQL_NO_CACHE",
        "SQL_CALC_FOUND_ROWS",
    ];
    let mut items = Vec::new();
    let mut stmt_start = 0;
    while stmt_start < toks.len() {
        let stmt_end = toks[stmt_start..]
            .iter()
            .position(|t| t.is_punct(b';'))
            .map_or(toks.len(), |p| stmt_start + p);
        if toks[stmt_start].is_kw(sql, "SELECT") {
            let mut i = stmt_start + 1;
            while i < stmt_end && MODIFIERS.iter().any(|m| toks[i].is_kw(sql, m)) {
                i += 1;
            }
            let mut depth = 0i32;
            let mut start = i;
            while i < stmt_end {
                let t = &toks[i];
                match t.kind {
                    Tok::Punct(b'(') => depth += 1,
                    Tok::Punct(b')') => depth -= 1,
                    Tok::Punct(b',') if depth == 0 => {
                        items.push(start..i);
                        start = i + 1;
                    }
                    Tok::Word if depth == 0 && CLAUSE_WORDS.iter().any(|w| t.is_kw(sql, w)) => {
                        break;
                    }
                    _ => {}
                }
                i += 1;
            }
            if start < i {
                items.push(start..i);
            }
        }
        stmt_start = stmt_end + 1;
    }
    items
}

/// `s` as a SQL string literal in the connection's character set.
pub(super) fn quote(s: &str) -> String {
    let hex: String = s.bytes().map(|b| format!("{b:02x}")).collect();
    if hex.is_empty() {
        "''".to_string()
    } else {
        format!("CONVERT(X'{hex}' USING utf8mb4)")
    }
}

/// This host's name, as `@@hostname` answers it.
fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".to_string())
}

impl super::Session {
    /// The statement text with shardgate's identity in place of the backend's (see
    /// the module docs), or None when it mentions none of it.
    pub(super) fn identity_rewrite(&self, text: &str) -> Option<String> {
        if !may_mention(text) {
            return None;
        }
        let processlist = || self.processlist_rows();
        let me = Identity {
            id: self.id,
            port: self.shared.config.listen.port(),
            socket: None,
            processlist: &processlist,
            stmt_commands: self.stmt_commands,
        };
        let nbe = self.backend_flags & crate::protocol::status::NO_BACKSLASH_ESCAPES != 0;
        rewrite(text, &me, !nbe)
    }

    /// `information_schema.PROCESSLIST` as a `SELECT` of literal rows: shardgate's
    /// sessions the user may see (its own; an admin's: all), with MariaDB's columns.
    fn processlist_rows(&self) -> String {
        let now = std::time::Instant::now();
        let text = |s: Option<&str>| s.map_or_else(|| "NULL".to_string(), quote);
        let rows: Vec<String> = self
            .shared
            .sessions()
            .into_iter()
            .filter(|(_, h)| self.admin || h.current_user() == self.user)
            .map(|(id, h)| {
                let a = h.activity();
                // Bounded: the derived table holds every visible session's text.
                let info = a.statement.map(|s| {
                    String::from_utf8_lossy(&s)
                        .chars()
                        .take(PROCESSLIST_INFO_CHARS)
                        .collect::<String>()
                });
                let running = info.is_some();
                let ms = now.saturating_duration_since(a.since).as_millis();
                format!(
                    "SELECT {id} AS ID, {user} AS USER, {host} AS HOST, {db} AS DB, {cmd} AS COMMAND, \
                     {secs} AS TIME, {state} AS STATE, {info} AS INFO, {ms}.000 AS TIME_MS, 0 AS STAGE, \
                     0 AS MAX_STAGE, 0.000 AS PROGRESS, 0 AS MEMORY_USED, 0 AS MAX_MEMORY_USED, \
                     0 AS EXAMINED_ROWS, 0 AS SENT_ROWS, 0 AS QUERY_ID, {info} AS INFO_BINARY, 0 AS TID",
                    user = text(Some(&a.user)),
                    host = text(Some(&h.host)),
                    db = text(a.db.as_deref()),
                    cmd = text(Some(if running { "Query" } else { "Sleep" })),
                    secs = ms / 1000,
                    state = text(Some(if running { "executing" } else { "" })),
                    info = text(info.as_deref()),
                )
            })
            .collect();
        if rows.is_empty() {
            // Not even this session (it always is registered): an empty table.
            return "SELECT 0 AS ID FROM DUAL WHERE 1 = 0".to_string();
        }
        rows.join(" UNION ALL ")
    }
}

#[cfg(test)]
mod tests {
    use super::{may_mention, rewrite, Identity};

    fn me() -> Identity<'static> {
        Identity {
            id: 42,
            port: 6033,
            socket: None,
            processlist: &|| "SELECT 42 AS ID".to_string(),
            stmt_commands: [1, 2, 3, 4, 5, 6],
        }
    }

    fn rw(sql: &str) -> Option<String> {
        rewrite(sql, &me(), true)
    }

    #[test]
    fn answers_connection_id_anywhere_keeping_the_column_name() {
        assert_eq!(
            rw("SELECT CONNECTION_ID() AS id").as_deref(),
            Some("SELECT 42 AS id")
        );
        assert_eq!(
            rw("SELECT connection_id() + 1").as_deref(),
            Some("SELECT 42 + 1 AS `connection_id() + 1`")
        );
        assert_eq!(
            rw("SELECT a FROM t WHERE b = CONNECTION_ID()").as_deref(),
            Some("SELECT a FROM t WHERE b = 42")
        );
        assert_eq!(
            rw("KILL QUERY CONNECTION_ID()").as_deref(),
            Some("KILL QUERY 42")
        );
        assert_eq!(rw("SELECT 'CONNECTION_ID()'"), None);
        assert_eq!(rw("CREATE VIEW v AS SELECT CONNECTION_ID() AS c"), None);
        assert_eq!(
            rw("create procedure p() begin select connection_id(); end"),
            None
        );
        assert_eq!(
            rw("CREATE PROCEDURE p() BEGIN SELECT 1; SELECT CONNECTION_ID(); END"),
            None
        );
        assert_eq!(
            rw("SELECT CONNECTION_ID() AS c; SELECT 1").as_deref(),
            Some("SELECT 42 AS c; SELECT 1")
        );
        assert_eq!(rw("SELECT `CONNECTION_ID()` FROM t"), None);
        assert!(!may_mention("SELECT 1"));
        assert!(may_mention("select connection_id()"));
        assert!(may_mention("SELECT * FROM information_schema.ProcessList"));
        assert!(may_mention("SELECT Connection_Id()"));
        assert!(may_mention("  show tables"));
        assert!(may_mention("SELECT @@version"));
        assert!(!may_mention(
            "SELECT val FROM items WHERE workspace_id = 1 AND id = 2"
        ));
        // A needle cut by the end of the text is not there.
        assert!(!may_mention("SELECT 1 FROM connection"));
        assert!(!may_mention("SELECT 1 FROM processlis"));
        assert!(may_mention("processlist"));
        assert!(may_mention("onnection_"));
        assert!(!may_mention("SELECT c FROM cc WHERE ccc = 'c'"));
    }

    #[test]
    fn answers_socket_port_and_hostname() {
        assert_eq!(
            rw("SELECT @@socket, @@max_allowed_packet, @@wait_timeout").as_deref(),
            Some("SELECT CAST(NULL AS CHAR) AS `@@socket`, @@max_allowed_packet, @@wait_timeout")
        );
        assert_eq!(
            rw("SELECT @@global.port p").as_deref(),
            Some("SELECT 6033 p")
        );
        assert_eq!(
            rw("SELECT @@port IS NOT NULL, @@port AND 1").as_deref(),
            Some("SELECT 6033 IS NOT NULL AS `@@port IS NOT NULL`, 6033 AND 1 AS `@@port AND 1`")
        );
        assert_eq!(
            rw("SELECT @@PORT").as_deref(),
            Some("SELECT 6033 AS `@@PORT`")
        );
        // Global-only: a session scope is the backend's error to give.
        assert_eq!(rw("SELECT @@session.socket"), None);
        assert_eq!(rw("SELECT @@version, '@@socket'"), None);
        assert_eq!(rw("SET @port = 1"), None);
        assert_eq!(rw("SET @@global.port = 1"), None);
        assert_eq!(rw("SET @p = @@port").as_deref(), Some("SET @p = 6033"));
        let host = rw("SELECT @@hostname").expect("rewritten");
        assert!(
            host.starts_with("SELECT CONVERT(X'") || host.starts_with("SELECT ''"),
            "{host}"
        );
        assert!(host.ends_with(" AS `@@hostname`"), "{host}");
    }

    #[test]
    fn answers_show_variables_for_its_own_variables_only() {
        let port = rw("SHOW VARIABLES LIKE 'port'").expect("rewritten");
        assert!(port.contains("WHEN 'PORT' THEN '6033'"), "{port}");
        assert!(
            port.contains(
                "FROM information_schema.SESSION_VARIABLES WHERE VARIABLE_NAME LIKE 'port'"
            ),
            "{port}"
        );
        let global = rw("show global variables like 'SOCK%';").expect("rewritten");
        assert!(global.contains("GLOBAL_VARIABLES"), "{global}");
        assert!(rw("SHOW VARIABLES LIKE '%name'").is_some());
        assert_eq!(rw("SHOW VARIABLES LIKE 'max_allowed_packet'"), None);
        assert_eq!(rw("SHOW VARIABLES LIKE 'port_x'"), None);
        assert_eq!(rw("SHOW VARIABLES"), None);
        assert!(super::like_matches(b"p_r%", b"port"));
        assert!(!super::like_matches(b"p\\_rt", b"port"));
    }

    #[test]
    fn replaces_information_schema_processlist() {
        assert_eq!(
            rw("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()")
                .as_deref(),
            Some("SELECT ID FROM (SELECT 42 AS ID) AS PROCESSLIST WHERE ID = 42")
        );
        assert_eq!(
            rw("select id from `information_schema`.`processlist` p").as_deref(),
            Some("select id from (SELECT 42 AS ID) p")
        );
        assert_eq!(rw("DESCRIBE information_schema.PROCESSLIST"), None);
        assert_eq!(rw("SELECT information_schema.PROCESSLIST.ID FROM t"), None);
    }

    #[test]
    fn answers_the_sessions_own_prepared_statement_counters() {
        let close = rw("SHOW SESSION STATUS LIKE 'Com_stmt_close';").expect("rewritten");
        assert!(close.contains("WHEN 'COM_STMT_CLOSE' THEN '5'"), "{close}");
        assert!(close.contains("SESSION_STATUS WHERE VARIABLE_NAME LIKE 'Com_stmt_close'"));
        assert!(rw("SHOW STATUS LIKE 'com_stmt%'").is_some());
        assert!(rw("show local status like 'Com_stmt_execute'").is_some());
        assert_eq!(rw("SHOW GLOBAL STATUS LIKE 'Com_stmt_close'"), None);
        assert_eq!(rw("SHOW STATUS LIKE 'Com_select'"), None);
        assert_eq!(
            rw("SHOW STATUS LIKE '%stmt_close'"),
            None,
            "not a Com_ pattern"
        );
        assert_eq!(rw("SHOW STATUS"), None);
    }
}
