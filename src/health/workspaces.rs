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
//! **Memory bound.** At most `max_workspaces` entries (default
//! [`DEFAULT_MAX_WORKSPACES`]) are kept; when a stripe is full, the least recently seen
//! eighth of it is evicted in one batch (amortised O(1) per new workspace). An entry is
//! about 130 bytes with its hash-table slot, plus up to [`MESSAGE_MAX`] bytes for a last
//! error: about 13 MB at the default cap when no workspace has an error, under 35 MB when
//! all have one.
//!
//! **Hot path.** One statement costs a read lock on the keyspace table (a handful of
//! names, compared in place), one uncontended lock of one of [`STRIPES`] stripes and one
//! hash lookup; nothing is allocated unless the workspace is new or the answer was an
//! error.

use std::collections::HashMap;
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

/// One stripe's workspaces. The ids come from clients: the hash is keyed per map.
type Stripe = HashMap<WorkspaceKey, Entry, foldhash::quality::RandomState>;

#[derive(Debug)]
struct Entry {
    /// Seconds since `crate::clock`'s epoch when the workspace last ran a statement.
    last_seen: u32,
    /// The absolute slot number (`secs / SLOT_SECS`) of the newest slot written.
    newest: u32,
    statements: [u32; SLOTS],
    errors: [u32; SLOTS],
    /// Boxed: most workspaces never have one, and this keeps their entries small.
    last_error: Option<Box<(LastError, u32)>>,
}

impl Entry {
    fn new(now: u32) -> Entry {
        Entry {
            last_seen: now,
            newest: now / SLOT_SECS,
            statements: [0; SLOTS],
            errors: [0; SLOTS],
            last_error: None,
        }
    }

    fn add(&mut self, now: u32, error: Option<LastError>) {
        let slot = now / SLOT_SECS;
        if slot > self.newest {
            // Clear the slots skipped since the last write (all of them after a long
            // quiet spell).
            let gap = (slot - self.newest).min(SLOTS as u32);
            for s in (slot + 1 - gap)..=slot {
                let i = s as usize % SLOTS;
                self.statements[i] = 0;
                self.errors[i] = 0;
            }
            self.newest = slot;
        } else if self.newest - slot >= SLOTS as u32 {
            // Older than the window (a clock read long before the lock was taken).
            return;
        }
        let i = slot as usize % SLOTS;
        self.statements[i] = self.statements[i].saturating_add(1);
        self.last_seen = self.last_seen.max(now);
        if let Some(e) = error {
            self.errors[i] = self.errors[i].saturating_add(1);
            self.last_error = Some(Box::new((e, now)));
        }
    }

    /// Sums of the slots still inside the window at `now`.
    fn window(&self, now: u32) -> (u64, u64) {
        let current = now / SLOT_SECS;
        let (mut statements, mut errors) = (0u64, 0u64);
        for back in 0..SLOTS as u32 {
            let Some(slot) = self.newest.checked_sub(back) else {
                break;
            };
            if current.saturating_sub(slot) >= SLOTS as u32 {
                break;
            }
            let i = slot as usize % SLOTS;
            statements += u64::from(self.statements[i]);
            errors += u64::from(self.errors[i]);
        }
        (statements, errors)
    }

    fn summary(&self, now: u32) -> WorkspaceSummary {
        let (statements, errors) = self.window(now);
        WorkspaceSummary {
            statements,
            errors,
            last_error: self
                .last_error
                .as_ref()
                .map(|b| (b.0.clone(), u64::from(now.saturating_sub(b.1)))),
        }
    }
}

/// Per-workspace counts over the last minute, bounded in memory (module docs).
#[derive(Debug)]
pub struct WorkspaceErrors {
    keyspaces: RwLock<Vec<Arc<str>>>,
    stripes: Box<[Mutex<Stripe>]>,
    stripe_cap: usize,
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
            stripes: (0..stripes)
                .map(|_| Mutex::new(Stripe::default()))
                .collect(),
            stripe_cap: (max_workspaces / stripes).max(1),
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

    fn stripe(&self, key: &WorkspaceKey) -> MutexGuard<'_, Stripe> {
        // A multiplicative mix: consecutive workspace ids spread over the stripes.
        let h =
            (key.workspace ^ (u64::from(key.keyspace) << 48)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let i = (h >> 32) as usize % self.stripes.len();
        self.stripes[i].lock().unwrap_or_else(|e| e.into_inner())
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
        let mut stripe = self.stripe(&key);
        if let Some(e) = stripe.get_mut(&key) {
            e.add(now, error);
            return;
        }
        if stripe.len() >= self.stripe_cap {
            evict_least_recent(&mut stripe, (self.stripe_cap / 8).max(1));
        }
        let mut e = Entry::new(now);
        e.add(now, error);
        stripe.insert(key, e);
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
        self.stripe(&key).get(&key).map(|e| e.summary(now))
    }

    /// Workspaces with at least one error in the window, most errors first (then most
    /// statements, then by keyspace and id), at most `limit`.
    pub fn with_errors(&self, limit: usize) -> Vec<ErrorRow> {
        self.with_errors_at(limit, self.now())
    }

    fn with_errors_at(&self, limit: usize, now: u32) -> Vec<ErrorRow> {
        let mut found: Vec<(WorkspaceKey, WorkspaceSummary)> = Vec::new();
        for stripe in self.stripes.iter() {
            let stripe = stripe.lock().unwrap_or_else(|e| e.into_inner());
            for (key, e) in stripe.iter() {
                // Most entries have no error at all: skip them before summing.
                if e.last_error.is_none() {
                    continue;
                }
                let s = e.summary(now);
                if s.errors > 0 {
                    found.push((*key, s));
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
                let stripe = stripe.lock().unwrap_or_else(|e| e.into_inner());
                stripe
                    .values()
                    .filter(|e| e.last_error.is_some() && e.window(now).1 > 0)
                    .count()
            })
            .sum()
    }

    /// Workspaces tracked now.
    pub fn tracked(&self) -> usize {
        self.stripes
            .iter()
            .map(|s| s.lock().unwrap_or_else(|e| e.into_inner()).len())
            .sum()
    }
}

/// Removes the `n` least recently seen entries (exactly `n`, even when many were seen in
/// the same second).
fn evict_least_recent(stripe: &mut Stripe, n: usize) {
    if n >= stripe.len() {
        stripe.clear();
        return;
    }
    let mut seen: Vec<u32> = stripe.values().map(|e| e.last_seen).collect();
    let (_, &mut threshold, _) = seen.select_nth_unstable(n - 1);
    // Everything older than the threshold goes, then as many at it as still needed.
    let older = seen.iter().filter(|&&s| s < threshold).count();
    let mut at_threshold = n - older;
    stripe.retain(|_, e| {
        if e.last_seen < threshold {
            false
        } else if e.last_seen == threshold && at_threshold > 0 {
            at_threshold -= 1;
            false
        } else {
            true
        }
    });
}

fn read<T>(l: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(l: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(code: u16) -> Option<LastError> {
        Some(LastError::new(code, "Table 'ws_3.notes' doesn't exist"))
    }

    #[test]
    fn counts_leave_the_window_after_a_minute() {
        let t = WorkspaceErrors::new(1000);
        let k = t.key("app", 42).expect("key");
        t.record_at(k, None, 0);
        t.record_at(k, err(1146), 1);
        t.record_at(k, None, 30);
        let s = t.workspace_at("app", 42, 30).expect("tracked");
        assert_eq!((s.statements, s.errors), (3, 1));
        assert_eq!(
            s.last_error.as_ref().map(|e| (e.0.code, e.1)),
            Some((1146, 29))
        );
        assert_eq!(t.with_errors_at(100, 30).len(), 1);
        // Slot 0 (seconds 0-4) is out of the window from second 60 on.
        let s = t.workspace_at("app", 42, 59).expect("tracked");
        assert_eq!((s.statements, s.errors), (3, 1));
        let s = t.workspace_at("app", 42, 60).expect("tracked");
        assert_eq!((s.statements, s.errors), (1, 0));
        assert!(t.with_errors_at(100, 60).is_empty());
        assert_eq!(
            s.last_error.map(|e| e.0.code),
            Some(1146),
            "the last error stays after it left the window"
        );
        // A write long after clears the old slots, including the ring's reused ones.
        t.record_at(k, None, 300);
        let s = t.workspace_at("app", 42, 300).expect("tracked");
        assert_eq!((s.statements, s.errors), (1, 0));
        assert_eq!(t.workspace_at("app", 7, 300), None);
        assert_eq!(t.workspace_at("other", 42, 300), None);
    }

    #[test]
    fn keyspaces_are_separate_and_rows_sort_by_errors() {
        let t = WorkspaceErrors::new(1000);
        let a = t.key("app", 1).expect("key");
        let b = t.key("dpw", 1).expect("key");
        let c = t.key("dpw", 2).expect("key");
        for i in 0..5 {
            t.record_at(a, (i < 2).then(|| LastError::new(1146, "x")), 10);
            t.record_at(b, err(1205), 10);
            t.record_at(c, None, 10);
        }
        let rows = t.with_errors_at(100, 11);
        let got: Vec<(&str, u64, u64)> = rows
            .iter()
            .map(|r| (&*r.keyspace, r.workspace, r.summary.errors))
            .collect();
        assert_eq!(got, vec![("dpw", 1, 5), ("app", 1, 2)]);
        assert_eq!(t.with_errors_at(1, 11).len(), 1);
        assert_eq!(t.key("app", 9).map(|k| k.keyspace), Some(a.keyspace));
    }

    #[test]
    fn eviction_drops_the_least_recently_seen_and_bounds_memory() {
        let t = WorkspaceErrors::with_stripes(16, 1);
        for ws in 0..16u64 {
            let k = t.key("app", ws).expect("key");
            t.record_at(
                k,
                (ws == 0).then(|| LastError::new(1146, "gone")),
                ws as u32,
            );
        }
        assert_eq!(t.tracked(), 16);
        // Workspace 0 is seen again: now 1 and 2 are the least recent.
        t.record_at(t.key("app", 0).expect("key"), None, 100);
        t.record_at(t.key("app", 99).expect("key"), None, 101);
        assert_eq!(t.tracked(), 15, "an eighth (2) evicted, one added");
        assert!(t.workspace_at("app", 1, 101).is_none());
        assert!(t.workspace_at("app", 2, 101).is_none());
        assert!(t.workspace_at("app", 0, 101).is_some());
        assert!(t.workspace_at("app", 3, 101).is_some());
        for ws in 1000..2000u64 {
            t.record_at(t.key("app", ws).expect("key"), None, 200);
        }
        assert!(
            t.tracked() <= t.capacity(),
            "{} > {}",
            t.tracked(),
            t.capacity()
        );
        // Ties: all 16 seen in the same second, still exactly an eighth goes.
        let mut m = Stripe::default();
        for ws in 0..16u64 {
            m.insert(
                WorkspaceKey {
                    keyspace: 0,
                    workspace: ws,
                },
                Entry::new(5),
            );
        }
        evict_least_recent(&mut m, 2);
        assert_eq!(m.len(), 14);
    }

    #[test]
    fn striped_capacity_never_exceeds_the_cap() {
        let t = WorkspaceErrors::new(100);
        for ws in 0..10_000u64 {
            t.record_at(t.key("app", ws).expect("key"), None, 1);
        }
        assert!(t.capacity() <= 100);
        assert!(t.tracked() <= t.capacity());
    }

    #[test]
    fn messages_are_cut_at_a_character_boundary() {
        let long = "é".repeat(MESSAGE_MAX);
        let e = LastError::new(1146, &long);
        assert!(e.message.len() <= MESSAGE_MAX);
        assert!(e.message.chars().all(|c| c == 'é'));
    }
}
