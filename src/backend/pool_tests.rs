//! The pool's slot counting: who gets a lease that ends while checkouts wait.
use std::sync::Arc;
use std::time::Duration;

use super::{ClusterPool, Inner};
use crate::config::PoolConfig;
use crate::vschema::Cluster;

/// A pool of `max` slots on an address nothing listens on: these tests count
/// slots and never connect.
fn pool(max: usize, checkout_timeout: Duration) -> Arc<ClusterPool> {
    pool_at("127.0.0.1:9", max, checkout_timeout)
}

fn pool_at(primary: &str, max: usize, checkout_timeout: Duration) -> Arc<ClusterPool> {
    let cluster = Cluster {
        name: "c1".into(),
        primary: primary.into(),
        standbys: Vec::new(),
        user: "u".into(),
        password: String::new(),
        tls: None,
    };
    ClusterPool::new(
        cluster,
        PoolConfig {
            max_connections: max,
            checkout_timeout,
            ..PoolConfig::default()
        },
    )
}

/// A checkout on its own task; true when it got a slot.
fn waiter(p: &Arc<ClusterPool>) -> tokio::task::JoinHandle<bool> {
    let p = p.clone();
    tokio::spawn(async move { p.take_slot(none).await.is_ok() })
}

fn none(_: &mut Inner) -> Option<Box<crate::backend::conn::BackendConn>> {
    None
}

/// Lets every other task on this current-thread runtime run until it waits.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn counts(p: &ClusterPool) -> (usize, usize, usize) {
    let g = p.lock();
    (g.leased, g.waiters.waiting(), g.waiters.granted())
}

#[tokio::test(flavor = "current_thread")]
async fn an_ended_lease_goes_to_the_longest_waiting_checkout_not_to_a_newcomer() {
    let p = pool(1, Duration::from_secs(30));
    assert!(p.take_slot(none).await.is_ok());
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for n in 0..3 {
        let (p, order) = (p.clone(), order.clone());
        waiters.push(tokio::spawn(async move {
            p.take_slot(none).await.map(|_| ()).map_err(|e| e.message)?;
            order.lock().unwrap_or_else(|e| e.into_inner()).push(n);
            Ok::<_, String>(())
        }));
        settle().await;
    }
    assert_eq!(counts(&p), (1, 3, 0));
    for turn in 0..3 {
        // The lease ends; before the woken waiter runs, a newcomer finds no slot.
        p.end_lease(None);
        assert_eq!(counts(&p), (1, 3 - turn, 1));
        let newcomer = crate::timer::timeout(Duration::from_millis(1), p.take_slot(none));
        assert!(
            newcomer.await.is_err(),
            "a newcomer took the handed-on lease"
        );
        settle().await;
        assert_eq!(counts(&p), (1, 2 - turn, 0));
    }
    for w in waiters {
        assert_eq!(w.await.ok(), Some(Ok(())));
    }
    let order = order.lock().unwrap_or_else(|e| e.into_inner()).clone();
    assert_eq!(order, vec![0, 1, 2]);
    p.end_lease(None);
    assert_eq!(counts(&p), (0, 0, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn a_lease_handed_to_a_waiter_that_left_is_freed_or_goes_to_the_next() {
    let p = pool(1, Duration::from_secs(30));
    assert!(p.take_slot(none).await.is_ok());
    let first = waiter(&p);
    settle().await;
    let second = waiter(&p);
    settle().await;
    p.end_lease(None);
    // The first waiter leaves (its client went away) before it takes the lease:
    // the second one gets it.
    first.abort();
    assert!(first.await.is_err());
    settle().await;
    assert_eq!(second.await.ok(), Some(true));
    assert_eq!(counts(&p), (1, 0, 0));
    // With nobody else waiting, a handed-on lease whose waiter leaves is freed.
    let third = waiter(&p);
    settle().await;
    p.end_lease(None);
    third.abort();
    assert!(third.await.is_err());
    assert_eq!(counts(&p), (0, 0, 0));
    assert!(p.take_slot(none).await.is_ok());
    assert_eq!(counts(&p), (1, 0, 0));
}

#[tokio::test(flavor = "current_thread")]
async fn a_checkout_dropped_while_it_connects_gives_its_slot_back() {
    // A server that accepts and never says a word: the connect is cut off by the
    // caller's deadline around the checkout, not by the pool's connect timeout.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    let p = pool_at(&addr.to_string(), 1, Duration::from_secs(5));
    let key = crate::backend::ConnKey {
        caps: 0,
        collation: 45,
        ext: 0,
    };
    let cut = crate::timer::timeout(
        Duration::from_millis(100),
        p.checkout(super::Wanted::plain(key, None)),
    )
    .await;
    assert!(cut.is_err(), "the connect should still be waiting");
    assert_eq!(counts(&p), (0, 0, 0));
    drop(listener);
}

#[tokio::test(flavor = "current_thread")]
async fn a_checkout_that_waited_too_long_fails_and_is_uncounted() {
    let p = pool(1, Duration::from_millis(50));
    assert!(p.take_slot(none).await.is_ok());
    let err = p.take_slot(none).await.err().map(|e| e.message);
    assert!(
        err.as_deref()
            .is_some_and(|m| m.contains("no free connection")),
        "{err:?}"
    );
    assert_eq!(counts(&p), (1, 0, 0));
    p.end_lease(None);
    assert_eq!(counts(&p), (0, 0, 0));
}

#[test]
fn only_passing_connect_failures_are_retryable() {
    let tls = super::unavailable("c1", "certificate did not verify", true);
    assert!(!tls.retryable);
    assert_eq!(tls.cluster.as_deref(), Some("c1"));
    assert!(tls.message.contains("'c1'"), "{}", tls.message);
    assert!(super::unavailable("c1", "connection refused", false).retryable);
}

/// A runtime on a thread of its own that counts as session worker `worker`; the thread
/// ends when this is dropped.
struct WorkerThread {
    handle: tokio::runtime::Handle,
    _stop: tokio::sync::oneshot::Sender<()>,
}

fn worker_thread(worker: u16) -> WorkerThread {
    let (tx, rx) = std::sync::mpsc::channel();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        crate::workers::pretend_worker(worker);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("runtime");
        let _ = tx.send(rt.handle().clone());
        let _ = rt.block_on(stopped);
    });
    WorkerThread {
        handle: rx.recv().expect("worker thread"),
        _stop: stop,
    }
}

#[tokio::test(flavor = "current_thread")]
async fn an_ended_lease_goes_to_a_waiter_of_the_worker_it_ended_on_first() {
    let p = pool(1, Duration::from_secs(30));
    assert!(p.take_slot(none).await.is_ok());
    let (one, two) = (worker_thread(1), worker_thread(2));
    let spawn_on = |w: &WorkerThread| {
        let p = p.clone();
        w.handle
            .spawn(async move { p.take_slot(none).await.is_ok() })
    };
    let wait_for = |n: usize| {
        let p = p.clone();
        async move {
            for _ in 0..500 {
                if p.lock().waiters.waiting() == n {
                    return;
                }
                crate::timer::sleep(Duration::from_millis(2)).await;
            }
            panic!("waiters never reached {n}");
        }
    };
    let end_on_one = || {
        let p = p.clone();
        let ended = one.handle.spawn(async move { p.end_lease(None) });
        async move { ended.await.expect("end on worker 1") }
    };
    // Worker 2's checkout waits first, then worker 1's.
    let on_two = spawn_on(&two);
    wait_for(1).await;
    let on_one = spawn_on(&one);
    wait_for(2).await;
    // The lease ends on worker 1: its own waiter gets it, though it came later.
    end_on_one().await;
    assert_eq!(on_one.await.ok(), Some(true));
    assert!(!on_two.is_finished());
    assert_eq!(counts(&p), (1, 1, 0));
    // The next ends on worker 1 too, which has no waiter left: worker 2's gets it.
    end_on_one().await;
    assert_eq!(on_two.await.ok(), Some(true));
    assert_eq!(counts(&p), (1, 0, 0));
}
