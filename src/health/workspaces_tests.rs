//! The per-workspace tracker: windows, eviction, the table's probing.
use super::*;

fn err(code: u16) -> Option<LastError> {
    Some(LastError::new(code, "Table 'ws_3.notes' doesn't exist"))
}

#[test]
fn counts_leave_the_window_after_a_minute() {
    let t = WorkspaceErrors::new(1000);
    let k = t.key("app", 42).expect("key");
    t.record_at(k, None, 0);
    t.record_at(k, err(1146), 1);
    t.record_at(k, None, 30);
    let s = t.workspace_at("app", 42, 30).expect("tracked");
    assert_eq!((s.statements, s.errors), (3, 1));
    assert_eq!(
        s.last_error.as_ref().map(|e| (e.0.code, e.1)),
        Some((1146, 29))
    );
    assert_eq!(t.with_errors_at(100, 30).len(), 1);
    // Slot 0 (seconds 0-4) is out of the window from second 60 on.
    let s = t.workspace_at("app", 42, 59).expect("tracked");
    assert_eq!((s.statements, s.errors), (3, 1));
    let s = t.workspace_at("app", 42, 60).expect("tracked");
    assert_eq!((s.statements, s.errors), (1, 0));
    assert!(t.with_errors_at(100, 60).is_empty());
    assert_eq!(
        s.last_error.map(|e| e.0.code),
        Some(1146),
        "the last error stays after it left the window"
    );
    // A write long after clears the old slots, including the ring's reused ones.
    t.record_at(k, None, 300);
    let s = t.workspace_at("app", 42, 300).expect("tracked");
    assert_eq!((s.statements, s.errors), (1, 0));
    assert_eq!(t.workspace_at("app", 7, 300), None);
    assert_eq!(t.workspace_at("other", 42, 300), None);
}

#[test]
fn keyspaces_are_separate_and_rows_sort_by_errors() {
    let t = WorkspaceErrors::new(1000);
    let a = t.key("app", 1).expect("key");
    let b = t.key("dpw", 1).expect("key");
    let c = t.key("dpw", 2).expect("key");
    for i in 0..5 {
        t.record_at(a, (i < 2).then(|| LastError::new(1146, "x")), 10);
        t.record_at(b, err(1205), 10);
        t.record_at(c, None, 10);
    }
    let rows = t.with_errors_at(100, 11);
    let got: Vec<(&str, u64, u64)> = rows
        .iter()
        .map(|r| (&*r.keyspace, r.workspace, r.summary.errors))
        .collect();
    assert_eq!(got, vec![("dpw", 1, 5), ("app", 1, 2)]);
    assert_eq!(t.with_errors_at(1, 11).len(), 1);
    assert_eq!(t.key("app", 9).map(|k| k.keyspace), Some(a.keyspace));
}

#[test]
fn eviction_drops_the_least_recently_seen_and_bounds_memory() {
    let t = WorkspaceErrors::with_stripes(16, 1);
    // One workspace per 5-second slot: 0 seen first, 15 last.
    for ws in 0..16u64 {
        let k = t.key("app", ws).expect("key");
        let error = (ws == 1).then(|| LastError::new(1146, "gone"));
        t.record_at(k, error, ws as u32 * SLOT_SECS);
    }
    assert_eq!(t.tracked(), 16);
    assert_eq!(t.with_errors_at(100, 60).len(), 1);
    // Workspace 0 is seen again: now 1 and 2 are the least recent.
    t.record_at(t.key("app", 0).expect("key"), None, 100);
    t.record_at(t.key("app", 99).expect("key"), None, 101);
    assert_eq!(t.tracked(), 15, "an eighth (2) evicted, one added");
    assert!(t.workspace_at("app", 1, 101).is_none());
    assert!(t.workspace_at("app", 2, 101).is_none());
    assert!(t.workspace_at("app", 0, 101).is_some());
    assert!(t.workspace_at("app", 3, 101).is_some());
    assert!(
        t.with_errors_at(100, 101).is_empty(),
        "an evicted workspace's errors go with it"
    );
    assert_eq!(t.stripes[0].0.lock().expect("lock").errors.len(), 0);
    for ws in 1000..2000u64 {
        t.record_at(t.key("app", ws).expect("key"), None, 200);
    }
    assert!(
        t.tracked() <= t.capacity(),
        "{} > {}",
        t.tracked(),
        t.capacity()
    );
    // Ties: all 16 seen in the same slot, still exactly an eighth goes.
    let t = WorkspaceErrors::with_stripes(16, 1);
    for ws in 0..16u64 {
        t.record_at(t.key("app", ws).expect("key"), None, 5);
    }
    t.record_at(t.key("app", 16).expect("key"), None, 6);
    assert_eq!(t.tracked(), 15);
}

#[test]
fn every_workspace_keeps_its_own_counts_through_growth() {
    let t = WorkspaceErrors::with_stripes(100_000, 4);
    let mut expected = std::collections::HashMap::new();
    // A fixed sequence with repeats and ids that differ only in high bits.
    let mut x = 0x2545_f491_4f6c_dd1d_u64;
    for _ in 0..20_000 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let ws = (x % 3000) << (x % 2 * 40);
        let ks = if x.is_multiple_of(5) { "dpw" } else { "app" };
        t.record_at(t.key(ks, ws).expect("key"), None, 10);
        *expected.entry((ks, ws)).or_insert(0u64) += 1;
    }
    assert_eq!(t.tracked(), expected.len());
    for ((ks, ws), n) in &expected {
        let s = t.workspace_at(ks, *ws, 10).expect("tracked");
        assert_eq!(s.statements, *n, "{ks} {ws}");
    }
    assert!(t.workspace_at("app", 3001, 10).is_none());
    // One stripe past 65,536 lines: rebuilt by hashing again, not from `home`.
    let t = WorkspaceErrors::with_stripes(200_000, 1);
    for ws in 0..70_000u64 {
        t.record_at(t.key("app", ws * 7919).expect("key"), None, 10);
    }
    t.record_at(t.key("app", 0).expect("key"), None, 11);
    assert!(t.stripes[0].0.lock().expect("lock").lines.len() > 65_536);
    assert_eq!(t.tracked(), 70_000);
    for ws in (0..70_000u64).step_by(997) {
        let s = t.workspace_at("app", ws * 7919, 11).expect("tracked");
        assert_eq!(s.statements, if ws == 0 { 2 } else { 1 }, "{ws}");
    }
}

#[test]
fn evictions_in_place_leave_every_line_findable_and_none_twice() {
    let t = WorkspaceErrors::with_stripes(64, 2);
    let mut x = 0x9e37_79b9_7f4a_7c15_u64;
    for step in 0..20_000u32 {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let now = step / 4 * SLOT_SECS;
        t.record_at(t.key("app", x % 300).expect("key"), None, now);
        if step % 1000 != 999 {
            continue;
        }
        let mut held = std::collections::HashSet::new();
        for stripe in t.stripes.iter() {
            let stripe = stripe.0.lock().expect("lock");
            let lines: Vec<Line> = stripe
                .lines
                .iter()
                .filter(|l| l.keyspace != 0)
                .copied()
                .collect();
            assert_eq!(lines.len(), stripe.len);
            for l in lines {
                assert!(held.insert(l.workspace), "{} held twice", l.workspace);
                let key = WorkspaceKey {
                    keyspace: 0,
                    workspace: l.workspace,
                };
                let found = stripe.find(key, t.hash(0, l.workspace));
                assert!(found.is_some(), "{} not found", l.workspace);
            }
        }
        assert_eq!(held.len(), t.tracked());
        assert!(t.tracked() <= t.capacity());
    }
}

#[test]
fn a_workspace_is_one_cache_line() {
    assert_eq!(std::mem::size_of::<Line>(), 64);
    assert_eq!(std::mem::align_of::<Line>(), 64);
    assert_eq!(std::mem::align_of::<Padded>(), 64);
}

#[test]
fn striped_capacity_never_exceeds_the_cap() {
    let t = WorkspaceErrors::new(100);
    for ws in 0..10_000u64 {
        t.record_at(t.key("app", ws).expect("key"), None, 1);
    }
    assert!(t.capacity() <= 100);
    assert!(t.tracked() <= t.capacity());
}

#[test]
fn messages_are_cut_at_a_character_boundary() {
    let long = "é".repeat(MESSAGE_MAX);
    let e = LastError::new(1146, &long);
    assert!(e.message.len() <= MESSAGE_MAX);
    assert!(e.message.chars().all(|c| c == 'é'));
}
