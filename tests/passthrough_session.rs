//! shardgate as a plain passthrough (see `passthrough.rs`): `COM_CHANGE_USER` and
//! `COM_RESET_CONNECTION` reset the session as MariaDB does, and pooled backend
//! connections that MariaDB closed (`wait_timeout`) never reach a client.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::passthrough::*;
use mysql_async::prelude::*;
use shardgate::config::PoolConfig;

/// A session with state everywhere (a temporary table, a user variable, a session
/// variable, a named lock, an open transaction), then `change_user` with a wrong
/// password, then with the right one; prints what each step left. Run the same
/// against MariaDB and through shardgate.
const CHANGE_USER: &str = r#"
import sys, MySQLdb
port, user, pw, user2, pw2 = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4], sys.argv[5]
c = MySQLdb.connect(host="127.0.0.1", port=port, user=user, passwd=pw, db="app")
c.autocommit(True)
cur = c.cursor()
cur.execute("CREATE TABLE IF NOT EXISTS cu (a INT) ENGINE=InnoDB")
cur.execute("DELETE FROM cu")
def state():
    cur = c.cursor()
    cur.execute("SELECT @v, @@session.sql_mode = 'ANSI_QUOTES', DATABASE(), @@in_transaction, (SELECT COUNT(*) FROM cu)")
    row = list(cur.fetchone())
    try:
        cur.execute("SELECT COUNT(*) FROM tmp")
        row.append("tmp")
    except MySQLdb.Error as e:
        row.append(e.args[0])
    return row
def dirty():
    cur = c.cursor()
    cur.execute("CREATE TEMPORARY TABLE tmp (a INT)")
    cur.execute("SET @v = 5")
    cur.execute("SET SESSION sql_mode = 'ANSI_QUOTES'")
    cur.execute("BEGIN")
    cur.execute("INSERT INTO cu VALUES (1)")
out = []
dirty()
out.append(state())
try:
    c.change_user(user2, "wrong", "app")
    out.append("accepted")
except MySQLdb.Error as e:
    out.append(e.args[0])
out.append(state())
dirty()
c.change_user(user2, pw2, "app")
out.append(state())
cur = c.cursor()
cur.execute("DROP TABLE cu")
print(out)
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_user_resets_the_session_and_refuses_a_wrong_password_as_mariadb() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    common::direct_query(
        &servers[0],
        "CREATE USER IF NOT EXISTS 'other'@'%' IDENTIFIED BY 'other'; GRANT ALL ON *.* TO 'other'@'%'",
    );
    let port = servers[0].socket_addr().port().to_string();
    let direct = python(
        CHANGE_USER,
        &[&port, "shardgate", "shardgate", "other", "other"],
    )
    .await;
    let port = proxy.addr.port().to_string();
    let via = python(CHANGE_USER, &[&port, "app", "app", "admin", "admin"]).await;
    // What MariaDB did: the wrong password gets 1045 and the session goes on, reset
    // (no @v, default sql_mode, no transaction, its INSERT rolled back, tmp gone) in
    // its database; the right one resets it the same way.
    assert_eq!(
        direct,
        "[[5, 1, 'app', 1, 1, 'tmp'], 1045, [None, 0, 'app', 0, 0, 1146], [None, 0, 'app', 0, 0, 1146]]",
        "MariaDB itself"
    );
    assert_eq!(via, direct, "through shardgate");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_user_takes_the_new_users_rights_and_database() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    common::direct_query(&servers[0], "CREATE DATABASE IF NOT EXISTS other");
    let addr = proxy.addr_string();
    let mut conn = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("connect");
    let admin_only = "SELECT COUNT(*) > 0 FROM mysql.user";
    assert!(
        conn.query_drop(admin_only).await.is_err(),
        "app is no admin"
    );
    conn.query_drop("SET @v = 1").await.expect("set");
    conn.change_user(
        mysql_async::ChangeUserOpts::default()
            .with_user(Some("admin".into()))
            .with_pass(Some("admin".into()))
            .with_db_name(Some("other".into())),
    )
    .await
    .expect("change to admin");
    let ok: Option<bool> = conn.query_first(admin_only).await.expect("admin may");
    assert_eq!(ok, Some(true));
    let db: Option<String> = conn.query_first("SELECT DATABASE()").await.expect("db");
    assert_eq!(db.as_deref(), Some("other"));
    let v: Option<Option<i64>> = conn.query_first("SELECT @v").await.expect("v");
    assert_eq!(v, Some(None), "user variables are reset");
    let me: Option<(u64, String)> = conn
        .query_first(
            "SELECT ID, USER FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()",
        )
        .await
        .expect("processlist");
    assert_eq!(me, Some((u64::from(conn.id()), "admin".to_string())));
    // And back, with a wrong password: refused, the session stays admin's.
    let wrong = conn
        .change_user(
            mysql_async::ChangeUserOpts::default()
                .with_user(Some("app".into()))
                .with_pass(Some("nope".into())),
        )
        .await;
    match wrong {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1045),
        other => panic!("a wrong password must get 1045: {other:?}"),
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_drops_every_kind_of_session_state() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let direct = servers[0].addr();
    let via = proxy.addr_string();
    let mut runs = Vec::new();
    for (addr, user) in [(direct.as_str(), "shardgate"), (via.as_str(), "app")] {
        let opts = common::mysql_opts(addr, user, user, Some("app"));
        let mut conn = mysql_async::Conn::new(opts.clone()).await.expect("connect");
        let mut other = mysql_async::Conn::new(opts).await.expect("connect");
        conn.query_drop("CREATE TABLE IF NOT EXISTS rc (a INT) ENGINE=InnoDB")
            .await
            .expect("create");
        for sql in [
            "CREATE TEMPORARY TABLE tmp (a INT)",
            "SET @v = 5",
            "SET SESSION sql_mode = 'ANSI_QUOTES'",
            "SELECT GET_LOCK('rc_lock', 0)",
            "BEGIN",
            "INSERT INTO rc VALUES (1)",
        ] {
            conn.query_drop(sql).await.expect(sql);
        }
        assert!(
            conn.reset().await.expect("reset"),
            "COM_RESET_CONNECTION used"
        );
        let row: Option<(Option<i64>, i64, Option<String>, i64)> = conn
            .query_first(
                "SELECT @v, @@session.sql_mode = 'ANSI_QUOTES', DATABASE(), @@in_transaction",
            )
            .await
            .expect("state");
        let tmp = conn.query_drop("SELECT * FROM tmp").await.is_ok();
        let lock_free: Option<i64> = other
            .query_first("SELECT IS_FREE_LOCK('rc_lock')")
            .await
            .expect("lock");
        let rows: Option<i64> = other
            .query_first("SELECT COUNT(*) FROM rc")
            .await
            .expect("rows");
        conn.query_drop("DROP TABLE rc").await.expect("drop");
        runs.push(format!(
            "{row:?} tmp={tmp} lock_free={lock_free:?} rows={rows:?}"
        ));
    }
    assert_eq!(
        runs[0], "Some((None, 0, Some(\"app\"), 0)) tmp=false lock_free=Some(1) rows=Some(0)",
        "MariaDB itself"
    );
    assert_eq!(runs[1], runs[0], "through shardgate");

    // Raw COM_RESET_CONNECTION (a client without an API for it).
    let mut s = common::raw_login(&via, "app", "app", Some("app")).await;
    exchange(&mut s, "SET @w = 7").await;
    exchange(&mut s, "CREATE TEMPORARY TABLE tmp2 (a INT)").await;
    {
        use tokio::io::AsyncWriteExt;
        let mut out = bytes::BytesMut::new();
        shardgate::protocol::packet::put_packet(&mut out, 0, &[0x1f]);
        s.write_all(&out).await.expect("send");
    }
    assert!(matches!(read_answer(&mut s).await, Answer::Ok { .. }));
    let a = exchange(&mut s, "SELECT @w").await;
    assert!(
        matches!(&a, Answer::Rows { rows, .. } if rows == &vec![vec![None]]),
        "{a:?}"
    );
    let a = exchange(&mut s, "SELECT * FROM tmp2").await;
    assert_eq!(a, Answer::Err { code: 1146 });
    proxy.stop().await;
}

/// Runs `sql` on every connection at once (so the pool opens several); gives each
/// connection back with its result.
async fn all_at_once(
    conns: &mut Vec<mysql_async::Conn>,
    sql: &'static str,
) -> Vec<(mysql_async::Conn, mysql_async::Result<()>)> {
    let mut set = tokio::task::JoinSet::new();
    for mut c in conns.drain(..) {
        set.spawn(async move {
            let r = tokio::time::timeout(Duration::from_secs(10), c.query_drop(sql))
                .await
                .expect("query within 10 s");
            (c, r)
        });
    }
    let mut out = Vec::new();
    while let Some(done) = set.join_next().await {
        out.push(done.expect("query task"));
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pooled_connections_closed_by_wait_timeout_never_reach_a_client() {
    let servers = common::start_servers(1);
    let toml = passthrough_vschema(&servers[0]);
    // New backend connections time out after 1 s idle.
    common::direct_query(&servers[0], "SET GLOBAL wait_timeout = 1");
    let vschema = shardgate::vschema::VSchema::from_toml_str(&toml).expect("vschema");
    let proxy = common::start_proxy_with(vschema, PoolConfig::default()).await;
    let addr = proxy.addr_string();
    let mut conns = Vec::new();
    for _ in 0..4 {
        let c = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
            .await
            .expect("connect");
        conns.push(c);
    }
    let mut errors = Vec::new();
    for round in 0..3 {
        // Every session at once: several pooled connections.
        for (c, r) in all_at_once(&mut conns, "SELECT SLEEP(0.05)").await {
            conns.push(c);
            if let Err(e) = r {
                errors.push((round, e.to_string()));
            }
        }
        // Long enough for MariaDB to close every idle backend connection.
        tokio::time::sleep(Duration::from_millis(2500)).await;
    }
    assert!(errors.is_empty(), "errors: {errors:?}");
    // Ruby's mysql2 (libmariadb), which reported a lost backend as "malformed packet".
    let script = r#"
require "mysql2"
c = Mysql2::Client.new(host: "127.0.0.1", port: ARGV[0].to_i, username: "app", password: "app", database: "app")
out = []
3.times do
  out << c.query("SELECT 1 AS one").first["one"]
  sleep 2.5
end
puts out.join(",")
"#;
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("/usr/bin/ruby")
            .args(["-e", script, &proxy.addr.port().to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("ruby within 60 s")
    .expect("run ruby");
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "1,1,1",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    common::direct_query(&servers[0], "SET GLOBAL wait_timeout = 28800");
    drop(conns);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pooled_connections_are_closed_after_idle_timeout() {
    let servers = common::start_servers(1);
    let toml = passthrough_vschema(&servers[0]);
    let vschema = shardgate::vschema::VSchema::from_toml_str(&toml).expect("vschema");
    let pool = PoolConfig {
        idle_timeout: Duration::from_secs(2),
        ..PoolConfig::default()
    };
    let proxy = common::start_proxy_with(vschema, pool).await;
    let addr = proxy.addr_string();
    let count = || {
        common::number_on(
            &servers[0],
            "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'shardgate' AND DB = 'app'",
        )
    };
    let mut conns = Vec::new();
    for _ in 0..3 {
        conns.push(
            mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
                .await
                .expect("connect"),
        );
    }
    for (c, r) in all_at_once(&mut conns, "SELECT SLEEP(0.2)").await {
        r.expect("query");
        conns.push(c);
    }
    assert!(count() >= 2, "pooled backend connections are open");
    // The clients stay connected; their backend connections sit idle in the pool.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while count() > 0 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "idle connections still open after 10 s with idle_timeout_s = 2: {}",
            count()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    // And a session still works afterwards.
    conns[0].query_drop("SELECT 1").await.expect("query");
    drop(conns);
    proxy.stop().await;
}

/// `COM_RESET_CONNECTION` from a second client library, Oracle's mysql-connector-python
/// (`cmd_reset_connection()`, in the virtualenv `scripts/ensure-deps` makes): every kind
/// of session state is gone afterwards, as on a direct connection, and a lock the
/// session held is free for another session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_connection_from_mysql_connector_python_reads_as_directly() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    servers[0]
        .sql("CREATE TABLE IF NOT EXISTS app.rc (a INT) ENGINE=InnoDB")
        .expect("table");
    let script = r#"
import sys, mysql.connector
port, user = int(sys.argv[1]), sys.argv[2]
def connect():
    return mysql.connector.connect(host="127.0.0.1", port=port, user=user, password=user,
                                   database="app", use_pure=True)
c = connect()
cur = c.cursor()
cur.execute("CREATE TEMPORARY TABLE tmp_rc (a INT)")
cur.execute("SET @v = 42, SESSION sql_mode = 'ANSI_QUOTES'")
cur.execute("SELECT GET_LOCK('rc_lock', 0)")
got = cur.fetchall()[0][0]
cur.execute("START TRANSACTION")
cur.execute("INSERT INTO rc VALUES (1)")
cur.close()
c.cmd_reset_connection()
cur = c.cursor()
out = [got]
try:
    cur.execute("SELECT * FROM tmp_rc")
    cur.fetchall()
    out.append("tmp kept")
except mysql.connector.Error as e:
    out.append(e.errno)
cur.execute("SELECT @v, @@sql_mode LIKE '%ANSI_QUOTES%', @@in_transaction")
out.append(tuple(cur.fetchall()[0]))
other = connect()
oc = other.cursor()
oc.execute("SELECT GET_LOCK('rc_lock', 0), (SELECT COUNT(*) FROM rc)")
out.append(tuple(oc.fetchall()[0]))
oc.execute("DO RELEASE_LOCK('rc_lock')")
print(out)
"#;
    let (direct, via) = python_in_venv_both(script, &servers[0], &proxy).await;
    assert_eq!(direct, "[1, 1146, (None, 0, 0), (1, 0)]", "MariaDB itself");
    assert_eq!(via, direct, "through shardgate");
    proxy.stop().await;
}
