//! What a statement needs from the user who sends it.
//!
//! shardgate reaches every cluster with one backend account that may do anything, so
//! it decides itself which statements a tenant's user may send: those that stay in the
//! tenant's own data. Statements that reach the database host (files, plugins,
//! shutdown), other tenants (every shard at once, other sessions' statements, backend
//! thread ids; a `KILL` on its own is answered by the session with shardgate's session
//! ids before this check, so it is not refused here), the server's accounts and grants, its replication, or shardgate's own
//! sidecar schema are for admin users only (`docs/security.md`).
//!
//! Decided from tokens, never from strings or comments (`SELECT 'LOAD_FILE('` is
//! fine), with two exceptions that make the check hold whatever the session does:
//! the text of `PREPARE ... FROM '...'` and `EXECUTE IMMEDIATE '...'` is read as the
//! statement it is, and a text with a backslash is also read as the server reads it
//! under `sql_mode=NO_BACKSLASH_ESCAPES`, where a string can end earlier.

use super::lex::{self, Tok, Token};

/// What a statement (or a whole query) needs from its user.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Privilege {
    /// Any user may run it: it stays within the user's own data.
    Tenant,
    /// Only shardgate admin users: it reaches the host, other tenants, other sessions
    /// or the server's own schemas. The text names the statement class, for the error.
    Admin(&'static str),
}

impl Privilege {
    /// `self` if it needs admin, else `other`.
    fn or_else(self, other: impl FnOnce() -> Privilege) -> Privilege {
        match self {
            Privilege::Tenant => other(),
            admin => admin,
        }
    }
}

const USERS: &str = "user, role and grant management (CREATE/ALTER/DROP/RENAME USER, ROLE, GRANT, REVOKE, SET PASSWORD)";
const DROP_DATABASE: &str = "DROP DATABASE (it runs on every shard at once)";
const SET_GLOBAL: &str = "SET GLOBAL/PERSIST (server-wide settings)";
const REPLICATION: &str =
    "replication control and binary logs (CHANGE MASTER, START/STOP SLAVE, PURGE, SHOW BINLOG EVENTS, sql_log_bin)";
const ROUTINES: &str =
    "CREATE/ALTER/DROP of procedures, functions, triggers and events (they run with their definer's rights)";
const SERVER_FILES: &str =
    "access to files on the database server (LOAD_FILE, LOAD DATA INFILE, INTO OUTFILE/DUMPFILE, DATA/INDEX DIRECTORY)";
const PROCESSLIST: &str =
    "SHOW PROCESSLIST and information_schema.PROCESSLIST (other sessions' statements)";
/// A `KILL` sent on its own never gets here for a tenant: the session answers it with
/// shardgate's session ids (`session::kill`), for any user. What is left is a `KILL`
/// that would reach a backend (in `PREPARE`, `EXECUTE IMMEDIATE`, `SET STATEMENT ...
/// FOR`), where the ids are backend thread ids shared by every tenant's sessions.
const KILL: &str = "KILL inside PREPARE, EXECUTE IMMEDIATE or SET STATEMENT (there it would reach a backend, whose thread ids belong to every tenant's sessions; send KILL on its own to kill a shardgate session)";
const DYNAMIC: &str =
    "PREPARE/EXECUTE IMMEDIATE of a statement held in a variable (shardgate cannot see what it is)";

/// The schema a tenant's user may not use, with the reason for the error, if `name`
/// is one: the server's accounts and instrumentation, and shardgate's sidecar.
pub fn protected_schema(name: &str) -> Option<&'static str> {
    const SCHEMAS: [(&str, &str); 4] = [
        (
            "mysql",
            "the mysql schema (the server's accounts and grants)",
        ),
        (
            "performance_schema",
            "the performance_schema schema (every session's activity)",
        ),
        ("sys", "the sys schema (every session's activity)"),
        (
            "_shardgate",
            "the _shardgate schema (shardgate's migration queue)",
        ),
    ];
    SCHEMAS
        .iter()
        .find(|(s, _)| s.eq_ignore_ascii_case(name))
        .map(|(_, why)| *why)
}

/// What the whole query `sql`, already lexed into `toks`, needs: admin if any of its
/// statements does.
pub(crate) fn of_query(sql: &str, toks: &[Token]) -> Privilege {
    of_statements(sql, toks).or_else(|| {
        if memchr::memchr(b'\\', sql.as_bytes()).is_some() {
            // Under NO_BACKSLASH_ESCAPES a backslash does not escape a quote: the
            // server may see statements where the default reading sees a string.
            of_statements(sql, &lex::lex_with(sql, false).tokens)
        } else {
            Privilege::Tenant
        }
    })
}

fn of_statements(sql: &str, toks: &[Token]) -> Privilege {
    toks.split(|t| t.is_punct(b';'))
        .map(|stmt| of_statement(sql, stmt))
        .find(|p| *p != Privilege::Tenant)
        .unwrap_or(Privilege::Tenant)
}

/// What one statement (its tokens, comments left out) needs.
pub(crate) fn of_statement(sql: &str, toks: &[Token]) -> Privilege {
    let mut stmt = toks;
    // `SET STATEMENT a = 1 FOR <statement>`: its settings and its statement both count.
    while let Some((settings, inner)) = set_statement(sql, stmt) {
        if let admin @ Privilege::Admin(_) = set(sql, settings) {
            return admin;
        }
        stmt = inner;
    }
    by_head(sql, stmt).or_else(|| anywhere(sql, toks))
}

fn kw(t: Option<&Token>, sql: &str, word: &str) -> bool {
    t.is_some_and(|t| t.is_kw(sql, word))
}

fn kw_any(t: Option<&Token>, sql: &str, words: &[&str]) -> bool {
    t.is_some_and(|t| words.iter().any(|w| t.is_kw(sql, w)))
}

/// An identifier, also a `"name"` (an identifier under `sql_mode=ANSI_QUOTES`).
fn name_of<'a>(t: &Token, sql: &'a str) -> Option<std::borrow::Cow<'a, str>> {
    match t.kind {
        Tok::Word | Tok::Quoted => Some(t.ident(sql)),
        Tok::Str if names(t, sql) => Some(t.str_inner(sql).into()),
        _ => None,
    }
}

/// Whether [`name_of`] has a name for `t`, without making it.
fn names(t: &Token, sql: &str) -> bool {
    match t.kind {
        Tok::Word | Tok::Quoted => true,
        Tok::Str => sql.as_bytes().get(t.start) == Some(&b'"'),
        Tok::Num | Tok::Punct(_) | Tok::Op => false,
    }
}

fn protected_at(sql: &str, t: Option<&Token>) -> Option<&'static str> {
    t.and_then(|t| name_of(t, sql))
        .and_then(|n| protected_schema(&n))
}

/// By the statement's first keywords.
fn by_head(sql: &str, toks: &[Token]) -> Privilege {
    let Some(first) = toks.first().filter(|t| t.kind == Tok::Word) else {
        return Privilege::Tenant;
    };
    let second = toks.get(1);
    // Upper-case the first word on the stack: this runs for every statement.
    let mut buf = [0u8; 10];
    let raw = first.text(sql).as_bytes();
    let word = match buf.get_mut(..raw.len()) {
        Some(dst) => {
            for (d, s) in dst.iter_mut().zip(raw) {
                *d = s.to_ascii_uppercase();
            }
            std::str::from_utf8(dst).unwrap_or("")
        }
        None => "",
    };
    match word {
        "GRANT" | "REVOKE" => Privilege::Admin(USERS),
        "KILL" => Privilege::Admin(KILL),
        "SHUTDOWN" | "RESTART" => Privilege::Admin("SHUTDOWN/RESTART"),
        "FLUSH" => Privilege::Admin("FLUSH (server-wide caches, logs and privileges)"),
        "RESET" => Privilege::Admin("RESET (server-wide state)"),
        "PURGE" | "CHANGE" | "BINLOG" => Privilege::Admin(REPLICATION),
        "START" | "STOP"
            if kw_any(
                second,
                sql,
                &["SLAVE", "REPLICA", "ALL", "GROUP_REPLICATION"],
            ) =>
        {
            Privilege::Admin(REPLICATION)
        }
        "INSTALL" | "UNINSTALL" => Privilege::Admin("INSTALL/UNINSTALL PLUGIN or SONAME"),
        "BACKUP" => Privilege::Admin("BACKUP STAGE/LOCK (server-wide locks)"),
        "CREATE" | "ALTER" | "DROP" | "RENAME" => object(sql, toks),
        "SET" => set(sql, toks),
        "SHOW" => show(sql, toks),
        "USE" => protected_at(sql, second).map_or(Privilege::Tenant, Privilege::Admin),
        "LOAD" if kw_any(second, sql, &["DATA", "XML"]) => {
            let infile = toks.iter().position(|t| t.is_kw(sql, "INFILE"));
            let local = infile.is_some_and(|at| toks[..at].iter().any(|t| t.is_kw(sql, "LOCAL")));
            if local {
                Privilege::Tenant
            } else {
                Privilege::Admin(SERVER_FILES)
            }
        }
        "PREPARE" => match toks.iter().position(|t| t.is_kw(sql, "FROM")) {
            Some(at) => dynamic(sql, &toks[at + 1..]),
            None => Privilege::Tenant,
        },
        "EXECUTE" if kw(second, sql, "IMMEDIATE") => dynamic(sql, &toks[2..]),
        _ => Privilege::Tenant,
    }
}

/// CREATE / ALTER / DROP / RENAME: by the kind of object.
fn object(sql: &str, toks: &[Token]) -> Privilege {
    let drop = toks.first().is_some_and(|t| t.is_kw(sql, "DROP"));
    let mut i = 1;
    loop {
        let t = toks.get(i);
        if kw(t, sql, "OR") && kw(toks.get(i + 1), sql, "REPLACE") {
            i += 2;
        } else if kw(t, sql, "DEFINER") {
            i += 1;
            if toks.get(i).is_some_and(|t| t.is_punct(b'=')) {
                i += 1;
            }
            // `user`, `'user'@'host'`, `CURRENT_USER`, `CURRENT_USER()`.
            i += 1;
            let host = toks.get(i).is_some_and(|t| t.is_punct(b'@'));
            let parens = toks.get(i).is_some_and(|t| t.is_punct(b'('))
                && toks.get(i + 1).is_some_and(|t| t.is_punct(b')'));
            if host || parens {
                i += 2;
            }
        } else if (kw(t, sql, "SQL") && kw(toks.get(i + 1), sql, "SECURITY"))
            || kw(t, sql, "ALGORITHM")
        {
            // `SQL SECURITY DEFINER`, `ALGORITHM = MERGE`.
            i += 3;
        } else if kw_any(
            t,
            sql,
            &[
                "AGGREGATE",
                "ONLINE",
                "OFFLINE",
                "IGNORE",
                "TEMPORARY",
                "UNIQUE",
                "FULLTEXT",
                "SPATIAL",
                "DEFINITION",
            ],
        ) {
            i += 1;
        } else {
            break;
        }
    }
    let what = toks.get(i);
    if kw_any(what, sql, &["USER", "ROLE"]) {
        Privilege::Admin(USERS)
    } else if kw_any(what, sql, &["DATABASE", "SCHEMA"]) {
        let mut at = i + 1;
        while kw_any(toks.get(at), sql, &["IF", "NOT", "EXISTS"]) {
            at += 1;
        }
        match protected_at(sql, toks.get(at)) {
            Some(why) => Privilege::Admin(why),
            None if drop => Privilege::Admin(DROP_DATABASE),
            None => Privilege::Tenant,
        }
    } else if kw_any(
        what,
        sql,
        &["PROCEDURE", "FUNCTION", "TRIGGER", "EVENT", "PACKAGE"],
    ) {
        Privilege::Admin(ROUTINES)
    } else if kw(what, sql, "SERVER") {
        Privilege::Admin("CREATE/ALTER/DROP SERVER (connections from the database host)")
    } else if kw_any(what, sql, &["TABLESPACE", "LOGFILE", "INSTANCE"]) {
        Privilege::Admin("tablespaces and instance settings")
    } else {
        Privilege::Tenant
    }
}

/// Session variables whose change reaches replication (and needs SUPER on a server).
const REPLICATION_VARIABLES: &[&str] = &[
    "SQL_LOG_BIN",
    "GTID_SEQ_NO",
    "GTID_DOMAIN_ID",
    "GTID_NEXT",
    "SERVER_ID",
    "PSEUDO_THREAD_ID",
    "PSEUDO_SLAVE_MODE",
    "SKIP_REPLICATION",
];

/// `SET STATEMENT a = 1 FOR <statement>`: its settings and its statement.
fn set_statement<'t>(sql: &str, toks: &'t [Token]) -> Option<(&'t [Token], &'t [Token])> {
    if !(kw(toks.first(), sql, "SET") && kw(toks.get(1), sql, "STATEMENT")) {
        return None;
    }
    let mut depth = 0usize;
    let at = toks.iter().position(|t| {
        if t.is_punct(b'(') {
            depth += 1;
        } else if t.is_punct(b')') {
            depth = depth.saturating_sub(1);
        }
        depth == 0 && t.is_kw(sql, "FOR")
    })?;
    Some((&toks[..at], &toks[at + 1..]))
}

fn set(sql: &str, toks: &[Token]) -> Privilege {
    let second = toks.get(1);
    if kw(second, sql, "PASSWORD") || (kw(second, sql, "DEFAULT") && kw(toks.get(2), sql, "ROLE")) {
        return Privilege::Admin(USERS);
    }
    let first_assignment = if kw(second, sql, "STATEMENT") { 2 } else { 1 };
    // Each assignment starts after SET (or SET STATEMENT) or a top-level comma.
    let mut depth = 0usize;
    for (i, t) in toks.iter().enumerate().skip(1) {
        let starts = i == first_assignment || (depth == 0 && toks[i - 1].is_punct(b','));
        if t.is_punct(b'(') {
            depth += 1;
        } else if t.is_punct(b')') {
            depth = depth.saturating_sub(1);
        }
        if starts {
            if let Some(p) = assignment(sql, &toks[i..]) {
                return p;
            }
        }
    }
    Privilege::Tenant
}

/// The need of one `SET` assignment starting at `toks[0]`, when it is not a tenant's.
fn assignment(sql: &str, toks: &[Token]) -> Option<Privilege> {
    let scopes = ["GLOBAL", "PERSIST", "PERSIST_ONLY"];
    let mut at = 0;
    if kw_any(toks.first(), sql, &scopes) {
        return Some(Privilege::Admin(SET_GLOBAL));
    }
    if kw_any(toks.first(), sql, &["SESSION", "LOCAL"]) {
        at = 1;
    } else if toks.first().is_some_and(|t| t.is_punct(b'@'))
        && toks.get(1).is_some_and(|t| t.is_punct(b'@'))
    {
        at = 2;
        if toks.get(3).is_some_and(|t| t.is_punct(b'.')) {
            if kw_any(toks.get(2), sql, &scopes) {
                return Some(Privilege::Admin(SET_GLOBAL));
            }
            at = 4;
        }
    }
    if let Some(value) = client_charset_value(sql, toks, at) {
        let unsafe_charset = match value.kind {
            Tok::Word => BACKSLASH_UNSAFE_CHARSETS
                .iter()
                .any(|c| value.is_kw(sql, c)),
            Tok::Str => BACKSLASH_UNSAFE_CHARSETS
                .iter()
                .any(|c| value.str_inner(sql).eq_ignore_ascii_case(c)),
            // `@var`, an expression: shardgate cannot tell which it is.
            _ => true,
        };
        return unsafe_charset.then_some(Privilege::Admin(UNSAFE_CHARSET));
    }
    kw_any(toks.get(at), sql, REPLICATION_VARIABLES).then_some(Privilege::Admin(REPLICATION))
}

/// The client character sets in which a character may end with the byte of `\`
/// (0x5C): the server then reads strings differently from shardgate's lexer, so a
/// statement could hide in what shardgate takes for a string.
const BACKSLASH_UNSAFE_CHARSETS: &[&str] = &["BIG5", "CP932", "GBK", "GB18030", "SJIS"];

const UNSAFE_CHARSET: &str =
    "a client character set whose characters may end in a backslash byte (big5, cp932, gbk, gb18030, sjis)";

/// The value token of `NAMES x`, `CHARACTER SET x`, `CHARSET x` or
/// `character_set_client = x` at `toks[at]`.
fn client_charset_value<'t>(sql: &str, toks: &'t [Token], at: usize) -> Option<&'t Token> {
    let name = toks.get(at)?;
    if name.is_kw(sql, "NAMES") || name.is_kw(sql, "CHARSET") {
        toks.get(at + 1)
    } else if (name.is_kw(sql, "CHARACTER") && kw(toks.get(at + 1), sql, "SET"))
        || name.is_kw(sql, "CHARACTER_SET_CLIENT")
    {
        // `CHARACTER SET x`, `character_set_client = x`.
        toks.get(at + 2)
    } else {
        None
    }
}

/// Whether a handshake collation id belongs to a character set in which a character
/// may end with a backslash byte (see [`Privilege`]): big5, sjis, gbk, cp932, and
/// MySQL's gb18030.
pub fn backslash_unsafe_collation(id: u8) -> bool {
    matches!(id, 1 | 84 | 13 | 88 | 28 | 87 | 95 | 96 | 248..=250)
}

fn show(sql: &str, toks: &[Token]) -> Privilege {
    let second = toks.get(1);
    let third = toks.get(2);
    if kw(second, sql, "PROCESSLIST") || (kw(second, sql, "FULL") && kw(third, sql, "PROCESSLIST"))
    {
        return Privilege::Admin(PROCESSLIST);
    }
    if kw(second, sql, "ENGINE") {
        return Privilege::Admin("SHOW ENGINE (other sessions' transactions and statements)");
    }
    if kw_any(
        second,
        sql,
        &["BINLOG", "BINARY", "MASTER", "SLAVE", "REPLICA", "RELAYLOG"],
    ) {
        return Privilege::Admin(REPLICATION);
    }
    if kw_any(second, sql, &["EXPLAIN", "ANALYZE"]) && toks.iter().any(|t| t.is_kw(sql, "FOR")) {
        return Privilege::Admin("SHOW EXPLAIN/ANALYZE FOR (another session's statement)");
    }
    if (kw(second, sql, "CREATE") && kw(third, sql, "USER"))
        || (kw(second, sql, "GRANTS") && kw(third, sql, "FOR"))
    {
        return Privilege::Admin(USERS);
    }
    // SHOW TABLES FROM mysql, SHOW COLUMNS FROM user IN mysql, ...
    for w in toks.windows(2) {
        if kw_any(Some(&w[0]), sql, &["FROM", "IN"]) {
            if let Some(why) = protected_at(sql, Some(&w[1])) {
                return Privilege::Admin(why);
            }
        }
    }
    Privilege::Tenant
}

/// Words before the `INTO` of an INSERT, whose table may be called `dumpfile`.
const INSERT_INTO: &[&str] = &[
    "INSERT",
    "REPLACE",
    "IGNORE",
    "LOW_PRIORITY",
    "DELAYED",
    "HIGH_PRIORITY",
];

/// Anywhere in a statement: server files, protected schemas, other sessions.
fn anywhere(sql: &str, toks: &[Token]) -> Privilege {
    for (i, t) in toks.iter().enumerate() {
        // Only a word or a name can be any of what follows; numbers, punctuation and
        // `'strings'` (most of a long INSERT's tokens) cost one test each.
        if !names(t, sql) {
            continue;
        }
        let next = toks.get(i + 1);
        let prev = i.checked_sub(1).and_then(|p| toks.get(p));
        if t.kind == Tok::Word {
            let call = next.is_some_and(|n| n.is_punct(b'('));
            if (t.is_kw(sql, "LOAD_FILE") && call)
                || (t.is_kw(sql, "INTO")
                    && kw_any(next, sql, &["OUTFILE", "DUMPFILE"])
                    && !kw_any(prev, sql, INSERT_INTO))
                || (kw_any(Some(t), sql, &["DATA", "INDEX"]) && kw(next, sql, "DIRECTORY"))
            {
                return Privilege::Admin(SERVER_FILES);
            }
        }
        let qualifies = next.is_some_and(|n| n.is_punct(b'.'))
            && !prev.is_some_and(|p| p.is_punct(b'.') || p.is_punct(b'@'));
        // PROCESSLIST, INNODB_TRX, possibly quoted: a cheap filter for the hot path.
        let maybe_session_table = (10..=13).contains(&(t.end - t.start));
        if !(qualifies || maybe_session_table) {
            continue;
        }
        let Some(name) = name_of(t, sql) else {
            continue;
        };
        if qualifies {
            if let Some(why) = protected_schema(&name) {
                return Privilege::Admin(why);
            }
        }
        let session_table =
            name.eq_ignore_ascii_case("PROCESSLIST") || name.eq_ignore_ascii_case("INNODB_TRX");
        if session_table {
            // information_schema.PROCESSLIST, or PROCESSLIST in a table position after
            // `USE information_schema`.
            let in_table_position = prev.is_some_and(|p| {
                p.is_punct(b',') || kw_any(Some(p), sql, &["FROM", "JOIN", "STRAIGHT_JOIN"])
            });
            let qualified = prev.is_some_and(|p| p.is_punct(b'.'))
                && i >= 2
                && name_of(&toks[i - 2], sql)
                    .is_some_and(|s| s.eq_ignore_ascii_case("information_schema"));
            if in_table_position || qualified {
                return Privilege::Admin(PROCESSLIST);
            }
        }
    }
    Privilege::Tenant
}

/// `PREPARE s FROM <toks>` / `EXECUTE IMMEDIATE <toks>`: the statement in the string,
/// read both with and without backslash escapes; a statement held anywhere else (a
/// variable, an expression) cannot be seen, so it needs admin. (Nesting is bounded:
/// each level must quote the next, which doubles its quotes.)
fn dynamic(sql: &str, toks: &[Token]) -> Privilege {
    let strings = toks.iter().take_while(|t| t.kind == Tok::Str).count();
    let rest_ok = toks.get(strings).is_none_or(|t| t.is_kw(sql, "USING"));
    if strings == 0 || !rest_ok {
        return Privilege::Admin(DYNAMIC);
    }
    // Adjacent literals are one string.
    let mut escaped = String::new();
    let mut raw = String::new();
    for t in &toks[..strings] {
        let quote = t.text(sql).chars().next().unwrap_or('\'');
        escaped.push_str(&unescape(t.str_inner(sql), quote, true));
        raw.push_str(&unescape(t.str_inner(sql), quote, false));
    }
    of_query(&escaped, &lex::lex(&escaped).tokens)
        .or_else(|| of_query(&raw, &lex::lex_with(&raw, false).tokens))
}

/// A string literal's value: doubled quotes made single and, with `backslashes`, the
/// server's backslash escapes applied.
fn unescape(inner: &str, quote: char, backslashes: bool) -> String {
    let mut out = String::with_capacity(inner.len());
    let mut chars = inner.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\\' && backslashes {
            match chars.next() {
                Some('0') => out.push('\0'),
                Some('n') => out.push('\n'),
                Some('r') => out.push('\r'),
                Some('t') => out.push('\t'),
                Some('b') => out.push('\u{8}'),
                Some('Z') => out.push('\u{1a}'),
                Some(e @ ('%' | '_')) => {
                    out.push('\\');
                    out.push(e);
                }
                Some(e) => out.push(e),
                None => out.push('\\'),
            }
        } else if c == quote && chars.peek() == Some(&quote) {
            chars.next();
            out.push(quote);
        } else {
            out.push(c);
        }
    }
    out
}
