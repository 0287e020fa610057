//! The planner: classifies a statement and finds where it must go, from its text alone
//! plus the sharding facts of the keyspace it runs in.
//!
//! It never rewrites what it forwards: the router sends the client's bytes unchanged,
//! except when a multi-row INSERT spans shards and is split (using the byte spans here).
//!
//! Sessions plan through [`PlanCache`] (`cache`), which answers exactly what [`plan`]
//! would, from a template when the statement's shape was planned before.

use std::ops::Range;

use sqlparser::ast::Statement;
use sqlparser::dialect::MySqlDialect;
use sqlparser::parser::Parser;

pub mod cache;
mod cache_key;
#[cfg(test)]
mod cache_key_tests;
#[cfg(test)]
mod cache_tests;
mod classify;
mod confine;
mod effects;
mod fallback;
mod insert;
pub(crate) mod lex;
mod load;
mod privilege;
mod query;
mod range;
#[cfg(test)]
mod range_tests;
mod tables;
mod tag;
#[cfg(test)]
mod tests;
mod text;

pub use cache::{PlanCache, PlanCacheStats, SchemaKey};
pub use classify::may_mention_identity;
use classify::Head;
pub use confine::{confine, qualified_schemas, Denial};
pub use effects::{Effects, Reserve};
use insert::InsertRoute;
use lex::Token;
pub use privilege::{backslash_unsafe_collation, protected_schema, Privilege};
pub use tables::first_table;
use tables::TableName;
pub use text::sql_text;

/// What the planner needs to know about the keyspace a statement runs in.
pub trait ShardingSchema {
    /// Whether the keyspace is sharded at all (unsharded: everything passes through).
    fn is_sharded(&self) -> bool;
    /// The sharding column of `table`, if it is a sharded table.
    fn sharding_column(&self, table: &str) -> Option<&str>;
    /// Whether `table` is a reference table.
    fn is_reference(&self, table: &str) -> bool;
    /// Whether `table` is named in the vschema itself (not only covered by a default
    /// sharding column). Text the parser cannot read counts a word outside a table
    /// position as a table only when it is listed, so a typo such as `SELEC 1` is not
    /// mistaken for a sharded table.
    fn is_listed(&self, table: &str) -> bool {
        let _ = table;
        true
    }
}

/// The workspace ids a statement names (most name one: no allocation for up to two).
pub type Ids = smallvec::SmallVec<[u64; 2]>;

/// The statements of a query.
pub type Statements = Vec<StatementPlan>;

/// A query's plan: one entry per statement (several with `CLIENT_MULTI_STATEMENTS`).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The statements in order.
    pub statements: Statements,
    /// What the query needs from its user: [`Privilege::Admin`] when any of its
    /// statements does (the session then refuses the whole query for other users).
    pub privilege: Privilege,
}

/// The plan of one statement.
#[derive(Debug, Clone, PartialEq)]
pub struct StatementPlan {
    /// Byte range of this statement in the query text.
    pub span: Range<usize>,
    /// What it is.
    pub kind: StatementKind,
    /// Where it must go.
    pub route: Route,
    /// The keyspace it names explicitly, when every table it qualifies names the same
    /// schema (`app.messages`); the router uses it instead of the session's keyspace.
    pub qualified_schema: Option<String>,
    /// What it does to its backend connection beyond its result: state that reserves
    /// the connection for the session, questions about the previous statement.
    pub effects: Effects,
}

/// Where a statement goes.
#[derive(Debug, Clone, PartialEq)]
pub enum Route {
    /// The keyspace is unsharded, or the statement touches no sharded or reference
    /// table (`SELECT 1`, `SELECT @@version`, `SHOW TABLES`, a reference-table read):
    /// any one shard can answer it.
    AnyShard,
    /// These workspaces' shards (deduplicated, in order of first appearance). For an
    /// INSERT, `insert_rows` says which row belongs to which workspace.
    Workspaces(Ids),
    /// Every shard in turn: DDL on a sharded keyspace, writes to reference tables.
    AllShards,
    /// A sharded table is used without naming its workspace.
    MissingWorkspace {
        /// The table.
        table: String,
        /// Its sharding column.
        column: String,
    },
    /// The one sharded table of the statement is limited to a range of workspace ids
    /// (`C BETWEEN a AND b`, `C >= a AND C < b`, ...) and by no equality: the router
    /// sends it to the shard that holds every id of the range, if one does (a numeric
    /// vindex, no pin inside pointing elsewhere), else refuses it.
    WorkspaceRange {
        /// The table.
        table: String,
        /// Its sharding column.
        column: String,
        /// The lowest id of the range.
        low: u64,
        /// The highest id of the range; below `low` when the range is empty.
        high: u64,
    },
    /// The statement cannot be routed for another reason (message for the client).
    Unroutable(String),
    /// `LOAD DATA` into a sharded table without a workspace tag: shardgate relays the
    /// file to one shard and never splits its rows (see `load`).
    LoadDataUnpinned {
        /// The table.
        table: String,
    },
}

/// Statement classes the session and router treat differently.
#[derive(Debug, Clone, PartialEq)]
pub enum StatementKind {
    /// SELECT (including WITH ... SELECT, and SELECT ... FOR UPDATE).
    Select,
    /// INSERT or REPLACE.
    Insert(InsertShape),
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
    /// Schema change.
    Ddl(DdlKind),
    /// BEGIN / START TRANSACTION (any options).
    Begin,
    /// COMMIT (any form).
    Commit,
    /// ROLLBACK (not ROLLBACK TO SAVEPOINT, which is `Other`).
    Rollback,
    /// `USE db`.
    Use(String),
    /// `SET autocommit = 0|1|ON|OFF` (alone in its SET).
    SetAutocommit(bool),
    /// Any other SET that changes session state (`SET NAMES`, `SET sql_mode`,
    /// `SET @x = 1`, `SET SESSION ...`, several in one): replayed on every backend
    /// connection that later serves the session.
    SetSession,
    /// `SET TRANSACTION ...` (applies to the next transaction only; forwarded).
    SetTransaction,
    /// SHOW / DESCRIBE / EXPLAIN / HELP.
    Show,
    /// Anything else (including text the parser could not understand).
    Other,
}

impl StatementKind {
    /// A statement the session sends as it is, with nothing of its own to do first
    /// (no transaction bookkeeping, `USE`, `SET` or DDL policy).
    pub fn is_plain(&self) -> bool {
        matches!(
            self,
            StatementKind::Select
                | StatementKind::Insert(_)
                | StatementKind::Update
                | StatementKind::Delete
                | StatementKind::Show
                | StatementKind::Other
        )
    }
}

/// The shape of an INSERT/REPLACE ... VALUES, for splitting across shards.
#[derive(Debug, Clone, PartialEq)]
pub struct InsertShape {
    /// Bytes before the first row: `INSERT INTO t (a, b) VALUES `.
    pub prefix: Range<usize>,
    /// Each row's bytes `( ... )` and its workspace id (None when the table is not sharded).
    pub rows: Vec<(Range<usize>, Option<u64>)>,
    /// Bytes after the last row (`ON DUPLICATE KEY UPDATE ...`), possibly empty.
    pub suffix: Range<usize>,
}

/// Kinds of DDL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DdlKind {
    /// CREATE TABLE (not TEMPORARY: that is `Other` with `pins_connection`).
    CreateTable,
    /// CREATE DATABASE / SCHEMA.
    CreateDatabase,
    /// DROP DATABASE / SCHEMA.
    DropDatabase,
    /// DROP TABLE.
    DropTable,
    /// ALTER TABLE.
    AlterTable,
    /// CREATE INDEX.
    CreateIndex,
    /// DROP INDEX.
    DropIndex,
    /// RENAME TABLE.
    RenameTable,
    /// TRUNCATE TABLE.
    Truncate,
    /// CREATE/DROP VIEW, TRIGGER, PROCEDURE, ...
    Other,
}

/// Plans `sql` (the text of a COM_QUERY) in a keyspace described by `schema`.
///
/// Every span in the plan is a byte range of `sql`. Make `sql` from the raw bytes with
/// [`sql_text`], never with a lossy conversion: then the spans are ranges of the raw
/// bytes too, which is what the session slices.
///
/// The order, for each statement: its first keywords (session statements, SHOW, DDL) →
/// a workspace tag in a `/* */` comment → the sharding column in INSERT values or in the
/// WHERE of the parsed statement → a token-level fallback when the parser fails. See
/// `docs/routing.md`.
pub fn plan(sql: &str, schema: &dyn ShardingSchema) -> Plan {
    let lexed = lex::lex(sql);
    let text_tag = TagScan::of(sql, lexed.comments.iter());
    let mut statements = Vec::new();
    let mut start_tok = 0;
    let mut region_start = 0;
    let toks = &lexed.tokens;
    for i in 0..=toks.len() {
        let (region_end, next_start) = match toks.get(i) {
            Some(t) if t.is_punct(b';') => (t.start, t.end),
            Some(_) => continue,
            None => (sql.len(), sql.len()),
        };
        if i > start_tok {
            let span = trimmed(sql, region_start..region_end);
            statements.push(plan_statement(
                sql,
                &toks[start_tok..i],
                span,
                &lexed.comments,
                text_tag,
                schema,
            ));
        }
        start_tok = i + 1;
        region_start = next_start;
    }
    match statements.len() {
        0 => statements.push(StatementPlan {
            span: 0..sql.len(),
            kind: StatementKind::Other,
            route: Route::AnyShard,
            qualified_schema: None,
            effects: Effects::default(),
        }),
        1 => {
            // A lone statement owns the whole text (comments and a trailing `;` too).
            let whole = 0..sql.len();
            let only = &mut statements[0];
            if let StatementKind::Insert(shape) = &mut only.kind {
                if shape.rows.is_empty() {
                    shape.prefix = whole.clone();
                    shape.suffix = whole.end..whole.end;
                } else {
                    shape.prefix.start = 0;
                    shape.suffix.end = whole.end;
                }
            }
            only.span = whole;
        }
        _ => {}
    }
    let privilege = privilege::of_query(sql, toks);
    Plan {
        statements,
        privilege,
    }
}

/// `r` without the whitespace around it, the lexer's whitespace only: `str::trim`
/// would also cut a Unicode space such as U+00A0, which MySQL and the lexer read as
/// part of a word, so the span would forward a different statement than was planned.
fn trimmed(sql: &str, r: Range<usize>) -> Range<usize> {
    let Some(bytes) = sql.as_bytes().get(r.clone()) else {
        return r.start..r.start;
    };
    let lead = bytes.iter().take_while(|&&c| lex::is_space(c)).count();
    let trail = bytes.get(lead..).map_or(0, |rest| {
        rest.iter().rev().take_while(|&&c| lex::is_space(c)).count()
    });
    r.start + lead..r.end - trail
}

/// The workspace tags found in some comments.
#[derive(Debug, Clone, Copy, PartialEq)]
enum TagScan {
    None,
    One(u64),
    Conflicting,
}

impl TagScan {
    fn of<'c>(sql: &str, comments: impl Iterator<Item = &'c Range<usize>>) -> TagScan {
        let mut found = TagScan::None;
        for c in comments {
            let Some(id) = sql.get(c.clone()).and_then(tag::workspace_in_comment) else {
                continue;
            };
            found = match found {
                TagScan::None => TagScan::One(id),
                TagScan::One(old) if old == id => found,
                _ => return TagScan::Conflicting,
            };
        }
        found
    }
}

fn missing(table: &str, column: &str) -> Route {
    Route::MissingWorkspace {
        table: table.to_owned(),
        column: column.to_owned(),
    }
}

fn plan_statement(
    sql: &str,
    toks: &[Token],
    span: Range<usize>,
    comments: &[Range<usize>],
    text_tag: TagScan,
    schema: &dyn ShardingSchema,
) -> StatementPlan {
    let head = classify::classify(sql, toks);
    let ddl = matches!(head, Head::Kind(StatementKind::Ddl(_)));
    let tables = tables::table_names(sql, toks, ddl);
    let qualified_schema = tables::common_schema(&tables);
    let effects = effects::effects(sql, toks, &head);
    // A tag in this statement's comments wins; else one tag for the whole text.
    let own = comments
        .iter()
        .filter(|c| c.start >= span.start && c.end <= span.end);
    let tag = match TagScan::of(sql, own) {
        TagScan::None => text_tag,
        scan => scan,
    };
    let sharded = schema.is_sharded();
    let tag_id = match tag {
        TagScan::One(id) => Some(id),
        _ => None,
    };
    let (kind, route) = match head {
        Head::Insert => {
            let (shape, route) = insert::plan_insert(sql, toks, span.clone(), schema, tag_id);
            let route = match route {
                InsertRoute::Done(r) => r,
                InsertRoute::Select(at) => {
                    dml_route(sql, &toks[at..], &tables, schema, false, tag).1
                }
                InsertRoute::Fallback => fallback::route(sql, toks, &tables, schema, true, tag_id),
            };
            (StatementKind::Insert(shape), conflict_check(tag, route))
        }
        Head::Kind(
            kind @ (StatementKind::Select | StatementKind::Update | StatementKind::Delete),
        ) if sharded => {
            let write = kind != StatementKind::Select;
            dml_route(sql, toks, &tables, schema, write, tag)
        }
        Head::Kind(StatementKind::Ddl(k)) if sharded => (StatementKind::Ddl(k), Route::AllShards),
        Head::Kind(StatementKind::Other) if sharded && load::is_load(sql, toks) => {
            (StatementKind::Other, load::route(sql, toks, schema, tag))
        }
        Head::Kind(StatementKind::Other) | Head::Lock if sharded => (
            StatementKind::Other,
            fallback::route(sql, toks, &tables, schema, false, tag_id),
        ),
        Head::Kind(kind) => (kind, Route::AnyShard),
        Head::Lock => (StatementKind::Other, Route::AnyShard),
        Head::Show { inner } => {
            // EXPLAIN of a pinned statement runs where that statement would.
            let route = match inner {
                Some(at) if sharded => {
                    let inner_tables = tables::table_names(sql, &toks[at..], false);
                    match dml_route(sql, &toks[at..], &inner_tables, schema, false, tag).1 {
                        r @ Route::Workspaces(_) => r,
                        _ => Route::AnyShard,
                    }
                }
                _ => Route::AnyShard,
            };
            (StatementKind::Show, route)
        }
        Head::Temporary => (
            StatementKind::Other,
            match tag {
                TagScan::One(id) if sharded => Route::Workspaces(smallvec::smallvec![id]),
                _ => Route::AnyShard,
            },
        ),
    };
    StatementPlan {
        span,
        kind,
        route,
        qualified_schema,
        effects,
    }
}

/// No join, union or subquery: what the token-level pin finder can fully understand.
fn is_simple(sql: &str, toks: &[Token]) -> bool {
    let mut selects = 0;
    for t in toks {
        if t.is_kw(sql, "SELECT") {
            selects += 1;
        } else if t.is_kw(sql, "JOIN")
            || t.is_kw(sql, "UNION")
            || t.is_kw(sql, "EXCEPT")
            || t.is_kw(sql, "INTERSECT")
            || t.is_kw(sql, "WITH")
            || t.is_kw(sql, "EXISTS")
        {
            return false;
        }
    }
    selects <= 1
}

fn conflicting_tags() -> Route {
    Route::Unroutable("the query carries two different workspace_id tags".to_owned())
}

/// Parses one statement, guarding the proxy against a panic inside the parser.
fn parse_one(text: &str) -> Option<Statement> {
    let parsed = std::panic::catch_unwind(|| Parser::parse_sql(&MySqlDialect {}, text)).ok()?;
    let mut statements = parsed.ok()?;
    if statements.len() == 1 {
        statements.pop()
    } else {
        None
    }
}

/// Routes a SELECT / UPDATE / DELETE in a sharded keyspace.
fn dml_route(
    sql: &str,
    toks: &[Token],
    tables: &[TableName<'_>],
    schema: &dyn ShardingSchema,
    write: bool,
    tag: TagScan,
) -> (StatementKind, Route) {
    let default_kind = if !write {
        StatementKind::Select
    } else if toks.first().is_some_and(|t| t.is_kw(sql, "UPDATE")) {
        StatementKind::Update
    } else {
        StatementKind::Delete
    };
    let (Some(first), Some(last)) = (toks.first(), toks.last()) else {
        return (default_kind, Route::AnyShard);
    };
    let text = sql.get(first.start..last.end).unwrap_or("");
    if let TagScan::One(id) = tag {
        // The tag routes without a parse; only what cannot go to one workspace is kept.
        let route = tagged_route(sql, text, toks, tables, schema, write, id);
        if matches!(route, Route::Workspaces(_)) && names_sharding_column(sql, toks, tables, schema)
        {
            // A filter on the sharding column that names another workspace disagrees
            // with the tag: refuse rather than read or write the wrong workspace.
            let (_, by_filter) =
                untagged_route(sql, text, toks, tables, schema, write, default_kind.clone());
            if let Some(e) = tag_disagreement(id, &by_filter, sql, toks, tables, schema) {
                return (default_kind, e);
            }
        }
        return (default_kind, route);
    }
    let (kind, route) = untagged_route(sql, text, toks, tables, schema, write, default_kind);
    (kind, conflict_check(tag, route))
}

/// Whether a token names the sharding column of one of `tables`: only then can a tagged
/// statement's conditions name a workspace (and the tagged path skip a parse otherwise).
fn names_sharding_column(
    sql: &str,
    toks: &[Token],
    tables: &[TableName<'_>],
    schema: &dyn ShardingSchema,
) -> bool {
    let columns: Vec<&str> = tables
        .iter()
        .filter_map(|t| schema.sharding_column(&t.name))
        .collect();
    !columns.is_empty()
        && toks.iter().any(|t| {
            t.is_ident() && {
                let name = t.ident(sql);
                columns.iter().any(|c| c.eq_ignore_ascii_case(&name))
            }
        })
}

/// Routes a SELECT / UPDATE / DELETE by its own conditions, ignoring any tag: the
/// token scan for simple statements, else the parse tree, else the token fallback.
fn untagged_route(
    sql: &str,
    text: &str,
    toks: &[Token],
    tables: &[TableName<'_>],
    schema: &dyn ShardingSchema,
    write: bool,
    default_kind: StatementKind,
) -> (StatementKind, Route) {
    if is_simple(sql, toks) {
        // The common case, a single-table statement whose sharded table is pinned by a
        // top-level `=`/`IN` conjunct, needs no parse tree: the token scan proves it
        // (no OR, one SELECT, one sharded table). Anything else is parsed.
        if let Route::Workspaces(ids) = fallback::route(sql, toks, tables, schema, write, None) {
            return (default_kind, Route::Workspaces(ids));
        }
    }
    let Some(stmt) = parse_one(text) else {
        return (
            default_kind,
            fallback::route(sql, toks, tables, schema, write, None),
        );
    };
    let kind = match &stmt {
        Statement::Query(_) => StatementKind::Select,
        Statement::Update(_) => StatementKind::Update,
        Statement::Delete(_) => StatementKind::Delete,
        // Parsed as something the tree walk has no model of: stay on the safe side.
        _ => {
            return (
                default_kind,
                fallback::route(sql, toks, tables, schema, write, None),
            )
        }
    };
    let analysis = query::analyze(&stmt, schema);
    (kind, decide(&analysis, tables, schema))
}

/// The error for a statement tagged `tag` whose conditions pin other workspaces (an
/// `IN` list with the tag's workspace and others disagrees too).
fn tag_disagreement(
    tag: u64,
    by_filter: &Route,
    sql: &str,
    toks: &[Token],
    tables: &[TableName<'_>],
    schema: &dyn ShardingSchema,
) -> Option<Route> {
    let Route::Workspaces(ids) = by_filter else {
        return None;
    };
    if ids.as_slice() == [tag] {
        return None;
    }
    // The sharded table the statement names first, for the message.
    let names = tables
        .iter()
        .map(|t| t.name.clone())
        .chain(toks.iter().filter(|t| t.is_ident()).map(|t| t.ident(sql)));
    let (table, column) = names
        .into_iter()
        .find_map(|n| {
            schema
                .sharding_column(&n)
                .map(|c| (n.into_owned(), c.to_owned()))
        })
        .unwrap_or_else(|| ("the table".to_owned(), "its sharding column".to_owned()));
    let list: Vec<String> = ids.iter().map(u64::to_string).collect();
    let filter = match list.as_slice() {
        [one] => format!("{table}.{column} = {one}"),
        _ => format!("{table}.{column} IN ({})", list.join(", ")),
    };
    Some(Route::Unroutable(format!(
        "the query is tagged workspace_id:{tag} but its conditions name {filter}; \
         the tag and the WHERE clause must name the same single workspace"
    )))
}

fn conflict_check(tag: TagScan, route: Route) -> Route {
    match (tag, route) {
        (TagScan::Conflicting, Route::Workspaces(_) | Route::MissingWorkspace { .. }) => {
            conflicting_tags()
        }
        (_, r) => r,
    }
}

fn tagged_route(
    sql: &str,
    text: &str,
    toks: &[Token],
    tables: &[TableName<'_>],
    schema: &dyn ShardingSchema,
    write: bool,
    id: u64,
) -> Route {
    let names = |f: &dyn Fn(&str) -> bool| toks.iter().any(|t| t.is_ident() && f(&t.ident(sql)));
    let names_sharded = names(&|n| schema.sharding_column(n).is_some());
    let names_reference = names(&|n| schema.is_reference(n));
    if write && names_sharded && names_reference {
        // Which of the two is written needs the parse tree.
        return match parse_one(text) {
            Some(stmt) if query::analyze(&stmt, schema).writes_reference => {
                Route::Unroutable(reference_with_sharded())
            }
            Some(_) => Route::Workspaces(smallvec::smallvec![id]),
            None => fallback::route(sql, toks, tables, schema, write, Some(id)),
        };
    }
    let writes_reference = write && tables.first().is_some_and(|t| schema.is_reference(&t.name));
    match (names_sharded, writes_reference) {
        (true, _) => Route::Workspaces(smallvec::smallvec![id]),
        (false, true) => Route::AllShards,
        (false, false) => Route::AnyShard,
    }
}

fn reference_with_sharded() -> String {
    "a statement that writes a reference table cannot also use a sharded table".to_owned()
}

/// Turns an analysis into a route, with the token scan as a safety net for tables the
/// tree walk did not reach.
fn decide(a: &query::Analysis, tables: &[TableName<'_>], schema: &dyn ShardingSchema) -> Route {
    if let Some(msg) = &a.unroutable {
        return Route::Unroutable(msg.clone());
    }
    // Every sharded table the tokens show after FROM/JOIN/... must have been seen by the
    // tree walk as often; otherwise it sits somewhere the walk does not look.
    for t in tables.iter().filter(|t| !t.is_system()) {
        let Some(column) = schema.sharding_column(&t.name) else {
            continue;
        };
        let lower = t.name.to_ascii_lowercase();
        if t.schema.is_none() && a.ctes.contains(&lower) {
            continue;
        }
        let in_tokens = tables
            .iter()
            .filter(|o| !o.is_system() && o.name.eq_ignore_ascii_case(&t.name))
            .count();
        let in_tree = a.seen.iter().filter(|s| **s == lower).count();
        if in_tokens > in_tree {
            return missing(&t.name, column);
        }
    }
    if let Some(unpinned) = a.sharded.iter().find(|u| u.workspaces.is_none()) {
        // A range places a statement only when its table is the only sharded use.
        if let (Some((low, high)), [_]) = (unpinned.range, a.sharded.as_slice()) {
            if a.writes_reference {
                return Route::Unroutable(reference_with_sharded());
            }
            return Route::WorkspaceRange {
                table: unpinned.table.clone(),
                column: unpinned.column.clone(),
                low,
                high,
            };
        }
        return missing(&unpinned.table, &unpinned.column);
    }
    let mut sets = a.sharded.iter().filter_map(|u| u.workspaces.as_ref());
    if let Some(first) = sets.next() {
        if a.writes_reference {
            return Route::Unroutable(reference_with_sharded());
        }
        if first.is_empty() {
            return Route::Unroutable(format!(
                "the conditions on {}.{} contradict each other",
                a.sharded[0].table, a.sharded[0].column
            ));
        }
        let same = |s: &Vec<u64>| s.len() == first.len() && s.iter().all(|w| first.contains(w));
        if !sets.all(same) {
            return Route::Unroutable(
                "the sharded tables of this statement are pinned to different workspaces"
                    .to_owned(),
            );
        }
        return Route::Workspaces(first.as_slice().into());
    }
    if a.writes_reference {
        Route::AllShards
    } else {
        Route::AnyShard
    }
}
