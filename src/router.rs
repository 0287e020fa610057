//! Turns a statement's plan plus the vschema into backend targets: which cluster, which
//! database, and (for a multi-row INSERT that spans shards) which rows go where.

use crate::error::ProxyError;
use crate::name::Name;
use crate::planner::{Route, ShardingSchema, StatementKind, StatementPlan};
use crate::vschema::{Keyspace, RangePlacement, Tenancy, VSchema, SPAN_NAMES};

/// What database a session is in, as the vschema sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DbContext {
    /// No database selected.
    None,
    /// A keyspace of the vschema.
    Keyspace(String),
    /// A database the vschema does not name, served unchanged by the default keyspace's
    /// cluster.
    PassThrough(String),
    /// One workspace's own database in a `database_per_workspace` keyspace (`ws_42`).
    Workspace {
        /// The keyspace.
        keyspace: String,
        /// The workspace.
        workspace: u64,
        /// Its database name.
        database: String,
    },
}

/// Whether `target` is one of `keyspace`'s shards (without building their targets).
pub fn is_shard_of(vs: &VSchema, keyspace: &str, target: &Target) -> bool {
    vs.keyspace(keyspace).is_some_and(|ks| {
        ks.shards.iter().any(|s| {
            s.cluster == target.cluster && target.database.as_deref() == Some(s.database.as_str())
        })
    })
}

/// The target of one workspace's own database.
pub fn workspace_target(ks: &Keyspace, workspace: u64, database: &str) -> Target {
    let shard = ks.shard_for_workspace(workspace);
    Target {
        cluster: Name::new(&shard.cluster),
        database: Some(Name::new(database)),
        label: Name::concat(&[&ks.name, "/", database, " (", &shard.name, ")"]),
    }
}

/// One backend destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Cluster name.
    pub cluster: Name,
    /// Database to be in (None: none selected).
    pub database: Option<Name>,
    /// How to name it in messages: `app/-40` or `cluster c1`.
    pub label: Name,
}

/// Where one statement goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dispatch {
    /// One backend.
    Single(Target),
    /// Any shard of a sharded keyspace may answer (no sharded table is named): the
    /// session's transaction or last connection there if it has one, else `fallback`.
    AnyShard {
        /// The keyspace.
        keyspace: String,
        /// The shard to use when the session holds none of the keyspace's connections.
        fallback: Target,
    },
    /// An INSERT whose rows span shards: each target with the indexes of its rows.
    SplitInsert(Vec<(Target, Vec<usize>)>),
    /// Every shard in turn (DDL, reference-table writes).
    Broadcast(Vec<Target>),
}

/// The planner's view of a keyspace-less or pass-through session: nothing is sharded.
pub struct Unsharded;

impl ShardingSchema for Unsharded {
    fn is_sharded(&self) -> bool {
        false
    }
    fn sharding_column(&self, _table: &str) -> Option<&str> {
        None
    }
    fn is_reference(&self, _table: &str) -> bool {
        false
    }
}

/// The keyspace a statement runs in: the one it qualifies its tables with, if that is a
/// keyspace, else the session's.
pub fn statement_keyspace<'a>(
    vs: &'a VSchema,
    ctx: &DbContext,
    stmt: &StatementPlan,
) -> Option<&'a Keyspace> {
    if let Some(q) = &stmt.qualified_schema {
        if let Some(ks) = vs.keyspace(q) {
            return Some(ks);
        }
    }
    match ctx {
        DbContext::Keyspace(k) => vs.keyspace(k),
        _ => None,
    }
}

/// The keyspace whose `ddl` policy a schema change follows: the statement's keyspace
/// (see [`statement_keyspace`]), else, for a database the vschema does not list (or no
/// database), the default keyspace that serves it.
pub fn ddl_policy_keyspace<'a>(
    vs: &'a VSchema,
    ctx: &DbContext,
    stmt: &StatementPlan,
) -> Option<&'a Keyspace> {
    if let Some(ks) = statement_keyspace(vs, ctx, stmt) {
        return Some(ks);
    }
    let names_workspace = stmt
        .qualified_schema
        .as_deref()
        .is_some_and(|q| vs.workspace_database(q).is_some());
    match ctx {
        DbContext::None | DbContext::PassThrough(_) if !names_workspace => {
            vs.default_keyspace.as_deref().and_then(|k| vs.keyspace(k))
        }
        _ => None,
    }
}

/// A target on a `database_per_workspace` keyspace's first cluster with no database
/// selected (for statements that touch no table, like `SELECT 1`).
fn shard_target_any_database(ks: &Keyspace) -> Target {
    Target {
        cluster: Name::new(&ks.shards[0].cluster),
        database: None,
        label: Name::concat(&["cluster ", &ks.shards[0].cluster]),
    }
}

/// The target of shard `idx` of `ks` (built with the keyspace, see
/// [`Keyspace::targets`]).
pub(crate) fn shard_target(ks: &Keyspace, idx: usize) -> Target {
    match ks.targets.get(idx) {
        Some(t) => t.clone(),
        None => build_shard_target(ks, idx),
    }
}

/// The target of shard `idx` of `ks`, built from its names.
pub(crate) fn build_shard_target(ks: &Keyspace, idx: usize) -> Target {
    let s = &ks.shards[idx];
    Target {
        cluster: Name::new(&s.cluster),
        database: Some(Name::new(&s.database)),
        label: if ks.sharded {
            Name::concat(&[&ks.name, "/", &s.name])
        } else {
            Name::new(&ks.name)
        },
    }
}

/// The target for a session with no keyspace: the default keyspace's cluster (in the
/// pass-through database, if any), else the first cluster.
fn passthrough_target(vs: &VSchema, ctx: &DbContext) -> Result<Target, ProxyError> {
    let db = match ctx {
        DbContext::PassThrough(d) => Some(Name::new(d)),
        _ => None,
    };
    if let Some(ks) = vs.default_keyspace.as_deref().and_then(|k| vs.keyspace(k)) {
        let s = &ks.shards[0];
        return Ok(Target {
            cluster: Name::new(&s.cluster),
            label: Name::concat(&["cluster ", &s.cluster]),
            database: db,
        });
    }
    // No default keyspace: a session without a database still needs somewhere to run
    // `SELECT 1` or `SELECT @@version`.
    let first = vs
        .keyspaces
        .values()
        .next()
        .and_then(|k| k.shards.first())
        .ok_or_else(|| ProxyError::internal("the vschema has no keyspaces"))?;
    Ok(Target {
        cluster: Name::new(&first.cluster),
        label: Name::concat(&["cluster ", &first.cluster]),
        database: db,
    })
}

/// Routes one planned statement.
pub fn route(vs: &VSchema, ctx: &DbContext, stmt: &StatementPlan) -> Result<Dispatch, ProxyError> {
    // A workspace database named in the statement (`ws_42.t`), or the session's own.
    if let Some(q) = &stmt.qualified_schema {
        if let Some((ks, ws)) = vs.workspace_database(q) {
            return Ok(Dispatch::Single(workspace_target(ks, ws, q)));
        }
    }
    if let DbContext::Workspace {
        keyspace,
        workspace,
        database,
    } = ctx
    {
        if stmt
            .qualified_schema
            .as_deref()
            .is_none_or(|q| vs.keyspace(q).is_none())
        {
            let ks = vs
                .keyspace(keyspace)
                .ok_or_else(|| ProxyError::unknown_database(database))?;
            return Ok(Dispatch::Single(workspace_target(ks, *workspace, database)));
        }
    }
    let Some(ks) = statement_keyspace(vs, ctx, stmt) else {
        return Ok(Dispatch::Single(passthrough_target(vs, ctx)?));
    };
    if !ks.sharded {
        return Ok(Dispatch::Single(shard_target(ks, 0)));
    }
    if ks.tenancy != Tenancy::SharedTables {
        // A database_per_workspace keyspace itself holds no tables: a statement must run
        // in (or name) one workspace's database.
        return match &stmt.route {
            Route::AnyShard => Ok(Dispatch::Single(shard_target_any_database(ks))),
            _ => Err(ProxyError::unroutable(format!(
                "shardgate: keyspace '{}' keeps each workspace in its own database; `USE {}` \
                 (or qualify the tables with it) to name the workspace",
                ks.name,
                ks.database_for_workspace(42)
                    .unwrap_or_default()
                    .replace("42", "<id>")
            ))),
        };
    }
    match &stmt.route {
        Route::AnyShard => Ok(Dispatch::AnyShard {
            keyspace: ks.name.clone(),
            fallback: shard_target(ks, 0),
        }),
        Route::AllShards => Ok(Dispatch::Broadcast(
            (0..ks.shards.len()).map(|i| shard_target(ks, i)).collect(),
        )),
        Route::MissingWorkspace { table, column } => Err(ProxyError::unroutable(format!(
            "shardgate: table '{}.{}' is sharded by '{}', but this statement names no workspace; \
             add `{} = <id>` (or `{} IN (...)`) to its WHERE clause or INSERT columns, \
             or a /*workspace_id:<id>*/ comment",
            ks.name, table, column, column, column
        ))),
        Route::WorkspaceRange {
            table,
            column,
            low,
            high,
        } => range_target(ks, table, column, *low, *high).map(Dispatch::Single),
        Route::Unroutable(msg) => Err(ProxyError::unroutable(format!("shardgate: {msg}"))),
        Route::LoadDataUnpinned { table } => Err(ProxyError::unroutable(format!(
            "shardgate: LOAD DATA into table '{}.{table}' is refused: keyspace '{}' shares its \
             tables between workspaces, and shardgate sends the file to one shard without \
             splitting its rows; run it in the workspace's database, or tag it with \
             /* workspace_id=<id> */ when every row belongs to that workspace",
            ks.name, ks.name
        ))),
        Route::Workspaces(ids) => {
            let mut shards: Vec<usize> = Vec::with_capacity(1);
            for &id in ids {
                let s = ks.shard_index_for_workspace(id);
                if !shards.contains(&s) {
                    shards.push(s);
                }
            }
            match shards.as_slice() {
                [] => Ok(Dispatch::Single(shard_target(ks, 0))),
                [one] => Ok(Dispatch::Single(shard_target(ks, *one))),
                _ => split_insert(ks, stmt, &shards, ids),
            }
        }
    }
}

/// The shard of a statement limited to the ids `[low, high]` of `table.column`.
fn range_target(
    ks: &Keyspace,
    table: &str,
    column: &str,
    low: u64,
    high: u64,
) -> Result<Target, ProxyError> {
    match ks.placement_of_range(low, high) {
        RangePlacement::OneShard(i) => Ok(shard_target(ks, i)),
        RangePlacement::Spans(shards) => {
            let mut names: Vec<&str> = shards
                .iter()
                .filter_map(|&i| ks.shards.get(i).map(|s| s.name.as_str()))
                .collect();
            if names.len() >= SPAN_NAMES {
                names.push("...");
            }
            Err(ProxyError::unroutable(format!(
                "shardgate: the range {column} {low} to {high} of table '{}.{table}' spans shards \
                 {} (by key range or by pins); statements across shards are not supported yet: \
                 split the range at the shard boundaries and send one statement per shard, \
                 or name the workspaces with `{column} IN (...)`",
                ks.name,
                names.join(", ")
            )))
        }
        RangePlacement::Unordered => Err(ProxyError::unroutable(format!(
            "shardgate: table '{}.{table}' is limited by a range of '{column}' ({low} to {high}), \
             but keyspace '{}' places workspaces by the {} vindex, which scatters neighbouring \
             ids over its shards; ranges need an order-preserving vindex (numeric): name the \
             workspaces with `{column} = <id>` or `{column} IN (...)`",
            ks.name,
            ks.name,
            ks.vindex.name()
        ))),
    }
}

fn split_insert(
    ks: &Keyspace,
    stmt: &StatementPlan,
    shards: &[usize],
    ids: &[u64],
) -> Result<Dispatch, ProxyError> {
    let StatementKind::Insert(shape) = &stmt.kind else {
        let names: Vec<&str> = shards.iter().map(|&i| ks.shards[i].name.as_str()).collect();
        return Err(ProxyError::unroutable(format!(
            "shardgate: this statement's workspaces ({}) live on different shards ({}) of keyspace '{}'; \
             statements across shards are not supported yet (only a multi-row INSERT is split): \
             send one statement per workspace",
            join_ids(ids),
            names.join(", "),
            ks.name
        )));
    };
    let mut parts: Vec<(Target, Vec<usize>)> = shards
        .iter()
        .map(|&i| (shard_target(ks, i), Vec::new()))
        .collect();
    for (row, (_, ws)) in shape.rows.iter().enumerate() {
        let Some(ws) = ws else {
            return Err(ProxyError::unroutable(
                "shardgate: an INSERT row names no workspace".to_string(),
            ));
        };
        let s = ks.shard_index_for_workspace(*ws);
        let Some(pos) = shards.iter().position(|&x| x == s) else {
            return Err(ProxyError::internal("row routed to an unplanned shard"));
        };
        parts[pos].1.push(row);
    }
    Ok(Dispatch::SplitInsert(parts))
}

fn join_ids(ids: &[u64]) -> String {
    let mut s: Vec<String> = ids.iter().take(10).map(|i| i.to_string()).collect();
    if ids.len() > 10 {
        s.push("...".into());
    }
    s.join(", ")
}
