//! What a client sees through shardgate is what MariaDB sent: column definitions and
//! values byte for byte, and the backend's own errors, compared with a direct
//! connection in the same test, through three different clients.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use mysql_async::prelude::*;
use shardgate::backend::{BackendConn, ConnKey};
use shardgate::protocol::caps;
use shardgate::protocol::relay::ResponseKind;
use shardgate::vschema::Cluster;
use std::time::Duration;

const CREATE: &str = "CREATE TABLE alltypes (
  id INT PRIMARY KEY, workspace_id BIGINT UNSIGNED NOT NULL,
  ti TINYINT, tiu TINYINT UNSIGNED, si SMALLINT, mi MEDIUMINT UNSIGNED, i INT, bi BIGINT, biu BIGINT UNSIGNED,
  dc DECIMAL(20,6), f FLOAT, d DOUBLE,
  vc VARCHAR(50) CHARACTER SET utf8mb4, ch CHAR(10) CHARACTER SET utf8mb4, tx TEXT CHARACTER SET utf8mb4,
  bl BLOB, vb VARBINARY(20),
  dt DATE, dtm DATETIME(6), ts TIMESTAMP(3) NULL, tm TIME, yr YEAR, bt BIT(10),
  en ENUM('small','large'), st SET('x','y','z'), js JSON, nul INT NULL)";

const ROWS: &str = "INSERT INTO alltypes VALUES
 (1, 5, -128, 255, -32768, 16777215, -2147483648, -9223372036854775808, 18446744073709551615,
  -12345678901234.123456, 3.25, -1.5e300, 'héllo ✓ 🎉', 'ch', 'a long text\nwith lines', X'00FF10', X'DEADBEEF',
  '2024-02-29', '2024-02-29 23:59:59.123456', '2038-01-19 03:14:07.999', '-838:59:59', 2155, b'1010101010',
  'large', 'x,z', '{\"a\": [1, 2, {\"b\": null}]}', NULL),
 (2, 5, 127, 0, 32767, 0, 2147483647, 9223372036854775807, 0,
  0.000001, -0.0, 0, '', '', '', '', '', '1000-01-01', '1000-01-01 00:00:00', NULL, '12:34:56', 1901, b'0',
  'small', '', '[]', NULL),
 (3, 5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL)";

fn vschema(servers: &[shardgate::demo::localdb::LocalMariaDb]) -> String {
    let mut t = String::new();
    for (i, s) in servers.iter().enumerate() {
        t.push_str(&format!(
            "[clusters.c{}]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n",
            i + 1,
            s.addr()
        ));
        s.sql("CREATE DATABASE IF NOT EXISTS app").expect("db");
    }
    t.push_str(
        "[keyspaces.app]\nsharded = true\nvindex = \"xxhash\"\ndefault_column = \"workspace_id\"\n\
         shards = [{ name = \"-80\", cluster = \"c1\" }, { name = \"80-\", cluster = \"c2\" }]\n",
    );
    t
}

/// Connects with shardgate's own client codec (used only to capture raw bytes).
async fn raw_client(addr: &str, user: &str, password: &str, deprecate_eof: bool) -> BackendConn {
    let cluster = Cluster {
        name: "probe".into(),
        standbys: Vec::new(),
        primary: addr.into(),
        user: user.into(),
        password: password.into(),
        tls: None,
    };
    let key = ConnKey {
        caps: if deprecate_eof {
            caps::DEPRECATE_EOF
        } else {
            0
        } | caps::MULTI_RESULTS,
        collation: 45,
        ext: caps::MARIADB_EXTENDED_METADATA,
    };
    BackendConn::connect(&cluster, key, Some("app"), Duration::from_secs(5))
        .await
        .expect("raw connect")
        .0
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_common_column_type_reaches_the_client_byte_for_byte() {
    let servers = common::start_servers(2);
    let toml = vschema(&servers);
    // The table lives on every shard; rows of workspace 5 on its owner.
    let vs = shardgate::vschema::VSchema::from_toml_str(&toml).expect("vschema");
    let owner = vs
        .keyspace("app")
        .expect("app")
        .shard_for_workspace(5)
        .cluster
        .clone();
    let owner = &servers[owner[1..].parse::<usize>().expect("n") - 1];
    for s in &servers {
        s.sql(&format!("USE app; {CREATE}")).expect("create");
    }
    owner.sql(&format!("USE app; {ROWS}")).expect("rows");
    let proxy = common::start_proxy(&toml).await;
    let paddr = proxy.addr.to_string();
    let query = "SELECT * FROM alltypes WHERE workspace_id = 5 ORDER BY id";

    // 1. Raw bytes of the whole response, with and without DEPRECATE_EOF.
    for dep in [false, true] {
        let mut direct = raw_client(&owner.addr(), "shardgate", "shardgate", dep).await;
        let mut via = raw_client(&paddr, "app", "app", dep).await;
        let mut payload = vec![3u8];
        payload.extend_from_slice(query.as_bytes());
        let a = direct
            .exec(&payload, ResponseKind::Query)
            .await
            .expect("direct");
        let b = via
            .exec(&payload, ResponseKind::Query)
            .await
            .expect("proxy");
        assert!(!a.outcome.error);
        assert!(a.bytes == b.bytes, "raw result bytes differ (deprecate_eof={dep}): {} vs {} bytes, first difference at {:?}", a.bytes.len(), b.bytes.len(), a.bytes.iter().zip(b.bytes.iter()).position(|(x, y)| x != y));
        // COM_FIELD_LIST too.
        let mut fl = vec![4u8];
        fl.extend_from_slice(b"alltypes\0");
        let a = direct
            .exec(&fl, ResponseKind::FieldList)
            .await
            .expect("direct field list");
        let b = via
            .exec(&fl, ResponseKind::FieldList)
            .await
            .expect("proxy field list");
        assert!(a.bytes == b.bytes, "field list bytes differ");
    }

    // 2. mysql_async: column metadata and values.
    let mut d = mysql_async::Conn::new(common::mysql_opts(
        &owner.addr(),
        "shardgate",
        "shardgate",
        Some("app"),
    ))
    .await
    .expect("direct");
    let mut p = mysql_async::Conn::new(common::mysql_opts(&paddr, "app", "app", Some("app")))
        .await
        .expect("proxy");
    let mut rd = d.query_iter(query).await.expect("direct query");
    let cols_d: Vec<String> = rd
        .columns()
        .expect("cols")
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
    let rows_d: Vec<mysql_async::Row> = rd.collect().await.expect("rows");
    let mut rp = p.query_iter(query).await.expect("proxy query");
    let cols_p: Vec<String> = rp
        .columns()
        .expect("cols")
        .iter()
        .map(|c| format!("{c:?}"))
        .collect();
    let rows_p: Vec<mysql_async::Row> = rp.collect().await.expect("rows");
    assert_eq!(cols_d, cols_p);
    assert_eq!(rows_d.len(), 3);
    let vals = |rows: &[mysql_async::Row]| -> Vec<Vec<mysql_async::Value>> {
        rows.iter().map(|r| r.clone().unwrap()).collect()
    };
    assert_eq!(vals(&rows_d), vals(&rows_p));

    // 3. The mariadb CLI with column type info.
    let direct = common::cli(&owner.addr(), "shardgate", "shardgate", Some("app"), query);
    let via = common::cli(&paddr, "app", "app", Some("app"), query);
    assert!(
        direct.status.success(),
        "{}",
        String::from_utf8_lossy(&direct.stderr)
    );
    assert!(
        via.status.success(),
        "{}",
        String::from_utf8_lossy(&via.stderr)
    );
    assert_same_lines(&direct.stdout, &via.stdout, "mariadb CLI output");
    let info_d = std::process::Command::new("mariadb")
        .args([
            "--protocol=TCP",
            "-h127.0.0.1",
            &format!("-P{}", owner.port),
            "-ushardgate",
            "-pshardgate",
            "app",
            "--column-type-info",
            "-t",
            "-e",
            query,
        ])
        .output()
        .expect("cli");
    let info_p = std::process::Command::new("mariadb")
        .args([
            "--protocol=TCP",
            "-h127.0.0.1",
            &format!("-P{}", proxy.addr.port()),
            "-uapp",
            "-papp",
            "app",
            "--column-type-info",
            "-t",
            "-e",
            query,
        ])
        .output()
        .expect("cli");
    assert!(info_d.status.success() && info_p.status.success());
    assert!(String::from_utf8_lossy(&info_d.stdout).contains("Collation:"));
    assert_same_lines(&info_d.stdout, &info_p.stdout, "column type info");

    drop(d);
    drop(p);
    proxy.stop().await;
}

/// Compares two outputs line by line and reports the first difference readably.
fn assert_same_lines(a: &[u8], b: &[u8], what: &str) {
    let a = String::from_utf8_lossy(a);
    let b = String::from_utf8_lossy(b);
    for (n, (x, y)) in a.lines().zip(b.lines()).enumerate() {
        assert_eq!(x, y, "{what}: line {} differs", n + 1);
    }
    assert_eq!(
        a.lines().count(),
        b.lines().count(),
        "{what}: line counts differ"
    );
}

async fn error_of(conn: &mut mysql_async::Conn, sql: &str) -> (u16, String, String) {
    match conn.query_drop(sql).await {
        Err(mysql_async::Error::Server(e)) => (e.code, e.state, e.message),
        other => panic!("expected an error from {sql:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_errors_arrive_unchanged_and_bad_logins_get_1045() {
    let servers = common::start_servers(2);
    let toml = vschema(&servers);
    for s in &servers {
        s.sql("CREATE TABLE app.u (id INT PRIMARY KEY, workspace_id BIGINT NOT NULL)")
            .expect("create");
    }
    let proxy = common::start_proxy(&toml).await;
    let paddr = proxy.addr.to_string();
    let vs = shardgate::vschema::VSchema::from_toml_str(&toml).expect("vschema");
    let owner = vs
        .keyspace("app")
        .expect("app")
        .shard_for_workspace(3)
        .cluster
        .clone();
    let owner = &servers[owner[1..].parse::<usize>().expect("n") - 1];
    let mut d = mysql_async::Conn::new(common::mysql_opts(
        &owner.addr(),
        "shardgate",
        "shardgate",
        Some("app"),
    ))
    .await
    .expect("direct");
    let mut p = mysql_async::Conn::new(common::mysql_opts(&paddr, "app", "app", Some("app")))
        .await
        .expect("proxy");
    p.query_drop("INSERT INTO u (id, workspace_id) VALUES (1, 3)")
        .await
        .expect("insert");
    for sql in [
        "INSERT INTO u (id, workspace_id) VALUES (1, 3)", // 1062 duplicate key
        "SELECT * FROM no_such_table WHERE workspace_id = 3", // 1146
        "SELEC 1",                                        // 1064
        "SELECT * FROM u WHERE workspace_id = 3 AND nope = 1", // 1054
    ] {
        let a = error_of(&mut d, sql).await;
        let b = error_of(&mut p, sql).await;
        assert_eq!(a, b, "{sql}");
    }
    assert_eq!(
        error_of(&mut p, "INSERT INTO u (id, workspace_id) VALUES (1, 3)")
            .await
            .0,
        1062
    );
    assert_eq!(
        error_of(&mut p, "INSERT INTO u (id, workspace_id) VALUES (1, 3)")
            .await
            .1,
        "23000"
    );
    // Still usable.
    let n: Option<u32> = p
        .query_first("SELECT COUNT(*) FROM u WHERE workspace_id = 3")
        .await
        .expect("count");
    assert_eq!(n, Some(1));

    // Wrong password, unknown user, unknown database.
    for (user, pass, db, code, state) in [
        ("app", "wrong", Some("app"), 1045u16, "28000"),
        ("nobody", "app", Some("app"), 1045, "28000"),
        ("app", "app", Some("no_such_keyspace"), 1049, "42000"),
    ] {
        match mysql_async::Conn::new(common::mysql_opts(&paddr, user, pass, db)).await {
            Err(mysql_async::Error::Server(e)) => {
                assert_eq!(
                    (e.code, e.state.as_str()),
                    (code, state),
                    "{user}/{pass}: {}",
                    e.message
                )
            }
            Err(other) => panic!("{user}: expected a server error, got {other}"),
            Ok(_) => panic!("{user}/{pass} must not log in"),
        }
    }
    let out = common::cli(&paddr, "app", "nope", Some("app"), "SELECT 1");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1045"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    drop(d);
    drop(p);
    proxy.stop().await;
}
