//! Local MariaDB servers: parallel start, TCP login as the created user, cleanup.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use shardgate::demo::localdb::{LocalDbOptions, LocalMariaDb};

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

/// A client setup many MySQL users have in their shell (`MYSQL_PWD`, `MYSQL_HOST`,
/// `MYSQL_TCP_PORT`, a `~/.my.cnf` with another host and password) must not reach the
/// MariaDB programs shardgate starts: the demo has to start its servers, load its data
/// and serve. The demo runs as a child process so only it sees that environment.
#[test]
fn the_demo_ignores_the_users_mysql_environment_and_option_files() {
    let home = tempfile::tempdir().expect("temp HOME");
    std::fs::write(
        home.path().join(".my.cnf"),
        "[client]\nhost=192.0.2.1\nport=1\nuser=nobody\npassword=wrong\n\
         [mysql]\ndatabase=nowhere\n[mysqld]\nport=1\nbind-address=192.0.2.1\n[mariadb]\nport=1\n",
    )
    .expect("write ~/.my.cnf");
    let listen = common::demo::free_ports(1)[0];
    let base_port = common::demo::free_ports(4)[0];
    let log_path = home.path().join("demo.log");
    let log = std::fs::File::create(&log_path).expect("create log");
    let log_err = log.try_clone().expect("clone log handle");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_shardgate"))
        .args(["demo", "--workspaces", "10"])
        .arg("--base-port")
        .arg(base_port.to_string())
        .arg("--listen")
        .arg(format!("127.0.0.1:{listen}"))
        .env("HOME", home.path())
        .env("MYSQL_PWD", "wrong")
        .env("MYSQL_HOST", "192.0.2.1")
        .env("MYSQL_TCP_PORT", "1")
        .env("MYSQL_UNIX_PORT", home.path().join("no.sock"))
        .env("MYSQL_TEST_LOGIN_FILE", home.path().join(".mylogin.cnf"))
        .env("MARIADB_HOST", "192.0.2.1")
        .stdin(std::process::Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .spawn()
        .expect("spawn shardgate demo");
    let mut demo = common::demo::DemoProcess { child, log_path };
    demo.wait_serving();
    let count = common::cli_ok(
        &format!("127.0.0.1:{listen}"),
        "app",
        "app",
        Some("app"),
        "SELECT COUNT(*) FROM workspaces WHERE workspace_id = 3",
    );
    assert_eq!(count.trim(), "1", "workspace 3 should be loaded");

    let status = demo.terminate();
    assert!(
        status.success(),
        "the demo stopped with {status}:\n{}",
        demo.log()
    );
}
