use super::*;

fn all(d: &PinDirectory) -> Vec<(u64, usize)> {
    let mut out = Vec::new();
    d.visit_range(0, u64::MAX, |id, s| {
        out.push((id, s));
        true
    });
    out
}

#[test]
fn an_empty_directory_finds_nothing() {
    let d = PinDirectory::new();
    assert_eq!(d.get(42), None);
    assert!(d.is_empty());
    assert!(all(&d).is_empty());
}

#[test]
fn point_lookups_see_the_base_and_the_overlay() {
    let d = PinDirectory::from_pins(vec![(30, 1), (10, 0), (20, 2), (10, 3)]);
    // Of two pins of one workspace the later wins.
    assert_eq!(d.get(10), Some(3));
    assert_eq!(d.get(20), Some(2));
    assert_eq!(d.get(25), None);
    assert_eq!(d.len(), 3);
    assert_eq!(d.set(25, Some(1)), None);
    assert_eq!(d.set(20, None), Some(2));
    assert_eq!(d.set(30, Some(0)), Some(1));
    assert_eq!(d.get(25), Some(1));
    assert_eq!(d.get(20), None);
    assert_eq!(d.get(30), Some(0));
    assert_eq!(d.len(), 3);
    assert_eq!(all(&d), vec![(10, 3), (25, 1), (30, 0)]);
    // Setting a pin back to what the base holds leaves no overlay entry.
    d.set(30, Some(1));
    d.set(20, Some(2));
    d.set(25, None);
    assert_eq!(d.overlay_len(), 0);
    assert_eq!(all(&d), vec![(10, 3), (20, 2), (30, 1)]);
}

#[test]
fn a_range_merges_base_and_overlay_in_order_and_stops_when_asked() {
    let d = PinDirectory::from_pins((0..100).map(|i| (i * 10, (i % 4) as u32)).collect());
    d.set(55, Some(9));
    d.set(60, None);
    d.set(70, Some(7));
    let mut seen = Vec::new();
    d.visit_range(50, 80, |id, s| {
        seen.push((id, s));
        true
    });
    assert_eq!(seen, vec![(50, 1), (55, 9), (70, 7), (80, 0)]);
    let mut first_two = Vec::new();
    d.visit_range(0, u64::MAX, |id, _| {
        first_two.push(id);
        first_two.len() < 2
    });
    assert_eq!(first_two, vec![0, 10]);
    let mut none = 0;
    d.visit_range(81, 89, |_, _| {
        none += 1;
        true
    });
    assert_eq!(none, 0);
    assert_eq!(d.first(985, 10), vec![(990, 3)]);
}

#[test]
fn a_full_overlay_is_merged_into_the_base() {
    let d = PinDirectory::from_pins(vec![(1, 0)]);
    for i in 0..(OVERLAY_MAX as u64 + 10) {
        d.set(1000 + i, Some((i % 3) as usize));
    }
    assert!(d.overlay_len() < OVERLAY_MAX, "{}", d.overlay_len());
    assert_eq!(d.len(), OVERLAY_MAX + 11);
    assert_eq!(d.get(1), Some(0));
    assert_eq!(d.get(1000 + 4), Some(1));
    assert_eq!(
        d.get(1000 + OVERLAY_MAX as u64 + 9),
        Some((OVERLAY_MAX + 9) % 3)
    );
    let v = d.to_vec();
    assert!(v.windows(2).all(|w| w[0].0 < w[1].0));
}

#[test]
fn clones_share_the_pins_and_unpinning_everything_empties_it() {
    let d = PinDirectory::new();
    let c = d.clone();
    assert!(d.same(&c));
    d.set(7, Some(1));
    assert_eq!(c.get(7), Some(1));
    c.set(7, None);
    assert_eq!(d.get(7), None);
    assert!(d.is_empty());
    d.replace_all(vec![(3, 0), (4, 1)]);
    assert_eq!(c.len(), 2);
    assert!(!PinDirectory::new().same(&d));
}

#[test]
fn the_guide_finds_every_pin_and_nothing_else_whatever_the_spread() {
    let spreads: Vec<Vec<u64>> = vec![
        (0..5000).map(|i| i * 3).collect(),
        (0..5000).map(|i| i * i * 1_000_003).collect(),
        (0..3000).map(|i| u64::MAX - i * 7).chain(0..100).collect(),
        (0..100)
            .map(|i| 1u64 << (i % 64))
            .chain([0, u64::MAX])
            .collect(),
    ];
    for ids in spreads {
        let d = PinDirectory::from_pins(ids.iter().map(|&w| (w, (w % 5) as u32)).collect());
        for &w in &ids {
            assert_eq!(d.get(w), Some((w % 5) as usize), "{w}");
        }
        let set: std::collections::HashSet<u64> = ids.iter().copied().collect();
        for probe in ids
            .iter()
            .flat_map(|&w| [w.wrapping_add(1), w.wrapping_sub(1)])
        {
            if !set.contains(&probe) {
                assert_eq!(d.get(probe), None, "{probe}");
            }
        }
    }
}
