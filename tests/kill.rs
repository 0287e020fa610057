//! `KILL` and `CONNECTION_ID()` speak of shardgate's own session ids, against real
//! MariaDB: `CONNECTION_ID()` is the handshake's id, `KILL QUERY` interrupts another
//! session's statement on its backend, `KILL` ends a session (and its transaction
//! rolls back on the server), only the same user or an admin may kill, and an unknown
//! id gets 1094.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::config::{PoolConfig, ProxyConfig, User};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;

/// Polls `sql` on `server` until it answers 0 (at most 10 s).
fn wait_for_zero(server: &LocalMariaDb, sql: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let n = common::number_on(server, sql);
        if n == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "`{sql}` still answers {n}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits until `KILL QUERY id` answers 1094: the session is gone from the registry.
async fn wait_unknown(conn: &mut mysql_async::Conn, id: u32) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match conn.query_drop(format!("KILL QUERY {id}")).await {
            Err(mysql_async::Error::Server(e)) if e.code == 1094 => return,
            other => assert!(
                Instant::now() < deadline,
                "session {id} still known: {other:?}"
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn start(servers: &[LocalMariaDb]) -> common::Proxy {
    let toml = common::vschema_with_messages(servers);
    let vschema = VSchema::from_toml_str(&toml).expect("test vschema");
    let mut users = common::test_users();
    users.push(User::new("other", "other", false));
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("addr"), users, vschema);
    config.pool = PoolConfig::default();
    config.max_client_connections = 1000;
    common::start_proxy_config(config).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_and_connection_id_use_shardgate_session_ids() {
    let servers = common::start_servers(1);
    let proxy = start(&servers).await;
    let mut a = proxy.connect("app", Some("app")).await;
    let mut b = proxy.connect("app", Some("app")).await;
    let mut other = proxy.connect("other", Some("app")).await;
    let mut admin = proxy.connect("admin", Some("app")).await;
    let a_id = a.id();

    // CONNECTION_ID() is the handshake's id, as an integer column.
    let rows: Vec<mysql_async::Row> = a.query("select connection_id();").await.expect("cid");
    let row = rows.first().expect("one row");
    assert_eq!(row.columns_ref()[0].name_str(), "CONNECTION_ID()");
    assert_eq!(
        row.columns_ref()[0].column_type(),
        mysql_async::consts::ColumnType::MYSQL_TYPE_LONGLONG
    );
    let cid: u32 = row.get(0).expect("a number");
    assert_eq!(cid, a_id);
    let b_cid: Option<u32> = b.query_first("SELECT CONNECTION_ID()").await.expect("cid");
    assert_eq!(b_cid, Some(b.id()));
    assert_ne!(a_id, b.id());

    // KILL QUERY from another session of the same user interrupts A's statement.
    let sleeper = tokio::spawn(async move {
        let started = Instant::now();
        let r = a.query_drop("SELECT SLEEP(30)").await;
        (a, r, started.elapsed())
    });
    tokio::time::sleep(Duration::from_millis(700)).await;
    b.query_drop(format!("KILL QUERY {a_id}"))
        .await
        .expect("KILL QUERY of a session of the same user");
    let (mut a, r, took) = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("A's statement should end soon after KILL QUERY")
        .expect("sleeper task");
    match r {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1317, "{e:?}"),
        other => panic!("expected 1317 for A's interrupted statement, got {other:?}"),
    }
    assert!(took < Duration::from_secs(10), "took {took:?}");
    let one: Option<u32> = a.query_first("SELECT 1").await.expect("A goes on");
    assert_eq!(one, Some(1));

    // Another non-admin user may not kill A; an unknown id is unknown.
    let (code, msg) = common::server_error(&mut other, &format!("KILL QUERY {a_id}")).await;
    assert_eq!(
        (code, msg),
        (1095, format!("You are not owner of thread {a_id}"))
    );
    let (code, _) = common::server_error(&mut other, &format!("KILL {a_id}")).await;
    assert_eq!(code, 1095);
    let (code, msg) = common::server_error(&mut other, "KILL 4000000").await;
    assert_eq!(
        (code, msg),
        (1094, "Unknown thread id: 4000000".to_string())
    );
    let (code, _) = common::server_error(&mut b, "KILL CONNECTION 4000000").await;
    assert_eq!(code, 1094);
    let one: Option<u32> = a.query_first("SELECT 1").await.expect("A untouched");
    assert_eq!(one, Some(1));

    // KILL ends A; its open transaction rolls back on the server.
    a.query_drop("BEGIN").await.expect("begin");
    a.query_drop("INSERT INTO messages (workspace_id, body) VALUES (1, 'killed-tx')")
        .await
        .expect("insert in A's transaction");
    let thread: Option<u64> = a
        .query_first("SELECT @@pseudo_thread_id")
        .await
        .expect("backend thread of A's transaction");
    let thread = thread.expect("a thread id");
    assert_eq!(
        common::number_on(
            &servers[0],
            &format!("SELECT COUNT(*) FROM information_schema.INNODB_TRX WHERE trx_mysql_thread_id = {thread}")
        ),
        1,
        "A's transaction is open on the server"
    );
    b.query_drop(format!("KILL {a_id}")).await.expect("KILL");
    assert!(a.query_drop("SELECT 1").await.is_err(), "A's session ended");
    wait_for_zero(
        &servers[0],
        &format!("SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = {thread}"),
    );
    wait_for_zero(
        &servers[0],
        "SELECT COUNT(*) FROM information_schema.INNODB_TRX",
    );
    assert_eq!(
        common::number_on(
            &servers[0],
            "SET SESSION TRANSACTION ISOLATION LEVEL READ UNCOMMITTED; \
             SELECT COUNT(*) FROM app.messages WHERE body = 'killed-tx'"
        ),
        0
    );
    wait_unknown(&mut b, a_id).await;

    // Admins may kill any session, also while it runs a statement.
    let o_id = other.id();
    let sleeper = tokio::spawn(async move { other.query_drop("SELECT SLEEP(30)").await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    admin
        .query_drop(format!("KILL CONNECTION {o_id}"))
        .await
        .expect("admin kills another user's session");
    let r = tokio::time::timeout(Duration::from_secs(10), sleeper)
        .await
        .expect("the killed session's statement ends soon")
        .expect("task");
    assert!(r.is_err(), "{r:?}");
    wait_unknown(&mut admin, o_id).await;
    admin
        .query_drop(format!("KILL QUERY {}", b.id()))
        .await
        .expect("admin KILL QUERY of an idle session");
    let one: Option<u32> = b.query_first("SELECT 1").await.expect("B goes on");
    assert_eq!(one, Some(1));

    // Killing itself ends the session with 1927.
    let b_id = b.id();
    let (code, _) = common::server_error(&mut b, &format!("KILL {b_id}")).await;
    assert_eq!(code, 1927);

    // A KILL that would reach a backend is still refused for a tenant.
    let mut c = proxy.connect("app", Some("app")).await;
    let (code, _) = common::server_error(&mut c, "EXECUTE IMMEDIATE 'KILL 5'").await;
    assert_eq!(code, 1227);
    drop(a);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_processlist_lists_the_users_own_sessions_with_shardgate_ids() {
    let servers = common::start_servers(1);
    let proxy = start(&servers).await;
    let mut a = proxy.connect("app", Some("app")).await;
    let mut b = proxy.connect("app", None).await;
    let mut other = mysql_async::Conn::new(common::mysql_opts(
        &proxy.addr_string(),
        "other",
        "other",
        Some("app"),
    ))
    .await
    .expect("other logs in");
    let mut admin = proxy.connect("admin", None).await;
    let id = |c: &mysql_async::Conn| u64::from(c.id());
    // b runs a long statement while a looks.
    let sleeper = tokio::spawn(async move {
        let r = b.query_first::<u64, _>("SELECT SLEEP(2)").await;
        (b, r)
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    type Row = (
        u64,
        String,
        String,
        Option<String>,
        String,
        u64,
        String,
        Option<String>,
        String,
    );
    let rows: Vec<Row> = a.query("SHOW FULL PROCESSLIST").await.expect("processlist");
    let ids: Vec<u64> = rows.iter().map(|r| r.0).collect();
    let (mut b_id, mut b_row) = (0, None);
    for r in &rows {
        assert_eq!(r.1, "app", "only the user's own sessions: {rows:?}");
        assert!(r.2.starts_with("127.0.0.1:"), "{r:?}");
        if r.7.as_deref() == Some("SELECT SLEEP(2)") {
            b_id = r.0;
            b_row = Some(r.clone());
        }
    }
    assert_eq!(ids.len(), 2, "a and b: {rows:?}");
    assert!(
        ids.contains(&id(&a)),
        "the ids are CONNECTION_ID()'s: {rows:?}"
    );
    let own = rows.iter().find(|r| r.0 == id(&a)).expect("own row");
    assert_eq!(
        (own.3.as_deref(), own.4.as_str(), own.7.as_deref()),
        (Some("app"), "Query", Some("SHOW FULL PROCESSLIST"))
    );
    let b_row = b_row.expect("b's running statement is listed");
    assert_eq!((b_row.3.as_deref(), b_row.4.as_str()), (None, "Query"));
    // The id is the one KILL QUERY takes: it interrupts b's sleep.
    a.query_drop(format!("KILL QUERY {b_id}"))
        .await
        .expect("kill b's query by its listed id");
    let (b, slept) = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("b returns")
        .expect("b task");
    match slept {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1317, "{}", e.message),
        other => panic!("b's statement should be interrupted: {other:?}"),
    }
    // `other` sees itself only; the admin sees everyone, idle sessions as Sleep.
    let theirs: Vec<Row> = other.query("SHOW PROCESSLIST").await.expect("other");
    assert_eq!(theirs.len(), 1, "{theirs:?}");
    assert_eq!((theirs[0].0, theirs[0].1.as_str()), (id(&other), "other"));
    let all: Vec<Row> = admin.query("SHOW PROCESSLIST").await.expect("admin");
    assert_eq!(all.len(), 4, "{all:?}");
    let idle = all.iter().find(|r| r.0 == id(&a)).expect("a listed");
    assert_eq!((idle.4.as_str(), idle.7.as_deref()), ("Sleep", None));
    drop((a, b, other, admin));
    proxy.stop().await;
}

/// A server that stops ends every session at its next wait for a command: an idle
/// one at once, and one whose client sends statement after statement after the
/// statement it runs (it never waits long enough to see the stop otherwise). The
/// proxy's stop returns long before its 10 s grace for sessions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopping_server_ends_idle_and_busy_sessions() {
    let servers = common::start_servers(1);
    let proxy = start(&servers).await;
    let mut idle = proxy.connect("app", Some("app")).await;
    idle.query_drop("SELECT 1")
        .await
        .expect("idle session answers");
    let mut busy = proxy.connect("app", Some("app")).await;
    let busy_task = tokio::spawn(async move {
        let mut answered = 0u64;
        loop {
            match busy.query_drop("SELECT 1").await {
                Ok(()) => answered += 1,
                Err(e) => return (answered, e),
            }
        }
    });
    // The busy client is mid-stream when the server stops.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let started = Instant::now();
    proxy.stop().await;
    let took = started.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "the proxy took {took:?} to stop with two open sessions"
    );
    let (answered, err) = tokio::time::timeout(Duration::from_secs(5), busy_task)
        .await
        .expect("the busy client learns of the stop")
        .expect("busy task");
    assert!(
        answered > 0,
        "the busy client ran statements before the stop"
    );
    assert!(
        !matches!(err, mysql_async::Error::Server(_)),
        "a stopped session closes its connection, got {err:?}"
    );
    let after = tokio::time::timeout(Duration::from_secs(5), idle.query_drop("SELECT 1"))
        .await
        .expect("the idle client's next statement fails at once");
    assert!(after.is_err(), "the idle session is gone after the stop");
}
