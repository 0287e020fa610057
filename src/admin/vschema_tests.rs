//! Tests of `src/admin/vschema.rs`: the statements' parser and the document edits.
use super::*;

#[test]
fn statements_parse() {
    let s = |t: &str| parse(t).expect("ours").expect("valid");
    assert_eq!(s("show vschema"), VschemaStatement::Show(None));
    assert_eq!(
        s("SHOW VSCHEMA KEYSPACE `chat`;"),
        VschemaStatement::Show(Some("chat".into()))
    );
    assert_eq!(
        s("SHOW VSCHEMA HISTORY LIMIT 5"),
        VschemaStatement::History(5)
    );
    assert_eq!(
        s("ROLLBACK VSCHEMA TO VERSION 3 ALLOW DATA MOVEMENT"),
        VschemaStatement::Rollback {
            to: 3,
            allow_movement: true
        }
    );
    assert_eq!(
        s("ALTER VSCHEMA ADD CLUSTER db9 PRIMARY '127.0.0.1:3307' USER 'sg' PASSWORD 'it''s' STANDBYS ('127.0.0.1:3308')"),
        VschemaStatement::Alter {
            edit: Edit::AddCluster {
                name: "db9".into(),
                primary: "127.0.0.1:3307".into(),
                user: "sg".into(),
                password: Some("it's".into()),
                standbys: vec!["127.0.0.1:3308".into()],
            },
            allow_movement: false
        }
    );
    assert_eq!(
        s("alter vschema add keyspace logs sharded vindex xxhash shards ('-80' on a, '80-' on b database 'l2') default column ws"),
        VschemaStatement::Alter {
            edit: Edit::AddSharded {
                name: "logs".into(),
                vindex: "xxhash".into(),
                shards: vec![
                    ("-80".into(), "a".into(), None),
                    ("80-".into(), "b".into(), Some("l2".into()))
                ],
                default_column: Some("ws".into()),
            },
            allow_movement: false
        }
    );
    assert_eq!(
        s("ALTER VSCHEMA DROP PIN WORKSPACE 42 IN KEYSPACE chat ALLOW DATA MOVEMENT"),
        VschemaStatement::Alter {
            edit: Edit::DropPin {
                keyspace: "chat".into(),
                workspace: 42
            },
            allow_movement: true
        }
    );
    assert!(parse("SELECT 1").is_none());
    assert!(parse("ALTER TABLE t ADD c INT").is_none());
    for bad in [
        "ALTER VSCHEMA",
        "ALTER VSCHEMA ADD CLUSTER x USER 'u'",
        "ALTER VSCHEMA ADD TABLE t SHARDED BY c",
        "ALTER VSCHEMA DROP KEYSPACE k EXTRA",
        "ROLLBACK VSCHEMA TO VERSION x",
        "SHOW VSCHEMA HISTORY LIMIT",
        "ALTER VSCHEMA ADD CLUSTER 'unterminated",
    ] {
        let e = parse(bad).expect("ours").expect_err(bad);
        assert_eq!(e.code, 1105, "{bad}");
    }
}

#[test]
fn edits_change_the_document_and_refuse_what_is_not_there() {
    let mut doc = Document::parse(
        "[clusters.a]\nprimary = \"127.0.0.1:1\"\nuser = \"u\"\n[keyspaces.main]\ncluster = \"a\"\ndefault = true\n",
    )
    .expect("doc");
    let add = Edit::AddCluster {
        name: "b".into(),
        primary: "127.0.0.1:2".into(),
        user: "u".into(),
        password: None,
        standbys: vec![],
    };
    apply_edit(&mut doc, &add).expect("add");
    assert!(apply_edit(&mut doc, &add).is_err());
    apply_edit(
        &mut doc,
        &Edit::AddUnsharded {
            name: "logs".into(),
            cluster: "b".into(),
            database: None,
            default: false,
        },
    )
    .expect("keyspace");
    apply_edit(
        &mut doc,
        &Edit::AddReference {
            keyspace: "logs".into(),
            table: "countries".into(),
        },
    )
    .expect("table");
    let vs = doc.validate().expect("valid");
    assert_eq!(vs.keyspace("logs").expect("logs").shards[0].cluster, "b");
    assert!(apply_edit(&mut doc, &Edit::DropCluster("zz".into())).is_err());
    apply_edit(&mut doc, &Edit::DropCluster("b".into())).expect("drop");
    // The keyspace still names it: the whole document is refused.
    assert!(doc.validate().is_err());
    let text = keyspace_text(&doc, "logs").expect("logs");
    assert!(text.contains("[keyspaces.logs]"), "{text}");
}
