//! More busy sessions than backend connections: statements wait for a connection, and
//! every session gets its turn. The proxy runs its sessions on two worker threads, and
//! a connection given back goes first to a waiting statement of the same worker (no
//! wake-up of the other thread); the sessions of both workers must still be served
//! alike, and none may wait anywhere near the checkout timeout.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use std::time::{Duration, Instant};

use mysql_async::prelude::*;
use shardgate::vschema::VSchema;

const SESSIONS: usize = 24;
const CONNECTIONS: usize = 4;
const RUN: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_beyond_the_pool_each_get_their_turn() {
    tokio::time::timeout(Duration::from_secs(120), scenario())
        .await
        .expect("the scenario finishes within 120 s");
}

async fn scenario() {
    let servers = common::start_servers(1);
    let toml = common::sharded_vschema(&servers);
    let vs = VSchema::from_toml_str(&toml).expect("vschema");
    let pool = shardgate::config::PoolConfig {
        max_connections: CONNECTIONS,
        ..Default::default()
    };
    let proxy = common::start_proxy_with(vs, pool).await;
    let mut sessions = Vec::new();
    for _ in 0..SESSIONS {
        sessions.push(proxy.connect("app", Some("main")).await);
    }
    // The proxy hands each new session to the worker with fewer sessions: logged in
    // one after the other, the even ones are on one worker, the odd ones on the other.
    // The even ones start first and take every connection, and keep checkouts waiting
    // on their worker; the odd ones, started a moment later, are served only if
    // connections are also handed across to their worker.
    let head_start = Duration::from_millis(300);
    let t0 = tokio::time::Instant::now() + Duration::from_millis(50);
    let until = t0 + head_start + RUN;
    let mut tasks = Vec::new();
    for (s, mut c) in sessions.into_iter().enumerate() {
        let begin = if s % 2 == 0 { t0 } else { t0 + head_start };
        tasks.push(tokio::spawn(async move {
            tokio::time::sleep_until(begin).await;
            let (mut done, mut longest) = (0u32, Duration::ZERO);
            while tokio::time::Instant::now() < until {
                let asked = Instant::now();
                // Each statement holds its connection for a millisecond on the server.
                let got: Option<(i64, i64)> = c
                    .query_first(format!("SELECT SLEEP(0.001), {s}"))
                    .await
                    .unwrap_or_else(|e| panic!("session {s}, statement {done}: {e}"));
                assert_eq!(got, Some((0, s as i64)), "session {s} gets its own answer");
                longest = longest.max(asked.elapsed());
                done += 1;
            }
            drop(c);
            (done, longest)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await.expect("a session's statements"));
    }
    let counts: Vec<u32> = results.iter().map(|r| r.0).collect();
    let (least, most) = (
        counts.iter().copied().min().unwrap_or(0),
        counts.iter().copied().max().unwrap_or(0),
    );
    let longest = results.iter().map(|r| r.1).max().unwrap_or_default();
    // Served alike: with 24 sessions over 4 connections each gets about a sixth of a
    // connection; a session served at less than half the rate of the busiest one was
    // passed over.
    assert!(
        least >= 10 && least * 2 >= most,
        "statements per session in {RUN:?}, {SESSIONS} sessions over {CONNECTIONS} \
         connections: {counts:?}"
    );
    // No statement waited anywhere near the checkout timeout (5 s).
    assert!(
        longest < Duration::from_secs(2),
        "the longest statement took {longest:?}; per session {counts:?}"
    );
    proxy.stop().await;
}
