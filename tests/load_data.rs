//! `LOAD DATA LOCAL INFILE` through shardgate against real MariaDB: the backend's file
//! request is relayed to the client and the client's file to the backend, packet by
//! packet, with mysql_async (a local-infile handler), the mariadb CLI
//! (`--local-infile=1`) and PyMySQL (`local_infile=True`). Rows land on the workspace's
//! shard (checked on the shard itself); a multi-MiB file, a bad row, a client that
//! refuses, a backend lost mid-file, and the refusal of an unpinned LOAD DATA into a
//! shared sharded table, each leaving the connection usable (or, for the lost backend,
//! an error and never an OK).
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use mysql_async::prelude::Queryable;
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::protocol::caps;
use shardgate::vschema::VSchema;

/// The server holding `workspace`'s shard of keyspace `app`.
fn shard_of<'a>(
    servers: &'a [LocalMariaDb],
    toml: &str,
    workspace: u64,
) -> (usize, &'a LocalMariaDb) {
    let vs = VSchema::from_toml_str(toml).expect("vschema");
    let i = vs
        .keyspace("app")
        .expect("keyspace app")
        .shard_index_for_workspace(workspace);
    (i, &servers[i])
}

/// A trigger on every shard that fails the insert of a row whose body is `bad`: a bad
/// row that errors even under LOAD DATA LOCAL (which turns conversion errors into
/// warnings).
fn add_bad_row_trigger(servers: &[LocalMariaDb]) {
    for s in servers {
        s.sql(
            "DELIMITER //\nCREATE TRIGGER app.messages_bad BEFORE INSERT ON app.messages \
             FOR EACH ROW IF NEW.body = 'bad' THEN SIGNAL SQLSTATE '45000' \
             SET MESSAGE_TEXT = 'bad row in the file'; END IF//\nDELIMITER ;\n",
        )
        .expect("create the trigger");
    }
}

fn count(server: &LocalMariaDb, filter: &str) -> u64 {
    common::number_on(
        server,
        &format!("SELECT COUNT(*) FROM app.messages WHERE {filter}"),
    )
}

/// `rows` lines of `workspace\tbody`, bodies of about 60 bytes.
fn tsv(workspace: u64, rows: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(rows * 70);
    for i in 0..rows {
        out.extend_from_slice(format!("{workspace}\tline {i:08} {}\n", "x".repeat(40)).as_bytes());
    }
    out
}

fn give(conn: &mut mysql_async::Conn, data: Vec<u8>) {
    // In chunks of 100 KiB, as a file would be read.
    let chunks: Vec<Bytes> = data
        .chunks(100 * 1024)
        .map(Bytes::copy_from_slice)
        .collect();
    conn.set_infile_handler(async move { Ok(stream::iter(chunks).map(Ok).boxed()) });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_async_loads_files_onto_the_workspaces_shard() {
    let servers = common::start_servers(2);
    let toml = common::vschema_with_messages(&servers);
    add_bad_row_trigger(&servers);
    let proxy = common::start_proxy(&toml).await;
    let (i, shard) = shard_of(&servers, &toml, 5);
    let other = &servers[1 - i];
    let test = async {
        let mut conn = proxy.connect("app", Some("app")).await;
        let load = "/*workspace_id:5*/ LOAD DATA LOCAL INFILE 'rows.tsv' \
                    INTO TABLE messages (workspace_id, body)";

        // A multi-MiB file: every row on workspace 5's shard, none elsewhere.
        let big = tsv(5, 80_000);
        assert!(big.len() > 4 << 20, "{} bytes", big.len());
        give(&mut conn, big);
        conn.query_drop(load).await.expect("LOAD DATA LOCAL");
        assert_eq!(conn.affected_rows(), 80_000);
        assert_eq!(count(shard, "workspace_id = 5"), 80_000);
        assert_eq!(count(other, "1"), 0);

        // A bad row: the backend's error reaches the client, nothing of it stays, and
        // the connection goes on.
        let mut bad = tsv(5, 100);
        bad.extend_from_slice(b"5\tbad\n");
        give(&mut conn, bad);
        let (code, message) = common::server_error(&mut conn, load).await;
        assert_eq!((code, message.as_str()), (1644, "bad row in the file"));
        assert_eq!(count(shard, "workspace_id = 5"), 80_000);
        let one: Option<i64> = conn.query_first("SELECT 1").await.expect("still usable");
        assert_eq!(one, Some(1));

        // A client that refuses (its handler fails: it sends the empty packet at once).
        conn.set_infile_handler(async move {
            Ok(stream::iter([Err(std::io::Error::other("no file for you"))]).boxed())
        });
        let refused = conn.query_drop(load).await;
        assert!(refused.is_err(), "the handler's error: {refused:?}");
        assert_eq!(count(shard, "workspace_id = 5"), 80_000);
        // mysql_async closes a connection after a handler error (it is a driver
        // error, fatal to it): the raw test shows the refusal's answer and that the
        // connection goes on.
        let mut conn = proxy.connect("app", Some("app")).await;

        // Unpinned, into a table shared by the workspaces: refused before any file is
        // asked for, naming the table, the keyspace and what to do.
        let asked = Arc::new(AtomicBool::new(false));
        let flag = asked.clone();
        conn.set_infile_handler(async move {
            flag.store(true, Ordering::SeqCst);
            Ok(stream::iter(Vec::<std::io::Result<Bytes>>::new()).boxed())
        });
        let (code, message) = common::server_error(
            &mut conn,
            "LOAD DATA LOCAL INFILE 'rows.tsv' INTO TABLE messages (workspace_id, body)",
        )
        .await;
        assert_eq!(code, 1105, "{message}");
        for part in [
            "app.messages",
            "keyspace 'app'",
            "workspace_id=",
            "workspace's database",
        ] {
            assert!(message.contains(part), "{part:?} in {message}");
        }
        assert!(!asked.load(Ordering::SeqCst), "no file was asked for");
        let one: Option<i64> = conn.query_first("SELECT 1").await.expect("still usable");
        assert_eq!(one, Some(1));

        // Over the compressed protocol.
        let opts = mysql_async::OptsBuilder::from_opts(common::mysql_opts(
            &proxy.addr_string(),
            "app",
            "app",
            Some("app"),
        ))
        .compression(Some(mysql_async::Compression::default()));
        let mut compressed = mysql_async::Conn::new(opts).await.expect("compressed");
        give(&mut compressed, tsv(5, 20_000));
        compressed
            .query_drop(load)
            .await
            .expect("compressed LOAD DATA");
        assert_eq!(count(shard, "workspace_id = 5"), 100_000);
        let one: Option<i64> = compressed.query_first("SELECT 1").await.expect("usable");
        assert_eq!(one, Some(1));
        compressed.disconnect().await.expect("disconnect");

        // The unsharded keyspace needs no tag.
        conn.query_drop("USE main").await.expect("USE main");
        conn.query_drop("CREATE TABLE IF NOT EXISTS loaded (a INT, b TEXT)")
            .await
            .expect("create");
        give(&mut conn, b"1\tone\n2\ttwo\n".to_vec());
        conn.query_drop("LOAD DATA LOCAL INFILE 'x' INTO TABLE loaded")
            .await
            .expect("load into main");
        let n: Option<i64> = conn
            .query_first("SELECT COUNT(*) FROM loaded")
            .await
            .expect("count");
        assert_eq!(n, Some(2));
        conn.disconnect().await.expect("disconnect");
    };
    tokio::time::timeout(Duration::from_secs(120), test)
        .await
        .expect("within 120 s");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mariadb_cli_and_pymysql_load_local_files() {
    let servers = common::start_servers(2);
    let toml = common::vschema_with_messages(&servers);
    add_bad_row_trigger(&servers);
    let proxy = common::start_proxy(&toml).await;
    let (i, shard) = shard_of(&servers, &toml, 9);
    let dir = tempfile::tempdir().expect("temp dir");
    let good = dir.path().join("good.tsv");
    std::fs::write(&good, tsv(9, 20_000)).expect("write file");
    let bad = dir.path().join("bad.tsv");
    std::fs::write(&bad, "9\tfine\n9\tbad\n").expect("write file");
    let addr = proxy.addr_string();
    let (good_s, bad_s) = (good.display().to_string(), bad.display().to_string());
    let cli = tokio::task::spawn_blocking(move || {
        let load = |path: &str, compress: bool| {
            common::cli_with_args(
                &addr,
                "app",
                "app",
                Some("app"),
                &format!(
                    "/*workspace_id:9*/ LOAD DATA LOCAL INFILE '{path}' INTO TABLE messages \
                     (workspace_id, body); SELECT 'after'"
                ),
                if compress {
                    &["--local-infile=1", "--comments", "--compress"][..]
                } else {
                    &["--local-infile=1", "--comments"][..]
                },
            )
        };
        // The good file over the compressed protocol: its frames count on from the
        // file request's.
        (load(&good_s, true), load(&bad_s, false))
    });
    let (ok, failed) = tokio::time::timeout(Duration::from_secs(60), cli)
        .await
        .expect("the CLI within 60 s")
        .expect("CLI task");
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&ok.stdout).trim(), "after");
    assert_eq!(count(shard, "workspace_id = 9"), 20_000);
    assert_eq!(count(&servers[1 - i], "1"), 0);
    let stderr = String::from_utf8_lossy(&failed.stderr);
    assert!(
        stderr.contains("1644") && stderr.contains("bad row in the file"),
        "the backend's error: {stderr}"
    );
    assert_eq!(count(shard, "workspace_id = 9"), 20_000);

    // PyMySQL: a file into the unsharded keyspace, then one into a sharded table.
    servers[0]
        .sql("CREATE TABLE main.py_loaded (a INT, b TEXT)")
        .expect("create");
    let small = dir.path().join("small.tsv");
    std::fs::write(&small, "1\ta\n2\tb\n3\tc\n").expect("write file");
    let script = r#"
import sys, pymysql
c = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="app", password="app", database="main", local_infile=True, autocommit=True)
cur = c.cursor()
n1 = cur.execute("LOAD DATA LOCAL INFILE '%s' INTO TABLE py_loaded" % sys.argv[2])
cur.execute("USE app")
n2 = cur.execute("/*workspace_id:9*/ LOAD DATA LOCAL INFILE '%s' INTO TABLE messages (workspace_id, body)" % sys.argv[3])
cur.execute("SELECT 'ok'")
print(n1, n2, cur.fetchall()[0][0])
"#;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                script,
                &proxy.addr.port().to_string(),
                &small.display().to_string(),
                &good.display().to_string(),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("PyMySQL within 60 s")
    .expect("run python3");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "3 20000 ok",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(count(shard, "workspace_id = 9"), 40_000);
    proxy.stop().await;
}

/// Sends `sql` as COM_QUERY and reads the file request: its sequence id.
async fn request_file(s: &mut tokio::net::TcpStream, sql: &str) -> u8 {
    common::raw_query(s, sql.as_bytes()).await;
    let (seq, p) = common::raw_read(s).await.expect("an answer");
    assert_eq!(p.first(), Some(&0xfb), "a file request: {p:?}");
    seq
}

async fn send_packet(s: &mut tokio::net::TcpStream, seq: u8, payload: &[u8]) {
    use tokio::io::AsyncWriteExt;
    let mut out = bytes::BytesMut::new();
    shardgate::protocol::packet::put_packet(&mut out, seq, payload);
    s.write_all(&out).await.expect("send");
}

/// Kills, on `server`, the connection running a LOAD DATA LOCAL.
fn kill_load(server: &LocalMariaDb) {
    let id = common::direct_query(
        server,
        "SELECT ID FROM information_schema.PROCESSLIST \
         WHERE INFO LIKE '%LOAD DATA LOCAL%' AND ID <> CONNECTION_ID()",
    );
    common::direct_query(server, &format!("KILL {}", id.trim()));
}

/// Reads the rest of a one-column result set (DEPRECATE_EOF: up to the 0xFE OK).
async fn drain_result(s: &mut tokio::net::TcpStream) {
    loop {
        let (_, p) = common::raw_read(s).await.expect("result packets");
        if p.first() == Some(&0xfe) && p.len() < 0xff_ffff {
            return;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_sequence_ids_a_refusal_and_a_backend_lost_mid_file() {
    let servers = common::start_servers(2);
    let toml = common::vschema_with_messages(&servers);
    let proxy = common::start_proxy(&toml).await;
    let (_, shard) = shard_of(&servers, &toml, 3);
    let addr = proxy.addr_string();
    let load =
        "/*workspace_id:3*/ LOAD DATA LOCAL INFILE 'f' INTO TABLE messages (workspace_id, body)";

    // Without CLIENT_LOCAL_FILES, the backend refuses as it would directly (4166).
    let mut s = common::raw_login(&addr, "app", "app", Some("app")).await;
    common::raw_query(&mut s, load.as_bytes()).await;
    let (_, p) = common::raw_read(&mut s).await.expect("an answer");
    assert_eq!(common::raw_err(&p).map(|e| e.0), Some(4166), "{p:?}");

    // Two file packets and the end: sequence ids 2, 3, 4, the OK is 5.
    let mut s =
        common::raw_login_with(&addr, "app", "app", Some("app"), caps::LOCAL_FILES, 45).await;
    assert_eq!(request_file(&mut s, load).await, 1);
    send_packet(&mut s, 2, b"3\tfirst\n").await;
    send_packet(&mut s, 3, b"3\tsecond\n").await;
    send_packet(&mut s, 4, b"").await;
    let (seq, p) = common::raw_read(&mut s).await.expect("the OK");
    assert_eq!((seq, p.first()), (5, Some(&0)), "{p:?}");
    assert_eq!(count(shard, "workspace_id = 3"), 2);

    // A refusal (the empty packet at once) gets the backend's own answer.
    assert_eq!(request_file(&mut s, load).await, 1);
    send_packet(&mut s, 2, b"").await;
    let (seq, p) = common::raw_read(&mut s).await.expect("the answer");
    let ok = shardgate::protocol::wire::parse_ok(&p).expect("an OK for no rows");
    assert_eq!((seq, ok.affected_rows), (3, 0));

    // The backend connection dies mid-file: the client gets an error, never an OK.
    assert_eq!(request_file(&mut s, load).await, 1);
    send_packet(&mut s, 2, b"3\tbefore the kill\n").await;
    kill_load(shard);
    let chunk = vec![b'q'; 64 * 1024];
    let mut seq = 3u8;
    for _ in 0..32 {
        send_packet(&mut s, seq, &[b"3\t".as_slice(), &chunk, b"\n"].concat()).await;
        seq = seq.wrapping_add(1);
    }
    send_packet(&mut s, seq, b"").await;
    let (_, p) = common::raw_read(&mut s)
        .await
        .expect("an answer, not a hang");
    let err = common::raw_err(&p).map(|e| e.0);
    assert!(
        matches!(err, Some(2013 | 1927)),
        "an error, not an OK: {p:?}"
    );
    assert_eq!(count(shard, "workspace_id = 3"), 2);
    // The session goes on (it held no transaction).
    common::raw_query(&mut s, b"SELECT 1").await;
    let (_, p) = common::raw_read(&mut s).await.expect("an answer");
    assert_eq!(p, [1], "a result set with one column: {p:?}");
    drain_result(&mut s).await;

    // The same inside a transaction: the error, then the connection closes (the
    // transaction is gone with its backend connection).
    common::raw_query(&mut s, b"/*workspace_id:3*/ BEGIN").await;
    let (_, p) = common::raw_read(&mut s).await.expect("BEGIN answered");
    assert_eq!(p.first(), Some(&0), "{p:?}");
    assert_eq!(request_file(&mut s, load).await, 1);
    send_packet(&mut s, 2, b"3\tin a transaction\n").await;
    kill_load(shard);
    let mut seq = 3u8;
    for _ in 0..32 {
        send_packet(&mut s, seq, &[b"3\t".as_slice(), &chunk, b"\n"].concat()).await;
        seq = seq.wrapping_add(1);
    }
    send_packet(&mut s, seq, b"").await;
    let (_, p) = common::raw_read(&mut s)
        .await
        .expect("an answer, not a hang");
    assert!(common::raw_err(&p).is_some(), "an error, not an OK: {p:?}");
    assert!(
        common::raw_read(&mut s).await.is_none(),
        "then the connection closes"
    );
    assert_eq!(count(shard, "workspace_id = 3"), 2);

    // Other clients are unaffected.
    let mut other = proxy.connect("app", Some("app")).await;
    let one: Option<i64> = other.query_first("SELECT 1").await.expect("SELECT 1");
    assert_eq!(one, Some(1));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_workspace_database_takes_a_file_without_a_tag() {
    let servers = common::start_servers(2);
    let toml = common::per_workspace_vschema(&servers);
    // Workspace 7 is pinned to 80-, on the second server.
    servers[1]
        .sql("CREATE DATABASE ws_7; CREATE TABLE ws_7.items (id INT, name TEXT)")
        .expect("create ws_7");
    let proxy = common::start_proxy(&toml).await;
    let mut conn = proxy.connect("app", Some("ws_7")).await;
    give(&mut conn, b"1\tone\n2\ttwo\n3\tthree\n".to_vec());
    tokio::time::timeout(
        Duration::from_secs(30),
        conn.query_drop("LOAD DATA LOCAL INFILE 'items.tsv' INTO TABLE items"),
    )
    .await
    .expect("within 30 s")
    .expect("LOAD DATA in a workspace database");
    assert_eq!(
        common::number_on(&servers[1], "SELECT COUNT(*) FROM ws_7.items"),
        3
    );
    conn.disconnect().await.expect("disconnect");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn local_infile_off_is_not_offered_and_the_backend_refuses() {
    let servers = common::start_servers(1);
    let toml = common::vschema_with_messages(&servers);
    let mut config = shardgate::config::ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        VSchema::from_toml_str(&toml).expect("vschema"),
    );
    config.migrations = None;
    config.local_infile = false;
    let proxy = common::start_proxy_config(config).await;
    let mut s = tokio::net::TcpStream::connect(proxy.addr)
        .await
        .expect("connect");
    let (_, g) = common::raw_read(&mut s).await.expect("greeting");
    let greeting = shardgate::protocol::handshake::parse_greeting(&g).expect("greeting");
    assert_eq!(greeting.capabilities & caps::LOCAL_FILES, 0, "not offered");
    // A client that sets it anyway does not get it towards the backend.
    let ok =
        common::raw_answer_greeting(&mut s, &g, "app", "app", Some("app"), caps::LOCAL_FILES, 45)
            .await;
    assert_eq!(ok.first(), Some(&0));
    common::raw_query(
        &mut s,
        b"/*workspace_id:3*/ LOAD DATA LOCAL INFILE 'f' INTO TABLE messages (workspace_id, body)",
    )
    .await;
    let (_, p) = common::raw_read(&mut s).await.expect("an answer");
    assert_eq!(common::raw_err(&p).map(|e| e.0), Some(4166), "{p:?}");
    common::raw_query(&mut s, b"SELECT 1").await;
    let (_, p) = common::raw_read(&mut s).await.expect("an answer");
    assert_eq!(p, [1], "still usable");
    proxy.stop().await;
}
