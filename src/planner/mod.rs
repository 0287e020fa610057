//! The planner: classifies a statement and finds where it must go, from its text alone
//! plus the sharding facts of the keyspace it runs in.
//!
//! It never rewrites what it forwards: the router sends the client's bytes unchanged,
//! except when a multi-row INSERT spans shards and is split (using the byte spans here).

use std::ops::Range;

/// What the planner needs to know about the keyspace a statement runs in.
pub trait ShardingSchema {
    /// Whether the keyspace is sharded at all (unsharded: everything passes through).
    fn is_sharded(&self) -> bool;
    /// The sharding column of `table`, if it is a sharded table.
    fn sharding_column(&self, table: &str) -> Option<&str>;
    /// Whether `table` is a reference table.
    fn is_reference(&self, table: &str) -> bool;
}

/// A query's plan: one entry per statement (several with `CLIENT_MULTI_STATEMENTS`).
#[derive(Debug, Clone, PartialEq)]
pub struct Plan {
    /// The statements in order.
    pub statements: Vec<StatementPlan>,
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
    /// It leaves state on its backend connection that later statements may depend on
    /// (temporary tables, `LOCK TABLES`, `GET_LOCK()`, `@var :=` in a query), so the
    /// session must keep that connection.
    pub pins_connection: bool,
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
    Workspaces(Vec<u64>),
    /// Every shard in turn: DDL on a sharded keyspace, writes to reference tables.
    AllShards,
    /// A sharded table is used without naming its workspace.
    MissingWorkspace {
        /// The table.
        table: String,
        /// Its sharding column.
        column: String,
    },
    /// The statement cannot be routed for another reason (message for the client).
    Unroutable(String),
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

/// Plans `sql` (the exact bytes of a COM_QUERY, as UTF-8) in a keyspace described by `schema`.
pub fn plan(sql: &str, schema: &dyn ShardingSchema) -> Plan {
    let _ = schema;
    Plan {
        statements: vec![StatementPlan {
            span: 0..sql.len(),
            kind: StatementKind::Other,
            route: Route::AnyShard,
            qualified_schema: None,
            pins_connection: false,
        }],
    }
}
