//! Application DDL through the proxy: what a session does with a schema change. Changes
//! to existing tables are queued in the migration queue (never forwarded blindly) with
//! one row per target database, `CREATE TABLE`/`CREATE DATABASE` run at once, and
//! `@@ddl_wait` blocks for the outcome; the `ddl_*` session settings steer it.
//!
//! Cluster work goes through [`ControlPool`] (pooled connections, a deadline per
//! cluster, all clusters at once). Admins see and steer the queue with
//! [`crate::admin`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::admin::{ClusterFailure, ControlPool};
use crate::backend::SqlError;
use crate::error::ProxyError;
use crate::migrations::store::{self, MigrationRow};
use crate::migrations::{strategy, NewMigration, Request, Status, Strategy};
use crate::planner::DdlKind;
use crate::router::DbContext;
use crate::vschema::{Cluster, DdlPolicy, Keyspace, Tenancy, VSchema};

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
    control: &ControlPool,
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
            let listed = control
                .on_each(clusters.into_values(), |_, mut c| async move {
                    let dbs = c.sql().query("SHOW DATABASES").await?;
                    c.release();
                    Ok(dbs)
                })
                .await;
            let mut failed = Vec::new();
            for (cluster, dbs) in listed {
                let dbs = match dbs {
                    Ok(d) => d,
                    Err(f) => {
                        failed.push(f);
                        continue;
                    }
                };
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
            if !failed.is_empty() {
                return Err(clusters_failed(
                    &failed,
                    format!(
                        "shardgate: cannot list the workspace databases of keyspace '{}' on {}; nothing was queued",
                        ks.name,
                        describe_all(&failed)
                    ),
                ));
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

/// The vschema's clusters named by `names`; a name it does not know is shardgate's
/// own mistake (rows are built from the same vschema).
fn clusters_named<'v>(
    vs: &'v VSchema,
    names: impl IntoIterator<Item = &'v str>,
) -> Result<Vec<&'v Cluster>, ProxyError> {
    names
        .into_iter()
        .map(|name| {
            vs.cluster(name)
                .ok_or_else(|| ProxyError::internal(format!("unknown cluster {name}")))
        })
        .collect()
}

/// The error for an operation that failed on some clusters.
fn clusters_failed(failed: &[ClusterFailure], message: String) -> ProxyError {
    let first = failed.first();
    let mut e = ProxyError::cluster_unavailable(
        first.map(|f| f.cluster.as_str()).unwrap_or(""),
        first.map(|f| f.reason.as_str()).unwrap_or(""),
    );
    e.message = message;
    e
}

fn describe_all(failed: &[ClusterFailure]) -> String {
    failed
        .iter()
        .map(ClusterFailure::describe)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Writes the rows into each cluster's queue, on all clusters at once.
///
/// All or nothing as far as it can be: every target cluster is asked first (within the
/// control deadline) and nothing is queued unless all answer. A cluster that fails
/// between that check and its enqueue makes the rows already queued on the others be
/// cancelled, and the error names the cluster that failed and where the migration was
/// cancelled. A DDL queued on some shards only would leave the schema diverging and
/// make the client's retry fail where it did run.
pub async fn enqueue(
    control: &ControlPool,
    vs: &VSchema,
    rows: &[NewMigration],
) -> Result<(), ProxyError> {
    let mut by_cluster: BTreeMap<&str, Vec<NewMigration>> = BTreeMap::new();
    for r in rows {
        by_cluster.entry(&r.cluster).or_default().push(r.clone());
    }
    let clusters = clusters_named(vs, by_cluster.keys().copied())?;
    // First make sure every target cluster answers, so that an unreachable one is found
    // before anything is queued anywhere: once queued, a row may start at the executor's
    // next poll, long before another cluster's deadline runs out.
    let probed = control
        .on_each(clusters.iter().copied(), |_, mut c| async move {
            if !c.sql().ping().await {
                return Err(SqlError::Connection("no answer to COM_PING".into()).into());
            }
            c.release();
            Ok(())
        })
        .await;
    let unreachable: Vec<ClusterFailure> =
        probed.into_iter().filter_map(|(_, r)| r.err()).collect();
    if !unreachable.is_empty() {
        return Err(clusters_failed(
            &unreachable,
            format!(
                "shardgate: the schema change was not queued anywhere: {}",
                describe_all(&unreachable)
            ),
        ));
    }
    // `store::enqueue` writes 200 rows per statement: a keyspace with thousands of
    // workspace databases gets a deadline per batch.
    let batches = by_cluster
        .values()
        .map(|r| r.len().div_ceil(200))
        .max()
        .unwrap_or(1);
    let by_cluster = &by_cluster;
    let results = control
        .on_each_within(
            clusters,
            u32::try_from(batches).unwrap_or(u32::MAX),
            |cluster, mut c| async move {
                let mine = by_cluster
                    .get(cluster.name.as_str())
                    .map(Vec::as_slice)
                    .unwrap_or_default();
                store::enqueue(c.sql(), mine).await?;
                c.release();
                Ok(())
            },
        )
        .await;
    let mut queued = Vec::new();
    let mut failed = Vec::new();
    for (cluster, r) in results {
        match r {
            Ok(()) => queued.push(cluster),
            Err(f) => failed.push(f),
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let Some(uuid) = rows.first().map(|r| r.uuid.as_str()) else {
        return Ok(());
    };
    let mut message = format!(
        "shardgate: the schema change could not be queued on {}",
        describe_all(&failed)
    );
    if queued.is_empty() {
        message.push_str("; nothing was queued");
    } else {
        // Withdraw it where it was queued (rows not yet started are cancelled at once).
        let target = store::Target::Uuid(uuid.to_string());
        let target = &target;
        let cancelled = control
            .on_each(queued, |_, mut c| async move {
                store::request(c.sql(), target, Request::Cancel).await?;
                c.release();
                Ok(())
            })
            .await;
        let mut done = Vec::new();
        let mut stuck = Vec::new();
        for (cluster, r) in cancelled {
            match r {
                Ok(()) => done.push(cluster.name.as_str()),
                Err(f) => stuck.push(f),
            }
        }
        if !done.is_empty() {
            message.push_str(&format!(
                "; migration {uuid} was queued on {} and is cancelled there",
                done.join(", ")
            ));
        }
        if !stuck.is_empty() {
            message.push_str(&format!(
                "; it stays queued on {}: ALTER MIGRATION '{uuid}' CANCEL",
                describe_all(&stuck)
            ));
        }
    }
    Err(clusters_failed(&failed, message))
}

/// How long a cluster a migration runs on may stay out of sight before `@@ddl_wait`
/// gives up on it, in units of the control deadline (at least two polls fail).
const UNSEEN_GIVE_UP_DEADLINES: u32 = 2;

/// Waits until the migration of `rows` (one uuid) reaches a final status, or `limit`
/// passes. Returns the overall status and the first error message of a failed row.
///
/// Polls only the clusters the rows were queued on, all at once, over pooled control
/// connections. A cluster that cannot be seen for two control deadlines in a row ends
/// the wait with an error naming it (its part of the migration is unknown), instead
/// of waiting for it until `limit`.
pub async fn wait(
    control: &ControlPool,
    vs: &VSchema,
    rows: &[NewMigration],
    limit: Duration,
) -> Result<(Status, Option<String>), ProxyError> {
    let uuid = rows
        .first()
        .map(|r| r.uuid.as_str())
        .ok_or_else(|| ProxyError::internal("shardgate: waiting for a migration with no rows"))?;
    let names: BTreeSet<&str> = rows.iter().map(|r| r.cluster.as_str()).collect();
    let clusters = clusters_named(vs, names)?;
    let give_up = control.timeout() * UNSEEN_GIVE_UP_DEADLINES;
    let deadline = Instant::now() + limit;
    let mut unseen_since: HashMap<&str, Instant> = HashMap::new();
    let mut pause = Duration::from_millis(100);
    loop {
        let polled_at = Instant::now();
        let results = control
            .on_each(clusters.iter().copied(), |cluster, mut c| async move {
                let mut rows = store::get(c.sql(), uuid).await?;
                c.release();
                // Two vschema clusters on one server share one queue table.
                rows.retain(|r| r.spec.cluster == cluster.name);
                Ok(rows)
            })
            .await;
        let mut seen: Vec<MigrationRow> = Vec::new();
        let mut failed = Vec::new();
        for (cluster, r) in results {
            match r {
                Ok(rows) => {
                    unseen_since.remove(cluster.name.as_str());
                    seen.extend(rows);
                }
                Err(f) => {
                    unseen_since.entry(&cluster.name).or_insert(polled_at);
                    failed.push(f);
                }
            }
        }
        let status = store::overall_status(&seen).unwrap_or(Status::Queued);
        let now = Instant::now();
        if !failed.is_empty() {
            let lost = unseen_since
                .values()
                .any(|since| now.duration_since(*since) >= give_up);
            if lost || now >= deadline {
                let elsewhere = if seen.is_empty() {
                    String::new()
                } else {
                    format!("; on the other clusters it is {}", status.as_str())
                };
                return Err(clusters_failed(
                    &failed,
                    format!(
                        "shardgate: migration {uuid}: cannot see {} so its state there is unknown{elsewhere}; it goes on: SHOW MIGRATIONS LIKE '{uuid}'",
                        describe_all(&failed)
                    ),
                ));
            }
        } else if status.is_final() || now >= deadline {
            let message = seen
                .iter()
                .find(|r| r.status == Status::Failed)
                .and_then(|r| {
                    r.message
                        .as_ref()
                        .map(|m| format!("{} ({}): {m}", r.spec.database, r.spec.cluster))
                });
            return Ok((status, message));
        }
        crate::timer::sleep(pause.min(deadline.saturating_duration_since(Instant::now()))).await;
        pause = (pause * 2).min(Duration::from_secs(1));
    }
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
