//! A worker's result offered straight to the leading master, outside JetStream.
//!
//! The results stream is what makes a result durable while no master takes it, and orders
//! it after the attempt's events; storing it, delivering it and acknowledging it cost about
//! a quarter of a no-op task's round trip here. So a worker first offers each result on its
//! direct subject (`Subjects::result_direct`, a request). The master takes it only when it
//! is the current attempt's and the stream has already brought as many of the attempt's
//! events as the result says the worker published before it; then the task's final record
//! is written, `finished` announced, and the worker answered `RESULT_TAKEN` right after, as
//! a stream result is acknowledged (`finish.rs`). Any other case is answered at once with
//! anything else, and the worker stores the result in the stream, which ends the task as it
//! always did. A master killed before answering leaves the worker unanswered: it stores the
//! result, and the next master finds the task either still assigned (finished by it) or
//! finished by this very result (announced again, as after any kill, see `finish.rs`).
//!
//! The worker acknowledged the attempt before it ran, but under load that acknowledgement
//! may reach the actor after the result, and an attempt the worker queued ahead of its slots
//! says `started` itself only if it runs long enough: either way `started` is then
//! announced from the result, first (`Dispatcher::on_result`, for the stream's copy too),
//! and a late acknowledgement finds the task gone and announces nothing.

use async_nats::Subscriber;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::mpsc;
use tracing::debug;
use vgas_shared::wire::{TaskState, WorkerResult};
use vgas_shared::Subjects;

use super::{Command, Dispatcher, ResultAck};

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
    /// A result offered straight by its worker: taken only when it is the current attempt's
    /// and nothing the worker sent before it is still in the stream, and answered on `reply`
    /// (taken once the task is recorded and announced; declined at once otherwise).
    pub(super) async fn on_direct_result(
        &mut self,
        r: WorkerResult,
        reply: Option<async_nats::Subject>,
    ) {
        let id = r.task_id.clone();
        if self.take_direct(r).await {
            if let Some(f) = self.finishing.iter_mut().find(|f| f.rec.task_id == id) {
                if let Some(reply) = reply {
                    let client = self.client.clone();
                    f.acks.push(ResultAck::Direct { client, reply });
                }
                self.observe.metrics.result_used(true);
                return;
            }
        }
        // Declined: the worker stores it in the stream, whose copy decides.
        if let Some(reply) = reply {
            decline(&self.client, reply).await;
        }
    }

    /// Acts on a direct result if it may: whether it ended its task's attempt.
    async fn take_direct(&mut self, r: WorkerResult) -> bool {
        let Some(t) = self.tasks.get(&r.task_id) else {
            // Finished already, or not (yet) ours: the stream's copy decides.
            return false;
        };
        let current = matches!(&t.rec.state, TaskState::Assigned { worker, .. } if *worker == r.worker)
            && t.rec.attempt == r.attempt;
        let caught_up = r.events == Some(t.heard.events_of(r.attempt));
        if !current || !caught_up || r.handed_back {
            debug!(task_id = %r.task_id, attempt = r.attempt, current, "a direct result goes through the stream");
            return false;
        }
        // Its `started`, if unheard, is announced first there.
        self.on_result(r).await
    }
}

/// The answer to a direct result this master did not take (anything but `RESULT_TAKEN`).
const DECLINED: &[u8] = b"stream";

/// Tells a worker its offered result was not taken: it stores it in the results stream.
async fn decline(client: &async_nats::Client, reply: async_nats::Subject) {
    if let Err(e) = client.publish(reply, Bytes::from_static(DECLINED)).await {
        debug!("could not decline a direct result: {e}");
    }
}

/// Reads the results workers offer straight to this master and hands each well-formed one
/// to the dispatcher (`Command::DirectResult`); a malformed one is declined here, and its
/// worker's stored copy is logged and dropped by the results consumer. Ends with the
/// subscription or the actor.
pub async fn read(
    mut sub: Subscriber,
    client: async_nats::Client,
    subjects: Subjects,
    tx: mpsc::Sender<Command>,
) {
    while let Some(msg) = sub.next().await {
        match crate::service::result_of(&subjects, &msg.subject, &msg.payload) {
            Ok(result) => {
                let reply = msg.reply;
                if tx
                    .send(Command::DirectResult { result, reply })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Err(e) => {
                debug!(subject = %msg.subject, "declining a direct result: {e}");
                if let Some(reply) = msg.reply {
                    decline(&client, reply).await;
                }
            }
        }
    }
}
