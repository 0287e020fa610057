//! What changes between two shard maps: one line per change for the history, and the
//! changes that would move existing workspaces' rows to another shard (refused unless
//! the change says so: moving data is the workspace-move feature's job, not a side
//! effect of an edit).

use crate::vschema::{Keyspace, TableKind, VSchema};

/// The changes from one shard map to the next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Diff {
    /// Every change, one line each (passwords never shown).
    pub lines: Vec<String>,
    /// The changes that move rows, one line each, saying which rows and where.
    pub movements: Vec<String>,
}

impl Diff {
    /// Whether nothing changed.
    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }
}

/// The changes from `old` to `new`.
pub fn diff(old: &VSchema, new: &VSchema) -> Diff {
    let mut d = Diff::default();
    for (name, c) in &new.clusters {
        match old.clusters.get(name) {
            None => d
                .lines
                .push(format!("cluster {name}: added (primary {})", c.primary)),
            Some(o) => {
                if o.primary != c.primary {
                    d.lines.push(format!(
                        "cluster {name}: primary {} -> {}",
                        o.primary, c.primary
                    ));
                }
                if o.standbys != c.standbys {
                    d.lines.push(format!(
                        "cluster {name}: standbys [{}] -> [{}]",
                        o.standbys.join(", "),
                        c.standbys.join(", ")
                    ));
                }
                if o.user != c.user {
                    d.lines
                        .push(format!("cluster {name}: user {} -> {}", o.user, c.user));
                }
                if o.password != c.password {
                    d.lines.push(format!("cluster {name}: password changed"));
                }
            }
        }
    }
    for name in old.clusters.keys() {
        if !new.clusters.contains_key(name) {
            d.lines.push(format!("cluster {name}: dropped"));
        }
    }
    for (name, k) in &new.keyspaces {
        match old.keyspaces.get(name) {
            None => d.lines.push(format!(
                "keyspace {name}: added ({}, {})",
                if k.sharded { "sharded" } else { "unsharded" },
                k.shards
                    .iter()
                    .map(|s| format!("{} on {}/{}", s.name, s.cluster, s.database))
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            Some(o) => keyspace(o, k, &mut d),
        }
    }
    for name in old.keyspaces.keys() {
        if !new.keyspaces.contains_key(name) {
            d.lines.push(format!("keyspace {name}: dropped"));
        }
    }
    if old.default_keyspace != new.default_keyspace {
        d.lines.push(format!(
            "default keyspace: {} -> {}",
            old.default_keyspace.as_deref().unwrap_or("(none)"),
            new.default_keyspace.as_deref().unwrap_or("(none)")
        ));
    }
    d
}

fn keyspace(o: &Keyspace, k: &Keyspace, d: &mut Diff) {
    let name = &k.name;
    let mut moved = |d: &mut Diff, line: String| {
        d.lines.push(line.clone());
        d.movements.push(line);
    };
    if o.sharded != k.sharded {
        moved(
            d,
            format!(
                "keyspace {name}: {} -> {} (every row would be placed anew)",
                if o.sharded { "sharded" } else { "unsharded" },
                if k.sharded { "sharded" } else { "unsharded" }
            ),
        );
        return;
    }
    if k.sharded && o.vindex != k.vindex {
        moved(
            d,
            format!(
                "keyspace {name}: vindex {} -> {} (workspaces would be placed anew)",
                o.vindex.name(),
                k.vindex.name()
            ),
        );
    }
    if o.tenancy != k.tenancy {
        moved(
            d,
            format!("keyspace {name}: tenancy or database_template changed (workspaces' databases would be looked up elsewhere)"),
        );
    }
    let placement = |ks: &Keyspace| -> Vec<(String, String, String)> {
        ks.shards
            .iter()
            .map(|s| (s.name.clone(), s.cluster.clone(), s.database.clone()))
            .collect()
    };
    if placement(o) != placement(k) {
        let names = |ks: &Keyspace| {
            ks.shards
                .iter()
                .map(|s| format!("{} on {}/{}", s.name, s.cluster, s.database))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let same_ranges = o.shards.len() == k.shards.len()
            && o.shards
                .iter()
                .zip(&k.shards)
                .all(|(a, b)| a.range == b.range);
        let why = if same_ranges {
            "the workspaces of a shard would be served from another cluster or database"
        } else {
            "key ranges changed: workspaces would be served from other shards"
        };
        moved(
            d,
            format!(
                "keyspace {name}: shards [{}] -> [{}] ({why})",
                names(o),
                names(k)
            ),
        );
    }
    for (t, kind) in &k.tables {
        match o.tables.get(t) {
            None => d.lines.push(format!(
                "keyspace {name}: table {t} added ({})",
                kind_name(kind)
            )),
            Some(ok) if ok != kind => {
                let line = format!(
                    "keyspace {name}: table {t}: {} -> {}",
                    kind_name(ok),
                    kind_name(kind)
                );
                if k.sharded {
                    moved(d, format!("{line} (its rows were placed by the old rule)"));
                } else {
                    d.lines.push(line);
                }
            }
            Some(_) => {}
        }
    }
    for (t, kind) in &o.tables {
        if !k.tables.contains_key(t) {
            let line = format!("keyspace {name}: table {t} dropped ({})", kind_name(kind));
            match (&k.default_column, kind) {
                // Still sharded by the same column through default_column: no move.
                (Some(c), TableKind::Sharded { column }) if c.eq_ignore_ascii_case(column) => {
                    d.lines.push(line)
                }
                (_, TableKind::Sharded { .. }) if k.sharded => moved(
                    d,
                    format!("{line} (its rows would no longer be routed by workspace)"),
                ),
                _ => d.lines.push(line),
            }
        }
    }
    if o.default_column != k.default_column {
        let line = format!(
            "keyspace {name}: default_column {} -> {}",
            o.default_column.as_deref().unwrap_or("(none)"),
            k.default_column.as_deref().unwrap_or("(none)")
        );
        if k.sharded && o.default_column.is_some() {
            moved(
                d,
                format!("{line} (tables not listed were placed by the old column)"),
            );
        } else {
            d.lines.push(line);
        }
    }
    if k.sharded {
        pins(o, k, d, &mut moved);
    }
    if o.default != k.default {
        d.lines
            .push(format!("keyspace {name}: default = {}", k.default));
    }
    if o.ddl != k.ddl {
        d.lines.push(format!("keyspace {name}: ddl policy changed"));
    }
}

fn pins(o: &Keyspace, k: &Keyspace, d: &mut Diff, moved: &mut impl FnMut(&mut Diff, String)) {
    let name = &k.name;
    let shard =
        |ks: &Keyspace, i: usize| ks.shards.get(i).map_or("?".to_string(), |s| s.name.clone());
    for (ws, i) in k.pins.range(0..=u64::MAX) {
        match o.pins.get(ws) {
            None => d.lines.push(format!(
                "keyspace {name}: workspace {ws} pinned to {}",
                shard(k, *i)
            )),
            Some(oi) if shard(o, *oi) != shard(k, *i) => moved(
                d,
                format!(
                    "keyspace {name}: workspace {ws} pin {} -> {} (its rows stay on {})",
                    shard(o, *oi),
                    shard(k, *i),
                    shard(o, *oi)
                ),
            ),
            Some(_) => {}
        }
    }
    for (ws, oi) in o.pins.range(0..=u64::MAX) {
        if !k.pins.contains_key(ws) {
            let to = k.shards[k.shard_index_for_workspace(*ws)].name.clone();
            let from = shard(o, *oi);
            if from == to {
                d.lines.push(format!(
                    "keyspace {name}: workspace {ws} unpinned (stays on {to})"
                ));
            } else {
                moved(
                    d,
                    format!("keyspace {name}: workspace {ws} unpinned: {from} -> {to} (its rows stay on {from})"),
                );
            }
        }
    }
}

fn kind_name(k: &TableKind) -> String {
    match k {
        TableKind::Sharded { column } => format!("sharded by {column}"),
        TableKind::Reference => "reference".to_string(),
    }
}
