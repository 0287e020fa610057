//! Routing through the proxy to real MariaDB shards: rows land where the vschema says,
//! pins override the vindex, unroutable statements get clear errors, and transactions
//! and session state behave as on a direct connection.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use mysql_async::prelude::*;
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;

/// A vschema with keyspace `app` sharded over the servers (`-80`, `80-` for two) and an
/// unsharded default keyspace `main` on the first; creates the databases.
fn setup_vschema(servers: &[LocalMariaDb], pins: &[(u64, &str)]) -> String {
    let n = servers.len();
    let mut toml = String::new();
    for (i, s) in servers.iter().enumerate() {
        toml.push_str(&format!(
            "[clusters.c{}]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n\n",
            i + 1,
            s.addr()
        ));
        s.sql("CREATE DATABASE IF NOT EXISTS app")
            .expect("create app");
    }
    servers[0]
        .sql("CREATE DATABASE IF NOT EXISTS main")
        .expect("create main");
    let bounds: Vec<String> = (0..=n)
        .map(|i| {
            if i == 0 || i == n {
                String::new()
            } else {
                format!("{:02x}", i * 256 / n)
            }
        })
        .collect();
    toml.push_str("[keyspaces.app]\nsharded = true\nvindex = \"xxhash\"\ndefault_column = \"workspace_id\"\nshards = [\n");
    for i in 0..n {
        toml.push_str(&format!(
            "  {{ name = \"{}-{}\", cluster = \"c{}\" }},\n",
            bounds[i],
            bounds[i + 1],
            i + 1
        ));
    }
    toml.push_str("]\n[keyspaces.app.tables]\ncountries = { type = \"reference\" }\n");
    if !pins.is_empty() {
        toml.push_str("[keyspaces.app.pins]\n");
        for (ws, shard) in pins {
            toml.push_str(&format!("\"{ws}\" = \"{shard}\"\n"));
        }
    }
    toml.push_str("\n[keyspaces.main]\ncluster = \"c1\"\ndefault = true\n");
    toml
}

/// Which server index holds workspace `ws` according to the vschema.
fn owner(toml: &str, ws: u64) -> usize {
    let vs = VSchema::from_toml_str(toml).expect("valid vschema");
    let ks = vs.keyspace("app").expect("app");
    let shard = ks.shard_for_workspace(ws);
    shard.cluster[1..].parse::<usize>().expect("cluster cN") - 1
}

fn count_on(server: &LocalMariaDb, sql: &str) -> u64 {
    server
        .sql(sql)
        .expect("direct query")
        .trim()
        .parse()
        .expect("a number")
}

async fn server_error(conn: &mut mysql_async::Conn, sql: &str) -> (u16, String, String) {
    match conn.query_drop(sql).await {
        Err(mysql_async::Error::Server(e)) => (e.code, e.state, e.message),
        other => panic!("expected a server error for {sql:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_on_the_shard_that_owns_their_workspace_and_pins_override() {
    let servers = common::start_servers(2);
    // Find a workspace the vindex puts on shard 0, and pin it to shard 1.
    let plain = setup_vschema(&servers, &[]);
    let pinned_ws = (1000..2000)
        .find(|&w| owner(&plain, w) == 0)
        .expect("a ws on shard 0");
    let toml = setup_vschema(&servers, &[(pinned_ws, "80-")]);
    assert_eq!(owner(&toml, pinned_ws), 1, "the pin moves it");
    let proxy = common::start_proxy(&toml).await;
    let mut conn = proxy.connect("app", Some("app")).await;

    // DDL is applied on every shard.
    conn.query_drop(
        "CREATE TABLE messages (id BIGINT AUTO_INCREMENT PRIMARY KEY, workspace_id BIGINT NOT NULL, body VARCHAR(200))",
    )
    .await
    .expect("create table on all shards");
    for s in &servers {
        assert_eq!(count_on(s, "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='app' AND table_name='messages'"), 1);
    }

    // Single-row inserts, one per workspace.
    for ws in 1..=30u64 {
        conn.query_drop(format!(
            "INSERT INTO messages (workspace_id, body) VALUES ({ws}, 'hello {ws}')"
        ))
        .await
        .expect("insert");
    }
    // A multi-row insert spanning shards is split per shard.
    let rows: Vec<String> = (31..=60u64)
        .map(|ws| format!("({ws}, 'multi {ws}')"))
        .collect();
    conn.query_drop(format!(
        "INSERT INTO messages (workspace_id, body) VALUES {}",
        rows.join(",")
    ))
    .await
    .expect("multi-row insert across shards");
    assert_eq!(
        conn.affected_rows(),
        30,
        "affected rows are summed over shards"
    );
    // The pinned workspace.
    conn.query_drop(format!(
        "INSERT INTO messages (workspace_id, body) VALUES ({pinned_ws}, 'pinned')"
    ))
    .await
    .expect("insert pinned");

    for ws in (1..=60u64).chain([pinned_ws]) {
        let own = owner(&toml, ws);
        for (i, s) in servers.iter().enumerate() {
            let n = count_on(
                s,
                &format!("SELECT COUNT(*) FROM app.messages WHERE workspace_id={ws}"),
            );
            assert_eq!(
                n,
                if i == own { 1 } else { 0 },
                "workspace {ws} on server {i} (owner {own})"
            );
        }
    }
    // Both shards got rows, so the test really spans shards.
    for s in &servers {
        assert!(count_on(s, "SELECT COUNT(*) FROM app.messages") > 5);
    }

    // Reads by workspace come from the owning shard, by =, IN and a tag comment.
    let body: Option<String> = conn
        .query_first(format!(
            "SELECT body FROM messages WHERE workspace_id = {pinned_ws}"
        ))
        .await
        .expect("select pinned");
    assert_eq!(body.as_deref(), Some("pinned"));
    let same_shard: Vec<u64> = (1..=60u64)
        .filter(|&w| owner(&toml, w) == owner(&toml, 7))
        .take(3)
        .collect();
    let list = same_shard
        .iter()
        .map(|w| w.to_string())
        .collect::<Vec<_>>()
        .join(",");
    let got: Vec<u64> = conn
        .query(format!("SELECT workspace_id FROM messages WHERE workspace_id IN ({list}) ORDER BY workspace_id"))
        .await
        .expect("IN on one shard");
    assert_eq!(got, same_shard);
    let tagged: Option<String> = conn
        .query_first(
            "/*application:Demo,workspace_id:7*/ SELECT body FROM messages WHERE body = 'hello 7'",
        )
        .await
        .expect("tagged select");
    assert_eq!(tagged.as_deref(), Some("hello 7"));

    // UPDATE and DELETE route by workspace too.
    conn.query_drop("UPDATE messages SET body = 'changed' WHERE workspace_id = 9")
        .await
        .expect("update");
    assert_eq!(conn.affected_rows(), 1);
    assert_eq!(
        count_on(
            &servers[owner(&toml, 9)],
            "SELECT COUNT(*) FROM app.messages WHERE workspace_id=9 AND body='changed'"
        ),
        1
    );
    conn.query_drop("DELETE FROM messages WHERE workspace_id = 10")
        .await
        .expect("delete");
    assert_eq!(conn.affected_rows(), 1);

    drop(conn);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_statements_get_clear_errors_and_the_connection_goes_on() {
    let servers = common::start_servers(2);
    let toml = setup_vschema(&servers, &[]);
    for s in &servers {
        s.sql("CREATE TABLE app.messages (id BIGINT AUTO_INCREMENT PRIMARY KEY, workspace_id BIGINT NOT NULL, body VARCHAR(200))")
            .expect("create");
    }
    let proxy = common::start_proxy(&toml).await;
    let mut conn = proxy.connect("app", Some("app")).await;

    let (code, state, msg) = server_error(&mut conn, "SELECT * FROM messages").await;
    assert_eq!((code, state.as_str()), (1105, "HY000"));
    assert!(
        msg.contains("messages") && msg.contains("workspace_id"),
        "names table and column: {msg}"
    );

    let (code, _, msg) = server_error(
        &mut conn,
        "SELECT * FROM messages WHERE workspace_id = 1 OR workspace_id = 2",
    )
    .await;
    assert_eq!(code, 1105, "{msg}");

    let a = (1..100u64)
        .find(|&w| owner(&toml, w) == 0)
        .expect("ws on 0");
    let b = (1..100u64)
        .find(|&w| owner(&toml, w) == 1)
        .expect("ws on 1");
    let (code, _, msg) = server_error(
        &mut conn,
        &format!("SELECT * FROM messages WHERE workspace_id IN ({a},{b})"),
    )
    .await;
    assert_eq!(code, 1105);
    assert!(msg.contains("shard"), "{msg}");

    // Multi-statement on a sharded keyspace: same shard is fine, two shards is refused.
    let mut multi = proxy.connect("app", Some("app")).await;
    multi
        .query_drop(format!(
            "INSERT INTO messages (workspace_id, body) VALUES ({a}, 'x'); INSERT INTO messages (workspace_id, body) VALUES ({a}, 'y')"
        ))
        .await
        .expect("multi on one shard");
    let n: Option<u64> = multi
        .query_first(format!(
            "SELECT COUNT(*) FROM messages WHERE workspace_id = {a}"
        ))
        .await
        .expect("count");
    assert_eq!(n, Some(2));
    let (code, _, msg) = server_error(
        &mut multi,
        &format!("SELECT 1 FROM messages WHERE workspace_id = {a}; SELECT 1 FROM messages WHERE workspace_id = {b}"),
    )
    .await;
    assert_eq!(code, 1105, "{msg}");

    // The connection is still usable after every error.
    let one: Option<u64> = conn.query_first("SELECT 1").await.expect("still usable");
    assert_eq!(one, Some(1));

    // A transaction stays on its first shard.
    conn.query_drop("BEGIN").await.expect("begin");
    conn.query_drop(format!(
        "INSERT INTO messages (workspace_id, body) VALUES ({a}, 'in tx')"
    ))
    .await
    .expect("insert a");
    let (code, _, msg) = server_error(
        &mut conn,
        &format!("INSERT INTO messages (workspace_id, body) VALUES ({b}, 'other')"),
    )
    .await;
    assert_eq!(code, 1105);
    assert!(msg.contains("transaction"), "{msg}");
    // Not yet visible from another connection, visible after COMMIT.
    assert_eq!(
        count_on(
            &servers[0],
            &format!("SELECT COUNT(*) FROM app.messages WHERE workspace_id={a} AND body='in tx'")
        ),
        0
    );
    conn.query_drop("COMMIT").await.expect("commit");
    assert_eq!(
        count_on(
            &servers[0],
            &format!("SELECT COUNT(*) FROM app.messages WHERE workspace_id={a} AND body='in tx'")
        ),
        1
    );
    assert_eq!(
        count_on(
            &servers[1],
            &format!("SELECT COUNT(*) FROM app.messages WHERE workspace_id={b} AND body='other'")
        ),
        0
    );

    // ROLLBACK undoes.
    conn.query_drop("START TRANSACTION").await.expect("start");
    conn.query_drop(format!("DELETE FROM messages WHERE workspace_id = {a}"))
        .await
        .expect("delete");
    conn.query_drop("ROLLBACK").await.expect("rollback");
    assert!(
        count_on(
            &servers[0],
            &format!("SELECT COUNT(*) FROM app.messages WHERE workspace_id={a}")
        ) >= 2
    );

    // DDL failing on one shard names that shard.
    servers[1]
        .sql("CREATE TABLE app.only_here (id INT PRIMARY KEY)")
        .expect("create on one");
    let (code, state, msg) =
        server_error(&mut conn, "CREATE TABLE only_here (id INT PRIMARY KEY)").await;
    assert_eq!(
        (code, state.as_str()),
        (1050, "42S01"),
        "MariaDB's own code: {msg}"
    );
    assert!(
        msg.contains("80-") && msg.contains("already applied on: app/-80"),
        "{msg}"
    );

    drop(conn);
    drop(multi);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_follows_the_session_to_every_backend_connection() {
    let servers = common::start_servers(2);
    let toml = setup_vschema(&servers, &[]);
    for s in &servers {
        s.sql("CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, workspace_id BIGINT NOT NULL, v VARCHAR(10))")
            .expect("create");
    }
    servers[0]
        .sql("CREATE TABLE main.kv (k VARCHAR(10) PRIMARY KEY, v INT)")
        .expect("create kv");
    let proxy = common::start_proxy(&toml).await;
    let addr = proxy.addr.to_string();
    let a = (1..100u64)
        .find(|&w| owner(&toml, w) == 0)
        .expect("ws on 0");
    let b = (1..100u64)
        .find(|&w| owner(&toml, w) == 1)
        .expect("ws on 1");

    let mut conn = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("connect");
    conn.query_drop("SET @greeting = 'hi', sql_mode = 'STRICT_ALL_TABLES'")
        .await
        .expect("set");
    conn.query_drop("SET NAMES latin1")
        .await
        .expect("set names");
    // Other sessions load the pool's connections with different state meanwhile.
    let mut other = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("connect");
    other
        .query_drop("SET @greeting = 'other', sql_mode = ''")
        .await
        .expect("set other");
    for ws in [a, b] {
        let row: Option<(String, String, String)> = conn
            .query_first(format!("SELECT @greeting, @@sql_mode, @@character_set_client FROM t WHERE workspace_id = {ws} UNION ALL SELECT @greeting, @@sql_mode, @@character_set_client"))
            .await
            .expect("read vars");
        assert_eq!(
            row,
            Some(("hi".into(), "STRICT_ALL_TABLES".into(), "latin1".into())),
            "state on the shard of workspace {ws}"
        );
        let o: Option<String> = other
            .query_first(format!(
                "SELECT @greeting FROM t WHERE workspace_id = {ws} UNION ALL SELECT @greeting"
            ))
            .await
            .expect("other vars");
        assert_eq!(o.as_deref(), Some("other"));
    }
    // A failing SET is not remembered.
    let (code, _, _) = server_error(&mut conn, "SET sql_mode = 'NOT_A_MODE'").await;
    assert_eq!(code, 1231);
    let mode: Option<String> = conn.query_first("SELECT @@sql_mode").await.expect("mode");
    assert_eq!(mode.as_deref(), Some("STRICT_ALL_TABLES"));

    // autocommit=0: writes wait for COMMIT.
    conn.query_drop("SET autocommit = 0")
        .await
        .expect("autocommit off");
    conn.query_drop(format!(
        "INSERT INTO t (workspace_id, v) VALUES ({a}, 'ac0')"
    ))
    .await
    .expect("insert");
    assert_eq!(
        count_on(&servers[0], "SELECT COUNT(*) FROM app.t WHERE v='ac0'"),
        0
    );
    conn.query_drop("COMMIT").await.expect("commit");
    assert_eq!(
        count_on(&servers[0], "SELECT COUNT(*) FROM app.t WHERE v='ac0'"),
        1
    );
    conn.query_drop("SET autocommit = 1")
        .await
        .expect("autocommit on");
    conn.query_drop(format!(
        "INSERT INTO t (workspace_id, v) VALUES ({b}, 'ac1')"
    ))
    .await
    .expect("insert");
    assert_eq!(
        count_on(&servers[1], "SELECT COUNT(*) FROM app.t WHERE v='ac1'"),
        1
    );

    // USE of a database the vschema does not name passes through to the default cluster.
    conn.query_drop("USE main").await.expect("use main");
    conn.query_drop("INSERT INTO kv VALUES ('x', 1)")
        .await
        .expect("insert kv");
    assert_eq!(
        count_on(&servers[0], "SELECT v FROM main.kv WHERE k='x'"),
        1
    );
    let (code, state, _) = server_error(&mut conn, "USE no_such_db").await;
    assert_eq!((code, state.as_str()), (1049, "42000"));
    let db: Option<String> = conn.query_first("SELECT DATABASE()").await.expect("db");
    assert_eq!(
        db.as_deref(),
        Some("main"),
        "a failed USE keeps the old database"
    );

    drop(conn);
    drop(other);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_warnings_and_last_insert_id_reach_the_connection_that_ran_the_statement() {
    let servers = common::start_servers(2);
    let toml = setup_vschema(&servers, &[]);
    for s in &servers {
        s.sql("CREATE TABLE app.t (id INT AUTO_INCREMENT PRIMARY KEY, workspace_id BIGINT NOT NULL, v TINYINT)")
            .expect("create");
    }
    let proxy = common::start_proxy(&toml).await;
    let addr = proxy.addr.to_string();
    let b = (1..100u64)
        .find(|&w| owner(&toml, w) == 1)
        .expect("ws on 1");
    // Other sessions keep the pools busy so a fresh lease would likely be another connection.
    let mut noise = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("c");
    let mut conn = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("c");
    for i in 0..3 {
        conn.query_drop(format!("INSERT INTO t (workspace_id, v) VALUES ({b}, {i})"))
            .await
            .expect("insert");
        let from_ok = conn.last_insert_id().expect("insert id in OK");
        noise
            .query_drop(format!("INSERT INTO t (workspace_id, v) VALUES ({b}, 9)"))
            .await
            .expect("noise");
        let asked: Option<u64> = conn
            .query_first("SELECT LAST_INSERT_ID()")
            .await
            .expect("ask");
        assert_eq!(
            asked,
            Some(from_ok),
            "LAST_INSERT_ID() answers about this session's insert"
        );
    }
    // A truncation warning, then SHOW WARNINGS.
    conn.query_drop("SET sql_mode = ''").await.expect("lenient");
    conn.query_drop(format!(
        "INSERT INTO t (workspace_id, v) VALUES ({b}, 1000)"
    ))
    .await
    .expect("warn");
    assert_eq!(conn.get_warnings(), 1);
    let warnings: Vec<(String, u32, String)> =
        conn.query("SHOW WARNINGS").await.expect("show warnings");
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert_eq!(warnings[0].1, 1264, "out of range warning: {warnings:?}");
    drop(conn);
    drop(noise);
    proxy.stop().await;
}
