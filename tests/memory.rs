//! Memory held for clients is bounded: client read buffers share one budget
//! (`client_buffer_budget_mb`), a packet that stops arriving ends its session
//! (`packet_stall_timeout_ms`), and a user's sessions are capped (`max_connections`).
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use mysql_async::prelude::*;
use shardgate::config::{PoolConfig, ProxyConfig};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const MIB: usize = 1 << 20;

/// One server (keyspace `main`, unsharded, default, with `main.big (id, b LONGBLOB)`)
/// and a proxy over it with `limits` applied to its config.
async fn setup(limits: impl FnOnce(&mut ProxyConfig)) -> (Vec<LocalMariaDb>, common::Proxy) {
    let servers = common::start_servers(1);
    let toml = common::sharded_vschema(&servers);
    common::direct_query(
        &servers[0],
        "CREATE TABLE main.big (id INT PRIMARY KEY, b LONGBLOB)",
    );
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vs,
    );
    config.pool = PoolConfig {
        checkout_timeout: Duration::from_secs(5),
        ..PoolConfig::default()
    };
    config.migrations = None;
    limits(&mut config);
    let proxy = common::start_proxy_config(config).await;
    (servers, proxy)
}

/// The header of a COM_QUERY packet announcing `len` payload bytes (under 16 MiB),
/// and the first `sent` bytes of its payload.
fn partial_query(len: usize, sent: usize) -> Vec<u8> {
    let mut out = vec![len as u8, (len >> 8) as u8, (len >> 16) as u8, 0, 0x03];
    out.resize(4 + sent, b'x');
    out
}

/// Sends the start of a `len`-byte packet, `sent` bytes of it, on a new session; the
/// writer is a task of its own (a refused client may still be sending).
async fn stall_client(addr: &str, len: usize, sent: usize) -> TcpStream {
    let s = common::raw_login(addr, "app", "app", Some("main")).await;
    let (mut r, mut w) = s.into_split();
    let bytes = partial_query(len, sent);
    let writer = tokio::spawn(async move {
        let _ = w.write_all(&bytes).await;
        w
    });
    // Wait for the write (the proxy reads as it arrives), then give the proxy time to
    // take the last bytes off the socket.
    let w = tokio::time::timeout(Duration::from_secs(20), writer)
        .await
        .expect("the partial packet is sent")
        .expect("writer task");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _ = &mut r;
    r.reunite(w).expect("same stream")
}

/// What a session says next: Ok(Some(ERR)), Ok(None) if it closes without a word, or
/// Err(()) if it says nothing within `wait`.
async fn next_word(s: &mut TcpStream, wait: Duration) -> Result<Option<Vec<u8>>, ()> {
    let mut h = [0u8; 4];
    match tokio::time::timeout(wait, s.read_exact(&mut h)).await {
        Err(_) => return Err(()),
        Ok(Err(_)) => return Ok(None),
        Ok(Ok(_)) => {}
    }
    let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
    let mut p = vec![0u8; len];
    match tokio::time::timeout(wait, s.read_exact(&mut p)).await {
        Ok(Ok(_)) => Ok(Some(p)),
        _ => Ok(None),
    }
}

/// Whether the proxy closed `s` (end of stream) within `wait`.
async fn closed_within(s: &mut TcpStream, wait: Duration) -> bool {
    let mut buf = [0u8; 1024];
    let deadline = tokio::time::Instant::now() + wait;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return false,
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) => {}
        }
    }
}

async fn insert_big(proxy: &common::Proxy, id: u32, size: usize) -> Result<(), String> {
    let mut c = proxy.connect("app", Some("main")).await;
    let value = "v".repeat(size);
    let r = c
        .query_drop(format!("INSERT INTO big VALUES ({id}, '{value}')"))
        .await
        .map_err(|e| e.to_string());
    let _ = c.disconnect().await;
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_packets_beyond_the_budget_are_refused_and_the_budget_comes_back() {
    let (_servers, proxy) = setup(|c| {
        c.limits.client_buffer_budget = 64 * MIB;
    })
    .await;
    let addr = proxy.addr_string();
    // 8 clients announce 16 MiB - 1 and send 13 MiB of it: each holds a buffer of
    // 13 to 16 MiB, so 4 fit in 64 MiB (the baseline is free) and the others are
    // refused.
    let mut held = Vec::new();
    let mut refused = 0;
    for i in 0..8 {
        let mut s = stall_client(&addr, 16 * MIB - 1, 13 * MIB).await;
        match next_word(&mut s, Duration::from_millis(500)).await {
            Err(()) => held.push(s),
            Ok(Some(p)) => {
                let (code, state, msg) = common::raw_err(&p).expect("an ERR packet");
                assert_eq!((code, state.as_str()), (1041, "HY000"), "client {i}: {msg}");
                assert!(msg.contains("try again later"), "{msg}");
                assert!(
                    closed_within(&mut s, Duration::from_secs(5)).await,
                    "client {i} closed"
                );
                refused += 1;
            }
            Ok(None) => panic!("client {i} closed without an error"),
        }
    }
    assert_eq!(held.len(), 4, "4 clients fit the budget");
    assert_eq!(refused, 4);
    // An ordinary client still works: small statements need no budget.
    let mut c = proxy.connect("app", Some("main")).await;
    let one: Option<i64> = c.query_first("SELECT 1").await.expect("select");
    assert_eq!(one, Some(1));
    drop(c);
    // The stalled clients go away; their budget comes back and a large packet passes.
    drop(held);
    tokio::time::sleep(Duration::from_millis(300)).await;
    insert_big(&proxy, 1, 8 * MIB)
        .await
        .expect("8 MiB insert after the stalled clients left");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_packet_ends_its_session_and_frees_its_budget() {
    let (_servers, proxy) = setup(|c| {
        c.limits.client_buffer_budget = 20 * MIB;
        c.limits.packet_stall_timeout = Some(Duration::from_secs(1));
    })
    .await;
    let addr = proxy.addr_string();
    let started = tokio::time::Instant::now();
    let mut s = stall_client(&addr, 16 * MIB - 1, 12 * MIB).await;
    // It holds 16 MiB of the 20: an 8 MiB packet does not fit meanwhile.
    let e = insert_big(&proxy, 1, 8 * MIB)
        .await
        .expect_err("no room yet");
    assert!(
        e.contains("1041") || e.to_lowercase().contains("out of memory"),
        "{e}"
    );
    // After the stall timeout the session is closed (no packet ever came whole).
    assert!(
        closed_within(&mut s, Duration::from_secs(5)).await,
        "closed"
    );
    assert!(started.elapsed() >= Duration::from_secs(1));
    insert_big(&proxy, 2, 8 * MIB)
        .await
        .expect("8 MiB insert after the stall timeout");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_user_over_max_connections_is_refused_with_1226() {
    let (_servers, proxy) = setup(|c| {
        if let Some(u) = c.users.iter_mut().find(|u| u.name == "app") {
            u.max_connections = Some(2);
        }
    })
    .await;
    let addr = proxy.addr_string();
    let a = common::raw_login(&addr, "app", "app", Some("main")).await;
    let _b = common::raw_login(&addr, "app", "app", Some("main")).await;
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    let (_, g) = common::raw_read(&mut s).await.expect("greeting");
    let reply = common::raw_answer_greeting(&mut s, &g, "app", "app", Some("main"), 0, 45).await;
    let (code, state, msg) = common::raw_err(&reply).expect("third login refused");
    assert_eq!((code, state.as_str()), (1226, "42000"));
    assert_eq!(
        msg,
        "User 'app' has exceeded the 'max_user_connections' resource (current value: 2)"
    );
    assert!(closed_within(&mut s, Duration::from_secs(5)).await);
    // Other users are not counted against app's limit.
    let _admin = proxy.connect("admin", None).await;
    // Closing one session frees its place.
    drop(a);
    let mut ok = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let opts = common::mysql_opts(&addr, "app", "app", Some("main"));
        if let Ok(mut c) = mysql_async::Conn::new(opts).await {
            let one: Option<i64> = c.query_first("SELECT 1").await.expect("select");
            assert_eq!(one, Some(1));
            ok = true;
            break;
        }
    }
    assert!(ok, "a login works again after one session closed");
    proxy.stop().await;
}

/// `COM_CHANGE_USER` counts against the new user's `max_connections` as a login does:
/// changing into a user at its limit is refused with 1226, and the old user's place
/// is given back when a change succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_user_into_a_user_at_its_limit_is_refused_with_1226() {
    let (_servers, proxy) = setup(|c| {
        if let Some(u) = c.users.iter_mut().find(|u| u.name == "app") {
            u.max_connections = Some(1);
        }
    })
    .await;
    let addr = proxy.addr_string();
    let to_app = || {
        mysql_async::ChangeUserOpts::default()
            .with_user(Some("app".into()))
            .with_pass(Some("app".into()))
            .with_db_name(Some("main".into()))
    };
    let app = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("main")))
        .await
        .expect("app's one session");
    let mut admin = proxy.connect("admin", Some("main")).await;
    match admin.change_user(to_app()).await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!((e.code, e.state.as_str()), (1226, "42000"), "{e:?}");
        }
        other => panic!("change into app at its limit: {other:?}"),
    }
    drop(app);
    let mut changed = false;
    for _ in 0..50 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut c = proxy.connect("admin", Some("main")).await;
        if c.change_user(to_app()).await.is_ok() {
            let user: Option<String> = c.query_first("SELECT 'changed'").await.expect("select");
            assert_eq!(user.as_deref(), Some("changed"));
            changed = true;
            // Now app's place is this session's: a login as app is refused.
            let mut s = TcpStream::connect(&addr).await.expect("connect");
            let (_, g) = common::raw_read(&mut s).await.expect("greeting");
            let reply =
                common::raw_answer_greeting(&mut s, &g, "app", "app", Some("main"), 0, 45).await;
            assert_eq!(common::raw_err(&reply).map(|e| e.0), Some(1226));
            break;
        }
    }
    assert!(changed, "a change into app works once its session closed");
    proxy.stop().await;
}

/// The real binary: 8 clients that each send 40 MiB of a 60 MiB packet and stall
/// leave its resident memory within the budget (64 MiB) plus its ordinary footprint.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_binary_stays_small_under_stalled_60_mib_packets() {
    let servers = common::start_servers(1);
    let toml = common::sharded_vschema(&servers);
    let proxy = common::spawn_proxy_binary(&toml, "client_buffer_budget_mb = 64");
    let addr = proxy.addr_string();
    // The footprint is taken after one session has run a statement: pools, the metrics
    // registry and the runtime's workers are set up on first use, not by the packets.
    {
        let mut warm = common::raw_login(&addr, "app", "app", Some("main")).await;
        common::raw_query(&mut warm, b"SELECT 1").await;
        let _ = common::raw_read(&mut warm).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    let before = vm_rss_kib(proxy.pid());
    let mut clients = Vec::new();
    for _ in 0..8 {
        let s = common::raw_login(&addr, "app", "app", Some("main")).await;
        clients.push(tokio::spawn(async move {
            let mut s = s;
            // 60 MiB logical: three full physical packets and a short one; 40 MiB sent.
            let mut out = Vec::with_capacity(40 * MIB + 16);
            let full = 0xFF_FFFF;
            let mut seq = 0u8;
            let mut left = 40 * MIB;
            while left > 0 {
                out.extend_from_slice(&[0xff, 0xff, 0xff, seq]);
                let n = left.min(full);
                out.resize(out.len() + n, b'x');
                left -= n;
                seq += 1;
            }
            let _ = tokio::time::timeout(Duration::from_secs(30), s.write_all(&out)).await;
            s
        }));
    }
    let mut held = Vec::new();
    for c in clients {
        held.push(c.await.expect("client task"));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let after = vm_rss_kib(proxy.pid());
    eprintln!("VmRSS before {before} KiB, after 8 stalled 60 MiB packets {after} KiB");
    assert!(
        after < 150 * 1024 && after < before + 110 * 1024,
        "VmRSS {before} -> {after} KiB\n{}",
        proxy.log()
    );
    drop(held);
    proxy.kill();
}

fn vm_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line")
}
