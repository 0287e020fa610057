//! `PIN WORKSPACE`, `UNPIN WORKSPACE` and `SHOW PINS`: the pin directory from SQL
//! (admin users only; `docs/vschema.md` "Pins at scale").
//!
//! A pin change that would leave a workspace's rows behind (the workspace has rows on
//! the shard it is on now, and the pin sends it elsewhere) is refused unless it says
//! `FORCE`: moving data is the workspace-move feature's job, not a side effect of a pin.

use crate::backend::sql::{quote_ident, quote_literal, SqlConn};
use crate::control::pins::{change_pin, record_pin_change};
use crate::error::ProxyError;
use crate::migrations::store::StoreError;
use crate::shared::Shared;
use crate::topo::PinChange;
use crate::vschema::{Keyspace, TableKind, Tenancy, VSchema};

use super::traffic::Row;
use super::AdminStatement;

/// `PIN WORKSPACE` / `UNPIN WORKSPACE`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinStatement {
    /// The workspace id.
    pub workspace: u64,
    /// `IN KEYSPACE k`; None: the one sharded keyspace.
    pub keyspace: Option<String>,
    /// The shard to pin to (lower case); None: unpin.
    pub shard: Option<String>,
    /// `FORCE`: skip the rows check.
    pub force: bool,
}

/// `SHOW PINS` without `LIMIT`.
pub const DEFAULT_SHOW_LIMIT: usize = 1000;

/// The most rows `SHOW PINS ... LIMIT n` answers.
pub const MAX_SHOW_LIMIT: usize = 100_000;

/// The columns of `SHOW PINS`.
pub const PIN_COLUMNS: [&str; 4] = ["Keyspace", "Workspace", "Shard", "Source"];

/// The columns of the answer to `PIN`/`UNPIN WORKSPACE`.
pub const CHANGE_COLUMNS: [&str; 4] = ["Keyspace", "Workspace", "Shard", "Message"];

fn bad(m: &str) -> Option<Result<AdminStatement, ProxyError>> {
    Some(Err(ProxyError::unroutable(format!("shardgate: {m}"))))
}

fn ident(s: &str) -> String {
    s.trim_matches(|c| c == '`' || c == '\'' || c == '"')
        .to_string()
}

fn workspace_id(s: &str) -> Result<u64, ProxyError> {
    s.parse::<u64>().map_err(|_| {
        ProxyError::unroutable(format!(
            "shardgate: {s:?} is not a workspace id (an integer from 0 to {})",
            u64::MAX
        ))
    })
}

/// Parses `PIN ...`, `UNPIN ...` and `SHOW PINS ...` (`words` upper-cased, `orig` as
/// written, both split on white space).
pub(super) fn parse(words: &[&str], orig: &[&str]) -> Option<Result<AdminStatement, ProxyError>> {
    match words {
        ["SHOW", "PINS", rest @ ..] => {
            let usage = "usage: SHOW PINS [IN KEYSPACE name] [LIMIT n]";
            let (keyspace, rest) = match rest {
                ["IN", "KEYSPACE", _, more @ ..] => (Some(ident(orig[4])), more),
                ["IN", ..] => return bad(usage),
                _ => (None, rest),
            };
            let limit = match rest {
                [] => DEFAULT_SHOW_LIMIT,
                ["LIMIT", n] => match n.parse::<usize>() {
                    Ok(n) if n <= MAX_SHOW_LIMIT => n,
                    _ => {
                        return bad(&format!(
                            "SHOW PINS ... LIMIT n: n is a number from 0 to {MAX_SHOW_LIMIT}"
                        ))
                    }
                },
                _ => return bad(usage),
            };
            Some(Ok(AdminStatement::ShowPins { keyspace, limit }))
        }
        [verb @ ("PIN" | "UNPIN"), "WORKSPACE", rest @ ..] => {
            let pin = *verb == "PIN";
            let usage = if pin {
                "usage: PIN WORKSPACE id [IN KEYSPACE name] TO SHARD 'name' [FORCE]"
            } else {
                "usage: UNPIN WORKSPACE id [IN KEYSPACE name] [FORCE]"
            };
            let Some((_, mut rest)) = rest.split_first() else {
                return bad(usage);
            };
            let workspace = match workspace_id(orig[2]) {
                Ok(w) => w,
                Err(e) => return Some(Err(e)),
            };
            let mut at = 3;
            let mut keyspace = None;
            if let ["IN", "KEYSPACE", _, more @ ..] = rest {
                keyspace = Some(ident(orig[at + 2]));
                rest = more;
                at += 3;
            }
            let mut shard = None;
            if pin {
                let ["TO", "SHARD", _, more @ ..] = rest else {
                    return bad(usage);
                };
                shard = Some(ident(orig[at + 2]).to_ascii_lowercase());
                rest = more;
            }
            let force = match rest {
                [] => false,
                ["FORCE"] => true,
                _ => return bad(usage),
            };
            Some(Ok(AdminStatement::Pin(PinStatement {
                workspace,
                keyspace,
                shard,
                force,
            })))
        }
        ["PIN" | "UNPIN", ..] => bad("usage: PIN WORKSPACE id [IN KEYSPACE name] TO SHARD 'name' [FORCE] | UNPIN WORKSPACE id [IN KEYSPACE name] [FORCE]"),
        _ => None,
    }
}

fn refuse(m: String) -> ProxyError {
    ProxyError::unroutable(format!("shardgate: {m}"))
}

/// The sharded keyspace `name`, or without a name the only one.
fn keyspace<'a>(vs: &'a VSchema, name: Option<&str>) -> Result<&'a Keyspace, ProxyError> {
    match name {
        Some(name) => match vs.keyspace(name) {
            Some(ks) if ks.sharded => Ok(ks),
            Some(_) => Err(refuse(format!(
                "keyspace '{name}' is not sharded: its one shard holds every workspace, there is nothing to pin"
            ))),
            None => Err(refuse(format!("there is no keyspace '{name}'"))),
        },
        None => {
            let sharded: Vec<&Keyspace> = vs.keyspaces.values().filter(|k| k.sharded).collect();
            match sharded.as_slice() {
                [one] => Ok(one),
                [] => Err(refuse("the vschema has no sharded keyspace: there is nothing to pin".into())),
                many => Err(refuse(format!(
                    "the vschema has several sharded keyspaces ({}): say which with IN KEYSPACE name",
                    many.iter().map(|k| k.name.as_str()).collect::<Vec<_>>().join(", ")
                ))),
            }
        }
    }
}

/// `PIN WORKSPACE` / `UNPIN WORKSPACE` by `user`: one row saying what happened.
pub async fn pin(shared: &Shared, user: &str, stmt: &PinStatement) -> Result<Row, ProxyError> {
    // One change at a time, and not while a new document is being applied (which moves
    // the directory into the new snapshot).
    let serial = shared.plane.changing.lock().await;
    let vs = shared.vschema();
    let ks = keyspace(&vs, stmt.keyspace.as_deref())?;
    let ws = stmt.workspace;
    let target = match &stmt.shard {
        None => None,
        Some(name) => Some(ks.shard_index(name).ok_or_else(|| {
            refuse(format!(
                "keyspace {} has no shard '{name}' (shards: {})",
                ks.name,
                ks.shards
                    .iter()
                    .map(|s| s.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?),
    };
    if let Some((index, true)) = ks.pin_of(ws) {
        return Err(refuse(format!(
            "workspace {ws} of keyspace {} is pinned to shard {} in the vschema document: edit it with ALTER VSCHEMA (or remove it from the document first)",
            ks.name, ks.shards[index].name
        )));
    }
    let row = |shard: &str, message: String| -> Row {
        vec![
            Some(ks.name.clone().into_bytes()),
            Some(ws.to_string().into_bytes()),
            Some(shard.as_bytes().to_vec()),
            Some(message.into_bytes()),
        ]
    };
    let pinned = ks.directory.get(ws);
    let dest = target.unwrap_or_else(|| ks.vindex_shard_index(ws));
    let dest_name = ks.shards[dest].name.clone();
    if pinned == target {
        let message = match target {
            Some(_) => format!("workspace {ws} is already pinned to shard {dest_name}"),
            None => {
                format!("workspace {ws} is not pinned; the vindex places it on shard {dest_name}")
            }
        };
        return Ok(row(&dest_name, message));
    }
    let current = ks.shard_index_for_workspace(ws);
    if current != dest && !stmt.force && !same_place(ks, current, dest) {
        if let Some(found) = rows_on(shared, &vs, ks, current, ws).await? {
            let (verb, what) = match target {
                Some(_) => ("pin", format!("pinning it to shard {dest_name}")),
                None => (
                    "unpin",
                    format!("unpinning it (the vindex places it on shard {dest_name})"),
                ),
            };
            return Err(refuse(format!(
                "workspace {ws} of keyspace {} has rows on shard {} ({found}), and {what} would leave them behind: move its data first, or {} WORKSPACE {ws} IN KEYSPACE {} ... FORCE if they may stay",
                ks.name,
                ks.shards[current].name,
                verb.to_ascii_uppercase(),
                ks.name
            )));
        }
    }
    let change = PinChange {
        keyspace: ks.name.clone(),
        workspace: ws,
        shard: stmt.shard.clone(),
    };
    let line = change_pin(shared, ks, change, user).await.map_err(|e| {
        ProxyError::internal(format!(
            "shardgate: the pin of workspace {ws} of keyspace {} was not changed: {e}",
            ks.name
        ))
    })?;
    drop(serial);
    record_pin_change(shared, user, &line).await;
    let message = match target {
        Some(_) => format!(
            "workspace {ws} pinned to shard {dest_name}{}",
            if stmt.force {
                " (FORCE: rows were not checked)"
            } else {
                ""
            }
        ),
        None => format!("workspace {ws} unpinned: the vindex places it on shard {dest_name}"),
    };
    Ok(row(&dest_name, message))
}

/// Whether shards `a` and `b` serve a workspace's data from the same place (same
/// cluster, and for shared tables the same database): then nothing is left behind.
fn same_place(ks: &Keyspace, a: usize, b: usize) -> bool {
    let (a, b) = (&ks.shards[a], &ks.shards[b]);
    a.cluster == b.cluster
        && (a.database == b.database || matches!(ks.tenancy, Tenancy::DatabasePerWorkspace { .. }))
}

/// What of `ws` shard `index` holds: a table with one of its rows or its database;
/// None when it holds nothing.
async fn rows_on(
    shared: &Shared,
    vs: &VSchema,
    ks: &Keyspace,
    index: usize,
    ws: u64,
) -> Result<Option<String>, ProxyError> {
    let shard = &ks.shards[index];
    let Some(cluster) = vs.cluster(&shard.cluster) else {
        return Err(refuse(format!(
            "shard {} names no known cluster",
            shard.name
        )));
    };
    let database = shard.database.clone();
    let listed: Vec<(String, String)> = ks
        .tables
        .iter()
        .filter_map(|(t, kind)| match kind {
            TableKind::Sharded { column } => Some((t.clone(), column.clone())),
            TableKind::Reference => None,
        })
        .collect();
    let unlisted_skip: Vec<String> = ks.tables.keys().map(|t| t.to_ascii_lowercase()).collect();
    let default_column = ks.default_column.clone();
    let per_workspace = ks.database_for_workspace(ws);
    let result = shared
        .control
        .on_one(cluster, move |mut conn| async move {
            let found = match per_workspace {
                Some(db) => database_exists(conn.sql(), &db).await?,
                None => {
                    let mut tables = listed;
                    if let Some(column) = default_column {
                        let q = format!(
                            "SELECT TABLE_NAME FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = {} AND COLUMN_NAME = {}",
                            quote_literal(&database),
                            quote_literal(&column)
                        );
                        for row in conn.sql().query(&q).await?.rows {
                            if let Some(Some(t)) = row.into_iter().next() {
                                if !unlisted_skip.contains(&t.to_ascii_lowercase()) {
                                    tables.push((t, column.clone()));
                                }
                            }
                        }
                    }
                    tables.sort();
                    table_with_rows(conn.sql(), &database, &tables, ws).await?
                }
            };
            conn.release();
            Ok(found)
        })
        .await;
    result.map_err(|f| {
        refuse(format!(
            "cannot check whether workspace {ws} has rows on shard {} (cluster {}): {}; retry when the cluster answers, or add FORCE if it has none",
            shard.name,
            shard.cluster,
            f.describe()
        ))
    })
}

async fn database_exists(conn: &mut SqlConn, db: &str) -> Result<Option<String>, StoreError> {
    let q = format!(
        "SELECT 1 FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = {}",
        quote_literal(db)
    );
    let rows = conn.query(&q).await?;
    Ok((!rows.rows.is_empty()).then(|| format!("its database {db}")))
}

async fn table_with_rows(
    conn: &mut SqlConn,
    database: &str,
    tables: &[(String, String)],
    ws: u64,
) -> Result<Option<String>, StoreError> {
    for (table, column) in tables {
        let q = format!(
            "SELECT 1 FROM {}.{} WHERE {} = {ws} LIMIT 1",
            quote_ident(database),
            quote_ident(table),
            quote_ident(column)
        );
        match conn.query(&q).await {
            Ok(rows) if !rows.rows.is_empty() => {
                return Ok(Some(format!("table {database}.{table}")))
            }
            Ok(_) => {}
            // A listed table not created on this shard, or without the column.
            Err(e) if matches!(e.code(), Some(1146 | 1054)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(None)
}

/// `SHOW PINS [IN KEYSPACE k] [LIMIT n]`: pins in keyspace and id order, from the
/// document and the directory, at most `limit` rows.
pub fn show_pins(
    shared: &Shared,
    keyspace: Option<&str>,
    limit: usize,
) -> Result<Vec<Row>, ProxyError> {
    let vs = shared.vschema();
    let keyspaces: Vec<&Keyspace> = match keyspace {
        Some(name) => vec![self::keyspace(&vs, Some(name))?],
        None => vs.keyspaces.values().filter(|k| k.sharded).collect(),
    };
    let mut rows = Vec::new();
    for ks in keyspaces {
        let left = limit.saturating_sub(rows.len());
        if left == 0 {
            break;
        }
        let mut pins: Vec<(u64, usize, &str)> = ks
            .pins
            .range(0..=u64::MAX)
            .take(left)
            .map(|(&w, &s)| (w, s, "document"))
            .collect();
        pins.extend(
            ks.directory
                .first(0, left)
                .into_iter()
                .map(|(w, s)| (w, s, "directory")),
        );
        pins.sort_unstable();
        pins.truncate(left);
        for (w, s, source) in pins {
            let shard = ks.shards.get(s).map(|s| s.name.as_str()).unwrap_or("?");
            rows.push(vec![
                Some(ks.name.clone().into_bytes()),
                Some(w.to_string().into_bytes()),
                Some(shard.as_bytes().to_vec()),
                Some(source.as_bytes().to_vec()),
            ]);
        }
    }
    Ok(rows)
}

#[cfg(test)]
mod tests {
    use super::super::parse_admin;
    use super::*;

    fn ok(sql: &str) -> AdminStatement {
        match parse_admin(sql) {
            Some(Ok(s)) => s,
            other => panic!("{sql}: {other:?}"),
        }
    }

    #[test]
    fn pin_statements_parse() {
        assert_eq!(
            ok("PIN WORKSPACE 42 TO SHARD '80-C0'"),
            AdminStatement::Pin(PinStatement {
                workspace: 42,
                keyspace: None,
                shard: Some("80-c0".into()),
                force: false
            })
        );
        assert_eq!(
            ok("pin workspace 7 in keyspace `app` to shard `-80` force;"),
            AdminStatement::Pin(PinStatement {
                workspace: 7,
                keyspace: Some("app".into()),
                shard: Some("-80".into()),
                force: true
            })
        );
        assert_eq!(
            ok("UNPIN WORKSPACE 9 IN KEYSPACE app"),
            AdminStatement::Pin(PinStatement {
                workspace: 9,
                keyspace: Some("app".into()),
                shard: None,
                force: false
            })
        );
        assert_eq!(
            ok("unpin workspace 9 force"),
            AdminStatement::Pin(PinStatement {
                workspace: 9,
                keyspace: None,
                shard: None,
                force: true
            })
        );
        assert_eq!(
            ok("SHOW PINS"),
            AdminStatement::ShowPins {
                keyspace: None,
                limit: DEFAULT_SHOW_LIMIT
            }
        );
        assert_eq!(
            ok("show pins in keyspace app limit 5"),
            AdminStatement::ShowPins {
                keyspace: Some("app".into()),
                limit: 5
            }
        );
        for bad in [
            "PIN WORKSPACE",
            "PIN WORKSPACE -1 TO SHARD '-80'",
            "PIN WORKSPACE x TO SHARD '-80'",
            "PIN WORKSPACE 1 TO '-80'",
            "PIN WORKSPACE 1",
            "PIN WORKSPACE 1 TO SHARD '-80' NOW",
            "UNPIN WORKSPACE 1 TO SHARD '-80'",
            "PIN CLUSTER c1",
            "SHOW PINS LIMIT x",
            "SHOW PINS IN app",
        ] {
            let Some(Err(e)) = parse_admin(bad) else {
                panic!("{bad}: not refused");
            };
            assert_eq!(e.code, 1105, "{bad}");
        }
        assert!(parse_admin("PINE WORKSPACE 1").is_none());
    }
}
