//! The workloads: what each connection sends, and the bounded loop that sends it.

use std::fmt::Write as _;
use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use shardgate::backend::BackendConn;
use shardgate::protocol::command;
use shardgate::protocol::relay::ResponseKind;

use crate::setup::DataSize;

/// Rows per statement of `bulk-insert`.
pub const BULK_ROWS: usize = 100;
/// Most latencies kept per connection and arm (bounds memory; later queries still count).
const MAX_SAMPLES_PER_CONN: usize = 2_000_000;
/// Longest a single statement may take before the connection gives up.
const STATEMENT_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    PointSelect,
    AppMix,
    BulkInsert,
}

impl Workload {
    pub const ALL: [Workload; 3] = [
        Workload::PointSelect,
        Workload::AppMix,
        Workload::BulkInsert,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Workload::PointSelect => "point-select",
            Workload::AppMix => "app-mix",
            Workload::BulkInsert => "bulk-insert",
        }
    }

    pub fn parse(s: &str) -> Option<Workload> {
        Workload::ALL.into_iter().find(|w| w.name() == s)
    }
}

/// Builds the statements of one workload; one per connection (its own RNG).
pub struct Generator {
    workload: Workload,
    workspaces: Arc<Vec<u64>>,
    size: DataSize,
    rng: StdRng,
    /// app-mix: statements of the current operation not sent yet (read = 2 statements).
    pending_read: Option<(u64, u32)>,
}

impl Generator {
    pub fn new(workload: Workload, workspaces: Arc<Vec<u64>>, size: DataSize, seed: u64) -> Self {
        Generator {
            workload,
            workspaces,
            size,
            rng: StdRng::seed_from_u64(seed),
            pending_read: None,
        }
    }

    fn workspace(&mut self) -> u64 {
        self.workspaces[self.rng.gen_range(0..self.workspaces.len())]
    }

    /// Writes the next COM_QUERY payload (command byte included) into `out`.
    pub fn next(&mut self, out: &mut String) {
        out.clear();
        out.push(command::QUERY as char);
        match self.workload {
            Workload::PointSelect => {
                let w = self.workspace();
                let id = self.rng.gen_range(1..=self.size.items);
                let _ = write!(
                    out,
                    "SELECT val FROM items WHERE workspace_id = {w} AND id = {id}"
                );
            }
            Workload::AppMix => self.app_mix(out),
            Workload::BulkInsert => {
                out.push_str("INSERT INTO events (workspace_id, kind, payload) VALUES ");
                for i in 0..BULK_ROWS {
                    let w = self.workspace();
                    let kind = self.rng.gen_range(0..16);
                    let _ = write!(
                        out,
                        "{}({w}, {kind}, 'event {kind} of workspace {w}: page viewed')",
                        if i > 0 { "," } else { "" }
                    );
                }
            }
        }
    }

    /// 80% of operations read a conversation and its last 20 messages (two statements),
    /// 10% add a message, 10% update a conversation.
    fn app_mix(&mut self, out: &mut String) {
        if let Some((w, c)) = self.pending_read.take() {
            let _ = write!(
                out,
                "SELECT id, author, body, created_at FROM messages WHERE workspace_id = {w} \
                 AND conversation_id = {c} ORDER BY id DESC LIMIT 20"
            );
            return;
        }
        let w = self.workspace();
        let c = self.rng.gen_range(1..=self.size.conversations as u32);
        let roll = self.rng.gen_range(0..100);
        let now = 1_700_000_000 + self.rng.gen_range(0..1_000_000);
        if roll < 80 {
            let _ = write!(
                out,
                "SELECT id, title, state, updated_at FROM conversations WHERE workspace_id = {w} AND id = {c}"
            );
            self.pending_read = Some((w, c));
        } else if roll < 90 {
            let author = self.rng.gen_range(0..7);
            let _ = write!(
                out,
                "INSERT INTO messages (workspace_id, conversation_id, author, body, created_at) \
                 VALUES ({w}, {c}, {author}, 'Reply at {now}: we have looked into it, please try again', {now})"
            );
        } else {
            let state = if roll % 2 == 0 { "open" } else { "snoozed" };
            let _ = write!(
                out,
                "UPDATE conversations SET state = '{state}', updated_at = {now} \
                 WHERE workspace_id = {w} AND id = {c}"
            );
        }
    }
}

/// What one connection did during one phase.
#[derive(Debug, Default)]
pub struct ConnResult {
    pub queries: u64,
    pub errors: u64,
    pub latencies: Vec<u64>,
    /// The connection broke; why.
    pub broken: Option<String>,
}

/// Sends statements on `conn` until `until` (or `max_queries`), timing each one.
/// Counts into `progress` as it goes.
pub async fn drive(
    conn: &mut BackendConn,
    generator: &mut Generator,
    until: Instant,
    max_queries: u64,
    progress: Arc<AtomicU64>,
    keep_latencies: bool,
) -> ConnResult {
    let mut r = ConnResult::default();
    let mut sql = String::with_capacity(16 * 1024);
    while r.queries < max_queries && Instant::now() < until {
        generator.next(&mut sql);
        let start = Instant::now();
        let res = tokio::time::timeout(
            STATEMENT_TIMEOUT,
            conn.exec(sql.as_bytes(), ResponseKind::Query),
        )
        .await;
        let took = start.elapsed();
        match res {
            Ok(Ok(c)) => {
                if c.outcome.error {
                    r.errors += 1;
                    if r.errors == 1 {
                        let msg = c.err().map(|e| e.message).unwrap_or_default();
                        // On a terminal, off the progress line first.
                        let nl = if std::io::stderr().is_terminal() {
                            "\n"
                        } else {
                            ""
                        };
                        eprintln!(
                            "{nl}bench: query failed: {msg}: {}",
                            &sql[1..sql.len().min(120)]
                        );
                    }
                }
            }
            Ok(Err(e)) => {
                r.broken = Some(e.to_string());
                break;
            }
            Err(_) => {
                r.broken = Some(format!("statement timed out after {STATEMENT_TIMEOUT:?}"));
                break;
            }
        }
        r.queries += 1;
        progress.fetch_add(1, Ordering::Relaxed);
        if keep_latencies && r.latencies.len() < MAX_SAMPLES_PER_CONN {
            r.latencies.push(took.as_nanos() as u64);
        }
    }
    r
}
