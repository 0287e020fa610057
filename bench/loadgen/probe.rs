//! What the bench needs for many connections and what it watches on the measured
//! server: the open-files limit (raised to the hard limit, inherited by the relay,
//! shardgate and MariaDB, which the bench starts afterwards), and MariaDB's
//! `Threads_connected` sampled over a measured phase through a connection of its own.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use shardgate::backend::SqlConn;
use shardgate::vschema::Cluster;

/// `struct rlimit` on 64-bit Linux.
#[repr(C)]
struct RLimit {
    cur: u64,
    max: u64,
}

extern "C" {
    fn getrlimit(resource: i32, rlim: *mut RLimit) -> i32;
    fn setrlimit(resource: i32, rlim: *const RLimit) -> i32;
}

const RLIMIT_NOFILE: i32 = 7;

/// Raises this process's soft open-files limit to its hard limit; returns the soft
/// limit in force afterwards (None if it cannot be read).
pub fn raise_nofile() -> Option<u64> {
    let mut lim = RLimit { cur: 0, max: 0 };
    // SAFETY: getrlimit writes one `struct rlimit` (two u64 on 64-bit Linux) into
    // the value we pass, which lives for the call.
    if unsafe { getrlimit(RLIMIT_NOFILE, &mut lim) } != 0 {
        return None;
    }
    if lim.cur < lim.max {
        let want = RLimit {
            cur: lim.max,
            max: lim.max,
        };
        // SAFETY: setrlimit only reads the value we pass, which lives for the call.
        if unsafe { setrlimit(RLIMIT_NOFILE, &want) } == 0 {
            return Some(lim.max);
        }
    }
    Some(lim.cur)
}

/// The most `Threads_connected` one of a few samples saw over a phase.
pub struct ThreadsSampler {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Option<u64>>,
}

impl ThreadsSampler {
    /// Connects to `addr` (before the phase, so the sampler's own connection is
    /// counted in every sample alike) and samples every `every` until [`Self::finish`].
    pub async fn start(
        addr: &str,
        user: &str,
        password: &str,
        every: Duration,
    ) -> Result<ThreadsSampler, String> {
        let cluster = Cluster {
            name: "bench-probe".into(),
            standbys: Vec::new(),
            primary: addr.into(),
            user: user.into(),
            password: password.into(),
            tls: None,
        };
        let mut conn = SqlConn::connect(&cluster, None, Duration::from_secs(10))
            .await
            .map_err(|e| format!("Threads_connected probe: {e}"))?;
        let stop = Arc::new(AtomicBool::new(false));
        let task = {
            let stop = stop.clone();
            tokio::spawn(async move {
                let mut max = None;
                let mut next = Instant::now() + every / 2;
                while !stop.load(Ordering::Relaxed) {
                    if Instant::now() >= next {
                        next += every;
                        if let Some(n) = threads_connected(&mut conn).await {
                            max = Some(max.map_or(n, |m: u64| m.max(n)));
                        }
                    }
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                max
            })
        };
        Ok(ThreadsSampler { stop, task })
    }

    /// Stops sampling; the highest value seen, if any sample was taken.
    pub async fn finish(self) -> Option<u64> {
        self.stop.store(true, Ordering::Relaxed);
        self.task.await.ok().flatten()
    }
}

async fn threads_connected(conn: &mut SqlConn) -> Option<u64> {
    let rows = tokio::time::timeout(
        Duration::from_secs(5),
        conn.query("SHOW GLOBAL STATUS LIKE 'Threads_connected'"),
    )
    .await
    .ok()?
    .ok()?;
    rows.rows.first()?.get(1)?.as_deref()?.parse().ok()
}
