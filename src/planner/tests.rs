//! Planner behaviour, asserted on exact plans.

use super::*;

struct TestSchema {
    sharded: bool,
}

impl ShardingSchema for TestSchema {
    fn is_sharded(&self) -> bool {
        self.sharded
    }
    fn sharding_column(&self, table: &str) -> Option<&str> {
        match table {
            "messages" | "channels" | "reactions" => Some("workspace_id"),
            "accounts" => Some("ws"),
            _ => None,
        }
    }
    fn is_reference(&self, table: &str) -> bool {
        matches!(table, "plans" | "countries")
    }
}

const SHARDED: TestSchema = TestSchema { sharded: true };
const UNSHARDED: TestSchema = TestSchema { sharded: false };

fn one(sql: &str) -> StatementPlan {
    let p = plan(sql, &SHARDED);
    assert_eq!(p.statements.len(), 1, "{sql}: {p:?}");
    p.statements.into_iter().next().expect("one statement")
}

fn route(sql: &str) -> Route {
    one(sql).route
}

fn ws(ids: &[u64]) -> Route {
    Route::Workspaces(ids.into())
}

fn missing(table: &str, column: &str) -> Route {
    Route::MissingWorkspace {
        table: table.into(),
        column: column.into(),
    }
}

fn unroutable(r: Route) -> bool {
    matches!(r, Route::Unroutable(_))
}

// ---- WHERE extraction ----

#[test]
fn equality_on_the_sharding_column_routes() {
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id = 42"),
        ws(&[42])
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE 42 = workspace_id"),
        ws(&[42])
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE WORKSPACE_ID = 42 AND id = 7"),
        ws(&[42])
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE id = 7 AND (workspace_id = 42)"),
        ws(&[42])
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE (id = 7 AND workspace_id = '42')"),
        ws(&[42])
    );
    assert_eq!(
        one("SELECT * FROM messages WHERE workspace_id = 42").kind,
        StatementKind::Select
    );
}

#[test]
fn in_lists_route_to_each_distinct_workspace() {
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id IN (3, '1', 3, 2)"),
        ws(&[3, 1, 2])
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id NOT IN (3)"),
        missing("messages", "workspace_id")
    );
}

#[test]
fn aliases_and_qualified_names_are_resolved() {
    assert_eq!(
        route("SELECT m.id FROM messages m WHERE m.workspace_id = 5"),
        ws(&[5])
    );
    assert_eq!(
        route("SELECT m.id FROM messages AS m WHERE m.workspace_id = 5"),
        ws(&[5])
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE messages.workspace_id = 5"),
        ws(&[5])
    );
    // Another table's column of the same name does not pin this one.
    assert_eq!(
        route("SELECT * FROM messages m WHERE x.workspace_id = 5"),
        missing("messages", "workspace_id")
    );
    let p = one("SELECT * FROM app.messages WHERE workspace_id = 5");
    assert_eq!(p.route, ws(&[5]));
    assert_eq!(p.qualified_schema.as_deref(), Some("app"));
    let p = one("SELECT * FROM `app`.`messages` m JOIN app.plans p ON p.id = m.plan_id WHERE m.workspace_id = 5");
    assert_eq!(p.route, ws(&[5]));
    assert_eq!(p.qualified_schema.as_deref(), Some("app"));
    let p = one("SELECT * FROM app.messages m JOIN other.plans p ON p.id = m.plan_id WHERE m.workspace_id = 5");
    assert_eq!(p.qualified_schema, None);
    assert_eq!(
        one("SELECT * FROM messages WHERE workspace_id = 5").qualified_schema,
        None
    );
}

#[test]
fn a_join_of_sharded_tables_needs_every_table_pinned_alike() {
    assert_eq!(
        route("SELECT * FROM messages m JOIN channels c ON c.id = m.channel_id WHERE m.workspace_id = 1 AND c.workspace_id = 1"),
        ws(&[1])
    );
    assert_eq!(
        route("SELECT * FROM messages m JOIN channels c ON c.id = m.channel_id AND c.workspace_id = m.workspace_id WHERE m.workspace_id = 1"),
        ws(&[1])
    );
    assert_eq!(
        route("SELECT * FROM messages m JOIN channels c ON c.id = m.channel_id WHERE m.workspace_id = 1"),
        missing("channels", "workspace_id")
    );
    assert!(unroutable(route(
        "SELECT * FROM messages m, channels c WHERE m.workspace_id = 1 AND c.workspace_id = 2"
    )));
    // Ambiguous bare column in a join pins nothing.
    assert_eq!(
        route("SELECT * FROM messages m JOIN channels c ON c.id = m.channel_id WHERE workspace_id = 1"),
        missing("messages", "workspace_id")
    );
}

#[test]
fn outer_joins_pin_only_their_nullable_side() {
    assert_eq!(
        route("SELECT * FROM messages m LEFT JOIN channels c ON c.id = m.channel_id AND c.workspace_id = m.workspace_id WHERE m.workspace_id = 2"),
        ws(&[2])
    );
    // The ON of a LEFT JOIN does not filter the preserved table.
    assert_eq!(
        route("SELECT * FROM messages m LEFT JOIN channels c ON c.workspace_id = 2 AND m.workspace_id = 2"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages m LEFT JOIN channels c ON c.id = m.channel_id WHERE m.workspace_id = 2"),
        missing("channels", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages m JOIN channels c USING (workspace_id) WHERE m.workspace_id = 2"),
        ws(&[2])
    );
    assert_eq!(
        route("SELECT * FROM messages m JOIN channels c ON c.workspace_id = 2 WHERE m.workspace_id = 2"),
        ws(&[2])
    );
}

#[test]
fn update_assignments_may_correlate_to_the_pinned_target() {
    assert_eq!(
        route("UPDATE messages SET n = (SELECT COUNT(*) FROM reactions r WHERE r.workspace_id = messages.workspace_id) WHERE workspace_id = 1"),
        ws(&[1])
    );
}

#[test]
fn or_and_non_literals_do_not_pin() {
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id = 1 OR workspace_id = 2"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id = id"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id > id"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id = (SELECT 1)"),
        missing("messages", "workspace_id")
    );
}

#[test]
fn bad_workspace_literals_are_unroutable() {
    assert!(unroutable(route(
        "SELECT * FROM messages WHERE workspace_id = -1"
    )));
    assert!(unroutable(route(
        "SELECT * FROM messages WHERE workspace_id = 1.5"
    )));
    assert!(unroutable(route(
        "SELECT * FROM messages WHERE workspace_id = 'abc'"
    )));
    assert!(unroutable(route(
        "SELECT * FROM messages WHERE workspace_id IN (1, -2)"
    )));
    assert!(unroutable(route(
        "SELECT * FROM messages WHERE workspace_id = 1 AND workspace_id = 2"
    )));
}

#[test]
fn subqueries_are_scopes_of_their_own() {
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id = 3 AND channel_id IN (SELECT id FROM channels WHERE workspace_id = 3)"),
        ws(&[3])
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id = 3 AND channel_id IN (SELECT id FROM channels)"),
        missing("channels", "workspace_id")
    );
    // Correlated to a pinned outer table.
    assert_eq!(
        route("SELECT * FROM messages m WHERE m.workspace_id = 3 AND EXISTS (SELECT 1 FROM reactions r WHERE r.workspace_id = m.workspace_id)"),
        ws(&[3])
    );
    assert_eq!(
        route("SELECT * FROM (SELECT * FROM messages WHERE workspace_id = 9) d"),
        ws(&[9])
    );
    assert_eq!(
        route("WITH x AS (SELECT * FROM messages WHERE workspace_id = 9) SELECT * FROM x"),
        ws(&[9])
    );
    assert_eq!(
        route("SELECT id FROM messages WHERE workspace_id = 1 UNION SELECT id FROM channels"),
        missing("channels", "workspace_id")
    );
}

#[test]
fn unsharded_and_reference_statements() {
    assert_eq!(route("SELECT 1"), Route::AnyShard);
    assert_eq!(route("SELECT @@version"), Route::AnyShard);
    assert_eq!(route("SELECT * FROM plans WHERE id = 1"), Route::AnyShard);
    assert_eq!(route("SELECT * FROM logs"), Route::AnyShard);
    assert_eq!(
        route("UPDATE plans SET name = 'x' WHERE id = 1"),
        Route::AllShards
    );
    assert_eq!(
        route("DELETE FROM countries WHERE id = 1"),
        Route::AllShards
    );
    assert_eq!(
        route("INSERT INTO plans (id, name) VALUES (1, 'a')"),
        Route::AllShards
    );
    assert_eq!(
        route("SELECT * FROM messages m JOIN plans p ON p.id = m.plan_id WHERE m.workspace_id = 4"),
        ws(&[4])
    );
    assert_eq!(
        route("UPDATE messages m JOIN plans p ON p.id = m.plan_id SET m.plan_name = p.name WHERE m.workspace_id = 4"),
        ws(&[4])
    );
    assert!(unroutable(route(
        "UPDATE plans p JOIN messages m ON p.id = m.plan_id SET p.used = 1 WHERE m.workspace_id = 4"
    )));
    assert!(unroutable(route(
        "DELETE p FROM plans p JOIN messages m ON m.plan_id = p.id WHERE m.workspace_id = 1"
    )));
    // sqlparser cannot parse comma-joined UPDATEs: which table is written is unknown.
    assert!(unroutable(route(
        "UPDATE messages m, plans p SET p.x = 1 WHERE m.workspace_id = 1"
    )));
    // With a tag, a write that mixes both kinds is still checked on the parse tree.
    assert_eq!(
        route(
            "UPDATE messages m JOIN plans p ON p.id = m.plan_id SET m.n = p.n /*workspace_id:4*/"
        ),
        ws(&[4])
    );
    assert!(unroutable(route(
        "UPDATE messages m JOIN plans p ON p.id = m.plan_id SET p.n = 1 /*workspace_id:4*/"
    )));
}

#[test]
fn update_and_delete_route_by_where() {
    let p = one("UPDATE messages SET body = 'x' WHERE workspace_id = 8 AND id = 1");
    assert_eq!((p.kind, p.route), (StatementKind::Update, ws(&[8])));
    let p = one("DELETE FROM messages WHERE workspace_id = 8");
    assert_eq!((p.kind, p.route), (StatementKind::Delete, ws(&[8])));
    assert_eq!(
        route("UPDATE messages SET workspace_id = 8 WHERE id = 1"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("UPDATE accounts SET name = 'x' WHERE WS = 8"),
        ws(&[8])
    );
}

// ---- INSERT ----

fn reassemble(sql: &str, shape: &InsertShape, rows: &[usize]) -> String {
    let parts: Vec<&str> = rows
        .iter()
        .map(|&i| &sql[shape.rows[i].0.clone()])
        .collect();
    format!(
        "{}{}{}",
        &sql[shape.prefix.clone()],
        parts.join(","),
        &sql[shape.suffix.clone()]
    )
}

fn shape(p: &StatementPlan) -> &InsertShape {
    match &p.kind {
        StatementKind::Insert(s) => s,
        other => panic!("not an insert: {other:?}"),
    }
}

#[test]
fn single_row_insert_routes_by_its_value() {
    let sql = "INSERT INTO messages (id, workspace_id, body) VALUES (1, 42, 'hi')";
    let p = one(sql);
    assert_eq!(p.route, ws(&[42]));
    let s = shape(&p);
    assert_eq!(s.rows.len(), 1);
    assert_eq!(s.rows[0].1, Some(42));
    assert_eq!(
        &sql[s.prefix.clone()],
        "INSERT INTO messages (id, workspace_id, body) VALUES "
    );
    assert_eq!(&sql[s.suffix.clone()], "");
    assert_eq!(reassemble(sql, s, &[0]), sql);
}

#[test]
fn multi_row_insert_splits_into_valid_statements() {
    let sql = "INSERT INTO messages (workspace_id, body)\nVALUES (1, 'héllo, (wörld)'),\n  (2, 'a\\'b'),\n(1, '日本')\nON DUPLICATE KEY UPDATE body = VALUES(body);";
    let p = one(sql);
    assert_eq!(p.route, ws(&[1, 2]));
    let s = shape(&p);
    let ids: Vec<Option<u64>> = s.rows.iter().map(|r| r.1).collect();
    assert_eq!(ids, vec![Some(1), Some(2), Some(1)]);
    assert_eq!(
        reassemble(sql, s, &[0, 2]),
        "INSERT INTO messages (workspace_id, body)\nVALUES (1, 'héllo, (wörld)'),(1, '日本')\nON DUPLICATE KEY UPDATE body = VALUES(body);"
    );
    assert_eq!(
        reassemble(sql, s, &[1]),
        "INSERT INTO messages (workspace_id, body)\nVALUES (2, 'a\\'b')\nON DUPLICATE KEY UPDATE body = VALUES(body);"
    );
}

#[test]
fn a_long_insert_names_each_workspace_once_in_the_order_of_first_appearance() {
    // More workspaces than the short list's scan covers: the set beside it takes over.
    let ids: Vec<u64> = (0..120u64).map(|i| (i * 37) % 50 + 1).collect();
    let mut sql = String::from("INSERT INTO messages (id, workspace_id, body) VALUES ");
    for (i, id) in ids.iter().enumerate() {
        let sep = if i > 0 { "," } else { "" };
        sql.push_str(&format!("{sep}({i}, {id}, 'row ({i}), of {id}')"));
    }
    let p = one(&sql);
    let mut first_seen = Vec::new();
    for id in &ids {
        if !first_seen.contains(id) {
            first_seen.push(*id);
        }
    }
    assert_eq!(first_seen.len(), 50);
    assert_eq!(p.route, ws(&first_seen));
    let rows: Vec<Option<u64>> = shape(&p).rows.iter().map(|r| r.1).collect();
    assert_eq!(rows, ids.iter().map(|&id| Some(id)).collect::<Vec<_>>());
}

#[test]
fn the_sharding_column_is_found_among_nested_and_empty_items() {
    let sql = "INSERT INTO messages (body, id, workspace_id) VALUES (CONCAT('a', ','), (1), 5), (IF(1, 2, 3), 0, 6)";
    assert_eq!(route(sql), ws(&[5, 6]));
    // An empty item before the column still counts as one.
    assert_eq!(
        route("INSERT INTO messages (body, workspace_id) VALUES (, 9)"),
        ws(&[9])
    );
    // A row with too few items has no value for the column.
    assert_eq!(
        route("INSERT INTO messages (body, id, workspace_id) VALUES ('x', 1)"),
        missing("messages", "workspace_id")
    );
}

#[test]
fn insert_shapes_inside_multi_statement_text_use_absolute_offsets() {
    let sql = "SELECT 'ü'; REPLACE messages (workspace_id) VALUES ('7'), (8) ; SELECT 2";
    let p = plan(sql, &SHARDED);
    assert_eq!(p.statements.len(), 3);
    let ins = &p.statements[1];
    assert_eq!(
        &sql[ins.span.clone()],
        "REPLACE messages (workspace_id) VALUES ('7'), (8)"
    );
    assert_eq!(ins.route, ws(&[7, 8]));
    let s = shape(ins);
    assert_eq!(
        reassemble(sql, s, &[1]),
        "REPLACE messages (workspace_id) VALUES (8)"
    );
}

#[test]
fn inserts_that_cannot_be_routed() {
    assert_eq!(
        route("INSERT INTO messages (id, body) VALUES (1, 'x')"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("INSERT INTO messages VALUES (1, 2, 'x')"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("INSERT INTO messages (workspace_id, id) SELECT workspace_id, id FROM channels WHERE workspace_id = 1"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("INSERT INTO messages (workspace_id) VALUES (NOW())"),
        missing("messages", "workspace_id")
    );
    assert!(unroutable(route(
        "INSERT INTO messages (workspace_id) VALUES (-3)"
    )));
    assert!(unroutable(route(
        "INSERT INTO messages (workspace_id) VALUES (1), (2.5)"
    )));
    assert_eq!(
        route("INSERT INTO messages SET body = 'x', workspace_id = 12"),
        ws(&[12])
    );
    // A plain table filled from a pinned sharded SELECT.
    assert_eq!(
        route("INSERT INTO logs (a) SELECT id FROM messages WHERE workspace_id = 6"),
        ws(&[6])
    );
    assert_eq!(route("INSERT INTO logs (a) VALUES (1)"), Route::AnyShard);
    assert_eq!(
        one("INSERT app.messages (workspace_id) VALUES (1)")
            .qualified_schema
            .as_deref(),
        Some("app")
    );
}

#[test]
fn insert_in_an_unsharded_keyspace_still_has_its_shape() {
    let sql = "INSERT INTO messages (workspace_id) VALUES (1),(2)";
    let p = plan(sql, &UNSHARDED).statements.remove(0);
    assert_eq!(p.route, Route::AnyShard);
    let s = shape(&p);
    assert_eq!(
        s.rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![None, None]
    );
    assert_eq!(
        reassemble(sql, s, &[1]),
        "INSERT INTO messages (workspace_id) VALUES (2)"
    );
}

// ---- tags ----

#[test]
fn tags_route_in_all_three_forms() {
    assert_eq!(
        route("/*workspace_id:42*/ SELECT * FROM messages"),
        ws(&[42])
    );
    assert_eq!(
        route("SELECT * FROM messages /*application:Foo,controller:bar,workspace_id:42*/"),
        ws(&[42])
    );
    assert_eq!(
        route("SELECT * FROM messages /*application='Foo',workspace_id='42'*/"),
        ws(&[42])
    );
    // It also routes what the parser cannot parse.
    assert_eq!(
        route("SELECT * FROM messages LOCK IN SHARE MODE /*workspace_id:42*/"),
        ws(&[42])
    );
    // Statements that need no workspace keep their route.
    assert_eq!(route("SELECT 1 /*workspace_id:42*/"), Route::AnyShard);
    assert_eq!(
        route("ALTER TABLE messages ADD x INT /*workspace_id:42*/"),
        Route::AllShards
    );
    assert_eq!(
        route("UPDATE plans SET a = 1 /*workspace_id:42*/"),
        Route::AllShards
    );
    // INSERT rows take the tag when they carry no value.
    let p = one("INSERT INTO messages (body) VALUES ('a'), ('b') /*workspace_id:9*/");
    assert_eq!(p.route, ws(&[9]));
    assert_eq!(
        shape(&p).rows.iter().map(|r| r.1).collect::<Vec<_>>(),
        vec![Some(9), Some(9)]
    );
    assert!(unroutable(route(
        "INSERT INTO messages (workspace_id) VALUES (3) /*workspace_id:9*/"
    )));
}

#[test]
fn tag_text_outside_block_comments_does_not_count() {
    assert_eq!(
        route("SELECT * FROM messages WHERE body = '/*workspace_id:42*/'"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages -- /*workspace_id:42*/\n"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages # workspace_id:42\n"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE body = \"x /*workspace_id:42*/\""),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages /*workspace_id:-4*/"),
        missing("messages", "workspace_id")
    );
    assert!(unroutable(route(
        "SELECT * FROM messages /*workspace_id:1*/ /*workspace_id:2*/"
    )));
}

// ---- DDL ----

#[test]
fn ddl_goes_to_every_shard_with_its_kind() {
    let cases = [
        ("CREATE TABLE t (id INT)", DdlKind::CreateTable),
        (
            "CREATE TABLE IF NOT EXISTS app.t (id INT)",
            DdlKind::CreateTable,
        ),
        ("DROP TABLE IF EXISTS t", DdlKind::DropTable),
        ("ALTER TABLE messages MODIFY body TEXT", DdlKind::AlterTable),
        ("ALTER ONLINE TABLE messages ADD c INT", DdlKind::AlterTable),
        ("CREATE INDEX i ON messages (body)", DdlKind::CreateIndex),
        (
            "CREATE UNIQUE INDEX i ON messages (body)",
            DdlKind::CreateIndex,
        ),
        ("DROP INDEX i ON messages", DdlKind::DropIndex),
        ("RENAME TABLE a TO b", DdlKind::RenameTable),
        ("TRUNCATE TABLE messages", DdlKind::Truncate),
        ("TRUNCATE messages", DdlKind::Truncate),
        ("CREATE DATABASE app", DdlKind::CreateDatabase),
        ("CREATE SCHEMA IF NOT EXISTS app", DdlKind::CreateDatabase),
        ("DROP DATABASE app", DdlKind::DropDatabase),
        ("CREATE VIEW v AS SELECT 1", DdlKind::Other),
        ("DROP TRIGGER tr", DdlKind::Other),
    ];
    for (sql, k) in cases {
        let p = one(sql);
        assert_eq!(p.kind, StatementKind::Ddl(k.clone()), "{sql}");
        assert_eq!(p.route, Route::AllShards, "{sql}");
        let u = plan(sql, &UNSHARDED).statements.remove(0);
        assert_eq!(
            (u.kind, u.route),
            (StatementKind::Ddl(k), Route::AnyShard),
            "{sql}"
        );
    }
    assert_eq!(
        one("ALTER TABLE app.messages ADD c INT")
            .qualified_schema
            .as_deref(),
        Some("app")
    );
}

#[test]
fn statements_that_leave_connection_state_reserve_it() {
    let reserve = |sql: &str| one(sql).effects.reserve;
    let p = one("CREATE TEMPORARY TABLE tmp (id INT)");
    assert_eq!((p.kind, p.route), (StatementKind::Other, Route::AnyShard));
    assert_eq!(p.effects.reserve, Reserve::TEMPORARY_TABLE);
    let p = one("LOCK TABLES logs WRITE");
    assert_eq!(p.effects.reserve, Reserve::TABLE_LOCK);
    assert_eq!(p.kind, StatementKind::Other);
    assert_eq!(one("UNLOCK TABLES").effects.clears, Reserve::TABLE_LOCK);
    assert!(reserve("DROP TEMPORARY TABLE tmp").is_empty());
    assert_eq!(
        reserve("CREATE OR REPLACE TEMPORARY TABLE tmp (id INT)"),
        Reserve::TEMPORARY_TABLE
    );
    assert_eq!(reserve("SELECT GET_LOCK('x', 10)"), Reserve::NAMED_LOCK);
    assert_eq!(reserve("DO get_lock('x', 10)"), Reserve::NAMED_LOCK);
    assert_eq!(
        reserve("SELECT COUNT(*) INTO @n FROM logs"),
        Reserve::USER_VARIABLE
    );
    assert_eq!(
        reserve("SELECT @n := @n + 1 FROM logs"),
        Reserve::USER_VARIABLE
    );
    assert_eq!(
        reserve("PREPARE s FROM 'SELECT 1'"),
        Reserve::PREPARED_STATEMENT
    );
    assert_eq!(reserve("HANDLER logs OPEN"), Reserve::HANDLER);
    assert_eq!(reserve("CALL refresh()"), Reserve::UNKNOWN);
    assert_eq!(reserve("SET ROLE reporting"), Reserve::UNKNOWN);
    assert_eq!(reserve("XA START 'x'"), Reserve::UNKNOWN);
    assert_eq!(
        reserve("UPDATE seq SET id = LAST_INSERT_ID(id + 1)"),
        Reserve::UNKNOWN
    );
    assert!(reserve("SELECT 'GET_LOCK(' FROM logs").is_empty());
    assert!(reserve("SELECT 1 /* GET_LOCK('x', 1) */").is_empty());
    assert!(reserve("SET @x := 1").is_empty());
    assert!(reserve("SELECT * FROM messages WHERE workspace_id = 1").is_empty());
}

#[test]
fn questions_about_the_previous_statement_are_recognised() {
    let fx = |sql: &str| one(sql).effects;
    for sql in [
        "SHOW WARNINGS",
        "show errors limit 1",
        "SHOW COUNT(*) WARNINGS",
        "SELECT @@warning_count",
        "SELECT @@session.error_count",
        "SELECT ROW_COUNT()",
        "SELECT found_rows()",
    ] {
        assert!(fx(sql).reads_diagnostics, "{sql}");
        assert!(!fx(sql).reads_insert_id, "{sql}");
    }
    for sql in [
        "SELECT LAST_INSERT_ID()",
        "INSERT INTO c (parent) VALUES (last_insert_id())",
        "SELECT @@identity",
        "SELECT @@last_insert_id",
    ] {
        assert!(fx(sql).reads_insert_id, "{sql}");
        assert!(fx(sql).reserve.is_empty(), "{sql}");
    }
    assert!(fx("SELECT SQL_CALC_FOUND_ROWS * FROM logs LIMIT 1").calc_found_rows);
    let plain = fx("SELECT 'ROW_COUNT()', last_insert_id FROM logs");
    assert_eq!(plain, Effects::default());
}

// ---- session statements ----

#[test]
fn session_statements_are_classified() {
    let cases = [
        ("BEGIN", StatementKind::Begin),
        ("begin work", StatementKind::Begin),
        ("START TRANSACTION", StatementKind::Begin),
        ("START TRANSACTION READ ONLY", StatementKind::Begin),
        (
            "START TRANSACTION WITH CONSISTENT SNAPSHOT",
            StatementKind::Begin,
        ),
        ("COMMIT", StatementKind::Commit),
        ("COMMIT WORK", StatementKind::Commit),
        ("ROLLBACK", StatementKind::Rollback),
        ("ROLLBACK WORK", StatementKind::Rollback),
        ("ROLLBACK TO SAVEPOINT s1", StatementKind::Other),
        ("ROLLBACK TO s1", StatementKind::Other),
        ("USE app", StatementKind::Use("app".into())),
        ("USE `my``db`", StatementKind::Use("my`db".into())),
        ("USE app/80-c0", StatementKind::Use("app/80-c0".into())),
        ("USE `app/-80`", StatementKind::Use("app/-80".into())),
        ("SET autocommit=0", StatementKind::SetAutocommit(false)),
        ("SET autocommit = 1", StatementKind::SetAutocommit(true)),
        ("SET autocommit=ON", StatementKind::SetAutocommit(true)),
        ("set AUTOCOMMIT = off", StatementKind::SetAutocommit(false)),
        ("SET autocommit = true", StatementKind::SetAutocommit(true)),
        (
            "SET autocommit = false",
            StatementKind::SetAutocommit(false),
        ),
        ("SET @@autocommit = 0", StatementKind::SetAutocommit(false)),
        (
            "SET @@session.autocommit = 1",
            StatementKind::SetAutocommit(true),
        ),
        (
            "SET SESSION autocommit = 0",
            StatementKind::SetAutocommit(false),
        ),
        (
            "SET autocommit = 0, sql_mode = ''",
            StatementKind::SetSession,
        ),
        (
            "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
            StatementKind::SetTransaction,
        ),
        (
            "SET SESSION TRANSACTION READ ONLY",
            StatementKind::SetTransaction,
        ),
        ("SET NAMES utf8mb4", StatementKind::SetSession),
        (
            "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
            StatementKind::SetSession,
        ),
        ("SET CHARACTER SET utf8", StatementKind::SetSession),
        (
            "SET sql_mode = 'STRICT_ALL_TABLES'",
            StatementKind::SetSession,
        ),
        ("SET @x = 1", StatementKind::SetSession),
        ("SET SESSION wait_timeout = 10", StatementKind::SetSession),
        (
            "SET @@session.time_zone = '+00:00'",
            StatementKind::SetSession,
        ),
        ("SET @a = 1, @b = 2", StatementKind::SetSession),
        ("SET GLOBAL max_connections = 10", StatementKind::Other),
        ("SET @@global.max_connections = 10", StatementKind::Other),
        ("SHOW TABLES", StatementKind::Show),
        ("SHOW TABLE STATUS LIKE 'messages'", StatementKind::Show),
        ("SHOW CREATE TABLE messages", StatementKind::Show),
        ("SHOW FULL COLUMNS FROM messages", StatementKind::Show),
        ("DESCRIBE messages", StatementKind::Show),
        ("DESC messages", StatementKind::Show),
        ("EXPLAIN SELECT * FROM logs", StatementKind::Show),
    ];
    for (sql, k) in cases {
        let p = one(sql);
        assert_eq!(p.kind, k, "{sql}");
        assert_eq!(p.route, Route::AnyShard, "{sql}");
        assert_eq!(plan(sql, &UNSHARDED).statements[0].kind, k, "{sql}");
    }
    assert_eq!(
        route("EXPLAIN SELECT * FROM messages WHERE workspace_id = 3"),
        ws(&[3])
    );
}

// ---- fallback ----

#[test]
fn fallback_routes_what_the_parser_misses() {
    let p = one("SELECT * FROM messages WHERE workspace_id = 5 LOCK IN SHARE MODE");
    assert_eq!((p.kind, p.route), (StatementKind::Select, ws(&[5])));
    assert_eq!(
        route(
            "SELECT * FROM messages m WHERE m.workspace_id IN (5, 6) AND id > 3 LOCK IN SHARE MODE"
        ),
        ws(&[5, 6])
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE (workspace_id = 5) LOCK IN SHARE MODE"),
        ws(&[5])
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE workspace_id = 5 OR id = 1 LOCK IN SHARE MODE"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE id = 1 LOCK IN SHARE MODE"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT IF(workspace_id = 5, 1, 0) FROM messages LOCK IN SHARE MODE"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE NOT (workspace_id = 5) LOCK IN SHARE MODE"),
        missing("messages", "workspace_id")
    );
    assert_eq!(
        route("SELECT * FROM messages WHERE a BETWEEN 1 AND workspace_id LOCK IN SHARE MODE"),
        missing("messages", "workspace_id")
    );
    assert!(unroutable(route(
        "SELECT * FROM messages WHERE workspace_id = -5 LOCK IN SHARE MODE"
    )));
    assert_eq!(
        route("SELECT * FROM logs LOCK IN SHARE MODE"),
        Route::AnyShard
    );
    // Garbage that names no sharded table goes anywhere: the backend answers 1064.
    assert_eq!(route("SELEC * FORM logs"), Route::AnyShard);
    assert_eq!(route("FLURB messages"), missing("messages", "workspace_id"));
    assert_eq!(route("SHOW TABLE STATUS LIKE 'messages'"), Route::AnyShard);
}

// ---- statements and spans ----

#[test]
fn multi_statement_text_has_one_plan_per_statement() {
    let sql = "BEGIN; /*workspace_id:3*/ UPDATE messages SET a = 1 ;\n SELECT 1;;  COMMIT ; ";
    let p = plan(sql, &SHARDED);
    let got: Vec<(&str, StatementKind, Route)> = p
        .statements
        .iter()
        .map(|s| (&sql[s.span.clone()], s.kind.clone(), s.route.clone()))
        .collect();
    assert_eq!(
        got,
        vec![
            ("BEGIN", StatementKind::Begin, Route::AnyShard),
            (
                "/*workspace_id:3*/ UPDATE messages SET a = 1",
                StatementKind::Update,
                ws(&[3])
            ),
            ("SELECT 1", StatementKind::Select, Route::AnyShard),
            ("COMMIT", StatementKind::Commit, Route::AnyShard),
        ]
    );
}

#[test]
fn a_tag_after_the_last_statement_applies_to_the_text() {
    let sql = "SELECT * FROM messages; SELECT * FROM channels; /*workspace_id:6*/";
    let routes: Vec<Route> = plan(sql, &SHARDED)
        .statements
        .into_iter()
        .map(|s| s.route)
        .collect();
    assert_eq!(routes, vec![ws(&[6]), ws(&[6])]);
    // A statement's own tag wins over the others.
    let sql =
        "SELECT * FROM messages /*workspace_id:1*/; SELECT * FROM channels /*workspace_id:2*/";
    let routes: Vec<Route> = plan(sql, &SHARDED)
        .statements
        .into_iter()
        .map(|s| s.route)
        .collect();
    assert_eq!(routes, vec![ws(&[1]), ws(&[2])]);
}

#[test]
fn sort_order_desc_is_not_a_table() {
    let p = one("SELECT * FROM messages WHERE workspace_id = 1 ORDER BY id DESC, x.y");
    assert_eq!(p.route, ws(&[1]));
    assert_eq!(p.qualified_schema, None);
}

#[test]
fn a_single_statement_spans_the_whole_text() {
    let sql = "  SELECT 1 ; ";
    let p = plan(sql, &SHARDED);
    assert_eq!(p.statements.len(), 1);
    assert_eq!(p.statements[0].span, 0..sql.len());
    let p = plan("", &SHARDED);
    assert_eq!(p.statements.len(), 1);
    assert_eq!(p.statements[0].kind, StatementKind::Other);
}

#[test]
fn semicolons_in_strings_and_comments_do_not_split() {
    let p = plan("SELECT ';' /* ; */ -- ;\n, `a;b` FROM logs", &SHARDED);
    assert_eq!(p.statements.len(), 1);
}

#[test]
fn unsharded_keyspace_passes_everything_through_but_classifies() {
    for (sql, k) in [
        ("SELECT * FROM messages", StatementKind::Select),
        ("UPDATE messages SET a = 1", StatementKind::Update),
        ("DELETE FROM messages", StatementKind::Delete),
        ("BEGIN", StatementKind::Begin),
        (
            "SELECT * FROM messages LOCK IN SHARE MODE",
            StatementKind::Select,
        ),
    ] {
        let p = plan(sql, &UNSHARDED).statements.remove(0);
        assert_eq!((p.kind, p.route), (k, Route::AnyShard), "{sql}");
    }
    assert_eq!(
        plan("SELECT * FROM app.messages", &UNSHARDED).statements[0]
            .qualified_schema
            .as_deref(),
        Some("app")
    );
}

// ---- robustness ----

#[test]
fn random_input_never_panics() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let pieces = [
        "SELECT",
        "INSERT",
        "INTO",
        "messages",
        "VALUES",
        "(",
        ")",
        ",",
        "'",
        "\"",
        "`",
        "/*",
        "*/",
        "--",
        "#",
        "\n",
        ";",
        "workspace_id",
        "=",
        "IN",
        "-",
        "1",
        "42",
        "é",
        "日",
        "@",
        ":=",
        "SET",
        "WHERE",
        "FROM",
        "UPDATE",
        "ON",
        "DUPLICATE",
        "KEY",
        "\\",
        ".",
        "/*!",
        "OR",
        "AND",
        "(SELECT",
        "EXPLAIN",
        "SHOW",
        "USE",
        "ROLLBACK",
        "TO",
        " ",
    ];
    for _ in 0..3000 {
        let n = rng.gen_range(0..24);
        let mut s = String::new();
        for _ in 0..n {
            if rng.gen_bool(0.1) {
                s.push(rng.gen::<char>());
            } else {
                s.push_str(pieces[rng.gen_range(0..pieces.len())]);
                if rng.gen_bool(0.5) {
                    s.push(' ');
                }
            }
        }
        for schema in [&SHARDED, &UNSHARDED] {
            let p = plan(&s, schema);
            for st in &p.statements {
                assert!(s.get(st.span.clone()).is_some(), "{s:?}");
                if let StatementKind::Insert(shape) = &st.kind {
                    assert!(s.get(shape.prefix.clone()).is_some(), "{s:?}");
                    assert!(s.get(shape.suffix.clone()).is_some(), "{s:?}");
                    for r in &shape.rows {
                        assert!(s.get(r.0.clone()).is_some(), "{s:?}");
                    }
                }
            }
        }
    }
    // Deep nesting must not overflow the stack.
    let deep = format!(
        "SELECT {}1{} FROM messages",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    assert_eq!(route(&deep), missing("messages", "workspace_id"));
    let deep = format!(
        "SELECT * FROM messages WHERE {}workspace_id = 1{}",
        "(".repeat(5000),
        ")".repeat(5000)
    );
    let _ = route(&deep);
    for _ in 0..2000 {
        let bytes: Vec<u8> = (0..rng.gen_range(0..64)).map(|_| rng.gen()).collect();
        let s = String::from_utf8_lossy(&bytes);
        let _ = plan(&s, &SHARDED);
    }
}

/// A keyspace whose every unlisted table is sharded by a default column.
struct DefaultColumnSchema;

impl ShardingSchema for DefaultColumnSchema {
    fn is_sharded(&self) -> bool {
        true
    }
    fn sharding_column(&self, table: &str) -> Option<&str> {
        (table != "countries").then_some("workspace_id")
    }
    fn is_reference(&self, table: &str) -> bool {
        table == "countries"
    }
    fn is_listed(&self, table: &str) -> bool {
        matches!(table, "messages" | "countries")
    }
}

#[test]
fn a_typo_is_not_taken_for_a_table_under_a_default_column() {
    let p = plan("SELEC 1", &DefaultColumnSchema);
    assert_eq!(p.statements[0].route, Route::AnyShard, "{p:?}");
    // A real unlisted table in a table position still needs its workspace.
    let p = plan(
        "SELECT * FROM tickets WHERE id = 1 LOCK IN SHARE MODE",
        &DefaultColumnSchema,
    );
    assert_eq!(p.statements[0].route, missing("tickets", "workspace_id"));
    let p = plan(
        "SELECT * FROM tickets WHERE workspace_id = 9 LOCK IN SHARE MODE",
        &DefaultColumnSchema,
    );
    assert_eq!(p.statements[0].route, ws(&[9]));
}

// ---- raw bytes that are not UTF-8 ----

/// The raw bytes of each statement, as the session slices them.
fn raw_statements<'a>(raw: &'a [u8], p: &Plan) -> Vec<&'a [u8]> {
    p.statements
        .iter()
        .map(|s| raw.get(s.span.clone()).expect("span inside the raw bytes"))
        .collect()
}

#[test]
fn invalid_utf8_keeps_statement_spans_on_the_raw_bytes() {
    let raw: &[u8] = b"SET @a='\xe9'; SET @b=22222";
    let text = sql_text(raw);
    assert_eq!(text.len(), raw.len());
    let p = plan(&text, &SHARDED);
    assert_eq!(
        raw_statements(raw, &p),
        vec![b"SET @a='\xe9'".as_slice(), b"SET @b=22222".as_slice()]
    );
    assert!(p
        .statements
        .iter()
        .all(|s| s.kind == StatementKind::SetSession));
}

#[test]
fn invalid_utf8_keeps_insert_row_spans_on_the_raw_bytes() {
    let raw: &[u8] =
        b"INSERT INTO messages (workspace_id, body) VALUES (1, '\xff\xfe'), (2, 'caf\xe9') \
          ON DUPLICATE KEY UPDATE body = 'x'";
    let p = plan(&sql_text(raw), &SHARDED);
    let StatementKind::Insert(shape) = &p.statements[0].kind else {
        panic!("not an insert: {p:?}");
    };
    assert_eq!(p.statements[0].route, ws(&[1, 2]));
    let rows: Vec<&[u8]> = shape
        .rows
        .iter()
        .map(|(r, _)| raw.get(r.clone()).expect("row inside the raw bytes"))
        .collect();
    assert_eq!(
        rows,
        vec![b"(1, '\xff\xfe')".as_slice(), b"(2, 'caf\xe9')".as_slice()]
    );
    assert_eq!(
        raw.get(shape.suffix.clone()),
        Some(b" ON DUPLICATE KEY UPDATE body = 'x'".as_slice())
    );
}

#[test]
fn an_invalid_byte_inside_a_word_does_not_make_a_keyword_or_column() {
    // `workspace\xffid` is not the sharding column, and `GET\xffLOCK(` is no GET_LOCK.
    let p = plan(
        &sql_text(b"SELECT * FROM messages WHERE workspace\xffid = 4"),
        &SHARDED,
    );
    assert_eq!(p.statements[0].route, missing("messages", "workspace_id"));
    let p = plan(&sql_text(b"SELECT GET\xffLOCK('a', 1)"), &SHARDED);
    assert!(p.statements[0].effects.reserve.is_empty(), "{p:?}");
}

#[test]
fn a_unicode_space_before_a_statement_stays_in_its_span() {
    // U+00A0 is part of the word `\u{a0}DROP` for MySQL and the lexer, so the statement
    // is not a DROP; its span must not forward `DROP TABLE plans` without it.
    let sql = "SELECT 1;\u{a0}DROP TABLE plans\u{a0}; \x0bSELECT 2\x0b";
    let p = plan(sql, &SHARDED);
    let texts: Vec<&str> = p.statements.iter().map(|s| &sql[s.span.clone()]).collect();
    assert_eq!(
        texts,
        vec!["SELECT 1", "\u{a0}DROP TABLE plans\u{a0}", "SELECT 2"]
    );
    assert_eq!(p.statements[1].kind, StatementKind::Other);
}

// ---- privileges ----

fn needs_admin(sql: &str) -> bool {
    matches!(plan(sql, &SHARDED).privilege, Privilege::Admin(_))
}

#[test]
fn statements_that_reach_the_host_or_other_tenants_need_admin() {
    let admin_only = [
        "DROP DATABASE app",
        "drop schema if exists app",
        "CREATE USER evil IDENTIFIED BY 'x'",
        "ALTER USER app IDENTIFIED BY 'y'",
        "DROP USER app",
        "RENAME USER a TO b",
        "CREATE ROLE r",
        "GRANT ALL ON *.* TO evil",
        "REVOKE ALL ON *.* FROM app",
        "SET PASSWORD FOR root = PASSWORD('x')",
        "SET DEFAULT ROLE r FOR app",
        "SET GLOBAL max_connections = 1",
        "set persist max_connections = 1",
        "SET @@global.max_connections = 1",
        "SET @@GLOBAL . max_connections = 1",
        "SET NAMES utf8mb4, GLOBAL read_only = 1",
        "SET sql_log_bin = 0",
        "SET @@session.sql_log_bin = 0",
        "SHUTDOWN",
        "KILL 12",
        "KILL QUERY 12",
        "SELECT LOAD_FILE('/etc/passwd')",
        "SELECT load_file ('/etc/passwd') AS x",
        "LOAD DATA INFILE '/etc/passwd' INTO TABLE t",
        "LOAD DATA LOW_PRIORITY INFILE '/etc/passwd' INTO TABLE t",
        "LOAD XML INFILE '/x.xml' INTO TABLE t",
        "SELECT * FROM messages WHERE workspace_id = 1 INTO OUTFILE '/tmp/x'",
        "SELECT 1 INTO DUMPFILE '/tmp/x'",
        "CREATE TABLE t (a INT) DATA DIRECTORY = '/tmp'",
        "USE mysql",
        "USE `performance_schema`",
        "USE sys",
        "USE _shardgate",
        "SELECT * FROM mysql.user",
        "SELECT * FROM `mysql`.`user`",
        "SELECT * FROM MySQL . user",
        "SELECT * FROM \"mysql\".\"user\"",
        "SELECT * FROM _shardgate.schema_migrations",
        "SELECT * FROM performance_schema.threads",
        "SELECT sys.ps_thread_id(1)",
        "UPDATE mysql.user SET password = ''",
        "SHOW TABLES FROM mysql",
        "SHOW COLUMNS FROM user IN mysql",
        "SHOW PROCESSLIST",
        "show full processlist",
        "SELECT * FROM information_schema.PROCESSLIST",
        "SELECT info FROM information_schema . `processlist`",
        "SELECT * FROM processlist",
        "SELECT * FROM information_schema.innodb_trx",
        "SHOW ENGINE INNODB STATUS",
        "SHOW BINLOG EVENTS",
        "SHOW MASTER STATUS",
        "SHOW CREATE USER root",
        "FLUSH PRIVILEGES",
        "FLUSH TABLES",
        "RESET MASTER",
        "PURGE BINARY LOGS BEFORE NOW()",
        "CHANGE MASTER TO MASTER_HOST = 'x'",
        "START SLAVE",
        "STOP REPLICA",
        "INSTALL PLUGIN x SONAME 'x.so'",
        "INSTALL SONAME 'ha_connect'",
        "UNINSTALL PLUGIN x",
        "CREATE SERVER s FOREIGN DATA WRAPPER mysql OPTIONS (HOST 'x')",
        "DROP SERVER s",
        "CREATE PROCEDURE p() SELECT 1",
        "CREATE OR REPLACE DEFINER = 'root'@'localhost' PROCEDURE p() SELECT 1",
        "CREATE DEFINER=CURRENT_USER() FUNCTION f() RETURNS INT RETURN 1",
        "CREATE DEFINER = root@localhost TRIGGER tr BEFORE INSERT ON t FOR EACH ROW SET @a = 1",
        "CREATE AGGREGATE FUNCTION f() RETURNS INT RETURN 1",
        "DROP PROCEDURE p",
        "DROP FUNCTION IF EXISTS f",
        "ALTER EVENT e DISABLE",
        "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO DELETE FROM t",
        "DROP TRIGGER tr",
        "BINLOG 'AAAA'",
        // The statement inside counts.
        "SET STATEMENT max_statement_time = 1 FOR DROP DATABASE app",
        "SET STATEMENT max_statement_time = 1 FOR SET STATEMENT a = 1 FOR KILL 3",
        "PREPARE s FROM 'DROP DATABASE app'",
        "PREPARE s FROM 'DROP ' 'DATABASE app'",
        "PREPARE s FROM 'DROP DATA\\BASE app'",
        "PREPARE s FROM 'SELECT * FROM mysql.user WHERE User = ''root'''",
        "EXECUTE IMMEDIATE 'KILL 5'",
        "EXECUTE IMMEDIATE 'SELECT ?' USING LOAD_FILE('/etc/passwd')",
        "PREPARE s FROM @sql",
        "EXECUTE IMMEDIATE CONCAT('DROP DATABASE ', 'app')",
        // Executable comments run on the server.
        "SELECT 1 /*! , LOAD_FILE('/etc/passwd') */",
        "/*!50000 KILL 3 */",
        // Any statement of a multi-statement query.
        "SELECT 1; DROP DATABASE app",
        "SELECT 1; SET GLOBAL x = 1; SELECT 2",
        // Client character sets whose characters may end in 0x5C.
        "SET NAMES gbk",
        "SET NAMES 'sjis' COLLATE sjis_bin",
        "SET CHARACTER SET big5",
        "SET CHARSET cp932",
        "SET character_set_client = gbk",
        "SET @@session.character_set_client = @cs",
        "SET STATEMENT character_set_client = gbk FOR SELECT 1",
        // Under NO_BACKSLASH_ESCAPES the string ends at the second quote.
        "SELECT 'a\\'; DROP DATABASE app; -- '",
    ];
    for sql in admin_only {
        assert!(needs_admin(sql), "{sql} should need admin");
    }
}

#[test]
fn strings_comments_and_tenant_statements_need_no_admin() {
    let tenant = [
        "SELECT 'LOAD_FILE(' FROM messages WHERE workspace_id = 1",
        "SELECT 'DROP DATABASE app', \"SET GLOBAL x = 1\"",
        "SELECT * FROM messages /* KILL 3; DROP DATABASE app */ WHERE workspace_id = 1",
        "SELECT 1 -- INTO OUTFILE '/tmp/x'",
        "SELECT 1 # LOAD_FILE('/etc/passwd')",
        "SELECT 'mysql.user', `mysql` FROM t",
        "SELECT * FROM t WHERE body = 'SHOW PROCESSLIST'",
        "SELECT load_file FROM t",
        "INSERT INTO messages (workspace_id, body) VALUES (1, 'GRANT ALL ON *.* TO x')",
        "UPDATE messages SET body = 'KILL 3' WHERE workspace_id = 1",
        "DROP TABLE t",
        "DROP TEMPORARY TABLE t",
        "CREATE DATABASE app2",
        "CREATE TABLE t (a INT)",
        "CREATE INDEX i ON t (a)",
        "CREATE VIEW v AS SELECT 1",
        "ALTER TABLE t ADD c INT",
        "SET NAMES utf8mb4",
        "SET @global = 1",
        "SET SESSION sql_mode = 'STRICT_ALL_TABLES'",
        "SET @@session.time_zone = '+00:00', autocommit = 0",
        "SET @a = @@global.max_connections",
        "SELECT @@global.max_connections",
        "SET ROLE r",
        "SET TRANSACTION ISOLATION LEVEL READ COMMITTED",
        "SET STATEMENT max_statement_time = 1 FOR SELECT 1",
        "START TRANSACTION",
        "SHOW TABLES",
        "SHOW GLOBAL STATUS",
        "SHOW GRANTS",
        "SHOW COLUMNS FROM messages",
        "USE app",
        "USE information_schema",
        "SELECT * FROM information_schema.TABLES",
        "PREPARE s FROM 'SELECT * FROM messages WHERE workspace_id = ?'",
        "EXECUTE IMMEDIATE 'SELECT ?' USING 1",
        "DEALLOCATE PREPARE s",
        "LOAD DATA LOCAL INFILE '/tmp/x' INTO TABLE t",
        "CALL p()",
        "SELECT * FROM t INTO @x",
        "SELECT 'a\\'b' FROM t",
        "INSERT INTO dumpfile (a) VALUES (1)",
        "SET NAMES utf8mb4 COLLATE utf8mb4_unicode_ci",
        "SET NAMES 'latin1'",
        "SET CHARACTER SET DEFAULT",
        "SET character_set_client = utf8mb4, character_set_results = gbk",
    ];
    for sql in tenant {
        assert_eq!(
            plan(sql, &SHARDED).privilege,
            Privilege::Tenant,
            "{sql} should be a tenant's"
        );
    }
}

#[test]
fn the_admin_reason_names_the_statement_class() {
    let reason = |sql: &str| match plan(sql, &SHARDED).privilege {
        Privilege::Admin(why) => why,
        Privilege::Tenant => panic!("{sql} should need admin"),
    };
    assert!(reason("DROP DATABASE app").contains("DROP DATABASE"));
    assert!(reason("SET GLOBAL x = 1").contains("SET GLOBAL"));
    assert!(reason("SELECT * FROM mysql.user").contains("mysql schema"));
    assert!(reason("KILL 3").contains("KILL"));
    assert!(reason("SHOW PROCESSLIST").contains("PROCESSLIST"));
    assert!(reason("SELECT 1 INTO OUTFILE '/x'").contains("OUTFILE"));
}

// ---- a tag and the WHERE clause must agree ----

#[test]
fn a_tag_and_a_filter_on_another_workspace_are_unroutable() {
    let disagree = [
        "/*workspace_id:3*/ SELECT * FROM messages WHERE workspace_id = 9",
        "SELECT * FROM messages WHERE workspace_id = '9' /*workspace_id:3*/",
        "/*workspace_id:3*/ UPDATE messages SET body = 'x' WHERE workspace_id = 9",
        "/*workspace_id:3*/ DELETE FROM messages WHERE workspace_id = 9",
        "/*workspace_id:3*/ SELECT * FROM messages WHERE workspace_id IN (3, 9)",
        "/*workspace_id:3*/ SELECT * FROM messages WHERE workspace_id IN (9)",
        "/*workspace_id:3*/ SELECT * FROM messages m WHERE m.workspace_id = 9 AND body = 'a'",
        // Parsed path: a join.
        "/*workspace_id:3*/ SELECT * FROM messages m JOIN channels c ON c.workspace_id = m.workspace_id WHERE m.workspace_id = 9",
        // Token fallback path: text the parser cannot read.
        "/*workspace_id:3*/ SELECT * FROM messages WHERE workspace_id = 9 LOCK IN SHARE MODE",
        "/*workspace_id:3*/ SELECT * FROM accounts WHERE ws = 9",
    ];
    for sql in disagree {
        let r = route(sql);
        let Route::Unroutable(msg) = &r else {
            panic!("{sql}: {r:?}");
        };
        assert!(
            msg.contains("workspace_id:3") && msg.contains('9'),
            "{sql}: {msg}"
        );
    }
    let Route::Unroutable(msg) =
        route("/*workspace_id:3*/ SELECT * FROM messages WHERE workspace_id = 9")
    else {
        panic!("unroutable");
    };
    assert!(msg.contains("messages.workspace_id = 9"), "{msg}");
}

#[test]
fn a_tag_and_a_filter_that_agree_route_to_the_workspace() {
    for sql in [
        "/*workspace_id:3*/ SELECT * FROM messages WHERE workspace_id = 3",
        "/*workspace_id:3*/ SELECT * FROM messages WHERE workspace_id IN (3, 3)",
        "/*workspace_id:3*/ UPDATE messages SET body = 'x' WHERE workspace_id = 3",
        "/*workspace_id:3*/ DELETE FROM messages WHERE workspace_id = 3",
        "/*workspace_id:3*/ SELECT * FROM messages WHERE workspace_id = 3 LOCK IN SHARE MODE",
        // No filter on the sharding column: the tag routes, as before.
        "/*workspace_id:3*/ SELECT * FROM messages WHERE body = 'a'",
        "/*workspace_id:3*/ SELECT * FROM messages",
        "/*workspace_id:3*/ SELECT * FROM messages WHERE workspace_id = 9 OR workspace_id = 3",
    ] {
        assert_eq!(route(sql), ws(&[3]), "{sql}");
    }
    // INSERT rows already had to agree with the tag.
    assert!(unroutable(route(
        "/*workspace_id:3*/ INSERT INTO messages (workspace_id, body) VALUES (9, 'x')"
    )));
}
