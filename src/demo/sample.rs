//! The demo's schema and its deterministic sample data: workspaces, their
//! conversations and the messages in them, as SQL scripts per database.

use std::fmt::Write;

/// Rows per multi-row INSERT.
const BATCH: usize = 500;

/// Tables of the sharded keyspace; every one carries `workspace_id`.
pub const SHARDED_TABLES: &str = "\
CREATE TABLE IF NOT EXISTS workspaces (
  workspace_id BIGINT UNSIGNED NOT NULL PRIMARY KEY,
  name VARCHAR(100) NOT NULL,
  plan VARCHAR(20) NOT NULL,
  created_at DATETIME NOT NULL
);
CREATE TABLE IF NOT EXISTS conversations (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  workspace_id BIGINT UNSIGNED NOT NULL,
  subject VARCHAR(200) NOT NULL,
  state VARCHAR(20) NOT NULL,
  updated_at DATETIME NOT NULL,
  KEY workspace_updated (workspace_id, updated_at)
);
CREATE TABLE IF NOT EXISTS messages (
  id BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
  conversation_id BIGINT UNSIGNED NOT NULL,
  workspace_id BIGINT UNSIGNED NOT NULL,
  author VARCHAR(100) NOT NULL,
  body TEXT NOT NULL,
  created_at DATETIME NOT NULL,
  KEY workspace_conversation (workspace_id, conversation_id)
);
";

const PLANS: [&str; 4] = ["free", "team", "business", "enterprise"];
const STATES: [&str; 3] = ["open", "pending", "closed"];
const AUTHORS: [&str; 5] = ["alice", "bob", "carol", "dave", "erin"];
const SUBJECTS: [&str; 6] = [
    "Cannot log in",
    "Invoice question",
    "Feature request: dark mode",
    "Export is slow",
    "Welcome aboard",
    "Password reset",
];
const BODIES: [&str; 5] = [
    "Hi, could you take a look at this?",
    "Thanks, that fixed it.",
    "We are still seeing the problem on our side.",
    "I have escalated this to the team.",
    "Closing this one, feel free to reopen.",
];

/// Conversations of a workspace (1 to 5). Ids are globally unique across shards
/// (conversation = workspace * 10 + n, message = conversation * 10 + n), so a
/// scatter query never sees the same id twice.
pub fn conversation_count(workspace: u64) -> u64 {
    1 + workspace % 5
}

/// Messages of a conversation (1 to 4).
fn message_count(conversation: u64) -> u64 {
    1 + (conversation * 7) % 4
}

/// Appends the INSERTs for `workspaces` (all placed in the same database) to `out`;
/// returns the number of rows.
pub fn append_inserts(out: &mut String, workspaces: &[u64]) -> usize {
    let mut ws_rows = Vec::new();
    let mut conv_rows = Vec::new();
    let mut msg_rows = Vec::new();
    for &ws in workspaces {
        let plan = PLANS[(ws % PLANS.len() as u64) as usize];
        ws_rows.push(format!(
            "({ws},'Workspace {ws}','{plan}',DATE_ADD('2024-01-01',INTERVAL {ws} MINUTE))"
        ));
        for n in 1..=conversation_count(ws) {
            let conv = ws * 10 + n;
            let subject = SUBJECTS[(conv % SUBJECTS.len() as u64) as usize];
            let state = STATES[(conv % STATES.len() as u64) as usize];
            conv_rows.push(format!(
                "({conv},{ws},'{subject}','{state}',DATE_ADD('2024-03-01',INTERVAL {conv} MINUTE))"
            ));
            for m in 1..=message_count(conv) {
                let msg = conv * 10 + m;
                let author = AUTHORS[(msg % AUTHORS.len() as u64) as usize];
                let body = BODIES[(msg % BODIES.len() as u64) as usize];
                msg_rows.push(format!(
                    "({msg},{conv},{ws},'{author}','{body}',DATE_ADD('2024-03-01',INTERVAL {msg} SECOND))"
                ));
            }
        }
    }
    append_batches(
        out,
        "workspaces (workspace_id,name,plan,created_at)",
        &ws_rows,
    );
    append_batches(
        out,
        "conversations (id,workspace_id,subject,state,updated_at)",
        &conv_rows,
    );
    append_batches(
        out,
        "messages (id,conversation_id,workspace_id,author,body,created_at)",
        &msg_rows,
    );
    ws_rows.len() + conv_rows.len() + msg_rows.len()
}

fn append_batches(out: &mut String, into: &str, rows: &[String]) {
    for batch in rows.chunks(BATCH) {
        let _ = writeln!(out, "INSERT INTO {into} VALUES\n{};", batch.join(",\n"));
    }
}

/// A two-cluster vschema with one keyspace, `tenants`, of one database per workspace
/// (`ws_<id>`, split by hash between `c1` and `c2`): the layout the migration-wave
/// test and bench replay.
pub fn tenants_vschema(c1: &str, c2: &str, user: &str, password: &str) -> String {
    format!(
        "[clusters.c1]\nprimary = \"{c1}\"\nuser = \"{user}\"\npassword = \"{password}\"\n\
         [clusters.c2]\nprimary = \"{c2}\"\nuser = \"{user}\"\npassword = \"{password}\"\n\
         [keyspaces.tenants]\nsharded = true\nvindex = \"xxhash\"\n\
         tenancy = \"database_per_workspace\"\ndatabase_template = \"ws_{{id}}\"\n\
         shards = [{{ name = \"-80\", cluster = \"c1\" }}, {{ name = \"80-\", cluster = \"c2\" }}]\n"
    )
}

/// SQL that creates workspace `ws`'s database `ws_<ws>` with the sharded tables,
/// `conversations` rows (ids `ws * 10 + 1..`) and `messages` rows (ids from 1, bodies
/// of 50-249 bytes). Uses MariaDB's `seq_1_to_N` tables.
pub fn workspace_database_sql(ws: u64, conversations: u64, messages: u64) -> String {
    let db = format!("ws_{ws}");
    format!(
        "CREATE DATABASE {db}; USE {db}; {SHARDED_TABLES}\
         INSERT INTO conversations (id, workspace_id, subject, state, updated_at) \
           SELECT {ws} * 10 + seq, {ws}, CONCAT('subject ', seq), 'open', NOW() \
           FROM seq_1_to_{conversations};\n\
         INSERT INTO messages (conversation_id, workspace_id, author, body, created_at) \
           SELECT {ws} * 10 + 1 + seq % {conversations}, {ws}, CONCAT('author ', seq), \
           REPEAT('x', 50 + seq % 200), NOW() FROM seq_1_to_{messages};\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_data_is_deterministic_and_batched() {
        let mut a = String::new();
        let mut b = String::new();
        let ids: Vec<u64> = (1..=1200).collect();
        append_inserts(&mut a, &ids);
        append_inserts(&mut b, &ids);
        assert_eq!(a, b);
        // 1200 workspaces make three workspace batches.
        assert_eq!(a.matches("INSERT INTO workspaces").count(), 3);
        assert!(a.contains("(7,'Workspace 7','enterprise',"));
    }

    #[test]
    fn conversation_ids_stay_unique_per_workspace() {
        // At most 9 conversations per workspace keeps `ws * 10 + n` unique.
        assert!((1..10_000).all(|ws| conversation_count(ws) <= 9));
        assert!((1..100_000).all(|c| message_count(c) <= 9));
    }
}
