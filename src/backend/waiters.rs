//! The checkouts waiting for a pool's lease, counted by lane: one lane per session
//! worker (worker `w` waits in lane `w % LANES`, everything that is not a worker in
//! lane 0).
//!
//! A lease that ends while checkouts wait is handed on to a waiter, never freed for a
//! newcomer. Which waiter: one of the worker the lease ended on, when it has one. Its
//! wake-up then stays on that thread (a wake-up of another worker is a system call to
//! its event loop and a context switch), and so does the connection: the waiter takes
//! the connection that was just given back, whose socket is registered with that same
//! worker. Waiters of other workers are not starved: after [`STREAK`] leases handed on
//! in a row within its own lane while another lane has a waiter without one, a lane
//! hands the next one to the other lane. Within a lane the longest waiting is served
//! first (the lane's `Notify` wakes in order).

/// Lanes of a pool; a worker beyond them shares a lane (only its wake-ups cost more).
pub const LANES: usize = 8;

/// Leases a lane hands on within itself in a row while another lane has a waiter
/// without one; the next goes to that lane.
pub const STREAK: u32 = 8;

/// The lane of session worker `worker` (0 off the workers).
pub fn lane_of(worker: u16) -> usize {
    usize::from(worker) % LANES
}

#[derive(Debug, Default, Clone, Copy)]
struct Lane {
    /// Checkouts of this lane waiting for a lease.
    waiting: usize,
    /// Leases handed on to this lane's waiters, not yet taken: at most `waiting`.
    granted: usize,
    /// Leases handed on within this lane in a row while another lane had a waiter
    /// without one.
    streak: u32,
}

impl Lane {
    fn unserved(&self) -> usize {
        self.waiting.saturating_sub(self.granted)
    }
}

/// Every lane's counts, and their sums.
#[derive(Debug, Default)]
pub struct Waiters {
    waiting: usize,
    granted: usize,
    lanes: [Lane; LANES],
}

impl Waiters {
    /// Checkouts waiting, in all lanes.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Leases handed on and not yet taken, in all lanes.
    #[cfg(test)]
    pub fn granted(&self) -> usize {
        self.granted
    }

    /// A checkout of `lane` starts to wait.
    pub fn join(&mut self, lane: usize) {
        self.waiting += 1;
        self.lanes[lane].waiting += 1;
    }

    /// A lease ended on a thread of the lane `own` returns: the lane whose waiter gets
    /// it (count it there and wake one of that lane), or None when every waiter has one
    /// already (the lease is freed). `own` is asked only when someone waits: nearly
    /// every lease ends with nobody waiting.
    pub fn hand_on(&mut self, own: impl FnOnce() -> usize) -> Option<usize> {
        let unserved = self.waiting.saturating_sub(self.granted);
        if unserved == 0 {
            return None;
        }
        let own = own();
        let mine = self.lanes[own].unserved();
        let others = unserved > mine;
        let lane = if mine > 0 && (!others || self.lanes[own].streak < STREAK) {
            self.lanes[own].streak = if others {
                self.lanes[own].streak + 1
            } else {
                0
            };
            own
        } else {
            self.lanes[own].streak = 0;
            self.other_unserved(own)?
        };
        self.grant(lane);
        Some(lane)
    }

    /// A waiter of `lane` takes a lease handed on to its lane; false when there is none.
    pub fn take_grant(&mut self, lane: usize) -> bool {
        let l = &mut self.lanes[lane];
        if l.granted == 0 {
            return false;
        }
        l.granted -= 1;
        l.waiting = l.waiting.saturating_sub(1);
        self.granted -= 1;
        self.waiting = self.waiting.saturating_sub(1);
        true
    }

    /// A waiter of `lane` leaves without a lease (its deadline, or its client went
    /// away). A lease handed on to its lane that no waiter of the lane is left to take
    /// goes to another lane's waiter: `Some(Some(lane))`, wake one there; or, when
    /// nobody else waits without one, `Some(None)`: the caller frees it.
    pub fn leave(&mut self, lane: usize) -> Option<Option<usize>> {
        self.waiting = self.waiting.saturating_sub(1);
        let l = &mut self.lanes[lane];
        l.waiting = l.waiting.saturating_sub(1);
        if l.granted <= l.waiting {
            return None;
        }
        l.granted -= 1;
        self.granted -= 1;
        let to = self.other_unserved(lane);
        if let Some(to) = to {
            self.grant(to);
        }
        Some(to)
    }

    fn grant(&mut self, lane: usize) {
        self.lanes[lane].granted += 1;
        self.granted += 1;
    }

    /// The next lane after `own`, in turn, with a waiter that has no lease yet.
    fn other_unserved(&self, own: usize) -> Option<usize> {
        (1..LANES)
            .map(|d| (own + d) % LANES)
            .find(|&m| self.lanes[m].unserved() > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_goes_to_a_waiter_of_its_own_lane_first() {
        let mut w = Waiters::default();
        w.join(2); // waiting longer, on the other worker
        w.join(1);
        assert_eq!(w.hand_on(|| 1), Some(1));
        assert!(w.take_grant(1));
        // Lane 1 has nobody left: lane 2's waiter gets the next.
        assert_eq!(w.hand_on(|| 1), Some(2));
        assert!(!w.take_grant(1));
        assert!(w.take_grant(2));
        assert_eq!((w.waiting(), w.granted()), (0, 0));
        // Nobody waits: the lease is freed.
        assert_eq!(w.hand_on(|| 1), None);
    }

    #[test]
    fn another_lane_gets_a_lease_after_a_streak_of_its_own() {
        let mut w = Waiters::default();
        w.join(2);
        let mut given = Vec::new();
        for _ in 0..(2 * STREAK + 2) {
            // Lane 1 always has a new waiter; lane 2's one waits until served.
            w.join(1);
            let lane = w.hand_on(|| 1);
            given.push(lane);
            if let Some(lane) = lane {
                assert!(w.take_grant(lane));
            }
            if lane == Some(2) {
                w.join(2);
            }
        }
        let to_two: Vec<usize> = given
            .iter()
            .enumerate()
            .filter(|(_, l)| **l == Some(2))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(to_two, vec![STREAK as usize, 2 * STREAK as usize + 1]);
    }

    #[test]
    fn a_grant_left_behind_goes_to_another_lane_or_is_freed() {
        let mut w = Waiters::default();
        w.join(1);
        w.join(2);
        assert_eq!(w.hand_on(|| 1), Some(1));
        // Lane 1's waiter leaves before it takes its lease: lane 2's gets it.
        assert_eq!(w.leave(1), Some(Some(2)));
        assert!(w.take_grant(2));
        assert_eq!((w.waiting(), w.granted()), (0, 0));
        // With nobody else waiting the lease is freed.
        w.join(3);
        assert_eq!(w.hand_on(|| 3), Some(3));
        assert_eq!(w.leave(3), Some(None));
        assert_eq!((w.waiting(), w.granted()), (0, 0));
        // A waiter leaving with no lease handed to its lane changes nothing else.
        w.join(1);
        assert_eq!(w.leave(1), None);
        assert_eq!((w.waiting(), w.granted()), (0, 0));
    }

    #[test]
    fn counts_stay_consistent_under_any_order_of_events() {
        // A small deterministic generator: joins, hand-ons from any lane, takes and
        // leaves, checking after each step that no lane holds more grants than waiters
        // and that the sums are the lanes' sums.
        let mut w = Waiters::default();
        let mut seq = crate::testing::xorshift(0x2545_f491_4f6c_dd1d);
        let mut next = |n: u64| (seq() % n) as usize;
        let mut freed = 0usize;
        for _ in 0..20_000 {
            let lane = next(LANES as u64);
            match next(4) {
                0 => w.join(lane),
                1 => {
                    if w.hand_on(|| lane).is_none() {
                        // Freed only when every waiter has a lease handed to it.
                        assert!(w.lanes.iter().all(|l| l.unserved() == 0));
                        freed += 1;
                    }
                }
                2 => {
                    let _ = w.take_grant(lane);
                }
                _ => {
                    if w.lanes[lane].waiting > 0 && w.leave(lane) == Some(None) {
                        assert!(w.lanes.iter().all(|l| l.unserved() == 0));
                        freed += 1;
                    }
                }
            }
            let (sw, sg) = w
                .lanes
                .iter()
                .fold((0, 0), |(a, b), l| (a + l.waiting, b + l.granted));
            assert_eq!((sw, sg), (w.waiting, w.granted));
            for l in &w.lanes {
                assert!(l.granted <= l.waiting, "{:?}", w.lanes);
            }
        }
        assert!(freed > 0);
    }
}
