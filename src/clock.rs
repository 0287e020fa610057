//! One epoch for the windows that count whole seconds: a cluster's latency and error
//! window (`metrics::ClusterStats`) and the per-workspace error window
//! (`health::WorkspaceErrors`). A session turns a clock reading into seconds at most
//! once (`Session::clock_second`) and hands the same second to both.

use std::sync::OnceLock;
use std::time::Instant;

static EPOCH: OnceLock<Instant> = OnceLock::new();

/// The epoch: the first call's instant (the server calls it at start).
pub fn epoch() -> Instant {
    *EPOCH.get_or_init(Instant::now)
}

/// Whole seconds from the epoch to `at` (0 for an instant before it).
pub fn second(at: Instant) -> u64 {
    at.saturating_duration_since(epoch()).as_secs()
}

/// Whole seconds from the epoch to now.
pub fn now_second() -> u64 {
    second(Instant::now())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn seconds_count_from_the_epoch_and_never_go_below_zero() {
        let e = epoch();
        assert_eq!(second(e), 0);
        assert_eq!(second(e + Duration::from_millis(2_500)), 2);
        assert_eq!(second(e + Duration::from_secs(61)), 61);
        assert_eq!(epoch(), e, "the epoch is fixed once read");
        if let Some(before) = e.checked_sub(Duration::from_secs(5)) {
            assert_eq!(second(before), 0);
        }
    }
}
