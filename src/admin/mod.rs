//! shardgate's SQL control surface on its own port, for admin users: parsing of the
//! admin statements ([`parse_admin`]) and their execution.
//!
//! - [`control`]: connections for shardgate's own statements on the clusters, each
//!   operation bounded by a per-cluster deadline and run on all clusters at once.
//! - [`migrations`]: `SHOW MIGRATIONS` and `ALTER MIGRATION` over the migration queue.
//!
//! What the session does with application DDL (queue it, wait for it) is
//! [`crate::ddl`]'s.

pub mod control;
pub mod migrations;
pub mod pins;
pub mod traffic;
pub mod vschema;
pub mod workspaces;

pub use control::{ClusterFailure, ControlConn, ControlPool, DEFAULT_CLUSTER_TIMEOUT};
pub use migrations::{alter_migration, show_migrations};

use crate::error::ProxyError;
use crate::migrations::store;
use crate::migrations::Request;

/// An admin statement about the queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AdminStatement {
    /// `SHOW MIGRATIONS [LIKE 'pattern']`
    ShowMigrations(Option<String>),
    /// `ALTER MIGRATION 'uuid' | ALL [ON CLUSTER c] PAUSE|RESUME|CANCEL|RETRY|COMPLETE`
    AlterMigration {
        /// One migration, or all (on one cluster).
        target: store::Target,
        /// What to do.
        request: Request,
    },
    /// `SHOW CLUSTERS`
    ShowClusters,
    /// `DRAIN CLUSTER c [WAIT n SECONDS]`
    Drain {
        /// The cluster.
        cluster: String,
        /// How long running statements and open transactions may take to finish.
        wait: std::time::Duration,
    },
    /// `UNDRAIN CLUSTER c`
    Undrain {
        /// The cluster.
        cluster: String,
    },
    /// `FAILOVER CLUSTER c [TO 'host:port']`
    Failover {
        /// The cluster.
        cluster: String,
        /// The standby to promote; None: the best one.
        to: Option<String>,
    },
    /// `SHOW FAILOVERS`
    ShowFailovers,
    /// `SHOW WORKSPACE n [IN KEYSPACE k]`
    ShowWorkspace {
        /// The workspace id.
        workspace: u64,
        /// Only this keyspace (else every sharded keyspace).
        keyspace: Option<String>,
    },
    /// `SHOW WORKSPACES WITH ERRORS`
    ShowWorkspacesWithErrors,
    /// `PIN WORKSPACE n [IN KEYSPACE k] TO SHARD 's' [FORCE]`, `UNPIN WORKSPACE n ...`
    Pin(pins::PinStatement),
    /// `SHOW PINS [IN KEYSPACE k] [LIMIT n]`
    ShowPins {
        /// Only this keyspace (else every sharded keyspace).
        keyspace: Option<String>,
        /// At most this many rows.
        limit: usize,
    },
}

/// How long `DRAIN CLUSTER` waits for running work without `WAIT n SECONDS`.
pub const DEFAULT_DRAIN_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

impl AdminStatement {
    /// Whether only admin users may run it (traffic control); the others need role
    /// `dba` or above.
    pub fn needs_admin(&self) -> bool {
        matches!(
            self,
            AdminStatement::Drain { .. }
                | AdminStatement::Undrain { .. }
                | AdminStatement::Failover { .. }
                | AdminStatement::Pin(_)
                | AdminStatement::ShowPins { .. }
        )
    }

    /// The class of an admin-only statement, for the access-denied message.
    pub fn admin_class(&self) -> &'static str {
        match self {
            AdminStatement::Pin(_) | AdminStatement::ShowPins { .. } => {
                "the pin directory (PIN WORKSPACE, UNPIN WORKSPACE, SHOW PINS)"
            }
            _ => "traffic control (DRAIN CLUSTER, UNDRAIN CLUSTER)",
        }
    }
}

/// Whether `text`'s first word is SELECT, INSERT, UPDATE, DELETE, REPLACE or WITH
/// (none of shardgate's own statements starts so).
///
/// Every query passes here, so it reads bytes: leading ASCII whitespace, then the one
/// verb the first letter allows, which must end the text or be followed by ASCII
/// whitespace. A text that starts with other (Unicode) whitespace reads as not DML: the
/// parsers it then passes through recognize none of these verbs either.
pub fn starts_with_dml(text: &str) -> bool {
    let b = text.as_bytes();
    let start = b
        .iter()
        .position(|&c| !matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'))
        .unwrap_or(b.len());
    let rest = &b[start..];
    let verb: &[u8] = match rest.first().map(|c| c | 0x20) {
        Some(b's') => b"select",
        Some(b'i') => b"insert",
        Some(b'u') => b"update",
        Some(b'd') => b"delete",
        Some(b'r') => b"replace",
        Some(b'w') => b"with",
        _ => return false,
    };
    // The verbs are letters: a byte ORed with 0x20 is one of them only if it is that
    // letter in either case.
    rest.get(..verb.len())
        .is_some_and(|w| w.iter().zip(verb).all(|(c, v)| c | 0x20 == *v))
        && rest
            .get(verb.len())
            .is_none_or(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r' | b'\x0c'))
}

/// Recognizes shardgate's admin statements (case-insensitive, optional trailing `;`).
/// Returns `Some(Err)` for text that is clearly one of them but malformed.
pub fn parse_admin(sql: &str) -> Option<Result<AdminStatement, ProxyError>> {
    let text = sql.trim().trim_end_matches(';').trim();
    // Every statement passes here: decide from the second word, without allocating,
    // before looking closer.
    let mut first_two = text.split_ascii_whitespace();
    let (Some(verb), Some(noun)) = (first_two.next(), first_two.next()) else {
        return None;
    };
    let admin = (verb.eq_ignore_ascii_case("SHOW")
        && (noun.eq_ignore_ascii_case("MIGRATIONS")
            || noun.eq_ignore_ascii_case("CLUSTERS")
            || noun.eq_ignore_ascii_case("FAILOVERS")
            || noun.eq_ignore_ascii_case("WORKSPACE")
            || noun.eq_ignore_ascii_case("WORKSPACES")
            || noun.eq_ignore_ascii_case("PINS")))
        || verb.eq_ignore_ascii_case("PIN")
        || verb.eq_ignore_ascii_case("UNPIN")
        || (verb.eq_ignore_ascii_case("FAILOVER") && noun.eq_ignore_ascii_case("CLUSTER"))
        || (verb.eq_ignore_ascii_case("ALTER") && noun.eq_ignore_ascii_case("MIGRATION"))
        || ((verb.eq_ignore_ascii_case("DRAIN") || verb.eq_ignore_ascii_case("UNDRAIN"))
            && noun.eq_ignore_ascii_case("CLUSTER"));
    if !admin {
        return None;
    }
    let upper = text.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().collect();
    let orig: Vec<&str> = text.split_whitespace().collect();
    let bad = |m: &str| Some(Err(ProxyError::unroutable(format!("shardgate: {m}"))));
    if let Some(pin) = pins::parse(&words, &orig) {
        return Some(pin);
    }
    match words.as_slice() {
        ["SHOW", "MIGRATIONS"] => Some(Ok(AdminStatement::ShowMigrations(None))),
        ["SHOW", "MIGRATIONS", "LIKE", _] => match unquote(orig[3]) {
            Some(p) => Some(Ok(AdminStatement::ShowMigrations(Some(p)))),
            None => bad("SHOW MIGRATIONS LIKE needs a quoted pattern"),
        },
        ["SHOW", "MIGRATIONS", ..] => bad("usage: SHOW MIGRATIONS [LIKE 'pattern']"),
        ["SHOW", "CLUSTERS"] => Some(Ok(AdminStatement::ShowClusters)),
        ["SHOW", "CLUSTERS", ..] => bad("usage: SHOW CLUSTERS"),
        ["SHOW", "WORKSPACE", ..] => {
            let usage = "usage: SHOW WORKSPACE <id> [IN KEYSPACE name]";
            let keyspace = match words.len() {
                3 => None,
                6 if words[3] == "IN" && words[4] == "KEYSPACE" => Some(name(orig[5])),
                _ => return bad(usage),
            };
            match words[2].parse::<u64>() {
                Ok(workspace) => Some(Ok(AdminStatement::ShowWorkspace {
                    workspace,
                    keyspace,
                })),
                Err(_) => bad(usage),
            }
        }
        ["SHOW", "WORKSPACES", "WITH", "ERRORS"] => {
            Some(Ok(AdminStatement::ShowWorkspacesWithErrors))
        }
        ["SHOW", "WORKSPACES", ..] => bad("usage: SHOW WORKSPACES WITH ERRORS"),
        ["DRAIN", "CLUSTER", _] => Some(Ok(AdminStatement::Drain {
            cluster: name(orig[2]),
            wait: DEFAULT_DRAIN_WAIT,
        })),
        ["DRAIN", "CLUSTER", _, "WAIT", n, "SECONDS" | "SECOND"] => {
            match n
                .parse::<f64>()
                .ok()
                .filter(|s| s.is_finite() && *s >= 0.0 && *s <= 86_400.0)
            {
                Some(s) => Some(Ok(AdminStatement::Drain {
                    cluster: name(orig[2]),
                    wait: std::time::Duration::from_secs_f64(s),
                })),
                None => {
                    bad("DRAIN CLUSTER ... WAIT n SECONDS: n is a number of seconds (0 to 86400)")
                }
            }
        }
        ["DRAIN", ..] => bad("usage: DRAIN CLUSTER name [WAIT n SECONDS]"),
        ["UNDRAIN", "CLUSTER", _] => Some(Ok(AdminStatement::Undrain {
            cluster: name(orig[2]),
        })),
        ["UNDRAIN", ..] => bad("usage: UNDRAIN CLUSTER name"),
        ["SHOW", "FAILOVERS"] => Some(Ok(AdminStatement::ShowFailovers)),
        ["SHOW", "FAILOVERS", ..] => bad("usage: SHOW FAILOVERS"),
        ["FAILOVER", "CLUSTER", _] => Some(Ok(AdminStatement::Failover {
            cluster: name(orig[2]),
            to: None,
        })),
        ["FAILOVER", "CLUSTER", _, "TO", _] => match unquote(orig[4]) {
            Some(to) => Some(Ok(AdminStatement::Failover {
                cluster: name(orig[2]),
                to: Some(to),
            })),
            None => bad("FAILOVER CLUSTER name TO 'host:port': quote the standby's address"),
        },
        ["FAILOVER", ..] => bad("usage: FAILOVER CLUSTER name [TO 'host:port']"),
        ["ALTER", "MIGRATION", rest @ ..] => {
            let usage = "usage: ALTER MIGRATION 'uuid' | ALL [ON CLUSTER name] PAUSE | RESUME | CANCEL | RETRY | COMPLETE";
            let Some((verb, middle)) = rest.split_last() else {
                return bad(usage);
            };
            let request = match *verb {
                "PAUSE" => Request::Pause,
                "RESUME" => Request::Resume,
                "CANCEL" => Request::Cancel,
                "RETRY" => Request::Retry,
                "COMPLETE" => Request::Complete,
                _ => return bad(usage),
            };
            let target = match middle {
                ["ALL"] => store::Target::All { cluster: None },
                ["ALL", "ON", "CLUSTER", _] => store::Target::All {
                    cluster: Some(orig[5].trim_matches(|c| c == '`' || c == '\'').to_string()),
                },
                [_] => match unquote(orig[2]) {
                    Some(u) => store::Target::Uuid(u),
                    None => return bad(usage),
                },
                _ => return bad(usage),
            };
            Some(Ok(AdminStatement::AlterMigration { target, request }))
        }
        _ => None,
    }
}

/// A cluster name as written: bare, or in backquotes or quotes.
fn name(s: &str) -> String {
    s.trim_matches(|c| c == '`' || c == '\'' || c == '"')
        .to_string()
}

fn unquote(s: &str) -> Option<String> {
    let inner = s
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))?;
    Some(inner.replace("''", "'"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_dml_verb_skips_the_own_statement_parsers() {
        assert!(starts_with_dml("  select 1"));
        assert!(starts_with_dml("WITH x AS (SELECT 1) SELECT * FROM x"));
        for own in [
            "SHOW MIGRATIONS",
            "SET ddl_wait = 1",
            "ALTER VSCHEMA DROP TABLE a.t",
            "PIN WORKSPACE 1 TO c1",
        ] {
            assert!(!starts_with_dml(own), "{own}");
            assert!(
                parse_admin(own).is_some()
                    || vschema::parse(own).is_some()
                    || crate::ddl::parse_ddl_setting(own).is_some(),
                "{own} is one of shardgate's own"
            );
        }
        assert!(!starts_with_dml("SELECTION"));
        assert!(starts_with_dml("\n\tReplace INTO t VALUES (1)"));
        assert!(starts_with_dml("delete"));
        assert!(starts_with_dml("with\tx AS (SELECT 1) SELECT 1"));
        assert!(!starts_with_dml("DELETED"));
        assert!(!starts_with_dml("REPLAC"));
        assert!(
            !starts_with_dml("SELECT(1)"),
            "the word ends at whitespace only"
        );
        assert!(!starts_with_dml(""));
        assert!(!starts_with_dml("   "));
        assert!(
            !starts_with_dml("\u{a0}SELECT 1"),
            "only ASCII whitespace is skipped"
        );
    }

    #[test]
    fn traffic_statements_parse() {
        use std::time::Duration;
        assert_eq!(
            parse_admin("show clusters;").and_then(Result::ok),
            Some(AdminStatement::ShowClusters)
        );
        assert_eq!(
            parse_admin("DRAIN CLUSTER `c1`").and_then(Result::ok),
            Some(AdminStatement::Drain {
                cluster: "c1".into(),
                wait: DEFAULT_DRAIN_WAIT
            })
        );
        assert_eq!(
            parse_admin("drain cluster c2 wait 2.5 seconds").and_then(Result::ok),
            Some(AdminStatement::Drain {
                cluster: "c2".into(),
                wait: Duration::from_millis(2500)
            })
        );
        assert_eq!(
            parse_admin("UNDRAIN CLUSTER 'c1'").and_then(Result::ok),
            Some(AdminStatement::Undrain {
                cluster: "c1".into()
            })
        );
        for bad in [
            "DRAIN CLUSTER",
            "DRAIN CLUSTER c1 WAIT x SECONDS",
            "SHOW CLUSTERS NOW",
            "UNDRAIN CLUSTER a b",
        ] {
            assert!(matches!(parse_admin(bad), Some(Err(_))), "{bad}");
        }
        assert_eq!(
            parse_admin("FAILOVER CLUSTER c1 TO '127.0.0.1:3307'").and_then(Result::ok),
            Some(AdminStatement::Failover {
                cluster: "c1".into(),
                to: Some("127.0.0.1:3307".into())
            })
        );
        assert_eq!(
            parse_admin("failover cluster c1").and_then(Result::ok),
            Some(AdminStatement::Failover {
                cluster: "c1".into(),
                to: None
            })
        );
        assert!(matches!(
            parse_admin("FAILOVER CLUSTER c1 TO x"),
            Some(Err(_))
        ));
        assert_eq!(
            parse_admin("SHOW FAILOVERS").and_then(Result::ok),
            Some(AdminStatement::ShowFailovers)
        );
        assert!(parse_admin("SHOW TABLES").is_none());
        assert!(parse_admin("DRAIN").is_none());
    }

    #[test]
    fn workspace_statements_parse() {
        assert_eq!(
            parse_admin("show workspace 42;").and_then(Result::ok),
            Some(AdminStatement::ShowWorkspace {
                workspace: 42,
                keyspace: None
            })
        );
        assert_eq!(
            parse_admin("SHOW WORKSPACE 7 IN KEYSPACE `Tenants`").and_then(Result::ok),
            Some(AdminStatement::ShowWorkspace {
                workspace: 7,
                keyspace: Some("Tenants".into())
            })
        );
        assert_eq!(
            parse_admin("show workspaces with errors").and_then(Result::ok),
            Some(AdminStatement::ShowWorkspacesWithErrors)
        );
        for bad in [
            "SHOW WORKSPACE",
            "SHOW WORKSPACE abc",
            "SHOW WORKSPACE -1",
            "SHOW WORKSPACE 42 IN app",
            "SHOW WORKSPACE 42 IN KEYSPACE",
            "SHOW WORKSPACES",
            "SHOW WORKSPACES WITH WARNINGS",
        ] {
            let Some(Err(e)) = parse_admin(bad) else {
                panic!("{bad}: not a usage error");
            };
            assert_eq!(e.code, 1105, "{bad}");
            assert!(e.message.contains("usage"), "{bad}: {}", e.message);
        }
    }

    #[test]
    fn admin_statements_parse() {
        assert_eq!(
            parse_admin("show migrations").and_then(Result::ok),
            Some(AdminStatement::ShowMigrations(None))
        );
        assert_eq!(
            parse_admin("SHOW MIGRATIONS LIKE 'abc%';").and_then(Result::ok),
            Some(AdminStatement::ShowMigrations(Some("abc%".into())))
        );
        assert_eq!(
            parse_admin("ALTER MIGRATION 'u-1' PAUSE").and_then(Result::ok),
            Some(AdminStatement::AlterMigration {
                target: store::Target::Uuid("u-1".into()),
                request: Request::Pause
            })
        );
        assert_eq!(
            parse_admin("alter migration all on cluster c2 resume").and_then(Result::ok),
            Some(AdminStatement::AlterMigration {
                target: store::Target::All {
                    cluster: Some("c2".into())
                },
                request: Request::Resume
            })
        );
        assert!(matches!(
            parse_admin("ALTER MIGRATION 'x' EXPLODE"),
            Some(Err(_))
        ));
        assert!(parse_admin("ALTER TABLE t ADD c INT").is_none());
        assert!(parse_admin("SELECT 1").is_none());
    }
}
