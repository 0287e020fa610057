//! A bounded pool of backend connections per cluster. Each cluster is a bulkhead: its
//! own connection limit, checkout deadline and connect timeout, so a slow or dead
//! cluster makes only its own statements wait or fail.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::Notify;

use super::conn::{BackendConn, ConnKey};
use super::idle::IdleList;
pub use super::idle::Wanted;
use super::waiters::{lane_of, Waiters, LANES};
use crate::config::PoolConfig;
use crate::error::{codes, ProxyError};
use crate::protocol::status;
use crate::vschema::Cluster;

/// How long a failed connect makes further checkouts fail at once instead of each
/// waiting for its own connect timeout.
const CONNECT_FAILURE_HOLD: Duration = Duration::from_millis(500);

/// Idle connections unused for longer than this are pinged before reuse.
const PING_AFTER_IDLE: Duration = Duration::from_secs(10);

/// Idle connections unused for longer than this get a look at their socket before
/// reuse (closed by the server?); MariaDB's `wait_timeout` is at least a second.
const PEEK_AFTER_IDLE: Duration = Duration::from_millis(500);

/// Connections to one cluster.
pub struct ClusterPool {
    /// The cluster's name (fixed; its members change with a failover).
    pub name: String,
    /// The cluster: where its primary is now.
    cluster: arc_swap::ArcSwap<Cluster>,
    /// Incremented by every [`ClusterPool::retarget`].
    generation: std::sync::atomic::AtomicU64,
    /// Latency and failures of statements sent to it.
    pub stats: crate::metrics::ClusterStats,
    /// Its health as the monitor sees it (`down`: checkouts fail or wait).
    pub health: crate::health::ClusterHealth,
    /// What operators want of it (`draining`, `drained`: checkouts fail or wait).
    pub traffic: crate::traffic::ClusterTraffic,
    config: PoolConfig,
    inner: Mutex<Inner>,
    /// Per lane ([`super::waiters`]): signalled when a lease is handed on to a waiter
    /// of that lane.
    freed: [Notify; LANES],
    /// Checkouts that had to wait for a lease: how long, and how many gave up.
    pub waits: PoolWaits,
}

/// What `/metrics` shows of a pool's waits (`shardgate_pool_wait_seconds`,
/// `shardgate_pool_checkout_timeouts_total`): recorded only by checkouts that wait.
#[derive(Default)]
pub struct PoolWaits {
    /// How long each waited, until it got a lease or gave up.
    pub waited: crate::metrics::Latency,
    /// Those that gave up after the checkout timeout.
    pub timeouts: std::sync::atomic::AtomicU64,
}

/// Everything about the pool that changes, under one lock: a checkout and a give-back
/// are one uncontended lock each, which is the whole cost of pooling per statement.
struct Inner {
    /// Idle connections, least recently used first.
    /// Boxed: a connection (with its buffers and TLS state) moves as a pointer.
    idle: IdleList,
    /// Connections open (idle or leased).
    open: usize,
    /// Leases outstanding, with those handed to waiters that have not taken them
    /// yet (`granted`); never more than `max_connections`.
    leased: usize,
    /// Checkouts waiting for a lease to end, and the ended leases handed on to them
    /// and not yet taken. A lease that ends while someone waits goes to a waiter (of
    /// the worker it ended on first, the longest waiting of them first; see
    /// [`super::waiters`]), not back to the free count, so a checkout that arrives
    /// later cannot take it first: under more clients than connections, each waits its
    /// turn instead of some waiting again and again.
    waiters: Waiters,
    /// Backend thread ids of the leased connections (what a drain kills at its
    /// deadline).
    leased_threads: Vec<u32>,
    /// The last failed connect: when, why, and whether it was permanent (TLS).
    last_failure: Option<(Instant, String, bool)>,
}

/// A checked-out connection. Dropping it returns the connection to the pool (or closes
/// it when it is broken or mid-transaction).
pub struct Lease {
    conn: Option<Box<BackendConn>>,
    pool: Arc<ClusterPool>,
}

impl Lease {
    /// The pool the connection came from.
    pub fn pool(&self) -> &Arc<ClusterPool> {
        &self.pool
    }

    /// The connection.
    pub fn conn(&mut self) -> &mut BackendConn {
        // Invariant: `conn` is Some until drop.
        self.conn
            .as_mut()
            .expect("lease holds a connection until dropped")
    }

    /// The connection, read-only.
    pub fn conn_ref(&self) -> &BackendConn {
        self.conn
            .as_ref()
            .expect("lease holds a connection until dropped")
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        self.pool.end_lease(self.conn.take());
    }
}

impl ClusterPool {
    /// An empty pool for `cluster`.
    pub fn new(cluster: Cluster, config: PoolConfig) -> Arc<ClusterPool> {
        Arc::new(ClusterPool {
            stats: crate::metrics::ClusterStats::default(),
            health: crate::health::ClusterHealth::default(),
            traffic: crate::traffic::ClusterTraffic::default(),
            name: cluster.name.clone(),
            cluster: arc_swap::ArcSwap::from_pointee(cluster),
            generation: std::sync::atomic::AtomicU64::new(0),
            config,
            inner: Mutex::new(Inner {
                idle: IdleList::new(),
                open: 0,
                leased: 0,
                waiters: Waiters::default(),
                leased_threads: Vec::new(),
                last_failure: None,
            }),
            freed: std::array::from_fn(|_| Notify::new()),
            waits: PoolWaits::default(),
        })
    }

    /// The cluster as the pool reaches it now (its primary).
    pub fn cluster(&self) -> Arc<Cluster> {
        self.cluster.load_full()
    }

    /// Points the pool at a new primary (a failover): idle connections are closed,
    /// leased ones are closed when they come back, new ones go to `cluster.primary`.
    pub fn retarget(&self, cluster: Cluster) {
        self.cluster.store(Arc::new(cluster));
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.lock().last_failure = None;
        self.close_idle();
    }

    /// Retires every connection open now (a global variable changed, and their session
    /// values came from the old globals): idle ones close at once, leased ones when
    /// they come back; new connections start from the new globals.
    pub fn renew(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.close_idle();
    }

    /// (open connections, idle connections).
    pub fn counts(&self) -> (usize, usize) {
        let g = self.lock();
        (g.open, g.idle.len())
    }

    /// Leases outstanding: statements running and connections sessions hold.
    pub fn leased(&self) -> usize {
        self.lock().leased
    }

    /// Checkouts waiting for a lease now (all `max_connections` are taken).
    pub fn waiting(&self) -> usize {
        self.lock().waiters.waiting()
    }

    /// Backend thread ids of the leased connections.
    pub fn leased_threads(&self) -> Vec<u32> {
        self.lock().leased_threads.clone()
    }

    /// Closes every idle connection.
    pub fn close_idle(&self) {
        let closed: Vec<Box<BackendConn>> = {
            let mut g = self.lock();
            let all = g.idle.take_where(|_| true);
            g.open = g.open.saturating_sub(all.len());
            all
        };
        drop(closed);
    }

    /// Closes the idle connections unused for longer than `idle_timeout_s`, and those
    /// the server has closed meanwhile; returns how many.
    pub fn close_expired(&self) -> usize {
        let limit = self.config.idle_timeout;
        let closed: Vec<Box<BackendConn>> = {
            let mut g = self.lock();
            let closed = g
                .idle
                .take_where(|c| c.last_used.elapsed() > limit || c.idle_alive() == Some(false));
            g.open = g.open.saturating_sub(closed.len());
            closed
        };
        let n = closed.len();
        drop(closed); // the sockets close outside the lock
        n
    }

    /// Why the cluster takes no statement now, if it does not: a failover under way,
    /// drained or draining by intent, or `down`.
    pub fn not_serving(&self) -> Option<String> {
        if let Some(to) = self.traffic.switching() {
            return Some(format!("failing over to {to}"));
        }
        let intent = self.traffic.intent();
        if intent != crate::traffic::Intent::Serving {
            let d = self.traffic.detail();
            let reason = if d.reason.is_empty() {
                String::new()
            } else {
                format!(" ({})", d.reason)
            };
            return Some(format!("{} by an operator{reason}", intent.name()));
        }
        if self.health.get() == crate::health::Health::Down {
            let h = self.health.snapshot();
            return Some(format!(
                "down for {} s ({})",
                h.since.elapsed().as_secs(),
                h.reason
            ));
        }
        None
    }

    /// Returns at once when the cluster serves; otherwise fails at once, or (with
    /// `on_unavailable = "buffer"`) waits in the cluster's buffer until it serves again
    /// or the buffer's time runs out.
    async fn admit(&self) -> Result<(), ProxyError> {
        let Some(why) = self.not_serving() else {
            return Ok(());
        };
        let name = &self.name;
        // A failover always buffers: it is over within the buffer's time, and the
        // statements it holds must not see an error.
        if self.config.on_unavailable == crate::traffic::OnUnavailable::Fail
            && self.traffic.switching().is_none()
        {
            return Err(ProxyError::cluster_not_serving(name, why));
        }
        let buffered = &self.traffic.buffered;
        if buffered.fetch_add(1, std::sync::atomic::Ordering::Relaxed) >= self.config.buffer_size {
            buffered.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            return Err(ProxyError::cluster_not_serving(
                name,
                format!(
                    "{why}; its buffer is full ({} statements)",
                    self.config.buffer_size
                ),
            ));
        }
        struct Unbuffer<'a>(&'a std::sync::atomic::AtomicUsize);
        impl Drop for Unbuffer<'_> {
            fn drop(&mut self) {
                self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
            }
        }
        let _unbuffer = Unbuffer(buffered);
        let deadline = tokio::time::Instant::now() + self.config.buffer_timeout;
        loop {
            let changed = self.traffic.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            let Some(why) = self.not_serving() else {
                return Ok(());
            };
            // Also look again now and then: a health change is also signalled, but a
            // look costs nothing.
            let wake = deadline.min(tokio::time::Instant::now() + Duration::from_millis(250));
            let _ = crate::timer::timeout_at(wake, changed).await;
            if tokio::time::Instant::now() >= deadline {
                return Err(ProxyError::cluster_not_serving(
                    name,
                    format!(
                        "{why}; waited {} ms in its buffer",
                        self.config.buffer_timeout.as_millis()
                    ),
                ));
            }
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks out a connection as [`Wanted`] says, preferring the idle connection with
    /// server thread id `prefer` (the one that served the asking session last, so a
    /// question about its previous statement reaches it), then one already on
    /// `database` with session state `state_hash`. Others are taken least recently used
    /// first, so the connection a session just gave back is the last one another
    /// session takes. Waits at most the checkout timeout for a free slot.
    pub async fn checkout(self: &Arc<Self>, want: Wanted<'_>) -> Result<Lease, ProxyError> {
        // Read the clock only when a connect failed: the common path never needs it.
        let mut buffered_until = None;
        loop {
            match self.checkout_once(want).await {
                // With buffering on, a primary that cannot be reached (crashed, not yet
                // seen `down`) holds the statement in the buffer like a `down` one
                // would: the health monitor and a failover are seconds away.
                Err((e, true))
                    if e.retryable
                        && self.config.on_unavailable == crate::traffic::OnUnavailable::Buffer
                        && tokio::time::Instant::now()
                            < *buffered_until.get_or_insert_with(|| {
                                tokio::time::Instant::now() + self.config.buffer_timeout
                            }) =>
                {
                    let buffered_until = buffered_until.unwrap_or_else(tokio::time::Instant::now);
                    let changed = self.traffic.changed.notified();
                    let wake = buffered_until
                        .min(tokio::time::Instant::now() + Duration::from_millis(250));
                    let _ = crate::timer::timeout_at(wake, changed).await;
                }
                Ok(lease) => return Ok(lease),
                Err((e, _)) => return Err(e),
            }
        }
    }

    /// [`checkout`](Self::checkout)'s common case, without waiting or awaiting: the
    /// cluster serves, a slot is free, and an idle connection is found that was used
    /// too recently to need a look at its socket (under `PEEK_AFTER_IDLE` before
    /// `now`, a clock reading the caller has: one taken a little earlier only makes
    /// the connection look fresher by that little). None when any of that does not
    /// hold; nothing was taken then, and `checkout` decides.
    pub fn checkout_now(self: &Arc<Self>, want: Wanted<'_>, now: Instant) -> Option<Lease> {
        if self.not_serving().is_some() {
            return None;
        }
        let worker = crate::workers::current();
        let mut g = self.lock();
        if g.leased >= self.config.max_connections {
            return None;
        }
        let room = g.open < self.config.max_connections;
        let pos = g.idle.position(want, worker, room)?;
        let idle_for = now.saturating_duration_since(g.idle.last_used(pos)?);
        if idle_for >= PEEK_AFTER_IDLE || idle_for > self.config.idle_timeout {
            return None;
        }
        let conn = take_idle(&mut g, pos)?;
        g.leased += 1;
        drop(g);
        Some(Lease {
            conn: Some(conn),
            pool: self.clone(),
        })
    }

    /// One try; Err's flag says the cluster could not be connected to.
    async fn checkout_once(
        self: &Arc<Self>,
        want: Wanted<'_>,
    ) -> Result<Lease, (ProxyError, bool)> {
        self.admit().await.map_err(|e| (e, false))?;
        let worker = crate::workers::current();
        let max = self.config.max_connections;
        let pick = |g: &mut Inner| {
            let pos = g.idle.position(want, worker, g.open < max)?;
            take_idle(g, pos)
        };
        // The slot and, most often, an idle connection in one lock.
        let mut first = Some(self.take_slot(pick).await.map_err(|e| (e, false))?);
        // From here on a lease is counted: `slot` ends it on every way out but the one
        // that hands it to a `Lease`, a dropped future (a caller's deadline) too.
        let mut slot = Slot {
            pool: self,
            checking: None,
        };
        loop {
            let candidate = match first.take() {
                Some(c) => c,
                None => {
                    let mut g = self.lock();
                    pick(&mut g)
                }
            };
            let candidate = match candidate {
                Some(conn) => Some(conn),
                None => {
                    let mut g = self.lock();
                    // Keep open <= max: make room by closing an idle connection of
                    // another key.
                    if g.open >= self.config.max_connections && g.idle.pop_front().is_some() {
                        g.open -= 1;
                    }
                    None
                }
            };
            match candidate {
                Some(conn) => {
                    let idle_for = conn.last_used.elapsed();
                    if idle_for > self.config.idle_timeout {
                        self.forget(conn);
                        continue;
                    }
                    // Closed by the server while idle (wait_timeout): never handed
                    // out, another one is taken or opened instead.
                    // A server closes an idle connection after `wait_timeout`, at
                    // least a second: one idle for less is not looked at (the look is
                    // a syscall on the path of every statement).
                    // Held by `slot` meanwhile: a ping cut off midway leaves an answer
                    // unread, so such a connection is closed, never pooled.
                    let conn = slot.checking.insert(conn);
                    let look = if idle_for < PEEK_AFTER_IDLE {
                        Some(true)
                    } else {
                        conn.idle_alive()
                    };
                    let alive = match look {
                        Some(false) => false,
                        None => Box::pin(conn.ping()).await,
                        Some(true) => idle_for <= PING_AFTER_IDLE || Box::pin(conn.ping()).await,
                    };
                    let Some(conn) = slot.checking.take() else {
                        continue;
                    };
                    if !alive {
                        self.forget(conn);
                        continue;
                    }
                    return Ok(slot.into_lease(conn));
                }
                // Connecting (TLS included) is rare and its future large: boxed, so it
                // does not grow every statement's future.
                None => match Box::pin(self.open(want.key, want.database)).await {
                    Ok(conn) => return Ok(slot.into_lease(conn)),
                    Err(e) => return Err((e, true)),
                },
            }
        }
    }

    /// Counts a lease, waiting at most the checkout timeout while all are taken, and
    /// takes what `pick` finds idle under the same lock.
    async fn take_slot(
        &self,
        pick: impl Fn(&mut Inner) -> Option<Box<BackendConn>>,
    ) -> Result<Option<Box<BackendConn>>, ProxyError> {
        let max = self.config.max_connections;
        {
            let mut g = self.lock();
            // Free slots only when no waiter is left without one (`end_lease` hands
            // an ended lease to a waiter rather than freeing it).
            if g.leased < max {
                g.leased += 1;
                return Ok(pick(&mut g));
            }
        }
        let since = tokio::time::Instant::now();
        let deadline = since + self.config.checkout_timeout;
        // Counts this checkout in `waiting` from its first wait on, uncounts it
        // however it ends (a dropped future included).
        let mut waiting = Waiting {
            pool: self,
            lane: lane_of(crate::workers::current()),
            counted: false,
        };
        let waited = || self.waits.waited.record(since.elapsed());
        loop {
            let freed = self.freed[waiting.lane].notified();
            tokio::pin!(freed);
            {
                let mut g = self.lock();
                if let Some(conn) = waiting.take_grant(&mut g, &pick) {
                    drop(g);
                    waited();
                    return Ok(conn);
                }
                if !waiting.counted && g.leased < max {
                    g.leased += 1;
                    return Ok(pick(&mut g));
                }
                if !waiting.counted {
                    g.waiters.join(waiting.lane);
                    waiting.counted = true;
                }
                // Registered before the lock is released, so an end of lease from now
                // on wakes this waiter (or, when it is not the one woken, the one
                // woken, which then finds the lease handed on).
                freed.as_mut().enable();
            }
            if crate::timer::timeout_at(deadline, freed).await.is_err() {
                // A lease handed on just as the time ran out is still taken.
                let granted = waiting.take_grant(&mut self.lock(), &pick);
                waited();
                if let Some(conn) = granted {
                    return Ok(conn);
                }
                self.waits
                    .timeouts
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                return Err(ProxyError::cluster_unavailable(
                    &self.name,
                    format!(
                        "no free connection within {:?} ({max} in use)",
                        self.config.checkout_timeout
                    ),
                ));
            }
        }
    }

    async fn open(
        &self,
        key: ConnKey,
        database: Option<&str>,
    ) -> Result<Box<BackendConn>, ProxyError> {
        if let Some((at, why, permanent)) = &self.lock().last_failure {
            if at.elapsed() < CONNECT_FAILURE_HOLD {
                return Err(unavailable(&self.name, why, *permanent));
            }
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let cluster = self.cluster();
        match BackendConn::connect(&cluster, key, database, self.config.connect_timeout).await {
            Ok((mut conn, _)) => {
                conn.generation = generation;
                let mut g = self.lock();
                g.open += 1;
                g.leased_threads.push(conn.thread_id);
                g.last_failure = None;
                Ok(Box::new(conn))
            }
            Err(why) => {
                // A bad database is the client's error, not the cluster's.
                if why.code == Some(codes::BAD_DB) {
                    return Err(ProxyError::unknown_database(database.unwrap_or("")));
                }
                let (why, permanent) = (why.message, why.permanent);
                self.lock().last_failure = Some((Instant::now(), why.clone(), permanent));
                Err(unavailable(&self.name, &why, permanent))
            }
        }
    }

    /// Closes a leased connection that turned out unusable (its lease goes on).
    fn forget(&self, conn: Box<BackendConn>) {
        let id = conn.thread_id;
        drop(conn);
        let mut g = self.lock();
        g.open = g.open.saturating_sub(1);
        if let Some(i) = g.leased_threads.iter().position(|t| *t == id) {
            g.leased_threads.swap_remove(i);
        }
    }

    /// Ends a lease: its connection (if any) goes back to the idle list, or is closed
    /// when it still holds a session's state; a waiting checkout is woken.
    fn end_lease(&self, conn: Option<Box<BackendConn>>) {
        let mut closed = None;
        let wake = {
            let mut g = self.lock();
            // Handed on to a waiter that has none yet, else freed.
            let hand_on = g.waiters.hand_on(|| lane_of(crate::workers::current()));
            if hand_on.is_none() {
                g.leased = g.leased.saturating_sub(1);
            }
            if let Some(conn) = conn {
                if let Some(i) = g.leased_threads.iter().position(|t| *t == conn.thread_id) {
                    g.leased_threads.swap_remove(i);
                }
                if conn.broken
                    || conn.status & (status::IN_TRANS | status::CURSOR_EXISTS) != 0
                    || !conn.reserve.is_empty()
                {
                    // A connection that still holds a session's state (a transaction,
                    // temporary tables, locks) is never handed to another session:
                    // closing the socket makes the server roll back and drop whatever
                    // was open.
                    g.open = g.open.saturating_sub(1);
                    closed = Some(conn);
                } else if self.traffic.intent() == crate::traffic::Intent::Serving
                    && conn.generation == self.generation.load(std::sync::atomic::Ordering::SeqCst)
                {
                    g.idle.push_back(conn);
                } else {
                    // A draining cluster keeps no idle connections.
                    g.open = g.open.saturating_sub(1);
                    closed = Some(conn);
                }
            }
            hand_on
        };
        drop(closed); // the socket closes outside the lock
        if let Some(lane) = wake {
            self.freed[lane].notify_one();
        }
    }
}

/// Closes expired idle connections of the pools `pools` lists, every half
/// `idle_timeout` (between 1 s and 30 s), until `stop`.
pub async fn reap_idle(
    idle_timeout: Duration,
    pools: impl Fn() -> Vec<Arc<ClusterPool>>,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let period = (idle_timeout / 2).clamp(Duration::from_secs(1), Duration::from_secs(30));
    loop {
        tokio::select! {
            _ = crate::timer::sleep(period) => {}
            _ = stop.changed() => return,
        }
        if *stop.borrow() {
            return;
        }
        for pool in pools() {
            let n = pool.close_expired();
            if n > 0 {
                tracing::debug!(cluster = %pool.name, closed = n, "idle connections closed");
            }
        }
    }
}

/// The error for a failed connect. A permanent failure (TLS not offered, a certificate
/// that does not verify) is not retryable: sending the statement again cannot help.
fn unavailable(cluster: &str, why: &str, permanent: bool) -> ProxyError {
    let mut e = ProxyError::cluster_unavailable(cluster, why);
    e.retryable = !permanent;
    e
}

/// A lease counted but not yet handed out by `checkout_once`, with the connection
/// being looked at, if any. Dropped (an error, or the checkout's future dropped), it
/// closes that connection and ends the lease.
struct Slot<'a> {
    pool: &'a Arc<ClusterPool>,
    checking: Option<Box<BackendConn>>,
}

impl Slot<'_> {
    fn into_lease(self, conn: Box<BackendConn>) -> Lease {
        let pool = self.pool.clone();
        std::mem::forget(self);
        Lease {
            conn: Some(conn),
            pool,
        }
    }
}

impl Drop for Slot<'_> {
    fn drop(&mut self) {
        if let Some(conn) = self.checking.take() {
            self.pool.forget(conn);
        }
        self.pool.end_lease(None);
    }
}

/// A checkout waiting for a lease to end, counted in its lane's waiters while it
/// waits.
struct Waiting<'a> {
    pool: &'a ClusterPool,
    lane: usize,
    counted: bool,
}

impl Waiting<'_> {
    /// A lease handed on to the waiters, taken by this one (its slot is counted
    /// already), with what `pick` finds idle.
    fn take_grant(
        &mut self,
        g: &mut Inner,
        pick: impl Fn(&mut Inner) -> Option<Box<BackendConn>>,
    ) -> Option<Option<Box<BackendConn>>> {
        if !self.counted || !g.waiters.take_grant(self.lane) {
            return None;
        }
        self.counted = false;
        Some(pick(g))
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if !self.counted {
            return;
        }
        let wake = {
            let mut g = self.pool.lock();
            // A lease handed on to this lane that no waiter of it is left to take goes
            // to another lane's waiter, or is freed.
            match g.waiters.leave(self.lane) {
                Some(None) => {
                    g.leased = g.leased.saturating_sub(1);
                    None
                }
                moved => moved.flatten(),
            }
        };
        if let Some(lane) = wake {
            self.pool.freed[lane].notify_one();
        }
    }
}

/// Takes the idle connection at `pos` for a lease.
fn take_idle(g: &mut Inner, pos: usize) -> Option<Box<BackendConn>> {
    let conn = g.idle.take(pos)?;
    g.leased_threads.push(conn.thread_id);
    Some(conn)
}

#[cfg(test)]
#[path = "pool_tests.rs"]
mod tests;
