//! The attempts a worker keeps track of: the ones running or queued here (for cancel, drain
//! and heartbeats), the ones taken lately (an assignment sent again is acknowledged, not run
//! twice) and the ones cancelled before their assignment came (the master sends the cancel
//! and the assignment from different tasks, and the cancel can come first).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use vgas_shared::TaskId;

/// Attempts this worker remembers having taken, so an assignment sent again (a restarted
/// master re-sends every one it had recorded) is acknowledged, not run twice: far more than
/// a worker runs between two master restarts' worth of assignments. Early cancels are
/// remembered as many.
pub(super) const RECENT_ATTEMPTS: usize = 4096;

/// The attempts seen lately, oldest forgotten first.
#[derive(Debug, Default)]
pub(super) struct RecentAttempts {
    order: VecDeque<(TaskId, u32)>,
    set: HashSet<(TaskId, u32)>,
}

impl RecentAttempts {
    /// Remembers `key`; false when it was already there.
    pub(super) fn insert(&mut self, key: (TaskId, u32)) -> bool {
        if !self.set.insert(key.clone()) {
            return false;
        }
        self.order.push_back(key);
        if self.order.len() > RECENT_ATTEMPTS {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub(super) fn contains(&self, key: &(TaskId, u32)) -> bool {
        self.set.contains(key)
    }
}

/// One running attempt, as cancel and drain see it.
#[derive(Debug)]
pub(super) struct Running {
    pub(super) attempt: u32,
    pub(super) cancel: CancellationToken,
    /// Set when the worker, not the user, stopped the task: report it handed back.
    pub(super) handed_back: Arc<AtomicBool>,
}

/// The attempts here, by task, and the cancels that came before their attempt: one lock,
/// so an attempt is either found by its cancel or finds its cancel.
#[derive(Debug, Default)]
pub(super) struct Attempts {
    pub(super) running: HashMap<TaskId, Running>,
    cancelled_early: RecentAttempts,
}

impl Attempts {
    /// Cancels `attempt` of `task` if it is here; otherwise remembers the cancel for when
    /// its assignment comes.
    pub(super) fn cancel(&mut self, task: TaskId, attempt: u32) {
        match self.running.get(&task) {
            Some(r) if r.attempt == attempt => r.cancel.cancel(),
            _ => {
                self.cancelled_early.insert((task, attempt));
            }
        }
    }

    /// Tracks an attempt whose assignment was taken; one whose cancel came first is
    /// cancelled at once, so it ends without running.
    pub(super) fn start(&mut self, task: TaskId, r: Running) {
        if self.cancelled_early.contains(&(task.clone(), r.attempt)) {
            r.cancel.cancel();
        }
        self.running.insert(task, r);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attempt_is_taken_once_and_the_oldest_are_forgotten_past_the_bound() {
        let mut r = RecentAttempts::default();
        let id = |n: usize| TaskId::parse(&format!("t{n}")).unwrap();
        assert!(r.insert((id(0), 1)));
        assert!(!r.insert((id(0), 1)), "the same attempt again");
        assert!(r.insert((id(0), 2)), "a new attempt of the same task");
        for n in 1..=RECENT_ATTEMPTS {
            assert!(r.insert((id(n), 1)));
        }
        assert_eq!(r.order.len(), RECENT_ATTEMPTS);
        assert_eq!(r.set.len(), RECENT_ATTEMPTS);
        assert!(r.insert((id(0), 1)), "the oldest was forgotten");
    }
}
