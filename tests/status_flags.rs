//! The OK packets shardgate builds itself (`SET autocommit`, a deferred `BEGIN`, a
//! `COMMIT` with nothing to commit) carry the session's `NO_BACKSLASH_ESCAPES` status
//! flag as the backend reports it: clients escape strings by that flag, and a wrong one
//! turned a bound parameter into SQL (real MariaDB; raw packets, and mysqlclient on
//! libmariadb).
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use shardgate::protocol::status;
use shardgate::protocol::wire;

/// The status flags of the OK answering `sql` on a raw, logged-in connection.
async fn ok_status(s: &mut tokio::net::TcpStream, sql: &str) -> u16 {
    common::raw_query(s, sql.as_bytes()).await;
    let (_, p) = common::raw_read(s).await.expect("an answer");
    wire::parse_ok(&p)
        .unwrap_or_else(|| panic!("{sql}: not an OK: {p:?}"))
        .status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shardgates_own_ok_packets_carry_no_backslash_escapes() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&common::sharded_vschema(&servers)).await;
    let addr = proxy.addr_string();
    let mut s = common::raw_login(&addr, "app", "app", Some("app")).await;
    let nbe = status::NO_BACKSLASH_ESCAPES;
    assert_eq!(ok_status(&mut s, "SET autocommit = 1").await & nbe, 0);
    // The backend's own answer has the flag once the mode is set ...
    let set = ok_status(&mut s, "SET sql_mode = 'NO_BACKSLASH_ESCAPES'").await;
    assert_ne!(set & nbe, 0, "MariaDB's own OK: {set:#06x}");
    // ... and so do the OKs shardgate answers without asking a backend.
    for sql in [
        "SET autocommit = 0",
        "COMMIT",
        "SET autocommit = 1",
        "BEGIN",
        "ROLLBACK",
    ] {
        let st = ok_status(&mut s, sql).await;
        assert_ne!(st & nbe, 0, "{sql}: {st:#06x}");
    }
    // Back to the default mode: the flag goes away again.
    assert_eq!(ok_status(&mut s, "SET sql_mode = DEFAULT").await & nbe, 0);
    assert_eq!(ok_status(&mut s, "SET autocommit = 0").await & nbe, 0);
    drop(s);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libmariadb_escapes_a_bound_parameter_for_the_real_sql_mode() {
    let servers = common::start_servers(1);
    let proxy = common::start_proxy(&common::sharded_vschema(&servers)).await;
    // mysqlclient escapes with mysql_real_escape_string, which reads the status flag
    // of the last OK: that OK here is shardgate's own answer to a COMMIT with nothing
    // to commit (mysqlclient runs with autocommit off).
    let script = r#"
import sys, MySQLdb
c = MySQLdb.connect(host="127.0.0.1", port=int(sys.argv[1]), user="app", passwd="app", db="app")
cur = c.cursor()
cur.execute("SET sql_mode = 'NO_BACKSLASH_ESCAPES'")
c.commit()
param = "é' OR 1=1 -- \\"
cur.execute("SELECT %s", (param,))
row = cur.fetchall()[0][0]
print(row == param or repr(row))
"#;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("/usr/bin/python3")
            .args(["-c", script, &proxy.addr.port().to_string()])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mysqlclient within 30 s")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "True",
        "the parameter came back as itself, not as SQL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    proxy.stop().await;
}
