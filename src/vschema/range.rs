//! Where a range of workspace ids lives: on one shard, or across several.
//!
//! A numeric vindex keeps ids in order (the keyspace id is the id itself, big-endian),
//! so the ids `[low, high]` are the keyspace ids `[low, high]`, and the shards that hold
//! them are the ones from `low`'s to `high`'s, plus any shard a pin inside the range
//! points to. A hash vindex scatters neighbouring ids over every shard.

use super::{Keyspace, Vindex};

/// Where the workspace ids of a range live.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RangePlacement {
    /// Every id of the range is on this shard (index into `shards`).
    OneShard(usize),
    /// The ids are on these shards (indexes, ascending, at most [`SPAN_NAMES`]).
    Spans(Vec<usize>),
    /// The keyspace's vindex does not keep ids in order, and it has several shards.
    Unordered,
}

/// How many shards a [`RangePlacement::Spans`] names at most.
pub const SPAN_NAMES: usize = 8;

impl Keyspace {
    /// Where the ids `[low, high]` live. An empty range (`low > high`) is placed on
    /// `low`'s shard: any shard returns its empty result. A range of one id is that
    /// id's shard, whatever the vindex.
    ///
    /// Pins inside the range (the document's, then the directory's, each in id order)
    /// are visited until the list of shards is full; pins that agree with the range's
    /// shards are all visited.
    pub fn placement_of_range(&self, low: u64, high: u64) -> RangePlacement {
        if !self.sharded || self.shards.len() <= 1 {
            return RangePlacement::OneShard(0);
        }
        if low >= high {
            // Empty, or one id: that id's shard, whatever the vindex.
            return RangePlacement::OneShard(self.shard_index_for_workspace(low));
        }
        if self.vindex != Vindex::Numeric {
            return RangePlacement::Unordered;
        }
        let first = self.vindex_shard_index(low);
        let last = self.vindex_shard_index(high);
        let mut shards: Vec<usize> = (first..=last).take(SPAN_NAMES).collect();
        // Pins (document and directory) inside the range add their shards; the visit
        // stops once nothing more can be added.
        self.visit_pins(low, high, |_, s| {
            if !shards.contains(&s) {
                shards.push(s);
            }
            shards.len() < SPAN_NAMES && shards.len() < self.shards.len()
        });
        if shards.len() == 1 {
            return RangePlacement::OneShard(first);
        }
        shards.sort_unstable();
        RangePlacement::Spans(shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vschema::VSchema;

    /// Ids below 1000 on `-..03e8`, 1000..1999 on `03e8-07d0`, the rest on `07d0-`;
    /// workspace 1500 pinned to the first shard, 1200 to its own shard.
    fn keyspace(vindex: &str) -> Keyspace {
        let text = format!(
            "[clusters.c1]\nprimary = \"127.0.0.1:1\"\nuser = \"u\"\npassword = \"p\"\n\
             [keyspaces.app]\nsharded = true\nvindex = \"{vindex}\"\nshards = [\
             {{ name = \"-00000000000003e8\", cluster = \"c1\" }}, \
             {{ name = \"00000000000003e8-00000000000007d0\", cluster = \"c1\", database = \"b\" }}, \
             {{ name = \"00000000000007d0-\", cluster = \"c1\", database = \"c\" }}]\n\
             [keyspaces.app.pins]\n\"1500\" = \"-00000000000003e8\"\n\
             \"1200\" = \"00000000000003e8-00000000000007d0\"\n"
        );
        match VSchema::from_toml_str(&text) {
            Ok(mut vs) => vs.keyspaces.remove("app").expect("app"),
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn a_range_inside_one_shard_is_placed_there() {
        let ks = keyspace("numeric");
        assert_eq!(ks.placement_of_range(0, 999), RangePlacement::OneShard(0));
        assert_eq!(
            ks.placement_of_range(1000, 1499),
            RangePlacement::OneShard(1)
        );
        // A pin that agrees with the range's shard does not matter.
        assert_eq!(
            ks.placement_of_range(1100, 1300),
            RangePlacement::OneShard(1)
        );
        assert_eq!(
            ks.placement_of_range(2000, u64::MAX),
            RangePlacement::OneShard(2)
        );
    }

    #[test]
    fn a_range_across_a_boundary_or_over_a_foreign_pin_spans_shards() {
        let ks = keyspace("numeric");
        assert_eq!(
            ks.placement_of_range(996, 1095),
            RangePlacement::Spans(vec![0, 1])
        );
        assert_eq!(
            ks.placement_of_range(0, u64::MAX),
            RangePlacement::Spans(vec![0, 1, 2])
        );
        // 1500 lives on the first shard although its key range is the second's.
        assert_eq!(
            ks.placement_of_range(1400, 1600),
            RangePlacement::Spans(vec![0, 1])
        );
        assert_eq!(
            ks.placement_of_range(1500, 1500),
            RangePlacement::OneShard(0)
        );
    }

    #[test]
    fn an_empty_range_goes_to_its_low_bound_shard() {
        let ks = keyspace("numeric");
        assert_eq!(
            ks.placement_of_range(1095, 996),
            RangePlacement::OneShard(1)
        );
        assert_eq!(ks.placement_of_range(1500, 3), RangePlacement::OneShard(0));
    }

    #[test]
    fn directory_pins_inside_a_range_count_like_document_pins() {
        let ks = keyspace("numeric");
        assert_eq!(ks.placement_of_range(100, 200), RangePlacement::OneShard(0));
        ks.directory.set(150, Some(2));
        assert_eq!(
            ks.placement_of_range(100, 200),
            RangePlacement::Spans(vec![0, 2])
        );
        // A clone of the keyspace (a snapshot) sees the same directory.
        let copy = ks.clone();
        copy.directory.set(150, None);
        assert_eq!(ks.placement_of_range(100, 200), RangePlacement::OneShard(0));
        ks.directory.set(2500, Some(0));
        assert_eq!(ks.shard_index_for_workspace(2500), 0);
        assert_eq!(
            ks.placement_of_range(2000, 3000),
            RangePlacement::Spans(vec![0, 2])
        );
    }

    #[test]
    fn a_hash_vindex_cannot_place_ranges() {
        let ks = keyspace("xxhash");
        assert_eq!(ks.placement_of_range(1, 2), RangePlacement::Unordered);
        let five = ks.shard_index_for_workspace(5);
        assert_eq!(ks.placement_of_range(5, 5), RangePlacement::OneShard(five));
    }
}
