//! DDL through the proxy: schema changes to existing tables are queued in the
//! migration queue (never forwarded blindly), `CREATE TABLE`/`CREATE DATABASE` run at
//! once, and admin users control the queue with `SHOW MIGRATIONS` and
//! `ALTER MIGRATION`.

use std::collections::BTreeMap;
use std::time::Duration;

use rand::Rng;

use crate::backend::SqlConn;
use crate::error::ProxyError;
use crate::migrations::store::{self, MigrationRow};
use crate::migrations::{strategy, NewMigration, Request, Status, Strategy};
use crate::planner::DdlKind;
use crate::router::DbContext;
use crate::vschema::{Cluster, DdlPolicy, Keyspace, Tenancy, VSchema};

/// How long shardgate's own statements on a cluster may take to connect.
const CONTROL_CONNECT: Duration = Duration::from_secs(5);

/// What to do with a DDL statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdlAction {
    /// Into the migration queue.
    Queue,
    /// Run at once on every target, one at a time (CREATE TABLE/DATABASE, or a keyspace
    /// whose policy is `direct`).
    RunNow,
}

/// Decides what a DDL statement sent to `keyspace` does.
pub fn action(kind: &DdlKind, keyspace: Option<&Keyspace>) -> DdlAction {
    let direct = keyspace.is_some_and(|k| k.ddl == DdlPolicy::Direct);
    match kind {
        DdlKind::CreateTable | DdlKind::CreateDatabase | DdlKind::DropDatabase => DdlAction::RunNow,
        _ if direct => DdlAction::RunNow,
        DdlKind::AlterTable
        | DdlKind::CreateIndex
        | DdlKind::DropIndex
        | DdlKind::DropTable
        | DdlKind::RenameTable
        | DdlKind::Truncate => DdlAction::Queue,
        DdlKind::Other => DdlAction::RunNow,
    }
}

/// A fresh migration id (random, UUID-shaped).
pub fn new_uuid() -> String {
    let mut rng = rand::thread_rng();
    let a: u32 = rng.gen();
    let b: u16 = rng.gen();
    let c: u16 = (rng.gen::<u16>() & 0x0fff) | 0x4000;
    let d: u16 = (rng.gen::<u16>() & 0x3fff) | 0x8000;
    let e: u64 = rng.gen::<u64>() & 0xffff_ffff_ffff;
    format!("{a:08x}-{b:04x}-{c:04x}-{d:04x}-{e:012x}")
}

/// The table a queued statement changes, and its strategy.
fn table_and_strategy(sql: &str) -> Result<(String, Strategy), ProxyError> {
    if let Some(alter) = strategy::parse_alter(sql) {
        let s = strategy::choose(&alter);
        return Ok((alter.table, s));
    }
    // DROP TABLE / TRUNCATE / RENAME TABLE run as written, serialized by the queue.
    let words: Vec<&str> = sql
        .split(|c: char| c.is_whitespace() || c == ',' || c == ';')
        .filter(|w| !w.is_empty())
        .collect();
    let upper: Vec<String> = words.iter().map(|w| w.to_ascii_uppercase()).collect();
    let after = |kw: &str| upper.iter().position(|w| w == kw).map(|i| i + 1);
    let mut at = after("TABLE").or_else(|| after("TRUNCATE"));
    while let Some(i) = at {
        match upper.get(i).map(String::as_str) {
            Some("IF") | Some("EXISTS") | Some("TEMPORARY") => at = Some(i + 1),
            _ => break,
        }
    }
    let name = at
        .and_then(|i| words.get(i))
        .map(|w| {
            let last = w.rsplit('.').next().unwrap_or(w);
            last.trim_matches('`').to_string()
        })
        .filter(|n| !n.is_empty())
        .ok_or_else(|| {
            ProxyError::unroutable("shardgate: cannot tell which table this DDL statement changes")
        })?;
    Ok((name, Strategy::Direct))
}

/// The queue rows of one DDL statement: one per database it must run in.
pub async fn rows_for(
    vs: &VSchema,
    ctx: &DbContext,
    qualified: Option<&str>,
    sql: &str,
    uuid: &str,
) -> Result<Vec<NewMigration>, ProxyError> {
    let (table, strategy) = table_and_strategy(sql)?;
    let row = |keyspace: &str, shard: &str, cluster: &str, database: &str| NewMigration {
        uuid: uuid.to_string(),
        keyspace: keyspace.to_string(),
        shard: shard.to_string(),
        cluster: cluster.to_string(),
        database: database.to_string(),
        table: table.clone(),
        statement: sql.to_string(),
        strategy,
        postpone_completion: false,
    };
    // A statement that names a workspace database, or runs in one.
    let workspace_db = qualified
        .and_then(|q| vs.workspace_database(q).map(|(k, w)| (k, w, q.to_string())))
        .or_else(|| match ctx {
            DbContext::Workspace {
                keyspace,
                workspace,
                database,
            } => vs
                .keyspace(keyspace)
                .map(|k| (k, *workspace, database.clone())),
            _ => None,
        });
    if let Some((ks, ws, db)) = workspace_db {
        let shard = ks.shard_for_workspace(ws);
        return Ok(vec![row(&ks.name, &db, &shard.cluster, &db)]);
    }
    let keyspace = qualified.and_then(|q| vs.keyspace(q)).or(match ctx {
        DbContext::Keyspace(k) => vs.keyspace(k),
        _ => None,
    });
    match keyspace {
        Some(ks) if ks.tenancy != Tenancy::SharedTables => {
            // Every workspace database of the keyspace, on every cluster.
            let mut rows = Vec::new();
            let clusters: BTreeMap<&str, &Cluster> = ks
                .shards
                .iter()
                .filter_map(|s| vs.cluster(&s.cluster).map(|c| (c.name.as_str(), c)))
                .collect();
            for cluster in clusters.values() {
                let mut conn = connect(cluster).await?;
                let dbs = conn
                    .query("SHOW DATABASES")
                    .await
                    .map_err(|e| ProxyError::cluster_unavailable(&cluster.name, e))?;
                for name in dbs.rows.iter().filter_map(|r| r.first().cloned().flatten()) {
                    let Some(ws) = ks.workspace_of_database(&name) else {
                        continue;
                    };
                    // Only databases on the cluster that owns the workspace: a stale
                    // copy left elsewhere after a move is not the workspace's.
                    if ks.shard_for_workspace(ws).cluster == cluster.name {
                        rows.push(row(&ks.name, &name, &cluster.name, &name));
                    }
                }
            }
            if rows.is_empty() {
                return Err(ProxyError::unroutable(format!(
                    "shardgate: keyspace '{}' has no workspace databases yet",
                    ks.name
                )));
            }
            Ok(rows)
        }
        Some(ks) => Ok(ks
            .shards
            .iter()
            .map(|s| row(&ks.name, &s.name, &s.cluster, &s.database))
            .collect()),
        None => {
            let DbContext::PassThrough(db) = ctx else {
                return Err(ProxyError::unroutable(
                    "shardgate: select a database (USE) before changing a table's schema",
                ));
            };
            let ks = vs
                .default_keyspace
                .as_deref()
                .and_then(|k| vs.keyspace(k))
                .ok_or_else(|| ProxyError::unknown_database(db))?;
            let cluster = &ks.shards[0].cluster;
            Ok(vec![row(&ks.name, db, cluster, db)])
        }
    }
}

async fn connect(cluster: &Cluster) -> Result<SqlConn, ProxyError> {
    SqlConn::connect(cluster, None, CONTROL_CONNECT)
        .await
        .map_err(|e| ProxyError::cluster_unavailable(&cluster.name, e))
}

/// Writes the rows into each cluster's queue.
pub async fn enqueue(vs: &VSchema, rows: &[NewMigration]) -> Result<(), ProxyError> {
    let mut by_cluster: BTreeMap<&str, Vec<NewMigration>> = BTreeMap::new();
    for r in rows {
        by_cluster.entry(&r.cluster).or_default().push(r.clone());
    }
    for (name, rows) in by_cluster {
        let cluster = vs
            .cluster(name)
            .ok_or_else(|| ProxyError::internal(format!("unknown cluster {name}")))?;
        let mut conn = connect(cluster).await?;
        store::ensure_schema(&mut conn)
            .await
            .map_err(|e| ProxyError::cluster_unavailable(name, e))?;
        store::enqueue(&mut conn, &rows)
            .await
            .map_err(|e| ProxyError::cluster_unavailable(name, e))?;
    }
    Ok(())
}

/// Every queue row of `uuid` (or matching `pattern`), from every cluster.
async fn collect(
    vs: &VSchema,
    pattern: Option<&str>,
    uuid: Option<&str>,
) -> Result<Vec<MigrationRow>, ProxyError> {
    let mut all = Vec::new();
    for cluster in vs.clusters.values() {
        let mut conn = connect(cluster).await?;
        store::ensure_schema(&mut conn)
            .await
            .map_err(|e| ProxyError::cluster_unavailable(&cluster.name, e))?;
        let rows = match uuid {
            Some(u) => store::get(&mut conn, u).await,
            None => store::list(&mut conn, pattern).await,
        }
        .map_err(|e| ProxyError::cluster_unavailable(&cluster.name, e))?;
        all.extend(rows);
    }
    all.sort_by(|a, b| {
        (&a.created_at, &a.uuid, &a.database).cmp(&(&b.created_at, &b.uuid, &b.database))
    });
    Ok(all)
}

/// Waits until migration `uuid` reaches a final status, or `limit` passes.
/// Returns the overall status and the first error message of a failed row.
pub async fn wait(
    vs: &VSchema,
    uuid: &str,
    limit: Duration,
) -> Result<(Status, Option<String>), ProxyError> {
    let deadline = tokio::time::Instant::now() + limit;
    let mut pause = Duration::from_millis(100);
    loop {
        let rows = collect(vs, None, Some(uuid)).await?;
        let status = store::overall_status(&rows).unwrap_or(Status::Queued);
        if status.is_final() || tokio::time::Instant::now() >= deadline {
            let message = rows
                .iter()
                .find(|r| r.status == Status::Failed)
                .and_then(|r| {
                    r.message
                        .as_ref()
                        .map(|m| format!("{} ({}): {m}", r.database, r.cluster))
                });
            return Ok((status, message));
        }
        tokio::time::sleep(pause.min(deadline - tokio::time::Instant::now())).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
}

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
    let admin = (verb.eq_ignore_ascii_case("SHOW") && noun.eq_ignore_ascii_case("MIGRATIONS"))
        || (verb.eq_ignore_ascii_case("ALTER") && noun.eq_ignore_ascii_case("MIGRATION"));
    if !admin {
        return None;
    }
    let upper = text.to_ascii_uppercase();
    let words: Vec<&str> = upper.split_whitespace().collect();
    let orig: Vec<&str> = text.split_whitespace().collect();
    let bad = |m: &str| Some(Err(ProxyError::unroutable(format!("shardgate: {m}"))));
    match words.as_slice() {
        ["SHOW", "MIGRATIONS"] => Some(Ok(AdminStatement::ShowMigrations(None))),
        ["SHOW", "MIGRATIONS", "LIKE", _] => match unquote(orig[3]) {
            Some(p) => Some(Ok(AdminStatement::ShowMigrations(Some(p)))),
            None => bad("SHOW MIGRATIONS LIKE needs a quoted pattern"),
        },
        ["SHOW", "MIGRATIONS", ..] => bad("usage: SHOW MIGRATIONS [LIKE 'pattern']"),
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

fn unquote(s: &str) -> Option<String> {
    let inner = s
        .strip_prefix('\'')
        .and_then(|x| x.strip_suffix('\''))
        .or_else(|| s.strip_prefix('"').and_then(|x| x.strip_suffix('"')))?;
    Some(inner.replace("''", "'"))
}

/// `SHOW MIGRATIONS`: column names and rows.
pub async fn show_migrations(
    vs: &VSchema,
    pattern: Option<&str>,
) -> Result<(Vec<&'static str>, Vec<Vec<Option<Vec<u8>>>>), ProxyError> {
    let rows = collect(vs, pattern, None).await?;
    let columns = vec![
        "uuid",
        "keyspace",
        "shard",
        "cluster",
        "database",
        "table",
        "strategy",
        "status",
        "stage",
        "progress",
        "rows_copied",
        "rows_total",
        "eta_seconds",
        "throttle_reason",
        "message",
        "retries",
        "created_at",
        "started_at",
        "completed_at",
        "statement",
    ];
    let out = rows
        .into_iter()
        .map(|r| {
            let s = |v: String| Some(v.into_bytes());
            let o = |v: Option<String>| v.map(String::into_bytes);
            vec![
                s(r.uuid),
                s(r.keyspace),
                s(r.shard),
                s(r.cluster),
                s(r.database),
                s(r.table),
                s(r.strategy.as_str().to_string()),
                s(r.status.as_str().to_string()),
                s(r.stage),
                s(format!("{:.1}", r.progress)),
                s(r.rows_copied.to_string()),
                s(r.rows_total.to_string()),
                o(r.eta_seconds.map(|e| e.to_string())),
                o(r.throttle_reason),
                o(r.message),
                s(r.retries.to_string()),
                s(r.created_at),
                o(r.started_at),
                o(r.completed_at),
                s(r.statement),
            ]
        })
        .collect();
    Ok((columns, out))
}

/// `ALTER MIGRATION ...`: applies the request on every cluster it concerns; returns
/// how many rows changed.
pub async fn alter_migration(
    vs: &VSchema,
    target: &store::Target,
    request: Request,
) -> Result<u64, ProxyError> {
    let mut changed = 0;
    for cluster in vs.clusters.values() {
        if let store::Target::All {
            cluster: Some(only),
        } = target
        {
            if *only != cluster.name {
                continue;
            }
        }
        let mut conn = connect(cluster).await?;
        store::ensure_schema(&mut conn)
            .await
            .map_err(|e| ProxyError::cluster_unavailable(&cluster.name, e))?;
        changed += store::request(&mut conn, target, request)
            .await
            .map_err(|e| ProxyError::cluster_unavailable(&cluster.name, e))?;
    }
    if let store::Target::All {
        cluster: Some(only),
    } = target
    {
        if vs.cluster(only).is_none() {
            return Err(ProxyError::unroutable(format!(
                "shardgate: unknown cluster '{only}'"
            )));
        }
    }
    Ok(changed)
}

/// A session setting of shardgate's DDL handling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DdlSetting {
    /// `SET @@ddl_wait = N`: block up to N seconds for a queued change (0: do not).
    Wait(Duration),
    /// `SET @@ddl_strategy = 'auto' | 'copy' | 'direct'`: `copy` forces a copy even where
    /// instant would do; `direct` (admin only) runs the statement as written, still one
    /// at a time through the queue.
    Strategy(Option<Strategy>),
    /// `SET @@ddl_postpone_completion = 1`: copies stop before the cut-over until
    /// `ALTER MIGRATION 'uuid' COMPLETE`.
    PostponeCompletion(bool),
}

/// Parses `SET [SESSION] [@@[SESSION.]]ddl_wait | ddl_strategy | ddl_postpone_completion = value`.
pub fn parse_ddl_setting(sql: &str) -> Option<Result<DdlSetting, ProxyError>> {
    let text = sql.trim().trim_end_matches(';').trim();
    // Every statement passes here: only a short SET naming a ddl_ setting is looked at.
    let is_set = text.len() < 128
        && text.get(..3).is_some_and(|w| w.eq_ignore_ascii_case("SET"))
        && text
            .as_bytes()
            .windows(4)
            .any(|w| w.eq_ignore_ascii_case(b"ddl_"));
    if !is_set {
        return None;
    }
    let upper = text.to_ascii_uppercase();
    let rest = upper.strip_prefix("SET")?;
    if !rest.starts_with(char::is_whitespace) {
        return None;
    }
    let rest = rest.trim_start();
    let rest = rest
        .strip_prefix("SESSION ")
        .map(str::trim_start)
        .unwrap_or(rest);
    let rest = rest
        .strip_prefix("@@SESSION.")
        .or_else(|| rest.strip_prefix("@@"))
        .unwrap_or(rest);
    let (name, value) = rest.split_once('=')?;
    let value = value.trim().trim_matches(|c| c == '\'' || c == '"');
    let bad = |m: &str| Some(Err(ProxyError::unroutable(format!("shardgate: {m}"))));
    match name.trim() {
        "DDL_WAIT" => match value.parse::<f64>() {
            Ok(v) if v.is_finite() && (0.0..=86_400.0).contains(&v) => {
                Some(Ok(DdlSetting::Wait(Duration::from_secs_f64(v))))
            }
            _ => bad("ddl_wait takes a number of seconds (0 to 86400)"),
        },
        "DDL_STRATEGY" => match value {
            "AUTO" | "DEFAULT" => Some(Ok(DdlSetting::Strategy(None))),
            "COPY" => Some(Ok(DdlSetting::Strategy(Some(Strategy::Copy)))),
            "DIRECT" => Some(Ok(DdlSetting::Strategy(Some(Strategy::Direct)))),
            _ => bad("ddl_strategy is 'auto', 'copy' or 'direct'"),
        },
        "DDL_POSTPONE_COMPLETION" => match value {
            "1" | "ON" | "TRUE" => Some(Ok(DdlSetting::PostponeCompletion(true))),
            "0" | "OFF" | "FALSE" => Some(Ok(DdlSetting::PostponeCompletion(false))),
            _ => bad("ddl_postpone_completion is 0 or 1"),
        },
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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

    #[test]
    fn ddl_settings_parse() {
        let ok = |sql: &str| parse_ddl_setting(sql).and_then(Result::ok);
        assert_eq!(
            ok("SET @@ddl_wait = 30"),
            Some(DdlSetting::Wait(Duration::from_secs(30)))
        );
        assert_eq!(
            ok("set session ddl_wait=0.5"),
            Some(DdlSetting::Wait(Duration::from_millis(500)))
        );
        assert_eq!(
            ok("SET @@session.ddl_strategy = 'copy'"),
            Some(DdlSetting::Strategy(Some(Strategy::Copy)))
        );
        assert_eq!(
            ok("SET ddl_strategy='auto'"),
            Some(DdlSetting::Strategy(None))
        );
        assert_eq!(
            ok("SET @@ddl_postpone_completion = ON"),
            Some(DdlSetting::PostponeCompletion(true))
        );
        assert!(matches!(
            parse_ddl_setting("SET @@ddl_wait = -1"),
            Some(Err(_))
        ));
        assert!(matches!(
            parse_ddl_setting("SET @@ddl_strategy = 'fast'"),
            Some(Err(_))
        ));
        assert!(parse_ddl_setting("SET @@sql_mode = ''").is_none());
        assert!(parse_ddl_setting("SET @x = 1, @@ddl_wait = 3").is_none());
        assert!(parse_ddl_setting("SETTINGS").is_none());
    }

    #[test]
    fn queued_statements_name_their_table() {
        assert_eq!(
            table_and_strategy("DROP TABLE IF EXISTS `app`.`old_stuff`").ok(),
            Some(("old_stuff".to_string(), Strategy::Direct))
        );
        assert_eq!(
            table_and_strategy("TRUNCATE TABLE logs").ok(),
            Some(("logs".to_string(), Strategy::Direct))
        );
        assert_eq!(
            table_and_strategy("truncate logs").ok(),
            Some(("logs".to_string(), Strategy::Direct))
        );
    }
}
