//! `SHOW WORKSPACE n [IN KEYSPACE k]` and `SHOW WORKSPACES WITH ERRORS`: the
//! per-workspace view of the last minute's statements and errors
//! ([`crate::health::WorkspaceErrors`], `docs/traffic.md`), next to where each workspace
//! lives and how its cluster is.

use crate::error::ProxyError;
use crate::health::workspaces::{WorkspaceSummary, WINDOW};
use crate::shared::Shared;
use crate::vschema::{Keyspace, Tenancy};

use super::traffic::Row;

/// Rows `SHOW WORKSPACES WITH ERRORS` shows at most.
pub const MAX_ERROR_ROWS: usize = 100;

/// The columns of `SHOW WORKSPACE`.
pub const WORKSPACE_COLUMNS: [&str; 14] = [
    "Keyspace",
    "Database",
    "Shard",
    "Cluster",
    "Placement",
    "Health",
    "Intent",
    "Statements_60s",
    "Errors_60s",
    "Error_rate",
    "Last_error_code",
    "Last_error",
    "Last_error_s",
    "Pinned_in",
];

/// The columns of `SHOW WORKSPACES WITH ERRORS`.
pub const ERROR_COLUMNS: [&str; 9] = [
    "Keyspace",
    "Workspace",
    "Cluster",
    "Statements_60s",
    "Errors_60s",
    "Error_rate",
    "Last_error_code",
    "Last_error",
    "Last_error_s",
];

fn text(s: impl Into<String>) -> Option<Vec<u8>> {
    Some(s.into().into_bytes())
}

fn rate(s: &WorkspaceSummary) -> String {
    format!("{:.3}", s.error_rate())
}

/// The last-error cells: code, message, seconds since (NULL when there was none).
fn last_error_cells(s: &WorkspaceSummary) -> [Option<Vec<u8>>; 3] {
    match &s.last_error {
        Some((e, ago)) => [
            text(e.code.to_string()),
            text(e.message.clone()),
            text(ago.to_string()),
        ],
        None => [None, None, None],
    }
}

/// `SHOW WORKSPACE n [IN KEYSPACE k]`: one row per sharded keyspace (or the one named)
/// of the vschema in force: where the workspace lives there, its cluster's health and
/// intent, and its statements and errors of the last minute.
pub fn show_workspace(
    shared: &Shared,
    workspace: u64,
    keyspace: Option<&str>,
) -> Result<Vec<Row>, ProxyError> {
    let rt = shared.runtime();
    let keyspaces: Vec<&Keyspace> = match keyspace {
        Some(name) => match rt.vschema.keyspace(name) {
            Some(ks) if ks.sharded => vec![ks],
            Some(_) => {
                return Err(ProxyError::unroutable(format!(
                    "shardgate: keyspace '{name}' is not sharded: it has no workspaces"
                )))
            }
            None => {
                return Err(ProxyError::unroutable(format!(
                    "shardgate: there is no keyspace '{name}'"
                )))
            }
        },
        None => rt
            .vschema
            .keyspaces
            .values()
            .filter(|k| k.sharded)
            .collect(),
    };
    let mut keyspaces = keyspaces;
    keyspaces.sort_by(|a, b| a.name.cmp(&b.name));
    let mut rows = Vec::with_capacity(keyspaces.len());
    for ks in keyspaces {
        if ks.shards.is_empty() {
            continue;
        }
        let shard = ks.shard_for_workspace(workspace);
        let pin = ks.pin_of(workspace);
        let database = match &ks.tenancy {
            Tenancy::SharedTables => shard.database.clone(),
            Tenancy::DatabasePerWorkspace { .. } => {
                ks.database_for_workspace(workspace).unwrap_or_default()
            }
        };
        let pool = rt.pool(&shard.cluster);
        let summary =
            shared
                .workspaces
                .workspace(&ks.name, workspace)
                .unwrap_or(WorkspaceSummary {
                    statements: 0,
                    errors: 0,
                    last_error: None,
                });
        let mut row = vec![
            text(ks.name.clone()),
            text(database),
            text(shard.name.clone()),
            text(shard.cluster.clone()),
            text(if pin.is_some() { "pinned" } else { "hashed" }),
            pool.and_then(|p| text(p.health.get().name())),
            pool.and_then(|p| text(p.traffic.intent().name())),
            text(summary.statements.to_string()),
            text(summary.errors.to_string()),
            text(rate(&summary)),
        ];
        row.extend(last_error_cells(&summary));
        // Where the pin lives: the document (`ALTER VSCHEMA`) or the directory
        // (`PIN WORKSPACE`); NULL when it has none.
        row.push(pin.map(|(_, document)| {
            let place = if document { "document" } else { "directory" };
            place.as_bytes().to_vec()
        }));
        rows.push(row);
    }
    Ok(rows)
}

/// `SHOW WORKSPACES WITH ERRORS`: the workspaces whose statements got at least one
/// error in the last minute, most errors first, at most [`MAX_ERROR_ROWS`].
pub fn show_workspaces_with_errors(shared: &Shared) -> Vec<Row> {
    let rt = shared.runtime();
    debug_assert_eq!(WINDOW.as_secs(), 60, "the column names say 60s");
    shared
        .workspaces
        .with_errors(MAX_ERROR_ROWS)
        .into_iter()
        .map(|r| {
            // Where it lives now (a keyspace dropped from the vschema since: unknown).
            let cluster = rt
                .vschema
                .keyspace(&r.keyspace)
                .filter(|ks| !ks.shards.is_empty())
                .map(|ks| ks.shard_for_workspace(r.workspace).cluster.clone());
            let mut row = vec![
                text(r.keyspace.to_string()),
                text(r.workspace.to_string()),
                cluster.map(|c| c.into_bytes()),
                text(r.summary.statements.to_string()),
                text(r.summary.errors.to_string()),
                text(rate(&r.summary)),
            ];
            row.extend(last_error_cells(&r.summary));
            row
        })
        .collect()
}
