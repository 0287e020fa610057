//! Two shards of a keyspace on one cluster, one database each (a cluster usually holds
//! several shards): once the pool has connections on both databases, a session whose
//! statements alternate between them gets one already on the right database, instead
//! of its last connection switched back and forth with a `USE` round trip on every
//! statement; sessions at once get new connections on their database while the pool
//! has room, and only a full pool switches one. Every answer still comes from the
//! shard that owns the workspace.
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sessions_across_shards_of_one_cluster_get_connections_of_their_own_database() {
    tokio::time::timeout(Duration::from_secs(120), concurrent_scenario())
        .await
        .expect("the scenario finishes within 120 s");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_pool_switches_its_connection_between_the_databases_of_one_cluster() {
    tokio::time::timeout(Duration::from_secs(120), full_pool_scenario())
        .await
        .expect("the scenario finishes within 120 s");
}

/// A server with the two shards' databases, ten workspaces' rows in each (each row
/// names its database), and the vschema; the workspaces of each shard.
struct Shards {
    servers: Vec<LocalMariaDb>,
    toml: String,
    lo: Vec<u64>,
    hi: Vec<u64>,
}

impl Shards {
    fn server(&self) -> &LocalMariaDb {
        &self.servers[0]
    }

    /// The row a workspace's select must return: its own shard's.
    fn expected(&self, w: u64) -> String {
        let db = if self.lo.contains(&w) {
            "app_lo"
        } else {
            "app_hi"
        };
        format!("{db}-ws{w}")
    }
}

/// Selects workspace `w`'s row through `c` and checks that the answer came from the
/// workspace's own shard (`what` names the statement in a failure).
async fn select_own_row(c: &mut mysql_async::Conn, shards: &Shards, w: u64, what: &str) {
    let got: Option<String> = c
        .query_first(format!(
            "SELECT val FROM items WHERE workspace_id = {w} AND id = 1"
        ))
        .await
        .expect("select through shardgate");
    assert_eq!(
        got.as_deref(),
        Some(shards.expected(w).as_str()),
        "{what}: workspace {w} is answered by its own shard"
    );
}

/// Selects every workspace's row through `c`, the two shards' workspaces alternating,
/// and checks that each answer came from the workspace's own shard (`what` names the
/// pass in a failure); returns how many statements ran.
async fn alternate(c: &mut mysql_async::Conn, shards: &Shards, what: &str) -> u64 {
    let mut statements = 0;
    for (a, b) in shards.lo.iter().zip(&shards.hi) {
        for &w in &[*a, *b] {
            select_own_row(c, shards, w, what).await;
            statements += 1;
        }
    }
    statements
}

fn shards() -> Shards {
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
    Shards {
        servers,
        toml,
        lo,
        hi,
    }
}

async fn scenario() {
    let shards = shards();
    let (server, lo, hi) = (shards.server(), &shards.lo, &shards.hi);
    let proxy = common::start_proxy(&shards.toml).await;
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
        statements += alternate(&mut c, &shards, &format!("round {round}")).await;
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

/// Sessions at once, each alternating between the two databases: while the pool may
/// still open connections (under `max_connections`), a statement that finds no idle
/// connection on its database gets a new one rather than another database's switched
/// with a `USE` (a round trip on the statement's path, and on the next statement of
/// the other database). Under sysbench, 16 sessions on two databases of one cluster
/// had switched on about one statement in sixteen.
async fn concurrent_scenario() {
    const SESSIONS: usize = 8;
    const STATEMENTS: usize = 60;
    let shards = std::sync::Arc::new(shards());
    let server = shards.server();
    let proxy = common::start_proxy(&shards.toml).await;
    let before = change_db_count(server);
    let mut tasks = Vec::new();
    for s in 0..SESSIONS {
        let mut c = proxy.connect("app", Some("app")).await;
        let shards = shards.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..STATEMENTS {
                // Each session walks the workspaces in its own order, shards
                // alternating.
                let k = (i / 2 + s) % shards.lo.len();
                let w = if i % 2 == 0 {
                    shards.lo[k]
                } else {
                    shards.hi[k]
                };
                select_own_row(&mut c, &shards, w, &format!("session {s}, statement {i}")).await;
            }
            drop(c);
        }));
    }
    for t in tasks {
        t.await.expect("a session's statements");
    }
    let switches = change_db_count(server) - before;
    // The default pool (64 per cluster) has room for every session on both
    // databases; a few are allowed, as above.
    assert!(
        switches <= 4,
        "{switches} database changes for {} statements of {SESSIONS} sessions at once, \
         alternating between two databases of one cluster",
        SESSIONS * STATEMENTS
    );
    proxy.stop().await;
}

/// At `max_connections` (here 1) no connection can be opened for the other database:
/// the one there is switched with a `USE` on every change of shard, and every answer
/// still comes from the right shard.
async fn full_pool_scenario() {
    let shards = shards();
    let server = shards.server();
    let vs = VSchema::from_toml_str(&shards.toml).expect("vschema");
    let pool = shardgate::config::PoolConfig {
        max_connections: 1,
        ..Default::default()
    };
    let proxy = common::start_proxy_with(vs, pool).await;
    let mut c = proxy.connect("app", Some("app")).await;
    let before = change_db_count(server);
    let statements = alternate(&mut c, &shards, "a pool of one").await;
    let switches = change_db_count(server) - before;
    assert!(
        switches + 1 >= statements,
        "one connection serves both databases: {switches} database changes for \
         {statements} statements alternating between them"
    );
    drop(c);
    proxy.stop().await;
}
