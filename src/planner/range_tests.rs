//! Ranges on the sharding column, as the planner sees them (where a range lands is the
//! router's and the vschema's business: `vschema::range`).

use super::*;

/// `messages` and `channels` sharded by `workspace_id`, `plans` a reference table.
struct Schema;

impl ShardingSchema for Schema {
    fn is_sharded(&self) -> bool {
        true
    }
    fn sharding_column(&self, table: &str) -> Option<&str> {
        matches!(table, "messages" | "channels").then_some("workspace_id")
    }
    fn is_reference(&self, table: &str) -> bool {
        table == "plans"
    }
}

fn route(sql: &str) -> Route {
    let p = plan(sql, &Schema);
    assert_eq!(p.statements.len(), 1, "{sql}: {p:?}");
    p.statements
        .into_iter()
        .next()
        .expect("one statement")
        .route
}

fn range(low: u64, high: u64) -> Route {
    Route::WorkspaceRange {
        table: "messages".into(),
        column: "workspace_id".into(),
        low,
        high,
    }
}

fn missing() -> Route {
    Route::MissingWorkspace {
        table: "messages".into(),
        column: "workspace_id".into(),
    }
}

#[test]
fn between_and_comparison_pairs_become_ranges() {
    for (sql, low, high) in [
        (
            "SELECT c FROM messages WHERE workspace_id BETWEEN 996 AND 1095",
            996,
            1095,
        ),
        (
            "SELECT c FROM messages WHERE workspace_id >= 10 AND workspace_id < 20",
            10,
            19,
        ),
        (
            "SELECT c FROM messages WHERE workspace_id > 10 AND workspace_id <= 20",
            11,
            20,
        ),
        // Either order, and the literal on either side.
        (
            "SELECT c FROM messages WHERE workspace_id <= 20 AND workspace_id > 10",
            11,
            20,
        ),
        (
            "SELECT c FROM messages WHERE 5 <= workspace_id AND 9 > workspace_id",
            5,
            8,
        ),
        // Qualified, aliased, parenthesised, mixed with other conditions.
        (
            "SELECT m.c FROM messages m WHERE (m.workspace_id BETWEEN 1 AND 9) AND m.k > 'x'",
            1,
            9,
        ),
        // Several ranges intersect.
        (
            "SELECT c FROM messages WHERE workspace_id BETWEEN 1 AND 100 AND workspace_id > 50",
            51,
            100,
        ),
        // One side only: the other is the end of the id space.
        (
            "SELECT c FROM messages WHERE workspace_id >= 7",
            7,
            u64::MAX,
        ),
        ("SELECT c FROM messages WHERE workspace_id < 7", 0, 6),
        // sysbench's range selects.
        (
            "SELECT DISTINCT c FROM messages WHERE workspace_id BETWEEN 3 AND 102 ORDER BY c",
            3,
            102,
        ),
        (
            "SELECT SUM(k) FROM messages WHERE workspace_id BETWEEN 3 AND 102",
            3,
            102,
        ),
        // Writes too: the rows of the range are on the shard that holds the range.
        (
            "DELETE FROM messages WHERE workspace_id BETWEEN 3 AND 4",
            3,
            4,
        ),
        (
            "UPDATE messages SET k = k + 1 WHERE workspace_id > 2 AND workspace_id < 5",
            3,
            4,
        ),
    ] {
        assert_eq!(route(sql), range(low, high), "{sql}");
    }
}

#[test]
fn an_equality_wins_over_a_range() {
    assert_eq!(
        route("SELECT c FROM messages WHERE workspace_id BETWEEN 1 AND 9 AND workspace_id = 4"),
        Route::Workspaces(smallvec::smallvec![4])
    );
}

#[test]
fn empty_ranges_keep_a_low_bound_above_the_high() {
    for sql in [
        "SELECT c FROM messages WHERE workspace_id BETWEEN 9 AND 3",
        "SELECT c FROM messages WHERE workspace_id > 5 AND workspace_id < 6",
        "SELECT c FROM messages WHERE workspace_id < 0",
        "SELECT c FROM messages WHERE workspace_id > 18446744073709551615",
    ] {
        match route(sql) {
            Route::WorkspaceRange { low, high, .. } => assert!(low > high, "{sql}"),
            other => panic!("{sql}: {other:?}"),
        }
    }
}

#[test]
fn ranges_that_prove_nothing_stay_refused() {
    for sql in [
        // Not literals, or not non-negative integers.
        "SELECT c FROM messages WHERE workspace_id BETWEEN ? AND 9",
        "SELECT c FROM messages WHERE workspace_id BETWEEN k AND 9",
        "SELECT c FROM messages WHERE workspace_id BETWEEN 1 AND 9 + 1",
        "SELECT c FROM messages WHERE workspace_id BETWEEN -5 AND 9",
        "SELECT c FROM messages WHERE workspace_id BETWEEN 1.5 AND 9",
        "SELECT c FROM messages WHERE workspace_id >= 1e3",
        // A quoted bound compares as a string on a string column.
        "SELECT c FROM messages WHERE workspace_id BETWEEN '1' AND '2'",
        // Not a top-level conjunct.
        "SELECT c FROM messages WHERE workspace_id BETWEEN 1 AND 9 OR k = 1",
        "SELECT c FROM messages WHERE NOT (workspace_id BETWEEN 1 AND 9)",
        "SELECT c FROM messages WHERE workspace_id NOT BETWEEN 1 AND 9",
        "SELECT c FROM messages WHERE workspace_id <> 3",
        // Another column.
        "SELECT c FROM messages WHERE id BETWEEN 1 AND 9",
    ] {
        assert_eq!(route(sql), missing(), "{sql}");
    }
}

#[test]
fn a_range_places_only_a_statement_with_one_sharded_table() {
    let joined = route(
        "SELECT * FROM messages m JOIN channels c ON c.id = m.channel_id \
         WHERE m.workspace_id BETWEEN 1 AND 9",
    );
    assert_eq!(joined, missing());
    // The subquery's table is pinned, the outer one only ranged: two sharded uses.
    let nested = route(
        "SELECT * FROM messages WHERE workspace_id BETWEEN 1 AND 9 AND channel_id IN \
         (SELECT id FROM channels WHERE workspace_id = 4)",
    );
    assert_eq!(nested, missing());
    // A reference table read beside it is fine.
    assert_eq!(
        route(
            "SELECT * FROM messages m JOIN plans p ON p.id = m.plan_id \
             WHERE m.workspace_id BETWEEN 1 AND 9"
        ),
        range(1, 9)
    );
}

#[test]
fn a_bound_user_may_not_prove_a_workspace_with_a_range() {
    for sql in [
        "SELECT * FROM messages WHERE workspace_id BETWEEN 42 AND 42",
        "SELECT * FROM messages WHERE workspace_id >= 42 AND workspace_id <= 42",
        "DELETE FROM messages WHERE workspace_id BETWEEN 40 AND 44",
    ] {
        let denial = confine(sql, 0..sql.len(), &Schema, &[42]).expect_err(sql);
        assert!(denial.reason.contains("range"), "{sql}: {denial:?}");
    }
}
