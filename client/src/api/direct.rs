//! A task's files read straight from the worker that runs it, beside the master's relay.
//!
//! A worker publishes its attempt's events on its own subject, `vgas.worker.<id>.events.<task>`
//! (its grants allow no other), and the master relays each one to the task's subject after it
//! has passed through the results stream: about a millisecond and a half on the path of every
//! file. A follower that subscribed to `vgas.worker.*.events.<task>` before its submit sees the
//! same events as they leave the worker; it takes a file from there only when the master has
//! said (`assigned`, `started`) that this worker runs this attempt, which is the check the
//! relay makes, and holds the few that come before the master's word. Output (stdout,
//! stderr) still comes through the relay only, in order; a file says how much output came
//! before it, so the caller knows when it has all of it. Whatever this path drops (a slow
//! subscriber, a server without the grant) the relay still brings.

use async_nats::Subscriber;
use vgas_shared::codec::decode_as;
use vgas_shared::subjects::Subjects;
use vgas_shared::wire::TaskEvent;
use vgas_shared::{Encoding, WorkerId};

/// Files held until the master names their worker: a task sends few before its `started`
/// can arrive (none, in the usual order); past this the relay brings the rest.
const MAX_HELD: usize = 16;

/// The worker side of one followed task: the subscription, and which workers are believed.
#[derive(Debug)]
pub(super) struct Direct {
    pub(super) events: Subscriber,
    named: Named,
}

impl Direct {
    pub(super) fn new(events: Subscriber) -> Direct {
        Direct {
            events,
            named: Named::default(),
        }
    }

    /// The master named `worker` for `attempt`: the files it sent for that attempt before
    /// this was known, now taken.
    pub(super) fn runs(&mut self, attempt: u32, worker: WorkerId) -> Vec<TaskEvent> {
        self.named.runs(attempt, worker)
    }

    /// A message from a worker's own subject: the file event to take now, if it is one of an
    /// attempt the master gave that worker. Anything else is dropped or held.
    pub(super) fn on_message(
        &mut self,
        subjects: &Subjects,
        msg: &async_nats::Message,
    ) -> Option<TaskEvent> {
        let (worker, _) = subjects.parse_worker_events(&msg.subject)?;
        let payload = &msg.payload;
        let ev = decode_as::<TaskEvent>(Encoding::detect(payload), payload).ok()?;
        self.named.offer(worker, ev)
    }
}

/// Which worker the master named for each attempt, and the files that came before its word.
#[derive(Debug, Default)]
struct Named {
    runs: Vec<(u32, WorkerId)>,
    held: Vec<(WorkerId, TaskEvent)>,
}

impl Named {
    fn runs(&mut self, attempt: u32, worker: WorkerId) -> Vec<TaskEvent> {
        if !self.runs.contains(&(attempt, worker.clone())) {
            self.runs.push((attempt, worker.clone()));
        }
        let (now, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.held)
            .into_iter()
            .partition(|(w, ev)| *w == worker && attempt_of(ev) == Some(attempt));
        self.held = later;
        now.into_iter().map(|(_, ev)| ev).collect()
    }

    fn offer(&mut self, worker: WorkerId, ev: TaskEvent) -> Option<TaskEvent> {
        let attempt = attempt_of(&ev)?;
        if self.runs.contains(&(attempt, worker.clone())) {
            return Some(ev);
        }
        if self.held.len() < MAX_HELD {
            self.held.push((worker, ev));
        }
        None
    }
}

/// The attempt of a file event; `None` for every other kind (output keeps to the relay).
fn attempt_of(ev: &TaskEvent) -> Option<u32> {
    match ev {
        TaskEvent::Artifact { attempt, .. } => Some(*attempt),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(attempt: u32) -> TaskEvent {
        TaskEvent::Artifact {
            attempt,
            path: "vgas-segment.o".into(),
            base64: String::new(),
            object: None,
            size: None,
            mode: None,
            ran_us: None,
            stdout_bytes: Some(0),
            stderr_bytes: Some(0),
        }
    }

    #[test]
    fn only_the_worker_the_master_named_is_believed() {
        let (w1, w2) = (
            WorkerId::parse("w1").unwrap(),
            WorkerId::parse("w2").unwrap(),
        );
        let mut n = Named::default();
        // Before the master's word, a file waits; another worker's for the same attempt too.
        assert_eq!(n.offer(w2.clone(), file(1)), None);
        assert_eq!(n.offer(w1.clone(), file(1)), None);
        assert_eq!(
            n.runs(1, w1.clone()),
            vec![file(1)],
            "w1's, named for attempt 1"
        );
        assert_eq!(
            n.held.len(),
            1,
            "w2's still waits, never taken for attempt 1"
        );
        assert_eq!(
            n.offer(w1.clone(), file(1)),
            Some(file(1)),
            "named: taken at once"
        );
        assert_eq!(n.offer(w2.clone(), file(1)), None, "not named: never taken");
        assert!(
            n.runs(2, w1.clone()).is_empty(),
            "nothing of attempt 2 came"
        );
        let output = TaskEvent::Stdout {
            attempt: 1,
            data: "x".into(),
        };
        assert_eq!(n.offer(w1, output), None, "output keeps to the relay");
        for _ in 0..2 * MAX_HELD {
            n.offer(w2.clone(), file(3));
        }
        assert_eq!(n.held.len(), MAX_HELD, "held up to the bound");
    }
}
