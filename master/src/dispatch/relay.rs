//! Worker events to task events: a worker publishes its attempt's output and artifacts on its
//! own subject, `vgas.worker.<id>.events.<task>`, which a node's grants allow only for
//! itself; the master relays one to `vgas.task.<id>.events` only while the task is assigned
//! to that worker and the event is of that attempt (or that attempt was lost and the task
//! waits to run again: its result may yet end the task). So no worker can put output, or a
//! `finished`, into another's task. `assigned`, `started`, `retrying` and `finished` are the
//! master's alone; a worker's own `started` (an attempt it queued ahead of its slots took a
//! slot) is taken as word that the attempt runs, and announced as the master's.
//!
//! Order and durability: the results stream captures the worker event subjects too, so a
//! worker's events and its result reach the master in the order the worker sent them (events
//! first), through one consumer, and events sent while no master runs wait there for the next.

use bytes::Bytes;
use tracing::{debug, warn};
use vgas_shared::codec::decode;
use vgas_shared::limits::MAX_EVENT_BYTES;
use vgas_shared::wire::{TaskEvent, TaskState};
use vgas_shared::{now_ms, TaskId, WorkerId};

use super::{Clock, Dispatcher};

impl Dispatcher {
    /// A worker acknowledged attempt `attempt`: `started`, if that attempt is still the one.
    /// One it queued ahead of its slots starts later, when the worker says so ([`relay`]):
    /// until then its deadline waits too.
    pub(super) async fn on_started(
        &mut self,
        id: &TaskId,
        attempt: u32,
        worker: WorkerId,
        queued: bool,
    ) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let current = matches!(&t.rec.state, TaskState::Assigned { worker: w, .. } if *w == worker)
            && t.rec.attempt == attempt;
        if !current {
            return;
        }
        if queued {
            // Its own `started` may have come first, through the results stream.
            if !matches!(t.clock, Clock::Started(_)) {
                t.clock = Clock::Queued(now_ms());
            }
            return;
        }
        // An assignment sent again (a restart, the audit) is acknowledged again: announced
        // once.
        if t.heard.started_of(attempt) {
            return;
        }
        t.heard.started(attempt);
        let enc = t.rec.encoding;
        self.emit(id, enc, &TaskEvent::Started { worker, attempt })
            .await;
    }

    /// Relays one worker event to its task's subject if that worker runs that attempt now.
    pub(super) async fn relay(
        &mut self,
        worker: WorkerId,
        task_id: TaskId,
        payload: Bytes,
        seq: u64,
    ) {
        let Some(t) = self.tasks.get_mut(&task_id) else {
            debug!(%task_id, %worker, "dropping an event for a task no longer running");
            return;
        };
        let assigned =
            matches!(&t.rec.state, TaskState::Assigned { worker: w, .. } if *w == worker);
        let current = t.rec.attempt;
        let ev = match decode::<TaskEvent>(&payload, MAX_EVENT_BYTES) {
            Ok((ev, _)) => ev,
            Err(e) => {
                warn!(%task_id, %worker, "dropping a malformed worker event: {e}");
                return;
            }
        };
        let attempt = match &ev {
            TaskEvent::Stdout { attempt, .. }
            | TaskEvent::Stderr { attempt, .. }
            | TaskEvent::Artifact { attempt, .. } => *attempt,
            // An attempt it had queued ahead of its slots took a slot: announced as the
            // master's own event, and its deadline counts from now.
            TaskEvent::Started { worker: w, attempt } if *w == worker => {
                if assigned && *attempt == current {
                    let (attempt, enc) = (*attempt, t.rec.encoding);
                    t.clock = Clock::Started(now_ms());
                    t.heard.started(attempt);
                    t.heard.event(attempt);
                    self.emit(&task_id, enc, &TaskEvent::Started { worker, attempt })
                        .await;
                }
                return;
            }
            TaskEvent::Started { .. }
            | TaskEvent::Assigned { .. }
            | TaskEvent::Retrying { .. }
            | TaskEvent::Finished { .. } => {
                warn!(%task_id, %worker, "dropping an event a worker may not send");
                return;
            }
        };
        // Output of the lost attempt, while the task waits to run again: that attempt may
        // still end the task (see `Dispatcher::on_result`), so what it printed is relayed.
        let lost_waiting = matches!(t.rec.state, TaskState::Queued)
            && t.lost.as_ref() == Some(&(worker.clone(), attempt));
        if !(assigned || lost_waiting) || attempt != current {
            // Output of a lost attempt overtaken by another, or a worker speaking for a task
            // not its own.
            debug!(%task_id, %worker, attempt, current, "dropping an event of another attempt");
            return;
        }
        t.heard.event(attempt);
        let subject = self.subjects.task_events(&task_id);
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(
            vgas_shared::wire::HEADER_EVENT_SEQ,
            seq.to_string().as_str(),
        );
        if let Err(e) = self
            .client
            .publish_with_headers(subject, headers, payload)
            .await
        {
            warn!(%task_id, "could not relay a task event: {e}");
        }
    }
}
