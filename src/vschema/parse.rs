//! The vschema file as written: serde structs that mirror the TOML, before validation.
//!
//! Nearly every field is optional here so that a missing value becomes a validation
//! error with its entry path, reported together with every other problem, instead of
//! serde stopping at the first one. Unknown fields are still refused by serde.

use std::collections::BTreeMap;

use serde::Deserialize;

use super::VSchemaError;

/// The whole document.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVSchema {
    #[serde(default)]
    pub clusters: BTreeMap<String, RawCluster>,
    #[serde(default)]
    pub keyspaces: BTreeMap<String, RawKeyspace>,
}

/// `[clusters.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    pub primary: Option<String>,
    #[serde(default)]
    pub standbys: Vec<String>,
    pub user: Option<String>,
    pub password: Option<String>,
}

/// `[keyspaces.NAME]`
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeyspace {
    #[serde(default)]
    pub sharded: bool,
    pub vindex: Option<String>,
    pub default_column: Option<String>,
    pub shards: Option<Vec<RawShard>>,
    pub tables: Option<BTreeMap<String, RawTable>>,
    pub pins: Option<BTreeMap<String, String>>,
    pub cluster: Option<String>,
    pub database: Option<String>,
    #[serde(default)]
    pub default: bool,
    pub tenancy: Option<String>,
    pub database_template: Option<String>,
    pub ddl: Option<String>,
}

/// One entry of `shards = [...]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShard {
    pub name: Option<String>,
    pub cluster: Option<String>,
    pub database: Option<String>,
}

/// One entry of `[keyspaces.NAME.tables]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTable {
    pub column: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// Parses the TOML text; a syntax error or a field serde refuses becomes one error
/// located at its line and column.
pub(crate) fn parse_document(text: &str) -> Result<RawVSchema, VSchemaError> {
    toml::from_str(text).map_err(|e| {
        let at = match e.span() {
            Some(span) => {
                let (line, column) = line_and_column(text, span.start);
                format!("line {line}, column {column}")
            }
            None => "document".to_string(),
        };
        VSchemaError {
            at,
            message: e.message().trim().to_string(),
        }
    })
}

/// 1-based line and column (in characters) of byte `offset` in `text`.
fn line_and_column(text: &str, offset: usize) -> (usize, usize) {
    let before = text.get(..offset).unwrap_or(text);
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}
