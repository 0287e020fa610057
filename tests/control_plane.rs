//! The live, versioned vschema (issue: control plane) against real MariaDB servers:
//! `ALTER VSCHEMA` under load, the watched file, history and rollback, the HTTP API,
//! the refusal of changes that would move rows, and versions kept across a restart.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::config::ProxyConfig;
use shardgate::vschema::VSchema;

fn free_addr() -> std::net::SocketAddr {
    common::free_local_addr()
}

fn one_cluster(server: &shardgate::demo::localdb::LocalMariaDb) -> String {
    server.sql("CREATE DATABASE IF NOT EXISTS app").expect("db");
    server
        .sql("CREATE TABLE IF NOT EXISTS app.t (id INT PRIMARY KEY AUTO_INCREMENT, v INT)")
        .expect("table");
    format!(
        "[clusters.c1]\nprimary = \"{}\"\nuser = \"shardgate\"\npassword = \"shardgate\"\n\
         [keyspaces.app]\ncluster = \"c1\"\n",
        server.addr()
    )
}

/// (Version, Change) rows of an ALTER/ROLLBACK VSCHEMA answer.
async fn change(c: &mut mysql_async::Conn, sql: &str) -> Vec<(u64, String)> {
    c.query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"))
}

async fn error_of(c: &mut mysql_async::Conn, sql: &str) -> (u16, String) {
    common::server_error(c, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_vschema_adds_a_cluster_and_keyspace_under_load_with_no_client_error() {
    let servers = common::start_servers(2);
    let toml = one_cluster(&servers[0]);
    servers[1].sql("CREATE DATABASE logs").expect("db");
    servers[1]
        .sql("CREATE TABLE logs.events (id INT PRIMARY KEY, what VARCHAR(20))")
        .expect("table");
    let proxy = common::start_proxy(&toml).await;
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut load = Vec::new();
    for i in 0..4 {
        let opts = common::mysql_opts(&proxy.addr_string(), "app", "app", Some("app"));
        let (ok, failed, stop) = (ok.clone(), failed.clone(), stop.clone());
        load.push(tokio::spawn(async move {
            let mut c = mysql_async::Conn::new(opts).await.expect("connect");
            while !stop.load(Ordering::Relaxed) {
                let r = if i % 2 == 0 {
                    c.query_drop("INSERT INTO t (v) VALUES (1)").await
                } else {
                    c.query_drop("SELECT COUNT(*) FROM t").await
                };
                match r {
                    Ok(()) => ok.fetch_add(1, Ordering::Relaxed),
                    Err(e) => {
                        eprintln!("load error: {e}");
                        failed.fetch_add(1, Ordering::Relaxed)
                    }
                };
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut admin = proxy.connect("admin", None).await;
    let added = change(
        &mut admin,
        &format!(
            "ALTER VSCHEMA ADD CLUSTER c2 PRIMARY '{}' USER 'shardgate' PASSWORD 'shardgate'",
            servers[1].addr()
        ),
    )
    .await;
    assert_eq!(added.len(), 1, "{added:?}");
    assert_eq!(added[0].0, 2);
    assert!(added[0].1.contains("cluster c2: added"), "{added:?}");
    let added = change(&mut admin, "ALTER VSCHEMA ADD KEYSPACE logs ON CLUSTER c2").await;
    assert_eq!(added[0].0, 3, "{added:?}");
    // The new keyspace serves at once, on the new cluster.
    let mut c = proxy.connect("app", Some("logs")).await;
    c.query_drop("INSERT INTO events VALUES (1, 'hello')")
        .await
        .expect("insert into the new keyspace");
    assert_eq!(
        common::direct_query(&servers[1], "SELECT what FROM logs.events WHERE id = 1").trim(),
        "hello"
    );
    // And dropping it again (keyspace, then cluster) while the load runs.
    change(&mut admin, "ALTER VSCHEMA DROP KEYSPACE logs").await;
    change(&mut admin, "ALTER VSCHEMA DROP CLUSTER c2").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    stop.store(true, Ordering::Relaxed);
    for l in load {
        l.await.expect("load task");
    }
    assert_eq!(
        failed.load(Ordering::Relaxed),
        0,
        "client errors under load"
    );
    assert!(ok.load(Ordering::Relaxed) > 20, "the load ran");
    let (code, msg) = error_of(&mut c, "SELECT * FROM events").await;
    // As after DROP DATABASE of the current database on MariaDB.
    assert_eq!(code, 1046, "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_and_rollback_round_trip_and_passwords_are_hidden() {
    let servers = common::start_servers(1);
    let toml = one_cluster(&servers[0]);
    servers[0].sql("CREATE DATABASE reports").expect("db");
    let proxy = common::start_proxy(&toml).await;
    let mut admin = proxy.connect("admin", None).await;
    change(
        &mut admin,
        "ALTER VSCHEMA ADD KEYSPACE reports ON CLUSTER c1",
    )
    .await;
    change(
        &mut admin,
        "ALTER VSCHEMA ADD REFERENCE TABLE reports.countries",
    )
    .await;
    let history: Vec<(u64, String, String, String, String)> =
        admin.query("SHOW VSCHEMA HISTORY").await.expect("history");
    let versions: Vec<u64> = history.iter().map(|h| h.0).collect();
    assert_eq!(versions, vec![3, 2, 1]);
    assert_eq!(history[0].2, "admin");
    assert_eq!(history[0].3, "sql");
    assert!(
        history[0].4.contains("table countries added"),
        "{history:?}"
    );
    assert!(
        history[1].4.contains("keyspace reports: added"),
        "{history:?}"
    );
    let rolled = change(&mut admin, "ROLLBACK VSCHEMA TO VERSION 1").await;
    assert_eq!(rolled[0].0, 4);
    assert!(
        rolled
            .iter()
            .any(|(_, l)| l.contains("keyspace reports: dropped")),
        "{rolled:?}"
    );
    let (code, _) = error_of(&mut admin, "USE reports").await;
    assert_eq!(code, 1049, "the rolled-back keyspace is gone");
    let shown: Vec<(u64, String, String, String, String)> =
        admin.query("SHOW VSCHEMA").await.expect("show");
    assert_eq!(shown[0].0, 4);
    assert_eq!(shown[0].2, "rollback");
    assert!(
        shown[0].4.contains("password = \"********\""),
        "{}",
        shown[0].4
    );
    assert!(!shown[0].4.contains("password = \"shardgate\""));
    // Rolling forward again, to version 3's document.
    change(&mut admin, "ROLLBACK VSCHEMA TO VERSION 3").await;
    admin.query_drop("USE reports").await.expect("back");
    // An app user may not read or change it.
    let mut app = proxy.connect("app", Some("app")).await;
    for sql in ["SHOW VSCHEMA", "ALTER VSCHEMA DROP KEYSPACE reports"] {
        let (code, _) = error_of(&mut app, sql).await;
        assert_eq!(code, 1227, "{sql}");
    }
    let (code, msg) = error_of(&mut admin, "ROLLBACK VSCHEMA TO VERSION 99").await;
    assert_eq!(code, 1105);
    assert!(msg.contains("no such version"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_that_would_move_rows_is_refused_unless_it_says_so() {
    let servers = common::start_servers(2);
    let plain = common::ShardedVSchema::new(&servers).build();
    let vs = VSchema::from_toml_str(&plain).expect("vs");
    let k = vs
        .keyspaces
        .values()
        .find(|k| k.sharded)
        .expect("sharded")
        .clone();
    let first = k.shards[0].name.clone();
    // A workspace the hash places on another shard than the first.
    let ws = (1..1000u64)
        .find(|w| k.shard_for_workspace(*w).name != first)
        .expect("a workspace off the first shard");
    let toml = common::ShardedVSchema::new(&servers)
        .pin(ws, &first)
        .build();
    let proxy = common::start_proxy(&toml).await;
    let mut admin = proxy.connect("admin", None).await;
    let ks = &k.name;
    let drop_pin = format!("ALTER VSCHEMA DROP PIN WORKSPACE {ws} IN KEYSPACE {ks}");
    let (code, msg) = error_of(&mut admin, &drop_pin).await;
    assert_eq!(code, 1105, "{msg}");
    assert!(
        msg.contains("move") && msg.contains(&format!("workspace {ws}")),
        "{msg}"
    );
    // Still version 1, still pinned.
    let shown: Vec<(u64, String, String, String, String)> =
        admin.query("SHOW VSCHEMA").await.expect("show");
    assert_eq!(shown[0].0, 1);
    // Pinning another workspace where the hash already puts it moves nothing.
    let other = (1..1000u64)
        .find(|w| *w != ws && k.shard_for_workspace(*w).name == first)
        .expect("a workspace on the first shard");
    let done = change(
        &mut admin,
        &format!("ALTER VSCHEMA ADD PIN WORKSPACE {other} IN KEYSPACE {ks} TO SHARD '{first}'"),
    )
    .await;
    assert_eq!(done[0].0, 2, "{done:?}");
    // Said explicitly, the unpin is applied.
    let done = change(&mut admin, &format!("{drop_pin} ALLOW DATA MOVEMENT")).await;
    assert_eq!(done[0].0, 3, "{done:?}");
    assert!(done[0].1.contains("unpinned"), "{done:?}");
}

fn basic(user: &str, password: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
}

/// (status code, headers and body) of one HTTP request.
async fn http(
    addr: std::net::SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, String)],
    body: &str,
) -> (u16, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut s = loop {
        match tokio::net::TcpStream::connect(addr).await {
            Ok(s) => break s,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("connect {addr}: {e}"),
        }
    };
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (k, v) in headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    req.push_str(body);
    s.write_all(req.as_bytes()).await.expect("send");
    let mut out = String::new();
    tokio::time::timeout(Duration::from_secs(10), s.read_to_string(&mut out))
        .await
        .expect("answer in time")
        .expect("read");
    let code = out
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    (code, out)
}

fn json_body(response: &str) -> serde_json::Value {
    let body = response.split("\r\n\r\n").nth(1).expect("body");
    serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_api_serves_versions_with_if_match_409_422_and_roles() {
    let servers = common::start_servers(1);
    let toml = one_cluster(&servers[0]);
    servers[0].sql("CREATE DATABASE extra").expect("db");
    let http_addr = free_addr();
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        VSchema::from_toml_str(&toml).expect("vschema"),
    );
    config.metrics_listen = Some(http_addr);
    let proxy = common::start_proxy_config(config).await;
    let admin = [(
        "Authorization",
        format!("Basic {}", basic("admin", "admin")),
    )];
    let (code, r) = http(http_addr, "GET", "/vschema", &admin, "").await;
    assert_eq!(code, 200, "{r}");
    assert!(r.contains("ETag: \"1\""), "{r}");
    let v = json_body(&r);
    assert_eq!(v["version"], 1);
    let doc = v["document"].as_str().expect("document").to_string();
    assert!(
        doc.contains("password = \"********\"") && !doc.contains("password = \"shardgate\""),
        "{doc}"
    );
    // No credentials, wrong ones, a role too low.
    assert_eq!(http(http_addr, "GET", "/vschema", &[], "").await.0, 401);
    let wrong = [("Authorization", format!("Basic {}", basic("admin", "nope")))];
    assert_eq!(http(http_addr, "GET", "/vschema", &wrong, "").await.0, 401);
    let app = [
        ("Authorization", format!("Basic {}", basic("app", "app"))),
        ("If-Match", "1".to_string()),
    ];
    assert_eq!(http(http_addr, "PUT", "/vschema", &app, &doc).await.0, 403);
    // PUT: a new keyspace, with the hidden password sent back as it was shown.
    let next = format!("{doc}\n[keyspaces.extra]\ncluster = \"c1\"\n");
    let (code, r) = http(http_addr, "PUT", "/vschema", &admin, &next).await;
    assert_eq!(code, 428, "no If-Match: {r}");
    let with = |v: &str| vec![admin[0].clone(), ("If-Match", format!("\"{v}\""))];
    let (code, r) = http(http_addr, "PUT", "/vschema", &with("1"), &next).await;
    assert_eq!(code, 200, "{r}");
    assert_eq!(json_body(&r)["version"], 2);
    let mut c = proxy.connect("app", Some("extra")).await;
    let one: Option<u32> = c
        .query_first("SELECT 1")
        .await
        .expect("the new keyspace serves");
    assert_eq!(one, Some(1));
    // The cluster's password was kept: the pool still logs in.
    let mut a = proxy.connect("app", Some("app")).await;
    a.query_drop("SELECT * FROM t")
        .await
        .expect("c1 still logs in");
    // Stale version.
    let (code, r) = http(http_addr, "PUT", "/vschema", &with("1"), &next).await;
    assert_eq!(code, 409, "{r}");
    assert_eq!(json_body(&r)["current_version"], 2);
    // Invalid: every error listed.
    let bad = format!(
        "{next}\n[keyspaces.broken]\ncluster = \"nowhere\"\n[keyspaces.worse]\nsharded = true\n"
    );
    let (code, r) = http(http_addr, "PUT", "/vschema", &with("2"), &bad).await;
    assert_eq!(code, 422, "{r}");
    let errors = json_body(&r)["errors"].as_array().expect("errors").len();
    assert!(errors >= 2, "{r}");
    // JSON body form and history.
    let body = serde_json::json!({ "document": doc }).to_string();
    let mut h = with("2");
    h.push(("Content-Type", "application/json".to_string()));
    let (code, r) = http(http_addr, "PUT", "/vschema", &h, &body).await;
    assert_eq!(code, 200, "{r}");
    let (code, r) = http(http_addr, "GET", "/vschema/history?limit=2", &admin, "").await;
    assert_eq!(code, 200, "{r}");
    let versions: Vec<u64> = json_body(&r)["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .filter_map(|v| v["version"].as_u64())
        .collect();
    assert_eq!(versions, vec![3, 2]);
    assert_eq!(
        http(http_addr, "DELETE", "/vschema", &admin, "").await.0,
        405
    );
    assert_eq!(http(http_addr, "GET", "/nothing", &admin, "").await.0, 404);
    let (code, r) = http(http_addr, "GET", "/metrics", &[], "").await;
    assert_eq!(code, 200, "{r}");
}

fn wait_for(what: &str, limit: Duration, f: impl FnMut() -> bool) {
    assert!(poll_until(limit, f), "{what}: not within {limit:?}");
}

/// Calls `f` every 50 ms until it is true (true) or `limit` has passed (false).
fn poll_until(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while !f() {
        if start.elapsed() >= limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    true
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vschema_file_is_watched_a_bad_edit_is_refused_and_versions_survive_a_restart() {
    let servers = common::start_servers(1);
    let toml = one_cluster(&servers[0]);
    servers[0].sql("CREATE DATABASE more").expect("db");
    let mut proxy = common::spawn_proxy_binary(&toml, "");
    let addr = proxy.addr_string();
    // A bad edit: refused, logged, the old snapshot keeps serving.
    std::fs::write(
        &proxy.vschema_path,
        format!("{toml}\n[keyspaces.more]\ncluster = \"nope\"\n"),
    )
    .expect("write");
    wait_for("the refusal is logged", Duration::from_secs(15), || {
        proxy.log().contains("refused")
    });
    assert_eq!(
        common::cli_ok(&addr, "app", "app", Some("app"), "SELECT 1").trim(),
        "1"
    );
    // A file left empty (a writer that truncated it and stopped): never read as
    // "drop every cluster".
    std::fs::write(&proxy.vschema_path, "").expect("truncate");
    wait_for("the empty file is refused", Duration::from_secs(15), || {
        proxy.log().contains("it names no cluster")
    });
    assert_eq!(
        common::cli_ok(&addr, "app", "app", Some("app"), "SELECT 1").trim(),
        "1"
    );
    let history = common::cli_ok(&addr, "admin", "admin", None, "SHOW VSCHEMA HISTORY");
    assert!(history.starts_with('1'), "{history}");
    // A good edit: served within a second or so.
    std::fs::write(
        &proxy.vschema_path,
        format!("{toml}\n[keyspaces.more]\ncluster = \"c1\"\n"),
    )
    .expect("write");
    wait_for("the edit is served", Duration::from_secs(15), || {
        common::cli(&addr, "app", "app", Some("more"), "SELECT 1")
            .status
            .success()
    });
    // SIGHUP re-reads it too.
    let third = format!("{toml}\n[keyspaces.more]\ncluster = \"c1\"\nddl = \"direct\"\n");
    std::fs::write(&proxy.vschema_path, &third).expect("write");
    let _ = std::process::Command::new("kill")
        .args(["-HUP", &proxy.pid().to_string()])
        .status();
    wait_for("the SIGHUP is logged", Duration::from_secs(15), || {
        proxy.log().contains("SIGHUP: re-reading the vschema file")
    });
    let mut history = String::new();
    let served = poll_until(Duration::from_secs(15), || {
        history = common::cli_ok(&addr, "admin", "admin", None, "SHOW VSCHEMA HISTORY");
        history.starts_with('3')
    });
    assert!(
        served,
        "version 3 is not served within 15s; history:\n{history}\nlog:\n{}",
        proxy.log()
    );
    // An SQL edit, then a restart: the store keeps version 4 (the file did not change,
    // so it is not imported again).
    let out = common::cli_ok(
        &addr,
        "admin",
        "admin",
        None,
        "ALTER VSCHEMA ADD REFERENCE TABLE more.countries",
    );
    assert!(out.starts_with('4'), "{out}");
    proxy.restart();
    let out = common::cli_ok(&addr, "admin", "admin", None, "SHOW VSCHEMA KEYSPACE more");
    assert!(out.starts_with('4'), "{out}");
    assert!(out.contains("countries"), "{out}");
    assert!(
        proxy
            .log()
            .contains("serving version from the topology store"),
        "{}",
        proxy.log()
    );
}
