//! The attempts a worker keeps track of: the ones running or queued here (for cancel, drain
//! and heartbeats), the ones taken lately (an assignment sent again is acknowledged, not run
//! twice, and answered with the attempt's result again if it has ended) and the ones cancelled before their assignment came (the master sends the cancel
//! and the assignment from different tasks, and the cancel can come first).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use vgas_shared::wire::{TaskOutcome, WorkerResult};
use vgas_shared::TaskId;

/// Attempts this worker remembers having taken, so an assignment sent again (a restarted
/// master re-sends every one it had recorded) is acknowledged, not run twice, and one that
/// has ended is answered with its result again: far more than a worker runs between two
/// master restarts' worth of assignments. Early cancels are remembered as many. A result is
/// a few hundred bytes (the outcome and counts; output and files travel as events), so the
/// results kept stay near a megabyte (16 MiB at worst, see [`KEPT_MESSAGE_BYTES`]).
pub(super) const RECENT_ATTEMPTS: usize = 4096;

/// The longest outcome message a kept result holds: results are a few hundred bytes, but an
/// error's message (a trap's backtrace) can be long, and 4,096 kept results must stay near a
/// few megabytes at worst (16 MiB). A result sent again carries the message cut here.
const KEPT_MESSAGE_BYTES: usize = 4096;

/// The message an outcome carries, if any.
fn message_of(outcome: &mut TaskOutcome) -> Option<&mut String> {
    match outcome {
        TaskOutcome::Signaled { message, .. }
        | TaskOutcome::LimitExceeded { message, .. }
        | TaskOutcome::Error { message }
        | TaskOutcome::Abandoned { message } => Some(message),
        TaskOutcome::Exited { .. } | TaskOutcome::TimedOut { .. } | TaskOutcome::Cancelled => None,
    }
}

/// Cuts `message` to at most `max` bytes at a character boundary, saying so.
fn cut(message: &mut String, max: usize) {
    const MORE: &str = " (cut)";
    if message.len() <= max {
        return;
    }
    let mut end = max - MORE.len();
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    message.truncate(end);
    message.push_str(MORE);
}

/// The attempts seen lately, oldest forgotten first, each with its result once it ended.
#[derive(Debug, Default)]
pub(super) struct RecentAttempts {
    order: VecDeque<(TaskId, u32)>,
    seen: HashMap<(TaskId, u32), Option<WorkerResult>>,
}

impl RecentAttempts {
    /// Remembers `key`; false when it was already there.
    pub(super) fn insert(&mut self, key: (TaskId, u32)) -> bool {
        if self.seen.contains_key(&key) {
            return false;
        }
        self.seen.insert(key.clone(), None);
        self.order.push_back(key);
        if self.order.len() > RECENT_ATTEMPTS {
            if let Some(old) = self.order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    pub(super) fn contains(&self, key: &(TaskId, u32)) -> bool {
        self.seen.contains_key(key)
    }

    /// Keeps the result of an attempt remembered here (one forgotten meanwhile stays so), its
    /// message cut to [`KEPT_MESSAGE_BYTES`].
    pub(super) fn ended(&mut self, r: &WorkerResult) {
        if let Some(kept) = self.seen.get_mut(&(r.task_id.clone(), r.attempt)) {
            let mut r = r.clone();
            if let Some(message) = message_of(&mut r.outcome) {
                cut(message, KEPT_MESSAGE_BYTES);
            }
            *kept = Some(r);
        }
    }

    /// The result of an attempt that ended here, if it is still remembered.
    pub(super) fn result(&self, key: &(TaskId, u32)) -> Option<&WorkerResult> {
        self.seen.get(key)?.as_ref()
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
        assert_eq!(r.seen.len(), RECENT_ATTEMPTS);
        assert!(r.insert((id(0), 1)), "the oldest was forgotten");
    }

    #[test]
    fn an_ended_attempt_keeps_its_result_until_it_is_forgotten() {
        let mut r = RecentAttempts::default();
        let id = |n: usize| TaskId::parse(&format!("t{n}")).unwrap();
        let result = |n: usize| WorkerResult {
            task_id: id(n),
            attempt: 1,
            worker: vgas_shared::WorkerId::parse("w1").unwrap(),
            outcome: TaskOutcome::Exited { exit_code: 3 },
            duration_ms: 1,
            handed_back: false,
            events: Some(0),
        };
        r.insert((id(0), 1));
        assert_eq!(r.result(&(id(0), 1)), None, "still running");
        r.ended(&result(0));
        assert_eq!(r.result(&(id(0), 1)), Some(&result(0)));
        r.ended(&result(1));
        assert!(
            !r.contains(&(id(1), 1)),
            "an attempt never taken is not remembered"
        );
        for n in 2..=RECENT_ATTEMPTS + 1 {
            r.insert((id(n), 1));
        }
        assert_eq!(r.result(&(id(0), 1)), None, "forgotten past the bound");
    }

    #[test]
    fn a_kept_result_has_its_long_message_cut_at_a_character() {
        let mut r = RecentAttempts::default();
        let id = TaskId::parse("t1").unwrap();
        r.insert((id.clone(), 1));
        let long = "é".repeat(KEPT_MESSAGE_BYTES);
        r.ended(&WorkerResult {
            task_id: id.clone(),
            attempt: 1,
            worker: vgas_shared::WorkerId::parse("w1").unwrap(),
            outcome: TaskOutcome::Error { message: long },
            duration_ms: 1,
            handed_back: false,
            events: Some(0),
        });
        let Some(TaskOutcome::Error { message }) = r.result(&(id, 1)).map(|k| &k.outcome) else {
            panic!("no kept error");
        };
        assert!(message.len() <= KEPT_MESSAGE_BYTES, "{}", message.len());
        assert!(message.ends_with(" (cut)"));
        assert!(message.starts_with("éé"));
    }
}
