//! Sessions never share state through the pool, and never carry on as if nothing
//! happened when their state is lost. Two clients share one proxy whose pool has a
//! single backend connection per cluster, so every leak would show.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::config::PoolConfig;
use shardgate::vschema::VSchema;

fn pool(max: usize, checkout_ms: u64, query_timeout: Option<Duration>) -> PoolConfig {
    PoolConfig {
        max_connections: max,
        checkout_timeout: Duration::from_millis(checkout_ms),
        connect_timeout: Duration::from_secs(3),
        query_timeout,
        idle_timeout: Duration::from_secs(300),
        ..PoolConfig::default()
    }
}

/// The server's error code of a failed statement (None for a driver or I/O error).
fn code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// One server; keyspace `main` (unsharded, default) on it.
async fn setup(
    max: usize,
    checkout_ms: u64,
) -> (Vec<shardgate::demo::localdb::LocalMariaDb>, common::Proxy) {
    let servers = common::start_servers(1);
    let toml = common::sharded_vschema(&servers);
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let proxy = common::start_proxy_with(vs, pool(max, checkout_ms, None)).await;
    (servers, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replayed_variables_and_last_insert_id_follow_their_session_over_one_shared_connection() {
    let (_servers, proxy) = setup(1, 2000).await;
    let mut a = proxy.connect("app", Some("main")).await;
    let mut b = proxy.connect("app", Some("main")).await;
    a.query_drop("CREATE TABLE ids (id INT AUTO_INCREMENT PRIMARY KEY, who CHAR(1))")
        .await
        .expect("create");
    a.query_drop("SET @v = 'secret-a'").await.expect("set a");
    a.query_drop("INSERT INTO ids (who) VALUES ('a')")
        .await
        .expect("insert a");
    let a_id = a.last_insert_id().expect("a's id");
    let mut b_id = 0u64;
    for i in 0..100 {
        let (id, v): (u64, Option<String>) = a
            .query_first("SELECT LAST_INSERT_ID(), @v")
            .await
            .expect("a reads")
            .expect("a row");
        assert_eq!((id, v.as_deref()), (a_id, Some("secret-a")), "A, round {i}");
        let (id, v): (u64, Option<String>) = b
            .query_first("SELECT LAST_INSERT_ID(), @v")
            .await
            .expect("b reads")
            .expect("b row");
        assert_eq!((id, v), (b_id, None), "B never sees A's state, round {i}");
        if i == 50 {
            b.query_drop("INSERT INTO ids (who) VALUES ('b')")
                .await
                .expect("insert b");
            b_id = b.last_insert_id().expect("b's id");
            assert_ne!(b_id, a_id);
        }
    }
    // `INSERT ... VALUES (LAST_INSERT_ID())` uses the session's own value too.
    a.query_drop("INSERT INTO ids (who) VALUES ('c')")
        .await
        .expect("insert c");
    let c_id = a.last_insert_id().expect("c's id");
    b.query_drop("SELECT 1")
        .await
        .expect("b takes the connection");
    let (parent,): (u64,) = a
        .query_first("SELECT LAST_INSERT_ID()")
        .await
        .expect("a reads")
        .expect("row");
    assert_eq!(parent, c_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reserved_state_stays_with_its_session_and_never_reaches_another() {
    let (servers, proxy) = setup(1, 300).await;
    let mut a = proxy.connect("app", Some("main")).await;
    let mut b = proxy.connect("app", Some("main")).await;
    a.query_drop("CREATE TEMPORARY TABLE tmp (s VARCHAR(20))")
        .await
        .expect("temporary table");
    a.query_drop("INSERT INTO tmp VALUES ('secret-temp')")
        .await
        .expect("insert");
    let got: Option<i64> = a
        .query_first("SELECT GET_LOCK('lock-a', 0)")
        .await
        .expect("lock");
    assert_eq!(got, Some(1));
    a.query_drop("SELECT 'secret-into' INTO @w")
        .await
        .expect("into @w");
    // The backend's thread id (`CONNECTION_ID()` is shardgate's session id).
    let a_thread: Option<u64> = a
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .expect("id");
    let mut refused = 0;
    for i in 0..100 {
        let (s, lock, w): (String, Option<i64>, Option<String>) = a
            .query_first("SELECT s, IS_USED_LOCK('lock-a') = @@pseudo_thread_id, @w FROM tmp")
            .await
            .expect("a keeps its state")
            .expect("row");
        assert_eq!(
            (s.as_str(), lock, w.as_deref()),
            ("secret-temp", Some(1), Some("secret-into")),
            "round {i}"
        );
        if i % 10 == 0 {
            // B gets no connection while A's is reserved (the pool has one), or one that
            // has none of A's state; it never sees A's rows.
            match b.query_first::<String, _>("SELECT s FROM tmp").await {
                Ok(row) => panic!("B read A's temporary table: {row:?}"),
                Err(e) => {
                    assert!(
                        matches!(code(&e), Some(1105) | Some(1146)),
                        "round {i}: {e:?}"
                    );
                    refused += 1;
                }
            }
        }
    }
    assert_eq!(refused, 10);
    let same: Option<u64> = a
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .expect("id");
    assert_eq!(same, a_thread, "A kept one backend connection throughout");
    drop(a);

    // A is gone: B gets a clean connection (the server may take a moment to notice the
    // old one closed and free the lock).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match b
            .query_first::<(Option<i64>, Option<String>), _>("SELECT IS_FREE_LOCK('lock-a'), @w")
            .await
        {
            Ok(Some((Some(1), None))) => break,
            Ok(other) if Instant::now() < deadline => {
                assert!(
                    !matches!(&other, Some((_, Some(_)))),
                    "B sees A's variable: {other:?}"
                );
            }
            Err(e) if Instant::now() < deadline && code(&e) == Some(1105) => {}
            other => panic!("B should get a clean connection after A quit: {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let e = b
        .query_drop("SELECT s FROM tmp")
        .await
        .expect_err("A's temporary table is gone");
    assert_eq!(code(&e), Some(1146), "{e:?}");
    let direct = common::direct_query(&servers[0], "SELECT IS_FREE_LOCK('lock-a')");
    assert_eq!(direct.trim(), "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_drops_temporary_tables_locks_and_variables() {
    let (servers, proxy) = setup(2, 2000).await;
    let mut a = proxy.connect("app", Some("main")).await;
    a.query_drop("CREATE TEMPORARY TABLE tmp (s INT)")
        .await
        .expect("temporary table");
    a.query_drop("SELECT GET_LOCK('lock-r', 0)")
        .await
        .expect("lock");
    let busy = common::direct_query(&servers[0], "SELECT IS_FREE_LOCK('lock-r')");
    assert_eq!(busy.trim(), "0");
    a.reset().await.expect("COM_RESET_CONNECTION");
    let e = a
        .query_drop("SELECT * FROM tmp")
        .await
        .expect_err("temporary table dropped");
    assert_eq!(code(&e), Some(1146), "{e:?}");
    let free = common::direct_query(&servers[0], "SELECT IS_FREE_LOCK('lock-r')");
    assert_eq!(free.trim(), "1");

    a.query_drop("SET @v = 1").await.expect("set");
    a.query_drop("SELECT 'x' INTO @w").await.expect("into");
    a.reset().await.expect("COM_RESET_CONNECTION");
    let vars: Option<(Option<i64>, Option<String>)> =
        a.query_first("SELECT @v, @w").await.expect("select");
    assert_eq!(vars, Some((None, None)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_whose_connection_died_is_never_committed() {
    let (servers, proxy) = setup(4, 2000).await;
    let mut a = proxy.connect("app", Some("main")).await;
    a.query_drop("CREATE TABLE t (id INT PRIMARY KEY) ENGINE=InnoDB")
        .await
        .expect("create");
    a.query_drop("BEGIN").await.expect("begin");
    a.query_drop("INSERT INTO t VALUES (1)").await.expect("1");
    a.query_drop("INSERT INTO t VALUES (2)").await.expect("2");
    let thread: u64 = a
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .expect("id")
        .expect("row");
    common::direct_query(&servers[0], &format!("KILL {thread}"));
    let third = a.query_drop("INSERT INTO t VALUES (3)").await;
    assert!(
        third.is_err(),
        "the statement after the loss fails: {third:?}"
    );
    let fourth = a.query_drop("INSERT INTO t VALUES (4)").await;
    assert!(
        fourth.is_err(),
        "no statement runs as if the transaction were still open: {fourth:?}"
    );
    let commit = a.query_drop("COMMIT").await;
    assert!(commit.is_err(), "COMMIT must not succeed: {commit:?}");
    let rows = common::direct_query(&servers[0], "SELECT COUNT(*) FROM main.t");
    assert_eq!(rows.trim(), "0", "nothing of the transaction was committed");

    // A new session works.
    let mut fresh = proxy.connect("app", Some("main")).await;
    fresh
        .query_drop("INSERT INTO t VALUES (5)")
        .await
        .expect("a new session works");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_timeout_after_rows_were_relayed_closes_the_client_without_a_stray_packet() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let servers = common::start_servers(1);
    let toml = common::sharded_vschema(&servers);
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let proxy =
        common::start_proxy_with(vs, pool(4, 2000, Some(Duration::from_millis(1500)))).await;
    let mut s = common::raw_login(&proxy.addr_string(), "app", "app", Some("main")).await;
    // The first row is big enough that MariaDB flushes it before it sleeps on the
    // second.
    let sql = "SELECT IF(seq = 1, REPEAT('x', 300000), SLEEP(5)) AS v FROM seq_1_to_2";
    let mut out = bytes::BytesMut::new();
    let mut p = vec![0x03];
    p.extend_from_slice(sql.as_bytes());
    shardgate::protocol::packet::put_packet(&mut out, 0, &p);
    s.write_all(&out).await.expect("send");
    let started = Instant::now();
    let mut packets = Vec::new();
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let closed = loop {
        match tokio::time::timeout(Duration::from_secs(15), s.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(n)) => buf.extend_from_slice(&chunk[..n]),
            Err(_) => break false,
        }
        while buf.len() >= 4 {
            let len = buf[0] as usize | (buf[1] as usize) << 8 | (buf[2] as usize) << 16;
            if buf.len() < 4 + len {
                break;
            }
            packets.push((buf[3], buf[4..4 + len].to_vec()));
            buf.drain(..4 + len);
        }
    };
    assert!(closed, "the client connection is closed");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "within the query timeout"
    );
    assert!(!packets.is_empty(), "the result set had started");
    for (i, (seq, _)) in packets.iter().enumerate() {
        assert_eq!(*seq as usize, i + 1, "packets arrive in sequence");
    }
    assert!(
        packets
            .iter()
            .skip(1)
            .all(|(_, p)| p.as_slice().first() != Some(&0xff)),
        "no ERR packet after the result set started: {:?}",
        packets
            .iter()
            .map(|(_, p)| p.as_slice().first().copied())
            .collect::<Vec<_>>()
    );
    assert!(
        packets.len() < 5,
        "the sleeping second row never came: {}",
        packets.len()
    );
    // The proxy goes on serving others.
    let mut other = proxy.connect("app", Some("main")).await;
    let one: Option<i64> = other.query_first("SELECT 1").await.expect("select");
    assert_eq!(one, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn questions_about_the_previous_statement_reach_its_connection_and_no_other_session() {
    let (_servers, proxy) = setup(2, 2000).await;
    let mut a = proxy.connect("app", Some("main")).await;
    let mut b = proxy.connect("app", Some("main")).await;
    a.query_drop("CREATE TABLE r (id INT PRIMARY KEY, n INT)")
        .await
        .expect("create");
    a.query_drop("INSERT INTO r SELECT seq, 0 FROM seq_1_to_20")
        .await
        .expect("fill");

    // Warnings: A idles longer than any time-based hold while B works; A's SHOW
    // WARNINGS still shows A's warning, and B's warnings stay B's.
    let n: Option<i64> = a
        .query_first("SELECT CAST('12abc' AS SIGNED)")
        .await
        .expect("cast");
    assert_eq!(n, Some(12));
    let busy = Instant::now();
    while busy.elapsed() < Duration::from_secs(6) {
        b.query_drop("SELECT CAST('7zzz' AS SIGNED)")
            .await
            .expect("b works");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let warnings: Vec<(String, u32, String)> = a.query("SHOW WARNINGS").await.expect("show");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(
        warnings[0].2.contains("12abc"),
        "A's own warning: {warnings:?}"
    );
    let count: Option<i64> = b
        .query_first("SELECT @@warning_count")
        .await
        .expect("count");
    assert_eq!(count, Some(1));

    // FOUND_ROWS() after SQL_CALC_FOUND_ROWS, with B's own in between.
    let _: Vec<i64> = a
        .query("SELECT SQL_CALC_FOUND_ROWS id FROM r LIMIT 2")
        .await
        .expect("calc a");
    let _: Vec<i64> = b
        .query("SELECT SQL_CALC_FOUND_ROWS id FROM r WHERE id <= 7 LIMIT 1")
        .await
        .expect("calc b");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let a_found: Option<i64> = a.query_first("SELECT FOUND_ROWS()").await.expect("a");
    let b_found: Option<i64> = b.query_first("SELECT FOUND_ROWS()").await.expect("b");
    assert_eq!((a_found, b_found), (Some(20), Some(7)));

    // ROW_COUNT() is A's, or (if B took A's connection meanwhile) that of a statement
    // that did nothing, never B's.
    for _ in 0..20 {
        a.query_drop("UPDATE r SET n = n + 1 WHERE id <= 3")
            .await
            .expect("a update");
        b.query_drop("UPDATE r SET n = n + 1 WHERE id <= 5")
            .await
            .expect("b update");
        let a_count: Option<i64> = a.query_first("SELECT ROW_COUNT()").await.expect("a");
        assert!(matches!(a_count, Some(3) | Some(-1)), "{a_count:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_multi_statement_query_with_invalid_utf8_is_split_on_its_own_bytes() {
    let servers = common::start_servers(2);
    let toml = common::sharded_vschema(&servers);
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let ks = vs.keyspace("app").expect("app");
    let on = |c: &str| {
        (1..1000u64)
            .find(|&w| ks.shard_for_workspace(w).cluster == c)
            .expect("a workspace on the cluster")
    };
    let (first, second) = (on("c1"), on("c2"));
    let proxy = common::start_proxy_with(vs, pool(4, 2000, None)).await;
    // latin1 (collation 8): byte 0xe9 is 'é' for MariaDB, but not UTF-8.
    let mut s = common::raw_login_with(
        &proxy.addr_string(),
        "app",
        "app",
        Some("app"),
        shardgate::protocol::caps::MULTI_STATEMENTS | shardgate::protocol::caps::MULTI_RESULTS,
        8,
    )
    .await;
    common::raw_query(&mut s, b"SET @a='\xe9'; SET @b=22222").await;
    for i in 0..2 {
        let (_, p) = common::raw_read(&mut s)
            .await
            .expect("an answer, not a dropped session");
        assert_eq!(
            p.as_slice().first(),
            Some(&0x00),
            "statement {i} answered OK: {p:?}"
        );
    }
    // Each variable reaches the session's connections on both clusters exactly as sent.
    for ws in [first, second] {
        let sql = format!("SELECT HEX(@a), @b /*workspace_id:{ws}*/");
        common::raw_query(&mut s, sql.as_bytes()).await;
        let mut packets = Vec::new();
        loop {
            let (_, p) = common::raw_read(&mut s).await.expect("result");
            let end = p.as_slice().first() == Some(&0xfe) && p.len() < 0xffffff;
            packets.push(p);
            if end || packets.last().and_then(|p| p.as_slice().first()) == Some(&0xff) {
                break;
            }
        }
        // column count, two column definitions, one row, the closing OK.
        assert_eq!(packets.len(), 5, "workspace {ws}: {packets:?}");
        let row = &packets[3];
        assert_eq!(row.as_slice(), b"\x02E9\x0522222", "workspace {ws}");
    }
}
