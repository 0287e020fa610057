//! Cause 12 of the driver-compatibility issue, as regression tests: what drivers saw
//! intermittently through shardgate and never directly. Each test runs the same steps
//! directly against the MariaDB and through shardgate (as a plain passthrough) and
//! compares what the client library reports:
//! - mysqlclient (libmariadb) connecting and sending `SET NAMES` at once, many times
//!   and from several threads (it reported `2027 Received malformed packet`);
//! - a multi-statement query with an error in the middle (mysql_async: the results
//!   before the error, then the error, then a usable connection);
//! - PyMySQL's `executemany` over a multi-statement-enabled connection (its row count).
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use common::passthrough::*;
use mysql_async::prelude::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysqlclient_connects_and_sets_names_at_once_without_malformed_packets() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    // 4 threads x 60 connections, each: connect with a charset, autocommit off, SET
    // NAMES right away, a parameter with a quote and a non-ASCII letter, a commit.
    let script = r#"
import sys, threading, MySQLdb
port, user = int(sys.argv[1]), sys.argv[2]
errors, answers = [], []
def worker(n):
    for i in range(60):
        try:
            c = MySQLdb.connect(host="127.0.0.1", port=port, user=user, passwd=user,
                                db="app", charset=["utf8", "utf8mb4", "latin1"][i % 3])
            c.autocommit(False)
            c.set_character_set("utf8mb4")
            cur = c.cursor()
            cur.execute("SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci")
            cur.execute("SELECT %s, @@character_set_client, @@collation_connection", ("e' x \u00e9",))
            answers.append(cur.fetchone())
            c.commit()
            c.close()
        except Exception as e:
            errors.append(repr(e))
threads = [threading.Thread(target=worker, args=(n,)) for n in range(4)]
for t in threads: t.start()
for t in threads: t.join()
print(len(errors), len(set(answers)), errors[:3], sorted(set(answers)))
"#;
    let (direct, via) = python_both(script, &servers[0], &proxy, false).await;
    assert!(direct.starts_with("0 1 []"), "MariaDB itself: {direct}");
    assert_eq!(via, direct, "through shardgate");
    proxy.stop().await;
}

/// What mysql_async reads from a multi-statement query: each result set's rows, then
/// the error that stopped it, then whether the connection still answers.
async fn multi_with_error(opts: mysql_async::Opts) -> Vec<String> {
    let mut c = mysql_async::Conn::new(opts).await.expect("connect");
    let mut seen = Vec::new();
    let sql = "SELECT 1 AS a; SELECT 2 AS b UNION SELECT 3; SELECT * FROM missing_table; SELECT 4";
    match c.query_iter(sql).await {
        Err(e) => seen.push(format!("error at once: {e}")),
        Ok(mut result) => loop {
            match result.collect::<u64>().await {
                Ok(rows) => seen.push(format!("rows {rows:?}")),
                Err(e) => {
                    seen.push(format!("error {e}"));
                    break;
                }
            }
            if result.is_empty() {
                break;
            }
        },
    }
    // Where the error surfaces is the driver's business; it must be the same.
    let after: Result<Option<u64>, _> = c.query_first("SELECT 5").await;
    seen.push(format!("after {after:?}"));
    let again: Option<u64> = c.query_first("SELECT 6").await.expect("usable after");
    seen.push(format!("again {again:?}"));
    c.disconnect().await.expect("disconnect");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_result_sets_with_an_error_in_the_middle_read_as_directly() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let (direct_opts, proxy_opts) = opts_both(&servers[0], &proxy, "app");
    let direct = multi_with_error(direct_opts).await;
    assert!(
        direct.iter().any(|s| s.contains("1146"))
            && direct.last().map(String::as_str) == Some("again Some(6)"),
        "MariaDB stops at the missing table: {direct:?}"
    );
    for _ in 0..20 {
        let via = multi_with_error(proxy_opts.clone()).await;
        assert_eq!(via, direct, "through shardgate");
    }
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pymysql_executemany_counts_rows_as_directly() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let script = r#"
import sys, pymysql
from pymysql.constants import CLIENT
port, user, table = int(sys.argv[1]), sys.argv[2], "em_" + sys.argv[3]
c = pymysql.connect(host="127.0.0.1", port=port, user=user, password=user, database="app",
                    client_flag=CLIENT.MULTI_STATEMENTS, autocommit=True)
cur = c.cursor()
cur.execute(f"DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id INT PRIMARY KEY, v VARCHAR(20))")
while cur.nextset():
    pass
out = []
# One multi-row INSERT (PyMySQL folds VALUES), then one statement per row (UPDATE).
out.append(cur.executemany(f"INSERT INTO {table} (id, v) VALUES (%s, %s)", [(i, f"v{i}") for i in range(50)]))
out.append(cur.executemany(f"UPDATE {table} SET v = %s WHERE id = %s", [("w", i) for i in range(0, 50, 5)]))
out.append(cur.executemany(f"INSERT INTO {table} (id, v) VALUES (%s, %s) ON DUPLICATE KEY UPDATE v = VALUES(v)", [(i, "x") for i in range(45, 55)]))
cur.execute(f"SELECT COUNT(*), SUM(v = 'w'), SUM(v = 'x') FROM {table}; DROP TABLE {table}")
out.append(tuple(int(x) for x in cur.fetchone()))
while cur.nextset():
    pass
print(out)
"#;
    let (direct, via) = python_both(script, &servers[0], &proxy, true).await;
    assert_eq!(direct, "[50, 10, 15, (55, 9, 10)]", "MariaDB itself");
    assert_eq!(via, direct, "through shardgate");
    proxy.stop().await;
}

/// A session's own `wait_timeout` ends it after that long without a command, as
/// MariaDB ends a direct connection (PyMySQL's suite: `test_connection_gone_away`);
/// commands in between keep it alive.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sessions_own_wait_timeout_ends_it_as_mariadb_does() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let script = r#"
import sys, time, pymysql
port, user = int(sys.argv[1]), sys.argv[2]
def connect():
    return pymysql.connect(host="127.0.0.1", port=port, user=user, password=user, database="app")
out = []
c = connect()
cur = c.cursor()
cur.execute("SET wait_timeout=1")
time.sleep(2.5)
try:
    cur.execute("SELECT 1+1")
    out.append("alive")
except pymysql.OperationalError as e:
    out.append(f"gone {e.args[0] in (2006, 2013)}")
c = connect()
cur = c.cursor()
cur.execute("SET SESSION wait_timeout = 3")
for _ in range(3):
    time.sleep(1.5)
    cur.execute("SELECT 1")
out.append(f"kept alive {cur.fetchone()[0]}")
cur.execute("SET @@session.wait_timeout = DEFAULT")
time.sleep(1.5)
cur.execute("SELECT @@wait_timeout > 3")
out.append(f"default {cur.fetchone()[0]}")
print(out)
"#;
    let (direct, via) = python_both(script, &servers[0], &proxy, false).await;
    assert_eq!(
        direct, "['gone True', 'kept alive 1', 'default 1']",
        "MariaDB itself"
    );
    assert_eq!(via, direct, "through shardgate");
    proxy.stop().await;
}

/// What mysql_async reads from a procedure with an OUT parameter, called as text and
/// as a prepared statement (the binary protocol answers OUT parameters as an extra
/// result set flagged `SERVER_PS_OUT_PARAMS`).
async fn call_with_out_params(opts: mysql_async::Opts) -> Vec<String> {
    let mut c = mysql_async::Conn::new(opts).await.expect("connect");
    c.query_drop("DROP PROCEDURE IF EXISTS double_it")
        .await
        .expect("drop");
    c.query_drop(
        "CREATE PROCEDURE double_it(IN a INT, OUT b INT) BEGIN SELECT a AS seen; SET b = a * 2; END",
    )
    .await
    .expect("create");
    let mut seen = Vec::new();
    c.query_drop("CALL double_it(21, @out)")
        .await
        .expect("call");
    let out: Option<i64> = c.query_first("SELECT @out").await.expect("@out");
    seen.push(format!("text {out:?}"));
    let mut result = c
        .exec_iter("CALL double_it(?, ?)", (5, 0))
        .await
        .expect("prepared call");
    while !result.is_empty() {
        let rows: Vec<mysql_async::Row> = result.collect().await.expect("rows");
        let values: Vec<String> = rows
            .iter()
            .map(|r| format!("{:?}", r.clone().unwrap()))
            .collect();
        seen.push(format!("set {values:?}"));
    }
    drop(result);
    let after: Option<u64> = c.query_first("SELECT 7").await.expect("usable after");
    seen.push(format!("after {after:?}"));
    c.query_drop("DROP PROCEDURE double_it")
        .await
        .expect("drop");
    c.disconnect().await.expect("disconnect");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stored_procedures_with_out_parameters_read_as_directly() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&passthrough_vschema(&servers[0])).await;
    let (direct_opts, proxy_opts) = opts_both(&servers[0], &proxy, "admin");
    let direct = call_with_out_params(direct_opts).await;
    assert_eq!(
        direct.first().map(String::as_str),
        Some("text Some(42)"),
        "{direct:?}"
    );
    let via = call_with_out_params(proxy_opts).await;
    assert_eq!(via, direct, "through shardgate");
    proxy.stop().await;
}
