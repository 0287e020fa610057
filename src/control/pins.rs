//! The pin directory: pins kept in the topology store (not in the vschema document),
//! cached in memory ([`crate::vschema::PinDirectory`], one per sharded keyspace, shared
//! by every runtime snapshot) and changed one at a time (`PIN WORKSPACE`,
//! `UNPIN WORKSPACE`, or another proxy's change reported by the store's watch).
//!
//! A change is written to the store first; only when that succeeded is the in-memory
//! directory changed (in place: every snapshot sees it at once), and then the control
//! plane records it as a version (`SHOW VSCHEMA HISTORY`).

use std::collections::HashMap;

use crate::shared::Shared;
use crate::topo::{KeyspacePins, PinChange, TopoError};
use crate::vschema::{Keyspace, PinDirectory, VSchema};

/// Loads every pin of the store into the runtime snapshot (at start, and after the
/// store was unreachable). Pins of keyspaces the vschema does not have (or that are
/// not sharded), and pins naming a shard the keyspace does not have, are left out with
/// a warning; a keyspace the store holds no pins for gets an empty directory.
pub async fn load_directory(shared: &Shared) -> Result<(), String> {
    let started = std::time::Instant::now();
    let loaded = shared
        .plane
        .topo()
        .load_pins()
        .await
        .map_err(|e| format!("cannot load the pin directory: {e}"))?;
    let vs = shared.vschema();
    let total = install(&vs, loaded);
    tracing::info!(
        pins = total,
        ms = started.elapsed().as_millis() as u64,
        "pin directory loaded"
    );
    Ok(())
}

/// Installs `loaded` into the directories of `vs`'s sharded keyspaces (in place, so
/// every snapshot sharing them sees the pins); returns how many pins were installed.
pub fn install(vs: &VSchema, loaded: Vec<KeyspacePins>) -> usize {
    let mut by_name: HashMap<String, KeyspacePins> = loaded
        .into_iter()
        .map(|k| (k.keyspace.clone(), k))
        .collect();
    let mut total = 0;
    for ks in vs.keyspaces.values().filter(|k| k.sharded) {
        let pins = match by_name.remove(&ks.name) {
            Some(k) => indexed(ks, k),
            None => Vec::new(),
        };
        total += pins.len();
        ks.directory.replace_all(pins);
    }
    for (name, k) in by_name {
        if !k.pins.is_empty() {
            tracing::warn!(keyspace = %name, pins = k.pins.len(), "the pin directory has pins of a keyspace the vschema has no sharded keyspace for: ignored");
        }
    }
    total
}

/// The store's pins of `ks`, with shard names turned into `ks`'s shard indexes; pins
/// naming an unknown shard are dropped (and counted in a warning).
fn indexed(ks: &Keyspace, k: KeyspacePins) -> Vec<(u64, u32)> {
    let map: Vec<Option<u32>> = k
        .shards
        .iter()
        .map(|name| ks.shard_index(name).and_then(|i| u32::try_from(i).ok()))
        .collect();
    let mut pins = k.pins;
    let before = pins.len();
    if map.iter().enumerate().all(|(i, m)| *m == Some(i as u32)) {
        // The store's shard numbering is the keyspace's: no rewrite.
        return pins;
    }
    pins.retain_mut(|p| match map.get(p.1 as usize).copied().flatten() {
        Some(index) => {
            p.1 = index;
            true
        }
        None => false,
    });
    if pins.len() < before {
        tracing::warn!(keyspace = %ks.name, dropped = before - pins.len(), "pins of the directory name shards the keyspace does not have: ignored");
    }
    pins
}

/// Moves the pin directory of `old`'s sharded keyspaces into `new` (the integrator
/// calls this whenever a new document is applied). Same shard list: the directory is
/// shared as is. Changed shard list: indexes are remapped by shard name, and pins of a
/// shard that no longer exists are dropped (counted in a warning per keyspace).
pub fn carry_directory(old: &VSchema, new: &mut VSchema) {
    for (name, ks) in new.keyspaces.iter_mut() {
        if !ks.sharded {
            continue;
        }
        let Some(before) = old.keyspace(name).filter(|k| k.sharded) else {
            continue;
        };
        let same_shards = before.shards.len() == ks.shards.len()
            && before
                .shards
                .iter()
                .zip(&ks.shards)
                .all(|(a, b)| a.name == b.name);
        if same_shards {
            ks.directory = before.directory.clone();
        } else {
            let map: Vec<Option<u32>> = before
                .shards
                .iter()
                .map(|s| ks.shard_index(&s.name).and_then(|i| u32::try_from(i).ok()))
                .collect();
            let mut pins = before.directory.to_vec();
            let count = pins.len();
            pins.retain_mut(|p| match map.get(p.1 as usize).copied().flatten() {
                Some(index) => {
                    p.1 = index;
                    true
                }
                None => false,
            });
            if pins.len() < count {
                tracing::warn!(keyspace = %name, dropped = count - pins.len(), "pins of the directory dropped: their shards are gone from the new vschema");
            }
            ks.directory = PinDirectory::from_pins(pins);
        }
        // The document's pins are few: look each up in the directory, not the reverse.
        let doubled = ks
            .pins
            .range(0..=u64::MAX)
            .filter(|(&w, _)| ks.directory.get(w).is_some())
            .count();
        if doubled > 0 {
            tracing::warn!(keyspace = %name, workspaces = doubled, "workspaces pinned both in the document and in the pin directory: the document's pin is used");
        }
    }
}

/// Applies one pin change reported by the store's watch (made by any proxy). An
/// unknown or unsharded keyspace, or an unknown shard, is ignored with a warning.
pub fn apply_pin_event(shared: &Shared, change: &PinChange) {
    apply_to(&shared.vschema(), change);
}

/// [`apply_pin_event`] on `vs`; returns whether the change was applied.
pub fn apply_to(vs: &VSchema, change: &PinChange) -> bool {
    let Some(ks) = vs.keyspace(&change.keyspace).filter(|k| k.sharded) else {
        tracing::warn!(keyspace = %change.keyspace, workspace = change.workspace, "pin change for a keyspace this vschema has no sharded keyspace for: ignored");
        return false;
    };
    let index = match &change.shard {
        None => None,
        Some(name) => match ks.shard_index(&name.to_ascii_lowercase()) {
            Some(i) => Some(i),
            None => {
                tracing::warn!(keyspace = %ks.name, workspace = change.workspace, shard = %name, "pin change to a shard the keyspace does not have: ignored");
                return false;
            }
        },
    };
    let before = ks.directory.set(change.workspace, index);
    if before != index {
        tracing::info!(keyspace = %ks.name, workspace = change.workspace, shard = change.shard.as_deref().unwrap_or("(unpinned)"), "pin changed by another proxy");
    }
    true
}

/// Writes `change` to the store, then (only if that succeeded) to the in-memory
/// directory of `ks` (every snapshot sees it at once). Returns the line that describes
/// it, for [`record_pin_change`].
pub async fn change_pin(
    shared: &Shared,
    ks: &Keyspace,
    change: PinChange,
    author: &str,
) -> Result<String, TopoError> {
    let index = match &change.shard {
        Some(name) => ks.shard_index(name),
        None => None,
    };
    let line = match &change.shard {
        Some(shard) => format!(
            "pin workspace {} of keyspace {} to shard {shard}",
            change.workspace, change.keyspace
        ),
        None => format!(
            "unpin workspace {} of keyspace {}",
            change.workspace, change.keyspace
        ),
    };
    shared.plane.topo().set_pin(change.clone()).await?;
    ks.directory.set(change.workspace, index);
    tracing::info!(user = %author, "{line}");
    Ok(line)
}

/// Records a pin change made through this proxy as a version of the vschema history.
/// The change is in force already; a failure here is logged, not returned.
pub async fn record_pin_change(shared: &Shared, author: &str, line: &str) {
    if let Err(e) = shared
        .plane
        .note_pin_change(author, vec![line.to_string()])
        .await
    {
        tracing::warn!(error = %e, "the pin change is in force but was not recorded in the vschema history");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vschema(shards: &[&str]) -> VSchema {
        let list: Vec<String> = shards
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{{ name = \"{s}\", cluster = \"c1\", database = \"d{i}\" }}"))
            .collect();
        let text = format!(
            "[clusters.c1]\nprimary = \"127.0.0.1:1\"\nuser = \"u\"\npassword = \"p\"\n\
             [keyspaces.app]\nsharded = true\nvindex = \"xxhash\"\nshards = [{}]\n",
            list.join(", ")
        );
        VSchema::from_toml_str(&text).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn an_unchanged_shard_list_shares_the_directory() {
        let old = vschema(&["-80", "80-"]);
        old.keyspaces["app"].directory.set(5, Some(1));
        let mut new = vschema(&["-80", "80-"]);
        carry_directory(&old, &mut new);
        assert!(new.keyspaces["app"]
            .directory
            .same(&old.keyspaces["app"].directory));
        assert_eq!(new.keyspaces["app"].shard_index_for_workspace(5), 1);
    }

    #[test]
    fn a_changed_shard_list_remaps_by_name_and_drops_pins_of_removed_shards() {
        let old = vschema(&["-40", "40-80", "80-"]);
        let d = &old.keyspaces["app"].directory;
        d.set(1, Some(0));
        d.set(2, Some(1));
        d.set(3, Some(2));
        // "80-" split in two: its pin is dropped, the others keep their indexes.
        let mut new = vschema(&["-40", "40-80", "80-c0", "c0-"]);
        carry_directory(&old, &mut new);
        let carried = &new.keyspaces["app"].directory;
        assert!(!carried.same(d));
        assert_eq!(carried.to_vec(), vec![(1, 0), (2, 1)]);
        // "-40" split in two: "40-80" and "80-" move to indexes 2 and 3.
        let mut split = vschema(&["-20", "20-40", "40-80", "80-"]);
        carry_directory(&old, &mut split);
        assert_eq!(
            split.keyspaces["app"].directory.to_vec(),
            vec![(2, 2), (3, 3)]
        );
        assert_eq!(split.keyspaces["app"].shard_index_for_workspace(3), 3);
    }

    #[test]
    fn another_proxys_change_is_applied_when_its_keyspace_and_shard_are_known() {
        let vs = vschema(&["-80", "80-"]);
        let change = |keyspace: &str, shard: Option<&str>| PinChange {
            keyspace: keyspace.into(),
            workspace: 11,
            shard: shard.map(Into::into),
        };
        assert!(apply_to(&vs, &change("app", Some("80-"))));
        assert_eq!(vs.keyspaces["app"].pin_of(11), Some((1, false)));
        assert!(!apply_to(&vs, &change("app", Some("c0-"))));
        assert!(!apply_to(&vs, &change("nope", Some("80-"))));
        assert_eq!(vs.keyspaces["app"].pin_of(11), Some((1, false)));
        assert!(apply_to(&vs, &change("app", None)));
        assert_eq!(vs.keyspaces["app"].pin_of(11), None);
    }

    #[test]
    fn installing_the_store_maps_shard_names_and_skips_unknown_ones() {
        let vs = vschema(&["-80", "80-"]);
        let n = install(
            &vs,
            vec![
                KeyspacePins {
                    keyspace: "app".into(),
                    shards: vec!["80-".into(), "gone".into(), "-80".into()],
                    pins: vec![(1, 0), (2, 1), (3, 2)],
                },
                KeyspacePins {
                    keyspace: "other".into(),
                    shards: vec!["-".into()],
                    pins: vec![(9, 0)],
                },
            ],
        );
        assert_eq!(n, 2);
        let ks = &vs.keyspaces["app"];
        assert_eq!(ks.directory.to_vec(), vec![(1, 1), (3, 0)]);
        assert_eq!(ks.shard_index_for_workspace(1), 1);
        assert_eq!(ks.pin_of(3), Some((0, false)));
    }
}
