//! The plan cache against the planner itself: for every statement of the planner's own
//! tests, and for texts made from them with other literal values, the cache must answer
//! exactly what `plan` answers, on misses and on hits.

use super::cache::{PlanCache, SchemaKey};
use super::lex::{self, Tok};
use super::*;

struct Schema;

impl ShardingSchema for Schema {
    fn is_sharded(&self) -> bool {
        true
    }
    fn sharding_column(&self, table: &str) -> Option<&str> {
        match table {
            "messages" | "channels" | "reactions" | "items" => Some("workspace_id"),
            "accounts" => Some("ws"),
            _ => None,
        }
    }
    fn is_reference(&self, table: &str) -> bool {
        matches!(table, "plans" | "countries")
    }
}

const KS: SchemaKey<'static> = SchemaKey::Keyspace("app");

/// The string literals of a Rust source that look like SQL (the planner tests' corpus).
fn corpus_of(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = source.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'"' || (i > 0 && b[i - 1] == b'\'') {
            i += 1;
            continue;
        }
        let mut s = String::new();
        let mut j = i + 1;
        while j < b.len() && b[j] != b'"' {
            if b[j] == b'\\' && j + 1 < b.len() {
                match b[j + 1] {
                    b'n' => s.push('\n'),
                    b't' => s.push('\t'),
                    b'\n' => {
                        // A continuation: the line break and the next line's indent go.
                        j += 2;
                        while j < b.len() && b[j] == b' ' {
                            j += 1;
                        }
                        continue;
                    }
                    c => s.push(c as char),
                }
                j += 2;
            } else {
                let ch = source[j..].chars().next().unwrap_or(' ');
                s.push(ch);
                j += ch.len_utf8();
            }
        }
        let head = s.trim_start().to_ascii_uppercase();
        if [
            "SELECT", "UPDATE", "DELETE", "WITH", "INSERT", "/*", "EXPLAIN", "REPLACE",
        ]
        .iter()
        .any(|w| head.starts_with(w))
        {
            out.push(s);
        }
        i = j + 1;
    }
    out.sort();
    out.dedup();
    out
}

pub(super) fn corpus() -> Vec<String> {
    let mut c = corpus_of(include_str!("tests.rs"));
    c.extend(corpus_of(include_str!("range_tests.rs")));
    c.extend(
        [
            "SELECT val FROM items WHERE workspace_id = 123456 AND id = 17",
            "SELECT * FROM messages WHERE workspace_id = 5 AND id = 5",
            "SELECT * FROM messages WHERE workspace_id = 1 AND workspace_id = 2",
            "SELECT * FROM messages WHERE workspace_id IN (1, 2) AND workspace_id IN (2, 3)",
            "SELECT * FROM messages WHERE workspace_id IN (4, '4', 04)",
            "SELECT * FROM messages WHERE workspace_id = '42' AND body = 'hello'",
            "SELECT * FROM messages WHERE workspace_id = '4 2'",
            "SELECT * FROM messages WHERE workspace_id = -5",
            "SELECT * FROM messages WHERE workspace_id = -0",
            "SELECT * FROM messages WHERE workspace_id = 18446744073709551615",
            "SELECT * FROM messages WHERE workspace_id = 18446744073709551616",
            "SELECT * FROM messages WHERE workspace_id = 4.0",
            "SELECT * FROM messages WHERE workspace_id = X'35'",
            "SELECT * FROM messages WHERE workspace_id = 'it''s'",
            "SELECT * FROM messages WHERE workspace_id = 7 AND body = 'a\\'b'",
            "/*workspace_id:42*/ SELECT * FROM messages WHERE id = 3",
            "/*workspace_id:42*/ SELECT * FROM messages WHERE workspace_id = 42",
            "/*workspace_id:42*/ SELECT * FROM messages WHERE workspace_id = 43",
            "/*application='x',workspace_id='9'*/ UPDATE messages SET body = 'b' WHERE id = 1",
            "/*workspace_id:1*/ /*workspace_id:2*/ SELECT * FROM messages",
            "SELECT * FROM messages WHERE workspace_id BETWEEN 10 AND 20",
            "SELECT * FROM messages WHERE workspace_id >= 10 AND workspace_id < 11",
            "SELECT * FROM messages WHERE workspace_id = 5 AND workspace_id > 3",
            "SELECT * FROM messages m JOIN channels c ON c.workspace_id = m.workspace_id WHERE m.workspace_id = 8 AND c.id = 8",
            "DELETE FROM messages WHERE workspace_id = 3 LIMIT 10",
            "UPDATE messages SET body = 'x', n = 5 WHERE workspace_id = 5 AND id = 6",
            "SELECT * FROM messages WHERE workspace_id = 5;",
            "SELECT 1; SELECT * FROM messages WHERE workspace_id = 5",
            "SELECT * FROM plans WHERE id = 5",
            "SELECT * FROM messages WHERE workspace_id = 5 -- trailing 6\n",
            "SELECT * FROM messages WHERE /*! workspace_id = 5 AND */ id = 6",
            "SELECT LOAD_FILE('/etc/passwd') FROM messages WHERE workspace_id = 5",
        ]
        .map(str::to_owned),
    );
    c
}

/// Texts like `sql` with other values in its number and quoted-number literals (and
/// tags): each changed, all equal, one 0, one past u64::MAX.
fn variants(sql: &str) -> Vec<String> {
    let lexed = lex::lex(sql);
    let mut spans: Vec<std::ops::Range<usize>> = Vec::new();
    for t in &lexed.tokens {
        let text = t.text(sql);
        if t.kind == Tok::Num && text.bytes().all(|b| b.is_ascii_digit()) {
            spans.push(t.start..t.end);
        } else if t.kind == Tok::Str {
            let inner = t.str_inner(sql);
            if !inner.is_empty() && inner.bytes().all(|b| b.is_ascii_digit()) {
                spans.push(t.start + 1..t.end - 1);
            }
        }
    }
    for c in &lexed.comments {
        if let Some((d, _)) = sql
            .get(c.clone())
            .and_then(tag::workspace_digits_in_comment)
        {
            spans.push(c.start + d.start..c.start + d.end);
        }
    }
    spans.sort_by_key(|r| r.start);
    let with = |f: &dyn Fn(usize, &str) -> String| {
        let mut out = String::new();
        let mut at = 0;
        for (i, r) in spans.iter().enumerate() {
            out.push_str(&sql[at..r.start]);
            out.push_str(&f(i, &sql[r.clone()]));
            at = r.end;
        }
        out.push_str(&sql[at..]);
        out
    };
    let mut out = vec![
        with(&|i, old| (old.parse::<u128>().unwrap_or(0) + 1000 + i as u128).to_string()),
        with(&|_, _| "7".to_owned()),
        with(&|i, old| if i == 0 { "0".into() } else { old.into() }),
        with(&|i, old| {
            if i == 0 {
                "18446744073709551616".into()
            } else {
                old.into()
            }
        }),
        with(&|i, old| if i == 1 { "1".into() } else { old.into() }),
        with(&|i, _| (i % 2 + 1).to_string()),
    ];
    if let Some(first) = spans.first() {
        let v = &sql[first.clone()];
        out.push(with(&|_, _| v.to_owned()));
    }
    out.sort();
    out.dedup();
    out
}

fn assert_same(cache: &PlanCache, sql: &str, generation: u64) {
    assert_eq!(
        cache.plan(sql, &Schema, KS, generation),
        plan(sql, &Schema),
        "the cache and the planner disagree on {sql:?}"
    );
}

#[test]
fn every_planner_test_statement_and_its_variants_plan_as_the_planner_does() {
    let cache = PlanCache::new(4096);
    let corpus = corpus();
    assert!(
        corpus.len() > 150,
        "the corpus was harvested: {}",
        corpus.len()
    );
    for sql in &corpus {
        for _ in 0..3 {
            assert_same(&cache, sql, 1);
        }
        for v in variants(sql) {
            assert_same(&cache, &v, 1);
            assert_same(&cache, &v, 1);
        }
    }
    let stats = cache.stats();
    eprintln!("{} statements: {stats:?}", corpus.len());
    assert!(stats.hits > 200, "{stats:?}");
    assert!(stats.misses > 0 && stats.uncacheable > 0, "{stats:?}");
    // And once more, everything cached now.
    let before = cache.stats().hits;
    for sql in &corpus {
        assert_same(&cache, sql, 1);
    }
    assert!(cache.stats().hits > before);
}

#[test]
fn a_point_select_hits_with_other_ids_and_fills_them_in() {
    let cache = PlanCache::new(64);
    let sql =
        |w: u64, id: u64| format!("SELECT val FROM items WHERE workspace_id = {w} AND id = {id}");
    for i in 0..3 {
        assert_same(&cache, &sql(1 + i, 17), 1);
    }
    let hits = cache.stats().hits;
    let p = cache.plan(&sql(987654, 3), &Schema, KS, 1);
    assert_eq!(cache.stats().hits, hits + 1, "a hit");
    assert_eq!(
        p.statements[0].route,
        Route::Workspaces(smallvec::smallvec![987654])
    );
    assert_eq!(p.statements[0].span, 0..sql(987654, 3).len());
    // The same value twice: the route takes the workspace's, whichever literal it is.
    for i in 0..3 {
        assert_same(&cache, &sql(5 + i, 5 + i), 1);
    }
    let hits = cache.stats().hits;
    assert_eq!(
        cache.plan(&sql(42, 42), &Schema, KS, 1).statements[0].route,
        Route::Workspaces(smallvec::smallvec![42])
    );
    assert_eq!(cache.stats().hits, hits + 1);
}

/// A hit says whether the text may mention the backend's identity (`@@`,
/// `CONNECTION_ID()`, the process list) from its verbatim parts; anything else
/// (misses, a literal that only looks like one) says "look".
#[test]
fn a_hit_knows_whether_its_text_needs_the_identity_look() {
    let cache = PlanCache::new(64);
    let noted = |sql: &str| cache.plan_noting_identity(sql, &Schema, KS, 1).1;
    let plain = |id: u64| format!("SELECT val FROM items WHERE workspace_id = 7 AND id = {id}");
    assert!(!noted(&plain(1)), "a first sighting is a miss");
    assert!(!noted(&plain(2)), "the second makes the entry");
    assert!(noted(&plain(3)), "a hit of a plain text needs no look");
    let ident =
        |id: u64| format!("SELECT val, @@hostname FROM items WHERE workspace_id = 7 AND id = {id}");
    let conn = |id: u64| {
        format!(
            "SELECT val FROM items WHERE workspace_id = 7 AND id = {id} AND CONNECTION_ID() > 0"
        )
    };
    let at_in_string = |id: u64| {
        format!("SELECT val FROM items WHERE workspace_id = 7 AND id = {id} AND val = '@'")
    };
    for text in [&ident as &dyn Fn(u64) -> String, &conn, &at_in_string] {
        for id in 1..5 {
            assert!(!noted(&text(id)), "{} must be looked at", text(id));
        }
    }
    assert!(cache.stats().hits >= 3, "those texts were hits too");
}

#[test]
fn equal_and_distinct_literals_do_not_share_a_plan() {
    let cache = PlanCache::new(64);
    let two = "SELECT * FROM messages WHERE workspace_id = 1 AND workspace_id = 2";
    for _ in 0..3 {
        assert_same(&cache, two, 1);
    }
    assert!(matches!(
        cache.plan(two, &Schema, KS, 1).statements[0].route,
        Route::Unroutable(_)
    ));
    let same = "SELECT * FROM messages WHERE workspace_id = 3 AND workspace_id = 3";
    assert_eq!(
        cache.plan(same, &Schema, KS, 1).statements[0].route,
        Route::Workspaces(smallvec::smallvec![3])
    );
    // The other way round: a cached plan for equal values is not one for distinct ones.
    let cache = PlanCache::new(64);
    let equal = "DELETE FROM messages WHERE workspace_id = 3 AND workspace_id = 3";
    for _ in 0..3 {
        assert_same(&cache, equal, 1);
    }
    assert_eq!(cache.stats().hits, 1);
    let distinct = "DELETE FROM messages WHERE workspace_id = 4 AND workspace_id = 5";
    assert!(matches!(
        cache.plan(distinct, &Schema, KS, 1).statements[0].route,
        Route::Unroutable(_)
    ));
    let lists = "SELECT * FROM messages WHERE workspace_id IN (1, 2) AND workspace_id IN (3, 4)";
    for _ in 0..3 {
        assert_same(&cache, lists, 1);
    }
    assert_same(
        &cache,
        "SELECT * FROM messages WHERE workspace_id IN (1, 2) AND workspace_id IN (2, 4)",
        1,
    );
}

#[test]
fn a_new_generation_or_another_keyspace_misses() {
    let cache = PlanCache::new(64);
    let sql = "SELECT * FROM messages WHERE workspace_id = 5";
    for _ in 0..3 {
        cache.plan(sql, &Schema, KS, 1);
    }
    let before = cache.stats();
    cache.plan(sql, &Schema, KS, 1);
    assert_eq!(cache.stats().hits, before.hits + 1);
    cache.plan(sql, &Schema, KS, 2);
    cache.plan(sql, &Schema, SchemaKey::Keyspace("other"), 1);
    cache.plan(sql, &Schema, SchemaKey::Unsharded, 1);
    let after = cache.stats();
    assert_eq!(
        after.hits,
        before.hits + 1,
        "no hit across generations or schemas"
    );
    assert_eq!(after.misses, before.misses + 3);
}

#[test]
fn the_number_of_entries_stays_within_the_capacity() {
    let cache = PlanCache::new(8);
    for t in 0..200 {
        let sql = format!("SELECT c{t} FROM messages WHERE workspace_id = 5");
        for _ in 0..2 {
            assert_same(&cache, &sql, 1);
        }
        assert!(cache.stats().entries <= 8, "{:?}", cache.stats());
    }
    assert_eq!(cache.stats().entries, 8);
    assert_eq!(cache.stats().capacity, 8);
    // A shape used all along keeps its entry (second chance) while others churn.
    let hot = "SELECT hot FROM messages WHERE workspace_id = 1";
    for _ in 0..2 {
        cache.plan(hot, &Schema, KS, 1);
    }
    for t in 0..50 {
        cache.plan(hot, &Schema, KS, 1);
        let sql = format!("SELECT d{t} FROM messages WHERE workspace_id = 5");
        cache.plan(&sql, &Schema, KS, 1);
        cache.plan(&sql, &Schema, KS, 1);
    }
    let hits = cache.stats().hits;
    cache.plan(hot, &Schema, KS, 1);
    assert_eq!(
        cache.stats().hits,
        hits + 1,
        "the hot shape is still cached"
    );
    let off = PlanCache::new(0);
    assert_eq!(off.plan(hot, &Schema, KS, 1), plan(hot, &Schema));
    assert_eq!(off.stats().entries + off.stats().capacity, 0);
}

#[test]
fn statements_the_cache_cannot_rebuild_are_planned_every_time() {
    let cache = PlanCache::new(64);
    for sql in [
        "INSERT INTO messages (workspace_id, body) VALUES (5, 'x')",
        "SELECT * FROM messages WHERE workspace_id = 5; SELECT 2",
        "SELECT * FROM messages WHERE body = 'a\\'b' AND workspace_id = 5",
        "SET autocommit = 1",
        // A NUL anywhere (here inside a string) could pass for a literal's mark.
        "SELECT * FROM messages WHERE body = 'a\0b' AND workspace_id = 5",
    ] {
        for _ in 0..3 {
            assert_same(&cache, sql, 1);
        }
    }
    let s = cache.stats();
    assert_eq!((s.hits, s.misses, s.uncacheable), (0, 0, 15), "{s:?}");
    // A range's bounds are arithmetic on its literals: planned every time, once known.
    let range = "SELECT * FROM messages WHERE workspace_id BETWEEN 10 AND 20";
    for _ in 0..4 {
        assert_same(&cache, range, 1);
    }
    assert_eq!(cache.stats().hits, 0);
    assert!(cache.stats().uncacheable >= 17);
}

#[test]
fn threads_sharing_a_small_cache_always_get_the_planners_answer() {
    let cache = PlanCache::new(16);
    std::thread::scope(|scope| {
        for t in 0..4u64 {
            let cache = &cache;
            scope.spawn(move || {
                for i in 0..1500u64 {
                    let shape = (i * 7 + t) % 40;
                    let sql = format!(
                        "SELECT c{shape} FROM messages WHERE workspace_id IN ({}, {}) AND id = {i}",
                        i % 5,
                        (i + t) % 3
                    );
                    assert_same(cache, &sql, 1 + i / 1000);
                }
            });
        }
    });
    let s = cache.stats();
    assert!(s.entries <= 16 && s.hits > 0, "{s:?}");
}
