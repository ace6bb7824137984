//! A task's end, in this order: its final record written, its `finished` event announced,
//! the result that led to it acknowledged. A final record that could not be written (the
//! tasks stream between leaders, a server restarting) holds back the other two and is
//! written again until it is: a task is announced only once it is durably finished, and a
//! master killed meanwhile gets its result again from the stream.
//!
//! A master killed after the final record was written but before its result was
//! acknowledged may or may not have announced it: the next master, given that result again,
//! finds the task finished by that very result and announces it (`announce_again`). Never
//! zero `finished` events; two, identical, only if the kill fell between the announcement
//! and the acknowledgement, which leave one after the other on the same connection.
//!
//! A master that lives on (a server of a cluster killed under it, a new term after a lost
//! lease) may get a result again whose acknowledgement was lost with that server: it
//! remembers what it announced lately ([`Announced`], kept from term to term) and what it
//! has yet to write, and announces neither again.
//!
//! A master standing by hears the leader's `finished` announcements too
//! ([`Announced::hear`]), so when it takes over from a leader killed between announcing a
//! task and acknowledging its result, it finds the task announced already and stays silent.
//! Only a master that takes over without having stood by (the first after a restart of the
//! only one) can still announce such a task a second time.

use std::borrow::Cow;
use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::Subscriber;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::oneshot;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vgas_shared::codec::decode_as;
use vgas_shared::wire::{TaskEvent, TaskOutcome, TaskRecord, TaskState, WorkerResult};
use vgas_shared::{now_ms, Encoding, TaskId, WorkerId};

use super::{Dispatcher, Finishing};
use crate::retention::FinalWrite;
use crate::store::RESULT_ACK_WAIT;

/// The pause after a failed final write before the next try: a cluster elects a new stream
/// leader in a few seconds, and trying on every turn meanwhile only adds load.
pub(super) const REWRITE_AFTER: Duration = Duration::from_millis(500);

/// How long a master remembers a task it announced: a result whose acknowledgement was lost
/// comes again `RESULT_ACK_WAIT` later, and again each `RESULT_ACK_WAIT` while the stream
/// has no leader to take the acknowledgement; a dozen of those covers any election.
const ANNOUNCED_FOR: Duration = Duration::from_secs(12 * RESULT_ACK_WAIT.as_secs());

/// At most this many tasks remembered (about 100 bytes each): a minute of the fastest
/// task rate measured here, with room. Past it the oldest go first, and a lost
/// acknowledgement of one of those could announce its task twice.
const ANNOUNCED_MAX: usize = 200_000;

/// What answers one result once its task is recorded and announced, sent by the actor itself
/// right after the task's `finished` event on the same connection: a master killed in
/// between (the one moment that makes the next master announce it again) is as short as it
/// can be.
#[derive(Debug)]
pub enum ResultAck {
    /// A result read from the results stream: its message acknowledged (unless the consumer
    /// does that itself), then `done` tells the results consumer that one more may come.
    Stream {
        msg: Option<Box<async_nats::jetstream::Message>>,
        done: oneshot::Sender<()>,
    },
    /// A result its worker offered straight to this master ([`super::direct`]): answered
    /// [`vgas_shared::wire::RESULT_TAKEN`], so the worker does not store it.
    Direct {
        client: async_nats::Client,
        reply: async_nats::Subject,
    },
}

impl ResultAck {
    pub async fn send(self) {
        match self {
            ResultAck::Stream { msg, done } => {
                if let Some(msg) = msg {
                    if let Err(e) = msg.ack().await {
                        warn!("could not acknowledge a result: {e}");
                    }
                }
                let _ = done.send(());
            }
            ResultAck::Direct { client, reply } => {
                let taken = Bytes::from_static(vgas_shared::wire::RESULT_TAKEN);
                if let Err(e) = client.publish(reply, taken).await {
                    warn!("could not tell a worker its result was taken: {e}");
                }
            }
        }
    }
}

/// The tasks this master process announced lately, oldest first, shared by its terms.
#[derive(Clone, Debug, Default)]
pub struct Announced(Arc<Mutex<AnnouncedInner>>);

#[derive(Debug, Default)]
struct AnnouncedInner {
    order: VecDeque<(Instant, TaskId)>,
    ids: HashSet<TaskId>,
}

impl Announced {
    fn lock(&self) -> std::sync::MutexGuard<'_, AnnouncedInner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn insert(&self, id: &TaskId) {
        let now = Instant::now();
        let mut inner = self.lock();
        while let Some((at, _)) = inner.order.front() {
            let expired = now.duration_since(*at) > ANNOUNCED_FOR;
            if !expired && inner.order.len() < ANNOUNCED_MAX {
                break;
            }
            if let Some((_, old)) = inner.order.pop_front() {
                inner.ids.remove(&old);
            }
        }
        if inner.ids.insert(id.clone()) {
            inner.order.push_back((now, id.clone()));
        }
    }

    fn contains(&self, id: &TaskId) -> bool {
        self.lock().ids.contains(id)
    }

    /// Notes every task whose `finished` event comes on `sub` (a subscription to
    /// `Subjects::all_task_events`), until `stop`: run while this master stands by, so the
    /// leader's announcements count as this master's own when it takes over. Only masters
    /// may publish there (see `Subjects::permissions`), so nothing else can make a task look
    /// announced.
    pub async fn hear(&self, mut sub: Subscriber, stop: CancellationToken) {
        loop {
            let msg = tokio::select! {
                _ = stop.cancelled() => break,
                msg = sub.next() => match msg {
                    Some(msg) => msg,
                    None => break,
                },
            };
            if let Some(id) = finished_task(&msg.payload) {
                self.insert(&id);
            }
        }
        let _ = sub.unsubscribe().await;
    }
}

/// The tag of a `finished` event, as both encodings carry it.
const FINISHED: &[u8] = b"finished";

/// The task a `finished` event on a task's subject names; `None` for any other event.
/// Output and the other events are passed over without being decoded: only a payload that
/// holds the tag's bytes is.
fn finished_task(payload: &[u8]) -> Option<TaskId> {
    if !payload.windows(FINISHED.len()).any(|w| w == FINISHED) {
        return None;
    }
    match decode_as(Encoding::detect(payload), payload) {
        Ok(TaskEvent::Finished { task_id, .. }) => Some(task_id),
        _ => None,
    }
}

impl Dispatcher {
    /// Ends a task with its one final result: forgotten here at once, recorded and announced
    /// with the others of this turn by [`Dispatcher::flush_finished`].
    pub(super) async fn finalize(
        &mut self,
        id: &TaskId,
        outcome: TaskOutcome,
        worker: Option<WorkerId>,
    ) {
        let Some(mut t) = self.tasks.remove(id) else {
            return;
        };
        // Every path to here frees the attempt's leases first; this one lookup makes sure a
        // lease can never outlive its task, which would block the device for good.
        self.gpus.release(id);
        let now = now_ms();
        t.rec.state = TaskState::Finished {
            worker: worker.clone(),
            outcome: outcome.clone(),
            finished_ms: now,
        };
        if outcome.succeeded() {
            debug!(target: vgas_shared::logging::TASKS_TARGET, task_id = %id, attempts = t.rec.attempt, "finished: {}", outcome.describe());
        } else {
            info!(target: vgas_shared::logging::TASKS_TARGET, task_id = %id, attempts = t.rec.attempt, "finished: {}", outcome.describe());
        }
        let event = TaskEvent::Finished {
            task_id: id.clone(),
            worker,
            attempts: t.rec.attempt,
            duration_ms: now.saturating_sub(t.rec.accepted_ms),
            outcome,
        };
        self.finishing.push(Finishing {
            rec: t.rec,
            event,
            acks: Vec::new(),
            waiters: t.waiters,
        });
    }

    /// A result for a task not tracked here: a stale attempt's, a cancelled task's, or one
    /// whose final record a killed master wrote without (perhaps) announcing it. Only the
    /// last kind is announced: a record finished by a result names its worker, and one worker
    /// sends one result per attempt, so a stored record finished by this worker in this
    /// attempt was finished by this result.
    pub(super) async fn announce_again(&mut self, r: &WorkerResult) {
        let ours = |f: &Finishing| f.rec.task_id == r.task_id;
        if self.announced.contains(&r.task_id)
            || self.unwritten.iter().any(ours)
            || self.finishing.iter().any(ours)
        {
            debug!(task_id = %r.task_id, "result again for a task this master announces");
            return;
        }
        let rec = match self.store.get(&r.task_id).await {
            Ok(Some(rec)) => rec,
            Ok(None) => {
                debug!(task_id = %r.task_id, "result for a task with no record");
                return;
            }
            Err(e) => {
                warn!(task_id = %r.task_id, "could not read the record of an untracked task's result: {e:#}");
                return;
            }
        };
        let TaskState::Finished {
            worker: Some(worker),
            ..
        } = &rec.state
        else {
            debug!(task_id = %r.task_id, "result for a task no longer tracked");
            return;
        };
        if *worker != r.worker || rec.attempt != r.attempt {
            debug!(task_id = %r.task_id, attempt = r.attempt, "stale result ignored");
            return;
        }
        info!(task_id = %r.task_id, "finished before a restart, announced again");
        if let Some(event) = rec.finished_event() {
            self.emit(&rec.task_id, rec.encoding, &event).await;
            self.announced.insert(&rec.task_id);
        }
    }

    /// Writes this turn's final records together (with those an earlier turn could not
    /// write, when their pause is over), then for each one written announces its `finished`
    /// event and lets the results consumer acknowledge the results that led to it. A master
    /// killed before this point has acknowledged none of them: the results come again after
    /// its restart.
    pub(super) async fn flush_finished(&mut self) {
        let rewrite = !self.unwritten.is_empty()
            && self
                .rewrite_at
                .is_none_or(|at| tokio::time::Instant::now() >= at);
        if self.finishing.is_empty() && self.recorded.is_empty() && !rewrite {
            return;
        }
        let mut finishing = std::mem::take(&mut self.finishing);
        // Each result's acknowledgement goes with its task's final record; a result that
        // ended nothing (a duplicate, a stale attempt) is acknowledged now.
        let mut acks: HashMap<TaskId, Vec<ResultAck>> = HashMap::new();
        for (id, done) in self.recorded.drain(..) {
            acks.entry(id).or_default().push(done);
        }
        for f in finishing.iter_mut().chain(self.unwritten.iter_mut()) {
            if let Some(a) = acks.remove(&f.rec.task_id) {
                f.acks.extend(a);
            }
        }
        let now = now_ms();
        for done in acks.into_values().flatten() {
            done.send().await;
        }
        if rewrite {
            finishing.append(&mut self.unwritten);
        }
        if finishing.is_empty() {
            return;
        }
        // Each final record is written with its spec, to be dropped later by the retention
        // loop, or without it now.
        let mut later = Vec::with_capacity(finishing.len());
        let written = {
            let records: Vec<Cow<'_, TaskRecord>> = finishing
                .iter()
                .map(|f| match self.final_write(&f.rec) {
                    FinalWrite::Keep(permit) => {
                        later.push(Some(permit));
                        Cow::Borrowed(&f.rec)
                    }
                    FinalWrite::DropNow => {
                        later.push(None);
                        Cow::Owned(f.rec.without_spec(now))
                    }
                })
                .collect();
            let refs: Vec<&TaskRecord> = records.iter().map(AsRef::as_ref).collect();
            self.store.put_all(&refs).await
        };
        for ((f, w), later) in finishing.into_iter().zip(written).zip(later) {
            if let Err(e) = w {
                warn!(task_id = %f.rec.task_id, "could not record the final result, kept to write again: {e:#}");
                self.unwritten.push(f);
                continue;
            }
            self.announce(f, later, now).await;
        }
        self.rewrite_at =
            (!self.unwritten.is_empty()).then(|| tokio::time::Instant::now() + REWRITE_AFTER);
    }

    /// Announces a task whose final record is written, answers its `task.run` callers, and
    /// then acknowledges the results that led to it, on the same connection right after.
    async fn announce(
        &mut self,
        f: Finishing,
        later: Option<tokio::sync::mpsc::OwnedPermit<TaskRecord>>,
        now: u64,
    ) {
        // Observed before it is announced: whoever reacts to the event finds it done.
        if let TaskEvent::Finished {
            outcome, worker, ..
        } = &f.event
        {
            self.observe.finished(&f.rec, outcome, worker.as_ref());
        }
        self.counters.finished.fetch_add(1, Ordering::Relaxed);
        self.emit(&f.rec.task_id, f.rec.encoding, &f.event).await;
        self.announced.insert(&f.rec.task_id);
        self.answer_waiters(&f.rec.task_id, &f.event, f.waiters)
            .await;
        // After the announcement: the record's spec goes later.
        if let Some(permit) = later {
            permit.send(f.rec.without_spec(now));
        }
        for done in f.acks {
            done.send().await;
        }
    }
}

/// Whether `r` is the result of `t`'s lost attempt, come while the task waits to run again.
fn late_result_of_lost_attempt(t: &super::Tracked, r: &WorkerResult) -> bool {
    matches!(t.rec.state, TaskState::Queued)
        && !t.cancel_requested
        && t.rec.attempt == r.attempt
        && t.lost.as_ref() == Some(&(r.worker.clone(), r.attempt))
        && !r.handed_back
        && r.outcome != TaskOutcome::Cancelled
}

impl Dispatcher {
    /// Ends the current attempt with its worker's result; whether `r` was that result.
    ///
    /// A task queued again after its attempt was lost takes that attempt's result too, as
    /// long as no new attempt has been sent: the worker had only paused, or the requeue
    /// could not be recorded (the tasks stream between leaders), and the stored record, still
    /// naming that attempt, must not outlive the one result that can end it. Only a result
    /// the worker ended on its own counts: one cancelled or handed back is the lapse's echo.
    pub(super) async fn on_result(&mut self, r: WorkerResult) -> bool {
        let Some(t) = self.tasks.get(&r.task_id) else {
            self.announce_again(&r).await;
            return false;
        };
        // It ran (a result with `events`) and its `started` was not heard: the worker's
        // acknowledgement is still on its way, or it queued the attempt and it ended before
        // it had to say so itself (the worker's `STARTED_AFTER`). Announced first, so
        // `finished` never comes without it.
        let unheard = !t.heard.started_of(r.attempt) && r.events.is_some();
        let enc = t.rec.encoding;
        if late_result_of_lost_attempt(t, &r) {
            info!(task_id = %r.task_id, attempt = r.attempt, worker = %r.worker, "the lost attempt's result came: the task ends with it");
            self.pending.retain(|p| *p != r.task_id);
            self.sched.count_done(&r.worker);
            if unheard {
                self.announce_started(&r, enc).await;
            }
            self.finalize(&r.task_id, r.outcome, Some(r.worker)).await;
            return true;
        }
        let current =
            matches!(&t.rec.state, TaskState::Assigned { worker, .. } if *worker == r.worker);
        if !current || t.rec.attempt != r.attempt {
            debug!(task_id = %r.task_id, attempt = r.attempt, "stale result ignored");
            return false;
        }
        self.free(&r.task_id, &r.worker);
        if r.handed_back && !t.cancel_requested {
            let reason = format!("worker {} handed the task back while draining", r.worker);
            self.requeue(&r.task_id, Some(reason)).await;
            return true;
        }
        if unheard {
            self.announce_started(&r, enc).await;
        }
        self.sched.count_done(&r.worker);
        self.finalize(&r.task_id, r.outcome, Some(r.worker)).await;
        true
    }

    /// Announces `started` for the attempt result `r` ended, from the result itself.
    async fn announce_started(&self, r: &WorkerResult, enc: Encoding) {
        let (worker, attempt) = (r.worker.clone(), r.attempt);
        self.emit(&r.task_id, enc, &TaskEvent::Started { worker, attempt })
            .await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgas_shared::codec::encode;

    #[test]
    fn a_finished_event_is_heard_in_either_encoding_and_nothing_else_is() {
        let id = TaskId::random();
        let finished = TaskEvent::Finished {
            task_id: id.clone(),
            worker: None,
            attempts: 1,
            duration_ms: 3,
            outcome: TaskOutcome::Exited { exit_code: 0 },
        };
        for enc in [Encoding::Json, Encoding::MsgPack] {
            let bytes = encode(enc, &finished).unwrap();
            assert_eq!(finished_task(&bytes), Some(id.clone()), "{enc:?}");
            // Output that merely says the word is not a `finished` event.
            let said = TaskEvent::Started {
                worker: WorkerId::parse("finished").unwrap(),
                attempt: 1,
            };
            assert_eq!(finished_task(&encode(enc, &said).unwrap()), None, "{enc:?}");
        }
        assert_eq!(finished_task(b"finished, but not an event"), None);
    }
}
