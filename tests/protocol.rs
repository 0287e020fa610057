//! Protocol details clients rely on: the auth switch to mysql_native_password, packets
//! over 16 MiB in both directions, COM_RESET_CONNECTION, COM_INIT_DB, COM_PING.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use bytes::BytesMut;
use mysql_async::prelude::*;
use shardgate::protocol::auth::native_token;
use shardgate::protocol::handshake::{
    build_handshake_response, parse_auth_switch, parse_greeting, HandshakeResponse,
};
use shardgate::protocol::packet::put_packet;
use shardgate::protocol::{caps, wire};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn unsharded(servers: &[shardgate::demo::localdb::LocalMariaDb]) -> String {
    servers[0]
        .sql("CREATE DATABASE IF NOT EXISTS app")
        .expect("db");
    format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n\
         [keyspaces.app]\ncluster = \"c1\"\n",
        servers[0].addr()
    )
}

async fn read_packet(s: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut h = [0u8; 4];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .expect("in time")
        .expect("header");
    let len = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
    let mut p = vec![0u8; len];
    s.read_exact(&mut p).await.expect("payload");
    (h[3], p)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_starts_with_another_plugin_is_switched_to_native_password() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&unsharded(&servers)).await;
    for (password, expect_ok) in [("app", true), ("wrong", false)] {
        let mut s = TcpStream::connect(proxy.addr).await.expect("connect");
        let (_, g) = read_packet(&mut s).await;
        let g = parse_greeting(&g).expect("greeting");
        assert_eq!(g.auth_plugin, "mysql_native_password");
        let resp = HandshakeResponse {
            capabilities: caps::BACKEND_BASE,
            max_packet: 1 << 24,
            collation: 45,
            user: "app".into(),
            auth_response: vec![7; 32], // what a caching_sha2_password client would send
            database: Some("app".into()),
            auth_plugin: Some("caching_sha2_password".into()),
            attributes: vec![],
            ext_capabilities: 0,
        };
        let mut out = BytesMut::new();
        put_packet(&mut out, 1, &build_handshake_response(&resp));
        s.write_all(&out).await.expect("send");
        let (seq, sw) = read_packet(&mut s).await;
        assert_eq!(seq, 2);
        let (plugin, scramble) = parse_auth_switch(&sw).expect("an auth switch request");
        assert_eq!(plugin, "mysql_native_password");
        assert_eq!(scramble.len(), 20);
        let mut out = BytesMut::new();
        put_packet(&mut out, 3, &native_token(password.as_bytes(), &scramble));
        s.write_all(&out).await.expect("send token");
        let (seq, reply) = read_packet(&mut s).await;
        assert_eq!(seq, 4);
        if expect_ok {
            assert_eq!(reply[0], 0, "OK after the switch");
        } else {
            let e = wire::parse_err(&reply).expect("ERR");
            assert_eq!((e.code, e.sqlstate.as_str()), (1045, "28000"));
        }
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn payloads_over_16_mib_cross_the_proxy_both_ways() {
    let servers = common::start_servers(1);
    let toml = unsharded(&servers);
    servers[0]
        .sql("CREATE TABLE app.big (id INT PRIMARY KEY, b LONGBLOB)")
        .expect("create");
    let proxy = common::start_proxy(&toml).await;
    let mut c = proxy.connect("app", Some("app")).await;
    // A 17 MiB query: the client splits it into two packets, shardgate joins and
    // re-splits them.
    let size = 17 * 1024 * 1024;
    let value: String = (0..size).map(|i| (b'a' + (i % 26) as u8) as char).collect();
    c.query_drop(format!("INSERT INTO big VALUES (1, '{value}')"))
        .await
        .expect("17 MiB insert");
    let direct = servers[0]
        .sql("SELECT LENGTH(b), MD5(b) FROM app.big WHERE id = 1")
        .expect("direct");
    let want = format!("{:x}", md5_hex_of(&value));
    assert!(
        direct.contains(&size.to_string()) && direct.contains(&want),
        "{direct} vs {want}"
    );
    // A 17 MiB row comes back split across packets, relayed raw.
    let got: Option<Vec<u8>> = c
        .query_first("SELECT b FROM big WHERE id = 1")
        .await
        .expect("select");
    assert!(
        got.as_deref() == Some(value.as_bytes()),
        "the 17 MiB value came back intact"
    );
    drop(c);
    proxy.stop().await;
}

/// MD5 through the mariadb CLI would need a server; compute it with Python instead,
/// an implementation independent of ours.
fn md5_hex_of(value: &str) -> Md5Hex {
    use std::io::Write;
    let mut child = std::process::Command::new("python3")
        .args([
            "-c",
            "import sys,hashlib;print(hashlib.md5(sys.stdin.buffer.read()).hexdigest())",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(value.as_bytes())
        .expect("write");
    let out = child.wait_with_output().expect("md5");
    Md5Hex(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

struct Md5Hex(String);

impl std::fmt::LowerHex for Md5Hex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_init_db_and_ping_behave_as_on_mariadb() {
    let servers = common::start_servers(1);
    let toml = unsharded(&servers);
    servers[0].sql("CREATE DATABASE other").expect("db");
    servers[0].sql("CREATE TABLE other.t (x INT)").expect("t");
    let toml = format!("{toml}[keyspaces.other]\ncluster = \"c1\"\n");
    let proxy = common::start_proxy(&toml).await;
    let mut c = proxy.connect("app", Some("app")).await;
    c.query_drop("SET @v = 42").await.expect("set");
    let v: Option<u32> = c.query_first("SELECT @v").await.expect("get");
    assert_eq!(v, Some(42));
    c.reset().await.expect("COM_RESET_CONNECTION");
    let v: Option<Option<u32>> = c.query_first("SELECT @v").await.expect("get after reset");
    assert_eq!(v, Some(None), "user variables are gone after a reset");
    // COM_INIT_DB, sent by a bare client.
    let cluster = shardgate::vschema::Cluster {
        name: "proxy".into(),
        standbys: Vec::new(),
        primary: proxy.addr.to_string(),
        user: "app".into(),
        password: "app".into(),
        tls: None,
    };
    let key = shardgate::backend::ConnKey {
        caps: caps::DEPRECATE_EOF,
        collation: 45,
        ext: 0,
    };
    let (mut raw, _) = shardgate::backend::BackendConn::connect(
        &cluster,
        key,
        Some("app"),
        Duration::from_secs(5),
    )
    .await
    .expect("raw connect");
    assert!(
        raw.init_db("other").await.expect("io").is_ok(),
        "COM_INIT_DB other"
    );
    let r = raw
        .exec(
            b"\x03SELECT COUNT(*) FROM t",
            shardgate::protocol::relay::ResponseKind::Query,
        )
        .await
        .expect("query");
    assert!(
        !r.outcome.error,
        "t is found in the database selected by COM_INIT_DB"
    );
    match raw.init_db("nope").await.expect("io") {
        Err(collected) => {
            let e = collected.err().expect("ERR");
            assert_eq!((e.code, e.sqlstate.as_str()), (1049, "42000"));
        }
        Ok(()) => panic!("COM_INIT_DB of an unknown database must fail"),
    }
    assert!(raw.ping().await, "usable after the error");
    c.ping().await.expect("COM_PING");
    drop(c);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardgates_own_sql_client_reads_rows_nulls_and_errors() {
    let servers = common::start_servers(1);
    let cluster = shardgate::vschema::Cluster {
        name: "c1".into(),
        standbys: Vec::new(),
        primary: servers[0].addr(),
        user: "shardgate".into(),
        password: "shardgate".into(),
        tls: None,
    };
    let mut c = shardgate::backend::SqlConn::connect(&cluster, None, Duration::from_secs(5))
        .await
        .expect("connect");
    let ok = c.execute("CREATE DATABASE t1").await.expect("create");
    assert_eq!(ok.affected_rows, 1);
    let rows = c
        .query("SELECT 1 AS a, NULL AS b, 'x''y' AS c UNION ALL SELECT 2, 'z', ''")
        .await
        .expect("query");
    assert_eq!(rows.columns, vec!["a", "b", "c"]);
    assert_eq!(
        rows.rows,
        vec![
            vec![Some("1".to_string()), None, Some("x'y".to_string())],
            vec![
                Some("2".to_string()),
                Some("z".to_string()),
                Some(String::new())
            ],
        ]
    );
    assert_eq!(rows.scalar(), Some("1"));
    let empty = c.query("SELECT 1 FROM DUAL WHERE 0").await.expect("empty");
    assert!(empty.rows.is_empty());
    match c.query("SELECT * FROM nope.nope").await {
        Err(e) => assert_eq!(e.code(), Some(1146), "{e}"),
        Ok(r) => panic!("expected an error, got {r:?}"),
    }
    assert!(c.ping().await, "usable after an error");
}
