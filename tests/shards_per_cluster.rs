//! Two shards of a keyspace on one cluster, one database each (a cluster usually holds
//! several shards): once the pool has connections on both databases, a session whose
//! statements alternate between them gets one already on the right database, instead
//! of its last connection switched back and forth with a `USE` round trip on every
//! statement. Every answer still comes from the shard that owns the workspace.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use mysql_async::prelude::*;
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;

fn vschema(server: &LocalMariaDb) -> String {
    format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"{}\"\npassword = \"{}\"\n\n\
         [keyspaces.app]\nsharded = true\nvindex = \"xxhash\"\ndefault_column = \"workspace_id\"\n\
         shards = [\n  {{ name = \"-80\", cluster = \"c1\", database = \"app_lo\" }},\n  \
         {{ name = \"80-\", cluster = \"c1\", database = \"app_hi\" }},\n]\n",
        server.addr(),
        server.user,
        server.password
    )
}

/// The server's count of database changes (`USE`, `COM_INIT_DB`).
fn change_db_count(server: &LocalMariaDb) -> u64 {
    common::status_counter(server, "Com_change_db")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alternating_shards_of_one_cluster_take_connections_already_on_their_database() {
    tokio::time::timeout(Duration::from_secs(120), scenario())
        .await
        .expect("the scenario finishes within 120 s");
}

async fn scenario() {
    let servers = common::start_servers(1);
    let server = &servers[0];
    for db in ["app_lo", "app_hi"] {
        server
            .sql(&format!(
                "CREATE DATABASE {db}; CREATE TABLE {db}.items (workspace_id BIGINT NOT NULL, \
                 id BIGINT NOT NULL, val VARCHAR(60), PRIMARY KEY (workspace_id, id))"
            ))
            .expect("create a shard's database");
    }
    let toml = vschema(server);
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let ks = vs.keyspace("app").expect("keyspace app");
    let db_of = |w: u64| ks.shard_for_workspace(w).database.clone();
    let lo: Vec<u64> = (1..200)
        .filter(|&w| db_of(w) == "app_lo")
        .take(10)
        .collect();
    let hi: Vec<u64> = (1..200)
        .filter(|&w| db_of(w) == "app_hi")
        .take(10)
        .collect();
    assert_eq!((lo.len(), hi.len()), (10, 10), "both shards own workspaces");
    for &w in lo.iter().chain(&hi) {
        let db = db_of(w);
        server
            .sql(&format!(
                "INSERT INTO {db}.items VALUES ({w}, 1, '{db}-ws{w}')"
            ))
            .expect("insert a workspace's row in its shard");
    }

    let proxy = common::start_proxy(&toml).await;
    // Warm: the pool gets a connection on each database. A transaction holds the
    // first while another session's statement needs the second (the pool opens
    // connections as sessions need them at once, not one per database).
    let mut holder = proxy.connect("app", Some("app")).await;
    holder.query_drop("BEGIN").await.expect("begin");
    let w = lo[0];
    let _: Option<String> = holder
        .query_first(format!("SELECT val FROM items WHERE workspace_id = {w}"))
        .await
        .expect("warm-up select in app_lo");
    let mut c = proxy.connect("app", Some("app")).await;
    let w = hi[0];
    let _: Option<String> = c
        .query_first(format!("SELECT val FROM items WHERE workspace_id = {w}"))
        .await
        .expect("warm-up select in app_hi");
    holder.query_drop("COMMIT").await.expect("commit");
    drop(holder);
    let before = change_db_count(server);
    let mut statements = 0;
    for round in 0..3 {
        for (a, b) in lo.iter().zip(&hi) {
            for &w in &[*a, *b] {
                let got: Option<String> = c
                    .query_first(format!(
                        "SELECT val FROM items WHERE workspace_id = {w} AND id = 1"
                    ))
                    .await
                    .expect("select through shardgate");
                assert_eq!(
                    got.as_deref(),
                    Some(format!("{}-ws{w}", db_of(w)).as_str()),
                    "round {round}: workspace {w} is answered by its own shard"
                );
                statements += 1;
            }
        }
    }
    let switches = change_db_count(server) - before;
    // Each switch is a round trip; the connections of each database are in the pool
    // after the warm-up. A few are allowed (a connection another test opened, the
    // count's own connection).
    assert!(
        switches <= 4,
        "{switches} database changes for {statements} statements alternating between two \
         databases of one cluster"
    );
    drop(c);
    proxy.stop().await;
}
