//! Local MariaDB servers: parallel start, TCP login as the created user, cleanup.

mod common;

use shardgate::localdb::{LocalDbOptions, LocalMariaDb};

#[test]
fn two_servers_start_in_parallel_and_answer_on_their_own_ports() {
    let servers = common::start_servers(2);
    assert_ne!(servers[0].port, servers[1].port);
    for server in &servers {
        eprintln!(
            "server on {} started in {:?}",
            server.addr(),
            server.started_in
        );
        let port = common::cli_ok(
            &server.addr(),
            "shardgate",
            "shardgate",
            None,
            "SELECT @@port",
        );
        assert_eq!(port.trim(), server.port.to_string());
        let bound = common::direct_query(server, "SELECT @@bind_address");
        assert_eq!(bound.trim(), "127.0.0.1");
    }
    let dirs: Vec<_> = servers.iter().map(|s| s.dir.clone()).collect();
    for (server, dir) in servers.into_iter().zip(&dirs) {
        assert!(dir.is_dir());
        server.stop();
        assert!(!dir.exists(), "stop should remove {}", dir.display());
    }
}

#[test]
fn dropping_a_server_stops_it_and_removes_its_directory() {
    let server = LocalMariaDb::start(&LocalDbOptions::default()).expect("start MariaDB");
    let dir = server.dir.clone();
    let addr = server.socket_addr();
    drop(server);
    assert!(!dir.exists());
    assert!(
        std::net::TcpStream::connect(addr).is_err(),
        "nothing should listen on {addr}"
    );
}

#[test]
fn a_busy_port_is_reported_as_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = taken.local_addr().expect("local addr").port();
    let err = LocalMariaDb::start(&LocalDbOptions {
        port: Some(port),
        ..LocalDbOptions::default()
    })
    .expect_err("the port is taken");
    assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse, "{err}");
}

#[test]
fn sql_errors_carry_the_server_message() {
    let server = LocalMariaDb::start(&LocalDbOptions::default()).expect("start MariaDB");
    let err = server
        .sql("SELECT * FROM no_such_db.t")
        .expect_err("unknown database");
    assert!(err.to_string().contains("no_such_db"), "{err}");
    // Scripts larger than an argv entry go through stdin.
    let big = format!("SELECT LENGTH('{}')", "x".repeat(300_000));
    assert_eq!(server.sql(&big).expect("big script").trim(), "300000");
}

#[test]
fn a_paused_server_resumes() {
    let server = LocalMariaDb::start(&LocalDbOptions::default()).expect("start MariaDB");
    server.pause().expect("SIGSTOP");
    server.resume().expect("SIGCONT");
    assert_eq!(
        server.sql("SELECT 1").expect("query after resume").trim(),
        "1"
    );
}

#[test]
fn shard_names_split_evenly() {
    assert_eq!(common::shard_names(1), ["-"]);
    assert_eq!(common::shard_names(2), ["-80", "80-"]);
    assert_eq!(common::shard_names(4), ["-40", "40-80", "80-c0", "c0-"]);
}
