//! The vschema as a TOML document: written back from a validated [`VSchema`] (for a
//! shard map given in memory), read into the editable form that `ALTER VSCHEMA`
//! changes, and shown with passwords hidden.

use std::collections::BTreeMap;

use super::parse::{self, RawCluster, RawKeyspace, RawShard, RawTable, RawVSchema};
use super::{DdlPolicy, TableKind, Tenancy, VSchema, VSchemaErrors};

/// What `SHOW VSCHEMA` and `GET /vschema` show instead of a cluster's password; a
/// document sent back with it keeps the cluster's current password.
pub const HIDDEN_PASSWORD: &str = "********";

/// A vschema document being edited: parsed, not validated.
#[derive(Debug, Clone)]
pub struct Document(pub(crate) RawVSchema);

impl Document {
    /// Parses `text` (syntax and unknown fields only; [`VSchema::from_toml_str`]
    /// validates).
    pub fn parse(text: &str) -> Result<Document, VSchemaErrors> {
        parse::parse_document(text)
            .map(Document)
            .map_err(|e| VSchemaErrors(vec![e]))
    }

    /// The document as TOML text.
    pub fn to_text(&self) -> String {
        toml::to_string(&self.0).unwrap_or_default()
    }

    /// The document with every password replaced by [`HIDDEN_PASSWORD`].
    pub fn hide_passwords(&self) -> Document {
        let mut d = self.clone();
        for c in d.0.clusters.values_mut() {
            if c.password.as_deref().is_some_and(|p| !p.is_empty()) {
                c.password = Some(HIDDEN_PASSWORD.to_string());
            }
        }
        d
    }

    /// Replaces each [`HIDDEN_PASSWORD`] with the password `current` has for that
    /// cluster; a hidden password of a cluster `current` lacks stays hidden (and
    /// fails to log in: the diff shows it).
    pub fn restore_passwords(&mut self, current: &VSchema) {
        for (name, c) in self.0.clusters.iter_mut() {
            if c.password.as_deref() == Some(HIDDEN_PASSWORD) {
                if let Some(cur) = current.clusters.get(name) {
                    c.password = Some(cur.password.clone());
                }
            }
        }
    }

    /// Validates the document, as `shardgate vschema check` does.
    pub fn validate(&self) -> Result<VSchema, VSchemaErrors> {
        super::validate::build(self.0.clone())
    }
}

impl VSchema {
    /// The shard map as a document (pins included, passwords included).
    pub fn to_document(&self) -> Document {
        let clusters = self
            .clusters
            .values()
            .map(|c| {
                (
                    c.name.clone(),
                    RawCluster {
                        primary: Some(c.primary.clone()),
                        standbys: c.standbys.clone(),
                        user: Some(c.user.clone()),
                        password: (!c.password.is_empty()).then(|| c.password.clone()),
                    },
                )
            })
            .collect();
        let keyspaces = self
            .keyspaces
            .values()
            .map(|k| {
                let tables: BTreeMap<String, RawTable> = k
                    .tables
                    .iter()
                    .map(|(name, kind)| {
                        let t = match kind {
                            TableKind::Sharded { column } => RawTable {
                                column: Some(column.clone()),
                                kind: None,
                            },
                            TableKind::Reference => RawTable {
                                column: None,
                                kind: Some("reference".to_string()),
                            },
                        };
                        (name.clone(), t)
                    })
                    .collect();
                let mut raw = RawKeyspace {
                    sharded: k.sharded,
                    default: k.default,
                    tables: (!tables.is_empty()).then_some(tables),
                    ddl: (k.ddl == DdlPolicy::Direct).then(|| "direct".to_string()),
                    ..RawKeyspace::default()
                };
                if k.sharded {
                    let per_workspace = k.tenancy != Tenancy::SharedTables;
                    raw.vindex = Some(k.vindex.name().to_string());
                    raw.default_column = k.default_column.clone();
                    if let Tenancy::DatabasePerWorkspace { prefix, suffix } = &k.tenancy {
                        raw.tenancy = Some("database_per_workspace".to_string());
                        raw.database_template = Some(format!("{prefix}{{id}}{suffix}"));
                    }
                    raw.shards = Some(
                        k.shards
                            .iter()
                            .map(|s| RawShard {
                                name: Some(s.name.clone()),
                                cluster: Some(s.cluster.clone()),
                                database: (!per_workspace).then(|| s.database.clone()),
                            })
                            .collect(),
                    );
                    let pins: BTreeMap<String, String> = k
                        .pins
                        .range(0..=u64::MAX)
                        .filter_map(|(ws, i)| {
                            k.shards.get(*i).map(|s| (ws.to_string(), s.name.clone()))
                        })
                        .collect();
                    raw.pins = (!pins.is_empty()).then_some(pins);
                } else if let Some(s) = k.shards.first() {
                    raw.cluster = Some(s.cluster.clone());
                    raw.database = Some(s.database.clone());
                }
                (k.name.clone(), raw)
            })
            .collect();
        Document(RawVSchema {
            clusters,
            keyspaces,
        })
    }
}
