//! How many attempts a worker takes beyond its slots, each waiting here for the next free
//! slot. A slot that ends a task starts the next one at once only if one is waiting; the
//! master's answer to a result (record it, assign the next task, send it) takes about a
//! [`TURNAROUND`], so a slot whose tasks take a tenth of that needs ten waiting to stay busy,
//! and one whose tasks take seconds needs one. With `--queue-ahead` unset the worker offers
//! what its recent tasks' length calls for ([`AheadPolicy::Auto`]); with it, that many
//! always. The offer goes to the master in each heartbeat. The worker takes as many as the
//! larger of its last two offers: until the master has the new one, it may count on the
//! one before, and an assignment refused for that would only go round again.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use crate::MAX_QUEUE_AHEAD;

/// The time from a result leaving a worker to the master's next assignment arriving there,
/// with room: 0.8 ms on an idle 2-core machine (log timestamps), more with 32 tasks in
/// flight, where 4 ms gave a no-op wasm task 7% to 12% more tasks/s than 2 ms in paired
/// runs (docs/benchmarks.md, the queue-ahead section).
pub const TURNAROUND: Duration = Duration::from_millis(4);

/// Most attempts [`AheadPolicy::Auto`] queues per slot: enough to cover [`TURNAROUND`] with
/// tasks of half a millisecond (a no-op wasm task, its result stored); shorter ones gain
/// nothing more, since the master's answers then bound the rate.
pub const AUTO_PER_SLOT_MAX: usize = 8;

/// The weight of the newest run in the running mean of run times: 1/8, so a change in the
/// kind of work shows after a few dozen tasks and one odd task moves little.
const MEAN_SHIFT: u32 = 3;

/// What `--queue-ahead` said.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AheadPolicy {
    /// Exactly this many (0: none, for long tasks that another worker might start sooner).
    Fixed(usize),
    /// As many as the recent tasks' length calls for: one per slot until tasks have run, up
    /// to [`AUTO_PER_SLOT_MAX`] per slot for tasks much shorter than [`TURNAROUND`].
    Auto,
}

/// The queue ahead's size now: its policy, the running mean of run times, and the offer last
/// sent to the master.
#[derive(Debug)]
pub struct QueueAhead {
    policy: AheadPolicy,
    slots: usize,
    /// Running mean of how long a slot was held per attempt, in microseconds; 0 until one ran.
    mean_us: AtomicU64,
    offered: AtomicUsize,
    before: AtomicUsize,
}

impl QueueAhead {
    pub fn new(policy: AheadPolicy, slots: usize) -> Self {
        let q = QueueAhead {
            policy,
            slots,
            mean_us: AtomicU64::new(0),
            offered: AtomicUsize::new(0),
            before: AtomicUsize::new(0),
        };
        q.offer();
        q
    }

    /// The most it may ever offer: the bound of the worker's places beyond its slots.
    pub fn max(&self) -> usize {
        match self.policy {
            AheadPolicy::Fixed(n) => n.min(MAX_QUEUE_AHEAD),
            AheadPolicy::Auto => (self.slots * AUTO_PER_SLOT_MAX).min(MAX_QUEUE_AHEAD),
        }
    }

    /// Counts one attempt's time in its slot.
    pub fn record(&self, held: Duration) {
        let x = u64::try_from(held.as_micros()).unwrap_or(u64::MAX).max(1);
        let _ = self
            .mean_us
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |m| {
                Some(if m == 0 {
                    x
                } else {
                    // m + (x - m) / 8, in signed steps that cannot overflow.
                    let step = (i128::from(x) - i128::from(m)) >> MEAN_SHIFT;
                    u64::try_from(i128::from(m) + step).unwrap_or(m).max(1)
                })
            });
    }

    /// Works out the offer for the next heartbeat, keeps it as the bound on what is taken
    /// ahead until the next one, and returns it.
    pub fn offer(&self) -> usize {
        let n = match self.policy {
            AheadPolicy::Fixed(_) => self.max(),
            AheadPolicy::Auto => {
                let mean = self.mean_us.load(Ordering::Acquire);
                let per_slot = if mean == 0 {
                    1
                } else {
                    let turnaround = TURNAROUND.as_micros() as u64;
                    turnaround.div_ceil(mean) as usize
                };
                (self.slots * per_slot.clamp(1, AUTO_PER_SLOT_MAX)).min(self.max())
            }
        };
        let last = self.offered.swap(n, Ordering::AcqRel);
        self.before.store(last, Ordering::Release);
        n
    }

    /// How many attempts may wait here now: the larger of the last two offers.
    pub fn admits(&self) -> usize {
        let last = self.offered.load(Ordering::Acquire);
        last.max(self.before.load(Ordering::Acquire))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fixed_queue_offers_its_size_whatever_the_tasks_take() {
        let q = QueueAhead::new(AheadPolicy::Fixed(3), 4);
        assert_eq!(q.admits(), 3);
        q.record(Duration::from_micros(50));
        assert_eq!((q.offer(), q.max()), (3, 3));
        let none = QueueAhead::new(AheadPolicy::Fixed(0), 4);
        none.record(Duration::from_micros(50));
        assert_eq!(none.offer(), 0);
    }

    #[test]
    fn auto_offers_one_per_slot_until_short_tasks_call_for_more() {
        let q = QueueAhead::new(AheadPolicy::Auto, 4);
        assert_eq!((q.admits(), q.max()), (4, 4 * AUTO_PER_SLOT_MAX));
        // A millisecond a task: four waiting per slot cover the turnaround.
        for _ in 0..100 {
            q.record(Duration::from_millis(1));
        }
        assert_eq!(q.offer(), 16);
        // Far shorter ones: the most per slot, no more.
        for _ in 0..100 {
            q.record(Duration::from_micros(10));
        }
        assert_eq!(q.offer(), 4 * AUTO_PER_SLOT_MAX);
        // Long tasks again: back to one per slot as the mean follows.
        for _ in 0..100 {
            q.record(Duration::from_secs(2));
        }
        assert_eq!(q.offer(), 4);
        // Until the master has that offer it may count on the one before.
        assert_eq!(q.admits(), 4 * AUTO_PER_SLOT_MAX);
        q.offer();
        assert_eq!(q.admits(), 4);
    }

    #[test]
    fn one_odd_task_moves_the_offer_little() {
        let q = QueueAhead::new(AheadPolicy::Auto, 2);
        for _ in 0..50 {
            q.record(Duration::from_micros(250));
        }
        assert_eq!(q.offer(), 16);
        q.record(Duration::from_millis(3));
        let n = q.offer();
        assert!(n >= 8, "{n}");
    }
}
