//! Scoped users: which schemas a statement names, and whether a statement of a user
//! bound to some workspaces stays inside them (`docs/security.md#roles-and-scopes`).
//!
//! Only users with a scope pay for this: the session calls it after planning, and
//! nothing here runs for anyone else.
//!
//! The rule for a workspace-bound user in a keyspace of shared tables is *proven, or
//! refused*: every use of a sharded table must be pinned to the user's workspaces by its
//! own conditions (the same per-scope analysis that routes: a top-level `=`/`IN`
//! conjunct on the sharding column in the SELECT, subquery, JOIN or UNION branch where
//! the table is used). A comment tag is not enough, since the shard it picks holds other
//! workspaces' rows too. Reference tables may be read, not written (they are shared by
//! every workspace); any other table is refused. Statements whose effect cannot be
//! bounded this way (`INSERT ... SELECT`, `CALL`, `HANDLER`, `PREPARE`, schema changes
//! of the shared tables, a write that changes a row's workspace, temporary tables) are
//! refused.

use std::ops::ControlFlow;
use std::ops::Range;

use sqlparser::ast::{AssignmentTarget, ObjectName, ObjectNamePart, Statement, Visit};

use super::classify::{self, Head};
use super::insert::{self, InsertRoute};
use super::lex::{self, Token};
use super::tables::{self, TableName};
use super::{parse_one, untagged_route, Route, ShardingSchema, StatementKind};

/// Why a statement is outside the user's scope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denial {
    /// The statement's verb, for the error (`SELECT`).
    pub command: &'static str,
    /// The table concerned, when there is one.
    pub table: Option<String>,
    /// What is outside the scope.
    pub reason: String,
}

impl Denial {
    fn new(command: &'static str, table: Option<&str>, reason: impl Into<String>) -> Denial {
        Denial {
            command,
            table: table.map(str::to_owned),
            reason: reason.into(),
        }
    }
}

/// The schemas `sql[span]` qualifies tables with (`crm` in `crm.accounts`, also as a
/// three-part column name `crm.accounts.id`), as the parser sees every table position,
/// plus what the token scan sees (for text the parser cannot read).
pub fn qualified_schemas(sql: &str, span: Range<usize>) -> Vec<String> {
    let Some(text) = sql.get(span) else {
        return Vec::new();
    };
    let toks = lex::lex(text).tokens;
    let mut out: Vec<String> = Vec::new();
    let mut add = |s: &str| {
        if !out.iter().any(|o| o.eq_ignore_ascii_case(s)) {
            out.push(s.to_owned());
        }
    };
    let ddl = matches!(
        classify::classify(text, &toks),
        Head::Kind(StatementKind::Ddl(_))
    );
    for t in tables::table_names(text, &toks, ddl) {
        if let Some(s) = &t.schema {
            add(s);
        }
    }
    // `a.b.c`: `a` can only be a schema.
    for w in toks.windows(5) {
        let dotted = w[0].is_ident() && w[1].is_punct(b'.') && w[2].is_ident();
        if dotted && w[3].is_punct(b'.') && (w[4].is_ident() || w[4].is_punct(b'*')) {
            add(&w[0].ident(text));
        }
    }
    if let Some(stmt) = parse_one(text) {
        let _ = sqlparser::ast::visit_relations(&stmt, |name: &ObjectName| {
            if let Some(schema) = qualifier(name) {
                add(schema);
            }
            ControlFlow::<()>::Continue(())
        });
    }
    out
}

fn qualifier(name: &ObjectName) -> Option<&str> {
    let n = name.0.len();
    match name.0.get(n.checked_sub(2)?)? {
        ObjectNamePart::Identifier(id) => Some(id.value.as_str()),
        ObjectNamePart::Function(_) => None,
    }
}

fn unqualified(name: &ObjectName) -> Option<&str> {
    match name.0.last()? {
        ObjectNamePart::Identifier(id) => Some(id.value.as_str()),
        ObjectNamePart::Function(_) => None,
    }
}

fn check_ids(command: &'static str, bound: &[u64], ids: &[u64]) -> Result<(), Denial> {
    let outside: Vec<String> = ids
        .iter()
        .filter(|id| bound.binary_search(id).is_err())
        .take(10)
        .map(u64::to_string)
        .collect();
    if outside.is_empty() {
        return Ok(());
    }
    Err(Denial::new(
        command,
        None,
        format!("the statement reaches workspace {}", outside.join(", ")),
    ))
}

/// Checks that the statement `sql[span]`, run by a user bound to the workspaces
/// `bound` (sorted) in a keyspace of shared sharded tables described by `schema`, stays
/// in those workspaces.
pub fn confine(
    sql: &str,
    span: Range<usize>,
    schema: &dyn ShardingSchema,
    bound: &[u64],
) -> Result<(), Denial> {
    let Some(text) = sql.get(span) else {
        return Ok(());
    };
    let toks = lex::lex(text).tokens;
    match classify::classify(text, &toks) {
        Head::Kind(
            StatementKind::Begin
            | StatementKind::Commit
            | StatementKind::Rollback
            | StatementKind::Use(_)
            | StatementKind::SetAutocommit(_)
            | StatementKind::SetTransaction,
        ) => Ok(()),
        Head::Kind(StatementKind::SetSession) => no_query("SET", text, &toks),
        Head::Show { inner: Some(at) } => dml(text, &toks[at..], schema, bound, "SELECT"),
        Head::Show { inner: None } => Ok(()),
        Head::Kind(StatementKind::Select) => dml(text, &toks, schema, bound, "SELECT"),
        Head::Kind(StatementKind::Update) => dml(text, &toks, schema, bound, "UPDATE"),
        Head::Kind(StatementKind::Delete) => dml(text, &toks, schema, bound, "DELETE"),
        Head::Insert => insert(text, &toks, schema, bound),
        Head::Kind(StatementKind::Ddl(_)) => {
            let tables = tables::table_names(text, &toks, true);
            Err(Denial::new(
                "ALTER",
                tables.first().map(|t| t.name.as_ref()),
                "a schema change in a keyspace of shared tables changes every workspace's table; \
                 a dba or admin user runs it",
            ))
        }
        Head::Temporary => Err(Denial::new(
            "CREATE",
            None,
            "temporary tables are not available to workspace-bound users (one could hide a \
             shared table of the same name)",
        )),
        Head::Kind(StatementKind::Other) | Head::Lock | Head::Kind(_) => other(text, &toks, schema),
    }
}

/// A statement with no query in it (`SET @a = (SELECT ...)` reads rows; refused).
fn no_query(command: &'static str, text: &str, toks: &[Token]) -> Result<(), Denial> {
    if toks.iter().any(|t| t.is_kw(text, "SELECT")) {
        return Err(Denial::new(
            command,
            None,
            "a query inside this statement cannot be confined to the user's workspaces; \
             run the SELECT on its own",
        ));
    }
    Ok(())
}

/// Statements that are not DML: allowed when they use no table and run no query
/// (`DO 1`, `SAVEPOINT a`).
fn other(text: &str, toks: &[Token], schema: &dyn ShardingSchema) -> Result<(), Denial> {
    const REFUSED: [(&str, &str); 6] = [
        (
            "CALL",
            "a stored procedure runs with its definer's rights, over every workspace's rows",
        ),
        (
            "HANDLER",
            "HANDLER reads a table's rows in index order, every workspace's",
        ),
        (
            "PREPARE",
            "a statement prepared from text is not checked when it is executed",
        ),
        (
            "EXECUTE",
            "a statement prepared from text is not checked when it is executed",
        ),
        ("LOAD", "LOAD DATA rows are not checked for their workspace"),
        ("TABLE", "TABLE reads every row of a table"),
    ];
    if let Some(first) = toks.first() {
        if let Some((word, why)) = REFUSED.iter().find(|(w, _)| first.is_kw(text, w)) {
            let _ = word;
            return Err(Denial::new("EXECUTE", None, *why));
        }
    }
    no_query("EXECUTE", text, toks)?;
    if let Some(t) = tables::table_names(text, toks, false).first() {
        let kind = if schema.is_reference(&t.name) {
            "a reference table, shared by every workspace"
        } else {
            "a table shared by every workspace of its shard"
        };
        return Err(Denial::new(
            "LOCK",
            Some(&t.name),
            format!("this statement uses {kind} as a whole"),
        ));
    }
    Ok(())
}

/// The tables a statement uses: every relation the parser sees when it can read the
/// statement (minus CTE names), else the token scan's.
fn relations(stmt: Option<&Statement>, tables: &[TableName<'_>]) -> Vec<(Option<String>, String)> {
    let Some(stmt) = stmt else {
        return tables
            .iter()
            .map(|t| (t.schema.as_deref().map(str::to_owned), t.name.to_string()))
            .collect();
    };
    let mut ctes: Vec<String> = Vec::new();
    let _ = stmt.visit(&mut CteNames(&mut ctes));
    let mut out = Vec::new();
    let _ = sqlparser::ast::visit_relations(stmt, |name: &ObjectName| {
        if let Some(table) = unqualified(name) {
            let schema = qualifier(name).map(str::to_owned);
            let is_cte = schema.is_none() && ctes.iter().any(|c| c.eq_ignore_ascii_case(table));
            if !is_cte {
                out.push((schema, table.to_owned()));
            }
        }
        ControlFlow::<()>::Continue(())
    });
    out
}

/// Collects the names a statement's `WITH` clauses define.
struct CteNames<'a>(&'a mut Vec<String>);

impl sqlparser::ast::Visitor for CteNames<'_> {
    type Break = ();
    fn pre_visit_query(&mut self, q: &sqlparser::ast::Query) -> ControlFlow<()> {
        if let Some(with) = &q.with {
            for cte in &with.cte_tables {
                self.0.push(cte.alias.name.value.clone());
            }
        }
        ControlFlow::Continue(())
    }
}

/// Every table a statement uses must be sharded (then pinned) or a reference table
/// (read only), or one of the server's metadata tables.
fn check_tables(
    command: &'static str,
    used: &[(Option<String>, String)],
    schema: &dyn ShardingSchema,
) -> Result<(), Denial> {
    for (qualifier, table) in used {
        if qualifier
            .as_deref()
            .is_some_and(|q| q.eq_ignore_ascii_case("information_schema"))
        {
            continue;
        }
        let known = schema.sharding_column(table).is_some() || schema.is_reference(table);
        if !known {
            return Err(Denial::new(
                command,
                Some(table),
                "the table is neither sharded by workspace nor a reference table of the \
                 keyspace, so its rows belong to no one workspace",
            ));
        }
    }
    Ok(())
}

/// SELECT, UPDATE, DELETE (and the statement an EXPLAIN shows).
fn dml(
    text: &str,
    toks: &[Token],
    schema: &dyn ShardingSchema,
    bound: &[u64],
    command: &'static str,
) -> Result<(), Denial> {
    let (Some(first), Some(last)) = (toks.first(), toks.last()) else {
        return Ok(());
    };
    let body = text.get(first.start..last.end).unwrap_or("");
    let write = command != "SELECT";
    let tables = tables::table_names(text, toks, false);
    let parsed = parse_one(body);
    if write && parsed.is_none() {
        return Err(Denial::new(
            command,
            tables.first().map(|t| t.name.as_ref()),
            "shardgate could not parse this statement, so it cannot prove that it stays in \
             the user's workspaces",
        ));
    }
    let used = relations(parsed.as_ref(), &tables);
    check_tables(command, &used, schema)?;
    if let Some(Statement::Update(update)) = &parsed {
        for a in &update.assignments {
            let names: Vec<&ObjectName> = match &a.target {
                AssignmentTarget::ColumnName(n) => vec![n],
                AssignmentTarget::Tuple(ns) => ns.iter().collect(),
            };
            for n in names {
                let Some(col) = unqualified(n) else { continue };
                let table = used.iter().find(|(_, t)| {
                    schema
                        .sharding_column(t)
                        .is_some_and(|c| c.eq_ignore_ascii_case(col))
                });
                if let Some((_, t)) = table {
                    return Err(Denial::new(
                        command,
                        Some(t),
                        format!("the statement changes {col}, the workspace a row belongs to"),
                    ));
                }
            }
        }
    }
    let kind = match command {
        "UPDATE" => StatementKind::Update,
        "DELETE" => StatementKind::Delete,
        _ => StatementKind::Select,
    };
    let (_, route) = untagged_route(text, body, toks, &tables, schema, write, kind);
    route_within(command, route, bound).map_err(|mut d| {
        if d.table.is_none() {
            // Name the first sharded table, as a server names the table it refuses.
            d.table = used
                .iter()
                .find(|(_, t)| schema.sharding_column(t).is_some() || schema.is_reference(t))
                .map(|(_, t)| t.clone());
        }
        d
    })
}

fn route_within(command: &'static str, route: Route, bound: &[u64]) -> Result<(), Denial> {
    match route {
        Route::AnyShard => Ok(()),
        Route::Workspaces(ids) => check_ids(command, bound, &ids),
        Route::AllShards => Err(Denial::new(
            command,
            None,
            "the statement writes a reference table, shared by every workspace",
        )),
        Route::MissingWorkspace { table, column } => Err(Denial::new(
            command,
            Some(&table),
            format!(
                "every use of the table must be limited to the user's workspaces by its own \
                 condition `{column} = <id>` (or `{column} IN (...)`); a comment tag is not enough"
            ),
        )),
        Route::WorkspaceRange { table, column, .. } => Err(Denial::new(
            command,
            Some(&table),
            format!(
                "a range of `{column}` values is not proof that every row is one of the user's \
                 workspaces; name them with `{column} = <id>` (or `{column} IN (...)`)"
            ),
        )),
        Route::Unroutable(msg) => Err(Denial::new(command, None, msg)),
        Route::LoadDataUnpinned { table } => Err(Denial::new(
            command,
            Some(&table),
            "LOAD DATA rows are not checked for their workspace",
        )),
    }
}

/// INSERT / REPLACE: literal rows, every one in the user's workspaces.
fn insert(
    text: &str,
    toks: &[Token],
    schema: &dyn ShardingSchema,
    bound: &[u64],
) -> Result<(), Denial> {
    const COMMAND: &str = "INSERT";
    let tables = tables::table_names(text, toks, false);
    let target = tables.first().map(|t| t.name.to_string());
    if toks.iter().any(|t| t.is_kw(text, "SELECT")) {
        return Err(Denial::new(
            COMMAND,
            target.as_deref(),
            "the rows of INSERT ... SELECT (or a subquery in the values) cannot be checked \
             for their workspace; insert literal rows",
        ));
    }
    let (shape, route) = insert::plan_insert(text, toks, 0..text.len(), schema, None);
    if let Some(t) = &target {
        if let Some(col) = schema.sharding_column(t) {
            // `ON DUPLICATE KEY UPDATE workspace_id = ...` moves the existing row.
            let suffix = text.get(shape.suffix.clone()).unwrap_or("");
            let stoks = lex::lex(suffix).tokens;
            let moves = stoks.windows(2).any(|w| {
                w[0].is_ident()
                    && w[0].ident(suffix).eq_ignore_ascii_case(col)
                    && w[1].is_punct(b'=')
            });
            if moves {
                return Err(Denial::new(
                    COMMAND,
                    Some(t),
                    format!("the statement changes {col}, the workspace a row belongs to"),
                ));
            }
        }
    }
    match route {
        InsertRoute::Done(Route::AnyShard) => {
            check_tables(COMMAND, &relations(None, &tables), schema)
        }
        InsertRoute::Done(r) => route_within(COMMAND, r, bound).map_err(|mut d| {
            d.table = d.table.or(target);
            d
        }),
        InsertRoute::Select(_) | InsertRoute::Fallback => Err(Denial::new(
            COMMAND,
            target.as_deref(),
            "shardgate could not read this INSERT's rows, so it cannot prove that they stay \
             in the user's workspaces",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `messages` and `channels` sharded by `workspace_id`, `plans` a reference table;
    /// anything else unknown.
    struct Schema;

    impl ShardingSchema for Schema {
        fn is_sharded(&self) -> bool {
            true
        }
        fn sharding_column(&self, table: &str) -> Option<&str> {
            matches!(table, "messages" | "channels").then_some("workspace_id")
        }
        fn is_reference(&self, table: &str) -> bool {
            table == "plans"
        }
    }

    const BOUND: &[u64] = &[42];

    fn check(sql: &str) -> Result<(), Denial> {
        confine(sql, 0..sql.len(), &Schema, BOUND)
    }

    #[test]
    fn statements_pinned_to_the_users_workspace_pass() {
        for sql in [
            "SELECT * FROM messages WHERE workspace_id = 42",
            "SELECT * FROM messages WHERE workspace_id IN (42) AND id > 3 ORDER BY id LIMIT 5",
            "/*workspace_id:42*/ SELECT * FROM messages WHERE workspace_id = 42",
            "SELECT m.* FROM messages m JOIN channels c ON c.id = m.channel_id \
             WHERE m.workspace_id = 42 AND c.workspace_id = 42",
            "SELECT * FROM messages WHERE workspace_id = 42 AND channel_id IN \
             (SELECT id FROM channels WHERE workspace_id = 42)",
            "SELECT body FROM messages WHERE workspace_id = 42 UNION \
             SELECT name FROM channels WHERE workspace_id = 42",
            "SELECT p.name FROM plans p",
            "SELECT 1",
            "UPDATE messages SET body = 'x' WHERE workspace_id = 42 AND id = 1",
            "DELETE FROM messages WHERE workspace_id = 42 AND id = 1",
            "INSERT INTO messages (workspace_id, body) VALUES (42, 'a'), (42, 'b')",
            "INSERT INTO messages (workspace_id, body) VALUES (42, 'a') \
             ON DUPLICATE KEY UPDATE body = VALUES(body)",
            "EXPLAIN SELECT * FROM messages WHERE workspace_id = 42",
            "SELECT * FROM information_schema.TABLES",
            "BEGIN",
            "COMMIT",
            "SET NAMES utf8mb4",
            "SHOW TABLES",
            "DO 1",
        ] {
            assert_eq!(check(sql), Ok(()), "{sql}");
        }
    }

    #[test]
    fn statements_that_leave_the_workspace_are_refused() {
        for (sql, needle) in [
            ("SELECT * FROM messages WHERE workspace_id = 9", "workspace 9"),
            ("SELECT * FROM messages WHERE workspace_id IN (42, 9)", "workspace 9"),
            ("/*workspace_id:42*/ SELECT * FROM messages", "a comment tag is not enough"),
            ("SELECT * FROM messages", "workspace_id = <id>"),
            ("SELECT * FROM messages WHERE workspace_id = 42 OR 1 = 1", "workspace_id = <id>"),
            (
                "SELECT * FROM messages m JOIN channels c ON c.id = m.channel_id \
                 WHERE m.workspace_id = 42",
                "workspace_id = <id>",
            ),
            (
                "SELECT * FROM messages WHERE workspace_id = 42 AND channel_id IN \
                 (SELECT id FROM channels)",
                "workspace_id = <id>",
            ),
            (
                "SELECT body FROM messages WHERE workspace_id = 42 UNION \
                 SELECT body FROM messages WHERE workspace_id = 9",
                "",
            ),
            ("SELECT * FROM audit_log", "neither sharded"),
            ("UPDATE messages SET workspace_id = 9 WHERE workspace_id = 42", "changes workspace_id"),
            ("UPDATE plans SET name = 'x'", "reference table"),
            ("DELETE FROM messages", "workspace_id = <id>"),
            ("INSERT INTO messages (workspace_id, body) VALUES (42, 'a'), (9, 'b')", "workspace 9"),
            ("INSERT INTO messages (body) VALUES ('a')", "workspace_id"),
            (
                "INSERT INTO messages (workspace_id, body) SELECT 42, body FROM messages WHERE workspace_id = 9",
                "INSERT ... SELECT",
            ),
            (
                "INSERT INTO messages (workspace_id, body) VALUES (42, 'a') \
                 ON DUPLICATE KEY UPDATE workspace_id = 9",
                "changes workspace_id",
            ),
            ("INSERT INTO plans (name) VALUES ('x')", "reference table"),
            ("EXPLAIN SELECT * FROM messages", "workspace_id = <id>"),
            ("ALTER TABLE messages ADD COLUMN x INT", "schema change"),
            ("CREATE TEMPORARY TABLE t (a INT)", "temporary tables"),
            ("CALL cleanup()", "stored procedure"),
            ("HANDLER messages OPEN", "HANDLER"),
            ("PREPARE s FROM 'SELECT 1'", "prepared"),
            ("SET @n = (SELECT COUNT(*) FROM messages)", "run the SELECT on its own"),
            ("LOCK TABLES messages READ", "as a whole"),
            ("DO (SELECT COUNT(*) FROM messages)", "run the SELECT on its own"),
        ] {
            match check(sql) {
                Ok(()) => panic!("{sql}: passed"),
                Err(d) => assert!(d.reason.contains(needle), "{sql}: {d:?}"),
            }
        }
    }

    #[test]
    fn qualifiers_are_found_in_every_table_position() {
        let q = |sql: &str| qualified_schemas(sql, 0..sql.len());
        assert_eq!(q("SELECT * FROM messages"), Vec::<String>::new());
        assert_eq!(q("SELECT * FROM crm.accounts"), vec!["crm"]);
        assert_eq!(
            q("SELECT * FROM (SELECT 1) x, crm.accounts a"),
            vec!["crm"],
            "after a derived table, where the token scan stops"
        );
        assert_eq!(q("SELECT crm.accounts.id FROM accounts"), vec!["crm"]);
        assert_eq!(
            q("SELECT * FROM messages m WHERE m.id IN (SELECT id FROM `other`.t)"),
            vec!["other"]
        );
        assert_eq!(q("SELECT m.id FROM messages m"), Vec::<String>::new());
        assert_eq!(
            q("SELECT m.body, p.name FROM messages m JOIN plans p ON p.id = 1"),
            Vec::<String>::new(),
            "`ON p.id` is a join condition, not a table"
        );
        assert_eq!(q("CREATE INDEX i ON crm.accounts (id)"), vec!["crm"]);
    }
}
