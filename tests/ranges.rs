//! Ranges on the sharding column through shardgate to two real MariaDB shards: a range
//! that one shard holds runs there (text and prepared alike) and returns that shard's
//! rows; a range across shards, over a pin that points elsewhere, or on a hash vindex is
//! refused with ER_UNKNOWN_ERROR (1105, HY000), and the connection goes on.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::Duration;

use mysql_async::prelude::*;
use shardgate::demo::localdb::LocalMariaDb;

/// First id of shard `80-` under the numeric vindex (2^63).
const HIGH: u64 = 1 << 63;

async fn refused(conn: &mut mysql_async::Conn, sql: &str) -> String {
    match conn.query_drop(sql).await {
        Err(mysql_async::Error::Server(e)) => {
            assert_eq!((e.code, e.state.as_str()), (1105, "HY000"), "{sql}: {e:?}");
            e.message
        }
        other => panic!("expected {sql:?} to be refused, got {other:?}"),
    }
}

/// The ids a direct query on one shard returns (one per line).
fn ids_on(server: &LocalMariaDb, sql: &str) -> Vec<u64> {
    common::direct_query(server, sql)
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Whether the connection still answers.
async fn usable(conn: &mut mysql_async::Conn) {
    let one: Option<u64> = conn.query_first("SELECT 1").await.expect("SELECT 1");
    assert_eq!(one, Some(1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_range_on_one_shard_runs_there_and_a_range_across_shards_is_refused() {
    let servers = common::start_servers(2);
    // Numeric vindex: ids below 2^63 on `-80` (c1), the rest on `80-` (c2); workspace 50
    // is pinned to `80-`.
    let toml = common::ShardedVSchema::new(&servers)
        .vindex("numeric")
        .ddl("direct")
        .table("items", "id")
        .pin(50, "80-")
        .build();
    let proxy = common::start_proxy(&toml).await;
    let body = async {
        let mut conn = proxy.connect("app", Some("app")).await;
        conn.query_drop("CREATE TABLE items (id BIGINT UNSIGNED PRIMARY KEY, v INT NOT NULL)")
            .await
            .expect("create table on both shards");
        let ids: Vec<u64> = (1..=100).chain(HIGH..HIGH + 10).collect();
        let rows: Vec<String> = ids.iter().map(|id| format!("({id}, 1)")).collect();
        conn.query_drop(format!(
            "INSERT INTO items (id, v) VALUES {}",
            rows.join(", ")
        ))
        .await
        .expect("multi-row insert split over the shards");

        // Within `-80`, as BETWEEN and as a pair of comparisons in either order.
        let direct = ids_on(
            &servers[0],
            "SELECT id FROM app.items WHERE id BETWEEN 1 AND 40 ORDER BY id",
        );
        assert_eq!(direct, (1..=40).collect::<Vec<u64>>());
        for sql in [
            "SELECT id FROM items WHERE id BETWEEN 1 AND 40 ORDER BY id",
            "SELECT id FROM items WHERE id < 41 AND id >= 1 ORDER BY id",
            "SELECT id FROM items WHERE 0 < id AND 40 >= id ORDER BY id",
        ] {
            let got: Vec<u64> = conn.query(sql).await.expect(sql);
            assert_eq!(got, direct, "{sql}");
        }
        // Within `80-`.
        let sql = format!(
            "SELECT id FROM items WHERE id > {HIGH} AND id <= {} ORDER BY id",
            HIGH + 4
        );
        let got: Vec<u64> = conn.query(&sql).await.expect("range on 80-");
        let direct = ids_on(
            &servers[1],
            &format!(
                "SELECT id FROM app.items WHERE id > {HIGH} AND id <= {} ORDER BY id",
                HIGH + 4
            ),
        );
        assert_eq!(got, direct);
        assert_eq!(got, (HIGH + 1..=HIGH + 4).collect::<Vec<u64>>());
        // An empty range answers an empty result.
        let none: Vec<u64> = conn
            .query("SELECT id FROM items WHERE id BETWEEN 40 AND 1")
            .await
            .expect("empty range");
        assert!(none.is_empty(), "{none:?}");

        // Across the boundary, and over the pinned workspace 50.
        let msg = refused(
            &mut conn,
            &format!(
                "SELECT id FROM items WHERE id BETWEEN {} AND {}",
                HIGH - 5,
                HIGH + 5
            ),
        )
        .await;
        assert!(msg.contains("spans shards -80, 80-"), "{msg}");
        usable(&mut conn).await;
        let msg = refused(&mut conn, "SELECT id FROM items WHERE id BETWEEN 40 AND 60").await;
        assert!(msg.contains("spans shards -80, 80-"), "{msg}");
        usable(&mut conn).await;

        // Prepared: the bound values are planned as literals.
        let stmt = "SELECT id FROM items WHERE id BETWEEN ? AND ? ORDER BY id";
        let got: Vec<u64> = conn
            .exec(stmt, (1u64, 40u64))
            .await
            .expect("prepared range");
        assert_eq!(got, (1..=40).collect::<Vec<u64>>());
        match conn.exec_drop(stmt, (40u64, 60u64)).await {
            Err(mysql_async::Error::Server(e)) => {
                assert_eq!((e.code, e.state.as_str()), (1105, "HY000"), "{e:?}");
                assert!(e.message.contains("spans shards"), "{e:?}");
            }
            other => panic!("expected the prepared range over a pin to be refused, got {other:?}"),
        }
        usable(&mut conn).await;
        let got: Vec<u64> = conn
            .exec(stmt, (61u64, 63u64))
            .await
            .expect("prepared again");
        assert_eq!(got, vec![61, 62, 63]);
        conn.disconnect().await.expect("disconnect");
    };
    tokio::time::timeout(Duration::from_secs(90), body)
        .await
        .expect("the test finishes within 90 s");

    // The same shards under a hash vindex: a range names no shard.
    let toml = common::ShardedVSchema::new(&servers)
        .table("items", "id")
        .build();
    let proxy = common::start_proxy(&toml).await;
    let body = async {
        let mut conn = proxy.connect("app", Some("app")).await;
        let msg = refused(&mut conn, "SELECT id FROM items WHERE id BETWEEN 1 AND 40").await;
        assert!(msg.contains("order-preserving"), "{msg}");
        usable(&mut conn).await;
    };
    tokio::time::timeout(Duration::from_secs(30), body)
        .await
        .expect("the hash-vindex check finishes within 30 s");
}
