//! The front door: sockets that never log in cannot lock logged-in users out, failed
//! logins are throttled, and idle sessions holding a backend connection are ended.
//! Sources other than 127.0.0.1 are other loopback addresses (127.0.0.2, ...), so
//! per-address limits can be shown on one machine.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::config::{PoolConfig, ProxyConfig};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;
use tokio::net::{TcpSocket, TcpStream};

/// One server (keyspace `main`, unsharded, default, with table `main.t`) and a proxy
/// over it with a pool of one backend connection and `limits` applied to its config.
async fn setup(limits: impl FnOnce(&mut ProxyConfig)) -> (Vec<LocalMariaDb>, common::Proxy) {
    let servers = common::start_servers(1);
    let toml = common::sharded_vschema(&servers);
    common::direct_query(&servers[0], "CREATE TABLE main.t (id INT PRIMARY KEY)");
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vs,
    );
    config.pool = PoolConfig {
        max_connections: 1,
        checkout_timeout: Duration::from_secs(2),
        ..PoolConfig::default()
    };
    config.migrations = None;
    limits(&mut config);
    let proxy = common::start_proxy_config(config).await;
    (servers, proxy)
}

fn loopback(last: u8) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(127, 0, 0, last))
}

/// A TCP connection to `addr` from the loopback address `from`.
async fn connect_from(from: IpAddr, addr: SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().expect("socket");
    socket
        .bind(SocketAddr::new(from, 0))
        .expect("bind a loopback source address");
    socket.connect(addr).await.expect("connect to the proxy")
}

/// Logs in from `from` as `user`/`password`: the ready connection, or the ERR packet's
/// (code, SQLSTATE, message).
async fn login_from(
    from: IpAddr,
    addr: SocketAddr,
    user: &str,
    password: &str,
) -> Result<TcpStream, (u16, String, String)> {
    let mut s = connect_from(from, addr).await;
    let (_, g) = common::raw_read(&mut s).await.expect("greeting");
    if let Some(e) = common::raw_err(&g) {
        return Err(e);
    }
    let reply = common::raw_answer_greeting(&mut s, &g, user, password, None, 0, 45).await;
    match common::raw_err(&reply) {
        Some(e) => Err(e),
        None => {
            assert_eq!(reply.as_slice().first(), Some(&0), "login OK");
            Ok(s)
        }
    }
}

/// The first packet a raw connection receives: an ERR's (code, SQLSTATE, message).
async fn read_err(s: &mut TcpStream) -> (u16, String, String) {
    let (_, p) = common::raw_read(s).await.expect("a packet");
    common::raw_err(&p).unwrap_or_else(|| panic!("an ERR packet, got {p:?}"))
}

/// Whether the proxy closed `s` (reads end of stream within 5 s).
async fn closed(s: &mut TcpStream) -> bool {
    use tokio::io::AsyncReadExt;
    let mut b = [0u8; 64];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => continue,
            Err(_) => return false,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_that_never_log_in_cannot_lock_out_logged_in_users() {
    let (_servers, proxy) = setup(|c| {
        // Fewer client slots than silent sockets: before the front door, 300 sockets
        // took every slot for the whole login deadline.
        c.max_client_connections = 10;
    })
    .await;
    // 300 sockets from one address that never answer the greeting.
    let attacker = loopback(2);
    let mut silent = Vec::new();
    for _ in 0..300 {
        silent.push(connect_from(attacker, proxy.addr).await);
    }
    // That address's share of the pending logins (32) waits; the rest are refused at
    // once, with 1040 instead of a greeting.
    let mut greeted = 0;
    let mut refused = 0;
    for s in &mut silent {
        let (_, p) = common::raw_read(s).await.expect("a greeting or an error");
        match common::raw_err(&p) {
            None => greeted += 1,
            Some((code, state, msg)) => {
                assert_eq!((code, state.as_str()), (1040, "08004"), "{msg}");
                assert!(msg.contains("pending logins"), "{msg}");
                refused += 1;
            }
        }
    }
    assert_eq!((greeted, refused), (32, 268));

    let started = Instant::now();
    let mut conn = proxy.connect("app", Some("main")).await;
    let one: Option<i64> = conn.query_first("SELECT 1").await.expect("query");
    let took = started.elapsed();
    assert_eq!(one, Some(1));
    assert!(took < Duration::from_secs(2), "login + query took {took:?}");
    eprintln!("login + query with 300 silent sockets open: {took:?}");
    conn.disconnect().await.expect("disconnect");
    drop(silent);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pending_login_pool_is_bounded_and_frees_its_slots_at_the_login_deadline() {
    let (_servers, proxy) = setup(|c| {
        c.limits.max_pending_logins = 16;
        c.limits.max_pending_logins_per_ip = 1000;
        c.limits.login_timeout = Duration::from_secs(1);
    })
    .await;
    let mut silent = Vec::new();
    for _ in 0..16 {
        let mut s = connect_from(loopback(2), proxy.addr).await;
        let (_, g) = common::raw_read(&mut s).await.expect("greeting");
        assert!(common::raw_err(&g).is_none(), "greeted");
        silent.push(s);
    }
    // The pool is full: refused at once, from any address.
    let started = Instant::now();
    let e = login_from(loopback(3), proxy.addr, "app", "app")
        .await
        .expect_err("refused");
    assert_eq!(
        e,
        (
            1040,
            "08004".into(),
            "Too many connections (pending logins)".into()
        )
    );
    assert!(started.elapsed() < Duration::from_millis(500));
    // At the login deadline the silent sockets are closed and their slots come back.
    for s in &mut silent {
        assert!(closed(s).await, "closed at the login deadline");
    }
    let s = login_from(loopback(3), proxy.addr, "app", "app").await;
    assert!(s.is_ok(), "{:?}", s.err());
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_by_address_and_by_user() {
    let delay = Duration::from_millis(20);
    let max_delay = Duration::from_millis(150);
    let (_servers, proxy) = setup(|c| {
        c.limits.login_throttle_failures = 5;
        c.limits.login_throttle_window = Duration::from_secs(1);
        c.limits.login_throttle_delay = delay;
        c.limits.login_throttle_max_delay = max_delay;
    })
    .await;
    let here = loopback(1);
    let started = Instant::now();
    let mut first_five = Duration::ZERO;
    for i in 0..50 {
        let e = login_from(here, proxy.addr, "app", "wrong")
            .await
            .expect_err("wrong password refused");
        assert_eq!((e.0, e.1.as_str()), (1045, "28000"), "{}", e.2);
        if i == 4 {
            first_five = started.elapsed();
        }
    }
    let fifty = started.elapsed();
    eprintln!("5 wrong passwords: {first_five:?}; 50: {fifty:?}");
    assert!(first_five < Duration::from_secs(1), "{first_five:?}");
    // 45 throttled attempts: 20 + 40 + 80 + 42 x 150 ms = 6.4 s.
    assert!(fifty > Duration::from_secs(3), "{fifty:?}");

    // Another user from another address: not delayed.
    let t = Instant::now();
    login_from(loopback(2), proxy.addr, "admin", "admin")
        .await
        .expect("admin logs in");
    let other = t.elapsed();
    // The same user from another address: delayed (the user is throttled).
    let t = Instant::now();
    login_from(loopback(3), proxy.addr, "app", "app")
        .await
        .expect("app logs in");
    let same_user = t.elapsed();
    // After a quiet window, the same address and user: not delayed.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let t = Instant::now();
    login_from(here, proxy.addr, "app", "app")
        .await
        .expect("app logs in after the window");
    let after_window = t.elapsed();
    eprintln!(
        "other user+address {other:?}, same user {same_user:?}, after window {after_window:?}"
    );
    assert!(other < max_delay, "{other:?}");
    assert!(
        same_user >= max_delay - Duration::from_millis(10),
        "{same_user:?}"
    );
    assert!(after_window < max_delay, "{after_window:?}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_idle_transaction_is_ended_rolled_back_and_its_pool_slot_freed() {
    let (servers, proxy) = setup(|c| {
        c.limits.idle_transaction_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let addr = proxy.addr_string();
    let mut s = common::raw_login(&addr, "app", "app", Some("main")).await;
    for sql in ["BEGIN", "INSERT INTO t VALUES (1)"] {
        common::raw_query(&mut s, sql.as_bytes()).await;
        let (_, p) = common::raw_read(&mut s).await.expect("reply");
        assert_eq!(p.as_slice().first(), Some(&0), "{sql}: OK");
    }
    // Busy is not idle: statements 600 ms apart keep the transaction alive.
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        common::raw_query(&mut s, b"SELECT 1").await;
        let mut rows = 0;
        while let Some((_, p)) = common::raw_read(&mut s).await {
            assert_ne!(p.as_slice().first(), Some(&0xff), "no error");
            rows += 1;
            if p.as_slice().first() == Some(&0xfe) {
                break;
            }
        }
        assert!(rows >= 3, "a result set");
    }
    // Then 2 s of silence.
    let started = Instant::now();
    let (code, state, msg) = read_err(&mut s).await;
    let waited = started.elapsed();
    eprintln!("idle transaction ended after {waited:?}: {msg}");
    assert_eq!((code, state.as_str()), (1927, "70100"), "{msg}");
    assert!(msg.contains("idle_transaction_timeout_ms"), "{msg}");
    assert!(msg.contains("transaction"), "{msg}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert!(closed(&mut s).await, "connection closed");
    assert_eq!(
        common::direct_query(&servers[0], "SELECT COUNT(*) FROM main.t").trim(),
        "0",
        "the insert was rolled back"
    );
    // The pool's one connection is free for another session.
    let mut other = proxy.connect("app", Some("main")).await;
    other
        .query_drop("INSERT INTO t VALUES (2)")
        .await
        .expect("another session gets the pool slot");
    let n: Option<i64> = other
        .query_first("SELECT COUNT(*) FROM t")
        .await
        .expect("count");
    assert_eq!(n, Some(1));
    // Idle outside a transaction: not ended by this limit.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let one: Option<i64> = other.query_first("SELECT 1").await.expect("still served");
    assert_eq!(one, Some(1));
    other.disconnect().await.expect("disconnect");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn any_session_idle_past_wait_timeout_is_ended() {
    let (_servers, proxy) = setup(|c| {
        c.limits.wait_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let mut s = common::raw_login(&proxy.addr_string(), "app", "app", Some("main")).await;
    let logged_in = Instant::now();
    let (code, state, msg) = read_err(&mut s).await;
    let waited = logged_in.elapsed();
    assert_eq!((code, state.as_str()), (1927, "70100"), "{msg}");
    assert!(msg.contains("wait_timeout_s"), "{msg}");
    // Kept by the idle watcher's coarse clock, checked against the session's own: never
    // before the limit, and about one 100 ms tick after it at most.
    assert!(
        waited >= Duration::from_millis(990),
        "ended early: {waited:?}"
    );
    assert!(
        waited < Duration::from_millis(1600),
        "ended late: {waited:?}"
    );
    assert!(closed(&mut s).await, "connection closed");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_time_starts_when_the_last_answer_ends() {
    let (_servers, proxy) = setup(|c| {
        c.limits.wait_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let mut s = proxy.connect("app", Some("main")).await;
    // A statement that runs longer than the idle limit, then a pause shorter than it:
    // the session was never idle for a second, so it is still served. Its command
    // arrived 2.6 s before the next one: counted from there, it would have been ended.
    let slept: Option<i64> = s.query_first("SELECT SLEEP(2)").await.expect("sleep");
    assert_eq!(slept, Some(0));
    tokio::time::sleep(Duration::from_millis(600)).await;
    let one: Option<i64> = s.query_first("SELECT 1").await.expect("still served");
    assert_eq!(one, Some(1));
    // The same after a command that no cluster answers (an error shardgate gives).
    let err = s.query_drop("SELECT * FROM no_such_db.t").await;
    assert!(err.is_err(), "unknown database");
    tokio::time::sleep(Duration::from_millis(600)).await;
    let one: Option<i64> = s.query_first("SELECT 1").await.expect("still served");
    assert_eq!(one, Some(1));
    // And a pause past the limit ends it.
    tokio::time::sleep(Duration::from_millis(1800)).await;
    assert!(
        s.query_drop("SELECT 1").await.is_err(),
        "ended after 1 s idle"
    );
    proxy.stop().await;
}
