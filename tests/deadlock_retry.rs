//! A deadlock's victim, when it was an autocommit statement with nothing of its
//! session's on its connection, is sent again by shardgate before the client sees
//! anything (`pool.deadlock_retries`); inside a transaction, or with retries off, the
//! client gets InnoDB's ERROR 1213 as a direct connection would.
//!
//! The deadlocks are real InnoDB deadlocks between two clients. In autocommit, both
//! update rows 1 and 2 in one statement, sleeping after each row: one through the
//! primary key (row 1, then 2), one through a secondary index that orders them the other
//! way (row 2, then 1), so each holds the row the other wants next. Whether a run
//! deadlocks depends on timing, so such a scenario runs up to a few times and must
//! deadlock at least once. In transactions, each client takes one row, then asks for
//! the other's: a deadlock every time.
//!
//! To make every try fail (and count the tries), one test uses a table whose trigger
//! logs each try in a MyISAM table (not rolled back) and raises 1213 with `SIGNAL`: a
//! real MariaDB answer, the same packet whatever the reason.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use mysql_async::prelude::*;
use shardgate::config::ProxyConfig;
use shardgate::demo::localdb::LocalMariaDb;

const FORWARD: &str =
    "UPDATE t FORCE INDEX (PRIMARY) SET v = v + 1 + 0*SLEEP(0.3) WHERE id IN (1,2)";
const BACKWARD: &str = "UPDATE t FORCE INDEX (k) SET v = v + 1 + 0*SLEEP(0.3) WHERE k IN (1,2)";
/// The same statements for a prepared execute: the pause is a parameter.
const FORWARD_PS: &str =
    "UPDATE t FORCE INDEX (PRIMARY) SET v = v + 1 + 0*SLEEP(?) WHERE id IN (1,2)";
const BACKWARD_PS: &str = "UPDATE t FORCE INDEX (k) SET v = v + 1 + 0*SLEEP(?) WHERE k IN (1,2)";
/// Runs of a racing scenario before the test gives up on seeing a deadlock.
const RUNS: usize = 6;

/// One server with keyspace `app` (table `t`: rows 1 and 2), and a proxy over it with
/// `/metrics` and `deadlock_retries` as given.
async fn setup(retries: u32) -> (Vec<LocalMariaDb>, common::Proxy, SocketAddr) {
    let servers = common::start_servers(1);
    let vschema = common::unsharded(&servers);
    servers[0]
        .sql("CREATE TABLE app.t (id INT PRIMARY KEY, k INT NOT NULL, v INT NOT NULL, KEY (k)) ENGINE=InnoDB; \
             INSERT INTO app.t VALUES (1, 2, 0), (2, 1, 0)")
        .expect("create t");
    let metrics_addr = common::free_local_addr();
    let mut config = ProxyConfig::new(
        "127.0.0.1:0".parse().expect("addr"),
        common::test_users(),
        vschema,
    );
    config.metrics_listen = Some(metrics_addr);
    config.pool.deadlock_retries = retries;
    let proxy = common::start_proxy_config(config).await;
    (servers, proxy, metrics_addr)
}

/// `shardgate_deadlock_retries_total` of table `table` on cluster `c1` by result.
async fn retries(metrics: SocketAddr, table: &str, result: &str) -> f64 {
    let body = tokio::time::timeout(
        Duration::from_secs(10),
        common::http_get(metrics, "/metrics"),
    )
    .await
    .expect("/metrics within 10 s");
    let series = format!(
        "shardgate_deadlock_retries_total{{cluster=\"c1\",table=\"{table}\",result=\"{result}\"}}"
    );
    body.lines()
        .find_map(|l| {
            l.strip_prefix(&series)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

async fn all_retries(metrics: SocketAddr, table: &str) -> [f64; 3] {
    [
        retries(metrics, table, "retried_ok").await,
        retries(metrics, table, "retried_error").await,
        retries(metrics, table, "gave_up").await,
    ]
}

fn values(server: &LocalMariaDb) -> String {
    common::direct_query(server, "SELECT GROUP_CONCAT(v ORDER BY id) FROM app.t")
        .trim()
        .to_string()
}

fn reset(server: &LocalMariaDb) {
    common::direct_query(server, "UPDATE app.t SET v = 0");
}

type Answer = Result<(), mysql_async::Error>;

/// Runs `first` on `a` and, 50 ms later, `second` on `b`, at once (as prepared
/// executes with a 0.3 s pause when `prepared`).
async fn race(
    a: &mut mysql_async::Conn,
    b: &mut mysql_async::Conn,
    first: &str,
    second: &str,
    prepared: bool,
) -> (Answer, Answer) {
    let fa = async {
        if prepared {
            a.exec_drop(first, (0.3f64,)).await
        } else {
            a.query_drop(first).await
        }
    };
    let fb = async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if prepared {
            b.exec_drop(second, (0.3f64,)).await
        } else {
            b.query_drop(second).await
        }
    };
    tokio::time::timeout(Duration::from_secs(30), async { tokio::join!(fa, fb) })
        .await
        .expect("both statements answer within 30 s")
}

fn deadlock(r: &Answer) -> bool {
    matches!(r, Err(mysql_async::Error::Server(e)) if e.code == 1213)
}

fn assert_1213(r: &Answer) {
    match r {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!(
                (e.code, e.state.as_str()),
                (1213, "40001"),
                "InnoDB's deadlock error as it came: {e:?}"
            );
            assert!(e.message.contains("Deadlock"), "{e:?}");
        }
        other => panic!("expected ERROR 1213, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_autocommit_deadlock_victim_is_retried_and_each_statement_applies_once() {
    let (servers, proxy, metrics) = setup(2).await;
    for prepared in [false, true] {
        let (first, second) = if prepared {
            (FORWARD_PS, BACKWARD_PS)
        } else {
            (FORWARD, BACKWARD)
        };
        let mut deadlocked = 0;
        for run in 0..RUNS {
            reset(&servers[0]);
            let mut a = proxy.connect("app", Some("app")).await;
            let mut b = proxy.connect("app", Some("app")).await;
            let before = all_retries(metrics, "t").await;
            let (ra, rb) = race(&mut a, &mut b, first, second, prepared).await;
            assert!(
                ra.is_ok() && rb.is_ok(),
                "prepared {prepared}, run {run}: both clients get OK, never the deadlock: {ra:?} {rb:?}"
            );
            assert_eq!(
                values(&servers[0]),
                "2,2",
                "prepared {prepared}, run {run}: each statement applied exactly once"
            );
            let after = all_retries(metrics, "t").await;
            assert_eq!(
                (after[1] - before[1], after[2] - before[2]),
                (0.0, 0.0),
                "no retry ended in an error or gave up"
            );
            let ok = after[0] - before[0];
            assert!(ok <= 2.0, "at most both statements were victims: {ok}");
            if ok > 0.0 {
                deadlocked += 1;
                break;
            }
        }
        assert!(
            deadlocked > 0,
            "prepared {prepared}: no run of {RUNS} deadlocked (the retry counter never moved)"
        );
    }

    // The mariadb CLI (libmariadb), two processes at once.
    let mut deadlocked = false;
    for run in 0..RUNS {
        reset(&servers[0]);
        let before = all_retries(metrics, "t").await;
        let addr = proxy.addr_string();
        let cli = tokio::task::spawn_blocking(move || {
            std::thread::scope(|s| {
                let one = s.spawn(|| common::cli(&addr, "app", "app", Some("app"), FORWARD));
                std::thread::sleep(Duration::from_millis(50));
                let two = s.spawn(|| common::cli(&addr, "app", "app", Some("app"), BACKWARD));
                (one.join().expect("cli"), two.join().expect("cli"))
            })
        });
        let (one, two) = tokio::time::timeout(Duration::from_secs(60), cli)
            .await
            .expect("the CLI within 60 s")
            .expect("CLI task");
        for out in [&one, &two] {
            assert!(
                out.status.success(),
                "run {run}: the CLI gets OK: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        assert_eq!(values(&servers[0]), "2,2", "CLI run {run}");
        let after = all_retries(metrics, "t").await;
        assert_eq!((after[1], after[2]), (before[1], before[2]));
        if after[0] > before[0] {
            deadlocked = true;
            break;
        }
    }
    assert!(deadlocked, "no CLI run of {RUNS} deadlocked");
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deadlock_victim_inside_a_transaction_gets_1213_and_its_transaction_is_over() {
    let (servers, proxy, metrics) = setup(3).await;
    // (how the clients open their transactions, v of row 1 after the victim's
    // `UPDATE ... + 10` and `ROLLBACK`, for the winner's 1)
    for (open, expected_row1) in [("BEGIN", 11), ("SET autocommit = 0", 1)] {
        reset(&servers[0]);
        let mut a = proxy.connect("app", Some("app")).await;
        let mut b = proxy.connect("app", Some("app")).await;
        a.query_drop(open).await.expect("open a");
        b.query_drop(open).await.expect("open b");
        // A holds row 1 and B row 2; then each asks for the other's: a deadlock
        // every time, between two transactions.
        a.query_drop("UPDATE t SET v = v + 1 WHERE id = 1")
            .await
            .expect("a takes row 1");
        b.query_drop("UPDATE t SET v = v + 1 WHERE id = 2")
            .await
            .expect("b takes row 2");
        let (ra, rb) = race(
            &mut a,
            &mut b,
            "UPDATE t SET v = v + 1 WHERE id = 2",
            "UPDATE t SET v = v + 1 WHERE id = 1",
            false,
        )
        .await;
        let (victim, winner, answer) = match (deadlock(&ra), deadlock(&rb)) {
            (true, false) => (&mut a, &mut b, ra),
            (false, true) => (&mut b, &mut a, rb),
            other => panic!("{open}: exactly one victim, got {other:?}: {ra:?} {rb:?}"),
        };
        assert_1213(&answer);
        winner.query_drop("COMMIT").await.expect("winner commits");
        assert_eq!(
            values(&servers[0]),
            "1,1",
            "{open}: only the winner's updates stay"
        );
        // As on MariaDB: the victim's transaction is gone whole. After BEGIN the
        // session is back in autocommit, so this update stays and the ROLLBACK has
        // nothing to undo; under autocommit=0 it opens a new transaction, which the
        // ROLLBACK undoes.
        victim
            .query_drop("UPDATE t SET v = v + 10 WHERE id = 1")
            .await
            .expect("the victim goes on");
        victim.query_drop("ROLLBACK").await.expect("rollback");
        let row1 = common::direct_query(&servers[0], "SELECT v FROM app.t WHERE id = 1");
        assert_eq!(row1.trim(), expected_row1.to_string(), "{open}");
    }
    assert_eq!(
        all_retries(metrics, "t").await,
        [0.0; 3],
        "nothing inside a transaction is retried"
    );
    proxy.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_deadlock_retries_0_an_autocommit_victim_gets_1213() {
    let (servers, proxy, metrics) = setup(0).await;
    let mut deadlocked = false;
    for run in 0..RUNS {
        reset(&servers[0]);
        let mut a = proxy.connect("app", Some("app")).await;
        let mut b = proxy.connect("app", Some("app")).await;
        let (ra, rb) = race(&mut a, &mut b, FORWARD, BACKWARD, false).await;
        match (deadlock(&ra), deadlock(&rb)) {
            (false, false) => {
                ra.expect("a");
                rb.expect("b");
                assert_eq!(values(&servers[0]), "2,2", "run {run}");
            }
            (true, true) => panic!("run {run}: both were victims"),
            (a_lost, _) => {
                let (lost, won) = if a_lost { (ra, rb) } else { (rb, ra) };
                assert_1213(&lost);
                won.expect("the other statement succeeds");
                assert_eq!(
                    values(&servers[0]),
                    "1,1",
                    "the victim was rolled back whole"
                );
                deadlocked = true;
                break;
            }
        }
    }
    assert!(deadlocked, "no run of {RUNS} deadlocked");
    assert_eq!(all_retries(metrics, "t").await, [0.0; 3]);
    proxy.stop().await;
}

/// Sends `sql` on a raw connection and returns the answer's first packet.
async fn raw_answer(addr: &str, user: &str, sql: &str) -> (u8, Vec<u8>) {
    let mut s = common::raw_login(addr, user, user, Some("app")).await;
    common::raw_query(&mut s, sql.as_bytes()).await;
    common::raw_read(&mut s).await.expect("an answer")
}

/// A prepared `UPDATE sig SET note = ? WHERE id = 1` whose parameter comes by
/// COM_STMT_SEND_LONG_DATA, on a raw connection; the execute's first answer packet.
async fn raw_long_data_execute(addr: &str) -> (u8, Vec<u8>) {
    use shardgate::protocol::packet::put_packet;
    use tokio::io::AsyncWriteExt;
    let mut s = common::raw_login(addr, "app", "app", Some("app")).await;
    let send = |payload: Vec<u8>| {
        let mut out = bytes::BytesMut::new();
        put_packet(&mut out, 0, &payload);
        out
    };
    let mut prepare = vec![0x16];
    prepare.extend_from_slice(b"UPDATE sig SET note = ? WHERE id = 1");
    s.write_all(&send(prepare)).await.expect("prepare");
    let (_, ok) = common::raw_read(&mut s).await.expect("PREPARE_OK");
    assert_eq!(ok.as_slice().first(), Some(&0), "PREPARE_OK: {ok:?}");
    let id = [ok[1], ok[2], ok[3], ok[4]];
    let params = u16::from_le_bytes([ok[7], ok[8]]);
    assert_eq!(params, 1);
    // One parameter definition (DEPRECATE_EOF: no EOF after it), no columns.
    common::raw_read(&mut s)
        .await
        .expect("parameter definition");
    let mut long = vec![0x18];
    long.extend_from_slice(&id);
    long.extend_from_slice(&0u16.to_le_bytes());
    long.extend_from_slice(b"sent as long data");
    s.write_all(&send(long)).await.expect("long data");
    let mut exec = vec![0x17];
    exec.extend_from_slice(&id);
    exec.push(0); // no cursor
    exec.extend_from_slice(&1u32.to_le_bytes());
    exec.push(0); // null bitmap
    exec.push(1); // types follow
    exec.extend_from_slice(&[0xfe, 0x00]); // MYSQL_TYPE_STRING; its value came as long data
    s.write_all(&send(exec)).await.expect("execute");
    common::raw_read(&mut s)
        .await
        .expect("the execute's answer")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_try_deadlocking_gives_the_backends_last_err_after_the_configured_tries_and_only_where_allowed(
) {
    let (servers, proxy, metrics) = setup(2).await;
    let server = &servers[0];
    // Created over a connection of its own: the CLI would split the trigger's body.
    let mut direct = mysql_async::Conn::new(common::mysql_opts(
        &server.addr(),
        "shardgate",
        "shardgate",
        Some("app"),
    ))
    .await
    .expect("direct connection");
    for sql in [
        "CREATE TABLE sig (id INT PRIMARY KEY, v INT NOT NULL, note TEXT) ENGINE=InnoDB",
        "INSERT INTO sig VALUES (1, 0, NULL)",
        "CREATE TABLE sig_load (a INT) ENGINE=InnoDB",
        "CREATE TABLE tries (n INT AUTO_INCREMENT PRIMARY KEY) ENGINE=MyISAM",
        "CREATE TRIGGER sig_victim BEFORE UPDATE ON sig FOR EACH ROW BEGIN \
           INSERT INTO tries VALUES (NULL); \
           SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, \
             MESSAGE_TEXT = 'Deadlock found when trying to get lock; try restarting transaction'; \
         END",
        "CREATE TRIGGER sig_load_victim BEFORE INSERT ON sig_load FOR EACH ROW BEGIN \
           INSERT INTO tries VALUES (NULL); \
           SIGNAL SQLSTATE '40001' SET MYSQL_ERRNO = 1213, \
             MESSAGE_TEXT = 'Deadlock found when trying to get lock; try restarting transaction'; \
         END",
    ] {
        direct.query_drop(sql).await.expect(sql);
    }
    let tries = || common::number_on(server, "SELECT COUNT(*) FROM app.tries");
    let update = "UPDATE sig SET v = v + 1 WHERE id = 1";

    // Autocommit, text: the first try and 2 more; the client gets the last ERR exactly
    // as MariaDB sends it (the same packet, the same sequence id).
    let through = raw_answer(&proxy.addr_string(), "app", update).await;
    assert_eq!(tries(), 3, "tried 1 + deadlock_retries times");
    let direct_answer = raw_answer(&server.addr(), "shardgate", update).await;
    assert_eq!(tries(), 4);
    assert_eq!(through, direct_answer, "the backend's ERR, byte for byte");
    assert_eq!(
        common::raw_err(&through.1).map(|(c, s, _)| (c, s)),
        Some((1213, "40001".to_string()))
    );
    assert_eq!(retries(metrics, "sig", "gave_up").await, 1.0);

    // A prepared execute: the same.
    let mut c = proxy.connect("app", Some("app")).await;
    let r = c
        .exec_drop("UPDATE sig SET v = v + ? WHERE id = 1", (1,))
        .await;
    assert_1213(&r);
    assert_eq!(tries(), 7);
    assert_eq!(retries(metrics, "sig", "gave_up").await, 2.0);

    // The mariadb CLI: the same.
    let out = common::cli(&proxy.addr_string(), "app", "app", Some("app"), update);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("1213"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(tries(), 10);

    // Never inside a transaction, explicit or implicit.
    c.query_drop("BEGIN").await.expect("begin");
    assert_1213(&c.query_drop(update).await);
    assert_eq!(tries(), 11, "one try inside BEGIN");
    c.query_drop("ROLLBACK").await.expect("rollback");
    c.query_drop("SET autocommit = 0")
        .await
        .expect("autocommit off");
    assert_1213(&c.query_drop(update).await);
    assert_eq!(tries(), 12, "one try under autocommit=0");
    c.query_drop("ROLLBACK").await.expect("rollback");
    c.query_drop("SET autocommit = 1")
        .await
        .expect("autocommit on");
    // A pending one-shot SET TRANSACTION would not apply to a second try.
    c.query_drop("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .expect("set transaction");
    assert_1213(&c.query_drop(update).await);
    assert_eq!(tries(), 13, "one try with a pending SET TRANSACTION");
    // Back to normal: retried again.
    assert_1213(&c.query_drop(update).await);
    assert_eq!(tries(), 16);

    // Never with state reserved on the session's connection (a named lock).
    let mut locked = proxy.connect("app", Some("app")).await;
    let got: Option<i64> = locked
        .query_first("SELECT GET_LOCK('deadlock-test', 0)")
        .await
        .expect("lock");
    assert_eq!(got, Some(1));
    assert_1213(&locked.query_drop(update).await);
    assert_eq!(tries(), 17, "one try on a reserved connection");

    // Never a statement that sets a user variable (its assignment is not rolled back).
    assert_1213(
        &c.query_drop("UPDATE sig SET v = (@x := v + 1) WHERE id = 1")
            .await,
    );
    assert_eq!(tries(), 18, "one try for a statement that leaves state");

    // Never an execute whose parameter came as long data (the server forgets it).
    let (_, answer) = raw_long_data_execute(&proxy.addr_string()).await;
    assert_eq!(common::raw_err(&answer).map(|e| e.0), Some(1213));
    assert_eq!(tries(), 19, "one try for an execute with long data");

    // Never LOAD DATA LOCAL (its error comes after the file, not as its first answer).
    let dir = tempfile::tempdir().expect("temp dir");
    let file = dir.path().join("rows.tsv");
    std::fs::write(&file, "1\n").expect("write file");
    let out = common::cli_with_args(
        &proxy.addr_string(),
        "app",
        "app",
        Some("app"),
        &format!(
            "LOAD DATA LOCAL INFILE '{}' INTO TABLE sig_load",
            file.display()
        ),
        &["--local-infile=1"],
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("1213"));
    assert_eq!(tries(), 20, "one try for LOAD DATA LOCAL");

    assert_eq!(
        all_retries(metrics, "sig").await,
        [0.0, 0.0, 4.0],
        "four statements gave up after their retries; nothing else was retried"
    );
    drop(c);
    drop(locked);
    proxy.stop().await;
}
