//! A cluster pool's idle connections, and which one a checkout takes.
//!
//! Each idle connection is kept with what a checkout compares (its key, database,
//! session state, worker, server thread id, when it was last used) inline in the list:
//! the choice reads one contiguous array, not each boxed connection's fields, and only
//! the connection it settles on is looked at. With a few dozen idle connections (two
//! databases of a cluster under sixteen sessions), the five passes over the boxed
//! connections cost about 690 instructions and a cache miss or more per connection on
//! every statement.

use std::collections::VecDeque;
use std::time::Instant;

use super::conn::{BackendConn, ConnKey};

/// What a checkout asks the pool for.
#[derive(Debug, Clone, Copy)]
pub struct Wanted<'a> {
    /// The capabilities and collation the connection was opened with.
    pub key: ConnKey,
    /// The database the statement runs in (a connection with none selected can take
    /// any; one with a database selected cannot go back to none).
    pub database: Option<&'a str>,
    /// The session state (variables) the asking session has: a connection already in
    /// it needs no sync.
    pub state_hash: u64,
    /// Server thread id of the connection that served the asking session last.
    pub prefer: Option<u32>,
}

impl<'a> Wanted<'a> {
    /// A connection for shardgate's own statements (`KILL QUERY`, a login's checks):
    /// no session's state on it, no preference.
    pub fn plain(key: ConnKey, database: Option<&'a str>) -> Wanted<'a> {
        Wanted {
            key,
            database,
            state_hash: 0,
            prefer: None,
        }
    }
}

/// What the list needs of a connection it holds.
pub(super) trait Pooled {
    /// The database selected on it.
    fn database(&self) -> Option<&str>;
    /// Its key, session state, worker, server thread id and last use.
    fn about(&self) -> About;
}

impl Pooled for Box<BackendConn> {
    fn database(&self) -> Option<&str> {
        self.database.as_deref()
    }

    fn about(&self) -> About {
        About {
            key: self.key,
            database: database_hash(self.database.as_deref()),
            state_hash: self.state_hash,
            thread_id: self.thread_id,
            worker: self.worker,
            last_used: self.last_used,
        }
    }
}

/// A connection's fields a checkout compares, as of when it went idle.
#[derive(Debug, Clone, Copy)]
pub(super) struct About {
    pub key: ConnKey,
    /// [`database_hash`] of its database: equal hashes are confirmed by name.
    pub database: u64,
    pub state_hash: u64,
    pub thread_id: u32,
    pub worker: u16,
    pub last_used: Instant,
}

/// A database name as the list compares it first: 0 for none. A few multiplies per
/// 8 bytes (a name is hashed each time its connection goes idle); names that hash
/// alike are told apart by name.
fn database_hash(database: Option<&str>) -> u64 {
    let Some(name) = database else {
        return 0;
    };
    let mix = |h: u64, w: u64| (h ^ w).wrapping_mul(0xff51_afd7_ed55_8ccd).rotate_left(29);
    let mut chunks = name.as_bytes().chunks_exact(8);
    let mut h = 0x9e37_79b9_7f4a_7c15 ^ name.len() as u64;
    for c in &mut chunks {
        h = mix(h, <[u8; 8]>::try_from(c).map_or(0, u64::from_le_bytes));
    }
    let rest = chunks
        .remainder()
        .iter()
        .rev()
        .fold(0u64, |w, &b| (w << 8) | u64::from(b));
    let h = mix(h, rest);
    (h ^ (h >> 32)).max(1)
}

/// The key, database and session state of a connection in one number: a
/// connection ready for a statement as it is has the statement's (confirmed field by
/// field, and by name, before it is taken).
fn fingerprint(key: ConnKey, database: u64, state_hash: u64) -> u64 {
    let bits = u64::from(key.caps) | u64::from(key.ext) << 32;
    (database ^ state_hash.rotate_left(23) ^ bits.wrapping_mul(0x9e37_79b9_7f4a_7c15))
        .wrapping_add(u64::from(key.collation))
}

struct Idle<C> {
    /// [`fingerprint`] of `about`.
    ready_for: u64,
    about: About,
    conn: C,
}

/// Idle connections, least recently used first.
pub(super) struct IdleList<C = Box<BackendConn>> {
    entries: VecDeque<Idle<C>>,
}

impl<C: Pooled> IdleList<C> {
    pub fn new() -> Self {
        IdleList {
            entries: VecDeque::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Adds a connection as the most recently used.
    pub fn push_back(&mut self, conn: C) {
        let about = conn.about();
        let ready_for = fingerprint(about.key, about.database, about.state_hash);
        self.entries.push_back(Idle {
            ready_for,
            about,
            conn,
        });
    }

    /// Takes the least recently used.
    pub fn pop_front(&mut self) -> Option<C> {
        self.entries.pop_front().map(|e| e.conn)
    }

    /// Takes the one at `pos`.
    pub fn take(&mut self, pos: usize) -> Option<C> {
        self.entries.remove(pos).map(|e| e.conn)
    }

    /// When the one at `pos` was last used.
    pub fn last_used(&self, pos: usize) -> Option<Instant> {
        self.entries.get(pos).map(|e| e.about.last_used)
    }

    /// Takes every connection for which `close` says so, the rest staying in order.
    pub fn take_where(&mut self, mut close: impl FnMut(&C) -> bool) -> Vec<C> {
        let mut taken = Vec::new();
        let mut kept = VecDeque::with_capacity(self.entries.len());
        for e in self.entries.drain(..) {
            if close(&e.conn) {
                taken.push(e.conn);
            } else {
                kept.push_back(e);
            }
        }
        self.entries = kept;
        taken
    }

    /// Where the connection a checkout takes is: the first of
    /// - the one with server thread id `prefer` (the asking session's last), if it is
    ///   already on `database` with session state `state_hash`;
    /// - one of this worker's that is (see `crate::workers`), then any that is;
    /// - the preferred one anyway, then one on `database` (it needs the session's
    ///   settings first), then any of `key` that can serve `database` (a `USE` too).
    ///
    /// A connection that needs nothing changed comes before the session's last one:
    /// with several shards of a keyspace on one cluster (one database each), a session
    /// that took its last connection wherever it was switched databases on about every
    /// other statement, a round trip each time.
    ///
    /// While the pool may still open a connection (`room`: fewer than
    /// `max_connections` open), only a connection already on `database` is taken;
    /// none there, the pool opens one rather than switch another database's with a
    /// `USE`. A switch is a round trip on this statement's path and, as the switched
    /// connection is then missing from its database, on a later statement's too: under
    /// 16 sessions spread over two databases of one cluster, one statement in about
    /// sixteen switched. Once the pool is full, switching is what is left.
    ///
    /// The common case, a connection ready as it is, costs a look for the preferred
    /// one from the back (where the session's last connection went when its statement
    /// ended), and when that one is not ready, one from the front to the first ready
    /// one of this worker, one number compared per connection; anything else takes
    /// [`Self::position_by_kind`]'s pass over all of them.
    pub fn position(&self, want: Wanted<'_>, worker: u16, room: bool) -> Option<usize> {
        let entries = &self.entries;
        let preferred = want
            .prefer
            .and_then(|p| entries.iter().rposition(|e| e.about.thread_id == p));
        // The session's last connection, ready: compared as it is, nothing hashed.
        if let Some((i, e)) = preferred.and_then(|i| Some((i, entries.get(i)?))) {
            if e.about.key == want.key
                && e.about.state_hash == want.state_hash
                && e.conn.database() == want.database
            {
                return Some(i);
            }
        }
        let database = database_hash(want.database);
        let ready_for = fingerprint(want.key, database, want.state_hash);
        let mut first_ready = None;
        let mut of_worker = None;
        for (i, e) in entries.iter().enumerate() {
            if e.ready_for == ready_for {
                if e.about.worker == worker {
                    of_worker = Some(i);
                    break;
                }
                first_ready.get_or_insert(i);
            }
        }
        let found = of_worker.or(first_ready);
        match found {
            Some(i) if self.is_ready(i, want, database) => Some(i),
            // None ready, or equal numbers of another key, database or state.
            _ => self.position_by_kind(want, worker, room),
        }
    }

    /// Whether the connection at `pos` is on `want`'s key, database and state.
    fn is_ready(&self, pos: usize, want: Wanted<'_>, database: u64) -> bool {
        let Some(e) = self.entries.get(pos) else {
            return false;
        };
        e.about.key == want.key
            && e.about.database == database
            && e.about.state_hash == want.state_hash
            && e.conn.database() == want.database
    }

    /// [`Self::position`] the long way: one pass over every connection, the first of
    /// the best kind wins.
    fn position_by_kind(&self, want: Wanted<'_>, worker: u16, room: bool) -> Option<usize> {
        let wanted_db = database_hash(want.database);
        // The kind of a connection, best first; None: it cannot serve.
        let kind = |a: &About, on_db: bool| -> Option<u8> {
            let preferred = want.prefer == Some(a.thread_id);
            if on_db && a.state_hash == want.state_hash {
                return Some(if preferred {
                    0
                } else if a.worker == worker {
                    1
                } else {
                    2
                });
            }
            // A connection that has a database selected cannot go back to none: a
            // session without a database needs one that never had.
            let usable = if room {
                on_db
            } else {
                want.database.is_some() || a.database == 0
            };
            usable.then_some(if preferred {
                3
            } else if on_db {
                4
            } else {
                5
            })
        };
        let mut best: Option<(u8, usize)> = None;
        let better = |k: u8, best: Option<(u8, usize)>| best.is_none_or(|(b, _)| k < b);
        for (i, e) in self.entries.iter().enumerate() {
            let a = &e.about;
            if a.key != want.key {
                continue;
            }
            let hashed_on_db = a.database == wanted_db;
            let Some(mut k) = kind(a, hashed_on_db) else {
                continue;
            };
            if !better(k, best) {
                continue;
            }
            // Equal hashes, other names: the name decides.
            if hashed_on_db && e.conn.database() != want.database {
                match kind(a, false) {
                    Some(other) if better(other, best) => k = other,
                    _ => continue,
                }
            }
            best = Some((k, i));
            if k == 0 {
                break;
            }
        }
        best.map(|(_, i)| i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stand-in connection: only what the list reads.
    struct Fake {
        database: Option<String>,
        about: About,
    }

    impl Pooled for Fake {
        fn database(&self) -> Option<&str> {
            self.database.as_deref()
        }
        fn about(&self) -> About {
            self.about
        }
    }

    const KEY: ConnKey = ConnKey {
        caps: 1,
        collation: 45,
        ext: 0,
    };

    fn fake(thread_id: u32, database: Option<&str>, state_hash: u64, worker: u16) -> Fake {
        Fake {
            database: database.map(str::to_string),
            about: About {
                key: KEY,
                database: database_hash(database),
                state_hash,
                thread_id,
                worker,
                last_used: Instant::now(),
            },
        }
    }

    fn list(conns: Vec<Fake>) -> IdleList<Fake> {
        let mut l = IdleList::new();
        for c in conns {
            l.push_back(c);
        }
        l
    }

    fn want(database: Option<&str>, state_hash: u64, prefer: Option<u32>) -> Wanted<'_> {
        Wanted {
            key: KEY,
            database,
            state_hash,
            prefer,
        }
    }

    /// The thread id of the connection a checkout would take.
    fn pick(l: &IdleList<Fake>, w: Wanted<'_>, worker: u16, room: bool) -> Option<u32> {
        l.position(w, worker, room)
            .map(|i| l.entries[i].about.thread_id)
    }

    #[test]
    fn the_order_of_kinds_and_the_first_of_each() {
        let l = list(vec![
            fake(1, Some("a"), 0, 0),
            fake(2, Some("b"), 0, 1),
            fake(3, Some("b"), 7, 1),
            fake(4, Some("b"), 0, 0),
            fake(5, Some("b"), 0, 1),
            fake(6, Some("a"), 0, 1),
        ]);
        // The session's last, ready as it is, comes first.
        assert_eq!(pick(&l, want(Some("b"), 0, Some(5)), 0, false), Some(5));
        // Not ready (other state): this worker's ready one, the first of them.
        assert_eq!(pick(&l, want(Some("b"), 0, Some(3)), 0, false), Some(4));
        assert_eq!(pick(&l, want(Some("b"), 0, None), 1, false), Some(2));
        // No ready one on this worker: the first ready one.
        assert_eq!(pick(&l, want(Some("a"), 0, None), 1, false), Some(6));
        assert_eq!(pick(&l, want(Some("a"), 0, None), 2, false), Some(1));
        // Nothing ready: the preferred one, then the first usable (needs a sync).
        assert_eq!(pick(&l, want(Some("b"), 9, Some(3)), 0, false), Some(3));
        assert_eq!(pick(&l, want(Some("b"), 9, None), 0, false), Some(2));
        // Another database, full pool: the preferred or the first one, switched.
        assert_eq!(pick(&l, want(Some("c"), 0, Some(4)), 0, false), Some(4));
        assert_eq!(pick(&l, want(Some("c"), 0, None), 0, false), Some(1));
    }

    #[test]
    fn with_room_only_a_connection_on_the_database_is_taken() {
        let l = list(vec![fake(1, Some("a"), 0, 0), fake(2, Some("b"), 5, 0)]);
        assert_eq!(pick(&l, want(Some("c"), 0, Some(1)), 0, true), None);
        assert_eq!(pick(&l, want(Some("c"), 0, Some(1)), 0, false), Some(1));
        // On the database with other settings: still taken (a sync, no USE).
        assert_eq!(pick(&l, want(Some("b"), 0, None), 0, true), Some(2));
    }

    #[test]
    fn a_connection_with_a_database_never_serves_a_session_without_one() {
        let l = list(vec![fake(1, Some("a"), 0, 0), fake(2, None, 3, 0)]);
        assert_eq!(pick(&l, want(None, 0, Some(1)), 0, false), Some(2));
        let l = list(vec![fake(1, Some("a"), 0, 0)]);
        assert_eq!(pick(&l, want(None, 0, None), 0, false), None);
        // A connection without one can be given any.
        let l = list(vec![fake(2, None, 0, 0)]);
        assert_eq!(pick(&l, want(Some("a"), 0, None), 0, false), Some(2));
        assert_eq!(pick(&l, want(Some("a"), 0, None), 0, true), None);
    }

    #[test]
    fn another_key_is_never_taken() {
        let mut other = fake(1, Some("a"), 0, 0);
        other.about.key.collation = 8;
        let l = list(vec![other, fake(2, Some("a"), 0, 0)]);
        assert_eq!(pick(&l, want(Some("a"), 0, Some(1)), 0, false), Some(2));
    }

    #[test]
    fn equal_hashes_of_other_names_are_told_apart_by_the_name() {
        // A connection whose hash says "a" but whose database is "z".
        let mut collides = fake(1, Some("z"), 0, 0);
        collides.about.database = database_hash(Some("a"));
        let l = list(vec![collides, fake(2, Some("a"), 0, 0)]);
        assert_eq!(pick(&l, want(Some("a"), 0, Some(1)), 0, false), Some(2));
        assert_eq!(pick(&l, want(Some("a"), 0, Some(1)), 0, true), Some(2));
        let mut collides = fake(1, Some("z"), 0, 0);
        collides.about.database = database_hash(Some("a"));
        let l = list(vec![collides]);
        // With room it is no connection for "a"; a full pool switches it.
        assert_eq!(pick(&l, want(Some("a"), 0, None), 0, true), None);
        assert_eq!(pick(&l, want(Some("a"), 0, None), 0, false), Some(1));
    }

    #[test]
    fn the_quick_look_and_the_long_way_agree() {
        // Every list of up to six connections over two databases, two states, two
        // workers, and each asking: the quick look must pick what the pass by kind
        // picks.
        let dbs = [Some("a"), Some("b"), None];
        let mut seed = 7u64;
        let mut next = |n: u64| {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            (seed >> 33) % n
        };
        for _ in 0..20_000 {
            let len = next(7) as u32;
            let conns = (0..len)
                .map(|t| fake(t + 1, dbs[next(3) as usize], next(2), next(2) as u16))
                .collect();
            let l = list(conns);
            let w = want(dbs[next(3) as usize], next(2), Some(next(8) as u32));
            let (worker, room) = (next(2) as u16, next(2) == 0);
            assert_eq!(
                l.position(w, worker, room),
                l.position_by_kind(w, worker, room),
                "{w:?} worker {worker} room {room}"
            );
        }
    }

    #[test]
    fn usual_database_names_hash_apart() {
        // A collision costs only the long way; still, names that differ in one digit,
        // anywhere, should not collide.
        let mut seen = std::collections::HashSet::new();
        let names = (0..20_000).flat_map(|i| {
            [
                format!("ws_{i}"),
                format!("tenant_database_{i:05}_prod"),
                format!("{i:08}"),
            ]
        });
        for name in names.chain(["".to_string(), "a".to_string()]) {
            let h = database_hash(Some(&name));
            assert_ne!(h, 0, "{name:?} hashes to none's 0");
            assert!(seen.insert(h), "{name:?} collides");
        }
    }

    #[test]
    fn take_where_keeps_the_order_of_the_rest() {
        let mut l = list((1..=5).map(|i| fake(i, Some("a"), 0, 0)).collect());
        let taken = l.take_where(|c| c.about.thread_id % 2 == 0);
        assert_eq!(
            taken.iter().map(|c| c.about.thread_id).collect::<Vec<_>>(),
            vec![2, 4]
        );
        assert_eq!(l.pop_front().map(|c| c.about.thread_id), Some(1));
        assert_eq!(l.take(1).map(|c| c.about.thread_id), Some(5));
        assert_eq!(l.len(), 1);
    }
}
