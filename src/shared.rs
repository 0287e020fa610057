//! State shared by every session: the configuration, the users, and the *runtime
//! snapshot* (vschema + one pool per cluster + a generation number).
//!
//! A statement reads the snapshot once, without a lock ([`Shared::runtime`]), and uses
//! that one snapshot to the end, so a live change of the shard map (which swaps in a
//! new [`Runtime`]) never shows a statement half of each. Sessions, the metrics
//! endpoint and the admin surface depend on this module; nothing here depends on them.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::admin::ControlPool;
use crate::backend::{BackendConn, ClusterPool, ConnKey};
use crate::config::ProxyConfig;
use crate::migrations::executor::ExecutorStats;
use crate::protocol::sha2_auth::{PasswordVerifier, RsaKeys, Sha2Cache};
use crate::protocol::{auth, caps};
use crate::vschema::VSchema;

/// A user as kept at run time.
#[derive(Debug, Clone)]
pub struct UserEntry {
    /// SHA1(SHA1(password)); None for an empty password.
    pub password_hash: Option<[u8; 20]>,
    /// What the user may do.
    pub role: crate::access::Role,
    /// Where the user may go.
    pub scope: Arc<crate::access::Scope>,
    /// Default `@@ddl_wait`.
    pub ddl_wait: Option<Duration>,
    /// May log in only over TLS.
    pub require_tls: bool,
    /// The plugin this user authenticates with.
    pub auth_plugin: auth::AuthPlugin,
    /// Checks a password sent in full (`caching_sha2_password` users with a password).
    pub sha2_verifier: Option<PasswordVerifier>,
}

/// What routing needs, as one consistent snapshot.
pub struct Runtime {
    /// The shard map.
    pub vschema: Arc<VSchema>,
    /// One pool per cluster of `vschema`.
    pub pools: PoolMap,
    /// Incremented by every swap; 1 for the snapshot the proxy started with.
    pub generation: u64,
}

impl Runtime {
    /// The pool of `cluster` (or of one of its standbys: `cluster@host:port`).
    pub fn pool(&self, cluster: &str) -> Option<&Arc<ClusterPool>> {
        self.pools.get(cluster)
    }

    /// The clusters' own pools (to their primaries), without the standbys' pools that
    /// replica reads use.
    pub fn cluster_pools(&self) -> impl Iterator<Item = (&String, &Arc<ClusterPool>)> {
        self.pools.iter().filter(|(name, _)| !name.contains('@'))
    }
}

/// Pools by name, hashed with a fast keyed hash (looked up several times per
/// statement).
pub type PoolMap = HashMap<String, Arc<ClusterPool>, foldhash::fast::RandomState>;

/// The name of the pool of `cluster`'s standby `addr` in [`Runtime::pools`].
pub fn replica_pool_name(cluster: &str, addr: &str) -> String {
    format!("{cluster}@{addr}")
}

/// Adds a pool for each standby of `c` that has none yet (replica reads use them).
pub(crate) fn add_replica_pools(
    pools: &mut PoolMap,
    c: &crate::vschema::Cluster,
    config: &crate::config::PoolConfig,
) {
    for addr in &c.standbys {
        pools
            .entry(replica_pool_name(&c.name, addr))
            .or_insert_with(|| {
                ClusterPool::new(crate::health::members::member(c, addr), config.clone())
            });
    }
}

/// State shared by every session.
pub struct Shared {
    /// The configuration served.
    pub config: Arc<ProxyConfig>,
    runtime: ArcSwap<Runtime>,
    /// Connections for shardgate's own work on the clusters (the migration queue),
    /// bounded by `admin_cluster_timeout` per cluster.
    pub control: Arc<ControlPool>,
    /// Users by name.
    pub users: HashMap<String, UserEntry>,
    /// The version string shown to clients (the backends' own, so drivers see the
    /// server they really talk to).
    pub server_version: String,
    /// Client connections open now.
    pub clients: AtomicI64,
    /// Counters of this proxy's migration executors, by cluster.
    pub executor_stats: Mutex<Vec<(String, Arc<ExecutorStats>)>>,
    /// Default collation shown in the greeting.
    pub default_collation: u8,
    /// Capabilities offered to clients: shardgate's, minus `LONG_PASSWORD` when the
    /// backends are MariaDB servers with extended capabilities.
    pub offered_capabilities: u32,
    /// MariaDB extended capabilities offered to clients.
    pub offered_ext_capabilities: u32,
    next_connection_id: AtomicU32,
    /// Live client sessions by their connection id (for `KILL`): registered at login,
    /// unregistered when the session ends. The serving path never takes this lock.
    sessions: Mutex<HashMap<u32, Arc<SessionHandle>>>,
    /// Pending-login and client slots, the login throttle.
    pub door: crate::frontdoor::FrontDoor,
    /// `caching_sha2_password`'s fast-authentication cache (empty at start).
    pub sha2_cache: Sha2Cache,
    /// The RSA key for `caching_sha2_password` without TLS: the configured one, or one
    /// generated at start-up when a user needs it; None when no user does.
    pub rsa_key: Option<Arc<RsaKeys>>,
    /// The plugin the greeting names: `caching_sha2_password` when every user has it
    /// (so clients start with it and need no auth switch), else `mysql_native_password`.
    pub greeting_plugin: auth::AuthPlugin,
    /// Failovers under way and done, fenced former primaries.
    pub topology: crate::traffic::Topology,
    /// Per-workspace statement and error counts of the last minute (`SHOW WORKSPACE`,
    /// `SHOW WORKSPACES WITH ERRORS`), bounded in memory.
    pub workspaces: crate::health::WorkspaceErrors,
    /// The live, versioned vschema and the topology store.
    pub plane: crate::control::ControlPlane,
    /// Held by whoever builds a new runtime snapshot from the current one (a vschema
    /// change, a failover), so that neither loses the other's change.
    swapping: Mutex<()>,
    /// This proxy's metrics (`GET /metrics`), on a recorder of its own.
    pub metrics: Arc<crate::metrics::Registry>,
    /// Plans by literal-stripped text, for every session (`planner::cache`).
    pub plan_cache: crate::planner::PlanCache,
    /// The idle watcher's clock: sessions' idle deadlines are on it.
    pub idle_clock: crate::session::IdleClock,
}

impl Shared {
    /// Builds the shared state; asks one cluster for its version string.
    pub async fn new(config: Arc<ProxyConfig>) -> Arc<Shared> {
        let vs = config.vschema.clone();
        let mut pools: PoolMap = vs
            .clusters
            .values()
            .map(|c| {
                (
                    c.name.clone(),
                    ClusterPool::new(c.clone(), config.pool.clone()),
                )
            })
            .collect();
        for c in vs.clusters.values() {
            add_replica_pools(&mut pools, c, &config.pool);
        }
        let users = config
            .users
            .iter()
            .map(|u| {
                let hash =
                    (!u.password.is_empty()).then(|| auth::double_sha1(u.password.as_bytes()));
                (
                    u.name.clone(),
                    UserEntry {
                        password_hash: hash,
                        role: u.role,
                        scope: Arc::new(u.scope.clone()),
                        ddl_wait: u.ddl_wait,
                        require_tls: u.require_tls,
                        auth_plugin: u.auth_plugin,
                        sha2_verifier: (u.auth_plugin == auth::AuthPlugin::CachingSha2Password
                            && !u.password.is_empty())
                        .then(|| PasswordVerifier::new(u.password.as_bytes())),
                    },
                )
            })
            .collect();
        let control = Arc::new(ControlPool::new(
            vs.clusters.values(),
            config.admin_cluster_timeout,
        ));
        let rsa_key = rsa_key(&config).await;
        let greeting_plugin = if !config.users.is_empty()
            && config
                .users
                .iter()
                .all(|u| u.auth_plugin == auth::AuthPlugin::CachingSha2Password)
        {
            auth::AuthPlugin::CachingSha2Password
        } else {
            auth::AuthPlugin::NativePassword
        };
        let probe = probe_backends(&vs).await;
        let topo = crate::control::make_topo(&config.topo);
        let door = crate::frontdoor::FrontDoor::new(&config.limits, config.max_client_connections);
        let plan_cache = crate::planner::PlanCache::new(config.plan_cache_size);
        Arc::new(Shared {
            door,
            config,
            control,
            runtime: ArcSwap::from_pointee(Runtime {
                vschema: Arc::new(vs),
                pools,
                generation: 1,
            }),
            users,
            server_version: probe.server_version,
            default_collation: probe.collation,
            offered_capabilities: probe.offered_capabilities,
            offered_ext_capabilities: probe.offered_ext_capabilities,
            next_connection_id: AtomicU32::new(1),
            sessions: Mutex::new(HashMap::new()),
            executor_stats: Mutex::new(Vec::new()),
            clients: AtomicI64::new(0),
            sha2_cache: Sha2Cache::default(),
            rsa_key,
            greeting_plugin,
            topology: crate::traffic::Topology::default(),
            workspaces: crate::health::WorkspaceErrors::default(),
            plane: crate::control::ControlPlane::new(topo),
            swapping: Mutex::new(()),
            metrics: crate::metrics::Registry::new(),
            plan_cache,
            idle_clock: crate::session::IdleClock::default(),
        })
    }

    /// The runtime snapshot in force now: one atomic load, no lock. Keep it for the
    /// whole statement.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Builds the next runtime snapshot from the current one with `next` and swaps it
    /// in, one builder at a time.
    pub(crate) fn update_runtime(&self, next: impl FnOnce(&Runtime) -> Runtime) {
        let _one = self.swapping.lock().unwrap_or_else(|e| e.into_inner());
        let now = self.runtime.load_full();
        self.runtime.store(Arc::new(next(&now)));
    }

    /// The vschema in force now.
    pub fn vschema(&self) -> Arc<VSchema> {
        self.runtime.load().vschema.clone()
    }

    /// A fresh connection id for a client.
    pub fn next_connection_id(&self) -> u32 {
        self.next_connection_id.fetch_add(1, Ordering::Relaxed)
    }

    /// Registers a logged-in session under its connection id; the receiver turns true
    /// when another session kills it. Unregister with [`Shared::unregister_session`].
    pub fn register_session(
        &self,
        id: u32,
        user: &str,
        host: String,
        db: Option<String>,
    ) -> Arc<SessionHandle> {
        let handle = Arc::new(SessionHandle {
            user: user.to_string(),
            host,
            signal: Signal::default(),
            running: Running::default(),
            idle_deadline: std::sync::atomic::AtomicU64::new(u64::MAX),
            activity: std::sync::Mutex::new(Activity {
                since: std::time::Instant::now(),
                statement: None,
                db,
                user: user.to_string(),
            }),
        });
        self.sessions_lock().insert(id, handle.clone());
        handle
    }

    /// Tells every registered session that the server stops (each one ends at its
    /// next wait for a command). A session registered after this call sees the stop
    /// flag it was set after.
    pub fn stop_sessions(&self) {
        for handle in self.sessions_lock().values() {
            handle.signal.raise(Signal::STOPPED);
        }
    }

    /// Raises [`Signal::IDLE`] on each session whose idle deadline is at or before
    /// `now` (on [`crate::session::IdleClock`]) and that has not seen the last one yet.
    pub fn signal_idle_sessions(&self, now: u64) {
        for handle in self.sessions_lock().values() {
            let due = handle.idle_deadline.load(Ordering::Relaxed);
            if due <= now && handle.signal.get() & Signal::IDLE == 0 {
                handle.signal.raise(Signal::IDLE);
            }
        }
    }

    /// Forgets a session that ended.
    pub fn unregister_session(&self, id: u32) {
        self.sessions_lock().remove(&id);
    }

    /// The live sessions, by connection id, for `SHOW PROCESSLIST`.
    pub fn sessions(&self) -> Vec<(u32, Arc<SessionHandle>)> {
        let mut all: Vec<(u32, Arc<SessionHandle>)> = self
            .sessions_lock()
            .iter()
            .map(|(id, h)| (*id, h.clone()))
            .collect();
        all.sort_unstable_by_key(|(id, _)| *id);
        all
    }

    /// The live session with connection id `id`.
    pub fn session(&self, id: u32) -> Option<Arc<SessionHandle>> {
        self.sessions_lock().get(&id).cloned()
    }

    fn sessions_lock(&self) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<SessionHandle>>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// What a session's command loop is told from outside: it was killed (`KILL`), or the
/// server stops. One atomic word and one waker: waiting for it between commands costs
/// a waker registration, not a lock (as a `watch` channel's wait does, on every poll).
#[derive(Default)]
pub struct Signal {
    bits: std::sync::atomic::AtomicU8,
    waker: atomic_waker::AtomicWaker,
}

impl Signal {
    /// `KILL` of the session.
    pub const KILLED: u8 = 1;
    /// The server stops.
    pub const STOPPED: u8 = 2;
    /// The idle watcher saw the session's idle deadline pass (`session::watch_idle`):
    /// the session checks its own clock, and ends or goes on waiting.
    pub const IDLE: u8 = 4;
    /// The bits that end the session.
    pub const ENDING: u8 = Self::KILLED | Self::STOPPED;

    /// Sets `bit` and wakes the session's waiting loop.
    pub fn raise(&self, bit: u8) {
        self.bits.fetch_or(bit, Ordering::SeqCst);
        self.waker.wake();
    }

    /// Lowers `bit`.
    pub fn clear(&self, bit: u8) {
        self.bits.fetch_and(!bit, Ordering::SeqCst);
    }

    /// The bits raised so far.
    pub fn get(&self) -> u8 {
        self.bits.load(Ordering::SeqCst)
    }

    /// Ready with the bits once any is raised.
    pub fn poll(&self, cx: &mut std::task::Context<'_>) -> std::task::Poll<u8> {
        let bits = self.get();
        if bits != 0 {
            return std::task::Poll::Ready(bits);
        }
        // Registered before the second look: a raise from now on wakes this task.
        self.waker.register(cx.waker());
        match self.get() {
            0 => std::task::Poll::Pending,
            bits => std::task::Poll::Ready(bits),
        }
    }
}

/// What another session needs to know about a live session to `KILL` it or list it.
pub struct SessionHandle {
    /// The user it logged in as (see [`SessionHandle::current_user`] for the one it
    /// runs as now).
    pub user: String,
    /// The client's address, `ip:port`.
    pub host: String,
    /// What it does now, for `SHOW PROCESSLIST` (a lock of its own, never held across
    /// an await: the serving path takes it twice per query, uncontended).
    activity: std::sync::Mutex<Activity>,
    /// Killed or stopped: what its command loop waits for besides the client.
    pub signal: Signal,
    /// The backend statement it runs now (see [`Running`]).
    pub running: Running,
    /// When the session's wait for its next command passes its idle limit, on the
    /// idle watcher's clock (`session::IdleClock`); `u64::MAX`: no limit, or not
    /// waiting.
    pub idle_deadline: std::sync::atomic::AtomicU64,
}

/// Where a session's current statement runs, and the killers that may be about to
/// interrupt it. A killer holds a [`KillGuard`] while it sends `KILL QUERY`; a
/// statement's end waits for killers to finish before its connection may go back to the
/// pool (where the thread id would soon name another session's statement).
///
/// Cheap for the session, which marks every statement's start and end: a start is an
/// uncontended lock and a store, an end a store and a load (no async lock).
/// A killer raises `killers` before it reads `thread_id`, and an end clears `thread_id`
/// before it reads `killers` (both sequentially consistent): either the end sees the
/// killer and waits, or the killer sees no statement and sends nothing.
#[derive(Debug, Default)]
pub struct Running {
    /// The cluster of the statement's backend connection (kept between statements).
    cluster: std::sync::Mutex<String>,
    /// The backend connection's thread id; 0 while no statement runs.
    thread_id: std::sync::atomic::AtomicU32,
    /// Killers between looking at the statement and the end of their `KILL QUERY`.
    killers: std::sync::atomic::AtomicU32,
    /// Told when the last killer is done.
    killers_done: tokio::sync::Notify,
}

/// A killer's hold on [`Running`] (see there); dropping it lets the statement end.
pub struct KillGuard<'a> {
    running: &'a Running,
    /// The statement to interrupt: cluster and backend thread id.
    pub cluster: String,
    pub thread_id: u32,
}

impl Running {
    /// Holds the running statement for a killer, or None when none runs.
    pub fn hold_for_kill(&self) -> Option<KillGuard<'_>> {
        use std::sync::atomic::Ordering::SeqCst;
        self.killers.fetch_add(1, SeqCst);
        let mut guard = KillGuard {
            running: self,
            cluster: String::new(),
            thread_id: self.thread_id.load(SeqCst),
        };
        if guard.thread_id == 0 {
            return None;
        }
        guard.cluster = self
            .cluster
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        Some(guard)
    }
}

impl Running {
    /// The statement ended: no killer may look at it any more, and those that did are
    /// waited for.
    async fn end(&self) {
        use std::sync::atomic::Ordering::SeqCst;
        self.thread_id.store(0, SeqCst);
        while self.killers.load(SeqCst) != 0 {
            let done = self.killers_done.notified();
            tokio::pin!(done);
            done.as_mut().enable();
            if self.killers.load(SeqCst) == 0 {
                break;
            }
            done.await;
        }
    }
}

impl Drop for KillGuard<'_> {
    fn drop(&mut self) {
        use std::sync::atomic::Ordering::SeqCst;
        if self.running.killers.fetch_sub(1, SeqCst) == 1 {
            self.running.killers_done.notify_waiters();
        }
    }
}

/// A session's current command, as `SHOW PROCESSLIST` shows it.
#[derive(Debug, Clone)]
pub struct Activity {
    /// When the current command started, or the last one ended.
    pub since: std::time::Instant,
    /// The text of the query running now; None between commands.
    pub statement: Option<bytes::Bytes>,
    /// The session's database.
    pub db: Option<String>,
    /// The user it runs as now (the login's, or the last `COM_CHANGE_USER`'s).
    pub user: String,
}

impl SessionHandle {
    /// A copy of what the session does now.
    pub fn activity(&self) -> Activity {
        self.activity_lock().clone()
    }

    /// Records that a query starts (`text` without the command byte) or ends (None)
    /// at `at` (a clock reading the session already has).
    pub fn set_statement(&self, text: Option<bytes::Bytes>, at: std::time::Instant) {
        let mut a = self.activity_lock();
        a.statement = text;
        a.since = at;
    }

    /// Records the session's database after `USE` or `COM_INIT_DB`.
    pub fn set_db(&self, db: Option<String>) {
        self.activity_lock().db = db;
    }

    /// Records the user the session runs as after `COM_CHANGE_USER`.
    pub fn set_user(&self, user: &str) {
        self.activity_lock().user = user.to_string();
    }

    /// The user the session runs as now.
    pub fn current_user(&self) -> String {
        self.activity_lock().user.clone()
    }

    fn activity_lock(&self) -> std::sync::MutexGuard<'_, Activity> {
        self.activity.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Asks the session to end (its serve loop watches for this).
    pub fn kill(&self) {
        self.signal.raise(Signal::KILLED);
    }

    /// Records that a statement starts on `thread_id` of `cluster`.
    pub fn statement_started(&self, cluster: &str, thread_id: u32) {
        let r = &self.running;
        {
            let mut c = r.cluster.lock().unwrap_or_else(|e| e.into_inner());
            if *c != cluster {
                *c = cluster.to_string();
            }
        }
        r.thread_id
            .store(thread_id, std::sync::atomic::Ordering::SeqCst);
    }

    /// Records that the statement ended, then waits for killers that saw it running to
    /// finish their `KILL QUERY` (before its connection goes back to the pool).
    pub async fn statement_ended(&self) {
        self.running.end().await;
    }
}

/// The configured RSA key; else, if a user logs in with `caching_sha2_password`, a new
/// one (clients without TLS need one for full authentication, and MySQL makes its own
/// too). None if generating fails: such clients are then refused, TLS ones still work.
async fn rsa_key(config: &ProxyConfig) -> Option<Arc<RsaKeys>> {
    if let Some(k) = &config.rsa_key {
        return Some(k.clone());
    }
    if !config
        .users
        .iter()
        .any(|u| u.auth_plugin == auth::AuthPlugin::CachingSha2Password)
    {
        return None;
    }
    // Key generation takes a while of CPU: off the async workers.
    let generated = tokio::task::spawn_blocking(RsaKeys::generate)
        .await
        .map_err(|e| e.to_string())
        .and_then(|k| k);
    match generated {
        Ok(k) => {
            tracing::info!(
                bits = crate::protocol::sha2_auth::GENERATED_KEY_BITS,
                "generated an RSA key pair for caching_sha2_password (no [auth] rsa_private_key)"
            );
            Some(Arc::new(k))
        }
        Err(e) => {
            tracing::error!(error = %e, "no RSA key: caching_sha2_password needs TLS");
            None
        }
    }
}

/// What the backends' greeting tells shardgate to show its own clients.
struct Probe {
    server_version: String,
    collation: u8,
    offered_capabilities: u32,
    offered_ext_capabilities: u32,
}

/// Asks the clusters, in order, for their greeting; the first answer gives the version
/// string, collation and MariaDB extended capabilities that clients are shown, so a
/// driver sees the server it really talks to.
async fn probe_backends(vs: &VSchema) -> Probe {
    let key = ConnKey {
        caps: caps::DEPRECATE_EOF,
        collation: 45,
        ext: 0,
    };
    for c in vs.clusters.values() {
        let (_conn, g) = match BackendConn::connect(c, key, None, Duration::from_secs(2)).await {
            Ok(answer) => answer,
            // A TLS misconfiguration will fail every statement on this cluster: say so
            // at start-up, not only in the first client's error.
            Err(e) if e.permanent => {
                tracing::error!(cluster = %c.name, "{}", e.message);
                continue;
            }
            Err(_) => continue,
        };
        let mariadb_ext = g.capabilities & caps::LONG_PASSWORD == 0;
        let ext = g.ext_capabilities & caps::MARIADB_RELAYABLE;
        return Probe {
            server_version: g.server_version,
            collation: g.collation,
            offered_capabilities: if mariadb_ext {
                caps::SERVER_OFFERED & !caps::LONG_PASSWORD
            } else {
                caps::SERVER_OFFERED
            },
            offered_ext_capabilities: if mariadb_ext { ext } else { 0 },
        };
    }
    tracing::warn!("no cluster answered at startup; showing clients a generic MariaDB greeting");
    Probe {
        server_version: "5.5.5-10.11.0-MariaDB-shardgate".to_string(),
        collation: 45,
        offered_capabilities: caps::SERVER_OFFERED,
        offered_ext_capabilities: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::Running;
    use std::sync::atomic::Ordering::SeqCst;
    use std::time::Duration;

    #[tokio::test]
    async fn a_statement_ends_only_after_the_killers_that_saw_it() {
        let r = std::sync::Arc::new(Running::default());
        assert!(r.hold_for_kill().is_none(), "nothing runs");
        {
            let mut c = r.cluster.lock().unwrap_or_else(|e| e.into_inner());
            *c = "c1".to_string();
        }
        r.thread_id.store(42, SeqCst);
        let guard = r.hold_for_kill().expect("a statement runs");
        assert_eq!((guard.cluster.as_str(), guard.thread_id), ("c1", 42));
        let ended = {
            let r = r.clone();
            tokio::spawn(async move { r.end().await })
        };
        crate::timer::sleep(Duration::from_millis(50)).await;
        assert!(!ended.is_finished(), "the end waits for the killer");
        assert!(
            r.hold_for_kill().is_none(),
            "a later killer sees no statement"
        );
        drop(guard);
        crate::timer::timeout(Duration::from_secs(5), ended)
            .await
            .expect("the end goes on once the killer is done")
            .expect("task");
    }
}
