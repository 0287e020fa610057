//! The pin directory (`PIN WORKSPACE`, `UNPIN WORKSPACE`, `SHOW PINS`) against real
//! MariaDB shards: a pin moves a workspace's routing at once (rows land on the target
//! cluster), is refused while the workspace has rows where it is now (unless FORCE),
//! is for admin users only, cannot shadow a pin of the vschema document, and survives a
//! restart of the proxy through the file topology store.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::path::Path;
use std::time::Duration;

use mysql_async::prelude::*;
use shardgate::config::{ProxyConfig, TopoConfig};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;

/// Pinned to shard `-80` in the document.
const DOCUMENT_PINNED: u64 = 500;

/// A proxy configuration over `toml`, parsed afresh: a clone of a `VSchema` shares its
/// pin directories, and each proxy must start from its store alone.
fn config(toml: &str, topo_dir: &Path) -> ProxyConfig {
    let vs = VSchema::from_toml_str(toml).expect("vschema");
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vs,
    );
    config.migrations = None;
    config.topo = TopoConfig::File {
        dir: topo_dir.to_path_buf(),
    };
    config
}

fn rows_of(server: &LocalMariaDb, ws: u64) -> u64 {
    common::number_on(
        server,
        &format!("SELECT COUNT(*) FROM app.messages WHERE workspace_id = {ws}"),
    )
}

async fn insert(conn: &mut mysql_async::Conn, ws: u64, body: &str) {
    conn.query_drop(format!(
        "INSERT INTO messages (workspace_id, body) VALUES ({ws}, '{body}')"
    ))
    .await
    .unwrap_or_else(|e| panic!("insert for workspace {ws}: {e}"));
}

/// `PIN`/`UNPIN` answers one row: Keyspace, Workspace, Shard, Message.
async fn change(admin: &mut mysql_async::Conn, sql: &str) -> (String, String) {
    let row: Option<(String, String, String, String)> = admin
        .query_first(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let (_, _, shard, message) = row.unwrap_or_else(|| panic!("{sql}: no row"));
    (shard, message)
}

async fn show_pins(admin: &mut mysql_async::Conn) -> Vec<(String, u64, String, String)> {
    admin.query("SHOW PINS").await.expect("SHOW PINS")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pins_move_routing_are_checked_for_rows_and_survive_a_restart() {
    tokio::time::timeout(Duration::from_secs(240), scenario())
        .await
        .expect("the pin scenario should finish within 240 s");
}

async fn scenario() {
    let servers = common::start_servers(2);
    let toml = common::ShardedVSchema::new(&servers)
        .table("messages", "workspace_id")
        .pin(DOCUMENT_PINNED, "-80")
        .build();
    for s in &servers {
        s.sql(
            "CREATE TABLE app.messages (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             workspace_id BIGINT NOT NULL, body VARCHAR(200))",
        )
        .expect("create app.messages");
    }
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let ks = vs.keyspace("app").expect("app");
    let names = ["-80", "80-"];
    // Two workspaces the vindex places on the first shard, one on the second.
    let on = |shard: usize| (1..1000u64).filter(move |&w| ks.shard_index_for_workspace(w) == shard);
    let mut first = on(0).filter(|&w| w != DOCUMENT_PINNED);
    let (fresh, busy) = (
        first.next().expect("a workspace"),
        first.next().expect("another"),
    );
    let topo = tempfile::tempdir().expect("temporary directory");

    let proxy = common::start_proxy_config(config(&toml, topo.path())).await;
    let mut app = proxy.connect("app", Some("app")).await;
    let mut admin = proxy.connect("admin", None).await;

    // A workspace without rows is pinned at once, and its next row lands on the target.
    let (shard, message) =
        change(&mut admin, &format!("PIN WORKSPACE {fresh} TO SHARD '80-'")).await;
    assert_eq!(shard, "80-");
    assert!(message.contains("pinned to shard 80-"), "{message}");
    insert(&mut app, fresh, "pinned").await;
    assert_eq!(
        rows_of(&servers[1], fresh),
        1,
        "the row went to the pin's cluster"
    );
    assert_eq!(rows_of(&servers[0], fresh), 0);

    // A workspace with rows on its shard: refused, nothing changes; FORCE pins it.
    insert(&mut app, busy, "before").await;
    assert_eq!(rows_of(&servers[0], busy), 1);
    let (code, message) = common::server_error(
        &mut admin,
        &format!("PIN WORKSPACE {busy} IN KEYSPACE app TO SHARD '80-'"),
    )
    .await;
    assert_eq!(code, 1105, "{message}");
    for part in [&busy.to_string(), "app", "-80", "80-", "messages", "FORCE"] {
        assert!(message.contains(part), "{part:?} missing from: {message}");
    }
    insert(&mut app, busy, "still here").await;
    assert_eq!(
        rows_of(&servers[0], busy),
        2,
        "the refused pin changed nothing"
    );
    let (_, message) = change(
        &mut admin,
        &format!("PIN WORKSPACE {busy} TO SHARD '80-' FORCE"),
    )
    .await;
    assert!(message.contains("FORCE"), "{message}");
    insert(&mut app, busy, "after").await;
    assert_eq!(rows_of(&servers[1], busy), 1);
    assert_eq!(rows_of(&servers[0], busy), 2);

    // SHOW PINS lists both kinds; SHOW WORKSPACE says where the pin lives.
    let pins = show_pins(&mut admin).await;
    let mut expected = vec![
        (
            "app".to_string(),
            fresh,
            "80-".to_string(),
            "directory".to_string(),
        ),
        (
            "app".to_string(),
            busy,
            "80-".to_string(),
            "directory".to_string(),
        ),
        (
            "app".to_string(),
            DOCUMENT_PINNED,
            "-80".to_string(),
            "document".to_string(),
        ),
    ];
    expected.sort_by_key(|p| p.1);
    assert_eq!(pins, expected);
    let row: mysql_async::Row = admin
        .query_first(format!("SHOW WORKSPACE {busy}"))
        .await
        .expect("SHOW WORKSPACE")
        .expect("a row");
    assert_eq!(row.get::<String, _>("Shard").as_deref(), Some("80-"));
    assert_eq!(row.get::<String, _>("Placement").as_deref(), Some("pinned"));
    assert_eq!(
        row.get::<String, _>("Pinned_in").as_deref(),
        Some("directory")
    );

    // UNPIN: the workspace has a row on its pinned shard, so it is refused without FORCE.
    let (code, message) =
        common::server_error(&mut admin, &format!("UNPIN WORKSPACE {fresh}")).await;
    assert_eq!(code, 1105);
    assert!(
        message.contains("80-") && message.contains("unpin"),
        "{message}"
    );
    let (shard, _) = change(&mut admin, &format!("UNPIN WORKSPACE {fresh} FORCE")).await;
    assert_eq!(
        shard, names[0],
        "the vindex places it on the first shard again"
    );
    insert(&mut app, fresh, "unpinned").await;
    assert_eq!(rows_of(&servers[0], fresh), 1, "routed by the vindex again");

    // Refusals: a non-admin user, a pin of the document, an unknown shard, an
    // unsharded keyspace, a bad id.
    let (code, message) =
        common::server_error(&mut app, &format!("PIN WORKSPACE {fresh} TO SHARD '80-'")).await;
    assert_eq!(code, 1227, "{message}");
    let (code, _) = common::server_error(&mut app, "SHOW PINS").await;
    assert_eq!(code, 1227);
    let (code, message) = common::server_error(
        &mut admin,
        &format!("PIN WORKSPACE {DOCUMENT_PINNED} TO SHARD '80-'"),
    )
    .await;
    assert_eq!(code, 1105);
    assert!(message.contains("ALTER VSCHEMA"), "{message}");
    let (code, message) = common::server_error(&mut admin, "PIN WORKSPACE 3 TO SHARD 'c0-'").await;
    assert_eq!(code, 1105);
    assert!(
        message.contains("no shard 'c0-'") && message.contains("-80, 80-"),
        "{message}"
    );
    let (code, message) =
        common::server_error(&mut admin, "PIN WORKSPACE 3 IN KEYSPACE main TO SHARD '-'").await;
    assert_eq!(code, 1105);
    assert!(message.contains("not sharded"), "{message}");
    let (code, message) = common::server_error(&mut admin, "PIN WORKSPACE 3x TO SHARD '-80'").await;
    assert_eq!(code, 1105);
    assert!(message.contains("not a workspace id"), "{message}");

    drop(app);
    drop(admin);
    proxy.stop().await;

    // A restarted proxy on the same topology directory routes by the same pins.
    let proxy = common::start_proxy_config(config(&toml, topo.path())).await;
    let mut app = proxy.connect("app", Some("app")).await;
    let mut admin = proxy.connect("admin", None).await;
    insert(&mut app, busy, "after restart").await;
    assert_eq!(
        rows_of(&servers[1], busy),
        2,
        "the pin survived the restart"
    );
    insert(&mut app, fresh, "after restart").await;
    assert_eq!(
        rows_of(&servers[0], fresh),
        2,
        "the unpin survived the restart"
    );
    let pins = show_pins(&mut admin).await;
    assert_eq!(
        pins.iter().map(|p| (p.1, p.3.as_str())).collect::<Vec<_>>(),
        {
            let mut v = vec![(busy, "directory"), (DOCUMENT_PINNED, "document")];
            v.sort();
            v
        }
    );
    drop(app);
    drop(admin);
    proxy.stop().await;
}

/// `database_per_workspace`: the rows check is whether the workspace's database exists
/// on the cluster it is on now; a pinned workspace's database is served from the
/// target cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_workspace_databases_are_checked_and_served_from_the_pin() {
    tokio::time::timeout(Duration::from_secs(120), async {
        let servers = common::start_servers(2);
        let toml = common::per_workspace_vschema(&servers);
        let vs = VSchema::from_toml_str(&toml).expect("vschema");
        let ks = vs.keyspace("tenants").expect("tenants");
        let mut on_first = (8..1000u64).filter(|&w| ks.shard_index_for_workspace(w) == 0);
        let (with_db, without_db) = (on_first.next().expect("one"), on_first.next().expect("two"));
        servers[0]
            .sql(&format!("CREATE DATABASE ws_{with_db}"))
            .expect("create the workspace database");
        servers[1]
            .sql(&format!(
                "CREATE DATABASE ws_{without_db}; CREATE TABLE ws_{without_db}.notes (id INT); \
                 INSERT INTO ws_{without_db}.notes VALUES (1), (2)"
            ))
            .expect("create the database on the target cluster");
        let topo = tempfile::tempdir().expect("temporary directory");
        let proxy = common::start_proxy_config(config(&toml, topo.path())).await;
        let mut admin = proxy.connect("admin", None).await;

        let (code, message) = common::server_error(
            &mut admin,
            &format!("PIN WORKSPACE {with_db} TO SHARD '80-'"),
        )
        .await;
        assert_eq!(code, 1105);
        assert!(
            message.contains(&format!("database ws_{with_db}")),
            "{message}"
        );

        change(
            &mut admin,
            &format!("PIN WORKSPACE {without_db} TO SHARD '80-'"),
        )
        .await;
        let mut app = proxy
            .connect("app", Some(&format!("ws_{without_db}")))
            .await;
        let n: Option<u64> = app
            .query_first("SELECT COUNT(*) FROM notes")
            .await
            .expect("the pinned workspace's database is read on the target cluster");
        assert_eq!(n, Some(2));
        drop(app);
        drop(admin);
        proxy.stop().await;
    })
    .await
    .expect("the test should finish within 120 s");
}
