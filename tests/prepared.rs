//! Server-side prepared statements through shardgate against real MariaDB: executes
//! route by their bound values (a sharding key given as `?` finds its shard), values of
//! every common type survive, cursors and long data work, statement ids belong to one
//! session, what cannot be served is refused with the reason, and a bound user cannot
//! leave its workspace through a parameter. Drivers: mysql_async (binary protocol),
//! Ruby mysql2 (libmariadb), raw packets, sysbench in its default prepared mode.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use mysql_async::prelude::*;
use mysql_async::Value;
use shardgate::access::Scope;
use shardgate::config::{ProxyConfig, User};
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const ITEMS: &str = "CREATE TABLE app.items (id INT PRIMARY KEY, workspace_id BIGINT NOT NULL, \
     name VARCHAR(100), d DATE, amount DECIMAL(10,2), data BLOB, note TEXT NULL)";

/// Two shards of keyspace `app` with table `items` sharded by `workspace_id`, and a
/// proxy whose users are the test users plus `acme`, bound to workspace 7.
async fn setup() -> (Vec<LocalMariaDb>, String, common::Proxy) {
    setup_pool(16).await
}

/// [`setup`] with at most `max` backend connections per cluster.
async fn setup_pool(max: usize) -> (Vec<LocalMariaDb>, String, common::Proxy) {
    setup_config(max, None).await
}

/// [`setup_pool`], with the proxy's `max_packet_size` when given.
async fn setup_config(
    max: usize,
    max_packet: Option<usize>,
) -> (Vec<LocalMariaDb>, String, common::Proxy) {
    let servers = common::start_servers(2);
    let toml = common::ShardedVSchema::new(&servers)
        .table("items", "workspace_id")
        .build();
    for s in &servers {
        s.sql(ITEMS).expect("create items");
    }
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let mut users = common::test_users();
    let mut acme = User::new("acme", "acme", false);
    acme.scope = Scope::new(Some(vec!["app".into()]), Some(vec![7]));
    users.push(acme);
    let mut config = ProxyConfig::new("127.0.0.1:0".parse().expect("addr"), users, vs);
    config.max_client_connections = 100;
    config.pool.max_connections = max;
    if let Some(m) = max_packet {
        config.max_packet_size = m;
    }
    let proxy = common::start_proxy_config(config).await;
    (servers, toml, proxy)
}

/// Index of the server that owns `workspace`.
fn owner(toml: &str, workspace: u64) -> usize {
    let vs = VSchema::from_toml_str(toml).expect("vschema");
    vs.keyspace("app")
        .expect("app")
        .shard_index_for_workspace(workspace)
}

fn code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bound_values_route_to_their_shard_and_come_back_intact() {
    let (servers, toml, proxy) = setup().await;
    let mut c = proxy.connect("app", Some("app")).await;
    let insert = c
        .prep("INSERT INTO items (id, workspace_id, name, d, amount, data, note) VALUES (?, ?, ?, ?, ?, ?, ?)")
        .await
        .expect("prepare insert");
    let name = |w: u64| format!("it's \\ \"w{w}\" ?");
    let blob = |w: u64| vec![0u8, 0xff, b'\'', b'\\', w as u8];
    for w in 1..=12u64 {
        let note = if w % 3 == 0 {
            Value::NULL
        } else {
            Value::from(format!("note {w}"))
        };
        let params = vec![
            Value::from(w as i64),
            Value::from(w),
            Value::from(name(w)),
            Value::Date(2024, 2, w as u8, 0, 0, 0, 0),
            Value::from(format!("{w}.25")),
            Value::from(blob(w)),
            note,
        ];
        c.exec_drop(&insert, params).await.expect("insert");
    }
    // Each row is on its workspace's shard, and only there.
    for w in 1..=12u64 {
        let home = owner(&toml, w);
        for (i, s) in servers.iter().enumerate() {
            let n = common::number_on(
                s,
                &format!("SELECT COUNT(*) FROM app.items WHERE workspace_id = {w}"),
            );
            assert_eq!(n, u64::from(i == home), "workspace {w} on server {i}");
        }
    }
    assert!((1..=12).any(|w| owner(&toml, w) == 0) && (1..=12).any(|w| owner(&toml, w) == 1));
    // Read back through a prepared SELECT routed by its parameter (binary rows).
    let select = c
        .prep("SELECT name, d, amount, data, note FROM items WHERE workspace_id = ? AND id = ?")
        .await
        .expect("prepare select");
    for w in 1..=12u64 {
        type Row = (String, Value, String, Vec<u8>, Option<String>);
        let row: Option<Row> = c.exec_first(&select, (w, w as i64)).await.expect("select");
        let (n, d, amount, data, note) = row.unwrap_or_else(|| panic!("row of workspace {w}"));
        assert_eq!(n, name(w));
        assert_eq!(d, Value::Date(2024, 2, w as u8, 0, 0, 0, 0));
        assert_eq!(amount, format!("{w}.25"));
        assert_eq!(data, blob(w));
        assert_eq!(note, (w % 3 != 0).then(|| format!("note {w}")));
    }
    // exec_iter and UPDATE/DELETE by parameter.
    let upd = c
        .prep("UPDATE items SET name = ? WHERE workspace_id = ?")
        .await
        .expect("prepare update");
    c.exec_drop(&upd, ("renamed", 5u64)).await.expect("update");
    assert_eq!(c.affected_rows(), 1);
    let home = &servers[owner(&toml, 5)];
    assert_eq!(
        common::direct_query(home, "SELECT name FROM app.items WHERE workspace_id = 5").trim(),
        "renamed"
    );
    let mut result = c
        .exec_iter("SELECT id FROM items WHERE workspace_id = ?", (6u64,))
        .await
        .expect("exec_iter");
    let ids: Vec<i64> = result.collect().await.expect("rows");
    assert_eq!(ids, [6]);
    drop(result);
    c.exec_drop("DELETE FROM items WHERE workspace_id = ?", (6u64,))
        .await
        .expect("delete");
    assert_eq!(
        common::number_on(
            &servers[owner(&toml, 6)],
            "SELECT COUNT(*) FROM app.items WHERE workspace_id = 6"
        ),
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_cannot_be_served_is_refused_with_the_reason_and_the_connection_goes_on() {
    let (servers, toml, proxy) = setup().await;
    let mut c = proxy.connect("app", Some("app")).await;
    let (a, b) = (1..50u64)
        .flat_map(|a| (1..50u64).map(move |b| (a, b)))
        .find(|(a, b)| owner(&toml, *a) != owner(&toml, *b))
        .expect("two workspaces on different shards");
    let e = c
        .exec_drop("SELECT id FROM items WHERE workspace_id IN (?, ?)", (a, b))
        .await
        .expect_err("two shards");
    let msg = e.to_string();
    assert!(msg.contains("keyspace 'app'"), "{msg}");
    let e = c
        .exec_drop(
            "INSERT INTO items (id, workspace_id) VALUES (?, ?), (?, ?)",
            (100, a, 101, b),
        )
        .await
        .expect_err("insert across shards");
    assert_eq!(code(&e), Some(1235), "{e}");
    assert!(e.to_string().contains("several shards"), "{e}");
    assert_eq!(
        servers
            .iter()
            .map(|s| common::number_on(s, "SELECT COUNT(*) FROM app.items"))
            .sum::<u64>(),
        0
    );
    // Still usable, and a transaction follows its shard.
    c.query_drop("BEGIN").await.expect("begin");
    c.exec_drop("INSERT INTO items (id, workspace_id) VALUES (?, ?)", (1, a))
        .await
        .expect("insert in transaction");
    let e = c
        .exec_drop("INSERT INTO items (id, workspace_id) VALUES (?, ?)", (2, b))
        .await
        .expect_err("other shard inside the transaction");
    assert!(e.to_string().contains("transaction"), "{e}");
    c.query_drop("ROLLBACK").await.expect("rollback");
    assert_eq!(
        common::number_on(&servers[owner(&toml, a)], "SELECT COUNT(*) FROM app.items"),
        0,
        "the rolled-back insert ran inside the transaction"
    );
    c.ping().await.expect("ping");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bound_user_cannot_leave_its_workspace_through_a_parameter() {
    let (servers, toml, proxy) = setup().await;
    let other = (1..100u64)
        .find(|w| *w != 7 && owner(&toml, *w) == owner(&toml, 7))
        .expect("a neighbour of workspace 7");
    servers[owner(&toml, 7)]
        .sql(&format!(
            "INSERT INTO app.items (id, workspace_id, name) VALUES (1, 7, 'mine'), (2, {other}, 'theirs')"
        ))
        .expect("rows");
    let mut c = mysql_async::Conn::new(common::mysql_opts(
        &proxy.addr_string(),
        "acme",
        "acme",
        Some("app"),
    ))
    .await
    .expect("acme logs in");
    let select = c
        .prep("SELECT name FROM items WHERE workspace_id = ?")
        .await
        .expect("prepare: the text alone names no workspace");
    let mine: Option<String> = c.exec_first(&select, (7u64,)).await.expect("own workspace");
    assert_eq!(mine.as_deref(), Some("mine"));
    let e = c
        .exec_first::<String, _, _>(&select, (other,))
        .await
        .expect_err("a neighbour's workspace");
    assert_eq!(code(&e), Some(1142), "{e}");
    let e = c
        .exec_drop(
            "UPDATE items SET name = 'x' WHERE workspace_id = ? OR 1 = ?",
            (7u64, 1),
        )
        .await
        .expect_err("a predicate that escapes the workspace");
    assert!(matches!(code(&e), Some(1142 | 1227)), "{e}");
    let e = c
        .prep("SELECT user FROM mysql.user")
        .await
        .expect_err("a protected schema at PREPARE");
    assert!(matches!(code(&e), Some(1227 | 1044 | 1142)), "{e}");
}

/// The server's count of statements prepared on it now.
fn prepared_on(server: &LocalMariaDb) -> u64 {
    common::status_counter(server, "Prepared_stmt_count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backend_statements_are_shared_through_the_pool_bounded_and_dropped_on_reset() {
    // One backend connection per cluster: every session below uses the same one.
    let (servers, toml, proxy) = setup_pool(1).await;
    let w = 2u64;
    let home = &servers[owner(&toml, w)];
    home.sql(&format!(
        "INSERT INTO app.items (id, workspace_id, name) VALUES (1, {w}, 'two')"
    ))
    .expect("row");
    let sql = "SELECT name FROM items WHERE workspace_id = ?";
    // Session a, with a session variable, prepares on the connection.
    let mut a = proxy.connect("app", Some("app")).await;
    a.query_drop("SET @a = 1").await.expect("set");
    let name: Option<String> = a.exec_first(sql, (w,)).await.expect("a executes");
    assert_eq!(name.as_deref(), Some("two"));
    assert_eq!(prepared_on(home), 1);
    a.disconnect().await.expect("a leaves");
    // Session b has no variables: the connection is reset for it, which drops the
    // server's statements; b's execute prepares again instead of using a dead id.
    let mut b = proxy.connect("app", Some("app")).await;
    let name: Option<String> = b.exec_first(sql, (w,)).await.expect("b executes");
    assert_eq!(name.as_deref(), Some("two"));
    assert_eq!(
        prepared_on(home),
        1,
        "the reset dropped a's; b's is the one left"
    );
    // Session c, no reset needed: the connection's statement serves it as it is.
    b.disconnect().await.expect("b leaves");
    let mut c = proxy.connect("app", Some("app")).await;
    let name: Option<String> = c.exec_first(sql, (w,)).await.expect("c executes");
    assert_eq!(name.as_deref(), Some("two"));
    assert_eq!(prepared_on(home), 1, "shared, not prepared twice");
    // Many distinct statements: the connection keeps at most its bound.
    for i in 0..300 {
        let n: Option<i64> = c
            .exec_first(
                format!("SELECT {i} FROM items WHERE workspace_id = ?"),
                (w,),
            )
            .await
            .expect("execute");
        assert_eq!(n, Some(i));
    }
    let kept = prepared_on(home);
    assert!(
        (200..=256).contains(&kept),
        "statements kept on the backend connection: {kept}"
    );
}

// ---- raw packets: ids, cursors, long data, limits ----------------------------------

async fn send(s: &mut TcpStream, payload: &[u8]) {
    let mut out = bytes::BytesMut::new();
    shardgate::protocol::packet::put_packet(&mut out, 0, payload);
    s.write_all(&out).await.expect("send");
}

/// COM_STMT_PREPARE; Ok(statement id, params, columns) after reading the whole answer
/// (DEPRECATE_EOF: no EOFs), or Err(the ERR packet).
async fn prepare(s: &mut TcpStream, sql: &str) -> Result<(u32, u16, u16), Vec<u8>> {
    let mut p = vec![0x16];
    p.extend_from_slice(sql.as_bytes());
    send(s, &p).await;
    let (_, ok) = common::raw_read(s).await.expect("prepare answer");
    if ok[0] == 0xff {
        return Err(ok);
    }
    let id = u32::from_le_bytes([ok[1], ok[2], ok[3], ok[4]]);
    let cols = u16::from_le_bytes([ok[5], ok[6]]);
    let params = u16::from_le_bytes([ok[7], ok[8]]);
    for _ in 0..(cols + params) {
        common::raw_read(s).await.expect("definition");
    }
    Ok((id, params, cols))
}

/// COM_STMT_EXECUTE of LONGLONG parameters (None: NULL) with `flags`.
fn execute(id: u32, flags: u8, params: &[Option<i64>]) -> Vec<u8> {
    let mut p = vec![0x17];
    p.extend_from_slice(&id.to_le_bytes());
    p.push(flags);
    p.extend_from_slice(&1u32.to_le_bytes());
    if !params.is_empty() {
        let mut bitmap = vec![0u8; params.len().div_ceil(8)];
        for (i, v) in params.iter().enumerate() {
            if v.is_none() {
                bitmap[i / 8] |= 1 << (i % 8);
            }
        }
        p.extend_from_slice(&bitmap);
        p.push(1);
        for _ in params {
            p.extend_from_slice(&[0x08, 0]);
        }
        for v in params.iter().flatten() {
            p.extend_from_slice(&v.to_le_bytes());
        }
    }
    p
}

/// Reads packets until one that ends a response (OK/EOF/ERR after the first
/// packet, or a first-packet OK/ERR); returns them all.
async fn read_response(s: &mut TcpStream) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let (_, p) = common::raw_read(s).await.expect("response packet");
        let first = p[0];
        let end = (out.is_empty() && (first == 0x00 || first == 0xff))
            || (!out.is_empty() && (first == 0xfe && p.len() < 0xffffff || first == 0xff));
        out.push(p);
        if end {
            return out;
        }
    }
}

/// Reads a COM_STMT_FETCH answer: rows until the EOF (or an ERR); returns them all.
async fn read_rows(s: &mut TcpStream) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    loop {
        let (_, p) = common::raw_read(s).await.expect("fetch packet");
        let end = p[0] == 0xff || p[0] == 0xfe && p.len() < 0xffffff;
        out.push(p);
        if end {
            return out;
        }
    }
}

/// Status flags of a (0xfe-headed) OK/EOF packet under DEPRECATE_EOF.
fn ok_status(p: &[u8]) -> u16 {
    let mut at = 1;
    for _ in 0..2 {
        at += match p[at] {
            0xfc => 3,
            0xfd => 4,
            0xfe => 9,
            _ => 1,
        };
    }
    u16::from_le_bytes([p[at], p[at + 1]])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statement_ids_belong_to_one_session_and_die_with_a_reset() {
    let (servers, toml, proxy) = setup().await;
    let home = owner(&toml, 3);
    servers[home]
        .sql("INSERT INTO app.items (id, workspace_id, name) VALUES (1, 3, 'three')")
        .expect("row");
    let addr = proxy.addr_string();
    let mut a = common::raw_login(&addr, "app", "app", Some("app")).await;
    let mut b = common::raw_login(&addr, "app", "app", Some("app")).await;
    let (ia, _, _) = prepare(&mut a, "SELECT name FROM items WHERE workspace_id = ?")
        .await
        .expect("a prepares");
    let (ib, _, _) = prepare(
        &mut b,
        "SELECT 'b sees its own' FROM items WHERE workspace_id = ?",
    )
    .await
    .expect("b prepares");
    assert_eq!(ia, ib, "each session numbers its statements itself");
    send(&mut b, &execute(ib, 0, &[Some(3)])).await;
    let rows = read_response(&mut b).await;
    assert!(
        rows.iter()
            .any(|p| p.windows(14).any(|w| w == b"b sees its own")),
        "b ran its own statement: {rows:?}"
    );
    // Unknown id: 1243, and the session goes on.
    send(&mut a, &execute(ia + 41, 0, &[Some(3)])).await;
    let (_, e) = common::raw_read(&mut a).await.expect("answer");
    let (code, state, _) = common::raw_err(&e).expect("ERR");
    assert_eq!((code, state.as_str()), (1243, "HY000"));
    // Malformed execute: an error, no panic, the session goes on.
    send(&mut a, &[0x17, ia as u8, 0, 0, 0, 0]).await;
    let (_, e) = common::raw_read(&mut a).await.expect("answer");
    assert_eq!(common::raw_err(&e).map(|e| e.0), Some(1210));
    send(&mut a, &execute(ia, 0, &[Some(3)])).await;
    let rows = read_response(&mut a).await;
    assert!(
        rows.iter().any(|p| p.windows(5).any(|w| w == b"three")),
        "{rows:?}"
    );
    // Id 0xffffffff is "the statement prepared last"; a prepare that fails leaves
    // none (as on MariaDB), so an execute sent right after it is not the one before.
    send(&mut a, &execute(u32::MAX, 0, &[Some(3)])).await;
    let rows = read_response(&mut a).await;
    assert!(
        rows.iter().any(|p| p.windows(5).any(|w| w == b"three")),
        "the last prepared statement ran: {rows:?}"
    );
    let failed = prepare(&mut a, "SELEC name FROM items WHERE workspace_id = ?").await;
    assert!(failed.is_err(), "a syntax error");
    send(&mut a, &execute(u32::MAX, 0, &[Some(3)])).await;
    let (_, e) = common::raw_read(&mut a).await.expect("answer");
    assert_eq!(common::raw_err(&e).map(|e| e.0), Some(1243));
    // COM_RESET_CONNECTION drops them.
    send(&mut a, &[0x1f]).await;
    let (_, ok) = common::raw_read(&mut a).await.expect("reset");
    assert_eq!(ok[0], 0);
    send(&mut a, &execute(ia, 0, &[Some(3)])).await;
    let (_, e) = common::raw_read(&mut a).await.expect("answer");
    assert_eq!(common::raw_err(&e).map(|e| e.0), Some(1243));
    // The per-session bound: 1461 (42000).
    let mut last = None;
    for i in 0..1100 {
        if let Err(e) = prepare(&mut b, &format!("SELECT {i}")).await {
            last = Some(e);
            break;
        }
    }
    let (code, state, _) = common::raw_err(&last.expect("a refusal")).expect("ERR");
    assert_eq!((code, state.as_str()), (1461, "42000"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cursors_fetch_every_row_while_other_sessions_run_and_long_data_arrives() {
    let (servers, toml, proxy) = setup().await;
    let w = 4u64;
    let addr = proxy.addr_string();
    let mut a = common::raw_login(&addr, "app", "app", Some("app")).await;
    let mut b = common::raw_login(&addr, "app", "app", Some("app")).await;
    // Long data: parameter 2 in two chunks, parameters 0 and 1 in the execute.
    let (ins, params, _) = prepare(
        &mut a,
        "INSERT INTO items (id, workspace_id, note) VALUES (?, ?, ?)",
    )
    .await
    .expect("prepare insert");
    assert_eq!(params, 3);
    for id in 1..=25i64 {
        for chunk in [&b"long 'data' \\ "[..], format!("#{id}").as_bytes()] {
            let mut p = vec![0x18];
            p.extend_from_slice(&ins.to_le_bytes());
            p.extend_from_slice(&2u16.to_le_bytes());
            p.extend_from_slice(chunk);
            send(&mut a, &p).await;
        }
        let mut p = vec![0x17];
        p.extend_from_slice(&ins.to_le_bytes());
        p.push(0);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&[0, 1, 0x08, 0, 0x08, 0, 0xfc, 0]);
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&(w as i64).to_le_bytes());
        send(&mut a, &p).await;
        let (_, ok) = common::raw_read(&mut a).await.expect("insert answer");
        assert_eq!(ok[0], 0, "insert {id}: {:?}", common::raw_err(&ok));
    }
    let home = &servers[owner(&toml, w)];
    assert_eq!(
        common::direct_query(home, "SELECT note FROM app.items WHERE id = 7").trim(),
        "long 'data' \\\\ #7"
    );
    // A cursor in session a, fetched 4 rows at a time while session b runs the same
    // statement with its own cursor on the same shard.
    let sql = "SELECT id FROM items WHERE workspace_id = ? ORDER BY id";
    let (sa, _, _) = prepare(&mut a, sql).await.expect("a prepares");
    let (sb, _, _) = prepare(&mut b, sql).await.expect("b prepares");
    let open = |s: u32| execute(s, 1, &[Some(w as i64)]);
    send(&mut a, &open(sa)).await;
    let head = read_response(&mut a).await;
    assert_eq!(head.len(), 3, "column count, definition, EOF: {head:?}");
    assert_ne!(ok_status(&head[2]) & 0x40, 0, "CURSOR_EXISTS");
    let fetch = |s: u32, n: u32| {
        let mut p = vec![0x1c];
        p.extend_from_slice(&s.to_le_bytes());
        p.extend_from_slice(&n.to_le_bytes());
        p
    };
    let mut got_a = 0;
    let mut round = 0;
    loop {
        send(&mut a, &fetch(sa, 4)).await;
        let rows = read_rows(&mut a).await;
        let last = rows.last().expect("packets");
        assert_ne!(last[0], 0xff, "fetch failed: {:?}", common::raw_err(last));
        got_a += rows.len() - 1;
        if round == 1 {
            // Session b meanwhile: its own cursor, read to the end.
            send(&mut b, &open(sb)).await;
            read_response(&mut b).await;
            send(&mut b, &fetch(sb, 100)).await;
            let rows_b = read_rows(&mut b).await;
            assert_eq!(rows_b.len() - 1, 25, "b's rows");
        }
        round += 1;
        if ok_status(last) & 0x80 != 0 {
            break;
        }
        assert!(round < 20, "the cursor never ended");
    }
    assert_eq!(got_a, 25, "a fetched every row");
    // The cursor is gone: another fetch says so; the session goes on.
    send(&mut a, &fetch(sa, 1)).await;
    let (_, e) = common::raw_read(&mut a).await.expect("answer");
    assert_eq!(common::raw_err(&e).map(|e| e.0), Some(1421));
    send(&mut a, &[0x0e]).await;
    assert_eq!(common::raw_read(&mut a).await.expect("pong").1[0], 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ruby_mysql2_prepared_statements_route_by_parameter() {
    let (servers, toml, proxy) = setup().await;
    let (host, port) = proxy
        .addr_string()
        .rsplit_once(':')
        .map(|(h, p)| (h.to_string(), p.to_string()))
        .expect("addr");
    let script = format!(
        "{}/tests/clients/mysql2_prepared.rb",
        env!("CARGO_MANIFEST_DIR")
    );
    let run = tokio::process::Command::new("/usr/bin/ruby")
        .args([script, host, port])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("ruby finished in time")
        .expect("run ruby");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for w in 1..=10u64 {
        let n = common::number_on(
            &servers[owner(&toml, w)],
            &format!(
                "SELECT COUNT(*) FROM app.items WHERE workspace_id = {w} AND name = 'ruby ''{w}'''"
            ),
        );
        assert_eq!(n, 1, "workspace {w}'s row on its shard\n{stdout}");
    }
    assert!(stdout.contains("read 10 rows back"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_data_over_the_bound_fails_the_execute_with_1153_and_the_session_goes_on() {
    let (servers, toml, proxy) = setup_config(4, Some(64 * 1024)).await;
    let addr = proxy.addr_string();
    let mut a = common::raw_login(&addr, "app", "app", Some("app")).await;
    let (ins, _, _) = prepare(
        &mut a,
        "INSERT INTO items (id, workspace_id, note) VALUES (?, ?, ?)",
    )
    .await
    .expect("prepare insert");
    let long = |chunk: &[u8]| {
        let mut p = vec![0x18];
        p.extend_from_slice(&ins.to_le_bytes());
        p.extend_from_slice(&2u16.to_le_bytes());
        p.extend_from_slice(chunk);
        p
    };
    let exec = |id: i64| {
        let mut p = vec![0x17];
        p.extend_from_slice(&ins.to_le_bytes());
        p.push(0);
        p.extend_from_slice(&1u32.to_le_bytes());
        p.extend_from_slice(&[0, 1, 0x08, 0, 0x08, 0, 0xfc, 0]);
        p.extend_from_slice(&id.to_le_bytes());
        p.extend_from_slice(&5i64.to_le_bytes());
        p
    };
    for _ in 0..3 {
        send(&mut a, &long(&[b'x'; 30_000])).await;
    }
    send(&mut a, &exec(1)).await;
    let (_, e) = common::raw_read(&mut a).await.expect("answer");
    let (code, _, msg) = common::raw_err(&e).expect("an ERR");
    assert_eq!(code, 1153, "{msg}");
    assert!(msg.contains("long data"), "{msg}");
    // Within the bound it works, on the same statement.
    send(&mut a, &long(&[b'y'; 30_000])).await;
    send(&mut a, &exec(2)).await;
    let (_, ok) = common::raw_read(&mut a).await.expect("answer");
    assert_eq!(ok[0], 0, "{:?}", common::raw_err(&ok));
    assert_eq!(
        common::number_on(
            &servers[owner(&toml, 5)],
            "SELECT LENGTH(note) FROM app.items WHERE id = 2"
        ),
        30_000
    );
}

/// A client's `COM_STMT_PREPARE` is answered with the metadata the table has now, not
/// a copy a backend connection kept from before a schema change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prepare_after_a_schema_change_gets_the_new_columns() {
    // One backend connection per cluster: both sessions use the same one.
    let (servers, _toml, proxy) = setup_pool(1).await;
    let addr = proxy.addr_string();
    let sql = "SELECT * FROM items WHERE workspace_id = ?";
    let mut a = common::raw_login(&addr, "app", "app", Some("app")).await;
    let (_, params, before) = prepare(&mut a, sql).await.expect("a prepares");
    assert_eq!(params, 1);
    for s in &servers {
        s.sql("ALTER TABLE app.items ADD COLUMN extra INT NULL")
            .expect("alter");
    }
    let mut b = common::raw_login(&addr, "app", "app", Some("app")).await;
    let (_, _, after) = prepare(&mut b, sql).await.expect("b prepares");
    assert_eq!(after, before + 1, "the new column is in the PREPARE_OK");
}
