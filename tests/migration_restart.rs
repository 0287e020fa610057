//! The migration queue survives the proxy: `kill -9` of the real shardgate binary in the
//! middle of a copy, a new shardgate process, and the copy resumes from its checkpoint
//! and completes with every row intact.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::*;

fn one(server: &shardgate::demo::localdb::LocalMariaDb, sql: &str) -> String {
    server.sql(sql).expect(sql).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_copy_killed_with_its_proxy_resumes_from_its_checkpoint_in_a_new_proxy() {
    let servers = common::start_servers(1);
    let db = &servers[0];
    db.sql("CREATE DATABASE app; CREATE TABLE app.big (id INT PRIMARY KEY, v INT NOT NULL)")
        .expect("create");
    db.sql("INSERT INTO app.big SELECT seq, seq * 3 FROM app.seq_1_to_200000")
        .expect("200,000 rows");
    let toml = format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n\
         [keyspaces.app]\ncluster = \"c1\"\n",
        db.addr()
    );
    // Small chunks, so the copy is surely mid-way when the proxy dies.
    let extra = "[migrations]\nchunk_target_ms = 20\n";
    let first = common::spawn_proxy_binary(&toml, extra);
    let mut app = mysql_async::Conn::new(common::mysql_opts(
        &first.addr_string(),
        "app",
        "app",
        Some("app"),
    ))
    .await
    .expect("connect");
    let row: Option<(String, String, u32)> = app
        .query_first("ALTER TABLE big MODIFY v BIGINT NOT NULL")
        .await
        .expect("queued");
    let (uuid, strategy, _) = row.expect("a row");
    assert_eq!(strategy, "copy");
    drop(app);

    // Wait until some chunks are committed, then kill -9.
    let progress = format!(
        "SELECT CONCAT(status, ' ', rows_copied) FROM _shardgate.schema_migrations WHERE uuid = '{uuid}'"
    );
    let deadline = Instant::now() + Duration::from_secs(60);
    let copied_before_kill = loop {
        let p = one(db, &progress);
        let copied: u64 = p
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if p.starts_with("running") && copied >= 20_000 {
            break copied;
        }
        assert!(
            !p.starts_with("complete"),
            "the copy finished before the kill: {p}"
        );
        assert!(
            Instant::now() < deadline,
            "the copy never got going: {p}\n{}",
            first.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    first.kill();
    let checkpoint_rows: u64 = one(
        db,
        &format!("SELECT rows_copied FROM _shardgate.schema_migrations WHERE uuid = '{uuid}'"),
    )
    .parse()
    .expect("rows_copied");
    assert!(
        checkpoint_rows >= copied_before_kill,
        "committed progress is durable"
    );
    assert!(
        checkpoint_rows < 200_000,
        "killed mid-copy ({checkpoint_rows} rows)"
    );
    // The copy captured changes from the binary log, and its checkpoint holds the
    // position the capture had applied when its chunk began.
    assert_eq!(
        one(
            db,
            &format!("SELECT capture FROM _shardgate.schema_migrations WHERE uuid = '{uuid}'")
        ),
        "binlog"
    );
    let checkpoint = one(
        db,
        &format!("SELECT checkpoint FROM _shardgate.schema_migrations WHERE uuid = '{uuid}'"),
    );
    assert!(
        checkpoint.contains(" mariadb-bin."),
        "binlog position in the checkpoint: {checkpoint}"
    );
    assert_eq!(
        one(
            db,
            "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE EVENT_OBJECT_SCHEMA = 'app'"
        ),
        "0",
        "no triggers with binlog capture"
    );
    // Writes go on while no proxy runs the queue: they are in the binary log, which the
    // next proxy's capture reads again from the checkpoint's position.
    db.sql("UPDATE app.big SET v = -1 WHERE id = 7; DELETE FROM app.big WHERE id = 199999; INSERT INTO app.big VALUES (300000, 5)")
        .expect("writes while the executor is dead");

    // A new proxy process picks the migration up.
    let second = common::spawn_proxy_binary(&toml, extra);
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut first_resumed: Option<u64> = None;
    loop {
        let p = one(db, &progress);
        let copied: u64 = p
            .split(' ')
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        if p.starts_with("running") && first_resumed.is_none() && copied > 0 {
            first_resumed = Some(copied);
        }
        if p.starts_with("complete") {
            break;
        }
        assert!(!p.starts_with("failed"), "{p}\n{}", second.log());
        assert!(
            Instant::now() < deadline,
            "never completed: {p}\n{}",
            second.log()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // It went on from the checkpoint rather than from the start.
    let resumed = first_resumed.expect("the new proxy was seen running the copy");
    assert!(
        resumed >= checkpoint_rows,
        "resumed at {resumed}, checkpoint was {checkpoint_rows}"
    );
    let note = one(
        db,
        &format!("SELECT message FROM _shardgate.schema_migrations WHERE uuid = '{uuid}'"),
    );
    assert!(
        note.contains("was lost"),
        "the row says it was taken over: {note}"
    );
    // Every row, with the new type; the writes made while no proxy ran are there.
    assert_eq!(
        one(db, "SELECT DATA_TYPE FROM information_schema.columns WHERE table_schema='app' AND table_name='big' AND column_name='v'"),
        "bigint"
    );
    assert_eq!(one(db, "SELECT COUNT(*) FROM app.big"), "200000");
    let expected_sum: i64 = (1..=200_000i64).map(|i| i * 3).sum::<i64>() - 21 - 1 - 599_997 + 5;
    assert_eq!(
        one(db, "SELECT SUM(v) FROM app.big"),
        expected_sum.to_string()
    );
    assert_eq!(
        one(
            db,
            "SELECT COUNT(*) FROM information_schema.triggers WHERE event_object_schema='app'"
        ),
        "0",
        "no triggers left"
    );
    drop(second);
}
