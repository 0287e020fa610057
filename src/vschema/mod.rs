//! The shard map ("vschema"): clusters, keyspaces, shards, tables, vindexes and pins.
//!
//! Loaded from a TOML file (see `docs/vschema.md`), validated as a whole, and then
//! immutable: a live edit builds a new `VSchema` and swaps the `Arc` the router reads.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use crate::planner::ShardingSchema;
pub use document::{Document, HIDDEN_PASSWORD};
pub use pins::{PinDirectory, PinMap};
pub use range::{RangePlacement, SPAN_NAMES};

mod document;
mod keyrange;
mod parse;
/// The document's raw (unvalidated) form, for edits.
pub(crate) mod parse_types {
    pub(crate) use super::parse::{RawCluster, RawKeyspace, RawShard, RawTable, RawVSchema};
}
mod pins;
mod range;
mod validate;
mod vindex;

#[cfg(test)]
mod tests;

/// A validated shard map.
#[derive(Debug, Clone)]
pub struct VSchema {
    /// Clusters by name.
    pub clusters: BTreeMap<String, Cluster>,
    /// Keyspaces by name (the database names applications `USE`).
    pub keyspaces: BTreeMap<String, Keyspace>,
    /// The unsharded keyspace that serves sessions with no database or with a database
    /// the vschema does not name (pass-through), if one is marked `default = true`.
    pub default_keyspace: Option<String>,
}

/// One replicated MySQL/MariaDB group; the unit of failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// Name used by shards to refer to this cluster.
    pub name: String,
    /// `host:port` of the primary.
    pub primary: String,
    /// `host:port` of each standby (replicas that a failover may promote), in the
    /// order of preference.
    pub standbys: Vec<String>,
    /// User shardgate logs in as.
    pub user: String,
    /// Password of that user.
    pub password: String,
    /// TLS to this cluster (from the config's `[backend_tls]`, not the vschema file);
    /// None: plain TCP.
    pub tls: Option<std::sync::Arc<crate::backend::tls::BackendTls>>,
}

/// How a workspace id becomes a keyspace id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Vindex {
    /// xxHash64 (seed 0) of the id as 8 bytes big-endian; the hash, big-endian, is the keyspace id.
    Xxhash,
    /// The id itself, 8 bytes big-endian (range placement).
    Numeric,
}

/// A half-open range of keyspace ids `[start, end)`; an empty bound is unbounded.
/// Bounds are compared as byte strings, so `40` means `0x40 00 00 ...`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    /// Inclusive lower bound; empty = from the start.
    pub start: Vec<u8>,
    /// Exclusive upper bound; empty = to the end.
    pub end: Vec<u8>,
}

/// A key range of a keyspace, placed on a cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Shard {
    /// Vitess-style name: `-40`, `40-80`, `80-`; `-` (or `0`) for an unsharded keyspace.
    pub name: String,
    /// The keyspace ids it owns.
    pub range: KeyRange,
    /// The cluster that holds it.
    pub cluster: String,
    /// The database on that cluster that holds this shard's tables.
    pub database: String,
}

/// How a table of a sharded keyspace is placed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TableKind {
    /// Rows are placed by the workspace id in this column.
    Sharded {
        /// The sharding column (compared case-insensitively).
        column: String,
    },
    /// A copy of the table lives on every shard; reads go to any shard, writes to all.
    Reference,
}

/// A logical database the application sees.
#[derive(Debug, Clone)]
pub struct Keyspace {
    /// Its name.
    pub name: String,
    /// Whether it is split into key ranges.
    pub sharded: bool,
    /// The vindex of a sharded keyspace (ignored when unsharded).
    pub vindex: Vindex,
    /// Shards sorted by key range; exactly one for an unsharded keyspace.
    pub shards: Vec<Shard>,
    /// Tables by name.
    pub tables: HashMap<String, TableKind>,
    /// The sharding column of any table not listed in `tables`, if set.
    pub default_column: Option<String>,
    /// Workspace id -> index into `shards`, from the document; overrides the vindex.
    pub pins: PinMap,
    /// The pin directory (pins kept in the topology store, `PIN WORKSPACE`): shared by
    /// every snapshot of this keyspace, changed in place; overrides the vindex. A
    /// workspace is never pinned in both (the document's pin wins if it were).
    pub directory: PinDirectory,
    /// Whether this is the default (pass-through) keyspace.
    pub default: bool,
    /// How workspaces' data is laid out.
    pub tenancy: Tenancy,
    /// What happens to DDL sent to this keyspace.
    pub ddl: DdlPolicy,
    /// Each shard's target, built once ([`Keyspace::with_targets`]): routing a
    /// statement clones one (its names are inline) instead of building it.
    pub targets: Vec<crate::router::Target>,
    /// Each shard's range start as a number (big-endian, zero-padded to 8 bytes),
    /// built with `targets`: the keyspace id's owner is then found by comparing
    /// integers. Empty when a start is longer than 8 bytes (the bytes are compared).
    pub starts: Vec<u64>,
}

/// How a sharded keyspace lays out its workspaces.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Tenancy {
    /// Tables carry the workspace column; one database per shard.
    #[default]
    SharedTables,
    /// Every workspace has its own database on its shard's cluster, named by a
    /// template such as `ws_{id}`: the text before and after `{id}`.
    DatabasePerWorkspace {
        /// Text before the id.
        prefix: String,
        /// Text after the id.
        suffix: String,
    },
}

/// What happens to DDL sent through shardgate to a keyspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DdlPolicy {
    /// Held in the durable migration queue and run safely (the default).
    #[default]
    Queued,
    /// Run at once, one statement at a time (for a test database an admin chooses).
    Direct,
}

/// Everything wrong with a vschema document, each error pointing at its entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VSchemaErrors(pub Vec<VSchemaError>);

/// One problem, e.g. `keyspaces.app.shards[2] ("40-90"): overlaps shard "80-c0"`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VSchemaError {
    /// Path of the offending entry, e.g. `keyspaces.app.shards[2]`.
    pub at: String,
    /// What is wrong.
    pub message: String,
}

// ---- API ----
// `KeyRange::parse`/`contains` live in `keyrange.rs`, `Vindex::keyspace_id` in `vindex.rs`.

impl VSchema {
    /// Parses and validates a TOML vschema document.
    pub fn from_toml_str(text: &str) -> Result<VSchema, VSchemaErrors> {
        let raw = parse::parse_document(text).map_err(|e| VSchemaErrors(vec![e]))?;
        validate::build(raw)
    }

    /// Reads, parses and validates a vschema file.
    pub fn load(path: &std::path::Path) -> Result<VSchema, VSchemaErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| {
            VSchemaErrors(vec![VSchemaError {
                at: path.display().to_string(),
                message: format!("cannot read the vschema file: {e}"),
            }])
        })?;
        VSchema::from_toml_str(&text)
    }

    /// Makes every cluster use `tls` (None: plain TCP). The config applies its
    /// `[backend_tls]` this way; live edits clone clusters, so it stays in force.
    pub fn with_backend_tls(
        mut self,
        tls: Option<std::sync::Arc<crate::backend::tls::BackendTls>>,
    ) -> VSchema {
        for cluster in self.clusters.values_mut() {
            cluster.tls = tls.clone();
        }
        self
    }

    /// The keyspace named `name`.
    pub fn keyspace(&self, name: &str) -> Option<&Keyspace> {
        self.keyspaces.get(name)
    }

    /// The `database_per_workspace` keyspace and workspace a database name belongs to.
    pub fn workspace_database(&self, database: &str) -> Option<(&Keyspace, u64)> {
        self.keyspaces
            .values()
            .find_map(|ks| ks.workspace_of_database(database).map(|id| (ks, id)))
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }

    /// A short human summary: clusters, keyspaces, shard placement, table and pin counts.
    pub fn describe(&self) -> String {
        // `write!` into a String cannot fail, so its results are ignored.
        let mut out = String::new();
        let _ = writeln!(out, "clusters ({}):", self.clusters.len());
        for cluster in self.clusters.values() {
            let _ = writeln!(
                out,
                "  {}  {}  user {}",
                cluster.name, cluster.primary, cluster.user
            );
            if !cluster.standbys.is_empty() {
                let _ = writeln!(out, "      standbys {}", cluster.standbys.join(", "));
            }
        }
        let _ = writeln!(out, "keyspaces ({}):", self.keyspaces.len());
        for keyspace in self.keyspaces.values() {
            let mut facts = Vec::new();
            if keyspace.sharded {
                facts.push(format!("sharded, vindex {}", keyspace.vindex.name()));
            } else {
                facts.push("unsharded".to_string());
            }
            if keyspace.default {
                facts.push("default".to_string());
            }
            facts.push(plural(keyspace.shards.len(), "shard"));
            facts.push(plural(keyspace.tables.len(), "table"));
            if let Some(column) = &keyspace.default_column {
                facts.push(format!("default column {column}"));
            }
            if keyspace.sharded {
                facts.push(plural(keyspace.pins.len(), "pin"));
                if !keyspace.directory.is_empty() {
                    facts.push(format!("{} in the pin directory", keyspace.directory.len()));
                }
            }
            let _ = writeln!(out, "  {}: {}", keyspace.name, facts.join(", "));
            let width = keyspace
                .shards
                .iter()
                .map(|s| s.name.len())
                .max()
                .unwrap_or(0);
            for shard in &keyspace.shards {
                let _ = writeln!(
                    out,
                    "    {:<width$} -> {}/{}",
                    shard.name, shard.cluster, shard.database
                );
            }
        }
        let _ = writeln!(
            out,
            "default keyspace: {}",
            self.default_keyspace.as_deref().unwrap_or("(none)")
        );
        out
    }
}

impl Keyspace {
    /// The keyspace with [`Keyspace::targets`] built from its shards.
    pub fn with_targets(mut self) -> Keyspace {
        self.targets = (0..self.shards.len())
            .map(|i| crate::router::build_shard_target(&self, i))
            .collect();
        self.starts = self
            .shards
            .iter()
            .map(|shard| {
                let start = &shard.range.start;
                let mut padded = [0u8; 8];
                padded.get_mut(..start.len())?.copy_from_slice(start);
                Some(u64::from_be_bytes(padded))
            })
            .collect::<Option<_>>()
            .unwrap_or_default();
        self
    }

    /// Index into `shards` of the shard that owns `workspace`: its pin if it has one,
    /// else the shard whose key range holds the vindex's keyspace id.
    pub fn shard_index_for_workspace(&self, workspace: u64) -> usize {
        if !self.sharded {
            return 0;
        }
        if let Some(&index) = self.pins.get(&workspace) {
            return index;
        }
        if let Some(index) = self.directory.get(workspace) {
            if index < self.shards.len() {
                return index;
            }
        }
        self.vindex_shard_index(workspace)
    }

    /// Where `workspace`'s pin lives, if it has one: its shard index and whether it is
    /// in the document (true) or the directory (false).
    pub fn pin_of(&self, workspace: u64) -> Option<(usize, bool)> {
        if let Some(&index) = self.pins.get(&workspace) {
            return Some((index, true));
        }
        self.directory
            .get(workspace)
            .filter(|&i| i < self.shards.len())
            .map(|i| (i, false))
    }

    /// Visits the pins (document and directory) of the workspaces in `[low, high]`
    /// until `f` returns false: the document's in id order, then the directory's.
    pub fn visit_pins(&self, low: u64, high: u64, mut f: impl FnMut(u64, usize) -> bool) {
        for (&id, &index) in self.pins.range(low..=high) {
            if !f(id, index) {
                return;
            }
        }
        let shards = self.shards.len();
        self.directory.visit_range(low, high, |id, index| {
            // A document pin of the same workspace wins (and was visited above).
            index >= shards || self.pins.contains_key(&id) || f(id, index)
        });
    }

    /// Index into `shards` of the shard whose key range holds `workspace`'s keyspace
    /// id, ignoring pins.
    pub fn vindex_shard_index(&self, workspace: u64) -> usize {
        let id = self.vindex.keyspace_id(workspace);
        // Shards are sorted and tile the whole space, so the owner is the last shard
        // whose start is at or below the id. The first shard starts at the beginning,
        // so there always is one; `saturating_sub` keeps an unvalidated map from panicking.
        if self.starts.len() == self.shards.len() {
            // Zero-padding keeps the order `cmp_bounds` gives (trailing zeros do not
            // count there either).
            let id = u64::from_be_bytes(id);
            return self
                .starts
                .partition_point(|&start| start <= id)
                .saturating_sub(1);
        }
        let after = self.shards.partition_point(|shard| {
            keyrange::cmp_bounds(&shard.range.start, &id) != std::cmp::Ordering::Greater
        });
        after.saturating_sub(1)
    }

    /// The shard that owns `workspace`.
    pub fn shard_for_workspace(&self, workspace: u64) -> &Shard {
        &self.shards[self.shard_index_for_workspace(workspace)]
    }

    /// The workspace a database name belongs to, in a `database_per_workspace` keyspace
    /// (`ws_42` -> 42 with the template `ws_{id}`). Only the canonical decimal form
    /// matches, so `ws_042` is not workspace 42.
    pub fn workspace_of_database(&self, database: &str) -> Option<u64> {
        let Tenancy::DatabasePerWorkspace { prefix, suffix } = &self.tenancy else {
            return None;
        };
        let digits = database
            .strip_prefix(prefix.as_str())?
            .strip_suffix(suffix.as_str())?;
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let id: u64 = digits.parse().ok()?;
        (id.to_string() == digits).then_some(id)
    }

    /// The database of `workspace` in a `database_per_workspace` keyspace.
    pub fn database_for_workspace(&self, workspace: u64) -> Option<String> {
        match &self.tenancy {
            Tenancy::DatabasePerWorkspace { prefix, suffix } => {
                Some(format!("{prefix}{workspace}{suffix}"))
            }
            Tenancy::SharedTables => None,
        }
    }

    /// Index of the shard named `name`.
    pub fn shard_index(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name == name)
    }

    /// The listed table named `table` (exact name first, then ignoring ASCII case),
    /// with the name it is listed under.
    pub fn table(&self, table: &str) -> Option<(&str, &TableKind)> {
        if let Some((name, kind)) = self.tables.get_key_value(table) {
            return Some((name.as_str(), kind));
        }
        self.tables
            .iter()
            .find(|(name, _)| name.eq_ignore_ascii_case(table))
            .map(|(name, kind)| (name.as_str(), kind))
    }

    /// How `table` is placed: its entry in `tables`, else (sharded keyspaces only)
    /// sharded by `default_column` if one is set. None: the table is not sharded
    /// (an unsharded keyspace, or an unlisted table with no default column).
    pub fn table_kind(&self, table: &str) -> Option<Cow<'_, TableKind>> {
        if let Some((_, kind)) = self.table(table) {
            return Some(Cow::Borrowed(kind));
        }
        if !self.sharded {
            return None;
        }
        self.default_column.as_ref().map(|column| {
            Cow::Owned(TableKind::Sharded {
                column: column.clone(),
            })
        })
    }
}

impl ShardingSchema for Keyspace {
    fn is_sharded(&self) -> bool {
        self.sharded
    }

    fn sharding_column(&self, table: &str) -> Option<&str> {
        if !self.sharded {
            return None;
        }
        match self.table(table) {
            Some((_, TableKind::Sharded { column })) => Some(column.as_str()),
            Some((_, TableKind::Reference)) => None,
            None => self.default_column.as_deref(),
        }
    }

    fn is_reference(&self, table: &str) -> bool {
        matches!(self.table(table), Some((_, TableKind::Reference)))
    }

    fn is_listed(&self, table: &str) -> bool {
        self.table(table).is_some()
    }
}

fn plural(count: usize, noun: &str) -> String {
    if count == 1 {
        format!("1 {noun}")
    } else {
        format!("{count} {noun}s")
    }
}

impl std::fmt::Display for VSchemaErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for e in &self.0 {
            writeln!(f, "{}: {}", e.at, e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for VSchemaErrors {}

impl std::fmt::Display for VSchemaError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.at, self.message)
    }
}

impl std::error::Error for VSchemaError {}
