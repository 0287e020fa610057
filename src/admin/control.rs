//! Connections for shardgate's own statements on the clusters (the migration queue's
//! reads and writes on behalf of sessions and admins), kept apart from the data path's
//! pools.
//!
//! Every operation on a cluster runs under one deadline (`admin_cluster_timeout`, 2 s by
//! default) that covers the checkout, a connect if one is needed, the one-time sidecar
//! schema setup and the statements themselves. Operations on several clusters run at
//! once ([`ControlPool::on_each`]), so a cluster that accepts TCP but answers nothing
//! costs one deadline, not one per cluster after it, and never hides the others.
//!
//! A few idle connections per cluster are kept for reuse, so polling (`@@ddl_wait`) does
//! not reconnect each time; a connection whose operation failed or timed out is closed,
//! never reused, since its state is unknown.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::backend::{SqlConn, SqlError};
use crate::migrations::store::{self, StoreError};
use crate::vschema::Cluster;

/// The default deadline of one control operation on one cluster.
pub const DEFAULT_CLUSTER_TIMEOUT: Duration = Duration::from_secs(2);

/// Idle connections kept per cluster; more are opened when needed and closed after.
const MAX_IDLE: usize = 2;

/// Control operations in flight per cluster at once; more wait (within their deadline),
/// so many sessions polling at once cannot flood a cluster with connections.
const MAX_IN_FLIGHT: usize = 8;

/// An idle connection unused for this long is pinged before it is trusted again.
const PING_AFTER_IDLE: Duration = Duration::from_secs(5);

/// Why an operation on one cluster did not succeed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterFailure {
    /// The cluster, as the vschema names it.
    pub cluster: String,
    /// What happened (`timeout after 2s`, the connect error, the server's error).
    pub reason: String,
    /// True when the cluster could not be reached at all (timeout, connect or
    /// connection failure); false when it answered with an error.
    pub unreachable: bool,
}

impl ClusterFailure {
    /// `c2 (unreachable: timeout after 2s)`, for messages naming several clusters.
    pub fn describe(&self) -> String {
        let what = if self.unreachable {
            "unreachable"
        } else {
            "failed"
        };
        format!("{} ({what}: {})", self.cluster, self.reason)
    }

    fn from_store(cluster: &str, e: StoreError) -> ClusterFailure {
        ClusterFailure {
            cluster: cluster.to_string(),
            unreachable: matches!(e, StoreError::Sql(SqlError::Connection(_))),
            reason: e.to_string(),
        }
    }
}

impl std::fmt::Display for ClusterFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = if self.unreachable {
            "unreachable"
        } else {
            "failed"
        };
        write!(f, "cluster '{}' {what}: {}", self.cluster, self.reason)
    }
}

/// Control connections to every cluster; one per proxy, in [`crate::shared::Shared`].
pub struct ControlPool {
    timeout: Duration,
    clusters: Mutex<HashMap<String, Arc<ClusterControl>>>,
}

/// One cluster's idle connections and whether its sidecar schema is known to exist.
struct ClusterControl {
    cluster: Cluster,
    idle: Mutex<Vec<(SqlConn, Instant)>>,
    in_flight: Arc<Semaphore>,
    schema_ready: AtomicBool,
    /// Serializes the schema setup, so concurrent first uses run it once.
    schema_setup: tokio::sync::Mutex<()>,
}

/// A connection checked out of the pool. [`ControlConn::release`] gives it back after
/// a successful operation; dropped otherwise (an error, a deadline), it is closed.
pub struct ControlConn {
    conn: Option<SqlConn>,
    home: Arc<ClusterControl>,
    reusable: bool,
    _permit: OwnedSemaphorePermit,
}

impl ControlConn {
    /// The connection.
    pub fn sql(&mut self) -> &mut SqlConn {
        // Invariant: `conn` is Some until drop.
        self.conn
            .as_mut()
            .expect("a control connection holds its SqlConn until dropped")
    }

    /// Returns the connection to the pool: the operation completed, the connection is
    /// idle and in a known state.
    pub fn release(mut self) {
        self.reusable = true;
    }
}

impl Drop for ControlConn {
    fn drop(&mut self) {
        let Some(conn) = self.conn.take() else {
            return;
        };
        if !self.reusable {
            return;
        }
        let mut idle = self.home.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < MAX_IDLE {
            idle.push((conn, Instant::now()));
        }
    }
}

impl ControlPool {
    /// A pool for `clusters`, each operation bounded by `timeout`. Nothing connects
    /// until first used.
    pub fn new<'a>(clusters: impl IntoIterator<Item = &'a Cluster>, timeout: Duration) -> Self {
        let clusters = clusters
            .into_iter()
            .map(|c| (c.name.clone(), Arc::new(ClusterControl::new(c.clone()))))
            .collect();
        ControlPool {
            timeout,
            clusters: Mutex::new(clusters),
        }
    }

    /// The deadline of one operation on one cluster.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The cluster's entry; a cluster the pool does not know yet, or whose address or
    /// credentials changed in the vschema, gets a fresh one.
    fn entry(&self, cluster: &Cluster) -> Arc<ClusterControl> {
        let mut map = self.clusters.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&cluster.name) {
            Some(e) if e.cluster == *cluster => e.clone(),
            _ => {
                let e = Arc::new(ClusterControl::new(cluster.clone()));
                map.insert(cluster.name.clone(), e.clone());
                e
            }
        }
    }

    /// A connection to `cluster` whose sidecar schema exists (set up once per cluster
    /// and process). Not bounded by itself: callers run it under [`Self::on_one`].
    async fn checkout(&self, cluster: &Cluster) -> Result<ControlConn, ClusterFailure> {
        let home = self.entry(cluster);
        let failure = |reason: String| ClusterFailure {
            cluster: cluster.name.clone(),
            reason,
            unreachable: true,
        };
        let permit = home
            .in_flight
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| failure("control pool closed".into()))?;
        let reused = loop {
            let next = home.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                None => break None,
                Some((mut conn, since)) => {
                    if since.elapsed() < PING_AFTER_IDLE || conn.ping().await {
                        break Some(conn);
                    }
                    // Closed by the server meanwhile: try the next one.
                }
            }
        };
        let conn = match reused {
            Some(c) => c,
            None => SqlConn::connect(cluster, None, self.timeout)
                .await
                .map_err(|e| match e {
                    SqlError::Connection(m) => failure(m),
                    other => failure(other.to_string()),
                })?,
        };
        let mut out = ControlConn {
            conn: Some(conn),
            home: home.clone(),
            reusable: false,
            _permit: permit,
        };
        if !home.schema_ready.load(Ordering::Acquire) {
            let _setup = home.schema_setup.lock().await;
            if !home.schema_ready.load(Ordering::Acquire) {
                store::ensure_schema(out.sql())
                    .await
                    .map_err(|e| ClusterFailure::from_store(&cluster.name, e))?;
                home.schema_ready.store(true, Ordering::Release);
            }
        }
        Ok(out)
    }

    /// Runs `op` on a connection to `cluster`, the whole of it (checkout included)
    /// within the deadline. `op` calls [`ControlConn::release`] when it succeeds.
    pub async fn on_one<T, F, Fut>(&self, cluster: &Cluster, op: F) -> Result<T, ClusterFailure>
    where
        F: FnOnce(ControlConn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.on_one_within(cluster, self.timeout, op).await
    }

    async fn on_one_within<T, F, Fut>(
        &self,
        cluster: &Cluster,
        deadline: Duration,
        op: F,
    ) -> Result<T, ClusterFailure>
    where
        F: FnOnce(ControlConn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let home = self.entry(cluster);
        let work = async {
            let conn = self.checkout(cluster).await?;
            op(conn).await.map_err(|e| {
                // The sidecar schema was dropped behind our back: set it up again next time.
                if let StoreError::Sql(SqlError::Server(info)) = &e {
                    if info.code == 1049 || info.code == 1146 {
                        home.schema_ready.store(false, Ordering::Release);
                    }
                }
                ClusterFailure::from_store(&cluster.name, e)
            })
        };
        match crate::timer::timeout(deadline, work).await {
            Ok(r) => r,
            Err(_) => Err(ClusterFailure {
                cluster: cluster.name.clone(),
                reason: format!("timeout after {deadline:?}"),
                unreachable: true,
            }),
        }
    }

    /// Runs `op` on every cluster of `clusters` at once, each within its own deadline;
    /// the results come back in the order of `clusters`.
    pub async fn on_each<'c, T, F, Fut>(
        &self,
        clusters: impl IntoIterator<Item = &'c Cluster>,
        op: F,
    ) -> Vec<(&'c Cluster, Result<T, ClusterFailure>)>
    where
        F: Fn(&'c Cluster, ControlConn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        self.on_each_within(clusters, 1, op).await
    }

    /// [`Self::on_each`] for work that is `rounds` times the usual (e.g. queueing
    /// thousands of rows in batches): the deadline is `rounds` deadlines.
    pub async fn on_each_within<'c, T, F, Fut>(
        &self,
        clusters: impl IntoIterator<Item = &'c Cluster>,
        rounds: u32,
        op: F,
    ) -> Vec<(&'c Cluster, Result<T, ClusterFailure>)>
    where
        F: Fn(&'c Cluster, ControlConn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let deadline = self.timeout.saturating_mul(rounds.max(1));
        let clusters: Vec<&'c Cluster> = clusters.into_iter().collect();
        let op = &op;
        let results = join_all(
            clusters
                .iter()
                .map(|&c| self.on_one_within(c, deadline, move |conn| op(c, conn)))
                .collect(),
        )
        .await;
        clusters.into_iter().zip(results).collect()
    }
}

impl ClusterControl {
    fn new(cluster: Cluster) -> Self {
        ClusterControl {
            cluster,
            idle: Mutex::new(Vec::new()),
            in_flight: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            schema_ready: AtomicBool::new(false),
            schema_setup: tokio::sync::Mutex::new(()),
        }
    }
}

/// Polls every future on the current task until all are done; outputs in input order.
/// (The futures borrow the caller's state, so they are not spawned.)
pub async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut pending: Vec<Option<Pin<Box<F>>>> =
        futures.into_iter().map(|f| Some(Box::pin(f))).collect();
    let mut done: Vec<Option<F::Output>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut all = true;
        for (slot, out) in pending.iter_mut().zip(done.iter_mut()) {
            if let Some(f) = slot {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => {
                        *out = Some(v);
                        *slot = None;
                    }
                    Poll::Pending => all = false,
                }
            }
        }
        if all {
            Poll::Ready(())
        } else {
            Poll::Pending
        }
    })
    .await;
    done.into_iter().flatten().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn join_all_runs_futures_at_once_and_keeps_their_order() {
        // The first future can only finish if the second runs while it waits.
        let (tx, rx) = tokio::sync::oneshot::channel::<u32>();
        let waits: Pin<Box<dyn Future<Output = u32>>> =
            Box::pin(async move { rx.await.unwrap_or(0) + 1 });
        let sends: Pin<Box<dyn Future<Output = u32>>> = Box::pin(async move {
            let _ = tx.send(41);
            7
        });
        assert_eq!(join_all(vec![waits, sends]).await, vec![42, 7]);
    }

    #[tokio::test]
    async fn an_unreachable_cluster_fails_within_the_deadline_and_names_itself() {
        // A listener that accepts (the kernel does) but never greets, like a SIGSTOPped
        // server.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let cluster = Cluster {
            name: "c9".into(),
            standbys: Vec::new(),
            primary: silent.local_addr().expect("addr").to_string(),
            user: "u".into(),
            password: "p".into(),
            tls: None,
        };
        let pool = ControlPool::new([&cluster], Duration::from_millis(300));
        let started = Instant::now();
        let r = pool
            .on_one(&cluster, |c| async move {
                c.release();
                Ok(())
            })
            .await;
        let e = r.expect_err("nothing answers");
        assert_eq!(e.cluster, "c9");
        assert!(e.unreachable);
        assert!(e.reason.contains("300ms"), "{}", e.reason);
        assert!(started.elapsed() < Duration::from_secs(5));
    }
}
