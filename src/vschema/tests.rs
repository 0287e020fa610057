//! Unit tests of the shard map: golden placement values, key ranges, lookups and
//! every validation rule.

use super::*;

const DEMO: &str = include_str!("../../vschema/demo.toml");
const EXAMPLE: &str = include_str!("../../vschema/example.toml");

/// Two clusters, for documents that only exercise keyspaces.
const CLUSTERS: &str = r#"
[clusters.c1]
primary = "127.0.0.1:15401"
user = "shardgate"
password = "shardgate"

[clusters.c2]
primary = "127.0.0.1:15402"
user = "shardgate"
password = "shardgate"
"#;

fn load(text: &str) -> VSchema {
    match VSchema::from_toml_str(text) {
        Ok(vschema) => vschema,
        Err(errors) => panic!("expected a valid vschema, got:\n{errors}"),
    }
}

fn errors_of(text: &str) -> Vec<VSchemaError> {
    match VSchema::from_toml_str(text) {
        Ok(_) => panic!("expected errors, the vschema loaded"),
        Err(errors) => errors.0,
    }
}

/// Asserts that loading `text` fails with an error at `at` whose message contains `needle`.
fn assert_error(text: &str, at: &str, needle: &str) {
    let errors = errors_of(text);
    assert!(
        errors
            .iter()
            .any(|e| e.at == at && e.message.contains(needle)),
        "no error at {at:?} containing {needle:?}; got:\n{}",
        VSchemaErrors(errors)
    );
}

/// A sharded keyspace `app` on c1/c2 with the given shards line and extra lines.
fn sharded(shards: &str, extra: &str) -> String {
    format!("{CLUSTERS}\n[keyspaces.app]\nsharded = true\nvindex = \"xxhash\"\nshards = [{shards}]\n{extra}")
}

fn two_shards() -> &'static str {
    r#"{ name = "-80", cluster = "c1" }, { name = "80-", cluster = "c2" }"#
}

// ---- golden values: placement must never change silently ----

#[test]
fn xxhash_keyspace_ids_are_pinned() {
    // Computed once, cross-checked with the Python `xxhash` package:
    // xxhash.xxh64(struct.pack('>Q', id), seed=0).hexdigest()
    let golden: [(u64, u64); 9] = [
        (0, 0x34c9_6acd_cadb_1bbb),
        (1, 0x9f1f_fc79_3b8a_47da),
        (2, 0xd93b_2223_edc6_0960),
        (3, 0x15c2_d270_722e_75ca),
        (4, 0xf42e_1851_40ee_54e8),
        (5, 0xdb32_b6e0_4f53_b37c),
        (42, 0xa2c3_9622_3f8b_dbdf),
        (1000, 0x461c_edc7_253f_4a7c),
        (u64::MAX, 0x85d1_36ad_b773_c6c9),
    ];
    for (workspace, hash) in golden {
        assert_eq!(
            Vindex::Xxhash.keyspace_id(workspace),
            hash.to_be_bytes(),
            "xxhash keyspace id of workspace {workspace}"
        );
    }
}

#[test]
fn numeric_keyspace_id_is_the_big_endian_id() {
    assert_eq!(Vindex::Numeric.keyspace_id(0), [0; 8]);
    assert_eq!(
        Vindex::Numeric.keyspace_id(0x0102_0304_0506_0708),
        [1, 2, 3, 4, 5, 6, 7, 8]
    );
    assert_eq!(Vindex::Numeric.keyspace_id(u64::MAX), [0xff; 8]);
}

#[test]
fn demo_places_workspaces_on_pinned_shards() {
    let vschema = load(DEMO);
    let app = vschema.keyspace("app").expect("demo has keyspace app");
    let golden = [
        (1, "80-c0", "c3"),
        (2, "c0-", "c4"),
        (3, "-40", "c1"),
        (4, "c0-", "c4"),
        (5, "c0-", "c4"),
        (1000, "40-80", "c2"),
        // 42 hashes into 80-c0 but is pinned to c0-.
        (42, "c0-", "c4"),
    ];
    for (workspace, shard, cluster) in golden {
        let owner = app.shard_for_workspace(workspace);
        assert_eq!(
            (owner.name.as_str(), owner.cluster.as_str()),
            (shard, cluster),
            "owner of workspace {workspace}"
        );
        assert_eq!(owner.database, "app");
    }
    let hashed = Vindex::Xxhash.keyspace_id(42);
    let unpinned = app.shards.iter().position(|s| s.range.contains(&hashed));
    assert_eq!(unpinned, app.shard_index("80-c0"), "42's hash owner");
}

#[test]
fn lookup_agrees_with_containment_for_many_ids() {
    let app = load(DEMO).keyspaces.remove("app").expect("app");
    for workspace in (0..5000u64).chain([u64::MAX, u64::MAX - 1, 1 << 63]) {
        if app.pins.contains_key(&workspace) {
            continue;
        }
        let id = app.vindex.keyspace_id(workspace);
        let index = app.shard_index_for_workspace(workspace);
        assert!(
            app.shards[index].range.contains(&id),
            "workspace {workspace}"
        );
    }
}

#[test]
fn integer_starts_find_the_same_owner_as_the_key_ranges() {
    // Starts of one, two and four bytes, one with a trailing zero byte, and numeric
    // ids at and around every boundary.
    let shards = r#"{ name = "-40", cluster = "c1", database = "a1" },
        { name = "40-4080", cluster = "c1", database = "a2" },
        { name = "4080-800000", cluster = "c1", database = "a3" },
        { name = "800000-c0000001", cluster = "c1", database = "a4" },
        { name = "c0000001-", cluster = "c1", database = "a5" }"#;
    for vindex in ["xxhash", "numeric"] {
        let text = sharded(shards, "").replace("\"xxhash\"", &format!("\"{vindex}\""));
        let app = load(&text).keyspaces.remove("app").expect("app");
        assert_eq!(
            app.starts.len(),
            app.shards.len(),
            "{vindex}: integer starts built"
        );
        // Under the numeric vindex the id is the keyspace id: the boundaries exactly.
        let edges = [
            0x40u64 << 56,
            0x4080 << 48,
            0x80_0000 << 40,
            0xc000_0001 << 32,
        ];
        let mut ids: Vec<u64> = (0..5000u64).chain([u64::MAX, 1 << 63]).collect();
        for e in edges {
            ids.extend([e - 1, e, e + 1]);
        }
        for workspace in ids {
            let id = app.vindex.keyspace_id(workspace);
            let index = app.vindex_shard_index(workspace);
            assert!(
                app.shards[index].range.contains(&id),
                "{vindex}: workspace {workspace:#x} went to shard {index}"
            );
        }
    }
    // A start longer than 8 bytes: the bytes are compared.
    let long = r#"{ name = "-4000000000000000ff", cluster = "c1" }, { name = "4000000000000000ff-", cluster = "c2" }"#;
    let app = load(&sharded(long, ""))
        .keyspaces
        .remove("app")
        .expect("app");
    assert!(app.starts.is_empty());
    for workspace in 0..2000u64 {
        let id = app.vindex.keyspace_id(workspace);
        assert!(app.shards[app.vindex_shard_index(workspace)]
            .range
            .contains(&id));
    }
}

// ---- the shipped files ----

#[test]
fn demo_toml_loads_as_documented() {
    let vschema = load(DEMO);
    assert_eq!(vschema.default_keyspace.as_deref(), Some("main"));
    assert_eq!(vschema.clusters.len(), 4);
    for (i, cluster) in vschema.clusters.values().enumerate() {
        assert_eq!(cluster.name, format!("c{}", i + 1));
        assert_eq!(cluster.primary, format!("127.0.0.1:1540{}", i + 1));
        assert_eq!(
            (cluster.user.as_str(), cluster.password.as_str()),
            ("shardgate", "shardgate")
        );
    }
    let app = vschema.keyspace("app").expect("app");
    assert!(app.sharded);
    assert_eq!(app.vindex, Vindex::Xxhash);
    let names: Vec<&str> = app.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["-40", "40-80", "80-c0", "c0-"]);
    assert_eq!(app.pins.get(&42), app.shard_index("c0-").as_ref());
    for table in ["workspaces", "conversations", "messages", "unlisted"] {
        assert_eq!(app.sharding_column(table), Some("workspace_id"), "{table}");
    }
    let main = vschema.keyspace("main").expect("main");
    assert!(!main.sharded && main.default);
    assert_eq!(main.shards.len(), 1);
    assert_eq!(main.shards[0].name, "-");
    assert!(main.shards[0].range.is_full());
    assert_eq!(
        (
            main.shards[0].cluster.as_str(),
            main.shards[0].database.as_str()
        ),
        ("c1", "main")
    );
    assert_eq!(main.shard_index_for_workspace(42), 0);
}

#[test]
fn example_toml_loads() {
    let vschema = load(EXAMPLE);
    assert!(vschema.default_keyspace.is_some());
    assert!(vschema
        .keyspaces
        .values()
        .any(|k| k.sharded && k.vindex == Vindex::Numeric));
    assert!(vschema
        .keyspaces
        .values()
        .any(|k| k.tables.values().any(|t| *t == TableKind::Reference)));
}

#[test]
fn describe_summarizes_the_demo() {
    let text = load(DEMO).describe();
    for needle in [
        "c1  127.0.0.1:15401",
        "app: sharded, vindex xxhash, 4 shards, 3 tables",
        "1 pin",
        "80-c0 -> c3/app",
        "main: unsharded, default",
        "- -> c1/main",
        "default keyspace: main",
    ] {
        assert!(text.contains(needle), "{needle:?} missing from:\n{text}");
    }
}

#[test]
fn load_reports_an_unreadable_file_at_its_path() {
    let path = std::path::Path::new("/nonexistent/shardgate/vschema.toml");
    let errors = VSchema::load(path).expect_err("file does not exist").0;
    assert_eq!(errors.len(), 1);
    assert_eq!(errors[0].at, "/nonexistent/shardgate/vschema.toml");
    assert!(
        errors[0].message.contains("cannot read"),
        "{}",
        errors[0].message
    );
}

#[test]
fn load_reads_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("vschema.toml");
    std::fs::write(&path, DEMO).expect("write");
    assert!(VSchema::load(&path).is_ok());
}

// ---- key ranges ----

#[test]
fn key_range_parses_vitess_names() {
    let range = |s: &str, e: &[u8]| KeyRange {
        start: s.as_bytes().to_vec(),
        end: e.to_vec(),
    };
    assert_eq!(KeyRange::parse("-"), Ok(KeyRange::full()));
    assert_eq!(KeyRange::parse("0"), Ok(KeyRange::full()));
    assert_eq!(KeyRange::parse("-40"), Ok(range("", &[0x40])));
    assert_eq!(
        KeyRange::parse("40-80"),
        Ok(KeyRange {
            start: vec![0x40],
            end: vec![0x80]
        })
    );
    assert_eq!(
        KeyRange::parse("c0-"),
        Ok(KeyRange {
            start: vec![0xc0],
            end: vec![]
        })
    );
    assert_eq!(
        KeyRange::parse("C0-"),
        KeyRange::parse("c0-"),
        "uppercase hex"
    );
    assert_eq!(
        KeyRange::parse("4000-8000a1"),
        Ok(KeyRange {
            start: vec![0x40, 0],
            end: vec![0x80, 0, 0xa1]
        })
    );
    assert_eq!(
        KeyRange::parse("40-80").map(|r| r.to_string()),
        Ok("40-80".to_string())
    );
    assert_eq!(KeyRange::full().to_string(), "-");
}

#[test]
fn key_range_rejects_malformed_names() {
    for (name, needle) in [
        ("", "expected `start-end`"),
        ("40", "expected `start-end`"),
        ("4-80", "odd number of hex digits"),
        ("40-8", "odd number of hex digits"),
        ("4g-80", "not hexadecimal"),
        ("40-80-c0", "more than one `-`"),
        ("80-40", "empty key range"),
        ("40-40", "empty key range"),
        ("40-4000", "empty key range"),
        ("-00", "empty key range"),
        ("4 -80", "not hexadecimal"),
    ] {
        match KeyRange::parse(name) {
            Ok(range) => panic!("{name:?} parsed as {range:?}"),
            Err(message) => assert!(message.contains(needle), "{name:?}: {message}"),
        }
    }
}

#[test]
fn key_range_containment_is_left_aligned_and_half_open() {
    let r = |name: &str| KeyRange::parse(name).expect("valid");
    let id = |bytes: u64| bytes.to_be_bytes();
    assert!(r("-").contains(&id(0)));
    assert!(r("-").contains(&id(u64::MAX)));
    assert!(r("-40").contains(&id(0)));
    assert!(r("-40").contains(&id(0x3fff_ffff_ffff_ffff)));
    assert!(
        !r("-40").contains(&id(0x4000_0000_0000_0000)),
        "end is exclusive"
    );
    assert!(
        r("40-80").contains(&id(0x4000_0000_0000_0000)),
        "start is inclusive"
    );
    assert!(r("c0-").contains(&id(u64::MAX)));
    assert!(!r("c0-").contains(&id(0xbfff_ffff_ffff_ffff)));
    // `4000` is the same bound as `40`.
    assert!(r("4000-").contains(&id(0x4000_0000_0000_0000)));
    assert!(!r("-4000").contains(&id(0x4000_0000_0000_0000)));
    // Bounds longer than a keyspace id: 0x40..00 is below 0x40..00 01.
    assert!(r("-400000000000000001").contains(&id(0x4000_0000_0000_0000)));
    assert!(!r("400000000000000001-").contains(&id(0x4000_0000_0000_0000)));
    assert!(r("00-").is_full());
}

// ---- table lookups and the planner's view ----

#[test]
fn tables_are_matched_exactly_then_ignoring_case() {
    let text = sharded(
        two_shards(),
        r#"default_column = "workspace_id"
[keyspaces.app.tables]
Messages = { column = "ws" }
countries = { type = "reference" }
"#,
    );
    let app = load(&text).keyspaces.remove("app").expect("app");
    assert_eq!(app.sharding_column("Messages"), Some("ws"));
    assert_eq!(app.sharding_column("MESSAGES"), Some("ws"));
    assert_eq!(app.sharding_column("messages"), Some("ws"));
    assert_eq!(app.sharding_column("Countries"), None);
    assert!(app.is_reference("COUNTRIES"));
    assert!(!app.is_reference("messages"));
    assert_eq!(app.sharding_column("other"), Some("workspace_id"));
    assert_eq!(
        app.table_kind("other").as_deref(),
        Some(&TableKind::Sharded {
            column: "workspace_id".into()
        })
    );
    assert_eq!(
        app.table_kind("countries").as_deref(),
        Some(&TableKind::Reference)
    );
    assert!(app.is_sharded());
}

#[test]
fn unlisted_tables_without_default_column_are_not_sharded() {
    let app = load(&sharded(two_shards(), ""))
        .keyspaces
        .remove("app")
        .expect("app");
    assert_eq!(app.sharding_column("anything"), None);
    assert_eq!(app.table_kind("anything"), None);
}

#[test]
fn unsharded_keyspace_has_no_sharding_columns() {
    let main = load(DEMO).keyspaces.remove("main").expect("main");
    assert!(!main.is_sharded());
    assert_eq!(main.sharding_column("messages"), None);
    assert!(!main.is_reference("messages"));
}

#[test]
fn shards_are_sorted_and_names_normalized() {
    let text = sharded(
        r#"{ name = "C0-", cluster = "c2" }, { name = "-80", cluster = "c1" },
           { name = "80-c0", cluster = "c2", database = "app2" }"#,
        "[keyspaces.app.pins]\n\"7\" = \"C0-\"\n",
    );
    let app = load(&text).keyspaces.remove("app").expect("app");
    let names: Vec<&str> = app.shards.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["-80", "80-c0", "c0-"]);
    assert_eq!(app.pins.get(&7), Some(&2));
    assert_eq!(app.shard_for_workspace(7).name, "c0-");
}

#[test]
fn numeric_vindex_places_by_range() {
    let text = format!(
        "{CLUSTERS}\n[keyspaces.app]\nsharded = true\nvindex = \"numeric\"\nshards = [\
         {{ name = \"-00000000000003e8\", cluster = \"c1\" }}, \
         {{ name = \"00000000000003e8-\", cluster = \"c2\" }}]\n"
    );
    let app = load(&text).keyspaces.remove("app").expect("app");
    assert_eq!(app.shard_for_workspace(999).cluster, "c1");
    assert_eq!(app.shard_for_workspace(1000).cluster, "c2");
    assert_eq!(app.shard_for_workspace(u64::MAX).cluster, "c2");
}

// ---- validation: one test per rule ----

#[test]
fn toml_syntax_error_reports_line_and_column() {
    let errors = errors_of("[clusters.c1]\nprimary = \"x:1\"\nuser = \n");
    assert_eq!(errors.len(), 1);
    assert!(
        errors[0].at.starts_with("line 3, column "),
        "{}",
        errors[0].at
    );
}

#[test]
fn unknown_field_is_refused_with_its_line() {
    let text = format!("{CLUSTERS}\n[keyspaces.main]\ncluster = \"c1\"\nshard_count = 4\n");
    let errors = errors_of(&text);
    assert_eq!(errors.len(), 1);
    let line = text
        .lines()
        .position(|l| l.starts_with("shard_count"))
        .expect("line")
        + 1;
    assert_eq!(errors[0].at, format!("line {line}, column 1"));
    assert!(
        errors[0].message.contains("unknown field `shard_count`"),
        "{}",
        errors[0].message
    );

    assert_error(
        &format!("{CLUSTERS}\n[clusters.c3]\nprimary = \"h:1\"\nuser = \"u\"\nhost = \"h\"\n"),
        "line 15, column 1",
        "unknown field `host`",
    );
    assert_error(
        &sharded(r#"{ name = "-", cluster = "c1", db = "x" }"#, ""),
        "line 15, column 41",
        "unknown field `db`",
    );
}

#[test]
fn unknown_cluster_is_reported_at_its_shard() {
    assert_error(
        &sharded(
            r#"{ name = "-80", cluster = "c1" }, { name = "80-", cluster = "c9" }"#,
            "",
        ),
        r#"keyspaces.app.shards[1] ("80-")"#,
        r#"unknown cluster "c9" (defined clusters: c1, c2)"#,
    );
    assert_error(
        &format!("{CLUSTERS}\n[keyspaces.main]\ncluster = \"nope\"\n"),
        "keyspaces.main.cluster",
        "unknown cluster \"nope\"",
    );
}

#[test]
fn malformed_shard_name_is_reported() {
    assert_error(
        &sharded(
            r#"{ name = "-8", cluster = "c1" }, { name = "80-", cluster = "c2" }"#,
            "",
        ),
        r#"keyspaces.app.shards[0] ("-8")"#,
        "odd number of hex digits",
    );
    assert_error(
        &sharded(
            r#"{ name = "-zz", cluster = "c1" }, { name = "80-", cluster = "c2" }"#,
            "",
        ),
        r#"keyspaces.app.shards[0] ("-zz")"#,
        "not hexadecimal",
    );
    assert_error(
        &sharded(r#"{ cluster = "c1" }"#, ""),
        "keyspaces.app.shards[0]",
        "missing `name`",
    );
}

#[test]
fn malformed_shard_does_not_also_report_coverage() {
    let errors = errors_of(&sharded(
        r#"{ name = "-8", cluster = "c1" }, { name = "80-", cluster = "c2" }"#,
        "",
    ));
    assert_eq!(errors.len(), 1, "{}", VSchemaErrors(errors.clone()));
}

#[test]
fn gap_between_shards_is_reported() {
    assert_error(
        &sharded(
            r#"{ name = "-40", cluster = "c1" }, { name = "80-", cluster = "c2" }"#,
            "",
        ),
        r#"keyspaces.app.shards[1] ("80-")"#,
        r#"gap: no shard covers keyspace ids from 40 up to 80 (between shards "-40" and "80-")"#,
    );
}

#[test]
fn overlapping_shards_are_reported() {
    let text = sharded(
        r#"{ name = "-40", cluster = "c1" }, { name = "40-80", cluster = "c2" },
           { name = "40-90", cluster = "c1", database = "b" }, { name = "80-", cluster = "c2", database = "b" }"#,
        "",
    );
    assert_error(
        &text,
        r#"keyspaces.app.shards[2] ("40-90")"#,
        r#"overlaps shard "40-80" on keyspace ids from 40 up to 80"#,
    );
    assert_error(
        &text,
        r#"keyspaces.app.shards[3] ("80-")"#,
        r#"overlaps shard "40-90" on keyspace ids from 80 up to 90"#,
    );
}

#[test]
fn incomplete_coverage_at_either_end_is_reported() {
    assert_error(
        &sharded(
            r#"{ name = "10-80", cluster = "c1" }, { name = "80-", cluster = "c2" }"#,
            "",
        ),
        r#"keyspaces.app.shards[0] ("10-80")"#,
        "no shard covers keyspace ids from the start up to 10",
    );
    assert_error(
        &sharded(
            r#"{ name = "-80", cluster = "c1" }, { name = "80-f0", cluster = "c2" }"#,
            "",
        ),
        r#"keyspaces.app.shards[1] ("80-f0")"#,
        "no shard covers keyspace ids from f0 to the end",
    );
}

#[test]
fn equal_bounds_of_different_lengths_meet() {
    load(&sharded(
        r#"{ name = "-4000", cluster = "c1" }, { name = "40-", cluster = "c2" }"#,
        "",
    ));
}

#[test]
fn duplicate_shard_name_is_reported() {
    assert_error(
        &sharded(
            r#"{ name = "-", cluster = "c1" }, { name = "-", cluster = "c2" }"#,
            "",
        ),
        r#"keyspaces.app.shards[1] ("-")"#,
        "duplicate shard name: shards[0]",
    );
}

#[test]
fn sharded_keyspace_needs_a_vindex_and_shards() {
    let no_vindex = format!(
        "{CLUSTERS}\n[keyspaces.app]\nsharded = true\nshards = [{{ name = \"-\", cluster = \"c1\" }}]\n"
    );
    assert_error(&no_vindex, "keyspaces.app", "needs `vindex`");
    let bad_vindex = no_vindex.replace("sharded = true", "sharded = true\nvindex = \"md5\"");
    assert_error(
        &bad_vindex,
        "keyspaces.app.vindex",
        "unknown vindex \"md5\"",
    );
    assert_error(
        &sharded("", ""),
        "keyspaces.app",
        "at least one entry in `shards`",
    );
    let no_shards = format!("{CLUSTERS}\n[keyspaces.app]\nsharded = true\nvindex = \"xxhash\"\n");
    assert_error(
        &no_shards,
        "keyspaces.app",
        "at least one entry in `shards`",
    );
}

#[test]
fn sharded_keyspace_refuses_keyspace_level_cluster() {
    let text = sharded(two_shards(), "cluster = \"c1\"\ndatabase = \"x\"\n");
    assert_error(
        &text,
        "keyspaces.app.cluster",
        "set `cluster` in each entry of `shards`",
    );
    assert_error(
        &text,
        "keyspaces.app.database",
        "set `database` in each entry of `shards`",
    );
}

#[test]
fn unsharded_keyspace_refuses_sharding_settings() {
    let text = format!(
        r#"{CLUSTERS}
[keyspaces.main]
cluster = "c1"
vindex = "xxhash"
default_column = "workspace_id"
shards = [{{ name = "-", cluster = "c1" }}]
[keyspaces.main.tables]
messages = {{ column = "workspace_id" }}
countries = {{ type = "reference" }}
[keyspaces.main.pins]
"1" = "-"
"#
    );
    assert_error(&text, "keyspaces.main.shards", "instead of `shards`");
    assert_error(
        &text,
        "keyspaces.main.vindex",
        "only a sharded keyspace has a vindex",
    );
    assert_error(&text, "keyspaces.main.default_column", "no sharding column");
    assert_error(
        &text,
        "keyspaces.main.tables.messages",
        "no sharding column",
    );
    assert_error(&text, "keyspaces.main.pins", "nothing to pin to");
    let errors = errors_of(&text);
    assert!(
        !errors.iter().any(|e| e.at.contains("countries")),
        "a reference table is allowed in an unsharded keyspace"
    );
}

#[test]
fn unsharded_keyspace_needs_a_cluster() {
    assert_error(
        &format!("{CLUSTERS}\n[keyspaces.main]\ndatabase = \"main\"\n"),
        "keyspaces.main",
        "needs `cluster`",
    );
}

#[test]
fn table_entry_needs_column_or_reference() {
    let text = sharded(
        two_shards(),
        r#"[keyspaces.app.tables]
bare = {}
odd = { type = "lookup" }
both = { column = "ws", type = "reference" }
typed = { type = "sharded" }
blank = { column = "" }
"#,
    );
    assert_error(
        &text,
        "keyspaces.app.tables.bare",
        "needs a sharding `column",
    );
    assert_error(
        &text,
        "keyspaces.app.tables.odd",
        "unknown table type \"lookup\"",
    );
    assert_error(
        &text,
        "keyspaces.app.tables.both",
        "a reference table has no sharding column",
    );
    assert_error(&text, "keyspaces.app.tables.typed", "needs `column");
    assert_error(
        &text,
        "keyspaces.app.tables.blank",
        "sharding column is empty",
    );
    assert_eq!(errors_of(&text).len(), 5);
}

#[test]
fn table_names_equal_but_for_case_are_refused() {
    let text = sharded(
        two_shards(),
        "[keyspaces.app.tables]\nMessages = { column = \"a\" }\nmessages = { column = \"b\" }\n",
    );
    assert_error(&text, "keyspaces.app.tables.messages", "only by case");
}

#[test]
fn pin_key_must_be_a_workspace_id() {
    let text = sharded(
        two_shards(),
        "[keyspaces.app.pins]\n\"-1\" = \"-80\"\n\"abc\" = \"-80\"\n\"99999999999999999999\" = \"-80\"\n\"\" = \"-80\"\n",
    );
    assert_error(&text, "keyspaces.app.pins.-1", "not a workspace id");
    assert_error(&text, "keyspaces.app.pins.abc", "not a workspace id");
    assert_error(
        &text,
        "keyspaces.app.pins.99999999999999999999",
        "larger than the largest workspace id",
    );
    assert_error(&text, "keyspaces.app.pins.\"\"", "not a workspace id");
}

#[test]
fn pin_to_unknown_shard_is_reported() {
    assert_error(
        &sharded(two_shards(), "[keyspaces.app.pins]\n\"42\" = \"c0-\"\n"),
        "keyspaces.app.pins.42",
        "unknown shard \"c0-\" (shards: -80, 80-)",
    );
}

#[test]
fn same_workspace_pinned_twice_is_reported() {
    assert_error(
        &sharded(
            two_shards(),
            "[keyspaces.app.pins]\n\"42\" = \"-80\"\n\"042\" = \"80-\"\n",
        ),
        "keyspaces.app.pins.42",
        "pinned twice",
    );
}

#[test]
fn at_most_one_default_keyspace() {
    let text = format!(
        "{CLUSTERS}\n[keyspaces.a]\ncluster = \"c1\"\ndefault = true\n[keyspaces.b]\ncluster = \"c2\"\ndefault = true\n"
    );
    assert_error(
        &text,
        "keyspaces.b.default",
        "keyspace \"a\" is already the default",
    );
}

#[test]
fn default_keyspace_must_be_unsharded() {
    assert_error(
        &sharded(two_shards(), "default = true\n"),
        "keyspaces.app.default",
        "must be unsharded",
    );
}

#[test]
fn two_shards_in_one_database_are_refused() {
    assert_error(
        &sharded(
            r#"{ name = "-80", cluster = "c1" }, { name = "80-", cluster = "c1" }"#,
            "",
        ),
        r#"keyspaces.app.shards[1] ("80-")"#,
        r#"database "app" on cluster "c1" is already used by keyspaces.app.shards[0] ("-80")"#,
    );
    // Across keyspaces too: their tables would mix.
    assert_error(
        &sharded(
            two_shards(),
            "[keyspaces.main]\ncluster = \"c1\"\ndatabase = \"app\"\n",
        ),
        "keyspaces.main",
        r#"already used by keyspaces.app.shards[0] ("-80")"#,
    );
    // Same database name on different clusters, or different databases on one cluster: fine.
    load(&sharded(
        r#"{ name = "-80", cluster = "c1" }, { name = "80-", cluster = "c1", database = "app_2" }"#,
        "",
    ));
}

#[test]
fn cluster_primary_must_be_host_port() {
    for (primary, needle) in [
        ("db1", "has no port"),
        ("db1:", "invalid port"),
        ("db1:0", "invalid port"),
        ("db1:65536", "invalid port"),
        ("db1:33o6", "invalid port"),
        (":3306", "no valid host"),
        ("::1:3306", "IPv6 address goes in brackets"),
        ("[::1]", "is not host:port"),
    ] {
        let text = format!("[clusters.c1]\nprimary = \"{primary}\"\nuser = \"u\"\n");
        assert_error(&text, "clusters.c1.primary", needle);
    }
    for primary in ["db1:3306", "10.0.0.5:65535", "[::1]:3306"] {
        load(&format!(
            "[clusters.c1]\nprimary = \"{primary}\"\nuser = \"u\"\n"
        ));
    }
}

#[test]
fn cluster_needs_primary_and_user() {
    let text = "[clusters.c1]\npassword = \"p\"\n[clusters.c2]\nprimary = \"h:1\"\nuser = \"\"\n";
    assert_error(text, "clusters.c1", "missing `primary`");
    assert_error(text, "clusters.c1", "missing `user`");
    assert_error(text, "clusters.c2.user", "user is empty");
    // No password means an empty one.
    let vschema = load("[clusters.c1]\nprimary = \"h:1\"\nuser = \"u\"\n");
    assert_eq!(vschema.clusters["c1"].password, "");
}

#[test]
fn empty_names_are_reported() {
    let text = format!(
        r#"{CLUSTERS}
[clusters.""]
primary = "h:1"
user = "u"
[keyspaces.""]
cluster = "c1"
database = "x"
[keyspaces.app]
sharded = true
vindex = "xxhash"
default_column = ""
shards = [{{ name = "", cluster = "" }}, {{ name = "-", cluster = "c1", database = "" }}]
[keyspaces.app.tables]
"" = {{ type = "reference" }}
"#
    );
    assert_error(&text, "clusters.\"\"", "cluster name is empty");
    assert_error(&text, "keyspaces.\"\"", "keyspace name is empty");
    assert_error(
        &text,
        "keyspaces.app.default_column",
        "default_column is empty",
    );
    assert_error(
        &text,
        r#"keyspaces.app.shards[0] ("")"#,
        "shard name is empty",
    );
    assert_error(
        &text,
        r#"keyspaces.app.shards[0] ("")"#,
        "cluster name is empty",
    );
    assert_error(
        &text,
        r#"keyspaces.app.shards[1] ("-")"#,
        "database name is empty",
    );
    assert_error(&text, "keyspaces.app.tables.\"\"", "table name is empty");
}

#[test]
fn all_errors_are_collected() {
    let text = r#"[clusters.c1]
primary = "nope"
user = "u"
[keyspaces.app]
sharded = true
shards = [{ name = "-40", cluster = "c1" }, { name = "80-", cluster = "c7" }]
[keyspaces.app.pins]
"x" = "-40"
[keyspaces.main]
cluster = "c1"
default = true
[keyspaces.other]
cluster = "c1"
default = true
"#;
    let ats: Vec<String> = errors_of(text).into_iter().map(|e| e.at).collect();
    for at in [
        "clusters.c1.primary",
        "keyspaces.app",
        r#"keyspaces.app.shards[1] ("80-")"#,
        "keyspaces.app.pins.x",
        "keyspaces.other.default",
    ] {
        assert!(ats.iter().any(|a| a == at), "{at} missing from {ats:?}");
    }
}

#[test]
fn errors_display_one_per_line() {
    let errors = VSchemaErrors(vec![
        VSchemaError {
            at: "a".into(),
            message: "x".into(),
        },
        VSchemaError {
            at: "b".into(),
            message: "y".into(),
        },
    ]);
    assert_eq!(errors.to_string(), "a: x\nb: y\n");
}

#[test]
fn empty_document_is_an_empty_vschema() {
    let vschema = load("");
    assert!(vschema.clusters.is_empty() && vschema.keyspaces.is_empty());
    assert_eq!(vschema.default_keyspace, None);
}

#[test]
fn database_name_longer_than_mysql_allows_is_refused() {
    let long = "d".repeat(65);
    assert_error(
        &format!("{CLUSTERS}\n[keyspaces.main]\ncluster = \"c1\"\ndatabase = \"{long}\"\n"),
        "keyspaces.main.database",
        "longer than MySQL's 64 characters",
    );
    load(&format!(
        "{CLUSTERS}\n[keyspaces.main]\ncluster = \"c1\"\ndatabase = \"{}\"\n",
        "d".repeat(64)
    ));
}

#[test]
fn example_places_billing_by_id_range() {
    let vschema = load(EXAMPLE);
    let billing = vschema.keyspace("billing").expect("billing");
    assert_eq!(billing.shard_for_workspace(999_999).database, "billing_old");
    assert_eq!(billing.shard_for_workspace(1_000_000).database, "billing");
    let chat = vschema.keyspace("chat").expect("chat");
    assert_eq!(chat.sharding_column("audit_events"), Some("tenant_id"));
    assert!(chat.is_reference("countries"));
    assert_eq!(chat.shard_for_workspace(1001).name, "c0-");
}

#[test]
fn database_per_workspace_maps_database_names_to_workspaces() {
    let text = r#"
[clusters.c1]
primary = "127.0.0.1:3306"
user = "u"
[keyspaces.tenants]
sharded = true
vindex = "numeric"
tenancy = "database_per_workspace"
database_template = "ws_{id}_db"
shards = [{ name = "-", cluster = "c1" }]
"#;
    let vs = VSchema::from_toml_str(text).expect("valid");
    let ks = vs.keyspace("tenants").expect("tenants");
    assert_eq!(ks.workspace_of_database("ws_42_db"), Some(42));
    assert_eq!(
        ks.workspace_of_database("ws_042_db"),
        None,
        "only the canonical form"
    );
    assert_eq!(ks.workspace_of_database("ws__db"), None);
    assert_eq!(ks.workspace_of_database("ws_42"), None);
    assert_eq!(ks.workspace_of_database("ws_-1_db"), None);
    assert_eq!(ks.database_for_workspace(7).as_deref(), Some("ws_7_db"));
    assert_eq!(
        vs.workspace_database("ws_9_db")
            .map(|(k, w)| (k.name.as_str(), w)),
        Some(("tenants", 9))
    );
}

#[test]
fn database_per_workspace_mistakes_are_reported() {
    let base = "[clusters.c1]\nprimary = \"127.0.0.1:3306\"\nuser = \"u\"\n";
    for (extra, at, needle) in [
        (
            "[keyspaces.t]\nsharded = true\nvindex = \"xxhash\"\ntenancy = \"database_per_workspace\"\nshards = [{ name = \"-\", cluster = \"c1\" }]\n",
            "keyspaces.t",
            "database_template",
        ),
        (
            "[keyspaces.t]\nsharded = true\nvindex = \"xxhash\"\ntenancy = \"database_per_workspace\"\ndatabase_template = \"ws\"\nshards = [{ name = \"-\", cluster = \"c1\" }]\n",
            "keyspaces.t.database_template",
            "exactly once",
        ),
        (
            "[keyspaces.t]\nsharded = true\nvindex = \"xxhash\"\ntenancy = \"database_per_workspace\"\ndatabase_template = \"ws_{id}\"\nshards = [{ name = \"-\", cluster = \"c1\", database = \"x\" }]\n",
            "keyspaces.t.shards[0] (\"-\")",
            "database_template",
        ),
        (
            "[keyspaces.t]\ncluster = \"c1\"\ntenancy = \"database_per_workspace\"\n",
            "keyspaces.t.tenancy",
            "sharded",
        ),
        (
            "[keyspaces.t]\ncluster = \"c1\"\nddl = \"sometimes\"\n",
            "keyspaces.t.ddl",
            "queued",
        ),
    ] {
        let errors = VSchema::from_toml_str(&format!("{base}{extra}")).expect_err(extra).0;
        assert!(
            errors.iter().any(|e| e.at == at && e.message.contains(needle)),
            "{extra}: {errors:?}"
        );
    }
    let ok = VSchema::from_toml_str(&format!(
        "{base}[keyspaces.t]\ncluster = \"c1\"\nddl = \"direct\"\n"
    ))
    .expect("direct");
    assert_eq!(ok.keyspace("t").expect("t").ddl, DdlPolicy::Direct);
}

#[test]
fn standbys_are_checked_and_described() {
    let ok = "[clusters.c1]\nprimary = \"127.0.0.1:15401\"\nstandbys = [\"127.0.0.1:15411\", \"127.0.0.1:15421\"]\nuser = \"u\"\n\
              [keyspaces.app]\ncluster = \"c1\"\n";
    let vs = VSchema::from_toml_str(ok).expect("valid");
    let c1 = vs.cluster("c1").expect("c1");
    assert_eq!(c1.standbys, ["127.0.0.1:15411", "127.0.0.1:15421"]);
    assert!(vs
        .describe()
        .contains("standbys 127.0.0.1:15411, 127.0.0.1:15421"));
    for (standbys, at, needle) in [
        ("[\"nope\"]", "clusters.c1.standbys[0]", "host:port"),
        (
            "[\"127.0.0.1:15401\"]",
            "clusters.c1.standbys[0]",
            "is the primary too",
        ),
        (
            "[\"127.0.0.1:15411\", \"127.0.0.1:15411\"]",
            "clusters.c1.standbys[1]",
            "listed twice",
        ),
    ] {
        let text = format!(
            "[clusters.c1]\nprimary = \"127.0.0.1:15401\"\nstandbys = {standbys}\nuser = \"u\"\n\
             [keyspaces.app]\ncluster = \"c1\"\n"
        );
        let errors = VSchema::from_toml_str(&text).expect_err(standbys);
        assert!(
            errors
                .0
                .iter()
                .any(|e| e.at == at && e.message.contains(needle)),
            "{standbys}: {errors}"
        );
    }
}
