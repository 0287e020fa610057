//! `database_per_workspace` keyspaces: every workspace has its own database (`ws_42`) on
//! the cluster its shard names; a session's `USE ws_42`, a handshake database, or a
//! qualified `ws_42.t` routes there.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use mysql_async::prelude::*;
use shardgate::vschema::VSchema;

fn owner(vs: &VSchema, ws: u64) -> usize {
    let ks = vs.keyspace("tenants").expect("tenants");
    ks.shard_for_workspace(ws).cluster[1..]
        .parse::<usize>()
        .expect("cN")
        - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_workspace_database_is_served_by_the_cluster_that_owns_it() {
    let servers = common::start_servers(2);
    let toml = common::per_workspace_vschema(&servers);
    let vs = VSchema::from_toml_str(&toml).expect("valid");
    // Each workspace database exists only on its owner.
    for ws in 1..=12u64 {
        servers[owner(&vs, ws)]
            .sql(&format!("CREATE DATABASE ws_{ws}; CREATE TABLE ws_{ws}.notes (id INT PRIMARY KEY, body VARCHAR(20))"))
            .expect("create workspace db");
    }
    assert!((1..=12).any(|w| owner(&vs, w) == 0) && (1..=12).any(|w| owner(&vs, w) == 1));
    let proxy = common::start_proxy(&toml).await;
    let addr = proxy.addr.to_string();

    // USE each workspace database and write: the row lands in that database on its owner.
    let mut c = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", None))
        .await
        .expect("connect");
    for ws in 1..=12u64 {
        c.query_drop(format!("USE ws_{ws}")).await.expect("use");
        c.query_drop(format!("INSERT INTO notes VALUES (1, 'note {ws}')"))
            .await
            .expect("insert");
    }
    for ws in 1..=12u64 {
        let got = servers[owner(&vs, ws)]
            .sql(&format!("SELECT body FROM ws_{ws}.notes"))
            .expect("direct read");
        assert_eq!(got.trim(), format!("note {ws}"));
    }
    // Workspace 7 is pinned to 80- (cluster c2).
    assert_eq!(owner(&vs, 7), 1);

    // A qualified name routes to the named workspace's cluster, from any session.
    c.query_drop("USE ws_1").await.expect("use ws_1");
    for ws in [2u64, 7, 11] {
        let body: Option<String> = c
            .query_first(format!("SELECT body FROM ws_{ws}.notes WHERE id = 1"))
            .await
            .expect("qualified read");
        assert_eq!(body, Some(format!("note {ws}")));
    }

    // The handshake database works the same, and a missing workspace database is 1049.
    let mut direct_ws =
        mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("ws_5")))
            .await
            .expect("connect into ws_5");
    let body: Option<String> = direct_ws
        .query_first("SELECT body FROM notes")
        .await
        .expect("read");
    assert_eq!(body.as_deref(), Some("note 5"));
    match mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("ws_999"))).await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!((e.code, e.state.as_str()), (1049, "42000"))
        }
        other => panic!("expected 1049, got {:?}", other.map(|_| "a connection")),
    }
    match c.query_drop("USE ws_998").await {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1049),
        other => panic!("expected 1049, got {other:?}"),
    }
    // The keyspace itself holds no tables: MariaDB's own "No database selected".
    c.query_drop("USE tenants").await.expect("use keyspace");
    match c.query_drop("SELECT * FROM notes").await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!((e.code, e.state.as_str()), (1046, "3D000"))
        }
        other => panic!("expected 1046, got {other:?}"),
    }
    let one: Option<u32> = c
        .query_first("SELECT 1")
        .await
        .expect("table-less statements work");
    assert_eq!(one, Some(1));

    // A schema change sent to the keyspace fans out to every workspace database, each
    // on its own cluster, through the migration queue.
    c.query_drop("SET @@ddl_wait = 120")
        .await
        .expect("ddl_wait");
    c.query_drop("ALTER TABLE notes ADD COLUMN tag VARCHAR(10) NULL")
        .await
        .expect("fan-out completes");
    let has_column = |ws: u64, column: &str| {
        servers[owner(&vs, ws)]
            .sql(&format!(
                "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema='ws_{ws}' AND table_name='notes' AND column_name='{column}'"
            ))
            .expect("columns")
            .trim()
            == "1"
    };
    for ws in 1..=12u64 {
        assert!(has_column(ws, "tag"), "workspace {ws} got the new column");
    }
    // A change sent from inside one workspace database changes only that one.
    c.query_drop("USE ws_3").await.expect("use ws_3");
    c.query_drop("ALTER TABLE notes ADD COLUMN only_three INT NULL")
        .await
        .expect("one workspace");
    for ws in 1..=12u64 {
        assert_eq!(has_column(ws, "only_three"), ws == 3, "workspace {ws}");
    }
    drop(c);
    drop(direct_ws);
    proxy.stop().await;
}
