//! Session workers: one single-threaded tokio runtime per core, each running the
//! sessions handed to it for their whole life.
//!
//! A session's client socket, its backend connections and its timers then live on one
//! thread: a statement's four socket operations wake no other thread, and no task is
//! stolen across cores. The listener, the health monitors, the control plane and the
//! migration executors stay on the main runtime; the accept loop hands each logged-in
//! candidate's socket to the worker with the fewest sessions. Pools stay shared: a
//! connection remembers the worker that opened it, and a checkout prefers the
//! connections of its own worker (see [`current`]), so a socket is driven by the
//! thread that uses it unless the pool has nothing else idle.
//!
//! A worker's runtime drives sockets only, with no time driver: its timers are made
//! on one more thread, `shardgate-timers`, whose runtime has nothing but a time driver
//! (see [`crate::timer`]). A worker's park is then one `epoll_wait`, without a clock
//! read and a look through a timer wheel that is nearly always empty.

use std::cell::Cell;
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use tokio::net::TcpStream;
use tokio::runtime::Handle;
use tokio::sync::oneshot;

thread_local! {
    static WORKER: Cell<u16> = const { Cell::new(0) };
}

/// The worker running on this thread: 1..=N on a session worker, 0 elsewhere (the
/// main runtime, tests, a multi-thread runtime).
pub fn current() -> u16 {
    WORKER.with(|w| w.get())
}

/// Makes this thread count as worker `id` (tests of what depends on the worker).
#[cfg(test)]
pub(crate) fn pretend_worker(id: u16) {
    WORKER.with(|w| w.set(id));
}

/// How the proxy runs its sessions (`SHARDGATE_RUNTIME`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RuntimeKind {
    /// One current-thread runtime per worker thread; sessions handed over at accept.
    Workers(usize),
    /// tokio's work-stealing runtime with this many threads.
    MultiThread(usize),
    /// Everything on the main thread.
    CurrentThread,
}

impl RuntimeKind {
    /// From `SHARDGATE_RUNTIME` (`workers`, `multi-thread`, `current-thread`) and
    /// `SHARDGATE_THREADS` (threads of the first two; default: the cores).
    pub fn from_env() -> Result<RuntimeKind, String> {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        let threads = match std::env::var("SHARDGATE_THREADS") {
            Ok(v) => match v.trim().parse::<usize>() {
                // 0 kept its old meaning: everything on one thread.
                Ok(0) => return Ok(RuntimeKind::CurrentThread),
                Ok(n) if n <= 1024 => n,
                _ => return Err(format!("SHARDGATE_THREADS={v:?}: expected 0..=1024")),
            },
            Err(_) => cores,
        };
        match std::env::var("SHARDGATE_RUNTIME").as_deref() {
            Err(_) | Ok("workers") => Ok(RuntimeKind::Workers(threads)),
            Ok("multi-thread") => Ok(RuntimeKind::MultiThread(threads)),
            Ok("current-thread") => Ok(RuntimeKind::CurrentThread),
            Ok(other) => Err(format!(
                "SHARDGATE_RUNTIME={other:?}: expected workers, multi-thread or current-thread"
            )),
        }
    }
}

struct Worker {
    handle: Handle,
    sessions: Arc<AtomicUsize>,
}

/// The running workers. Dropping it stops them (their sessions with them), then
/// their timer thread.
pub struct Workers {
    workers: Vec<Worker>,
    stops: Vec<oneshot::Sender<()>>,
    threads: Vec<std::thread::JoinHandle<()>>,
    timers: Option<(oneshot::Sender<()>, std::thread::JoinHandle<()>)>,
}

/// Starts the thread whose runtime holds the workers' timers.
fn start_timers() -> std::io::Result<(Handle, oneshot::Sender<()>, std::thread::JoinHandle<()>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()?;
    let handle = rt.handle().clone();
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name("shardgate-timers".to_string())
        .spawn(move || {
            rt.block_on(async {
                let _ = stop_rx.await;
            });
        })?;
    Ok((handle, stop_tx, thread))
}

impl Workers {
    /// Starts `n` (at least one) worker threads, each with its own runtime.
    pub fn start(n: usize) -> std::io::Result<Workers> {
        let (timers, timers_stop, timers_thread) = start_timers()?;
        let mut w = Workers {
            workers: Vec::new(),
            stops: Vec::new(),
            threads: Vec::new(),
            timers: Some((timers_stop, timers_thread)),
        };
        for i in 0..n.max(1) {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_io()
                .build()?;
            let timers = timers.clone();
            let (stop_tx, stop_rx) = oneshot::channel::<()>();
            w.workers.push(Worker {
                handle: rt.handle().clone(),
                sessions: Arc::new(AtomicUsize::new(0)),
            });
            w.stops.push(stop_tx);
            let id = u16::try_from(i + 1).unwrap_or(u16::MAX);
            let thread = std::thread::Builder::new()
                .name(format!("shardgate-worker-{}", i + 1))
                .spawn(move || {
                    WORKER.with(|c| c.set(id));
                    crate::timer::make_timers_in(timers);
                    rt.block_on(async {
                        let _ = stop_rx.await;
                    });
                    // Sessions still running end here, with their sockets.
                    rt.shutdown_timeout(std::time::Duration::from_secs(1));
                })?;
            w.threads.push(thread);
        }
        Ok(w)
    }

    /// How many workers run.
    pub fn len(&self) -> usize {
        self.workers.len()
    }

    /// Whether there are none (never, once started).
    pub fn is_empty(&self) -> bool {
        self.workers.is_empty()
    }

    /// Runs `session` on the worker with the fewest sessions, with `stream` moved onto
    /// that worker's reactor. A socket that cannot be moved is closed (logged).
    pub fn hand_over<F, Fut>(&self, stream: TcpStream, session: F)
    where
        F: FnOnce(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let Some(worker) = self
            .workers
            .iter()
            .min_by_key(|w| w.sessions.load(Ordering::Relaxed))
        else {
            return;
        };
        let std_stream = match stream.into_std() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "a client socket could not be handed to a worker");
                return;
            }
        };
        let sessions = worker.sessions.clone();
        sessions.fetch_add(1, Ordering::Relaxed);
        // A current-thread runtime has one thread: the session stays on it.
        worker.handle.spawn(async move {
            let _count = Count(sessions);
            match TcpStream::from_std(std_stream) {
                Ok(s) => session(s).await,
                Err(e) => tracing::warn!(error = %e, "a worker could not take a client socket"),
            }
        });
    }
}

/// Sessions of one worker, decremented when the session ends however it ends.
struct Count(Arc<AtomicUsize>);

impl Drop for Count {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for s in self.stops.drain(..) {
            let _ = s.send(());
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
        // Last: the workers' sessions wait on these timers until they end.
        if let Some((stop, thread)) = self.timers.take() {
            let _ = stop.send(());
            let _ = thread.join();
        }
    }
}
