//! What a session's user may reach, checked before a query is routed: protected
//! schemas, character sets the lexer cannot read safely, and a scoped user's keyspaces
//! and workspaces (`docs/security.md`).

use super::Session;
use crate::error::ProxyError;
use crate::planner;
use crate::router::{self, DbContext};
use crate::vschema::VSchema;

impl Session {
    /// For a non-admin user whose session's database is a protected schema (the
    /// handshake named it: `USE` and `COM_INIT_DB` refuse it), the error every query
    /// gets.
    pub(super) fn protected_database(&self) -> Option<ProxyError> {
        let db = match &self.ctx {
            DbContext::PassThrough(db) | DbContext::Workspace { database: db, .. } => db,
            DbContext::Keyspace(ks) => ks,
            DbContext::None => return None,
        };
        let what = planner::protected_schema(db).filter(|_| !self.admin)?;
        Some(ProxyError::admin_statement(&self.user, what))
    }

    /// For a user with a scope: the error for the first statement of `plan` that names
    /// a database outside its keyspaces, or (for a workspace-bound user) that is not
    /// confined to its workspaces (`planner::confine`). A query with such a statement
    /// runs none of its statements.
    pub(super) fn out_of_scope(
        &self,
        vs: &VSchema,
        plan: &planner::Plan,
        text: &str,
    ) -> Option<ProxyError> {
        for stmt in &plan.statements {
            for db in planner::qualified_schemas(text, stmt.span.clone()) {
                if !self.scope.allows_database(vs, &db) {
                    return Some(ProxyError::db_access_denied(&self.user, &db));
                }
            }
            let Some(workspaces) = self.scope.workspaces() else {
                continue;
            };
            if stmt
                .qualified_schema
                .as_deref()
                .is_some_and(|q| vs.workspace_database(q).is_some())
                || matches!(self.ctx, DbContext::Workspace { .. })
            {
                // One workspace's own database, already checked against the scope.
                continue;
            }
            let Some(ks) = router::statement_keyspace(vs, &self.ctx, stmt) else {
                continue;
            };
            if !ks.sharded || ks.tenancy != crate::vschema::Tenancy::SharedTables {
                continue;
            }
            if let Err(d) = planner::confine(text, stmt.span.clone(), ks, workspaces) {
                let why = format!(
                    "user '{}' is bound to {} of keyspace '{}', and {}",
                    self.user,
                    self.scope.describe_workspaces(),
                    ks.name,
                    d.reason
                );
                return Some(ProxyError::out_of_scope(
                    &self.user,
                    d.command,
                    d.table.as_deref(),
                    &why,
                ));
            }
        }
        None
    }

    /// For a non-admin user who logged in with a character set in which a character
    /// may end with a backslash byte, the error every query gets: shardgate's lexer
    /// would not read its strings as the server does (`SET NAMES` to such a character
    /// set is refused by its plan).
    pub(super) fn unsafe_charset(&self) -> Option<ProxyError> {
        if self.admin || !planner::backslash_unsafe_collation(self.key.collation) {
            return None;
        }
        Some(ProxyError::admin_statement(
            &self.user,
            "queries in a client character set whose characters may end in a backslash byte \
             (big5, cp932, gbk, gb18030, sjis); connect with utf8mb4",
        ))
    }
}
