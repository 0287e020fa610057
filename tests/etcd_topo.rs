//! `topo = "etcd"` against a real etcd (Debian's etcd-server, started by the test on
//! loopback ports): versions with compare-and-swap and history, pins in buckets, the
//! watch, leases between two stores, and an outage.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::etcd::Etcd;
use shardgate::topo::etcd::EtcdTopo;
use shardgate::topo::{Event, PinChange, Topo, TopoError, VersionRecord};
use tokio::sync::mpsc::Receiver;

fn record(v: u64) -> VersionRecord {
    VersionRecord {
        version: v,
        author: "test".into(),
        source: "sql".into(),
        time_ms: 1_700_000_000_000 + v,
        diff: vec![format!("change {v}")],
        document: format!("# version {v}\n"),
    }
}

fn store(etcd: &Etcd, prefix: &str) -> EtcdTopo {
    EtcdTopo::new(vec![etcd.endpoint()], prefix.to_string())
}

/// The next event within `within`, or None.
async fn next_event(rx: &mut Receiver<Event>, within: Duration) -> Option<Event> {
    tokio::time::timeout(within, rx.recv()).await.ok().flatten()
}

/// Waits (up to `within`) for an event that `want` accepts, skipping others.
async fn wait_for(
    rx: &mut Receiver<Event>,
    within: Duration,
    want: impl Fn(&Event) -> bool,
) -> Option<Event> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        let e = next_event(rx, left).await?;
        if want(&e) {
            return Some(e);
        }
    }
}

/// A raw etcd client, to look at the keys the store wrote.
async fn raw(etcd: &Etcd) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("raw etcd client")
}

/// Every key under `prefix` with its modification revision.
async fn revisions(etcd: &Etcd, prefix: &str) -> Vec<(String, i64)> {
    let mut c = raw(etcd).await;
    let resp = c
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .expect("get");
    resp.kvs()
        .iter()
        .map(|kv| {
            (
                String::from_utf8_lossy(kv.key()).into_owned(),
                kv.mod_revision(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_compared_and_swapped_and_history_is_newest_first() {
    let etcd = Etcd::start();
    let a = store(&etcd, "/sg-cas");
    let b = store(&etcd, "/sg-cas");
    assert_eq!(a.current().await.expect("current"), None);
    a.publish(record(1), 0).await.expect("first version");
    assert_eq!(
        b.publish(record(1), 0).await,
        Err(TopoError::Conflict { current: 1 }),
        "a second first version loses"
    );
    b.publish(record(2), 1)
        .await
        .expect("version 2 through the other store");
    assert_eq!(
        a.publish(record(2), 1).await,
        Err(TopoError::Conflict { current: 2 }),
        "a stale compare-and-swap names the current version"
    );
    a.publish(record(3), 2).await.expect("version 3");
    assert_eq!(b.current().await.expect("current"), Some(record(3)));
    assert_eq!(
        a.history(10).await.expect("history"),
        vec![record(3), record(2), record(1)]
    );
    assert_eq!(
        a.history(2).await.expect("history"),
        vec![record(3), record(2)]
    );
    assert_eq!(a.version(2).await.expect("version 2"), Some(record(2)));
    assert_eq!(a.version(9).await.expect("version 9"), None);
    // Another prefix is another fleet.
    assert_eq!(
        store(&etcd, "/sg-cas2").current().await.expect("current"),
        None
    );
    assert!(a.reachable());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_pin_change_rewrites_one_bucket_and_pins_load_back() {
    let etcd = Etcd::start();
    let t = store(&etcd, "/sg-pins");
    let shard = |ws: u64| if ws.is_multiple_of(2) { "-80" } else { "80-" };
    // 3000 pins in keyspace chat (every bucket), 5 in a keyspace with a slash.
    for ws in 0..3000u64 {
        t.set_pin(PinChange {
            keyspace: "chat".into(),
            workspace: ws,
            shard: Some(shard(ws).into()),
        })
        .await
        .expect("pin");
    }
    for ws in 0..5u64 {
        t.set_pin(PinChange {
            keyspace: "ops/x".into(),
            workspace: ws * 1024,
            shard: Some("c0-".into()),
        })
        .await
        .expect("pin");
    }
    let before = revisions(&etcd, "/sg-pins/pins/").await;
    assert_eq!(
        before.len(),
        1024 + 1,
        "one key per bucket: {}",
        before.len()
    );
    t.set_pin(PinChange {
        keyspace: "chat".into(),
        workspace: 2049,
        shard: Some("c0-".into()),
    })
    .await
    .expect("pin");
    let after = revisions(&etcd, "/sg-pins/pins/").await;
    let changed: Vec<&String> = after
        .iter()
        .zip(&before)
        .filter(|(a, b)| a != b)
        .map(|(a, _)| &a.0)
        .collect();
    assert_eq!(
        changed,
        vec!["/sg-pins/pins/chat/1"],
        "one bucket rewritten"
    );
    t.set_pin(PinChange {
        keyspace: "ops/x".into(),
        workspace: 1024,
        shard: None,
    })
    .await
    .expect("unpin");

    let loaded = store(&etcd, "/sg-pins").load_pins().await.expect("load");
    let mut named: Vec<(String, u64, String)> = loaded
        .iter()
        .flat_map(|k| {
            k.pins
                .iter()
                .map(|(ws, i)| (k.keyspace.clone(), *ws, k.shards[*i as usize].clone()))
        })
        .collect();
    named.sort();
    let mut want: Vec<(String, u64, String)> = (0..3000u64)
        .map(|ws| {
            let s = if ws == 2049 { "c0-" } else { shard(ws) };
            ("chat".to_string(), ws, s.to_string())
        })
        .chain([0u64, 2, 3, 4].map(|i| ("ops/x".to_string(), i * 1024, "c0-".to_string())))
        .collect();
    want.sort();
    assert_eq!(named.len(), want.len());
    assert_eq!(named, want);
    let chat = loaded.iter().find(|k| k.keyspace == "chat").expect("chat");
    assert_eq!(
        chat.shards.len(),
        3,
        "shard names kept once: {:?}",
        chat.shards
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_sees_another_stores_changes_within_a_second() {
    let etcd = Etcd::start();
    let a = store(&etcd, "/sg-watch");
    let b = store(&etcd, "/sg-watch");
    let mut rx = a.watch();
    // Give the watch its first round trip (it is confirmed before any event).
    tokio::time::sleep(Duration::from_millis(300)).await;

    let t0 = Instant::now();
    b.publish(record(1), 0).await.expect("publish");
    let e = wait_for(&mut rx, Duration::from_secs(1), |e| {
        matches!(e, Event::Vschema(_))
    })
    .await;
    assert_eq!(
        e,
        Some(Event::Vschema(record(1))),
        "after {:?}",
        t0.elapsed()
    );

    b.set_pin(PinChange {
        keyspace: "chat".into(),
        workspace: 42,
        shard: Some("80-".into()),
    })
    .await
    .expect("pin");
    let e = wait_for(&mut rx, Duration::from_secs(1), |e| {
        matches!(e, Event::Pin(_))
    })
    .await;
    assert_eq!(
        e,
        Some(Event::Pin(PinChange {
            keyspace: "chat".into(),
            workspace: 42,
            shard: Some("80-".into())
        }))
    );
    b.set_pin(PinChange {
        keyspace: "chat".into(),
        workspace: 42,
        shard: None,
    })
    .await
    .expect("unpin");
    let e = wait_for(&mut rx, Duration::from_secs(1), |e| {
        matches!(e, Event::Pin(_))
    })
    .await;
    assert_eq!(
        e,
        Some(Event::Pin(PinChange {
            keyspace: "chat".into(),
            workspace: 42,
            shard: None
        }))
    );

    let state = "intent = \"drained\"\nreason = \"disk\"\n".to_string();
    b.save_traffic("c 1".into(), state.clone())
        .await
        .expect("traffic");
    let e = wait_for(&mut rx, Duration::from_secs(1), |e| {
        matches!(e, Event::Traffic { .. })
    })
    .await;
    assert_eq!(
        e,
        Some(Event::Traffic {
            cluster: "c 1".into(),
            state: state.clone()
        })
    );
    assert_eq!(
        a.load_traffic().await.expect("load traffic"),
        vec![("c 1".to_string(), state)]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lease_is_held_by_one_store_released_on_drop_and_lost_when_its_holder_dies() {
    let etcd = Etcd::start();
    let a = store(&etcd, "/sg-lease");
    let b = store(&etcd, "/sg-lease");
    a.set_identity("127.0.0.1:3306 pid 1".into());
    b.set_identity("127.0.0.1:3307 pid 2".into());
    let ttl = Duration::from_secs(2);

    let held = a
        .lease("failover/c1".into(), ttl)
        .await
        .unwrap_or_else(|e| panic!("lease: {e}"))
        .expect("free lease taken");
    assert!(held.held());
    assert!(
        b.lease("failover/c1".into(), ttl)
            .await
            .unwrap_or_else(|e| panic!("lease: {e}"))
            .is_none(),
        "held by the other store"
    );
    assert_eq!(
        b.lease_holder("failover/c1".into()).await.expect("holder"),
        Some("127.0.0.1:3306 pid 1".to_string())
    );
    // Another name is another lease.
    assert!(b
        .lease("failover/c2".into(), ttl)
        .await
        .unwrap_or_else(|e| panic!("lease: {e}"))
        .is_some());
    // Renewed past its TTL while held.
    tokio::time::sleep(ttl * 2).await;
    assert!(held.held(), "renewed while held");
    assert!(b
        .lease("failover/c1".into(), ttl)
        .await
        .unwrap_or_else(|e| panic!("lease: {e}"))
        .is_none());

    // Released when dropped.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(1);
    let held_b = loop {
        if let Some(l) = b
            .lease("failover/c1".into(), ttl)
            .await
            .unwrap_or_else(|e| panic!("lease: {e}"))
        {
            break l;
        }
        assert!(
            Instant::now() < deadline,
            "a dropped lease is free within 1 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(
        a.lease_holder("failover/c1".into()).await.expect("holder"),
        Some("127.0.0.1:3307 pid 2".to_string())
    );

    // The holder dies (its store goes without revoking): free after the TTL, not before.
    drop(b);
    let died = Instant::now();
    let t0 = Instant::now();
    while held_b.held() && t0.elapsed() < Duration::from_secs(1) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(!held_b.held(), "a dead store holds nothing");
    assert!(
        a.lease("failover/c1".into(), ttl)
            .await
            .unwrap_or_else(|e| panic!("lease: {e}"))
            .is_none(),
        "still held until the TTL runs out"
    );
    let taken = loop {
        if let Some(l) = a
            .lease("failover/c1".into(), ttl)
            .await
            .unwrap_or_else(|e| panic!("lease: {e}"))
        {
            break l;
        }
        assert!(
            died.elapsed() < ttl + Duration::from_secs(3),
            "a dead holder's lease expires after its TTL"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(taken.held());
    assert!(
        died.elapsed() >= Duration::from_millis(1000),
        "not freed at once: {:?}",
        died.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_is_reported_and_the_watch_resumes_when_etcd_is_back() {
    let mut etcd = Etcd::start();
    let a = store(&etcd, "/sg-outage");
    let b = store(&etcd, "/sg-outage");
    let mut rx = a.watch();
    tokio::time::sleep(Duration::from_millis(300)).await;
    b.publish(record(1), 0).await.expect("publish");
    assert!(
        wait_for(&mut rx, Duration::from_secs(1), |e| matches!(
            e,
            Event::Vschema(_)
        ))
        .await
        .is_some(),
        "watch established"
    );
    assert!(a.reachable());

    etcd.stop();
    let e = wait_for(&mut rx, Duration::from_secs(5), |e| {
        matches!(e, Event::Reachable(_))
    })
    .await;
    assert_eq!(
        e,
        Some(Event::Reachable(false)),
        "the watch says etcd went away"
    );
    assert!(!a.reachable());
    assert!(a.unreachable_for().is_some());
    let t0 = Instant::now();
    let r = a.current().await;
    assert!(matches!(r, Err(TopoError::Unavailable(_))), "{r:?}");
    assert!(
        t0.elapsed() < Duration::from_secs(3),
        "a call has a deadline: {:?}",
        t0.elapsed()
    );
    // A store that never reached etcd answers within the deadline too.
    let t0 = Instant::now();
    let fresh = store(&etcd, "/sg-outage");
    assert!(matches!(
        fresh.history(5).await,
        Err(TopoError::Unavailable(_))
    ));
    assert!(!fresh.reachable());
    assert!(t0.elapsed() < Duration::from_secs(3));

    etcd.start_again();
    let e = wait_for(&mut rx, Duration::from_secs(10), |e| {
        matches!(e, Event::Reachable(_))
    })
    .await;
    assert_eq!(
        e,
        Some(Event::Reachable(true)),
        "the watch says etcd is back"
    );
    assert!(a.reachable());
    // The store is usable again, and the watch delivers later changes.
    let t0 = Instant::now();
    let mut published = false;
    while t0.elapsed() < Duration::from_secs(5) {
        if b.publish(record(2), 1).await.is_ok() {
            published = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(published, "publish after etcd is back");
    let e = wait_for(&mut rx, Duration::from_secs(1), |e| {
        matches!(e, Event::Vschema(_))
    })
    .await;
    assert_eq!(e, Some(Event::Vschema(record(2))));
    assert_eq!(a.current().await.expect("current"), Some(record(2)));
}
