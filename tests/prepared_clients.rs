//! Prepared statements from two more real client libraries, through a keyspace sharded
//! over two shards, compared with the same script against MariaDB directly and checked
//! on the shards: MariaDB Connector/Python's `executemany()` (COM_STMT_BULK_EXECUTE),
//! Oracle's mysql-connector-python with `cursor(prepared=True)` and `compress=True`.
//! And bulk executes written by hand: malformed rows, per-row results over several
//! shards, a transaction. The libraries live in the virtualenv scripts/ensure-deps
//! makes. See docs/clients.md.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::process::Output;
use std::time::Duration;

use shardgate::access::Scope;
use shardgate::config::{ProxyConfig, User};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// The virtualenv of scripts/ensure-deps.
const PYTHON: &str = "/opt/shardgate-pyenv/bin/python";

const CREATE_ITEMS: &str = "CREATE TABLE app.items (
  id BIGINT AUTO_INCREMENT PRIMARY KEY,
  workspace_id BIGINT NOT NULL,
  name VARCHAR(10000) CHARACTER SET utf8mb4 NULL,
  qty INT NULL,
  UNIQUE KEY ws_name (workspace_id, name(100)))";

fn script(name: &str) -> String {
    format!("{}/tests/clients/{name}", env!("CARGO_MANIFEST_DIR"))
}

/// Index (into the shard servers) of the server that owns `workspace` in keyspace `app`.
fn owner(vschema_toml: &str, workspace: u64) -> usize {
    let vschema = VSchema::from_toml_str(vschema_toml).expect("valid vschema");
    let shard = vschema
        .keyspace("app")
        .expect("keyspace app")
        .shard_for_workspace(workspace);
    shard.cluster[1..]
        .parse::<usize>()
        .expect("clusters are named cN")
        - 1
}

fn count_on(server: &LocalMariaDb, sql: &str) -> u64 {
    let out = common::direct_query(server, sql);
    out.trim()
        .parse()
        .unwrap_or_else(|_| panic!("`{sql}` should give a number, got {out:?}"))
}

/// Runs a client script against `addr` (killed after 60 s, what it printed so far
/// kept) and returns its transcript; panics with its stderr if it failed.
async fn transcript(script_name: &str, addr: &str, user: &str) -> String {
    let (host, port) = addr.rsplit_once(':').expect("host:port");
    let child = tokio::process::Command::new("timeout")
        .args([
            "60",
            PYTHON,
            &script(script_name),
            host,
            port,
            user,
            user,
            "app",
        ])
        .kill_on_drop(true)
        .output();
    let out: Output = match tokio::time::timeout(Duration::from_secs(70), child).await {
        Ok(o) => o.unwrap_or_else(|e| panic!("run {PYTHON} (scripts/ensure-deps makes it): {e}")),
        Err(_) => panic!("{script_name} against {addr} did not finish within 70 s"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{script_name} against {addr} failed ({}):\n--- stdout\n{stdout}\n--- stderr\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

fn step<'a>(transcript: &'a str, name: &str) -> &'a str {
    transcript
        .lines()
        .find(|l| l.split(" | ").next() == Some(name))
        .unwrap_or_else(|| panic!("no step {name} in transcript:\n{transcript}"))
}

/// Two shard servers and a third for "MariaDB directly", table `items` on each.
struct Setup {
    shards: Vec<LocalMariaDb>,
    direct: LocalMariaDb,
    toml: String,
}

fn setup() -> Setup {
    let mut servers = common::start_servers(3);
    let direct = servers.pop().expect("three servers");
    direct.sql("CREATE DATABASE app").expect("create app");
    direct.sql(CREATE_ITEMS).expect("create items directly");
    let toml = common::ShardedVSchema::new(&servers).build();
    for s in &servers {
        s.sql(CREATE_ITEMS).expect("create items on a shard");
    }
    Setup {
        shards: servers,
        direct,
        toml,
    }
}

/// Runs `script_name` directly and through the proxy; the transcripts must match, and
/// every workspace's rows are on the shard that owns it, as many as directly.
async fn matches_direct(s: &Setup, script_name: &str) -> (String, String) {
    let proxy = common::start_proxy(&s.toml).await;
    let reference = transcript(script_name, &s.direct.addr(), "shardgate").await;
    let proxied = transcript(script_name, &proxy.addr_string(), "app").await;
    proxy.stop().await;
    let d: Vec<&str> = reference.lines().collect();
    let p: Vec<&str> = proxied.lines().collect();
    let diff: Vec<String> = (0..d.len().max(p.len()))
        .filter(|&i| d.get(i) != p.get(i))
        .map(|i| {
            format!(
                "  direct:  {}\n  proxied: {}\n",
                d.get(i).unwrap_or(&""),
                p.get(i).unwrap_or(&"")
            )
        })
        .collect();
    assert!(
        diff.is_empty(),
        "{script_name}: {} line(s) differ through shardgate:\n{}",
        diff.len(),
        diff.concat()
    );
    for ws in 1..=8u64 {
        let sql = format!("SELECT COUNT(*) FROM app.items WHERE workspace_id = {ws}");
        let written = count_on(&s.direct, &sql);
        for (i, shard) in s.shards.iter().enumerate() {
            let expected = if owner(&s.toml, ws) == i { written } else { 0 };
            assert_eq!(
                count_on(shard, &sql),
                expected,
                "rows of workspace {ws} on shard {i}"
            );
        }
    }
    (reference, proxied)
}

/// The server's binary-protocol executes so far (a bulk counts as one).
fn executes(server: &LocalMariaDb) -> u64 {
    common::status_counter(server, "Com_stmt_execute")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mariadb_connector_executemany_is_a_bulk_split_over_shards() {
    let s = setup();
    let before: Vec<u64> = s.shards.iter().map(executes).collect();
    let (reference, proxied) = matches_direct(&s, "mariadb_bulk.py").await;
    // The direct run did what the script means, so that matching it proves something.
    assert_eq!(step(&reference, "bulk_offered"), "bulk_offered | True");
    assert_eq!(step(&reference, "insert_many"), "insert_many | 24 | 1");
    assert_eq!(step(&reference, "duplicate"), "duplicate | 1062");
    assert!(step(&proxied, "select_ws5").contains("🎉"));
    assert_eq!(step(&proxied, "bulk_offered"), "bulk_offered | True");
    // Each shard got its rows as bulk commands, not one execute a row: the script's
    // five executemany() and two selects are at most 7 commands a shard, where
    // executes one row at a time would be at least 12 on one shard for `insert_many` alone.
    for (i, shard) in s.shards.iter().enumerate() {
        let n = executes(shard) - before[i];
        assert!((1..=7).contains(&n), "shard {i} ran {n} executes");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mysql_connector_prepared_and_compressed_match_a_direct_connection() {
    let s = setup();
    let (reference, _) = matches_direct(&s, "mysqlconnector_prepared.py").await;
    for (name, expected) in [
        ("insert_4", "insert_4 | 1 | True"),
        ("select_tricky_roundtrip", "select_tricky_roundtrip | True"),
        ("null_count", "null_count | [(1,)]"),
        ("unknown_table", "unknown_table | 1146"),
        ("compressed_big_text", "compressed_big_text | 60000 | 42"),
        (
            "compressed_prepared_select",
            "compressed_prepared_select | [(5011,)]",
        ),
    ] {
        assert_eq!(step(&reference, name), expected, "direct run, step {name}");
    }
}

// ---- bulk executes by hand ----

const BULK_CAP: u32 = 1 << 2;

/// Logs in as `user` (password the same) announcing
/// MARIADB_CLIENT_STMT_BULK_OPERATIONS; the greeting must offer it.
async fn bulk_login(addr: &str, user: &str) -> TcpStream {
    use shardgate::protocol::auth::native_token;
    use shardgate::protocol::handshake::{
        build_handshake_response, parse_greeting, HandshakeResponse,
    };
    use shardgate::protocol::{caps, packet::put_packet};
    let mut s = TcpStream::connect(addr).await.expect("connect");
    let (_, g) = common::raw_read(&mut s).await.expect("greeting");
    let g = parse_greeting(&g).expect("valid greeting");
    assert_eq!(
        g.capabilities & caps::LONG_PASSWORD,
        0,
        "a MariaDB greeting"
    );
    assert_ne!(g.ext_capabilities & BULK_CAP, 0, "bulk operations offered");
    let resp = HandshakeResponse {
        capabilities: (caps::BACKEND_BASE | caps::DEPRECATE_EOF) & !caps::LONG_PASSWORD,
        max_packet: 1 << 24,
        collation: 45,
        user: user.into(),
        auth_response: native_token(user.as_bytes(), &g.scramble),
        database: Some("app".into()),
        auth_plugin: Some("mysql_native_password".into()),
        attributes: vec![],
        ext_capabilities: BULK_CAP,
    };
    let mut out = bytes::BytesMut::new();
    put_packet(&mut out, 1, &build_handshake_response(&resp));
    s.write_all(&out).await.expect("send login");
    let (_, ok) = common::raw_read(&mut s).await.expect("login reply");
    assert_eq!(ok.first(), Some(&0), "login ok: {ok:?}");
    s
}

async fn send(s: &mut TcpStream, payload: &[u8]) {
    let mut out = bytes::BytesMut::new();
    shardgate::protocol::packet::put_packet(&mut out, 0, payload);
    s.write_all(&out).await.expect("send");
}

/// Prepares `sql` and returns its statement id (DEPRECATE_EOF: no EOF packets).
async fn prepare(s: &mut TcpStream, sql: &str) -> u32 {
    let mut p = vec![0x16];
    p.extend_from_slice(sql.as_bytes());
    send(s, &p).await;
    let (_, ok) = common::raw_read(s).await.expect("prepare answer");
    assert_eq!(ok.first(), Some(&0), "PREPARE_OK: {ok:?}");
    let id = u32::from_le_bytes([ok[1], ok[2], ok[3], ok[4]]);
    let cols = u16::from_le_bytes([ok[5], ok[6]]);
    let params = u16::from_le_bytes([ok[7], ok[8]]);
    for _ in 0..cols + params {
        common::raw_read(s).await.expect("definition");
    }
    id
}

/// One row of (workspace BIGINT, name string, qty INT) with indicators.
fn row(out: &mut Vec<u8>, ws: u64, name: &str, qty: Option<i32>) {
    out.push(0);
    out.extend_from_slice(&ws.to_le_bytes());
    out.push(0);
    out.push(u8::try_from(name.len()).expect("short name"));
    out.extend_from_slice(name.as_bytes());
    match qty {
        Some(q) => {
            out.push(0);
            out.extend_from_slice(&q.to_le_bytes());
        }
        None => out.push(1),
    }
}

fn bulk_header(id: u32, flags: u16) -> Vec<u8> {
    let mut p = vec![0xfa];
    p.extend_from_slice(&id.to_le_bytes());
    p.extend_from_slice(&(flags | 128).to_le_bytes());
    p.extend_from_slice(&[0x08, 0, 0xfd, 0, 0x03, 0]);
    p
}

/// (code, message) of an ERR answer; panics on anything else.
async fn expect_err(s: &mut TcpStream, what: &str) -> (u16, String, String) {
    let (_, p) = common::raw_read(s).await.expect("an answer");
    common::raw_err(&p).unwrap_or_else(|| panic!("{what}: expected an ERR, got {p:?}"))
}

/// Affected rows of an OK answer; panics on anything else.
async fn expect_ok(s: &mut TcpStream, what: &str) -> u64 {
    let (_, p) = common::raw_read(s).await.expect("an answer");
    assert_eq!(p.first(), Some(&0), "{what}: expected an OK, got {p:?}");
    let mut at = 1;
    shardgate::protocol::wire::get_lenenc_int(&p, &mut at).expect("affected rows")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hand_written_bulks_malformed_rows_unit_results_transactions_and_bound_users() {
    let s = setup();
    // Two workspaces on different shards.
    let a = 1u64;
    let b = (2..50u64)
        .find(|&w| owner(&s.toml, w) != owner(&s.toml, a))
        .expect("a workspace on the other shard");
    // `acme` may use workspace 7 only.
    let vs = VSchema::from_toml_str(&s.toml).expect("vschema");
    let mut users = common::test_users();
    let mut acme = User::new("acme", "acme", false);
    acme.scope = Scope::new(Some(vec!["app".into()]), Some(vec![7]));
    users.push(acme);
    let config = ProxyConfig::new("127.0.0.1:0".parse().expect("addr"), users, vs);
    let proxy = common::start_proxy_config(config).await;
    let mut c = bulk_login(&proxy.addr_string(), "app").await;
    let id = prepare(
        &mut c,
        "INSERT INTO items (workspace_id, name, qty) VALUES (?, ?, ?)",
    )
    .await;
    let total = || -> u64 {
        s.shards
            .iter()
            .map(|sh| count_on(sh, "SELECT COUNT(*) FROM app.items"))
            .sum()
    };

    // A bad indicator in the second row: 1210, nothing written on any shard.
    let mut p = bulk_header(id, 0);
    row(&mut p, a, "good", Some(1));
    p.push(7);
    send(&mut c, &p).await;
    let (code, state, msg) = expect_err(&mut c, "bad indicator").await;
    assert_eq!((code, state.as_str()), (1210, "HY000"), "{msg}");
    assert!(msg.contains("row 2"), "{msg}");
    // A row cut short.
    let mut p = bulk_header(id, 0);
    row(&mut p, b, "good", Some(1));
    p.extend_from_slice(&[0, 1, 2]);
    send(&mut c, &p).await;
    assert_eq!(expect_err(&mut c, "row cut short").await.0, 1210);
    // Types cut short, an unknown statement.
    send(&mut c, &[0xfa, 1, 0, 0, 0, 128, 0, 8]).await;
    assert_eq!(expect_err(&mut c, "types cut short").await.0, 1210);
    let mut p = bulk_header(id + 100, 0);
    row(&mut p, a, "x", None);
    send(&mut c, &p).await;
    assert_eq!(expect_err(&mut c, "unknown statement").await.0, 1243);
    assert_eq!(total(), 0, "no malformed bulk wrote anything");

    // Per-row results over two shards: refused, nothing written.
    let mut p = bulk_header(id, 64);
    row(&mut p, a, "unit a", Some(1));
    row(&mut p, b, "unit b", Some(2));
    send(&mut c, &p).await;
    let (code, _, msg) = expect_err(&mut c, "unit results over shards").await;
    assert_eq!(code, 1235, "{msg}");
    assert_eq!(total(), 0);

    // Inside a transaction: rows for two shards are refused; for its shard they run.
    common::raw_query(&mut c, b"BEGIN").await;
    expect_ok(&mut c, "BEGIN").await;
    let mut p = bulk_header(id, 0);
    row(&mut p, a, "tx a", Some(1));
    send(&mut c, &p).await;
    assert_eq!(expect_ok(&mut c, "bulk in a transaction").await, 1);
    let mut p = bulk_header(id, 0);
    row(&mut p, a, "tx a2", Some(1));
    row(&mut p, b, "tx b", Some(2));
    send(&mut c, &p).await;
    let (_, _, msg) = expect_err(&mut c, "bulk leaving the transaction").await;
    assert!(msg.contains("transaction"), "{msg}");
    common::raw_query(&mut c, b"ROLLBACK").await;
    expect_ok(&mut c, "ROLLBACK").await;
    assert_eq!(total(), 0, "the transaction's row rolled back");

    // The connection is still usable: a good bulk over both shards, NULLs included.
    let mut p = bulk_header(id, 0);
    row(&mut p, a, "one", Some(1));
    row(&mut p, b, "two", None);
    row(&mut p, a, "it's", Some(3));
    send(&mut c, &p).await;
    assert_eq!(expect_ok(&mut c, "good bulk").await, 3);
    let home_a = &s.shards[owner(&s.toml, a)];
    let home_b = &s.shards[owner(&s.toml, b)];
    assert_eq!(
        count_on(
            home_a,
            &format!("SELECT COUNT(*) FROM app.items WHERE workspace_id = {a}")
        ),
        2
    );
    assert_eq!(
        count_on(
            home_b,
            &format!("SELECT COUNT(*) FROM app.items WHERE workspace_id = {b} AND qty IS NULL")
        ),
        1
    );
    assert_eq!(total(), 3);

    // A duplicate on the second shard: its error, naming the shard that kept its rows.
    let mut p = bulk_header(id, 0);
    row(&mut p, a, "three", Some(1));
    row(&mut p, b, "two", Some(2));
    send(&mut c, &p).await;
    let (code, _, msg) = expect_err(&mut c, "duplicate on the second shard").await;
    assert_eq!(code, 1062, "{msg}");
    assert!(msg.contains("already applied on"), "{msg}");
    assert_eq!(total(), 4, "the first shard's row stays written");
    // The DEFAULT indicator: the column's default, routed by the other values.
    let mut p = bulk_header(id, 0);
    let mut one = Vec::new();
    row(&mut one, b, "default qty", Some(0));
    one.truncate(one.len() - 5);
    one.push(2);
    p.extend_from_slice(&one);
    send(&mut c, &p).await;
    assert_eq!(expect_ok(&mut c, "DEFAULT indicator").await, 1);
    assert_eq!(
        count_on(
            home_b,
            "SELECT COUNT(*) FROM app.items WHERE name = 'default qty' AND qty IS NULL"
        ),
        1
    );

    common::raw_query(&mut c, b"SELECT 1").await;
    let (_, first) = common::raw_read(&mut c).await.expect("result");
    assert_eq!(first, [1], "a one-column result set");

    // A workspace-bound user: every row is checked, a neighbour on the same shard too.
    let neighbour = (1..200u64)
        .find(|&w| w != 7 && owner(&s.toml, w) == owner(&s.toml, 7))
        .expect("a neighbour of workspace 7");
    let mut acme = bulk_login(&proxy.addr_string(), "acme").await;
    let id = prepare(
        &mut acme,
        "INSERT INTO items (workspace_id, name, qty) VALUES (?, ?, ?)",
    )
    .await;
    let before = total();
    let mut p = bulk_header(id, 0);
    row(&mut p, 7, "mine", Some(1));
    row(&mut p, neighbour, "theirs", Some(2));
    send(&mut acme, &p).await;
    let (code, _, msg) = expect_err(&mut acme, "a neighbour's row").await;
    assert_eq!(code, 1142, "{msg}");
    assert!(msg.contains("row 2"), "{msg}");
    assert_eq!(total(), before, "none of the bulk's rows written");
    let mut p = bulk_header(id, 0);
    row(&mut p, 7, "mine", Some(1));
    row(&mut p, 7, "mine too", Some(2));
    send(&mut acme, &p).await;
    assert_eq!(expect_ok(&mut acme, "its own rows").await, 2);
    proxy.stop().await;
}
