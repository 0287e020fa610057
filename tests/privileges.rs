//! What a tenant's user may run through shardgate, against real MariaDB: statements that
//! reach the database host, other tenants or other sessions are refused with 1227 before
//! anything reaches a backend (the servers are checked directly afterwards), admin users
//! keep them; and a workspace tag must agree with the WHERE clause's workspace.
// Tests and benches run on their own runtimes, every one with a time driver.
#![allow(clippy::disallowed_methods)]

mod common;

use mysql_async::prelude::*;
use shardgate::demo::localdb::LocalMariaDb;
use shardgate::vschema::VSchema;

fn setup(servers: &[LocalMariaDb]) -> String {
    common::vschema_with_messages(servers)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_and_cross_tenant_statements_are_refused_for_app_and_run_for_admin() {
    let servers = common::start_servers(2);
    let toml = setup(&servers);
    let proxy = common::start_proxy(&toml).await;
    let mut app = proxy.connect("app", Some("app")).await;

    let unique = format!(
        "shardgate-priv-{}-{}",
        std::process::id(),
        proxy.addr.port()
    );
    let outfile = format!("/tmp/{unique}-out");
    let dumpfile = format!("/tmp/{unique}-dump");
    let max_connections = common::direct_query(&servers[0], "SELECT @@global.max_connections");
    let accounts = "SELECT User, Host, authentication_string FROM mysql.user ORDER BY User, Host";
    let accounts_before: Vec<String> = servers
        .iter()
        .map(|s| common::direct_query(s, accounts))
        .collect();
    let refused = [
        "DROP DATABASE app".to_string(),
        "drop schema app".into(),
        "CREATE USER evil@'%' IDENTIFIED BY 'x'".into(),
        "ALTER USER shardgate@'%' IDENTIFIED BY 'x'".into(),
        "DROP USER shardgate@'%'".into(),
        "RENAME USER shardgate@'%' TO evil@'%'".into(),
        "GRANT ALL ON *.* TO evil@'%' IDENTIFIED BY 'x'".into(),
        "REVOKE ALL ON *.* FROM shardgate@'%'".into(),
        "SET PASSWORD FOR shardgate@'%' = PASSWORD('x')".into(),
        "SET GLOBAL max_connections = 7".into(),
        "SET @@global.max_connections = 7".into(),
        "SET NAMES utf8mb4, GLOBAL max_connections = 7".into(),
        "SET sql_log_bin = 0".into(),
        "SET NAMES gbk".into(),
        "SHUTDOWN".into(),
        // A KILL on its own names a shardgate session (tests/kill.rs); one that would
        // reach a backend names a backend thread.
        "EXECUTE IMMEDIATE 'KILL 1'".into(),
        "SET STATEMENT max_statement_time = 1 FOR KILL QUERY 1".into(),
        "SELECT LOAD_FILE('/etc/passwd')".into(),
        "LOAD DATA INFILE '/etc/hostname' INTO TABLE messages (body)".into(),
        format!("SELECT * FROM messages WHERE workspace_id = 1 INTO OUTFILE '{outfile}'"),
        format!("SELECT 1 INTO DUMPFILE '{dumpfile}'"),
        "USE mysql".into(),
        "USE performance_schema".into(),
        "USE sys".into(),
        "USE _shardgate".into(),
        "SELECT * FROM mysql.user".into(),
        "SELECT * FROM `mysql`.`user`".into(),
        "SELECT * FROM _shardgate.schema_migrations".into(),
        "SELECT * FROM performance_schema.threads".into(),
        "SHOW TABLES FROM mysql".into(),
        // `SHOW PROCESSLIST` alone and `information_schema.PROCESSLIST` are answered
        // from shardgate's sessions (tests/kill.rs, tests/passthrough.rs); the
        // backend's lists, and the command inside a multi-statement query, are not.
        "SELECT * FROM information_schema.INNODB_TRX".into(),
        "SELECT 1; SHOW PROCESSLIST".into(),
        "FLUSH PRIVILEGES".into(),
        "RESET MASTER".into(),
        "PURGE BINARY LOGS BEFORE NOW()".into(),
        "CHANGE MASTER TO MASTER_HOST = '127.0.0.1'".into(),
        "START SLAVE".into(),
        "STOP SLAVE".into(),
        "STOP REPLICA".into(),
        "INSTALL SONAME 'ha_connect'".into(),
        "UNINSTALL PLUGIN unix_socket".into(),
        "CREATE SERVER evil FOREIGN DATA WRAPPER mysql OPTIONS (HOST '127.0.0.1')".into(),
        "DROP SERVER evil".into(),
        "CREATE PROCEDURE p() SELECT 1".into(),
        "CREATE DEFINER = CURRENT_USER FUNCTION f() RETURNS INT RETURN 1".into(),
        "CREATE TRIGGER tr BEFORE INSERT ON messages FOR EACH ROW SET @a = 1".into(),
        "CREATE EVENT e ON SCHEDULE EVERY 1 DAY DO SELECT 1".into(),
        "DROP PROCEDURE IF EXISTS p".into(),
        "ALTER EVENT e DISABLE".into(),
        // Hidden inside another statement or a multi-statement query.
        "SET STATEMENT max_statement_time = 10 FOR DROP DATABASE app".into(),
        "PREPARE s FROM 'DROP DATABASE app'".into(),
        "EXECUTE IMMEDIATE 'DROP DATABASE app'".into(),
        "SELECT 1; DROP DATABASE app".into(),
        "SELECT * FROM messages WHERE workspace_id = 1; CREATE USER evil@'%'".into(),
    ];
    for sql in &refused {
        let (code, message) = common::server_error(&mut app, sql).await;
        assert_eq!(code, 1227, "{sql}: {message}");
        assert!(
            message.contains("admin users") && message.contains("'app'"),
            "{sql}: {message}"
        );
        // The connection stays usable.
        let one: Option<u32> = app.query_first("SELECT 1").await.expect("SELECT 1 after");
        assert_eq!(one, Some(1), "after {sql}");
    }
    let (_, message) = common::server_error(&mut app, "DROP DATABASE app").await;
    assert!(message.contains("DROP DATABASE"), "{message}");
    let (_, message) = common::server_error(&mut app, "SELECT * FROM mysql.user").await;
    assert!(message.contains("mysql schema"), "{message}");

    // Nothing reached a backend.
    for (s, before) in servers.iter().zip(&accounts_before) {
        assert_eq!(
            common::number_on(
                s,
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'app'"
            ),
            1,
            "database app still exists on {}",
            s.addr()
        );
        assert_eq!(
            common::number_on(s, "SELECT COUNT(*) FROM mysql.user WHERE User = 'evil'"),
            0
        );
        assert_eq!(
            &common::direct_query(s, accounts),
            before,
            "accounts and passwords unchanged"
        );
        assert_eq!(
            common::number_on(s, "SELECT COUNT(*) FROM mysql.servers"),
            0
        );
        assert_eq!(
            common::number_on(
                s,
                "SELECT COUNT(*) FROM information_schema.ROUTINES WHERE ROUTINE_SCHEMA = 'app'"
            ),
            0
        );
        assert_eq!(
            common::number_on(
                s,
                "SELECT COUNT(*) FROM information_schema.TRIGGERS WHERE TRIGGER_SCHEMA = 'app'"
            ),
            0
        );
        assert_eq!(
            common::number_on(
                s,
                "SELECT COUNT(*) FROM information_schema.EVENTS WHERE EVENT_SCHEMA = 'app'"
            ),
            0
        );
        assert_eq!(
            common::number_on(s, "SELECT COUNT(*) FROM app.messages"),
            0,
            "no LOAD DATA rows"
        );
    }
    assert_eq!(
        common::direct_query(&servers[0], "SELECT @@global.max_connections"),
        max_connections
    );
    assert!(
        !std::path::Path::new(&outfile).exists(),
        "{outfile} written"
    );
    assert!(
        !std::path::Path::new(&dumpfile).exists(),
        "{dumpfile} written"
    );

    // Strings and comments that merely mention such statements pass.
    let text: Option<String> = app
        .query_first("SELECT 'LOAD_FILE(' /* DROP DATABASE app; KILL 1 */")
        .await
        .expect("a string that looks like a call");
    assert_eq!(text.as_deref(), Some("LOAD_FILE("));
    // information_schema is a tenant's (only its PROCESSLIST is not).
    app.query_drop("USE information_schema")
        .await
        .expect("USE information_schema");
    let tables: Option<u64> = app
        .query_first("SELECT COUNT(*) FROM TABLES WHERE TABLE_SCHEMA = 'app'")
        .await
        .expect("read information_schema");
    assert!(tables.is_some_and(|n| n >= 1));
    drop(app);

    // A protected schema named at login or by COM_INIT_DB (the CLI's `use`) is refused.
    let addr = proxy.addr_string();
    let out = common::cli(
        &addr,
        "app",
        "app",
        Some("mysql"),
        "SELECT COUNT(*) FROM user",
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("1227"), "{stderr}");
    let out = common::cli(&addr, "app", "app", Some("app"), "use mysql");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("1227"), "{stderr}");

    // A login in a character set where 0xbf 0x5c is one character: the server would end
    // the string at the quote after it and run the DROP; every query is refused.
    let mut raw = common::raw_login_with(&addr, "app", "app", Some("app"), 0, 28).await;
    common::raw_query(&mut raw, b"SELECT 'a\\'b\xbf\\' ; DROP DATABASE app ; #'").await;
    let (_, reply): (u8, Vec<u8>) = common::raw_read(&mut raw).await.expect("a reply");
    assert_eq!(
        reply.as_slice().first(),
        Some(&0xff),
        "an error packet: {reply:?}"
    );
    assert_eq!(
        reply.get(1..3),
        Some(&1227u16.to_le_bytes()[..]),
        "{reply:?}"
    );
    drop(raw);
    for s in &servers {
        assert_eq!(
            common::number_on(
                s,
                "SELECT COUNT(*) FROM information_schema.SCHEMATA WHERE SCHEMA_NAME = 'app'"
            ),
            1
        );
    }

    // Admin users keep all of it.
    let mut admin = proxy.connect("admin", Some("main")).await;
    let original: u64 = max_connections.trim().parse().expect("a number");
    admin
        .query_drop(format!("SET GLOBAL max_connections = {}", original + 1))
        .await
        .expect("admin SET GLOBAL");
    assert_eq!(
        common::number_on(&servers[0], "SELECT @@global.max_connections"),
        original + 1
    );
    admin
        .query_drop(format!("SET GLOBAL max_connections = {original}"))
        .await
        .expect("admin resets it");
    assert_eq!(
        common::number_on(&servers[0], "SELECT @@global.max_connections"),
        original
    );
    let processes: Vec<mysql_async::Row> = admin
        .query("SHOW PROCESSLIST")
        .await
        .expect("admin SHOW PROCESSLIST");
    assert!(!processes.is_empty());
    let users: Option<u64> = admin
        .query_first("SELECT COUNT(*) FROM mysql.user WHERE User = 'shardgate'")
        .await
        .expect("admin reads mysql.user");
    assert!(users.is_some_and(|n| n >= 1));
    drop(admin);
    proxy.stop().await;
}

/// Which server holds workspace `ws`.
fn owner(toml: &str, ws: u64) -> usize {
    let vs = VSchema::from_toml_str(toml).expect("valid vschema");
    let shard = vs.keyspace("app").expect("app").shard_for_workspace(ws);
    shard.cluster[1..].parse::<usize>().expect("cluster cN") - 1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tag_must_agree_with_the_where_clause() {
    let servers = common::start_servers(2);
    let toml = setup(&servers);
    let a = 1u64;
    let near = (2..1000)
        .find(|&w| owner(&toml, w) == owner(&toml, a))
        .expect("a workspace on a's shard");
    let far = (2..1000)
        .find(|&w| owner(&toml, w) != owner(&toml, a))
        .expect("a workspace on the other shard");
    let proxy = common::start_proxy(&toml).await;
    let mut app = proxy.connect("app", Some("app")).await;
    for w in [a, near, far] {
        app.query_drop(format!(
            "INSERT INTO messages (workspace_id, body) VALUES ({w}, 'orig {w}')"
        ))
        .await
        .expect("insert");
    }

    for other in [near, far] {
        let statements = [
            format!("/*workspace_id:{a}*/ SELECT * FROM messages WHERE workspace_id = {other}"),
            format!("/*workspace_id:{a}*/ SELECT * FROM messages WHERE workspace_id IN ({a}, {other})"),
            format!("SELECT * FROM messages WHERE workspace_id = {other} LOCK IN SHARE MODE /*workspace_id:{a}*/"),
            format!("/*workspace_id:{a}*/ UPDATE messages SET body = 'changed' WHERE workspace_id = {other}"),
            format!("/*workspace_id:{a}*/ DELETE FROM messages WHERE workspace_id = {other}"),
            format!("/*workspace_id:{a}*/ INSERT INTO messages (workspace_id, body) VALUES ({other}, 'x')"),
        ];
        for sql in &statements {
            let (code, message) = common::server_error(&mut app, sql).await;
            assert_eq!(code, 1105, "{sql}: {message}");
            assert!(
                message.contains(&format!("workspace_id:{a}"))
                    && message.contains(&other.to_string()),
                "{sql}: {message}"
            );
        }
    }
    let (_, message) = common::server_error(
        &mut app,
        &format!("/*workspace_id:{a}*/ SELECT * FROM messages WHERE workspace_id = {far}"),
    )
    .await;
    assert!(
        message.contains(&format!("messages.workspace_id = {far}")),
        "{message}"
    );

    // Refused writes changed nothing on any shard.
    for w in [a, near, far] {
        let s = &servers[owner(&toml, w)];
        assert_eq!(
            common::number_on(
                s,
                &format!(
                    "SELECT COUNT(*) FROM app.messages WHERE workspace_id = {w} AND body = 'orig {w}'"
                )
            ),
            1,
            "workspace {w} unchanged"
        );
    }
    let total: u64 = servers
        .iter()
        .map(|s| common::number_on(s, "SELECT COUNT(*) FROM app.messages"))
        .sum();
    assert_eq!(total, 3);

    // Agreement works.
    let body: Option<String> = app
        .query_first(format!(
            "/*workspace_id:{a}*/ SELECT body FROM messages WHERE workspace_id = {a}"
        ))
        .await
        .expect("agreeing tag and WHERE");
    assert_eq!(body, Some(format!("orig {a}")));
    app.query_drop(format!(
        "/*workspace_id:{a}*/ UPDATE messages SET body = 'changed' WHERE workspace_id = {a}"
    ))
    .await
    .expect("agreeing update");
    assert_eq!(app.affected_rows(), 1);
    // A tagged statement without a workspace filter still routes by its tag.
    let rows: Vec<u64> = app
        .query(format!(
            "/*workspace_id:{a}*/ SELECT workspace_id FROM messages ORDER BY workspace_id"
        ))
        .await
        .expect("tag without filter");
    let mut expected = vec![a, near];
    expected.sort();
    assert_eq!(rows, expected, "every row of the tag's shard");
    drop(app);
    proxy.stop().await;
}
