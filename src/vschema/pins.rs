//! Pins: workspace id -> shard, looked up on every routed statement and scanned by
//! range for `id BETWEEN a AND b`. A keyspace has two kinds:
//!
//! - [`PinMap`], the pins written in the vschema document (`[keyspaces.k.pins]`), part
//!   of the immutable document. Two indexes of the same pins, filled only through
//!   [`PinMap::insert`] so they cannot disagree: a hash map for the point lookup (a
//!   B-tree alone costs about four times as much among a million pins, measured ~0.3 µs
//!   against ~0.07 µs), and an ordered map for the pins inside a range.
//! - [`PinDirectory`], the pins kept in the topology store (`PIN WORKSPACE`), shared by
//!   every runtime snapshot (cloning a snapshot clones one `Arc`) and changed in place
//!   one pin at a time. It is one sorted `Vec<(id, shard)>` (16 bytes a pin: a million
//!   pins take 16 MB) with a guide that finds a pin's neighbourhood in one step (about
//!   2 bytes a pin), plus a small ordered overlay of the changes since it was last
//!   merged; readers load the current state with one atomic pointer load and take no
//!   lock, writers build the next state aside and swap it in. While the directory is
//!   empty a lookup is one atomic load of a flag.

use std::collections::{BTreeMap, HashMap};
use std::ops::RangeInclusive;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;

/// Workspace id -> index into the keyspace's `shards`.
#[derive(Debug, Clone, Default)]
pub struct PinMap {
    by_id: HashMap<u64, usize>,
    ordered: BTreeMap<u64, usize>,
}

impl PinMap {
    /// An empty table.
    pub fn new() -> PinMap {
        PinMap::default()
    }

    /// Pins `workspace` to shard `index` (replacing an earlier pin).
    pub fn insert(&mut self, workspace: u64, index: usize) {
        self.by_id.insert(workspace, index);
        self.ordered.insert(workspace, index);
    }

    /// The shard `workspace` is pinned to.
    pub fn get(&self, workspace: &u64) -> Option<&usize> {
        self.by_id.get(workspace)
    }

    /// Whether `workspace` is pinned.
    pub fn contains_key(&self, workspace: &u64) -> bool {
        self.by_id.contains_key(workspace)
    }

    /// How many workspaces are pinned.
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no workspace is pinned.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The pins of the workspaces in `ids`, in id order.
    pub fn range(&self, ids: RangeInclusive<u64>) -> impl Iterator<Item = (&u64, &usize)> {
        self.ordered.range(ids)
    }
}

/// Changes kept in the overlay before they are merged into the sorted base (a merge
/// copies the base once: ~10 ms for a million pins, on the writer's side).
pub const OVERLAY_MAX: usize = 4096;

/// A guide to the sorted base: the ids' span cut into equal slices (a power of two
/// wide), and for each slice where its pins start. A lookup reads one guide entry and
/// searches the few pins of its slice, instead of a binary search over a million pins
/// (20 dependent cache misses, ~0.5-1 µs on a busy machine). About 2 bytes a pin.
#[derive(Debug, Default)]
struct Guide {
    min: u64,
    shift: u32,
    /// `starts[b]`: index of the first pin of slice `b` or later; one more entry than
    /// slices. Empty: no guide (few pins), search the whole base.
    starts: Vec<u32>,
}

impl Guide {
    fn build(base: &[(u64, u32)]) -> Guide {
        let (Some(first), Some(last)) = (base.first(), base.last()) else {
            return Guide::default();
        };
        if base.len() < 64 || u32::try_from(base.len()).is_err() {
            return Guide::default();
        }
        let min = first.0;
        let span = last.0 - min;
        let target = (base.len() as u64 / 4).next_power_of_two();
        let mut shift = 0;
        while shift < 63 && (span >> shift) >= target {
            shift += 1;
        }
        let slices = (span >> shift) as usize + 1;
        let mut starts = Vec::with_capacity(slices + 1);
        let mut i = 0usize;
        for b in 0..=slices as u64 {
            while i < base.len() && ((base[i].0 - min) >> shift) < b {
                i += 1;
            }
            starts.push(i as u32);
        }
        Guide { min, shift, starts }
    }

    /// Index in `base` of `workspace`'s pin.
    #[inline]
    fn find(&self, base: &[(u64, u32)], workspace: u64) -> Option<usize> {
        if self.starts.is_empty() {
            return base.binary_search_by_key(&workspace, |p| p.0).ok();
        }
        let slice = usize::try_from(workspace.checked_sub(self.min)? >> self.shift).ok()?;
        let lo = *self.starts.get(slice)? as usize;
        let hi = *self.starts.get(slice + 1)? as usize;
        base.get(lo..hi)?
            .binary_search_by_key(&workspace, |p| p.0)
            .ok()
            .map(|j| lo + j)
    }
}

/// One state of a directory: never changed once published.
#[derive(Debug, Default)]
struct DirState {
    /// Pins sorted by workspace id, one per id.
    base: Arc<Vec<(u64, u32)>>,
    /// The guide to `base`.
    guide: Arc<Guide>,
    /// Changes since `base` was built: Some(shard) pinned, None unpinned.
    overlay: BTreeMap<u64, Option<u32>>,
    /// How many workspaces are pinned (base and overlay together).
    len: usize,
}

impl DirState {
    fn get(&self, workspace: u64) -> Option<u32> {
        if !self.overlay.is_empty() {
            if let Some(change) = self.overlay.get(&workspace) {
                return *change;
            }
        }
        self.in_base(workspace)
    }

    fn in_base(&self, workspace: u64) -> Option<u32> {
        self.guide
            .find(&self.base, workspace)
            .and_then(|i| self.base.get(i))
            .map(|p| p.1)
    }

    /// Visits the pins of `[low, high]` in id order until `f` returns false.
    fn visit(&self, low: u64, high: u64, f: &mut dyn FnMut(u64, u32) -> bool) {
        if low > high {
            return;
        }
        let start = self.base.partition_point(|p| p.0 < low);
        let mut base = self.base[start..]
            .iter()
            .take_while(|p| p.0 <= high)
            .peekable();
        let mut overlay = self.overlay.range(low..=high).peekable();
        loop {
            let next = match (base.peek(), overlay.peek()) {
                (None, None) => return,
                (Some(&&(id, shard)), None) => {
                    base.next();
                    Some((id, shard))
                }
                (None, Some(&(&id, change))) => {
                    overlay.next();
                    change.map(|s| (id, s))
                }
                (Some(&&(bid, bshard)), Some(&(&oid, change))) => {
                    if bid < oid {
                        base.next();
                        Some((bid, bshard))
                    } else {
                        if bid == oid {
                            base.next();
                        }
                        overlay.next();
                        change.map(|s| (oid, s))
                    }
                }
            };
            if let Some((id, shard)) = next {
                if !f(id, shard) {
                    return;
                }
            }
        }
    }

    /// Every pin, sorted, overlay merged in.
    fn merged(&self) -> Vec<(u64, u32)> {
        let mut out = Vec::with_capacity(self.len);
        self.visit(0, u64::MAX, &mut |id, s| {
            out.push((id, s));
            true
        });
        out
    }
}

struct DirInner {
    /// Whether any workspace is pinned: the hot path's whole cost while none is.
    nonempty: AtomicBool,
    state: ArcSwap<DirState>,
    /// Serializes writers (readers never take it).
    writer: Mutex<()>,
}

/// The pin directory of one sharded keyspace (see the module documentation). Clones
/// share the same pins: a change through one is seen through all.
#[derive(Clone)]
pub struct PinDirectory(Arc<DirInner>);

impl Default for PinDirectory {
    fn default() -> Self {
        PinDirectory::from_pins(Vec::new())
    }
}

impl std::fmt::Debug for PinDirectory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "PinDirectory({} pins)", self.len())
    }
}

impl PinDirectory {
    /// An empty directory.
    pub fn new() -> PinDirectory {
        PinDirectory::default()
    }

    /// A directory of `pins` (workspace id, shard index), in any order; of two pins of
    /// one workspace the later wins. Sorts in place: no copy of the pins.
    pub fn from_pins(pins: Vec<(u64, u32)>) -> PinDirectory {
        let state = state_of(pins);
        PinDirectory(Arc::new(DirInner {
            nonempty: AtomicBool::new(state.len > 0),
            state: ArcSwap::from_pointee(state),
            writer: Mutex::new(()),
        }))
    }

    /// Whether `self` and `other` are the same directory (clones of one another).
    pub fn same(&self, other: &PinDirectory) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The shard index `workspace` is pinned to.
    #[inline]
    pub fn get(&self, workspace: u64) -> Option<usize> {
        if !self.0.nonempty.load(Ordering::Acquire) {
            return None;
        }
        self.0.state.load().get(workspace).map(|s| s as usize)
    }

    /// How many workspaces are pinned.
    pub fn len(&self) -> usize {
        if !self.0.nonempty.load(Ordering::Acquire) {
            return 0;
        }
        self.0.state.load().len
    }

    /// Whether no workspace is pinned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Visits the pins of the workspaces in `[low, high]` in id order, until `f`
    /// returns false. Reads one consistent state.
    pub fn visit_range(&self, low: u64, high: u64, mut f: impl FnMut(u64, usize) -> bool) {
        if !self.0.nonempty.load(Ordering::Acquire) {
            return;
        }
        let state = self.0.state.load_full();
        state.visit(low, high, &mut |id, s| f(id, s as usize));
    }

    /// Every pin, sorted by workspace id.
    pub fn to_vec(&self) -> Vec<(u64, u32)> {
        self.0.state.load_full().merged()
    }

    /// At most `limit` pins from workspace `from` on, sorted by id.
    pub fn first(&self, from: u64, limit: usize) -> Vec<(u64, usize)> {
        let mut out = Vec::new();
        if limit == 0 {
            return out;
        }
        self.visit_range(from, u64::MAX, |id, s| {
            out.push((id, s));
            out.len() < limit
        });
        out
    }

    fn writer(&self) -> std::sync::MutexGuard<'_, ()> {
        self.0.writer.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pins `workspace` to shard `index`, or (None) unpins it. Returns the shard it
    /// was pinned to before.
    pub fn set(&self, workspace: u64, index: Option<usize>) -> Option<usize> {
        let _w = self.writer();
        let old = self.0.state.load_full();
        let before = old.get(workspace);
        let index = index.and_then(|i| u32::try_from(i).ok());
        if before == index {
            return before.map(|s| s as usize);
        }
        let len = match (before, index) {
            (None, Some(_)) => old.len + 1,
            (Some(_), None) => old.len.saturating_sub(1),
            _ => old.len,
        };
        let in_base = old.in_base(workspace);
        let mut overlay = old.overlay.clone();
        if in_base == index {
            // Back to what the base says: the overlay entry is not needed.
            overlay.remove(&workspace);
        } else {
            overlay.insert(workspace, index);
        }
        let mut next = DirState {
            base: old.base.clone(),
            guide: old.guide.clone(),
            overlay,
            len,
        };
        if next.overlay.len() > OVERLAY_MAX {
            next = state_of(next.merged());
        }
        if len > 0 {
            self.0.state.store(Arc::new(next));
            self.0.nonempty.store(true, Ordering::Release);
        } else {
            self.0.nonempty.store(false, Ordering::Release);
            self.0.state.store(Arc::new(next));
        }
        before.map(|s| s as usize)
    }

    /// Replaces every pin with `pins` (see [`PinDirectory::from_pins`]).
    pub fn replace_all(&self, pins: Vec<(u64, u32)>) {
        let _w = self.writer();
        let state = state_of(pins);
        let nonempty = state.len > 0;
        if nonempty {
            self.0.state.store(Arc::new(state));
            self.0.nonempty.store(true, Ordering::Release);
        } else {
            self.0.nonempty.store(false, Ordering::Release);
            self.0.state.store(Arc::new(state));
        }
    }

    /// How many changes wait in the overlay (for tests and the bench).
    pub fn overlay_len(&self) -> usize {
        self.0.state.load().overlay.len()
    }
}

/// Sorts `pins` by id, keeps the last pin of each id.
fn state_of(mut pins: Vec<(u64, u32)>) -> DirState {
    // Stable, so that of equal ids the later stays later; then keep the last of a run.
    pins.sort_by_key(|p| p.0);
    let mut write = 0usize;
    for read in 0..pins.len() {
        if write > 0 && pins[write - 1].0 == pins[read].0 {
            pins[write - 1] = pins[read];
        } else {
            pins[write] = pins[read];
            write += 1;
        }
    }
    pins.truncate(write);
    pins.shrink_to_fit();
    DirState {
        len: pins.len(),
        guide: Arc::new(Guide::build(&pins)),
        base: Arc::new(pins),
        overlay: BTreeMap::new(),
    }
}

#[cfg(test)]
#[path = "pins_tests.rs"]
mod tests;
