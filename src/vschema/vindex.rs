//! Vindexes: from a workspace id to the 8-byte keyspace id that key ranges split.

use xxhash_rust::xxh64::xxh64;

use super::Vindex;

impl Vindex {
    /// The keyspace id of a workspace id.
    pub fn keyspace_id(&self, workspace: u64) -> [u8; 8] {
        match self {
            Vindex::Xxhash => xxh64(&workspace.to_be_bytes(), 0).to_be_bytes(),
            Vindex::Numeric => workspace.to_be_bytes(),
        }
    }

    /// The name used in vschema files: `xxhash` or `numeric`.
    pub fn name(&self) -> &'static str {
        match self {
            Vindex::Xxhash => "xxhash",
            Vindex::Numeric => "numeric",
        }
    }

    /// The vindex a vschema file names, if it is one we know.
    pub fn from_name(name: &str) -> Option<Vindex> {
        match name {
            "xxhash" => Some(Vindex::Xxhash),
            "numeric" => Some(Vindex::Numeric),
            _ => None,
        }
    }
}
