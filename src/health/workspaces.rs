//! Per-workspace statement and error counts (`docs/traffic.md`, "Workspaces with
//! errors"): a partial failure that hurts only some workspaces (a table dropped in three
//! workspace databases, one tenant's broken schema) is invisible in a cluster's averages,
//! so every statement that routes to exactly one workspace is counted here, with whether
//! its answer was an ERR and the last such error.
//!
//! **Window.** Counts cover the last [`WINDOW`] (60 s) in [`SLOTS`] slots of
//! [`SLOT_SECS`] seconds: a count leaves the window between 55 and 60 s after it was
//! made.
//!
//! **Memory bound.** At most `max_workspaces` workspaces (default
//! [`DEFAULT_MAX_WORKSPACES`]) are kept; when a stripe is full, the least recently seen
//! eighth of it is evicted in one batch (amortised O(1) per new workspace). A workspace
//! is one 64-byte line of an open-addressed table kept at most 7/8 full and grown by
//! doubling, and 4 bytes of how recently it was seen (8.5 MiB at the default cap: 32
//! stripes of 4,096 lines); one that had an error adds an entry of about 100 bytes plus
//! up to [`MESSAGE_MAX`] for the message, until it is evicted.
//!
//! **Hot path.** One statement costs a read lock on the keyspace table (a handful of
//! names, compared in place), one uncontended lock of one of [`STRIPES`] stripes (each
//! on a cache line of its own), one keyed hash and, for a workspace not counted
//! recently, one cache miss: its counts are one aligned line. Nothing is allocated
//! unless the stripe grows or the answer was an error.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::Duration;

/// Slots in the window.
pub const SLOTS: usize = 12;
/// Seconds per slot.
pub const SLOT_SECS: u32 = 5;
/// How far back the counts reach.
pub const WINDOW: Duration = Duration::from_secs(SLOTS as u64 * SLOT_SECS as u64);
/// The default bound on workspaces tracked.
pub const DEFAULT_MAX_WORKSPACES: usize = 100_000;
/// Lock stripes: sessions on different workspaces rarely wait on each other.
pub const STRIPES: usize = 32;
/// Bytes of an error message kept (cut at a character boundary).
pub const MESSAGE_MAX: usize = 200;
/// Keyspace names interned; more (a vschema would need as many) are not tracked.
const MAX_KEYSPACES: usize = 4096;

/// An error a client got for a workspace's statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastError {
    /// The MySQL error number (a backend's own, or shardgate's).
    pub code: u16,
    /// The message, at most [`MESSAGE_MAX`] bytes.
    pub message: String,
}

impl LastError {
    /// An error with its message cut to [`MESSAGE_MAX`] bytes.
    pub fn new(code: u16, message: &str) -> LastError {
        let mut end = message.len().min(MESSAGE_MAX);
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        LastError {
            code,
            message: message[..end].to_string(),
        }
    }
}

/// A workspace of a keyspace, as the tracker names it (the keyspace interned).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WorkspaceKey {
    keyspace: u32,
    workspace: u64,
}

impl WorkspaceKey {
    /// The key of another workspace of the same keyspace.
    pub fn with_workspace(self, workspace: u64) -> WorkspaceKey {
        WorkspaceKey { workspace, ..self }
    }
}

/// What the window holds for one workspace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkspaceSummary {
    /// Statements in the window.
    pub statements: u64,
    /// Of them, answered with an ERR.
    pub errors: u64,
    /// The last error, and how many seconds ago (kept while the workspace is tracked,
    /// even after it left the window).
    pub last_error: Option<(LastError, u64)>,
}

impl WorkspaceSummary {
    /// Errors per statement in the window (0 with no statements).
    pub fn error_rate(&self) -> f64 {
        if self.statements == 0 {
            0.0
        } else {
            self.errors as f64 / self.statements as f64
        }
    }
}

/// One row of [`WorkspaceErrors::with_errors`].
#[derive(Debug, Clone)]
pub struct ErrorRow {
    /// The keyspace.
    pub keyspace: Arc<str>,
    /// The workspace.
    pub workspace: u64,
    /// Its window.
    pub summary: WorkspaceSummary,
}

/// A workspace's statement counts: one cache line, so that counting a statement of a
/// workspace not seen for a while (the common case with many tenants) costs one miss.
#[repr(C, align(64))]
#[derive(Debug, Clone, Copy)]
struct Line {
    workspace: u64,
    /// The keyspace's index plus one (at most [`MAX_KEYSPACES`]); 0 marks an empty line.
    keyspace: u16,
    /// The low 16 bits of the key's hash: where the line belongs in a table of up to
    /// 65,536 lines, so that a table is rebuilt without hashing every key again.
    home: u16,
    /// The absolute slot number (`secs / SLOT_SECS`) of the newest slot written: also
    /// how recently the workspace was seen, for eviction.
    newest: u32,
    statements: [u32; SLOTS],
}

const EMPTY: Line = Line {
    workspace: 0,
    keyspace: 0,
    home: 0,
    newest: 0,
    statements: [0; SLOTS],
};

/// The errors of a workspace that had one (few do): kept apart from its [`Line`].
#[derive(Debug)]
struct Errors {
    newest: u32,
    errors: [u32; SLOTS],
    last: LastError,
    /// When `last` was answered (seconds of `crate::clock`).
    at: u32,
}

/// Adds one to the slot of `now` in a ring whose newest slot is `*newest`, clearing the
/// slots skipped since; false (nothing counted) for a time older than the window.
fn bump(newest: &mut u32, ring: &mut [u32; SLOTS], now: u32) -> bool {
    let slot = now / SLOT_SECS;
    if slot > *newest {
        // Clear the slots skipped since the last write (all of them after a long quiet
        // spell).
        let gap = (slot - *newest).min(SLOTS as u32);
        for s in (slot + 1 - gap)..=slot {
            ring[s as usize % SLOTS] = 0;
        }
        *newest = slot;
    } else if *newest - slot >= SLOTS as u32 {
        // Older than the window (a clock read long before the lock was taken).
        return false;
    }
    let i = slot as usize % SLOTS;
    ring[i] = ring[i].saturating_add(1);
    true
}

/// The sum of a ring's slots still inside the window at `now`.
fn in_window(newest: u32, ring: &[u32; SLOTS], now: u32) -> u64 {
    let current = now / SLOT_SECS;
    let mut sum = 0u64;
    for back in 0..SLOTS as u32 {
        let Some(slot) = newest.checked_sub(back) else {
            break;
        };
        if current.saturating_sub(slot) >= SLOTS as u32 {
            break;
        }
        sum += u64::from(ring[slot as usize % SLOTS]);
    }
    sum
}

/// Slots of recency a stripe tells apart when it evicts: a line not seen for
/// `RECENT_SLOTS` slots (320 s, its window long empty) is only "older".
const RECENT_SLOTS: usize = 64;

/// How many of a stripe's lines were last seen in each slot: what an eviction needs to
/// pick its threshold without looking at every line. `recent[s % RECENT_SLOTS]` counts
/// the lines whose `newest` is `s`, for `s` in `top - 63 ..= top`; `older` counts those
/// seen before. Which counter holds a line follows from its `newest` and `top` alone,
/// and no line is newer than `top`.
#[derive(Debug, PartialEq, Eq)]
struct Recency {
    /// The newest slot any line of the stripe was written in.
    top: u32,
    older: u32,
    recent: [u32; RECENT_SLOTS],
}

impl Default for Recency {
    fn default() -> Self {
        Recency {
            top: 0,
            older: 0,
            recent: [0; RECENT_SLOTS],
        }
    }
}

impl Recency {
    /// Moves `top` up to `slot`: the slots that leave the ring join `older`.
    fn advance(&mut self, slot: u32) {
        if slot <= self.top {
            return;
        }
        let gap = (slot - self.top).min(RECENT_SLOTS as u32);
        for s in (slot + 1 - gap)..=slot {
            let c = &mut self.recent[s as usize % RECENT_SLOTS];
            self.older += *c;
            *c = 0;
        }
        self.top = slot;
    }

    /// How many slots before `top` a line last seen in `newest` was, at most
    /// `RECENT_SLOTS` (for every line in `older`).
    fn age(&self, newest: u32) -> usize {
        (self.top.saturating_sub(newest) as usize).min(RECENT_SLOTS)
    }

    /// The counter of lines last seen in `newest`.
    fn counter(&mut self, newest: u32) -> &mut u32 {
        if self.age(newest) == RECENT_SLOTS {
            &mut self.older
        } else {
            &mut self.recent[newest as usize % RECENT_SLOTS]
        }
    }

    fn add(&mut self, newest: u32) {
        *self.counter(newest) += 1;
    }

    fn remove(&mut self, newest: u32) {
        let c = self.counter(newest);
        *c = c.saturating_sub(1);
    }

    /// How many lines are of `age` (`RECENT_SLOTS` for those in `older`).
    fn count(&self, age: usize) -> usize {
        if age >= RECENT_SLOTS {
            self.older as usize
        } else {
            self.recent[self.top.wrapping_sub(age as u32) as usize % RECENT_SLOTS] as usize
        }
    }

    /// Which lines go to evict `n`: every line last seen before `first`, and of the
    /// `of_cut` seen in `first ..= last`, `at_cut`.
    fn threshold(&self, n: usize) -> Cut {
        let mut left = n;
        for age in (0..=RECENT_SLOTS).rev() {
            let of_cut = self.count(age);
            if of_cut >= left {
                let (first, last) = if age == RECENT_SLOTS {
                    (0, self.top.saturating_sub(RECENT_SLOTS as u32))
                } else {
                    let slot = self.top.saturating_sub(age as u32);
                    (slot, slot)
                };
                return Cut {
                    first,
                    last,
                    at_cut: left,
                    of_cut,
                };
            }
            left -= of_cut;
        }
        // Fewer lines counted than asked for (never, while the counts match the lines):
        // every line goes.
        Cut {
            first: 0,
            last: NO_LINE - 1,
            at_cut: 1,
            of_cut: 1,
        }
    }
}

/// The lines an eviction removes ([`Recency::threshold`]).
#[derive(Debug)]
struct Cut {
    first: u32,
    last: u32,
    at_cut: usize,
    of_cut: usize,
}

/// The `newest` of an empty line in [`Stripe::newest`] (never a slot: `u32::MAX`
/// seconds make a smaller slot number).
const NO_LINE: u32 = u32::MAX;

/// One stripe's workspaces: an open-addressed table of [`Line`]s (linear probing, at
/// most 7/8 full, grown by doubling up to the stripe's cap), how recently they were
/// seen, and the errors of those that had one.
#[derive(Debug, Default)]
struct Stripe {
    lines: Vec<Line>,
    /// Each line's `newest`, or [`NO_LINE`] for an empty line: what an eviction walks,
    /// 4 bytes a line instead of 64.
    newest: Vec<u32>,
    len: usize,
    recency: Recency,
    errors: HashMap<WorkspaceKey, Errors, foldhash::fast::RandomState>,
    /// The lines being moved while the table grows (kept: no allocation per growth).
    moving: Vec<Line>,
}

impl Stripe {
    /// The index of `key`'s line, or of the empty line where it would go.
    fn probe(&self, key: WorkspaceKey, hash: u64) -> usize {
        let mask = self.lines.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let l = &self.lines[i];
            if l.keyspace == 0
                || (l.workspace == key.workspace && u32::from(l.keyspace) == key.keyspace + 1)
            {
                return i;
            }
            i = (i + 1) & mask;
        }
    }

    fn find(&self, key: WorkspaceKey, hash: u64) -> Option<&Line> {
        if self.lines.is_empty() {
            return None;
        }
        let l = &self.lines[self.probe(key, hash)];
        (l.keyspace != 0).then_some(l)
    }

    /// Puts the lines in `moving` into a table of `size` lines (a power of two), each
    /// at the first empty line from its [`home`]. Out of line, as an eviction.
    #[cold]
    #[inline(never)]
    fn rebuild(&mut self, size: usize, hash: &impl Fn(&Line) -> u64) {
        if self.lines.len() == size {
            self.lines.fill(EMPTY);
        } else {
            self.lines = vec![EMPTY; size];
        }
        self.newest.clear();
        self.newest.resize(size, NO_LINE);
        let mask = size - 1;
        self.len = self.moving.len();
        for l in self.moving.drain(..) {
            let mut i = home(&l, mask, hash);
            while self.lines[i].keyspace != 0 {
                i = (i + 1) & mask;
            }
            self.lines[i] = l;
            self.newest[i] = l.newest;
        }
    }
}

impl Errors {
    fn summary_of(&self, now: u32) -> (u64, Option<(LastError, u64)>) {
        (
            in_window(self.newest, &self.errors, now),
            Some((self.last.clone(), u64::from(now.saturating_sub(self.at)))),
        )
    }
}

fn summary(line: &Line, errors: Option<&Errors>, now: u32) -> WorkspaceSummary {
    let (errors, last_error) = errors.map_or((0, None), |e| e.summary_of(now));
    WorkspaceSummary {
        statements: in_window(line.newest, &line.statements, now),
        errors,
        last_error,
    }
}

/// Where `l` belongs in a table of `mask + 1` lines: from the hash bits it keeps, or
/// in a table of more than 65,536 lines by hashing its key again.
fn home(l: &Line, mask: usize, hash: &impl Fn(&Line) -> u64) -> usize {
    if mask <= 0xFFFF {
        usize::from(l.home) & mask
    } else {
        hash(l) as usize & mask
    }
}

/// A stripe's lock on a cache line of its own: the sessions of different workers that
/// count statements on neighbouring stripes do not pass one line back and forth.
#[repr(align(64))]
#[derive(Debug, Default)]
struct Padded(Mutex<Stripe>);

/// Per-workspace counts over the last minute, bounded in memory (module docs).
#[derive(Debug)]
pub struct WorkspaceErrors {
    keyspaces: RwLock<Vec<Arc<str>>>,
    stripes: Box<[Padded]>,
    stripe_cap: usize,
    /// Keyed per tracker: the ids come from clients, and a fixed hash would let one
    /// fill a stripe's probe sequence on purpose.
    hasher: foldhash::quality::RandomState,
}

impl Default for WorkspaceErrors {
    fn default() -> Self {
        WorkspaceErrors::new(DEFAULT_MAX_WORKSPACES)
    }
}

impl WorkspaceErrors {
    /// A tracker of at most `max_workspaces` workspaces (at least one).
    pub fn new(max_workspaces: usize) -> WorkspaceErrors {
        WorkspaceErrors::with_stripes(max_workspaces, STRIPES)
    }

    fn with_stripes(max_workspaces: usize, stripes: usize) -> WorkspaceErrors {
        let stripes = stripes.clamp(1, max_workspaces.max(1));
        WorkspaceErrors {
            keyspaces: RwLock::new(Vec::new()),
            stripes: (0..stripes).map(|_| Padded::default()).collect(),
            stripe_cap: (max_workspaces / stripes).max(1),
            hasher: foldhash::quality::RandomState::default(),
        }
    }

    /// The most workspaces kept at once.
    pub fn capacity(&self) -> usize {
        self.stripe_cap * self.stripes.len()
    }

    /// The key of `workspace` of `keyspace`; None only past `MAX_KEYSPACES` names.
    pub fn key(&self, keyspace: &str, workspace: u64) -> Option<WorkspaceKey> {
        let found = read(&self.keyspaces).iter().position(|k| &**k == keyspace);
        let index = match found {
            Some(i) => i,
            None => {
                let mut names = write(&self.keyspaces);
                match names.iter().position(|k| &**k == keyspace) {
                    Some(i) => i,
                    None if names.len() < MAX_KEYSPACES => {
                        names.push(Arc::from(keyspace));
                        names.len() - 1
                    }
                    None => return None,
                }
            }
        };
        Some(WorkspaceKey {
            keyspace: index as u32,
            workspace,
        })
    }

    fn keyspace_name(&self, key: &WorkspaceKey) -> Arc<str> {
        read(&self.keyspaces)
            .get(key.keyspace as usize)
            .cloned()
            .unwrap_or_else(|| Arc::from(""))
    }

    fn now(&self) -> u32 {
        u32::try_from(crate::clock::now_second()).unwrap_or(u32::MAX)
    }

    fn hash(&self, keyspace: u32, workspace: u64) -> u64 {
        self.hasher.hash_one((keyspace, workspace))
    }

    fn rehash(&self, l: &Line) -> u64 {
        self.hash(u32::from(l.keyspace) - 1, l.workspace)
    }

    /// The stripe of a key's hash: from its high bits (the low ones pick the line).
    fn stripe(&self, hash: u64) -> MutexGuard<'_, Stripe> {
        let i = (hash >> 40) as usize % self.stripes.len();
        self.stripes[i].0.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Counts one statement of `key`, answered with `error` if it was an ERR.
    pub fn record(&self, key: WorkspaceKey, error: Option<LastError>) {
        self.record_at(key, error, self.now());
    }

    /// [`WorkspaceErrors::record`] of a statement answered in `second` of
    /// `crate::clock` (from a clock reading the caller already has).
    pub fn record_answered_in(&self, key: WorkspaceKey, error: Option<LastError>, second: u64) {
        self.record_at(key, error, u32::try_from(second).unwrap_or(u32::MAX));
    }

    fn record_at(&self, key: WorkspaceKey, error: Option<LastError>, now: u32) {
        let hash = self.hash(key.keyspace, key.workspace);
        let slot = now / SLOT_SECS;
        let mut stripe = self.stripe(hash);
        let mut i = if stripe.lines.is_empty() {
            None
        } else {
            Some(stripe.probe(key, hash))
        };
        let found = i.is_some_and(|i| stripe.lines[i].keyspace != 0);
        if !found {
            stripe.recency.advance(slot);
            if stripe.len >= self.stripe_cap {
                self.evict_least_recent(&mut stripe, (self.stripe_cap / 8).max(1));
                i = None;
            }
            // At most 7/8 full: a probe ends at an empty line within a few.
            if (stripe.len + 1) * 8 > stripe.lines.len() * 7 {
                let size = (stripe.lines.len() * 2).max(16);
                let Stripe { lines, moving, .. } = &mut *stripe;
                moving.extend(lines.iter().filter(|l| l.keyspace != 0));
                stripe.rebuild(size, &|l| self.rehash(l));
                i = None;
            }
            // The empty line found above, unless the lines moved since.
            let at = i.unwrap_or_else(|| stripe.probe(key, hash));
            stripe.lines[at] = Line {
                workspace: key.workspace,
                // `key` only makes indexes below MAX_KEYSPACES.
                keyspace: u16::try_from(key.keyspace + 1).unwrap_or(u16::MAX),
                home: hash as u16,
                newest: slot,
                statements: [0; SLOTS],
            };
            stripe.newest[at] = slot;
            stripe.len += 1;
            stripe.recency.add(slot);
            i = Some(at);
        }
        let Some(i) = i else { return };
        let stripe = &mut *stripe;
        let line = &mut stripe.lines[i];
        let seen = line.newest;
        if !bump(&mut line.newest, &mut line.statements, now) {
            return;
        }
        if line.newest != seen {
            // `bump` never moves a line back: it may stay in an older slot than `slot`.
            stripe.recency.advance(line.newest);
            stripe.recency.remove(seen);
            stripe.recency.add(line.newest);
            stripe.newest[i] = line.newest;
        }
        if let Some(e) = error {
            match stripe.errors.entry(key) {
                std::collections::hash_map::Entry::Occupied(mut o) => {
                    let o = o.get_mut();
                    bump(&mut o.newest, &mut o.errors, now);
                    o.last = e;
                    o.at = now;
                }
                std::collections::hash_map::Entry::Vacant(v) => {
                    let mut errors = [0; SLOTS];
                    errors[(now / SLOT_SECS) as usize % SLOTS] = 1;
                    v.insert(Errors {
                        newest: now / SLOT_SECS,
                        errors,
                        last: e,
                        at: now,
                    });
                }
            }
        }
    }

    /// The window of `workspace` of `keyspace`; None when it is not tracked (no
    /// statement since start, or evicted).
    pub fn workspace(&self, keyspace: &str, workspace: u64) -> Option<WorkspaceSummary> {
        self.workspace_at(keyspace, workspace, self.now())
    }

    fn workspace_at(&self, keyspace: &str, workspace: u64, now: u32) -> Option<WorkspaceSummary> {
        let index = read(&self.keyspaces)
            .iter()
            .position(|k| &**k == keyspace)?;
        let key = WorkspaceKey {
            keyspace: index as u32,
            workspace,
        };
        let hash = self.hash(key.keyspace, key.workspace);
        let stripe = self.stripe(hash);
        let line = stripe.find(key, hash)?;
        Some(summary(line, stripe.errors.get(&key), now))
    }

    /// Workspaces with at least one error in the window, most errors first (then most
    /// statements, then by keyspace and id), at most `limit`.
    pub fn with_errors(&self, limit: usize) -> Vec<ErrorRow> {
        self.with_errors_at(limit, self.now())
    }

    fn with_errors_at(&self, limit: usize, now: u32) -> Vec<ErrorRow> {
        let mut found: Vec<(WorkspaceKey, WorkspaceSummary)> = Vec::new();
        for stripe in self.stripes.iter() {
            let stripe = stripe.0.lock().unwrap_or_else(|e| e.into_inner());
            // Only workspaces that had an error have an entry here.
            for (key, e) in stripe.errors.iter() {
                if in_window(e.newest, &e.errors, now) == 0 {
                    continue;
                }
                let hash = self.hash(key.keyspace, key.workspace);
                if let Some(line) = stripe.find(*key, hash) {
                    found.push((*key, summary(line, Some(e), now)));
                }
            }
        }
        let mut rows: Vec<ErrorRow> = found
            .into_iter()
            .map(|(k, summary)| ErrorRow {
                keyspace: self.keyspace_name(&k),
                workspace: k.workspace,
                summary,
            })
            .collect();
        rows.sort_by(|a, b| {
            b.summary
                .errors
                .cmp(&a.summary.errors)
                .then(b.summary.statements.cmp(&a.summary.statements))
                .then_with(|| a.keyspace.cmp(&b.keyspace))
                .then(a.workspace.cmp(&b.workspace))
        });
        rows.truncate(limit);
        rows
    }

    /// How many workspaces had an error in the window (the `/metrics` gauge).
    pub fn count_with_errors(&self) -> usize {
        let now = self.now();
        self.stripes
            .iter()
            .map(|stripe| {
                let stripe = stripe.0.lock().unwrap_or_else(|e| e.into_inner());
                stripe
                    .errors
                    .values()
                    .filter(|e| in_window(e.newest, &e.errors, now) > 0)
                    .count()
            })
            .sum()
    }

    /// Workspaces tracked now.
    pub fn tracked(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.0.lock().unwrap_or_else(|e| e.into_inner()).len)
            .sum()
    }

    /// Removes the `n` least recently seen workspaces of a stripe (exactly `n`, even
    /// when many were seen in the same slot), and their errors. Those not seen for
    /// [`RECENT_SLOTS`] slots (320 s: nothing of them left in the window) count as
    /// equally old: any of them may go before another.
    ///
    /// One walk over the table's `newest`, in probe order from a line that was empty
    /// before: each line either goes or moves back to the first empty line from its
    /// home, so that no probe stops at a gap short of the line it looks for. A line's
    /// home lies between that empty line and the line, so the walk has already settled
    /// every line it may move over. Out of line: counting a statement stays small.
    #[cold]
    #[inline(never)]
    fn evict_least_recent(&self, stripe: &mut Stripe, n: usize) {
        let size = stripe.lines.len();
        if n >= stripe.len {
            stripe.lines.fill(EMPTY);
            stripe.newest.fill(NO_LINE);
            stripe.len = 0;
            stripe.errors.clear();
            stripe.recency = Recency {
                top: stripe.recency.top,
                ..Recency::default()
            };
            return;
        }
        let cut = stripe.recency.threshold(n);
        // Of the lines at the threshold, every `of_cut / at_cut`-th goes (counted
        // exactly, as a line is drawn on a grid, the first at once): spread over the
        // table, where a run of neighbours emptied at once would leave the rest crowded
        // and every probe through it long.
        let mut drawn = cut.of_cut.saturating_sub(1);
        let hash = |l: &Line| self.rehash(l);
        let Stripe {
            lines,
            newest,
            len,
            recency,
            errors,
            moving,
        } = &mut *stripe;
        let mask = size - 1;
        // Never None while the table is at most 7/8 full.
        let start = newest.iter().position(|&s| s == NO_LINE);
        let base = start.unwrap_or(0);
        let mut removed = 0;
        // Whether a line was emptied since the last line that was already empty: only
        // then may a line have a gap between its home and itself.
        let mut gap = false;
        // In probe order from `base`, 64 lines at a time: which are empty and which go,
        // from `newest` alone; then only the lines that go and those after them up to
        // an empty line are visited (lines ahead never move: their masks hold).
        'walk: for (lo, hi) in [(base + 1, size), (0, base + 1)] {
            for from in (lo..hi).step_by(64) {
                let to = hi.min(from + 64);
                let (mut empty, mut goes, mut at_cut) = (0u64, 0u64, 0u64);
                for (k, &seen) in newest[from..to].iter().enumerate() {
                    empty |= u64::from(seen == NO_LINE) << k;
                    goes |= u64::from(seen < cut.first) << k;
                    at_cut |= u64::from((cut.first <= seen) & (seen <= cut.last)) << k;
                }
                while at_cut != 0 {
                    drawn += cut.at_cut;
                    let due = drawn >= cut.of_cut;
                    drawn -= cut.of_cut * usize::from(due);
                    goes |= u64::from(due) << at_cut.trailing_zeros();
                    at_cut &= at_cut - 1;
                }
                let mut k = if gap {
                    0
                } else {
                    goes.trailing_zeros() as usize
                };
                while k < to - from {
                    let i = from + k;
                    if (empty >> k) & 1 == 1 {
                        if removed == n {
                            break 'walk;
                        }
                        gap = false;
                        k = (goes >> k).trailing_zeros() as usize + k;
                        continue;
                    }
                    if (goes >> k) & 1 == 1 {
                        recency.remove(newest[i]);
                        if !errors.is_empty() {
                            errors.remove(&WorkspaceKey {
                                keyspace: u32::from(lines[i].keyspace) - 1,
                                workspace: lines[i].workspace,
                            });
                        }
                        lines[i] = EMPTY;
                        newest[i] = NO_LINE;
                        removed += 1;
                        gap = true;
                    } else if start.is_some() {
                        let mut e = home(&lines[i], mask, &hash);
                        while e != i && newest[e] != NO_LINE {
                            e = (e + 1) & mask;
                        }
                        if e != i {
                            lines[e] = lines[i];
                            lines[i] = EMPTY;
                            newest[e] = newest[i];
                            newest[i] = NO_LINE;
                        }
                    }
                    k += 1;
                }
                if removed == n && !gap {
                    break 'walk;
                }
            }
        }
        *len -= removed;
        if start.is_none() {
            // Never at most 7/8 full; rebuilt all the same if it were.
            moving.extend(lines.iter().filter(|l| l.keyspace != 0));
            stripe.rebuild(size, &hash);
        }
    }
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
#[path = "workspaces_tests.rs"]
mod tests;
