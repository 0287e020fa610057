//! The per-workspace tracker: windows, eviction, the table's probing.
use super::*;
use crate::testing::xorshift;

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
    let mut next = xorshift(0x2545_f491_4f6c_dd1d_u64);
    for _ in 0..20_000 {
        let x = next();
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

/// A stripe's recency counts as they should be, recounted from its lines (and its
/// `newest` checked against them).
fn recounted(stripe: &Stripe) -> Recency {
    let mut r = Recency {
        top: stripe.recency.top,
        ..Recency::default()
    };
    assert_eq!(stripe.newest.len(), stripe.lines.len());
    for (l, &seen) in stripe.lines.iter().zip(&stripe.newest) {
        if l.keyspace == 0 {
            assert_eq!(seen, NO_LINE, "an empty line with a slot");
            continue;
        }
        assert_eq!(seen, l.newest, "{}", l.workspace);
        assert!(
            l.newest <= r.top,
            "{} newer than the top {}",
            l.newest,
            r.top
        );
        r.add(l.newest);
    }
    r
}

/// Every line of every stripe: its workspace and the slot it was last seen in.
fn snapshot(t: &WorkspaceErrors) -> std::collections::HashMap<u64, u32> {
    let mut lines = std::collections::HashMap::new();
    for stripe in t.stripes.iter() {
        let stripe = stripe.0.lock().expect("lock");
        for l in stripe.lines.iter().filter(|l| l.keyspace != 0) {
            assert!(
                lines.insert(l.workspace, l.newest).is_none(),
                "{} twice",
                l.workspace
            );
        }
    }
    lines
}

#[test]
fn recency_counts_match_the_lines_through_bumps_evictions_and_growth() {
    // Stripes of 100 (tables grown to 128 lines), and stripes of one (every eviction
    // empties the stripe).
    for (cap, stripes) in [(200, 2), (3, 3)] {
        let t = WorkspaceErrors::with_stripes(cap, stripes);
        let mut next = xorshift(0x2545_f491_4f6c_dd1d_u64);
        let mut now = 0u32;
        let (mut evicted, mut older, mut refused) = (0, 0, 0);
        for step in 0..20_000u32 {
            let x = next();
            now += (x % 3) as u32;
            if step % 3000 == 2999 {
                // A quiet spell: every line falls out of the last 64 slots.
                now += 400 * SLOT_SECS;
            }
            // Sometimes a statement answered a while ago (the line may not move back),
            // sometimes one older than the window (not counted).
            let at = match x % 11 {
                0 => now.saturating_sub((x % 40) as u32),
                1 => now.saturating_sub(90),
                _ => now,
            };
            let ws = (x >> 8) % 400;
            let before = t.tracked();
            let had = t.workspace_at("app", ws, at).is_some();
            let error = x.is_multiple_of(13).then(|| LastError::new(1146, "gone"));
            t.record_at(t.key("app", ws).expect("key"), error, at);
            evicted += usize::from(!had && t.tracked() <= before);
            refused += usize::from(had && at < now);
            for stripe in t.stripes.iter() {
                let stripe = stripe.0.lock().expect("lock");
                assert_eq!(stripe.recency, recounted(&stripe), "step {step}");
                older += usize::from(stripe.recency.older > 0);
            }
        }
        assert!(evicted > 100, "{evicted}");
        if cap > stripes {
            assert!(older > 100 && refused > 100, "{older} {refused}");
            let grown = t.stripes[0].0.lock().expect("lock").lines.len();
            assert_eq!(grown, 128, "grown from 16 while counted");
        }
    }
}

#[test]
fn evictions_take_exactly_the_least_recent_and_leave_every_line_findable() {
    let t = WorkspaceErrors::with_stripes(64, 2);
    let n = 32 / 8;
    let mut next = xorshift(0x9e37_79b9_7f4a_7c15_u64);
    let mut now = 0u32;
    let (mut evictions, mut ties, mut among_older) = (0, 0, 0);
    for step in 0..20_000u32 {
        let x = next();
        if step % 4 == 0 {
            now += SLOT_SECS;
        }
        if step % 5000 == 4999 {
            now += 100 * SLOT_SECS;
        }
        // Now and then a statement answered a little earlier.
        let at = if x.is_multiple_of(7) {
            now - now.min(12)
        } else {
            now
        };
        let ws = x % 300;
        let before = snapshot(&t);
        let error = x.is_multiple_of(5).then(|| LastError::new(1146, "gone"));
        t.record_at(t.key("app", ws).expect("key"), error, at);
        let after = snapshot(&t);
        let gone: Vec<u32> = before
            .iter()
            .filter(|(w, _)| !after.contains_key(w))
            .map(|(_, &s)| s)
            .collect();
        assert!(after.contains_key(&ws));
        if !gone.is_empty() {
            assert!(!before.contains_key(&ws), "evicted for a tracked workspace");
            assert_eq!(gone.len(), n, "step {step}: exactly an eighth goes");
            evictions += 1;
            // Kept lines are compared with the evicted ones of their own stripe.
            let stripe_of = |w: u64| (t.hash(0, w) >> 40) as usize % t.stripes.len();
            let evicted_from = stripe_of(ws);
            let top = t.stripes[evicted_from].0.lock().expect("lock").recency.top;
            let is_older = |s: u32| top - s >= RECENT_SLOTS as u32;
            let newest_gone = gone.iter().copied().max().unwrap_or(0);
            for (w, &s) in after.iter().filter(|(w, _)| before.contains_key(w)) {
                if stripe_of(*w) != evicted_from {
                    continue;
                }
                if s < newest_gone {
                    assert!(
                        is_older(s) && is_older(newest_gone),
                        "step {step}: kept {w} seen in {s}, evicted one seen in {newest_gone}"
                    );
                    among_older += 1;
                }
                ties += usize::from(s == newest_gone);
            }
        } else {
            assert!(after.len() == before.len() + usize::from(!before.contains_key(&ws)));
        }
        for stripe in t.stripes.iter() {
            let stripe = stripe.0.lock().expect("lock");
            let live = stripe.lines.iter().filter(|l| l.keyspace != 0).count();
            assert_eq!(live, stripe.len);
            assert!(stripe.len <= t.capacity() / t.stripes.len());
            for l in stripe.lines.iter().filter(|l| l.keyspace != 0) {
                let found = stripe.find(
                    WorkspaceKey {
                        keyspace: 0,
                        workspace: l.workspace,
                    },
                    t.hash(0, l.workspace),
                );
                assert!(found.is_some(), "step {step}: {} not found", l.workspace);
            }
            for k in stripe.errors.keys() {
                assert!(after.contains_key(&k.workspace), "errors of evicted {k:?}");
            }
        }
    }
    assert!(
        evictions > 1000 && ties > 100 && among_older > 0,
        "{evictions} {ties} {among_older}"
    );
}

#[test]
fn evicting_workspaces_seen_in_the_same_slot_keeps_lines_near_their_home() {
    // All seen in one slot: the eviction picks which of them go. Emptying a run of
    // neighbours would crowd the rest of the table into long clusters.
    let t = WorkspaceErrors::with_stripes(312, 1);
    for ws in 0..20_000u64 {
        t.record_at(t.key("app", ws).expect("key"), None, 10);
    }
    let stripe = t.stripes[0].0.lock().expect("lock");
    let mask = stripe.lines.len() - 1;
    let (mut lines, mut displaced) = (0, 0);
    for (i, l) in stripe.lines.iter().enumerate() {
        if l.keyspace != 0 {
            lines += 1;
            displaced += i.wrapping_sub(usize::from(l.home)) & mask;
        }
    }
    assert_eq!((lines, stripe.lines.len()), (stripe.len, 512));
    let mean = displaced as f64 / lines as f64;
    assert!(
        mean < 3.0,
        "lines {mean:.1} away from their home on average"
    );
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
