//! Schema changes through the proxy are queued, not forwarded: the client gets the
//! migration's uuid at once and the schema changes only when the executor runs it;
//! `@@ddl_wait` blocks for the outcome; DDL in a transaction is refused; admin users
//! see and steer the queue.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use mysql_async::prelude::*;
use shardgate::config::ProxyConfig;
use shardgate::migrations::executor::{Executor, ExecutorConfig, NoSignals};
use shardgate::vschema::VSchema;

fn fast_executor() -> ExecutorConfig {
    ExecutorConfig {
        instant_spacing: Duration::from_millis(100),
        poll_interval: Duration::from_millis(100),
        lock_retry_interval: Duration::from_millis(200),
        ..ExecutorConfig::default()
    }
}

fn config(vschema: VSchema, migrations: Option<ExecutorConfig>) -> ProxyConfig {
    let mut c = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vschema,
    );
    c.migrations = migrations;
    c
}

fn column_exists(
    server: &shardgate::demo::localdb::LocalMariaDb,
    table: &str,
    column: &str,
) -> bool {
    let n = server
        .sql(&format!(
            "SELECT COUNT(*) FROM information_schema.columns WHERE table_schema='app' AND table_name='{table}' AND column_name='{column}'"
        ))
        .expect("information_schema");
    n.trim() == "1"
}

async fn error_of(conn: &mut mysql_async::Conn, sql: &str) -> (u16, String, String) {
    match conn.query_drop(sql).await {
        Err(mysql_async::Error::Server(e)) => (e.code, e.state, e.message),
        other => panic!("expected an error from {sql:?}, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_alter_is_queued_and_changes_nothing_until_an_executor_runs_it() {
    let (servers, vs) = common::servers_with_notes(2);
    // No executor in this proxy: the queue only fills.
    let proxy = common::start_proxy_config(config(vs.clone(), None)).await;
    let addr = proxy.addr.to_string();
    let mut app = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("app");

    let row: Option<(String, String, u32)> = app
        .query_first("ALTER TABLE notes ADD COLUMN extra INT NULL")
        .await
        .expect("queued");
    let (uuid, strategy, targets) = row.expect("one row");
    assert_eq!(uuid.len(), 36, "{uuid}");
    assert_eq!(strategy, "instant");
    assert_eq!(targets, 2, "one row per shard");
    tokio::time::sleep(Duration::from_millis(500)).await;
    for s in &servers {
        assert!(
            !column_exists(s, "notes", "extra"),
            "the schema must not change before the migration runs"
        );
    }
    // A column-type change is a copy.
    let row: Option<(String, String, u32)> = app
        .query_first("ALTER TABLE notes MODIFY id BIGINT")
        .await
        .expect("queued");
    assert_eq!(row.map(|r| r.1).as_deref(), Some("copy"));

    // Admin statements: refused to app, shown to admin.
    let (code, state, _) = error_of(&mut app, "SHOW MIGRATIONS").await;
    assert_eq!((code, state.as_str()), (1227, "42000"));
    let mut admin =
        mysql_async::Conn::new(common::mysql_opts(&addr, "admin", "admin", Some("app")))
            .await
            .expect("admin");
    let rows: Vec<mysql_async::Row> = admin
        .query(format!("SHOW MIGRATIONS LIKE '{uuid}'"))
        .await
        .expect("show");
    assert_eq!(rows.len(), 2);
    for r in &rows {
        let status: String = r.get("status").expect("status");
        assert_eq!(status, "queued");
    }
    // Cancel the copy before anything runs it.
    let all: Vec<mysql_async::Row> = admin.query("SHOW MIGRATIONS").await.expect("show all");
    let copy_uuid: String = all
        .iter()
        .find(|r| r.get::<String, _>("strategy").as_deref() == Some("copy"))
        .and_then(|r| r.get("uuid"))
        .expect("the copy migration");
    admin
        .query_drop(format!("ALTER MIGRATION '{copy_uuid}' CANCEL"))
        .await
        .expect("cancel");
    assert_eq!(admin.affected_rows(), 2);

    // Now an executor (as another proxy of the fleet would) runs the queue.
    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let executors: Vec<Executor> = vs
        .clusters
        .values()
        .map(|c| {
            Executor::spawn(
                c.clone(),
                fast_executor(),
                std::sync::Arc::new(NoSignals),
                stop_rx.clone(),
            )
        })
        .collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<mysql_async::Row> = admin
            .query(format!("SHOW MIGRATIONS LIKE '{uuid}'"))
            .await
            .expect("show");
        let done = rows
            .iter()
            .all(|r| r.get::<String, _>("status").as_deref() == Some("complete"));
        if done {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the migration never completed: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    for s in &servers {
        assert!(
            column_exists(s, "notes", "extra"),
            "the column exists after completion"
        );
    }
    let rows: Vec<mysql_async::Row> = admin
        .query(format!("SHOW MIGRATIONS LIKE '{copy_uuid}'"))
        .await
        .expect("show");
    assert!(
        rows.iter()
            .all(|r| r.get::<String, _>("status").as_deref() == Some("cancelled")),
        "{rows:?}"
    );
    let _ = stop_tx.send(true);
    for e in executors {
        e.join().await;
    }
    drop(app);
    drop(admin);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_wait_blocks_for_the_outcome_and_ddl_in_a_transaction_commits_it_first() {
    let (servers, vs) = common::servers_with_notes(2);
    let proxy = common::start_proxy_config(config(vs, Some(fast_executor()))).await;
    let addr = proxy.addr.to_string();
    let mut app = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("app");

    // In a transaction: as on MariaDB, the transaction is committed first (a later
    // ROLLBACK has nothing to undo), then the change is queued.
    app.query_drop("BEGIN").await.expect("begin");
    app.query_drop("INSERT INTO notes (id, workspace_id) VALUES (1, 1)")
        .await
        .expect("insert");
    app.query_drop("ALTER TABLE notes ADD COLUMN x INT NULL")
        .await
        .expect("queued after an implicit commit");
    app.query_drop("ROLLBACK").await.expect("rollback");
    let kept: u64 = servers
        .iter()
        .map(|s| common::number_on(s, "SELECT COUNT(*) FROM app.notes WHERE id = 1"))
        .sum();
    assert_eq!(kept, 1, "the INSERT was committed before the DDL");

    // With ddl_wait the statement returns when the change is done, as a plain OK.
    app.query_drop("SET @@ddl_wait = 60")
        .await
        .expect("ddl_wait");
    app.query_drop("ALTER TABLE notes ADD COLUMN waited INT NULL")
        .await
        .expect("waited for completion");
    for s in &servers {
        assert!(column_exists(s, "notes", "waited"));
    }
    // A change MariaDB refuses fails and says so (instant, and the column does not exist).
    let (code, _, msg) = error_of(&mut app, "ALTER TABLE notes DROP COLUMN never_there").await;
    assert_eq!(code, 1105);
    assert!(msg.contains("failed"), "{msg}");
    // CREATE TABLE runs at once on every shard, even with ddl_wait.
    app.query_drop("CREATE TABLE fresh (id INT PRIMARY KEY, workspace_id BIGINT NOT NULL)")
        .await
        .expect("create");
    for s in &servers {
        assert_eq!(s.sql("SELECT COUNT(*) FROM information_schema.tables WHERE table_schema='app' AND table_name='fresh'").expect("q").trim(), "1");
    }
    drop(app);
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_choose_postponed_completion_and_admins_may_ask_for_direct() {
    let servers = common::start_servers(1);
    servers[0]
        .sql("CREATE DATABASE app; CREATE TABLE app.notes (id INT PRIMARY KEY, v INT NOT NULL); INSERT INTO app.notes SELECT seq, seq FROM app.seq_1_to_2000")
        .expect("table");
    let toml = format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n[keyspaces.app]\ncluster = \"c1\"\n",
        servers[0].addr()
    );
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let proxy = common::start_proxy_config(config(vs, Some(fast_executor()))).await;
    let addr = proxy.addr.to_string();
    let mut app = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("app")))
        .await
        .expect("app");
    let mut admin =
        mysql_async::Conn::new(common::mysql_opts(&addr, "admin", "admin", Some("app")))
            .await
            .expect("admin");

    // direct is for admins.
    let (code, _, _) = error_of(&mut app, "SET @@ddl_strategy = 'direct'").await;
    assert_eq!(code, 1227);
    admin
        .query_drop("SET @@ddl_strategy = 'direct'")
        .await
        .expect("admin may");
    let row: Option<(String, String, u32)> = admin
        .query_first("ALTER TABLE notes ADD INDEX v_idx (v)")
        .await
        .expect("queued");
    assert_eq!(row.map(|r| r.1).as_deref(), Some("direct"));

    // Postponed completion: the copy waits before its cut-over until COMPLETE.
    app.query_drop("SET @@ddl_postpone_completion = 1")
        .await
        .expect("postpone");
    let row: Option<(String, String, u32)> = app
        .query_first("ALTER TABLE notes MODIFY v BIGINT NOT NULL")
        .await
        .expect("queued");
    let (uuid, strategy, _) = row.expect("row");
    assert_eq!(strategy, "copy");
    let stage_of = |rows: &[mysql_async::Row]| -> (String, String) {
        let r = rows.first().expect("a row");
        (
            r.get::<String, _>("status").unwrap_or_default(),
            r.get::<String, _>("stage").unwrap_or_default(),
        )
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<mysql_async::Row> = admin
            .query(format!("SHOW MIGRATIONS LIKE '{uuid}'"))
            .await
            .expect("show");
        let (status, stage) = stage_of(&rows);
        assert_ne!(status, "complete", "must not cut over before COMPLETE");
        if stage == "postponed" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "never reached the postponed stage: {status} {stage}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let v_type = || {
        servers[0]
            .sql("SELECT DATA_TYPE FROM information_schema.columns WHERE table_schema='app' AND table_name='notes' AND column_name='v'")
            .expect("type")
            .trim()
            .to_string()
    };
    assert_eq!(v_type(), "int");
    // Writes during the wait reach the ghost and survive the cut-over.
    app.query_drop("UPDATE notes SET v = 424242 WHERE id = 5")
        .await
        .expect("write while postponed");
    admin
        .query_drop(format!("ALTER MIGRATION '{uuid}' COMPLETE"))
        .await
        .expect("complete");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let rows: Vec<mysql_async::Row> = admin
            .query(format!("SHOW MIGRATIONS LIKE '{uuid}'"))
            .await
            .expect("show");
        if stage_of(&rows).0 == "complete" {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "COMPLETE never cut over"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(v_type(), "bigint");
    let v: Option<i64> = app
        .query_first("SELECT v FROM notes WHERE id = 5")
        .await
        .expect("read");
    assert_eq!(v, Some(424242));
    drop(app);
    drop(admin);
    proxy.stop().await;
}
