//! The vschema file as written: serde structs that mirror the TOML, before validation.
//!
//! Nearly every field is optional here so that a missing value becomes a validation
//! error with its entry path, reported together with every other problem, instead of
//! serde stopping at the first one. Unknown fields are still refused by serde.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::VSchemaError;

/// The whole document.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawVSchema {
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub clusters: BTreeMap<String, RawCluster>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub keyspaces: BTreeMap<String, RawKeyspace>,
}

/// `[clusters.NAME]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawCluster {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub primary: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub standbys: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
}

/// `[keyspaces.NAME]`
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawKeyspace {
    #[serde(default, skip_serializing_if = "is_false")]
    pub sharded: bool,
    #[serde(default, skip_serializing_if = "is_false")]
    pub default: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vindex: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tenancy: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database_template: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ddl: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_column: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<Vec<RawShard>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tables: Option<BTreeMap<String, RawTable>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pins: Option<BTreeMap<String, String>>,
}

/// One entry of `shards = [...]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawShard {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub database: Option<String>,
}

/// One entry of `[keyspaces.NAME.tables]`.
#[derive(Debug, Default, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTable {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub column: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
}

fn is_false(b: &bool) -> bool {
    !*b
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
