//! Which strategy a DDL statement needs, decided by what the change is (never by table
//! size): `copy` for everything MariaDB 10.11 cannot provably do with
//! `ALGORITHM=INSTANT`.

use super::Strategy;

/// An `ALTER TABLE` split into its parts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlterTable {
    /// Database qualifier, if the statement has one.
    pub database: Option<String>,
    /// Table name (unquoted).
    pub table: String,
    /// Everything after the table name: the alter specifications, as written.
    pub spec: String,
}

/// Parses `ALTER [ONLINE] [IGNORE] TABLE [db.]t spec` (also `CREATE [UNIQUE] INDEX i ON
/// t (...)` and `DROP INDEX i ON t`, as their ALTER TABLE equivalents).
pub fn parse_alter(sql: &str) -> Option<AlterTable> {
    let _ = sql;
    todo!("strategy::parse_alter")
}

/// The strategy for an ALTER TABLE specification.
pub fn choose(alter: &AlterTable) -> Strategy {
    let _ = alter;
    todo!("strategy::choose")
}
