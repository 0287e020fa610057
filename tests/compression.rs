//! The compressed client protocol (`CLIENT_COMPRESS`) against real MariaDB: three
//! client libraries (mysql_async, the mariadb CLI and mysqlclient on libmariadb) run
//! queries, multi-MiB results, large queries, multi-statements and errors compressed;
//! a counting forwarder in front of shardgate shows the bytes really are compressed;
//! raw sockets check the framing against MariaDB's own, and that a client sending
//! garbage or lying lengths gets an error or a close, never a hang.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::io::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mysql_async::prelude::Queryable;
use shardgate::protocol::caps;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A TCP forwarder to `target` that counts the bytes each way.
struct Counter {
    addr: String,
    to_client: Arc<AtomicU64>,
    to_server: Arc<AtomicU64>,
}

async fn counting_forwarder(target: String) -> Counter {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    let to_client = Arc::new(AtomicU64::new(0));
    let to_server = Arc::new(AtomicU64::new(0));
    let (tc, ts) = (to_client.clone(), to_server.clone());
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(&target).await else {
                continue;
            };
            let (tc, ts) = (tc.clone(), ts.clone());
            tokio::spawn(async move {
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = async move {
                    let mut b = vec![0u8; 64 * 1024];
                    while let Ok(n) = cr.read(&mut b).await {
                        if n == 0 || sw.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                        ts.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let _ = sw.shutdown().await;
                };
                let down = async move {
                    let mut b = vec![0u8; 64 * 1024];
                    while let Ok(n) = sr.read(&mut b).await {
                        if n == 0 || cw.write_all(&b[..n]).await.is_err() {
                            break;
                        }
                        tc.fetch_add(n as u64, Ordering::Relaxed);
                    }
                    let _ = cw.shutdown().await;
                };
                tokio::join!(up, down);
            });
        }
    });
    Counter {
        addr,
        to_client,
        to_server,
    }
}

fn compressed_opts(addr: &str, db: &str) -> mysql_async::Opts {
    mysql_async::OptsBuilder::from_opts(common::mysql_opts(addr, "app", "app", Some(db)))
        .compression(Some(mysql_async::Compression::default()))
        .into()
}

/// 4 MiB of a result: 4 rows of 1 MiB, from the unsharded keyspace.
const BIG_RESULT: &str = "SELECT seq, REPEAT(CONCAT('row', seq, '-'), 200000) FROM seq_1_to_4";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_speaks_compressed_queries_results_and_errors() {
    let servers = common::start_servers(2);
    let toml = common::vschema_with_messages(&servers);
    let proxy = common::start_proxy(&toml).await;
    let fwd = counting_forwarder(proxy.addr_string()).await;
    let test = async {
        let mut conn = mysql_async::Conn::new(compressed_opts(&fwd.addr, "main"))
            .await
            .expect("a compressed connection through shardgate");
        let one: Option<i64> = conn.query_first("SELECT 1").await.expect("SELECT 1");
        assert_eq!(one, Some(1));

        // A multi-MiB result spans many compressed frames.
        let before = fwd.to_client.load(Ordering::Relaxed);
        let rows: Vec<(u64, String)> = conn.query(BIG_RESULT).await.expect("big result");
        let on_wire = fwd.to_client.load(Ordering::Relaxed) - before;
        assert_eq!(rows.len(), 4);
        let data: usize = rows.iter().map(|(_, s)| s.len()).sum();
        for (seq, s) in &rows {
            assert!(s.starts_with(&format!("row{seq}-row{seq}-")), "row {seq}");
        }
        assert!(data >= 4_000_000, "{data} bytes of rows");
        assert!(
            (on_wire as usize) < data / 20,
            "{on_wire} bytes on the wire for {data} bytes of rows: not compressed"
        );

        // A large query (2 MiB of text) spans frames the other way.
        let before = fwd.to_server.load(Ordering::Relaxed);
        let text = "abcdefgh".repeat(256 * 1024);
        let len: Option<i64> = conn
            .query_first(format!("SELECT LENGTH('{text}')"))
            .await
            .expect("large query");
        assert_eq!(len, Some(text.len() as i64));
        let sent = fwd.to_server.load(Ordering::Relaxed) - before;
        assert!((sent as usize) < text.len() / 20, "{sent} bytes sent");

        // Several statements, several results.
        let mut results = conn
            .query_iter("SELECT 1; SELECT 'two'; DO 3")
            .await
            .expect("multi-statement");
        let first: Vec<i64> = results.collect().await.expect("first result");
        let second: Vec<String> = results.collect().await.expect("second result");
        drop(results);
        assert_eq!((first, second), (vec![1], vec!["two".to_string()]));

        // An error, and the connection goes on.
        let (code, message) = common::server_error(&mut conn, "SELECT * FROM no_such_table").await;
        assert_eq!(code, 1146, "{message}");
        // Sharded rows through the relay.
        conn.query_drop("USE app").await.expect("USE app");
        conn.query_drop("INSERT INTO messages (workspace_id, body) VALUES (7, 'compressed hello')")
            .await
            .expect("insert");
        let body: Option<String> = conn
            .query_first("SELECT body FROM messages WHERE workspace_id = 7")
            .await
            .expect("select");
        assert_eq!(body.as_deref(), Some("compressed hello"));
        conn.disconnect().await.expect("disconnect");
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("the compressed session within 120 s");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mariadb_cli_and_mysqlclient_speak_compressed() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&common::sharded_vschema(&servers)).await;
    let fwd = counting_forwarder(proxy.addr_string()).await;
    let addr = fwd.addr.clone();
    let cli = tokio::task::spawn_blocking(move || {
        common::cli_with_args(
            &addr,
            "app",
            "app",
            Some("main"),
            &format!("SELECT 1; {BIG_RESULT}; SELECT * FROM no_such_table"),
            &["--compress"],
        )
    });
    let out = tokio::time::timeout(Duration::from_secs(60), cli)
        .await
        .expect("the CLI within 60 s")
        .expect("CLI task");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let mut lines = stdout.lines();
    assert_eq!(lines.next(), Some("1"), "{stderr}");
    // Each row: "N\t" and 200,000 times "rowN-".
    let total = 4 * 200_000 * "row1-".len();
    let rows: Vec<&str> = lines.collect();
    assert_eq!(rows.len(), 4, "{stderr}");
    assert_eq!(rows.iter().map(|r| r.len()).sum::<usize>(), total + 4 * 2);
    assert!(
        stderr.contains("1146"),
        "the error reached the CLI: {stderr}"
    );
    let on_wire = fwd.to_client.load(Ordering::Relaxed) as usize;
    assert!(
        on_wire < total / 20,
        "{on_wire} bytes for {total}: not compressed"
    );

    // mysqlclient (libmariadb) with compress=True.
    let script = r#"
import sys, MySQLdb
c = MySQLdb.connect(host="127.0.0.1", port=int(sys.argv[1]), user="app", passwd="app", db="main", compress=True)
cur = c.cursor()
cur.execute("SELECT seq, REPEAT('m', 3000000) FROM seq_1_to_3")
rows = cur.fetchall()
cur.execute("SELECT LENGTH(%s)", ("q" * 1000000,))
n = cur.fetchall()[0][0]
try:
    cur.execute("SELECT * FROM no_such_table")
    err = None
except MySQLdb.Error as e:
    err = e.args[0]
cur.execute("SELECT 'still here'")
last = cur.fetchall()[0][0]
print(len(rows), sum(len(r[1]) for r in rows), n, err, "ok" if last in ("still here", b"still here") else repr(last))
"#;
    let port = fwd.addr.rsplit(':').next().expect("port").to_string();
    let before = fwd.to_client.load(Ordering::Relaxed);
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("/usr/bin/python3")
            .args(["-c", script, &port])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mysqlclient within 60 s")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "3 9000000 1000000 1146 ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let on_wire = fwd.to_client.load(Ordering::Relaxed) - before;
    assert!(on_wire < 9_000_000 / 20, "{on_wire} bytes: not compressed");
    proxy.stop().await;
}

// ---- raw compressed framing ----

/// One compressed frame: (sequence id, uncompressed length field, packet bytes).
async fn read_frame(s: &mut TcpStream) -> Option<(u8, usize, Vec<u8>)> {
    let mut h = [0u8; 7];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut h))
        .await
        .ok()?
        .ok()?;
    let clen = h[0] as usize | (h[1] as usize) << 8 | (h[2] as usize) << 16;
    let ulen = h[4] as usize | (h[5] as usize) << 8 | (h[6] as usize) << 16;
    let mut body = vec![0u8; clen];
    tokio::time::timeout(Duration::from_secs(5), s.read_exact(&mut body))
        .await
        .ok()?
        .ok()?;
    let data = if ulen == 0 {
        body
    } else {
        let mut d = flate2::read::ZlibDecoder::new(&body[..]);
        let mut v = Vec::new();
        std::io::Read::read_to_end(&mut d, &mut v).ok()?;
        assert_eq!(v.len(), ulen, "inflated length");
        v
    };
    Some((h[3], ulen, data))
}

fn frame(seq: u8, payload: &[u8], compress: bool) -> Vec<u8> {
    let (body, ulen) = if compress {
        let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
        z.write_all(payload).expect("deflate");
        (z.finish().expect("deflate"), payload.len())
    } else {
        (payload.to_vec(), 0)
    };
    let mut f = (body.len() as u32).to_le_bytes()[..3].to_vec();
    f.push(seq);
    f.extend_from_slice(&(ulen as u32).to_le_bytes()[..3]);
    f.extend_from_slice(&body);
    f
}

fn query_packet(seq: u8, sql: &str) -> Vec<u8> {
    let mut p = (sql.len() as u32 + 1).to_le_bytes()[..3].to_vec();
    p.push(seq);
    p.push(0x03);
    p.extend_from_slice(sql.as_bytes());
    p
}

/// Logs in with `CLIENT_COMPRESS` (the login itself is uncompressed).
async fn compressed_login(addr: &str, user: &str, password: &str, db: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let (_, g) = common::raw_read(&mut s).await.expect("greeting");
    let greeting = shardgate::protocol::handshake::parse_greeting(&g).expect("greeting");
    assert_ne!(
        greeting.capabilities & caps::COMPRESS,
        0,
        "CLIENT_COMPRESS offered"
    );
    let ok =
        common::raw_answer_greeting(&mut s, &g, user, password, Some(db), caps::COMPRESS, 45).await;
    assert_eq!(ok.first(), Some(&0), "login OK, uncompressed: {ok:?}");
    s
}

/// The frames answering `sql` (sent as frame 0): (seq, compressed?, packets' bytes).
async fn exchange(s: &mut TcpStream, sql: &str, compress_query: bool) -> Vec<(u8, bool, usize)> {
    s.write_all(&frame(0, &query_packet(0, sql), compress_query))
        .await
        .expect("send");
    let mut frames = Vec::new();
    let mut stream = Vec::new();
    loop {
        let (seq, ulen, data) = read_frame(s).await.expect("a frame");
        frames.push((seq, ulen > 0, data.len()));
        stream.extend_from_slice(&data);
        if response_complete(&stream) {
            return frames;
        }
    }
}

/// Whether `stream` holds a whole text-protocol response (DEPRECATE_EOF).
fn response_complete(stream: &[u8]) -> bool {
    let mut at = 0;
    let mut first = true;
    let mut in_rows = false;
    while at + 4 <= stream.len() {
        let len =
            stream[at] as usize | (stream[at + 1] as usize) << 8 | (stream[at + 2] as usize) << 16;
        if at + 4 + len > stream.len() {
            return false;
        }
        let p = &stream[at + 4..at + 4 + len];
        at += 4 + len;
        match p.first() {
            Some(0x00) | Some(0xff) if first => return true,
            Some(0xfe) if in_rows && len < 0xff_ffff => {
                let more =
                    shardgate::protocol::wire::parse_ok(p).is_some_and(|o| o.status & 0x0008 != 0);
                if !more {
                    return true;
                }
                first = true;
                in_rows = false;
                continue;
            }
            _ => {}
        }
        if first {
            first = false;
            in_rows = true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_frames_match_mariadbs_own() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&common::sharded_vschema(&servers)).await;
    let direct_addr = servers[0].addr().to_string();
    let mut via = compressed_login(&proxy.addr_string(), "app", "app", "main").await;
    let mut direct = compressed_login(&direct_addr, "shardgate", "shardgate", "main").await;
    for sql in [
        "SELECT 1",
        "SELECT * FROM no_such_table",
        "SELECT seq, REPEAT('x', 5000) FROM seq_1_to_30",
        "DO 1",
    ] {
        let theirs = exchange(&mut direct, sql, false).await;
        let ours = exchange(&mut via, sql, true).await;
        // Sequence ids from 1, short frames uncompressed, long ones compressed, each
        // at most 16 KiB of packets: as MariaDB does.
        let ids: Vec<u8> = ours.iter().map(|f| f.0).collect();
        assert_eq!(ids, (1..=ours.len() as u8).collect::<Vec<_>>(), "{sql}");
        for &(_, compressed, len) in &ours {
            assert!(len <= 16 * 1024, "{sql}: frame of {len}");
            if len < 50 {
                assert!(!compressed, "{sql}: a short frame ({len}) is sent as is");
            }
            if len > 1000 {
                assert!(compressed, "{sql}: a long frame ({len}) is compressed");
            }
        }
        if ours.len() == 1 && theirs.len() == 1 {
            assert_eq!(
                ours[0].1, theirs[0].1,
                "{sql}: ours {ours:?} theirs {theirs:?}"
            );
        }
        let (ob, tb): (usize, usize) = (
            ours.iter().map(|f| f.2).sum(),
            theirs.iter().map(|f| f.2).sum(),
        );
        assert_eq!(ob, tb, "{sql}: the same packets");
    }
    proxy.stop().await;
}

async fn closed_or_error_within(s: &mut TcpStream, within: Duration) -> Option<u16> {
    let mut buf = vec![0u8; 4096];
    let mut got = Vec::new();
    let read = tokio::time::timeout(within, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(n) => got.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection neither answered nor closed");
    // The ERR in the last frame, if one came (a frame whose lie shows only at its
    // end may have been answered before it).
    let mut rest = &got[..];
    let mut code = None;
    while rest.len() >= 7 {
        let clen = rest[0] as usize | (rest[1] as usize) << 8 | (rest[2] as usize) << 16;
        let ulen = rest[4] as usize | (rest[5] as usize) << 8 | (rest[6] as usize) << 16;
        let body = rest.get(7..7 + clen)?;
        let data = if ulen == 0 {
            body.to_vec()
        } else {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut flate2::read::ZlibDecoder::new(body), &mut v).ok()?;
            v
        };
        code = (data.len() >= 7 && data[4] == 0xff).then(|| u16::from_le_bytes([data[5], data[6]]));
        rest = &rest[7 + clen..];
    }
    code
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_and_lying_lengths_get_an_error_or_a_close_never_a_hang() {
    let servers = common::start_servers(1);
    let vs = shardgate::vschema::VSchema::from_toml_str(&common::sharded_vschema(&servers))
        .expect("vschema");
    let mut config = shardgate::config::ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vs,
    );
    config.limits.packet_stall_timeout = Some(Duration::from_secs(1));
    let proxy = common::start_proxy_config(config).await;
    let addr = proxy.addr_string();
    let limit = Duration::from_secs(10);

    // Not zlib at all.
    let mut s = compressed_login(&addr, "app", "app", "main").await;
    let mut garbage = vec![30, 0, 0, 0, 100, 0, 0];
    garbage.extend_from_slice(&[0x42; 30]);
    s.write_all(&garbage).await.expect("send");
    assert_eq!(closed_or_error_within(&mut s, limit).await, Some(1157));

    // A frame that inflates to less than it announces.
    let mut s = compressed_login(&addr, "app", "app", "main").await;
    let mut lying = frame(
        0,
        &query_packet(0, &format!("SELECT '{}'", "y".repeat(500))),
        true,
    );
    lying[4..7].copy_from_slice(&100_000u32.to_le_bytes()[..3]);
    s.write_all(&lying).await.expect("send");
    assert_eq!(closed_or_error_within(&mut s, limit).await, Some(1157));

    // A frame that announces 16 MiB uncompressed and sends a few bytes, then stops.
    let mut s = compressed_login(&addr, "app", "app", "main").await;
    s.write_all(&[200, 0, 0, 0, 0xff, 0xff, 0xff, 0x78, 0x9c])
        .await
        .expect("send");
    closed_or_error_within(&mut s, limit).await;

    // A raw frame longer than what follows: the stall timeout ends it.
    let mut s = compressed_login(&addr, "app", "app", "main").await;
    s.write_all(&[100, 0, 0, 0, 0, 0, 0, 5, 0, 0, 0, 3])
        .await
        .expect("send");
    closed_or_error_within(&mut s, limit).await;

    // The proxy is fine: a compressed client still gets answers.
    let mut s = compressed_login(&addr, "app", "app", "main").await;
    let frames = exchange(&mut s, "SELECT 1", false).await;
    assert_eq!(frames.first().map(|f| f.0), Some(1));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_runs_inside_tls() {
    let servers = common::start_servers(1);
    let vs = shardgate::vschema::VSchema::from_toml_str(&common::sharded_vschema(&servers))
        .expect("vschema");
    let cert = common::test_cert();
    let mut config = shardgate::config::ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vs,
    );
    config.migrations = None;
    config.tls = Some(
        shardgate::protocol::tls::ServerTls::from_pem_files(&cert.cert, &cert.key, true)
            .expect("the test certificate"),
    );
    let proxy = common::start_proxy_config(config).await;
    let ssl = mysql_async::SslOpts::default()
        .with_root_certs(vec![cert.cert.clone().into()])
        .with_disable_built_in_roots(true);
    let opts: mysql_async::Opts =
        mysql_async::OptsBuilder::from_opts(compressed_opts(&proxy.addr_string(), "main"))
            .ssl_opts(ssl)
            .into();
    let test = async {
        let mut conn = mysql_async::Conn::new(opts)
            .await
            .expect("TLS and compression");
        let rows: Vec<(u64, String)> = conn.query(BIG_RESULT).await.expect("big result");
        assert_eq!(rows.len(), 4);
        assert!(rows.iter().all(|(_, s)| s.len() == 1_000_000));
        let cipher: Option<(String, String)> = conn
            .query_first("SHOW STATUS LIKE 'Ssl_cipher'")
            .await
            .expect("status");
        assert!(cipher.is_some());
        conn.disconnect().await.expect("disconnect");
    };
    tokio::time::timeout(Duration::from_secs(60), test)
        .await
        .expect("within 60 s");
    proxy.stop().await;
}
