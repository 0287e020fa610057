//! Scoped users against real MariaDB: a user bound to one workspace reads and writes
//! that workspace's rows and nothing else, by any route (tag, WHERE, IN list, no
//! filter, JOIN, UNION, subquery, multi-statement, a workspace database, another
//! keyspace); keyspace lists limit `USE`, the handshake database and qualified names;
//! roles `app`/`dba`/`admin` limit the migration statements. Checked with mysql_async,
//! PyMySQL and the `mariadb` CLI, and on the servers directly afterwards.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use mysql_async::prelude::*;
use shardgate::access::{Role, Scope};
use shardgate::config::{ProxyConfig, User};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;

const BOUND: u64 = 42;

/// Keyspace `app` (2 shards, `messages` sharded by `workspace_id`, reference table
/// `plans`), the unsharded default keyspace `main`, and `tenants`, a
/// database-per-workspace keyspace with `ws_42` and `ws_9` (table `notes`).
fn setup(servers: &[LocalMariaDb]) -> (String, VSchema) {
    let mut toml = common::ShardedVSchema::new(servers)
        .table("messages", "workspace_id")
        .reference_table("plans")
        .build();
    toml.push_str(
        "[keyspaces.tenants]\nsharded = true\nvindex = \"numeric\"\n\
         tenancy = \"database_per_workspace\"\ndatabase_template = \"ws_{id}\"\n\
         shards = [{ name = \"-\", cluster = \"c1\" }]\n",
    );
    for s in servers {
        s.sql(
            "CREATE TABLE app.messages (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
             workspace_id BIGINT NOT NULL, body VARCHAR(200)); \
             CREATE TABLE app.plans (id INT PRIMARY KEY, name VARCHAR(20)); \
             INSERT INTO app.plans VALUES (1, 'free'), (2, 'pro'); \
             CREATE TABLE app.audit (id INT PRIMARY KEY, what VARCHAR(50)); \
             INSERT INTO app.audit VALUES (1, 'secret of every workspace')",
        )
        .expect("create app tables");
    }
    servers[0]
        .sql(
            "CREATE TABLE main.settings (k VARCHAR(20) PRIMARY KEY, v VARCHAR(50)); \
             INSERT INTO main.settings VALUES ('key', 'shared secret'); \
             CREATE DATABASE ws_42; CREATE TABLE ws_42.notes (id INT PRIMARY KEY, body VARCHAR(20)); \
             INSERT INTO ws_42.notes VALUES (1, 'mine'); \
             CREATE DATABASE ws_9; CREATE TABLE ws_9.notes (id INT PRIMARY KEY, body VARCHAR(20)); \
             INSERT INTO ws_9.notes VALUES (1, 'theirs')",
        )
        .expect("create main and workspace databases");
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    (toml, vs)
}

/// A workspace other than [`BOUND`] that lives on the same shard: its rows sit in the
/// same table on the same server, so only the confinement keeps them apart.
fn neighbour(vs: &VSchema) -> u64 {
    let ks = vs.keyspace("app").expect("app");
    let home = ks.shard_index_for_workspace(BOUND);
    (1..1000)
        .find(|w| *w != BOUND && ks.shard_index_for_workspace(*w) == home)
        .expect("a neighbour workspace")
}

fn users() -> Vec<User> {
    let mut acme = User::new("acme", "acme", false);
    acme.scope = Scope::new(
        Some(vec!["app".into(), "tenants".into()]),
        Some(vec![BOUND]),
    );
    let mut ops = User::new("ops", "ops", false);
    ops.role = Role::Dba;
    let mut reports = User::new("reports", "reports", false);
    reports.scope = Scope::new(Some(vec!["main".into()]), None);
    let mut users = common::test_users();
    users.extend([acme, ops, reports]);
    users
}

async fn start(servers: &[LocalMariaDb]) -> (common::Proxy, VSchema) {
    let (_toml, vs) = setup(servers);
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("addr"), users(), vs.clone());
    config.max_client_connections = 100;
    (common::start_proxy_config(config).await, vs)
}

async fn conn(proxy: &common::Proxy, user: &str, db: Option<&str>) -> mysql_async::Conn {
    mysql_async::Conn::new(common::mysql_opts(&proxy.addr_string(), user, user, db))
        .await
        .unwrap_or_else(|e| panic!("{user} should log in: {e}"))
}

/// Rows of `app.messages` per workspace, read on the servers directly.
fn rows_by_workspace(servers: &[LocalMariaDb]) -> String {
    let mut all: Vec<String> = servers
        .iter()
        .flat_map(|s| {
            common::direct_query(
                s,
                "SELECT workspace_id, id, body FROM app.messages ORDER BY workspace_id, id",
            )
            .lines()
            .map(str::to_owned)
            .collect::<Vec<_>>()
        })
        .collect();
    all.sort();
    all.join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_user_works_in_its_own_workspace() {
    let servers = common::start_servers(2);
    let (proxy, _vs) = start(&servers).await;
    let mut c = conn(&proxy, "acme", Some("app")).await;
    c.query_drop("INSERT INTO messages (workspace_id, body) VALUES (42, 'a'), (42, 'b')")
        .await
        .expect("insert own rows");
    c.query_drop("UPDATE messages SET body = 'B' WHERE workspace_id = 42 AND body = 'b'")
        .await
        .expect("update own row");
    let bodies: Vec<String> = c
        .query(
            "/*workspace_id:42*/ SELECT body FROM messages WHERE workspace_id = 42 ORDER BY body",
        )
        .await
        .expect("read own rows");
    assert_eq!(bodies, ["a", "B"], "case-insensitive collation");
    let joined: Vec<(String, String)> = c
        .query(
            "SELECT m.body, p.name FROM messages m JOIN plans p ON p.id = 1 \
             WHERE m.workspace_id = 42 AND m.body = 'a'",
        )
        .await
        .expect("join with a reference table");
    assert_eq!(joined, [("a".to_string(), "free".to_string())]);
    let n: Option<u64> = c
        .query_first(
            "SELECT COUNT(*) FROM messages WHERE workspace_id = 42 AND id IN \
             (SELECT id FROM messages WHERE workspace_id IN (42))",
        )
        .await
        .expect("subquery in the same workspace");
    assert_eq!(n, Some(2));
    c.query_drop("BEGIN").await.expect("begin");
    c.query_drop("DELETE FROM messages WHERE workspace_id = 42 AND body = 'B'")
        .await
        .expect("delete own row");
    c.query_drop("COMMIT").await.expect("commit");
    let tables: Vec<String> = c
        .query("SELECT TABLE_NAME FROM information_schema.TABLES WHERE TABLE_SCHEMA = 'app' ORDER BY 1")
        .await
        .expect("information_schema is metadata, open to everyone");
    assert!(tables.contains(&"messages".to_string()), "{tables:?}");
    // Its own workspace database.
    c.query_drop("USE ws_42")
        .await
        .expect("USE its workspace database");
    let note: Option<String> = c.query_first("SELECT body FROM notes").await.expect("read");
    assert_eq!(note.as_deref(), Some("mine"));
    drop(c);
    let mut c = conn(&proxy, "acme", Some("ws_42")).await;
    let note: Option<String> = c
        .query_first("SELECT body FROM ws_42.notes")
        .await
        .expect("handshake into its workspace database");
    assert_eq!(note.as_deref(), Some("mine"));
    assert_eq!(
        rows_by_workspace(&servers),
        format!("{BOUND}\t1\ta"),
        "the servers hold exactly what the bound user wrote"
    );
    drop(c);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_user_reaches_no_other_workspace_by_any_route() {
    let servers = common::start_servers(2);
    let (proxy, vs) = start(&servers).await;
    let other = neighbour(&vs);
    let mut admin = conn(&proxy, "admin", Some("app")).await;
    admin
        .query_drop(format!(
            "INSERT INTO messages (workspace_id, body) VALUES ({BOUND}, 'mine'), ({other}, 'theirs'), (9, 'far')"
        ))
        .await
        .expect("admin writes every workspace");
    let before = rows_by_workspace(&servers);
    let mut c = conn(&proxy, "acme", Some("app")).await;
    let refused = [
        format!("SELECT * FROM messages WHERE workspace_id = {other}"),
        format!("/*workspace_id:{other}*/ SELECT * FROM messages WHERE workspace_id = {other}"),
        // The tag names the user's workspace, the WHERE another.
        format!("/*workspace_id:{BOUND}*/ SELECT * FROM messages WHERE workspace_id = {other}"),
        // A tag alone picks the shard, where the neighbour's rows live too.
        format!("/*workspace_id:{BOUND}*/ SELECT * FROM messages"),
        "SELECT * FROM messages".into(),
        format!("SELECT * FROM messages WHERE workspace_id IN ({BOUND}, {other})"),
        format!("SELECT * FROM messages WHERE workspace_id = {BOUND} OR workspace_id = {other}"),
        format!("SELECT * FROM messages WHERE workspace_id = {BOUND} OR 1 = 1"),
        // A range proves no workspace, not even a range of one id.
        format!("SELECT * FROM messages WHERE workspace_id BETWEEN {BOUND} AND {BOUND}"),
        format!("SELECT * FROM messages WHERE workspace_id >= 0 AND workspace_id < {BOUND}"),
        format!("DELETE FROM messages WHERE workspace_id BETWEEN {BOUND} AND {other}"),
        format!(
            "SELECT b.* FROM messages a JOIN messages b ON a.id <> b.id WHERE a.workspace_id = {BOUND}"
        ),
        format!(
            "SELECT body FROM messages WHERE workspace_id = {BOUND} UNION SELECT body FROM messages"
        ),
        format!(
            "SELECT body FROM messages WHERE workspace_id = {BOUND} UNION \
             SELECT body FROM messages WHERE workspace_id = {other}"
        ),
        format!(
            "SELECT * FROM messages WHERE workspace_id = {BOUND} AND body IN (SELECT body FROM messages)"
        ),
        format!(
            "SELECT (SELECT MAX(body) FROM messages) FROM messages WHERE workspace_id = {BOUND}"
        ),
        format!("SELECT * FROM (SELECT * FROM messages) x WHERE x.workspace_id = {BOUND}"),
        "SELECT * FROM audit".into(),
        format!("UPDATE messages SET body = 'x' WHERE workspace_id = {other}"),
        "UPDATE messages SET body = 'x'".into(),
        format!("UPDATE messages SET workspace_id = {other} WHERE workspace_id = {BOUND}"),
        format!("DELETE FROM messages WHERE workspace_id = {other}"),
        format!("DELETE FROM messages WHERE workspace_id = {BOUND} OR id > 0"),
        format!("INSERT INTO messages (workspace_id, body) VALUES ({other}, 'planted')"),
        format!(
            "INSERT INTO messages (workspace_id, body) SELECT {BOUND}, body FROM messages WHERE workspace_id = {other}"
        ),
        format!(
            "INSERT INTO messages (workspace_id, body) VALUES ({BOUND}, (SELECT MAX(body) FROM messages))"
        ),
        "UPDATE plans SET name = 'gratis' WHERE id = 1".into(),
        "HANDLER messages OPEN".into(),
        "SET @x = (SELECT MAX(body) FROM messages)".into(),
        "CREATE TEMPORARY TABLE t SELECT * FROM messages".into(),
        "ALTER TABLE messages ADD COLUMN leak INT".into(),
        "PREPARE s FROM 'SELECT * FROM messages'".into(),
        "SELECT * FROM main.settings".into(),
        "SELECT * FROM ws_9.notes".into(),
        "SELECT * FROM app2.messages".into(),
    ];
    for sql in &refused {
        let (code, msg) = common::server_error(&mut c, sql).await;
        assert!(
            code == 1142 || code == 1044 || code == 1227,
            "{sql}: {code} {msg}"
        );
        assert!(
            msg.contains("acme") && !msg.contains("theirs") && !msg.contains("far"),
            "{sql}: the error names the user and leaks no row: {msg}"
        );
    }
    // One refused statement in a multi-statement query stops the whole query.
    let multi_sql = format!(
        "SELECT body FROM messages WHERE workspace_id = {BOUND}; SELECT body FROM messages WHERE workspace_id = {other}"
    );
    let (code, _) = common::server_error(&mut c, &multi_sql).await;
    assert_eq!(code, 1142, "multi-statement with one foreign statement");
    // The workspace-per-database keyspace: another workspace's database.
    let (code, msg) = common::server_error(&mut c, "USE ws_9").await;
    assert_eq!(code, 1044, "{msg}");
    assert_eq!(msg, "Access denied for user 'acme'@'%' to database 'ws_9'");
    let (code, _) = common::server_error(&mut c, "USE main").await;
    assert_eq!(code, 1044, "a keyspace not in its list");
    match mysql_async::Conn::new(common::mysql_opts(
        &proxy.addr_string(),
        "acme",
        "acme",
        Some("ws_9"),
    ))
    .await
    {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1044, "{}", e.message),
        other => panic!("login into ws_9 should fail with 1044: {other:?}"),
    }
    // The connection is still usable, and nothing changed on the servers.
    let mine: Vec<String> = c
        .query(format!(
            "SELECT body FROM messages WHERE workspace_id = {BOUND}"
        ))
        .await
        .expect("own rows after the refusals");
    assert_eq!(mine, ["mine"]);
    assert_eq!(
        rows_by_workspace(&servers),
        before,
        "no foreign row changed"
    );
    assert_eq!(
        common::direct_query(&servers[0], "SELECT name FROM app.plans WHERE id = 1").trim(),
        "free"
    );
    for s in &servers {
        assert!(
            !common::direct_query(s, "SHOW COLUMNS FROM app.messages").contains("leak"),
            "the ALTER was not queued"
        );
    }
    // The same refusal through PyMySQL and the mariadb CLI.
    let script = r#"
import sys, pymysql
c = pymysql.connect(host="127.0.0.1", port=int(sys.argv[1]), user="acme", password="acme", database="app")
cur = c.cursor()
try:
    cur.execute("SELECT body FROM messages WHERE workspace_id = %s", (int(sys.argv[2]),))
    print("ROWS", cur.fetchall())
except pymysql.err.OperationalError as e:
    print("ERR", e.args[0])
cur.execute("SELECT body FROM messages WHERE workspace_id = %s", (42,))
print("OWN", cur.fetchall()[0][0])
"#;
    let out = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::process::Command::new("/usr/bin/python3")
            .args([
                "-c",
                script,
                &proxy.addr.port().to_string(),
                &other.to_string(),
            ])
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("PyMySQL within 30 s")
    .expect("run python3");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.trim(),
        "ERR 1142\nOWN mine",
        "PyMySQL: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cli = common::cli(
        &proxy.addr_string(),
        "acme",
        "acme",
        Some("app"),
        &format!("SELECT body FROM messages WHERE workspace_id = {other}"),
    );
    let err = String::from_utf8_lossy(&cli.stderr);
    assert!(
        !cli.status.success() && err.contains("ERROR 1142 (42000)"),
        "CLI: {err}"
    );
    drop((c, admin));
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyspace_lists_and_roles_limit_what_a_user_reaches() {
    let servers = common::start_servers(1);
    let (proxy, _vs) = start(&servers).await;
    // `reports` may use keyspace main only.
    let mut r = conn(&proxy, "reports", Some("main")).await;
    let v: Option<String> = r
        .query_first("SELECT v FROM settings WHERE k = 'key'")
        .await
        .expect("its keyspace");
    assert_eq!(v.as_deref(), Some("shared secret"));
    for sql in [
        "USE app",
        "SELECT * FROM app.messages WHERE workspace_id = 1",
        "SELECT * FROM settings s JOIN app.plans p ON 1 = 1",
        "SELECT app.plans.name FROM settings",
    ] {
        let (code, msg) = common::server_error(&mut r, sql).await;
        assert_eq!(code, 1044, "{sql}: {msg}");
        assert!(msg.contains("'app'"), "{sql}: {msg}");
    }
    match mysql_async::Conn::new(common::mysql_opts(
        &proxy.addr_string(),
        "reports",
        "reports",
        Some("app"),
    ))
    .await
    {
        Err(mysql_async::Error::Server(e)) => assert_eq!(e.code, 1044, "{}", e.message),
        other => panic!("login into app should fail with 1044: {other:?}"),
    }
    // A database the vschema does not name is out of any scoped user's reach.
    servers[0]
        .sql("CREATE DATABASE loose; CREATE TABLE loose.t (a INT)")
        .expect("create loose");
    let (code, _) = common::server_error(&mut r, "SELECT * FROM loose.t").await;
    assert_eq!(code, 1044);
    let (code, _) = common::server_error(&mut r, "USE loose").await;
    assert_eq!(code, 1044);
    // Roles: app users may not control migrations, dba users may, and neither runs
    // what reaches the host.
    let mut app = conn(&proxy, "app", Some("app")).await;
    let (code, msg) = common::server_error(&mut app, "SHOW MIGRATIONS").await;
    assert_eq!(code, 1227, "{msg}");
    assert!(
        msg.contains("role dba or admin") && msg.contains("has role app"),
        "{msg}"
    );
    let (code, _) = common::server_error(&mut app, "SET @@ddl_strategy = 'direct'").await;
    assert_eq!(code, 1227);
    let mut ops = conn(&proxy, "ops", Some("app")).await;
    ops.query_drop("SHOW MIGRATIONS")
        .await
        .expect("a dba user lists migrations");
    ops.query_drop("SET @@ddl_strategy = 'direct'")
        .await
        .expect("a dba user may run DDL directly");
    let (code, msg) = common::server_error(&mut ops, "SET GLOBAL max_connections = 7").await;
    assert_eq!(code, 1227, "{msg}");
    let (code, _) = common::server_error(&mut ops, "CREATE USER evil IDENTIFIED BY 'x'").await;
    assert_eq!(code, 1227);
    drop((r, app, ops));
    proxy.stop().await;
}

#[test]
fn config_files_with_bad_scopes_are_refused_with_the_users_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let vschema = "[clusters.c1]\nprimary = \"127.0.0.1:1\"\nuser = \"u\"\n\
                   [keyspaces.app]\nsharded = true\nvindex = \"xxhash\"\n\
                   shards = [{ name = \"-\", cluster = \"c1\" }]\n";
    std::fs::write(dir.path().join("vschema.toml"), vschema).expect("write vschema");
    let load = |users: &str| {
        let path = dir.path().join("shardgate.toml");
        std::fs::write(&path, format!("vschema = \"vschema.toml\"\n{users}")).expect("write");
        ProxyConfig::load(&path)
    };
    let ok = load(
        "[[users]]\nname = \"acme\"\npassword = \"x\"\nkeyspaces = [\"app\"]\nworkspaces = [42, 7]\n\
         [[users]]\nname = \"ops\"\npassword = \"x\"\nrole = \"dba\"\n",
    )
    .expect("a valid config");
    assert_eq!(ok.users[0].scope.workspaces(), Some(&[7u64, 42][..]));
    assert_eq!(ok.users[1].role, Role::Dba);
    for (users, needle) in [
        ("role = \"root\"", "expected \"app\", \"dba\" or \"admin\""),
        ("keyspaces = [\"nope\"]", "'nope' is not a keyspace"),
        ("keyspaces = []", "keyspaces = []"),
        ("workspaces = []", "workspaces = []"),
        ("role = \"dba\"\nworkspaces = [1]", "only role \"app\""),
        ("admin = true\nrole = \"app\"", "contradicts"),
    ] {
        let err = load(&format!(
            "[[users]]\nname = \"acme\"\npassword = \"x\"\n{users}\n"
        ))
        .expect_err(users);
        assert!(
            err.contains("user acme") && err.contains(needle),
            "{users}: {err}"
        );
    }
}
