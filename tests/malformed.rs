//! Bad input never panics the proxy or disturbs other clients: garbage handshakes,
//! truncated packets, absurd lengths and unknown commands get an error or a clean close.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use mysql_async::prelude::*;
use shardgate::protocol::packet::put_packet;
use shardgate::protocol::wire;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn vschema(servers: &[shardgate::demo::localdb::LocalMariaDb]) -> String {
    servers[0]
        .sql("CREATE DATABASE IF NOT EXISTS app")
        .expect("db");
    format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n\
         [keyspaces.app]\ncluster = \"c1\"\ndefault = true\n",
        servers[0].addr()
    )
}

/// Whether the server closed the connection (EOF or reset) within 5 s.
async fn closed(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), s.read(&mut b)).await,
        Ok(Ok(0)) | Ok(Err(_))
    )
}

async fn ping(s: &mut TcpStream) -> bool {
    let mut out = bytes::BytesMut::new();
    put_packet(&mut out, 0, &[0x0e]);
    if s.write_all(&out).await.is_err() {
        return false;
    }
    matches!(common::raw_read(s).await, Some((1, p)) if matches!(p.as_slice(), [0, ..]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_input_gets_an_error_or_a_clean_close_and_others_go_on() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&vschema(&servers)).await;
    let addr = proxy.addr.to_string();

    // A healthy client that must keep working throughout.
    let mut healthy = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("healthy client");

    // 1. Garbage as the handshake response: ERR 1043 (08S01), then close.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    common::raw_read(&mut s).await.expect("greeting");
    let mut out = bytes::BytesMut::new();
    put_packet(
        &mut out,
        1,
        b"\x01\x02 this is not a handshake response at all",
    );
    s.write_all(&out).await.expect("send");
    let (_, err) = common::raw_read(&mut s).await.expect("an error packet");
    let e = wire::parse_err(&err).expect("ERR");
    assert_eq!((e.code, e.sqlstate.as_str()), (1043, "08S01"));
    assert!(closed(&mut s).await);

    // 2. Plain text (an HTTP request) instead of packets: refused, closed.
    let mut s = TcpStream::connect(&addr).await.expect("connect");
    common::raw_read(&mut s).await.expect("greeting");
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .expect("send");
    if let Some((_, p)) = common::raw_read(&mut s).await {
        assert_eq!(wire::parse_err(&p).map(|e| e.code), Some(1043));
    }
    assert!(closed(&mut s).await);

    // 3. A truncated packet after login, then the client goes away: a clean close.
    let mut s = common::raw_login(&addr, "app", "app", Some("app")).await;
    s.write_all(&[100, 0, 0, 0, 3, b'S', b'E'])
        .await
        .expect("send");
    drop(s);

    // 4. An absurd length after login: ERR 1153, close.
    let mut s = common::raw_login(&addr, "app", "app", Some("app")).await;
    // Five full-size physical packets announce 80 MiB, over the 64 MiB limit.
    let mut chain = Vec::new();
    for seq in 0..5u8 {
        chain.extend_from_slice(&[0xff, 0xff, 0xff, seq]);
        chain.extend(std::iter::repeat_n(0u8, 0xff_ffff));
    }
    let write = s.write_all(&chain).await;
    if write.is_ok() {
        // An ERR, or the connection simply closed.
        if let Some((_, p)) = common::raw_read(&mut s).await {
            assert_eq!(wire::parse_err(&p).map(|e| e.code), Some(1153));
        }
    }

    // 5. Unknown command and an empty packet: ERR 1047, the connection stays usable.
    let mut s = common::raw_login(&addr, "app", "app", Some("app")).await;
    for payload in [&[0x7fu8][..], &[][..]] {
        let mut out = bytes::BytesMut::new();
        put_packet(&mut out, 0, payload);
        s.write_all(&out).await.expect("send");
        let (seq, p) = common::raw_read(&mut s).await.expect("reply");
        assert_eq!(seq, 1);
        assert_eq!(wire::parse_err(&p).map(|e| e.code), Some(1047));
        assert!(ping(&mut s).await, "usable after an unknown command");
    }
    // An execute cut short, or of a statement never prepared, is refused cleanly
    // (1243) and the connection goes on.
    for payload in [
        &b"\x17"[..],
        &b"\x17\x05\x00"[..],
        &b"\x1c\x01\x00\x00\x00"[..],
    ] {
        let mut out = bytes::BytesMut::new();
        put_packet(&mut out, 0, payload);
        s.write_all(&out).await.expect("send");
        let (_, p) = common::raw_read(&mut s).await.expect("reply");
        assert_eq!(wire::parse_err(&p).map(|e| e.code), Some(1243));
        assert!(ping(&mut s).await);
    }
    // Invalid UTF-8 in a query reaches MariaDB, which answers for itself.
    let mut out = bytes::BytesMut::new();
    put_packet(&mut out, 0, b"\x03SELECT '\xff\xfe'");
    s.write_all(&out).await.expect("send");
    // Read the whole answer: a result set ending in 0xfe (DEPRECATE_EOF), or OK / ERR.
    let (_, first) = common::raw_read(&mut s).await.expect("reply");
    if first[0] != 0 && first[0] != 0xff {
        loop {
            let (_, p) = common::raw_read(&mut s).await.expect("row or end");
            if p[0] == 0xfe || p[0] == 0xff {
                break;
            }
        }
    }
    assert!(ping(&mut s).await);

    // 6. Random bytes after the greeting, many times: never a panic.
    for round in 0..50u32 {
        let mut s = TcpStream::connect(&addr).await.expect("connect");
        common::raw_read(&mut s).await.expect("greeting");
        let len = (round * 7919 % 300) as usize;
        let mut bytes: Vec<u8> = (0..len)
            .map(|i| ((i as u32).wrapping_mul(2654435761u32) >> (round % 24)) as u8)
            .collect();
        if bytes.len() >= 4 {
            bytes[3] = 1;
        }
        let _ = s.write_all(&bytes).await;
        let _ = s.shutdown().await;
    }

    // The healthy client never noticed.
    let v: Option<u32> = healthy
        .query_first("SELECT 41 + 1")
        .await
        .expect("healthy still works");
    assert_eq!(v, Some(42));
    // And new clients still log in.
    let mut fresh = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("fresh client");
    let v: Option<u32> = fresh.query_first("SELECT 7").await.expect("fresh works");
    assert_eq!(v, Some(7));
    drop(fresh);
    drop(healthy);
    proxy.stop().await;
}
