//! `SHOW MIGRATIONS` and `ALTER MIGRATION`: the migration queue as admins see and steer
//! it. Each cluster's queue is read or changed on all clusters at once, each within
//! the control deadline; a cluster that cannot be reached is reported by name, never
//! waited on past its deadline and never allowed to hide the others.

use crate::admin::{ClusterFailure, ControlPool};
use crate::error::ProxyError;
use crate::migrations::store::{self, MigrationRow};
use crate::migrations::Request;
use crate::vschema::{Cluster, VSchema};

/// The columns of `SHOW MIGRATIONS`.
const COLUMNS: [&str; 21] = [
    "uuid",
    "keyspace",
    "shard",
    "cluster",
    "database",
    "table",
    "strategy",
    "status",
    "stage",
    "capture",
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

/// A text result row.
type Row = Vec<Option<Vec<u8>>>;

/// `SHOW MIGRATIONS [LIKE 'pattern']`: column names and rows, from every cluster.
///
/// The queue rows come oldest first. Then, for each cluster that could not be read
/// within the control deadline or answered with an error, one row with only `cluster`,
/// `status` (`unreachable` or `error`) and `message` (naming the cluster and why) set:
/// that cluster's migrations are unknown, which a client must not mistake for none.
pub async fn show_migrations(
    control: &ControlPool,
    vs: &VSchema,
    pattern: Option<&str>,
) -> Result<(Vec<&'static str>, Vec<Row>), ProxyError> {
    let results = control
        .on_each(vs.clusters.values(), |_, mut c| async move {
            let rows = store::list(c.sql(), pattern).await?;
            c.release();
            Ok(rows)
        })
        .await;
    let mut rows: Vec<MigrationRow> = Vec::new();
    let mut failures = Vec::new();
    for (_, r) in results {
        match r {
            Ok(r) => rows.extend(r),
            Err(f) => failures.push(f),
        }
    }
    rows.sort_by(|a, b| {
        (&a.created_at, &a.spec.uuid, &a.spec.database).cmp(&(
            &b.created_at,
            &b.spec.uuid,
            &b.spec.database,
        ))
    });
    let mut out: Vec<Row> = rows.into_iter().map(migration_row).collect();
    out.extend(failures.iter().map(failure_row));
    Ok((COLUMNS.to_vec(), out))
}

fn migration_row(r: MigrationRow) -> Row {
    let s = |v: String| Some(v.into_bytes());
    let o = |v: Option<String>| v.map(String::into_bytes);
    vec![
        s(r.spec.uuid),
        s(r.spec.keyspace),
        s(r.spec.shard),
        s(r.spec.cluster),
        s(r.spec.database),
        s(r.spec.table),
        s(r.spec.strategy.as_str().to_string()),
        s(r.status.as_str().to_string()),
        s(r.stage),
        o(r.capture),
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
        s(r.spec.statement),
    ]
}

/// The row that stands for a cluster whose queue could not be read.
fn failure_row(f: &ClusterFailure) -> Row {
    let mut row: Row = vec![None; COLUMNS.len()];
    let status = if f.unreachable {
        "unreachable"
    } else {
        "error"
    };
    let message = format!("{f}; its migrations are not shown");
    for (i, name) in COLUMNS.iter().enumerate() {
        row[i] = match *name {
            "cluster" => Some(f.cluster.clone().into_bytes()),
            "status" => Some(status.as_bytes().to_vec()),
            "message" => Some(message.clone().into_bytes()),
            _ => None,
        };
    }
    row
}

/// `ALTER MIGRATION 'uuid' | ALL [ON CLUSTER c] ...`: applies the request on every
/// cluster it concerns, at once; returns how many rows changed.
///
/// When a cluster cannot be reached (or fails), the request still applies on the
/// others, and the answer is `ERROR 1105` naming the clusters where it applied (with
/// the rows changed there) and those where it did not, so the DBA knows exactly what
/// to run again. An OK with a warning would not do: the warning could not be read with
/// `SHOW WARNINGS`, which goes to a backend.
pub async fn alter_migration(
    control: &ControlPool,
    vs: &VSchema,
    target: &store::Target,
    request: Request,
) -> Result<u64, ProxyError> {
    let clusters: Vec<&Cluster> = match target {
        store::Target::All {
            cluster: Some(only),
        } => vec![vs.cluster(only).ok_or_else(|| {
            ProxyError::unroutable(format!("shardgate: unknown cluster '{only}'"))
        })?],
        _ => vs.clusters.values().collect(),
    };
    let results = control
        .on_each(clusters, |_, mut c| async move {
            let n = store::request(c.sql(), target, request).await?;
            c.release();
            Ok(n)
        })
        .await;
    let mut changed = 0;
    let mut applied = Vec::new();
    let mut failed = Vec::new();
    for (cluster, r) in results {
        match r {
            Ok(n) => {
                changed += n;
                applied.push(cluster.name.as_str());
            }
            Err(f) => failed.push(f),
        }
    }
    let Some(first) = failed.first() else {
        return Ok(changed);
    };
    let applied = if applied.is_empty() {
        "applied nowhere".to_string()
    } else {
        format!("applied on {} ({changed} rows changed)", applied.join(", "))
    };
    let not: Vec<String> = failed.iter().map(ClusterFailure::describe).collect();
    let hint = match target {
        store::Target::Uuid(u) => format!("; migration '{u}' may have rows there"),
        store::Target::All { .. } => String::new(),
    };
    let mut e = ProxyError::cluster_unavailable(&first.cluster, &first.reason);
    e.message = format!(
        "shardgate: ALTER MIGRATION {} {applied}; NOT applied on {}{hint}; run it again once the cluster is back",
        request_name(request),
        not.join(", ")
    );
    Err(e)
}

fn request_name(r: Request) -> &'static str {
    match r {
        Request::Pause => "PAUSE",
        Request::Resume => "RESUME",
        Request::Cancel => "CANCEL",
        Request::Retry => "RETRY",
        Request::Complete => "COMPLETE",
    }
}
