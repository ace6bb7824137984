//! A worker's result read straight from its subject, beside the results stream's copy.
//!
//! The results stream is what makes a result durable and ordered after the attempt's
//! events; reading it costs a store and a delivery (about a quarter of a no-op task's
//! round trip here). The master also subscribes to the result subjects themselves and acts
//! on such a copy at once, but only when the stream has already brought as many of the
//! attempt's events as the result says the worker published before it. Otherwise the copy
//! is dropped and the stream's, which comes anyway, ends the task as before. The worker
//! acknowledged the attempt before it ran, but under load that acknowledgement may reach the
//! actor after the direct copy: `started` is then announced from the copy, first, and the
//! late acknowledgement finds the task gone and announces nothing.
//!
//! Once the task is finished from a direct copy, the stream's copy is a result again for a
//! task this master announces: acknowledged, announced nothing (see `finish.rs`). A master
//! killed after acting on a direct copy has either written the final record (the stream's
//! copy then announces it again, as after any kill) or not (the stream's copy finishes it).

use async_nats::Subscriber;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::debug;
use vgas_shared::wire::{TaskEvent, TaskState, WorkerResult};
use vgas_shared::Subjects;

use super::{Command, Dispatcher};

/// What the master has heard of a task's current attempt before its result: whether its
/// `started` was announced, and how many of the worker's events came through the stream.
#[derive(Debug, Default, Clone, Copy)]
pub(super) struct Heard {
    attempt: u32,
    started: bool,
    events: u32,
}

impl Heard {
    /// Forgets what was heard of an earlier attempt.
    fn of(&mut self, attempt: u32) -> &mut Self {
        if self.attempt != attempt {
            *self = Heard {
                attempt,
                ..Heard::default()
            };
        }
        self
    }

    /// The worker said attempt `attempt` runs (its acknowledgement, or its own `started`).
    pub(super) fn started(&mut self, attempt: u32) {
        self.of(attempt).started = true;
    }

    /// One event of attempt `attempt` came through the results stream.
    pub(super) fn event(&mut self, attempt: u32) {
        let h = self.of(attempt);
        h.events = h.events.saturating_add(1);
    }

    /// Events of `attempt` that came through the stream.
    fn events_of(&self, attempt: u32) -> u32 {
        if self.attempt == attempt {
            self.events
        } else {
            0
        }
    }

    /// Whether `started` was announced for `attempt`.
    pub(super) fn started_of(&self, attempt: u32) -> bool {
        self.attempt == attempt && self.started
    }
}

impl Dispatcher {
    /// A result read straight from the worker's subject: acted on only when it is the
    /// current attempt's and nothing the worker sent before it is still in the stream.
    pub(super) async fn on_direct_result(&mut self, r: WorkerResult) {
        let Some(t) = self.tasks.get(&r.task_id) else {
            // Finished already, or not (yet) ours: the stream's copy decides.
            return;
        };
        let current = matches!(&t.rec.state, TaskState::Assigned { worker, .. } if *worker == r.worker)
            && t.rec.attempt == r.attempt;
        let caught_up = r.events == Some(t.heard.events_of(r.attempt));
        if !current || !caught_up {
            debug!(task_id = %r.task_id, attempt = r.attempt, current, "a direct result waits for the stream's copy");
            return;
        }
        let id = r.task_id.clone();
        if !t.heard.started_of(r.attempt) {
            let (worker, attempt, enc) = (r.worker.clone(), r.attempt, t.rec.encoding);
            self.emit(&id, enc, &TaskEvent::Started { worker, attempt })
                .await;
        }
        if !self.on_result(r).await {
            return;
        }
        self.observe.metrics.result_used(true);
        if let Some(f) = self.finishing.iter_mut().find(|f| f.rec.task_id == id) {
            f.direct = true;
        }
    }
}

/// Reads results straight from the workers' result subjects and hands each well-formed one
/// to the dispatcher (`Command::DirectResult`). Ends with the subscription or the actor.
pub async fn read(mut sub: Subscriber, subjects: Subjects, tx: mpsc::Sender<Command>) {
    while let Some(msg) = sub.next().await {
        match crate::service::result_of(&subjects, &msg.subject, &msg.payload) {
            Ok(result) => {
                if tx.send(Command::DirectResult { result }).await.is_err() {
                    break;
                }
            }
            // The stream's copy of the same message is logged when it is dropped.
            Err(e) => debug!(subject = %msg.subject, "ignoring a direct result: {e}"),
        }
    }
}
