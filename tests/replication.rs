//! Replicated local clusters (primary + standbys, GTID, semi-sync): rows reach every
//! standby, standbys are read-only, a hand-made promotion works with the harness's
//! helpers, start-up time. Checked directly on the servers, not through the proxy.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use common::{
    number_on, start_replicated_clusters, start_replicated_clusters_with, ShardedVSchema,
};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::demo::replication::{LocalCluster, LocalClusterOptions};

const CATCH_UP: Duration = Duration::from_secs(20);

fn status(server: &LocalMariaDb, name: &str) -> String {
    server
        .global_status(name)
        .unwrap_or_else(|e| panic!("{name} on {}: {e}", server.addr()))
}

fn rows_in_notes(server: &LocalMariaDb) -> u64 {
    number_on(server, "SELECT COUNT(*) FROM app.notes")
}

#[test]
fn rows_written_on_the_primary_reach_both_read_only_standbys_semi_synchronously() {
    // A long semi-sync timeout: on a loaded machine an acknowledgement may take longer
    // than the default second, and a fallback to asynchronous replication would make
    // the counts below depend on the load.
    let clusters = start_replicated_clusters_with(
        1,
        &LocalClusterOptions {
            standbys: 2,
            semi_sync_timeout: Duration::from_secs(30),
            ..LocalClusterOptions::default()
        },
    );
    let cluster = &clusters[0];
    assert_eq!(cluster.standbys.len(), 2);

    let mut script = String::from(
        "CREATE DATABASE app;\nCREATE TABLE app.notes (id INT PRIMARY KEY, body VARCHAR(40));\n",
    );
    // One transaction per row, so each one waits for a standby's acknowledgement.
    for id in 1..=100 {
        script.push_str(&format!(
            "INSERT INTO app.notes VALUES ({id}, 'note {id}');\n"
        ));
    }
    cluster.primary.sql(&script).expect("write on the primary");
    cluster.wait_caught_up(CATCH_UP).expect("standbys catch up");

    for standby in &cluster.standbys {
        assert_eq!(rows_in_notes(standby), 100, "rows on {}", standby.addr());
        assert_eq!(number_on(standby, "SELECT @@read_only"), 1);
        assert_eq!(number_on(standby, "SELECT @@log_bin"), 1);
        let replica = standby
            .replica_status()
            .expect("SHOW SLAVE STATUS")
            .expect("the standby replicates");
        assert!(replica.running(), "{replica:?}");
        assert_eq!(replica.master_port, cluster.primary.port.to_string());
    }
    assert_eq!(number_on(&cluster.primary, "SELECT @@read_only"), 0);

    assert_eq!(
        status(&cluster.primary, "Rpl_semi_sync_master_status"),
        "ON"
    );
    assert_eq!(
        status(&cluster.primary, "Rpl_semi_sync_master_clients"),
        "2"
    );
    let acknowledged: u64 = status(&cluster.primary, "Rpl_semi_sync_master_yes_tx")
        .parse()
        .expect("a count");
    assert!(
        acknowledged >= 100,
        "every insert should have been acknowledged by a standby, {acknowledged} were"
    );
    assert_eq!(status(&cluster.primary, "Rpl_semi_sync_master_no_tx"), "0");

    // Same transactions everywhere: the standbys log what they apply.
    let primary_pos = cluster.primary.gtid_binlog_pos().expect("primary position");
    assert!(primary_pos.starts_with("0-1-"), "{primary_pos}");
    for standby in &cluster.standbys {
        assert_eq!(standby.gtid_binlog_pos().expect("binlog pos"), primary_pos);
        let applied = standby.sql("SELECT @@gtid_slave_pos").expect("slave pos");
        assert_eq!(applied.trim(), primary_pos);
    }

    // The vschema lists standbys only when asked to.
    let plain = ShardedVSchema::for_clusters(&clusters).toml();
    assert!(!plain.contains("standbys"), "{plain}");
    let listed = ShardedVSchema::for_clusters(&clusters)
        .with_standbys()
        .toml();
    let expected = format!(
        "standbys = [\"{}\", \"{}\"]",
        cluster.standbys[0].addr(),
        cluster.standbys[1].addr()
    );
    assert!(listed.contains(&expected), "{listed}");
}

#[test]
fn a_standby_promoted_by_hand_takes_writes_and_the_others_follow_it() {
    let clusters = start_replicated_clusters(1, 2);
    let cluster = &clusters[0];
    let (old_primary, new_primary, other) =
        (&cluster.primary, &cluster.standbys[0], &cluster.standbys[1]);
    old_primary
        .sql(
            "CREATE DATABASE app;\n\
             CREATE TABLE app.notes (id INT PRIMARY KEY, body VARCHAR(40));\n\
             INSERT INTO app.notes VALUES (1, 'before');",
        )
        .expect("write on the old primary");
    cluster.wait_caught_up(CATCH_UP).expect("standbys catch up");

    // What the proxy will automate: stop the old primary's writes, promote a standby
    // that has everything, point the others at it.
    old_primary
        .set_read_only(true)
        .expect("old primary read-only");
    new_primary.stop_replicating().expect("stop replicating");
    new_primary
        .set_read_only(false)
        .expect("new primary writable");
    old_primary
        .replicate_from(new_primary)
        .expect("old primary follows");
    other
        .replicate_from(new_primary)
        .expect("repoint the other");
    for follower in [old_primary, other] {
        follower
            .wait_replicating(CATCH_UP)
            .expect("follower replicates from the new primary");
    }
    assert_eq!(new_primary.replica_status().expect("status"), None);

    new_primary
        .sql("INSERT INTO app.notes VALUES (2, 'after')")
        .expect("write on the new primary");
    let pos = new_primary.gtid_binlog_pos().expect("new primary position");
    assert!(
        pos.starts_with("0-2-"),
        "the new primary's write carries its server id: {pos}"
    );
    for follower in [old_primary, other] {
        follower
            .wait_for_gtid(&pos, CATCH_UP)
            .expect("follower catches up");
        assert_eq!(rows_in_notes(follower), 2, "rows on {}", follower.addr());
        assert_eq!(number_on(follower, "SELECT @@read_only"), 1);
    }
    // Both followers become semi-sync clients of the new primary.
    let deadline = Instant::now() + CATCH_UP;
    while status(new_primary, "Rpl_semi_sync_master_clients") != "2" {
        assert!(
            Instant::now() < deadline,
            "the new primary should get 2 semi-sync clients"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn one_replicated_cluster_start_up_time() {
    let cluster = LocalCluster::start(&LocalClusterOptions {
        standbys: 2,
        ..LocalClusterOptions::default()
    })
    .expect("start a replicated cluster");
    eprintln!(
        "primary + 2 standbys replicating in {:?} (servers started in {:?})",
        cluster.started_in,
        cluster.members().map(|m| m.started_in).collect::<Vec<_>>()
    );
    // Start-up leaves nothing behind: the marker database is gone everywhere.
    for member in cluster.members() {
        let marker = member
            .sql("SHOW DATABASES LIKE 'shardgate_replication_check'")
            .expect("show databases");
        assert_eq!(marker.trim(), "", "on {}", member.addr());
    }
    cluster.stop();
}

#[test]
fn a_cluster_without_standbys_is_one_server_with_a_row_based_binary_log() {
    let cluster = LocalCluster::start(&LocalClusterOptions::default()).expect("start");
    assert!(cluster.standbys.is_empty());
    assert_eq!(number_on(&cluster.primary, "SELECT @@log_bin"), 1);
    assert_eq!(
        cluster
            .primary
            .sql("SELECT @@binlog_format, @@binlog_row_image")
            .expect("binlog settings")
            .trim(),
        "ROW\tFULL"
    );
    assert_eq!(cluster.primary.replica_status().expect("status"), None);
    cluster
        .wait_caught_up(CATCH_UP)
        .expect("nothing to wait for");
}

#[test]
fn the_demo_with_standbys_lists_them_and_they_hold_the_sample_data() {
    let listen = common::demo::free_ports(1)[0];
    // Four primaries, then their four standbys.
    let base_port = common::demo::free_ports(8)[0];
    let dir = tempfile::tempdir().expect("temp dir");
    let log_path = dir.path().join("demo.log");
    let log = std::fs::File::create(&log_path).expect("create log");
    let log_err = log.try_clone().expect("clone log handle");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["demo", "--workspaces", "10", "--standbys", "1"])
        .arg("--base-port")
        .arg(base_port.to_string())
        .arg("--listen")
        .arg(format!("127.0.0.1:{listen}"))
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .expect("spawn shardgate demo");
    let mut demo = common::demo::DemoProcess { child, log_path };
    demo.wait_serving();

    let standby_ports: Vec<u16> = (4..8).map(|i| base_port + i).collect();
    let banner = demo.log();
    let mut workspaces = 0;
    for port in standby_ports {
        let addr = format!("127.0.0.1:{port}");
        assert!(
            banner.contains(&format!("standbys {addr}")),
            "the banner should list standby {addr}:\n{banner}"
        );
        let read_only = common::cli_ok(&addr, "shardgate", "shardgate", None, "SELECT @@read_only");
        assert_eq!(read_only.trim(), "1", "standby {addr} is read-only");
        let count = common::cli_ok(
            &addr,
            "shardgate",
            "shardgate",
            Some("app"),
            "SELECT COUNT(*) FROM workspaces",
        );
        workspaces += count.trim().parse::<u64>().expect("a count");
    }
    assert_eq!(
        workspaces, 10,
        "every workspace is on its cluster's standby"
    );

    let status = demo.terminate();
    assert!(
        status.success(),
        "the demo stopped with {status}:\n{}",
        demo.log()
    );
}

#[test]
fn switch_over_makes_a_standby_the_primary_and_the_old_primary_its_standby() {
    let mut clusters = start_replicated_clusters(1, 2);
    let cluster = &mut clusters[0];
    let (old_port, chosen_port) = (cluster.primary.port, cluster.standbys[0].port);
    cluster
        .primary
        .sql("CREATE DATABASE app;\nCREATE TABLE app.notes (id INT PRIMARY KEY);")
        .expect("write on the old primary");

    cluster.switch_over(0, CATCH_UP).expect("switch over");
    assert_eq!(cluster.primary.port, chosen_port);
    assert_eq!(cluster.standbys[0].port, old_port);
    assert_eq!(number_on(&cluster.primary, "SELECT @@read_only"), 0);
    assert_eq!(cluster.primary.replica_status().expect("status"), None);

    cluster
        .primary
        .sql("INSERT INTO app.notes VALUES (1)")
        .expect("write on the new primary");
    cluster.wait_caught_up(CATCH_UP).expect("standbys catch up");
    for standby in &cluster.standbys {
        assert_eq!(rows_in_notes(standby), 1, "rows on {}", standby.addr());
        assert_eq!(number_on(standby, "SELECT @@read_only"), 1);
        let replica = standby
            .replica_status()
            .expect("SHOW SLAVE STATUS")
            .expect("replicates");
        assert_eq!(replica.master_port, chosen_port.to_string());
    }
}

#[test]
fn with_its_only_standby_paused_the_primary_falls_back_to_asynchronous_and_recovers() {
    let clusters = start_replicated_clusters(1, 1);
    let cluster = &clusters[0];
    let standby = &cluster.standbys[0];
    cluster
        .primary
        .sql("CREATE DATABASE app;\nCREATE TABLE app.notes (id INT PRIMARY KEY);")
        .expect("create table");
    cluster.wait_caught_up(CATCH_UP).expect("caught up");

    // A paused standby stays connected, so the commit waits for it: one timeout.
    standby.pause().expect("SIGSTOP the standby");
    let begun = Instant::now();
    cluster
        .primary
        .sql("INSERT INTO app.notes VALUES (1)")
        .expect("the write still succeeds");
    eprintln!("write with the standby paused took {:?}", begun.elapsed());
    assert_eq!(
        status(&cluster.primary, "Rpl_semi_sync_master_status"),
        "OFF"
    );
    assert_ne!(status(&cluster.primary, "Rpl_semi_sync_master_no_tx"), "0");

    standby.resume().expect("SIGCONT the standby");
    cluster
        .wait_caught_up(CATCH_UP)
        .expect("caught up after resume");
    assert_eq!(rows_in_notes(standby), 1);
    // Semi-sync switches itself back on once the standby has caught up and
    // acknowledges again.
    let deadline = Instant::now() + CATCH_UP;
    let mut id = 2;
    while status(&cluster.primary, "Rpl_semi_sync_master_status") != "ON" {
        assert!(
            Instant::now() < deadline,
            "semi-sync should come back on after the standby caught up"
        );
        cluster
            .primary
            .sql(&format!("INSERT INTO app.notes VALUES ({id})"))
            .expect("write");
        id += 1;
        std::thread::sleep(Duration::from_millis(50));
    }
}
