//! shardgate as a plain passthrough in front of one MariaDB (one unsharded default
//! keyspace, `ddl = "direct"`) behaves as MariaDB does: each test runs the same steps
//! directly against the MariaDB and through shardgate and compares, or asserts what
//! MariaDB was seen to do. Transactions and DDL, connection ids, `COM_SET_OPTION`, and
//! `@@socket`/`@@port` here; `COM_CHANGE_USER`, `COM_RESET_CONNECTION` and pooled
//! connections the server closed in `passthrough_session.rs`.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use common::passthrough::*;
use mysql_async::prelude::*;

/// Steps of the implicit-commit scenario; the answers must match MariaDB's.
const IMPLICIT_COMMIT: &[&str] = &[
    "DROP TABLE IF EXISTS ic, ic2",
    "CREATE TABLE ic (a INT) ENGINE=InnoDB",
    // An explicit transaction, then DDL: committed first.
    "BEGIN",
    "INSERT INTO ic VALUES (1)",
    "CREATE TABLE ic2 (a INT) ENGINE=InnoDB",
    "ROLLBACK",
    "SELECT COUNT(*) FROM ic",
    // A DDL that fails still commits.
    "BEGIN",
    "INSERT INTO ic VALUES (2)",
    "CREATE TABLE ic (a INT)",
    "ROLLBACK",
    "SELECT COUNT(*) FROM ic",
    // autocommit=0: an implicit transaction is open after any statement.
    "SET autocommit = 0",
    "INSERT INTO ic VALUES (3)",
    "ALTER TABLE ic2 ADD COLUMN b INT",
    "ROLLBACK",
    "SELECT COUNT(*) FROM ic",
    "INSERT INTO ic VALUES (4)",
    "TRUNCATE TABLE ic2",
    "ROLLBACK",
    "SELECT COUNT(*) FROM ic",
    "SET autocommit = 1",
    // A BEGIN with nothing run yet, then DDL.
    "BEGIN",
    "DROP TABLE ic2",
    "SELECT COUNT(*) FROM ic",
    // LOCK TABLES commits too.
    "BEGIN",
    "INSERT INTO ic VALUES (5)",
    "LOCK TABLES ic WRITE",
    "UNLOCK TABLES",
    "ROLLBACK",
    "SELECT COUNT(*) FROM ic",
    "DROP TABLE ic",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_inside_a_transaction_commits_it_first_as_mariadb_does() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let direct = servers[0].addr();
    let via = proxy.addr_string();
    let mut answers = Vec::new();
    for (addr, user) in [(direct.as_str(), "shardgate"), (via.as_str(), "app")] {
        let mut s = common::raw_login(addr, user, user, Some("app")).await;
        let mut got = Vec::new();
        for sql in IMPLICIT_COMMIT {
            // The status flags say whether a transaction is open (IN_TRANS), and
            // whether autocommit is on, after each statement.
            let a = exchange(&mut s, sql).await;
            got.push(format!("{sql} => {}", a.summary()));
        }
        answers.push(got);
    }
    for (d, p) in answers[0].iter().zip(&answers[1]) {
        assert_eq!(d, p, "direct (left) and through shardgate (right) differ");
    }
    // And what MariaDB does, spelled out: the DDL committed the INSERT before it.
    let want_counts = ["1", "2", "3", "4", "4", "5"];
    let counts: Vec<&String> = answers[1]
        .iter()
        .filter(|a| a.starts_with("SELECT COUNT"))
        .collect();
    for (c, want) in counts.iter().zip(want_counts) {
        assert!(c.ends_with(&format!("rows [[\"{want}\"]]")), "{c}");
    }
    let after_ddl = answers[1]
        .iter()
        .find(|a| a.starts_with("CREATE TABLE ic2"))
        .expect("step");
    assert!(after_ddl.contains("ok in_trans=false"), "{after_ddl}");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_with_autocommit_off_gets_ddl_committed_as_directly() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    // PyMySQL runs with autocommit off: every DDL follows an implicit transaction.
    let script = r#"
import sys, pymysql
c = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user=sys.argv[2], password=sys.argv[2], database="app")
cur = c.cursor()
cur.execute("DROP TABLE IF EXISTS pic")
cur.execute("CREATE TABLE pic (a INT) ENGINE=InnoDB")
cur.execute("INSERT INTO pic VALUES (1)")
cur.execute("CREATE INDEX pic_a ON pic (a)")
c.rollback()
cur.execute("SELECT COUNT(*) FROM pic")
n = cur.fetchone()[0]
in_trans = bool(c.server_status & 1)
cur.execute("DROP TABLE pic")
print(n, in_trans)
"#;
    let (direct, via) = python_both(script, &servers[0], &proxy, false).await;
    assert_eq!(direct, "1 False", "MariaDB itself");
    assert_eq!(via, direct, "through shardgate");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_in_a_database_the_vschema_does_not_list_follows_the_default_keyspace() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    common::direct_query(
        &servers[0],
        "CREATE DATABASE IF NOT EXISTS other; CREATE TABLE other.o (a INT)",
    );
    let mut s = common::raw_login(&proxy.addr_string(), "app", "app", Some("other")).await;
    // `ddl = "direct"`: answered by the backend's OK, not queued (a result set).
    for sql in [
        "ALTER TABLE o ADD COLUMN b INT",
        "CREATE INDEX o_a ON o (a)",
        "RENAME TABLE o TO o2",
        "TRUNCATE TABLE o2",
        "DROP TABLE o2",
    ] {
        let a = exchange(&mut s, sql).await;
        assert!(matches!(a, Answer::Ok { .. }), "{sql}: {a:?}");
    }
    let left = common::direct_query(&servers[0], "SHOW TABLES FROM other");
    assert_eq!(left.trim(), "", "the DDL ran at once on the backend");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connection_ids_agree_with_the_handshake() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let addr = proxy.addr_string();
    let mut conn = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("connect");
    let id = conn.id();
    let q = |sql: &'static str| sql;
    for sql in [
        q("SELECT CONNECTION_ID()"),
        q("SELECT CONNECTION_ID() AS id"),
        q("SELECT connection_id() + 0"),
        q("SELECT ID FROM information_schema.PROCESSLIST WHERE ID = CONNECTION_ID()"),
        q("SELECT p.ID FROM information_schema.PROCESSLIST p WHERE p.INFO LIKE 'SELECT p.ID%'"),
    ] {
        let got: Option<u64> = conn.query_first(sql).await.expect(sql);
        assert_eq!(got, Some(u64::from(id)), "{sql}");
    }
    // The column keeps the name the client wrote.
    let rows: Vec<mysql_async::Row> = conn
        .query("SELECT CONNECTION_ID() + 1, CONNECTION_ID() AS c")
        .await
        .expect("select");
    let names: Vec<String> = rows[0]
        .columns_ref()
        .iter()
        .map(|c| c.name_str().into_owned())
        .collect();
    assert_eq!(names, ["CONNECTION_ID() + 1", "c"]);
    // information_schema.PROCESSLIST shows an ordinary user its own sessions, as
    // MariaDB does without PROCESS: shardgate's ids, none of the backend's.
    let ids: Vec<u64> = conn
        .query("SELECT ID FROM information_schema.PROCESSLIST ORDER BY ID")
        .await
        .expect("processlist");
    assert_eq!(ids, vec![u64::from(id)]);
    let show: Vec<mysql_async::Row> = conn.query("SHOW PROCESSLIST").await.expect("show");
    assert_eq!(show.len(), 1);
    assert_eq!(show[0].get::<u64, _>(0), Some(u64::from(id)));
    // KILL with the handshake's id, from another session of the same user.
    let mut other = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("connect");
    other
        .query_drop(format!("KILL QUERY {id}"))
        .await
        .expect("KILL QUERY of the handshake's id");
    other
        .query_drop(format!("KILL {id}"))
        .await
        .expect("KILL of the handshake's id");
    let after = tokio::time::timeout(Duration::from_secs(5), conn.query_drop("SELECT 1"))
        .await
        .expect("bounded");
    assert!(after.is_err(), "the killed session is gone");
    drop(other);

    // PyMySQL: thread_id() and kill() use the same id.
    let script = r#"
import sys, pymysql
port = int(sys.argv[1])
a = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", database="app")
b = pymysql.connect(host="127.0.0.1", port=port, user="app", password="app", database="app")
cur = a.cursor()
cur.execute("SELECT CONNECTION_ID()")
same = cur.fetchone()[0] == a.thread_id()
b.kill(a.thread_id())
try:
    cur.execute("SELECT 1")
    killed = False
except pymysql.err.OperationalError:
    killed = True
print(same, killed)
"#;
    let out = python(script, &[&proxy.addr.port().to_string()]).await;
    assert_eq!(out, "True True");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_option_turns_multi_statements_on_and_off_as_mariadb_does() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let direct = servers[0].addr();
    let via = proxy.addr_string();
    let mut runs = Vec::new();
    for (addr, user) in [(direct.as_str(), "shardgate"), (via.as_str(), "app")] {
        // Logged in without CLIENT_MULTI_STATEMENTS (but with MULTI_RESULTS).
        let mut s = common::raw_login_with(
            addr,
            user,
            user,
            Some("app"),
            shardgate::protocol::caps::MULTI_RESULTS,
            45,
        )
        .await;
        let mut got = Vec::new();
        let multi = "SELECT 1; SELECT 2";
        got.push(format!("off: {}", exchange_all(&mut s, multi).await));
        got.push(format!("set on: {}", set_option(&mut s, 0).await));
        got.push(format!("on: {}", exchange_all(&mut s, multi).await));
        // Inside a transaction (a connection the session keeps).
        exchange(&mut s, "BEGIN").await;
        exchange(&mut s, "SELECT 1").await;
        got.push(format!("set off: {}", set_option(&mut s, 1).await));
        got.push(format!("off in tx: {}", exchange_all(&mut s, multi).await));
        got.push(format!("set on: {}", set_option(&mut s, 0).await));
        got.push(format!("on in tx: {}", exchange_all(&mut s, multi).await));
        exchange(&mut s, "ROLLBACK").await;
        got.push(format!("bad option: {}", set_option(&mut s, 7).await));
        runs.push(got);
    }
    assert_eq!(runs[0], runs[1], "direct (left), through shardgate (right)");
    assert!(runs[1][0].contains("err 1064"), "{}", runs[1][0]);
    assert!(
        runs[1][2].contains("rows [[\"1\"]]") && runs[1][2].contains("rows [[\"2\"]]"),
        "{}",
        runs[1][2]
    );
    assert!(runs[1][4].contains("err 1064"), "{}", runs[1][4]);

    // mysqlclient's set_server_option (0: on, 1: off).
    let script = r#"
import sys, MySQLdb
c = MySQLdb.connect(host="127.0.0.1", port=int(sys.argv[1]), user=sys.argv[2], passwd=sys.argv[2], db="app")
out = []
for opt in (1, 0):
    c.set_server_option(opt)
    cur = c.cursor()
    try:
        cur.execute("SELECT 1; SELECT 2")
        rows = [cur.fetchall()]
        while cur.nextset():
            rows.append(cur.fetchall())
        out.append(len(rows))
    except MySQLdb.Error as e:
        out.append(e.args[0])
    cur.close()
print(out)
"#;
    let (d, p) = python_both(script, &servers[0], &proxy, false).await;
    assert_eq!(d, "[1064, 2]", "MariaDB itself");
    assert_eq!(p, d, "through shardgate");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_port_and_hostname_are_shardgates_own() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let port = proxy.addr.port();
    // A backend account with the client's own name and password: a driver that
    // learned the backend's socket would get in straight to MariaDB with it.
    common::direct_query(
        &servers[0],
        "CREATE USER IF NOT EXISTS 'app'@'localhost' IDENTIFIED BY 'app'; \
         GRANT ALL ON *.* TO 'app'@'localhost'",
    );
    let mut s = common::raw_login(&proxy.addr_string(), "app", "app", Some("app")).await;
    let a = exchange(
        &mut s,
        "SELECT @@socket, @@global.socket, @@port, @@hostname IS NOT NULL, @@max_allowed_packet > 0",
    )
    .await;
    let Answer::Rows { columns, rows, .. } = a else {
        panic!("rows: {a:?}");
    };
    assert_eq!(
        columns,
        [
            "@@socket",
            "@@global.socket",
            "@@port",
            "@@hostname IS NOT NULL",
            "@@max_allowed_packet > 0"
        ]
    );
    assert_eq!(
        rows,
        vec![vec![
            None,
            None,
            Some(port.to_string()),
            Some("1".to_string()),
            Some("1".to_string())
        ]]
    );
    let a = exchange(&mut s, "SHOW VARIABLES LIKE 'port'").await;
    let Answer::Rows { columns, rows, .. } = a else {
        panic!("rows: {a:?}");
    };
    assert_eq!(columns, ["Variable_name", "Value"]);
    assert_eq!(
        rows,
        vec![vec![Some("port".to_string()), Some(port.to_string())]]
    );
    // mysql_async with its default prefer_socket asks for @@socket after connecting,
    // and reconnects over it when it gets one: it must stay with shardgate.
    let (host, _) = ("127.0.0.1", 0);
    let opts = mysql_async::OptsBuilder::default()
        .ip_or_hostname(host)
        .tcp_port(port)
        .user(Some("app"))
        .pass(Some("app"))
        .db_name(Some("app"))
        .prefer_socket(true);
    let mut conn = mysql_async::Conn::new(opts).await.expect("connect");
    let via_port: Option<u16> = conn.query_first("SELECT @@port").await.expect("port");
    assert_eq!(via_port, Some(port));
    let admin_only = conn.query_drop("SELECT COUNT(*) FROM mysql.user").await;
    assert!(
        admin_only.is_err(),
        "still shardgate's session (its checks)"
    );
    let direct_app = common::number_on(
        &servers[0],
        "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE USER = 'app'",
    );
    assert_eq!(
        direct_app, 0,
        "no connection of the client's reached MariaDB itself"
    );
    drop(conn);
    proxy.stop().await;
}

/// A new connection takes its session values from the globals as they are when it
/// opens. Through shardgate a new session is served by pooled connections opened
/// earlier, so a `SET GLOBAL` renews the pool: a session that starts afterwards sees
/// the new default, as it would directly (mysql_async's own suite checks this with
/// `wait_timeout`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_started_after_set_global_sees_the_new_default() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let before: u64 = {
        // Leaves idle connections in the pool, opened under the old globals.
        let mut c = proxy.connect("app", Some("app")).await;
        let v: Option<u64> = c
            .query_first("SELECT @@div_precision_increment")
            .await
            .expect("read");
        c.disconnect().await.expect("disconnect");
        v.expect("a value")
    };
    assert_eq!(before, 4, "MariaDB's default");
    let mut admin = proxy.connect("admin", Some("app")).await;
    admin
        .query_drop("SET GLOBAL div_precision_increment = 7")
        .await
        .expect("set global");
    for _ in 0..3 {
        let mut c = proxy.connect("app", Some("app")).await;
        let v: Option<u64> = c
            .query_first("SELECT @@div_precision_increment")
            .await
            .expect("read");
        assert_eq!(v, Some(7), "a new session sees the new global");
        c.disconnect().await.expect("disconnect");
    }
    admin
        .query_drop("SET GLOBAL div_precision_increment = 4")
        .await
        .expect("restore");
    admin.disconnect().await.expect("disconnect");
    proxy.stop().await;
}
