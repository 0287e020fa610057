//! The pin directory: pins kept in the topology store (not in the vschema document),
//! cached in memory and changed one at a time (`PIN WORKSPACE`, `UNPIN WORKSPACE`).

use crate::shared::Shared;
use crate::topo::PinChange;

/// Loads every pin of the store into the runtime snapshot (at start, and after the
/// store was unreachable).
pub async fn load_directory(_shared: &Shared) -> Result<(), String> {
    Ok(())
}

/// Applies one pin change reported by the store's watch (made by any proxy).
pub fn apply_pin_event(_shared: &Shared, _change: &PinChange) {}
