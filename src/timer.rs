//! Timers for code that may run on a session worker.
//!
//! A session worker's runtime has no time driver (see [`crate::workers`]): with one,
//! every park of the worker (about one and a half per statement) read the clock,
//! locked the timer wheel and looked through it, about 700 instructions per point
//! select for timers that almost never exist. A worker's timers (a pool wait's
//! deadline, a login's, a query's limit) are made on the workers' timer thread
//! instead, whose runtime does nothing else: the timer fires there and wakes the
//! session's task on its own worker. Everywhere else (the main runtime, tests, the
//! other runtime kinds) these are tokio's own timers, made in the current runtime.
//!
//! Every timer in the crate is made here: clippy's `disallowed_methods` (clippy.toml)
//! refuses tokio's constructors elsewhere, since one made on a worker would panic.
#![allow(clippy::disallowed_methods)]

use std::cell::RefCell;
use std::future::Future;
use std::time::Duration;

use tokio::runtime::Handle;
use tokio::time::{Instant, Interval, Sleep, Timeout};

thread_local! {
    /// The runtime this thread's timers are made in; None: the current one.
    static TIMERS: RefCell<Option<Handle>> = const { RefCell::new(None) };
}

/// Makes this thread's timers in `timers`' runtime from now on (a session worker, at
/// its start).
pub(crate) fn make_timers_in(timers: Handle) {
    TIMERS.with(|t| *t.borrow_mut() = Some(timers));
}

/// `make` run in the runtime this thread's timers belong to.
fn in_timer_runtime<T>(make: impl FnOnce() -> T) -> T {
    TIMERS.with(|t| match &*t.borrow() {
        Some(h) => {
            let _in = h.enter();
            make()
        }
        None => make(),
    })
}

/// [`tokio::time::sleep`].
pub fn sleep(duration: Duration) -> Sleep {
    in_timer_runtime(|| tokio::time::sleep(duration))
}

/// [`tokio::time::sleep_until`].
pub fn sleep_until(deadline: Instant) -> Sleep {
    in_timer_runtime(|| tokio::time::sleep_until(deadline))
}

/// [`tokio::time::timeout`].
pub fn timeout<F: Future>(duration: Duration, future: F) -> Timeout<F> {
    in_timer_runtime(|| tokio::time::timeout(duration, future))
}

/// [`tokio::time::timeout_at`].
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> Timeout<F> {
    in_timer_runtime(|| tokio::time::timeout_at(deadline, future))
}

/// [`tokio::time::interval`].
pub fn interval(period: Duration) -> Interval {
    in_timer_runtime(|| tokio::time::interval(period))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A runtime without a time driver, as a worker's: its timers are made on the
    /// other runtime's thread, fire there, and wake the task here.
    #[test]
    fn a_thread_without_a_time_driver_sleeps_and_times_out_on_the_timer_runtime() {
        let timers = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("timer runtime");
        let handle = timers.handle().clone();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            timers.block_on(async {
                let _ = stopped.await;
            })
        });
        let worker = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .expect("worker runtime");
        make_timers_in(handle);
        worker.block_on(async {
            let t0 = std::time::Instant::now();
            sleep(Duration::from_millis(30)).await;
            let slept = t0.elapsed();
            assert!(slept >= Duration::from_millis(30), "{slept:?}");
            let never = std::future::pending::<()>();
            assert!(timeout(Duration::from_millis(20), never).await.is_err());
            let now = async { 7 };
            assert_eq!(timeout(Duration::from_secs(5), now).await.ok(), Some(7));
            let mut tick = interval(Duration::from_millis(10));
            tick.tick().await;
            tick.tick().await;
            let deadline = Instant::now() + Duration::from_millis(10);
            assert!(timeout_at(deadline, std::future::pending::<()>())
                .await
                .is_err());
            sleep_until(Instant::now() + Duration::from_millis(5)).await;
        });
        TIMERS.with(|t| *t.borrow_mut() = None);
        let _ = stop.send(());
        thread.join().expect("timer thread");
    }
}
