//! Who may do what: a user's role, the keyspaces it may use, and the workspaces it is
//! bound to (`docs/security.md#roles-and-scopes`).
//!
//! shardgate reaches every cluster with one backend account, so the backends cannot
//! tell one tenant's user from another: these rules are enforced here, before anything
//! is sent. A user with no `keyspaces` and no `workspaces` in its config pays nothing
//! for them: [`Scope::is_unrestricted`] is checked first.

use crate::vschema::VSchema;

/// What a user may do, beyond reading and writing its own data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    /// DML and reads on its keyspaces; DDL goes through the migration queue.
    App,
    /// Also the migration statements (`SHOW MIGRATIONS`, `ALTER MIGRATION ...`) and
    /// `@@ddl_strategy = 'direct'`.
    Dba,
    /// Everything shardgate offers, including the statements that reach the database
    /// host, the server's accounts or other tenants' sessions.
    Admin,
}

impl Role {
    /// `app`, `dba` or `admin`.
    pub fn parse(s: &str) -> Option<Role> {
        match s.to_ascii_lowercase().as_str() {
            "app" => Some(Role::App),
            "dba" => Some(Role::Dba),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }

    /// The name used in the config and in messages.
    pub fn name(self) -> &'static str {
        match self {
            Role::App => "app",
            Role::Dba => "dba",
            Role::Admin => "admin",
        }
    }

    /// May run the statements that reach the host, the accounts or other sessions.
    pub fn is_admin(self) -> bool {
        self == Role::Admin
    }

    /// May control migrations and run DDL without the copy strategy.
    pub fn runs_migrations(self) -> bool {
        self >= Role::Dba
    }
}

/// The keyspaces a user may use and the workspaces it is bound to; `None` for either
/// means all.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scope {
    keyspaces: Option<Vec<String>>,
    /// Sorted, without repeats.
    workspaces: Option<Vec<u64>>,
}

/// The schema every user may name: it holds only metadata.
const INFORMATION_SCHEMA: &str = "information_schema";

impl Scope {
    /// A scope over `keyspaces` (None: every keyspace) and bound to `workspaces`
    /// (None: not bound).
    pub fn new(keyspaces: Option<Vec<String>>, workspaces: Option<Vec<u64>>) -> Scope {
        Scope {
            keyspaces,
            workspaces: workspaces.map(|mut w| {
                w.sort_unstable();
                w.dedup();
                w
            }),
        }
    }

    /// Every keyspace, every workspace: nothing to check.
    pub fn is_unrestricted(&self) -> bool {
        self.keyspaces.is_none() && self.workspaces.is_none()
    }

    /// The workspaces the user is bound to, if it is bound.
    pub fn workspaces(&self) -> Option<&[u64]> {
        self.workspaces.as_deref()
    }

    /// The keyspaces the user may use, if not all.
    pub fn keyspaces(&self) -> Option<&[String]> {
        self.keyspaces.as_deref()
    }

    /// Whether keyspace `name` is open to the user.
    pub fn allows_keyspace(&self, name: &str) -> bool {
        self.keyspaces
            .as_ref()
            .is_none_or(|ks| ks.iter().any(|k| k == name))
    }

    /// Whether workspace `id` is open to the user.
    pub fn allows_workspace(&self, id: u64) -> bool {
        self.workspaces
            .as_ref()
            .is_none_or(|w| w.binary_search(&id).is_ok())
    }

    /// Whether the user may be in, or qualify tables with, database `db`:
    /// `information_schema` always; a keyspace it may use; a workspace's own database
    /// (`ws_42`) of such a keyspace, for a workspace it may reach; any other database
    /// (served unchanged by the default keyspace's cluster) only without a scope.
    pub fn allows_database(&self, vs: &VSchema, db: &str) -> bool {
        if self.is_unrestricted() || db.eq_ignore_ascii_case(INFORMATION_SCHEMA) {
            return true;
        }
        if vs.keyspace(db).is_some() {
            return self.allows_keyspace(db);
        }
        match vs.workspace_database(db) {
            Some((ks, ws)) => self.allows_keyspace(&ks.name) && self.allows_workspace(ws),
            None => false,
        }
    }

    /// The workspaces as text for messages: `42` or `workspaces 3, 4`.
    pub fn describe_workspaces(&self) -> String {
        match self.workspaces.as_deref() {
            None => "every workspace".to_string(),
            Some([one]) => format!("workspace {one}"),
            Some(many) => {
                let list: Vec<String> = many.iter().take(10).map(u64::to_string).collect();
                let more = if many.len() > 10 { ", ..." } else { "" };
                format!("workspaces {}{more}", list.join(", "))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vschema() -> VSchema {
        VSchema::from_toml_str(
            r#"
            [clusters.c1]
            primary = "127.0.0.1:1"
            user = "u"
            [keyspaces.app]
            sharded = true
            vindex = "xxhash"
            shards = [{ name = "-", cluster = "c1" }]
            [keyspaces.crm]
            cluster = "c1"
            [keyspaces.tenants]
            sharded = true
            vindex = "numeric"
            tenancy = "database_per_workspace"
            database_template = "ws_{id}"
            shards = [{ name = "-", cluster = "c1" }]
            "#,
        )
        .expect("test vschema")
    }

    #[test]
    fn roles_parse_and_order() {
        assert_eq!(Role::parse("DBA"), Some(Role::Dba));
        assert_eq!(Role::parse("root"), None);
        assert!(Role::Admin.runs_migrations() && Role::Dba.runs_migrations());
        assert!(!Role::App.runs_migrations() && !Role::Dba.is_admin());
    }

    #[test]
    fn unrestricted_scope_allows_every_database() {
        let vs = vschema();
        let s = Scope::default();
        assert!(s.is_unrestricted());
        for db in ["app", "crm", "ws_9", "some_other_db", "mysql"] {
            assert!(s.allows_database(&vs, db), "{db}");
        }
    }

    #[test]
    fn keyspaces_and_workspaces_limit_databases() {
        let vs = vschema();
        let s = Scope::new(
            Some(vec!["app".into(), "tenants".into()]),
            Some(vec![9, 3, 9]),
        );
        assert_eq!(s.workspaces(), Some(&[3u64, 9][..]));
        assert!(s.allows_database(&vs, "app"));
        assert!(s.allows_database(&vs, "INFORMATION_SCHEMA"));
        assert!(s.allows_database(&vs, "ws_9"));
        assert!(
            !s.allows_database(&vs, "ws_10"),
            "a workspace it is not bound to"
        );
        assert!(!s.allows_database(&vs, "crm"), "a keyspace not in its list");
        assert!(
            !s.allows_database(&vs, "some_other_db"),
            "a pass-through database"
        );
        assert_eq!(s.describe_workspaces(), "workspaces 3, 9");
        let only_crm = Scope::new(Some(vec!["crm".into()]), None);
        assert!(!only_crm.allows_database(&vs, "ws_9"));
        assert!(only_crm.allows_database(&vs, "crm"));
    }
}
