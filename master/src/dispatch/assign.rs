//! Assignment, the dispatcher's half that binds queued tasks to workers: Gatling rotation
//! over the queue, the turn's assignment records written together, then each announced and
//! sent (seed: `dispatch_task`), and what happens when a worker refuses or does not answer.

use std::collections::VecDeque;

use async_nats::Client;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::{debug, info_span, warn, Instrument};
use vgas_shared::codec::{decode_as, encode};
use vgas_shared::limits::ASSIGN_ACK_TIMEOUT;
use vgas_shared::wire::{
    AssignAck, Assignment, Needs, TaskEvent, TaskOutcome, TaskRecord, TaskState,
};
use vgas_shared::{now_ms, Encoding, Subjects, TaskId, WorkerId};

use super::{Command, Dispatcher};
use crate::scheduler::NoWorker;

impl Dispatcher {
    /// Hands queued tasks to workers while the scheduler finds room. Every assignment of the
    /// turn is recorded at once (the writes travel together), then each is announced and
    /// sent.
    ///
    /// The scheduler is asked once per distinct `needs` that finds no room in a turn: a
    /// later task with the same needs waits without asking. Unless `whole_queue`, the scan
    /// stops as soon as a task with no needs finds every worker full (nothing else can be
    /// placed then), so a turn costs what it places, not the queue's length (a scan of
    /// 20,000 queued tasks per result had slowed the drain of a batch to a third). Each
    /// tick scans the whole queue, so a task whose wait for a capable worker ran out is
    /// abandoned on time wherever it is.
    pub(super) async fn try_dispatch(&mut self, whole_queue: bool) {
        let mut waiting = VecDeque::new();
        let mut assigned = Vec::new();
        let mut waiting_for_gpus = 0;
        let mut no_room: Vec<(Needs, NoWorker)> = Vec::new();
        // A task with no needs found every worker full: nothing else can be placed now.
        let mut all_full = false;
        let mut scanned_all = true;
        while let Some(id) = self.pending.pop_front() {
            let Some(t) = self.tasks.get(&id) else {
                continue;
            };
            let needs = &t.rec.spec.needs;
            if all_full && !whole_queue {
                // Every worker is full: the rest of the queue stays as it is, in order.
                self.pending.push_front(id);
                scanned_all = false;
                break;
            }
            let known = no_room
                .iter()
                .find(|(n, _)| n == needs)
                .map(|(_, why)| *why);
            let picked = match (known, &needs.gpus) {
                (Some(why), _) => Err(why),
                (None, None) => self
                    .sched
                    .gatling_rotate_next(needs)
                    .map(|w| (w.id.clone(), Vec::new())),
                (None, Some(gpus)) => self
                    .gpus
                    .acquire_cluster_gpu(&self.sched, &id, needs, gpus)
                    .map(|lock| (lock.worker.id.clone(), lock.devices)),
            };
            if let (None, Err(why)) = (known, &picked) {
                all_full |= *why == NoWorker::AllBusy && *needs == Needs::default();
                no_room.push((needs.clone(), *why));
            }
            match picked {
                Ok((worker, gpus)) => {
                    self.bind(&id, &worker, gpus);
                    assigned.push((id, worker));
                }
                Err(NoWorker::AllBusy) if needs.gpus.is_some() => {
                    waiting_for_gpus += 1;
                    waiting.push_back(id);
                }
                Err(NoWorker::NoneCapable)
                    if now_ms().saturating_sub(t.queued_at_ms)
                        >= t.rec.spec.wait_for_worker().as_millis() as u64 =>
                {
                    let caps = &t.rec.spec.needs.capabilities;
                    let message = if caps.is_empty() {
                        format!(
                            "no live worker joined within {}s",
                            t.rec.spec.wait_for_worker().as_secs()
                        )
                    } else {
                        format!(
                            "no live worker offers capabilities {caps:?} (waited {}s)",
                            t.rec.spec.wait_for_worker().as_secs()
                        )
                    };
                    self.finalize(&id, TaskOutcome::Abandoned { message }, None)
                        .await;
                }
                Err(_) => waiting.push_back(id),
            }
        }
        // What waits goes back ahead of what the scan did not reach, in queue order.
        waiting.append(&mut self.pending);
        self.pending = waiting;
        if scanned_all {
            self.counters
                .waiting_for_gpus
                .store(waiting_for_gpus, std::sync::atomic::Ordering::Relaxed);
        }
        if assigned.is_empty() {
            return;
        }
        self.flush_finished().await;
        // Every bound task is still tracked (nothing in between removes one), so records and
        // assignments stay pair for pair.
        let records: Vec<&TaskRecord> =
            assigned.iter().map(|(id, _)| &self.tasks[id].rec).collect();
        let written = self.store.put_all(&records).await;
        for ((id, worker), w) in assigned.into_iter().zip(written) {
            match w {
                Ok(()) => self.dispatch_task(&id, worker).await,
                Err(e) => {
                    warn!(task_id = %id, "could not record assignment, will retry: {e:#}");
                    self.unbind(&id, &worker);
                }
            }
        }
    }

    /// Binds a task to `worker` in memory: its next attempt, assigned now, with the GPUs
    /// leased to it.
    fn bind(&mut self, id: &TaskId, worker: &WorkerId, gpus: Vec<String>) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.rec.attempt += 1;
            t.rec.state = TaskState::Assigned {
                worker: worker.clone(),
                since_ms: now_ms(),
                gpus,
            };
            t.permit = None;
            t.clock = super::Clock::Assigned(now_ms());
            t.unlisted_since = None;
        }
    }

    /// Undoes [`Dispatcher::bind`] when the assignment could not be recorded.
    fn unbind(&mut self, id: &TaskId, worker: &WorkerId) {
        if let Some(t) = self.tasks.get_mut(id) {
            t.rec.attempt -= 1;
            t.rec.state = TaskState::Queued;
        }
        self.free(id, worker);
        self.pending.push_back(id.clone());
    }

    /// Announces an assignment once it is recorded and sends it to `worker` (seed:
    /// `dispatch_task`). The acknowledgement is awaited off the actor; a refusal comes back as
    /// `AssignFailed`.
    pub(super) async fn dispatch_task(&mut self, id: &TaskId, worker: WorkerId) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        let assignment = assignment_of(&t.rec);
        if let Some(reason) = t.retry.take() {
            let (attempt, enc) = (t.rec.attempt, t.rec.encoding);
            self.emit(id, enc, &TaskEvent::Retrying { attempt, reason })
                .await;
        }
        self.announce_assignment(id, &worker).await;
        let (tracker, client, tx) = (&self.tracker, &self.client, &self.tx);
        send(tracker, client, &self.subjects, assignment, worker, tx);
    }

    /// Counts and announces (`assigned`) the current attempt of `id` on `worker`. A task
    /// placed at submit had its assignment sent by the submit itself ([`send`]) already.
    pub(super) async fn announce_assignment(&mut self, id: &TaskId, worker: &WorkerId) {
        let Some(t) = self.tasks.get(id) else {
            return;
        };
        let (attempt, enc) = (t.rec.attempt, t.rec.encoding);
        self.observe
            .dispatched(id, worker, attempt, t.entered_queue_ms);
        let worker = worker.clone();
        self.emit(id, enc, &TaskEvent::Assigned { worker, attempt })
            .await;
    }

    /// A worker refused an assignment or did not acknowledge it: give its slot back and queue
    /// the task again (a refusal is not a lost attempt). If the acknowledgement was only late,
    /// the worker may have started it, so it is told to cancel that attempt. A worker that did
    /// not answer at all gets no new work until its next heartbeat.
    pub(super) async fn on_assign_failed(
        &mut self,
        id: &TaskId,
        attempt: u32,
        reason: String,
        unanswered: bool,
    ) {
        let Some(t) = self.tasks.get(id) else { return };
        let TaskState::Assigned { worker, .. } = &t.rec.state else {
            return;
        };
        if t.rec.attempt != attempt {
            return;
        }
        let worker = worker.clone();
        debug!(task_id = %id, worker = %worker, "assignment failed: {reason}");
        if unanswered {
            self.sched.unanswered(&worker);
        }
        self.free(id, &worker);
        self.send_cancel(id, &worker, attempt).await;
        if t.cancel_requested {
            self.finalize(id, TaskOutcome::Cancelled, None).await;
        } else {
            self.requeue(id, None).await;
        }
    }
}

/// The assignment of `rec`'s current attempt, as its worker gets it (with its GPU leases).
pub fn assignment_of(rec: &TaskRecord) -> Assignment {
    Assignment {
        task_id: rec.task_id.clone(),
        attempt: rec.attempt,
        spec: rec.spec.clone(),
        encoding: rec.encoding,
        gpus: match &rec.state {
            TaskState::Assigned { gpus, .. } => gpus.clone(),
            _ => Vec::new(),
        },
    }
}

/// Sends `assignment` to `worker` and reports the acknowledgement to the dispatcher (`tx`):
/// `Started` when the worker took it, `AssignFailed` otherwise. The wait runs on `tracker`,
/// off the caller.
pub fn send(
    tracker: &TaskTracker,
    client: &Client,
    subjects: &Subjects,
    assignment: Assignment,
    worker: WorkerId,
    tx: &mpsc::Sender<Command>,
) {
    let (client, tx) = (client.clone(), tx.clone());
    let subject = subjects.worker_task(&worker);
    let (task_id, attempt) = (assignment.task_id.clone(), assignment.attempt);
    let span = info_span!("task", task_id = %task_id, worker = %worker, attempt);
    tracker.spawn(
        async move {
            let (reason, unanswered) = match send_assignment(&client, subject, &assignment).await {
                Ok(queued) => {
                    // Announced by the actor, which owns the task's events.
                    let _ = tx
                        .send(Command::Started {
                            task_id,
                            attempt,
                            worker,
                            queued,
                        })
                        .await;
                    return;
                }
                Err(failed) => failed,
            };
            let _ = tx
                .send(Command::AssignFailed {
                    task_id,
                    attempt,
                    reason,
                    unanswered,
                })
                .await;
        }
        .instrument(span),
    );
}

/// Sends an assignment and waits for its acknowledgement: `Ok(queued)`, whether the worker
/// queued it ahead of its slots. `Err` is the reason, and whether nobody answered (no
/// responders, or no answer in time) rather than a refusal.
async fn send_assignment(
    client: &Client,
    subject: String,
    a: &Assignment,
) -> Result<bool, (String, bool)> {
    let bytes = encode(Encoding::MsgPack, a).map_err(|e| (e.to_string(), false))?;
    let reply = tokio::time::timeout(ASSIGN_ACK_TIMEOUT, client.request(subject, bytes.into()))
        .await
        .map_err(|_| ("worker did not acknowledge in time".to_string(), true))?
        .map_err(|e| (format!("worker unreachable: {e}"), true))?;
    let ack: AssignAck =
        decode_as(Encoding::MsgPack, &reply.payload).map_err(|e| (e.to_string(), false))?;
    if ack.accepted {
        Ok(ack.queued)
    } else {
        Err((format!("worker refused: {}", ack.reason), false))
    }
}
