//! Worker events to task events: a worker publishes its attempt's events (started, output,
//! artifacts) on its own subject, `vgas.worker.<id>.events.<task>`, which a node's grants
//! allow only for itself; the master relays one to `vgas.task.<id>.events` only while the
//! task is assigned to that worker and the event is of that attempt. So no worker can put
//! output, or a `finished`, into another's task.
//!
//! Order: a worker publishes its events before its result, on one connection, and the
//! master reads both on one connection; the server sends the plain events on at once but the
//! result only after the results stream has stored it, so every event of an attempt is in the
//! events subscription before its result reaches the actor. [`Dispatcher::relay_received`]
//! relays what is there before a result is handled, and so before its `finished`.

use async_nats::{Message, Subscriber};
use futures::{FutureExt, StreamExt};
use tracing::{debug, warn};
use vgas_shared::codec::decode;
use vgas_shared::limits::MAX_EVENT_BYTES;
use vgas_shared::wire::{TaskEvent, TaskState};

use super::Dispatcher;

/// Most events relayed in one catch-up before a result: the events subscription's own bound
/// (async-nats' default channel capacity), so one catch-up empties it.
const MAX_RELAYED_AT_ONCE: usize = 64 * 1024;

impl Dispatcher {
    /// Relays every worker event already received, without waiting for more.
    pub(super) async fn relay_received(&mut self, events: &mut Subscriber) {
        for _ in 0..MAX_RELAYED_AT_ONCE {
            match events.next().now_or_never() {
                Some(Some(msg)) => self.relay(msg).await,
                _ => break,
            }
        }
    }

    /// Relays one worker event to its task's subject if that worker runs that attempt now.
    pub(super) async fn relay(&mut self, msg: Message) {
        let Some((worker, task_id)) = self.subjects.parse_worker_events(&msg.subject) else {
            debug!(subject = %msg.subject, "dropping an event on a subject that names no task");
            return;
        };
        let Some(t) = self.tasks.get(&task_id) else {
            debug!(%task_id, %worker, "dropping an event for a task no longer running");
            return;
        };
        let assigned =
            matches!(&t.rec.state, TaskState::Assigned { worker: w, .. } if *w == worker);
        let current = t.rec.attempt;
        let ev = match decode::<TaskEvent>(&msg.payload, MAX_EVENT_BYTES) {
            Ok((ev, _)) => ev,
            Err(e) => {
                warn!(%task_id, %worker, "dropping a malformed worker event: {e}");
                return;
            }
        };
        let attempt = match &ev {
            TaskEvent::Started { worker: w, attempt } if *w == worker => *attempt,
            TaskEvent::Stdout { attempt, .. }
            | TaskEvent::Stderr { attempt, .. }
            | TaskEvent::Artifact { attempt, .. } => *attempt,
            // Assignment, retry and the end are the master's to say; a start names its worker.
            TaskEvent::Started { .. }
            | TaskEvent::Assigned { .. }
            | TaskEvent::Retrying { .. }
            | TaskEvent::Finished { .. } => {
                warn!(%task_id, %worker, "dropping an event a worker may not send");
                return;
            }
        };
        if !assigned || attempt != current {
            // Late output of a lost attempt, or a worker speaking for a task not its own.
            debug!(%task_id, %worker, attempt, current, "dropping an event of another attempt");
            return;
        }
        let subject = self.subjects.task_events(&task_id);
        if let Err(e) = self.client.publish(subject, msg.payload).await {
            warn!(%task_id, "could not relay a task event: {e}");
        }
    }
}
