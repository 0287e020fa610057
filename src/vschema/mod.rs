//! The shard map ("vschema"): clusters, keyspaces, shards, tables, vindexes and pins.
//!
//! Loaded from a TOML file (see `docs/vschema.md`), validated as a whole, and then
//! immutable: a live edit builds a new `VSchema` and swaps the `Arc` the router reads.

use std::collections::{BTreeMap, HashMap};

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
    /// User shardgate logs in as.
    pub user: String,
    /// Password of that user.
    pub password: String,
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
    /// Workspace id -> index into `shards`; overrides the vindex.
    pub pins: HashMap<u64, usize>,
    /// Whether this is the default (pass-through) keyspace.
    pub default: bool,
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

// ---- API (bodies are filled in by the vschema implementation) ----

impl VSchema {
    /// Parses and validates a TOML vschema document.
    pub fn from_toml_str(text: &str) -> Result<VSchema, VSchemaErrors> {
        let _ = text;
        todo!()
    }

    /// Reads, parses and validates a vschema file.
    pub fn load(path: &std::path::Path) -> Result<VSchema, VSchemaErrors> {
        let _ = path;
        todo!()
    }

    /// The keyspace named `name`.
    pub fn keyspace(&self, name: &str) -> Option<&Keyspace> {
        self.keyspaces.get(name)
    }

    /// The cluster named `name`.
    pub fn cluster(&self, name: &str) -> Option<&Cluster> {
        self.clusters.get(name)
    }

    /// A short human summary: clusters, keyspaces, shard placement, table and pin counts.
    pub fn describe(&self) -> String {
        todo!()
    }
}

impl Vindex {
    /// The keyspace id of a workspace id.
    pub fn keyspace_id(&self, workspace: u64) -> [u8; 8] {
        let _ = workspace;
        todo!()
    }
}

impl KeyRange {
    /// Parses a Vitess-style shard name (`-40`, `40-80`, `80-`, `-`).
    pub fn parse(name: &str) -> Result<KeyRange, String> {
        let _ = name;
        todo!()
    }

    /// Whether the range holds keyspace id `id`.
    pub fn contains(&self, id: &[u8; 8]) -> bool {
        let _ = id;
        todo!()
    }
}

impl Keyspace {
    /// Index into `shards` of the shard that owns `workspace`: its pin if it has one,
    /// else the shard whose key range holds the vindex's keyspace id.
    pub fn shard_index_for_workspace(&self, workspace: u64) -> usize {
        let _ = workspace;
        todo!()
    }

    /// The shard that owns `workspace`.
    pub fn shard_for_workspace(&self, workspace: u64) -> &Shard {
        &self.shards[self.shard_index_for_workspace(workspace)]
    }

    /// Index of the shard named `name`.
    pub fn shard_index(&self, name: &str) -> Option<usize> {
        self.shards.iter().position(|s| s.name == name)
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
