//! The migration wave of the incident, with writes: clients that read AND write every
//! workspace database of a `database_per_workspace` keyspace (through the real
//! shardgate binary, with `mysql_async`) while a wave of three column-type changes and
//! one added column runs over all of them. With the binlog change capture no
//! application statement may fail, every migration completes, and every workspace
//! holds exactly its rows plus the acknowledged writes.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mysql_async::prelude::Queryable;

/// Workspace databases `ws_1..=ws_N`, over two clusters.
const WORKSPACES: u64 = 12;
/// Messages per workspace before the wave.
const MESSAGES: u64 = 400;
/// Conversations per workspace (ids `ws * 10 + 1 ..= ws * 10 + 5`).
const CONVERSATIONS: u64 = 5;
const CLIENTS: u64 = 8;
/// The wave, as in the incident: three type changes and one added column.
const WAVE: [&str; 4] = [
    "ALTER TABLE messages MODIFY author VARCHAR(310) NOT NULL",
    "ALTER TABLE conversations MODIFY subject VARCHAR(610) NOT NULL",
    "ALTER TABLE messages MODIFY body LONGTEXT NOT NULL",
    "ALTER TABLE conversations ADD COLUMN note2 VARCHAR(20) NULL",
];

fn vschema(servers: &[shardgate::demo::localdb::LocalMariaDb]) -> String {
    shardgate::demo::sample::tenants_vschema(
        &servers[0].addr(),
        &servers[1].addr(),
        "shardgate",
        "shardgate",
    )
}

/// Creates and fills every workspace database on the cluster that owns it.
fn seed(servers: &[shardgate::demo::localdb::LocalMariaDb], vschema_text: &str) {
    let vs = shardgate::vschema::VSchema::from_toml_str(vschema_text).expect("vschema");
    let ks = vs.keyspace("tenants").expect("keyspace");
    for ws in 1..=WORKSPACES {
        let owner = match ks.shard_for_workspace(ws).cluster.as_str() {
            "c1" => &servers[0],
            _ => &servers[1],
        };
        owner
            .sql(&shardgate::demo::sample::workspace_database_sql(
                ws,
                CONVERSATIONS,
                MESSAGES,
            ))
            .unwrap_or_else(|e| panic!("seed ws_{ws}: {e}"));
    }
}

#[derive(Default)]
struct ClientLog {
    statements: u64,
    /// (workspace, error) of every failed statement.
    errors: Vec<(u64, String)>,
    /// Acknowledged INSERTs per workspace.
    inserted: HashMap<u64, u64>,
    /// (workspace, id) of every acknowledged INSERT.
    ids: Vec<(u64, u64)>,
    /// Workspaces whose INSERT outcome is unknown (connection lost mid-statement).
    unknown: Vec<u64>,
}

async fn client(addr: String, me: u64, stop: Arc<AtomicBool>) -> ClientLog {
    let opts = common::mysql_opts(&addr, "app", "app", None);
    let mut conn = mysql_async::Conn::new(opts.clone())
        .await
        .expect("client connects");
    let mut log = ClientLog::default();
    let mut i = 0u64;
    while !stop.load(Ordering::SeqCst) {
        i += 1;
        let ws = (i * 7 + me * 13) % WORKSPACES + 1;
        let conversation = ws * 10 + 1 + i % CONVERSATIONS;
        let mut statements = vec![
            (format!("USE ws_{ws}"), false),
            ("SELECT COUNT(*) FROM conversations".to_string(), false),
            (
                format!(
                    "INSERT INTO messages (conversation_id, workspace_id, author, body, created_at) \
                     VALUES ({conversation}, {ws}, 'client {me}', 'wave {me}-{i}', NOW())"
                ),
                true,
            ),
        ];
        if i.is_multiple_of(3) {
            statements.push((
                format!(
                    "UPDATE conversations SET state = 'pending', updated_at = NOW() \
                     WHERE id = {conversation}"
                ),
                false,
            ));
        }
        for (sql, is_insert) in statements {
            log.statements += 1;
            match conn.query_drop(&sql).await {
                Ok(()) => {
                    if is_insert {
                        *log.inserted.entry(ws).or_default() += 1;
                        log.ids.push((ws, conn.last_insert_id().unwrap_or(0)));
                    }
                }
                Err(e) => {
                    let server_error = matches!(e, mysql_async::Error::Server(_));
                    log.errors.push((ws, format!("{sql}: {e}")));
                    if !server_error {
                        if is_insert {
                            log.unknown.push(ws);
                        }
                        conn = mysql_async::Conn::new(opts.clone())
                            .await
                            .expect("client reconnects");
                    }
                    break;
                }
            }
        }
    }
    let _ = conn.disconnect().await;
    log
}

/// `SHOW MIGRATIONS` rows of the given uuids: (uuid, database, status, capture).
async fn wave_rows(
    admin: &mut mysql_async::Conn,
    uuids: &[String],
) -> Vec<(String, String, String, Option<String>)> {
    let rows: Vec<mysql_async::Row> = admin
        .query("SHOW MIGRATIONS")
        .await
        .expect("SHOW MIGRATIONS");
    rows.into_iter()
        .filter_map(|r| {
            let uuid: String = r.get("uuid")?;
            uuids.contains(&uuid).then(|| {
                (
                    uuid,
                    r.get("database").unwrap_or_default(),
                    r.get("status").unwrap_or_default(),
                    r.get::<Option<String>, _>("capture").flatten(),
                )
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_type_change_wave_under_reads_and_writes_fails_no_statement_with_binlog_capture() {
    tokio::time::timeout(Duration::from_secs(400), async {
        let servers = common::start_servers(2);
        let vs = vschema(&servers);
        seed(&servers, &vs);
        let proxy = common::spawn_proxy_binary(
            &vs,
            "[migrations]\ninstant_spacing_s = 0.2\nchunk_target_ms = 100\n",
        );
        let addr = proxy.addr_string();
        let stop = Arc::new(AtomicBool::new(false));
        let clients: Vec<_> = (0..CLIENTS)
            .map(|me| tokio::spawn(client(addr.clone(), me, stop.clone())))
            .collect();
        tokio::time::sleep(Duration::from_secs(2)).await;

        // The wave, submitted for the whole keyspace.
        let mut dba = mysql_async::Conn::new(common::mysql_opts(&addr, "app", "app", Some("tenants")))
            .await
            .expect("dba connects");
        let mut uuids = Vec::new();
        for ddl in WAVE {
            let row: Option<(String, String, u64)> =
                dba.query_first(ddl).await.unwrap_or_else(|e| panic!("{ddl}: {e}"));
            let (uuid, _, queued) = row.expect("the queue's answer");
            assert_eq!(queued, WORKSPACES, "{ddl}: one row per workspace database");
            uuids.push(uuid);
        }
        let started = Instant::now();
        let mut admin =
            mysql_async::Conn::new(common::mysql_opts(&addr, "admin", "admin", None))
                .await
                .expect("admin connects");
        let rows = loop {
            let rows = wave_rows(&mut admin, &uuids).await;
            let done = rows.len() as u64 == 4 * WORKSPACES
                && rows
                    .iter()
                    .all(|r| matches!(r.2.as_str(), "complete" | "failed" | "cancelled"));
            if done {
                break rows;
            }
            assert!(
                started.elapsed() < Duration::from_secs(300),
                "the wave did not finish: {rows:?}\n{}",
                proxy.log()
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let wave_took = started.elapsed();
        // A moment of writes on the new tables, then stop.
        tokio::time::sleep(Duration::from_secs(1)).await;
        stop.store(true, Ordering::SeqCst);
        let mut logs = Vec::new();
        for c in clients {
            logs.push(c.await.expect("client task"));
        }

        let failed: Vec<_> = rows.iter().filter(|r| r.2 != "complete").collect();
        if !failed.is_empty() {
            let messages: Vec<mysql_async::Row> =
                admin.query("SHOW MIGRATIONS").await.expect("SHOW MIGRATIONS");
            let why: Vec<(Option<String>, Option<String>)> = messages
                .into_iter()
                .filter(|r| r.get::<String, _>("status").as_deref() != Some("complete"))
                .map(|r| (r.get("database"), r.get::<Option<String>, _>("message").flatten()))
                .collect();
            panic!("migrations not complete: {failed:?}: {why:?}");
        }
        // The three type changes were copies, each capturing from the binlog.
        let copies: Vec<_> = rows.iter().filter(|r| r.3.is_some()).collect();
        assert_eq!(copies.len() as u64, 3 * WORKSPACES, "{rows:?}");
        assert!(
            copies.iter().all(|r| r.3.as_deref() == Some("binlog")),
            "{copies:?}"
        );
        let statements: u64 = logs.iter().map(|l| l.statements).sum();
        let errors: Vec<_> = logs.iter().flat_map(|l| l.errors.iter()).collect();
        let mut erring: Vec<u64> = errors.iter().map(|(ws, _)| *ws).collect();
        erring.sort_unstable();
        erring.dedup();
        eprintln!(
            "wave of {} migrations took {wave_took:?}; {statements} application statements, \
             {} failed, in {} workspaces",
            rows.len(),
            errors.len(),
            erring.len()
        );
        assert!(errors.is_empty(), "application statements failed: {errors:?}");
        // Every copy compared its tables outside the write hold first.
        let outside = proxy
            .log()
            .matches("checksum outside the write hold matches")
            .count();
        assert_eq!(outside as u64, 3 * WORKSPACES, "{}", proxy.log());
        assert!(statements > 200, "the clients ran during the wave");

        // Every workspace: its rows plus exactly the acknowledged inserts, and the new
        // schema.
        let vsp = shardgate::vschema::VSchema::from_toml_str(&vs).expect("vschema");
        let ks = vsp.keyspace("tenants").expect("keyspace");
        for ws in 1..=WORKSPACES {
            let owner = match ks.shard_for_workspace(ws).cluster.as_str() {
                "c1" => &servers[0],
                _ => &servers[1],
            };
            let acked: u64 = logs
                .iter()
                .map(|l| l.inserted.get(&ws).copied().unwrap_or(0))
                .sum();
            let answer = owner
                .sql(&format!(
                    "SELECT COUNT(*), SUM(body LIKE 'wave %'), COUNT(DISTINCT id) FROM ws_{ws}.messages; \
                     SELECT COLUMN_TYPE FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = 'ws_{ws}' \
                       AND TABLE_NAME IN ('messages', 'conversations') \
                       AND COLUMN_NAME IN ('author', 'subject', 'body', 'note2') ORDER BY COLUMN_NAME"
                ))
                .expect("count");
            let words: Vec<&str> = answer.split_whitespace().collect();
            // Each acknowledged INSERT has its own id, and that row is in the table
            // (an insert that slipped into the old table at a cut-over would leave its
            // id free for another one in the new table).
            let mut ids: Vec<u64> = logs
                .iter()
                .flat_map(|l| l.ids.iter())
                .filter(|(w, _)| *w == ws)
                .map(|(_, id)| *id)
                .collect();
            ids.sort_unstable();
            let n = ids.len();
            ids.dedup();
            assert_eq!(ids.len(), n, "ws_{ws}: two acknowledged inserts got one id");
            let present = owner
                .sql(&format!("SELECT id FROM ws_{ws}.messages WHERE body LIKE 'wave %'"))
                .expect("ids");
            let mut present: Vec<u64> = present
                .split_whitespace()
                .filter_map(|x| x.parse().ok())
                .collect();
            present.sort_unstable();
            assert_eq!(present, ids, "ws_{ws}: the acknowledged inserts' rows");
            assert_eq!(
                words,
                vec![
                    (MESSAGES + acked).to_string().as_str(),
                    acked.to_string().as_str(),
                    (MESSAGES + acked).to_string().as_str(),
                    "varchar(310)",
                    "longtext",
                    "varchar(20)",
                    "varchar(610)",
                ],
                "ws_{ws}: {MESSAGES} rows + {acked} acknowledged inserts, no row lost or doubled"
            );
        }
    })
    .await
    .expect("the wave test finishes in time");
}
