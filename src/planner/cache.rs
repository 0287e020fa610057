//! The plan cache: a statement seen before with other literal values is not planned
//! again; its plan is the cached one with the workspace ids of its route taken from
//! its own literals.
//!
//! **Key** (`cache_key`): the text with the values of its literals
//! taken out (their class and which of them are equal stay), the keyspace it is planned
//! for, and the runtime generation (`shared::Runtime::generation`, bumped by every
//! vschema swap), so a plan made under an old shard map is never found again; it ages
//! out. The key is hashed (foldhash, fixed seed) and always compared in full: a hash collision is a
//! miss, never another statement's plan.
//!
//! **Value**: a *template*, the plan with its route's ids replaced by which id literal
//! each one comes from. Only single SELECT / UPDATE / DELETE statements whose route is
//! one of `Workspaces`, `AnyShard`, `AllShards` or `MissingWorkspace` get one (an
//! INSERT's plan holds its rows' byte ranges, an error names the literal, a range's
//! bounds are arithmetic on literals: those are planned every time). A template is made
//! only when it is proven on a second text: the statement is planned again with every
//! id literal changed (equal ones alike), and that plan must be the template filled
//! with the new ids. Otherwise the key is kept as *not cacheable*, so it is not tried
//! again.
//!
//! **Admission**: a key is looked at on its second miss only (a small table of hashes
//! seen once), so statements that never repeat cost one hash and no extra planning.
//!
//! **Bound and eviction**: `capacity` entries (the config's `plan_cache_size`, 0 turns
//! the cache off) in sets of [`WAYS`] chosen by hash. A new entry takes an empty way,
//! else one of an older generation, else the first way the clock hand finds not used
//! since it last passed (second chance).
//!
//! **A session's last shape** ([`Memo`], [`PlanCache::remembered`]): the entry a
//! session's last text query was planned from; a next text of its shape
//! (`cache_key::same_shape`) is planned from it with no key computed and no lookup.
//!
//! **Concurrency**: a hit takes no lock and writes no shared memory but a counter: each
//! way is an `ArcSwapOption` read without touching a reference count, and its hash sits
//! beside it in an atomic so a lookup loads only the way that can match. Inserts swap
//! a way atomically.

use std::cell::{Cell, RefCell};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwapOption;

pub use super::cache_key::SchemaKey;
use super::cache_key::{self, Scratch};
use super::{Plan, Route, ShardingSchema, StatementKind, StatementPlan};

/// Entries per set.
pub const WAYS: usize = 4;
/// The default `plan_cache_size`.
pub const DEFAULT_CAPACITY: usize = 4096;
/// The largest `plan_cache_size` taken (a larger one is cut to it): its slots are
/// allocated up front.
pub const MAX_CAPACITY: usize = 1 << 20;

thread_local! {
    static SCRATCH: RefCell<Scratch> = RefCell::new(Scratch::default());
    /// A plan's statement list given back empty ([`recycle`]): the next hit fills it
    /// instead of allocating one.
    static SPARE: Cell<Vec<StatementPlan>> = const { Cell::new(Vec::new()) };
}

/// Gives back the (emptied) statement list of a plan the session is done with, for
/// this thread's next cache hit to fill: a hit then allocates nothing.
pub fn recycle(mut statements: Vec<StatementPlan>) {
    if statements.capacity() == 0 || statements.capacity() > 4 {
        return;
    }
    statements.clear();
    let _ = SPARE.try_with(|spare| spare.set(statements));
}

/// The cache entry a session's last statement was planned from: its next statement,
/// if it has the same shape (`cache_key::same_shape`), is planned from it without the
/// key scan and the lookup. Holding an entry the cache has since evicted is harmless:
/// a key names one plan for good (its generation is part of it).
#[derive(Default)]
pub struct Memo(Option<Arc<Entry>>);

/// A plan with the ids of its route left to fill.
#[derive(Debug)]
struct Template {
    plan: Plan,
    /// For each id of the route (`Route::Workspaces`), the index of the id literal
    /// that gives it.
    ids: Box<[u16]>,
}

impl Template {
    /// The plan of a text `len` bytes long whose id literals are `values`, in the
    /// list `into` (emptied first).
    fn fill(&self, values: &[u64], len: usize, mut into: Vec<StatementPlan>) -> Option<Plan> {
        let only = self.plan.statements.first()?;
        let route = match &only.route {
            Route::Workspaces(_) => Route::Workspaces(
                self.ids
                    .iter()
                    .map(|i| values.get(usize::from(*i)).copied())
                    .collect::<Option<_>>()?,
            ),
            other => other.clone(),
        };
        into.clear();
        into.push(StatementPlan {
            span: 0..len,
            kind: only.kind.clone(),
            route,
            qualified_schema: only.qualified_schema.clone(),
            effects: only.effects,
        });
        Some(Plan {
            statements: into,
            privilege: self.plan.privilege,
        })
    }
}

struct Entry {
    hash: u64,
    generation: u64,
    key: Box<[u8]>,
    /// Where its literal marks are (`cache_key::marks`), for a template's entry.
    marks: Box<[u32]>,
    /// None: the statement's plan cannot be cached.
    template: Option<Template>,
    /// The texts of this key mention nothing the session rewrites with its own
    /// identity ([`super::may_mention_identity`] is false for their parts outside
    /// literals, which the key holds verbatim): a hit needs no look for it.
    no_identity: bool,
    /// Used since the clock hand last passed.
    referenced: AtomicBool,
}

impl Entry {
    /// Marks it used (the clock hand passes it over once).
    fn touch(&self) {
        if !self.referenced.load(Ordering::Relaxed) {
            self.referenced.store(true, Ordering::Relaxed);
        }
    }
}

struct Set {
    hashes: [AtomicU64; WAYS],
    ways: [ArcSwapOption<Entry>; WAYS],
    hand: AtomicUsize,
}

impl Set {
    fn new() -> Set {
        Set {
            hashes: std::array::from_fn(|_| AtomicU64::new(0)),
            ways: std::array::from_fn(|_| ArcSwapOption::empty()),
            hand: AtomicUsize::new(0),
        }
    }
}

/// A counter on a cache line of its own (both cores add to them).
#[repr(align(64))]
#[derive(Default)]
struct Counter(AtomicU64);

impl Counter {
    fn add(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// The counters `/metrics` exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlanCacheStats {
    /// Plans served from a template.
    pub hits: u64,
    /// Statements of a cacheable kind planned in full: no entry yet (first sightings
    /// and the ones that made an entry).
    pub misses: u64,
    /// Statements planned in full because their plan cannot be cached (not a single
    /// SELECT / UPDATE / DELETE, strings with escapes, a text over 4 KiB, or a key
    /// already known not to be cacheable).
    pub uncacheable: u64,
    /// Entries held now (templates and not-cacheable marks).
    pub entries: usize,
    /// The most entries it holds.
    pub capacity: usize,
}

/// Plans by literal-stripped text; see the module docs.
pub struct PlanCache {
    sets: Box<[Set]>,
    /// Ways used per set (fewer than [`WAYS`] only for a capacity below it).
    ways: usize,
    /// Hashes of keys missed once (admission on the second miss).
    seen: Box<[AtomicU64]>,
    entries: AtomicUsize,
    hits: Counter,
    misses: Counter,
    uncacheable: Counter,
}

impl PlanCache {
    /// A cache of at most `capacity` entries (rounded down to a multiple of [`WAYS`]
    /// above it, cut to [`MAX_CAPACITY`]); 0: off, every statement is planned.
    pub fn new(capacity: usize) -> PlanCache {
        let capacity = capacity.min(MAX_CAPACITY);
        let ways = capacity.min(WAYS);
        let sets = if capacity == 0 {
            0
        } else {
            (capacity / WAYS).max(1)
        };
        PlanCache {
            sets: (0..sets).map(|_| Set::new()).collect(),
            ways,
            seen: (0..sets * ways * 2).map(|_| AtomicU64::new(0)).collect(),
            entries: AtomicUsize::new(0),
            hits: Counter::default(),
            misses: Counter::default(),
            uncacheable: Counter::default(),
        }
    }

    /// Its counters now.
    pub fn stats(&self) -> PlanCacheStats {
        PlanCacheStats {
            hits: self.hits.get(),
            misses: self.misses.get(),
            uncacheable: self.uncacheable.get(),
            entries: self.entries.load(Ordering::Relaxed),
            capacity: self.sets.len() * self.ways,
        }
    }

    /// The plan of `sql` in `schema` (named `key`) under runtime `generation`: always
    /// equal to [`planner::plan(sql, schema)`](super::plan).
    pub fn plan(
        &self,
        sql: &str,
        schema: &dyn ShardingSchema,
        key: SchemaKey<'_>,
        generation: u64,
    ) -> Plan {
        self.plan_noting_identity(sql, schema, key, generation).0
    }

    /// [`PlanCache::plan`], and whether the plan came from an entry whose texts are
    /// known to mention nothing the session rewrites (`@@`, `CONNECTION_ID()`, the
    /// process list): true spares the session its own look at the text.
    pub fn plan_noting_identity(
        &self,
        sql: &str,
        schema: &dyn ShardingSchema,
        key: SchemaKey<'_>,
        generation: u64,
    ) -> (Plan, bool) {
        self.plan_into(None, sql, schema, key, generation)
    }

    /// The plan of `sql` from `memo`'s entry, if `sql` has its shape under `key` and
    /// `generation` (`cache_key::same_shape`), with
    /// [`plan_noting_identity`](Self::plan_noting_identity)'s second answer; None: plan
    /// it with [`plan_remembering`](Self::plan_remembering). Needs no schema: an entry
    /// of this generation and keyspace was made with the keyspace this generation has.
    #[inline(never)]
    pub fn remembered(
        &self,
        memo: &Memo,
        sql: &str,
        key: SchemaKey<'_>,
        generation: u64,
    ) -> Option<(Plan, bool)> {
        let e = memo.0.as_ref()?;
        let template = e.template.as_ref()?;
        let plan = SCRATCH.with(|cell| {
            let mut s = cell.try_borrow_mut().ok()?;
            cache_key::same_shape(&e.key, &e.marks, sql, key, generation, &mut s)?;
            template.fill(&s.values, sql.len(), SPARE.take())
        })?;
        e.touch();
        self.hits.add();
        Some((plan, e.no_identity))
    }

    /// [`PlanCache::plan_noting_identity`], remembering in `memo` the entry the plan
    /// came from or was made into (for [`remembered`](Self::remembered)).
    pub fn plan_remembering(
        &self,
        memo: &mut Memo,
        sql: &str,
        schema: &dyn ShardingSchema,
        key: SchemaKey<'_>,
        generation: u64,
    ) -> (Plan, bool) {
        self.plan_into(Some(memo), sql, schema, key, generation)
    }

    fn plan_into(
        &self,
        memo: Option<&mut Memo>,
        sql: &str,
        schema: &dyn ShardingSchema,
        key: SchemaKey<'_>,
        generation: u64,
    ) -> (Plan, bool) {
        if self.sets.is_empty() {
            return (super::plan(sql, schema), false);
        }
        SCRATCH.with(|cell| match cell.try_borrow_mut() {
            Ok(mut s) => {
                let plan = self.plan_with(&mut s, memo, sql, schema, key, generation);
                s.trim();
                plan
            }
            Err(_) => (super::plan(sql, schema), false),
        })
    }

    fn plan_with(
        &self,
        s: &mut Scratch,
        memo: Option<&mut Memo>,
        sql: &str,
        schema: &dyn ShardingSchema,
        key: SchemaKey<'_>,
        generation: u64,
    ) -> (Plan, bool) {
        let Some(hash) = cache_key::shape(sql, key, generation, s) else {
            self.uncacheable.add();
            return (super::plan(sql, schema), false);
        };
        let set = &self.sets[(hash % self.sets.len() as u64) as usize];
        for (w, h) in set.hashes.iter().enumerate().take(self.ways) {
            if h.load(Ordering::Relaxed) != hash {
                continue;
            }
            let guard = set.ways[w].load();
            let Some(e) = guard.as_ref() else { continue };
            if e.hash != hash || *e.key != *s.key {
                continue;
            }
            e.touch();
            if let Some(plan) = e
                .template
                .as_ref()
                .and_then(|t| t.fill(&s.values, sql.len(), SPARE.take()))
            {
                self.hits.add();
                let no_identity = e.no_identity;
                if let Some(memo) = memo {
                    memo.0 = arc_swap::Guard::into_inner(guard);
                }
                return (plan, no_identity);
            }
            self.uncacheable.add();
            return (super::plan(sql, schema), false);
        }
        self.misses.add();
        let plan = super::plan(sql, schema);
        let seen = &self.seen[(hash % self.seen.len() as u64) as usize];
        if seen.swap(hash, Ordering::Relaxed) != hash {
            return (plan, false);
        }
        let template = derive(sql, schema, &plan, s);
        let marks = template
            .as_ref()
            .and_then(|_| cache_key::marks(&s.key))
            .unwrap_or_default();
        let entry = Arc::new(Entry {
            hash,
            generation,
            key: s.key.as_slice().into(),
            marks,
            template,
            no_identity: !super::may_mention_identity(sql),
            referenced: AtomicBool::new(false),
        });
        if let Some(memo) = memo.filter(|_| entry.template.is_some()) {
            memo.0 = Some(entry.clone());
        }
        self.insert(set, entry);
        (plan, false)
    }

    fn insert(&self, set: &Set, entry: Arc<Entry>) {
        let ways = self.ways;
        let generation = entry.generation;
        let hash = entry.hash;
        let victim = (0..ways)
            .find(|&w| set.ways[w].load().is_none())
            .or_else(|| {
                (0..ways).find(|&w| {
                    set.ways[w]
                        .load()
                        .as_ref()
                        .is_some_and(|e| e.generation != generation)
                })
            })
            .unwrap_or_else(|| {
                // Second chance: skip (and clear) ways used since the hand last passed.
                let mut w = set.hand.fetch_add(1, Ordering::Relaxed) % ways;
                for _ in 0..2 * ways {
                    let used = set.ways[w]
                        .load()
                        .as_ref()
                        .is_some_and(|e| e.referenced.swap(false, Ordering::Relaxed));
                    if !used {
                        break;
                    }
                    w = set.hand.fetch_add(1, Ordering::Relaxed) % ways;
                }
                w
            });
        let old = set.ways[victim].swap(Some(entry));
        set.hashes[victim].store(hash, Ordering::Relaxed);
        if old.is_none() {
            self.entries.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The template of `plan` (the plan of `sql`, whose key is in `s`), if it is one the
/// cache can rebuild and a variant text proves it.
fn derive(sql: &str, schema: &dyn ShardingSchema, plan: &Plan, s: &Scratch) -> Option<Template> {
    let [only] = plan.statements.as_slice() else {
        return None;
    };
    if !matches!(
        only.kind,
        StatementKind::Select | StatementKind::Update | StatementKind::Delete
    ) {
        return None;
    }
    let ids: Box<[u16]> = match &only.route {
        Route::Workspaces(ws) => ws
            .iter()
            .map(|w| {
                // Equal values share their first literal's index, so at most one fits.
                (0..s.values.len())
                    .find(|&i| s.values[i] == *w && usize::from(s.classes[i]) == i)
                    .and_then(|i| u16::try_from(i).ok())
            })
            .collect::<Option<_>>()?,
        Route::AnyShard | Route::AllShards | Route::MissingWorkspace { .. } => Box::new([]),
        _ => return None,
    };
    let template = Template {
        plan: plan.clone(),
        ids,
    };
    if template.fill(&s.values, sql.len(), Vec::new()).as_ref() != Some(plan) {
        return None;
    }
    // The proof: another text of the same key plans as the template says.
    let other = cache_key::variant(sql, s);
    let mut vs = Scratch::default();
    let generation = u64::from_le_bytes(s.key.get(..8)?.try_into().ok()?);
    let schema_key = cache_key::schema_of(&s.key)?;
    cache_key::shape(&other, schema_key, generation, &mut vs)?;
    if vs.key != s.key {
        return None;
    }
    let expected = template.fill(&vs.values, other.len(), Vec::new())?;
    (super::plan(&other, schema) == expected).then_some(template)
}
