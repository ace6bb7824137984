//! The task lifecycle: one actor owns every unfinished task, so each state change happens in
//! one place and in order: queued, assigned to a worker (`dispatch_task`), then exactly one
//! final result. It retries an attempt whose worker is lost or whose deadline passed without
//! a result, and gives up with a clear reason after the task's attempt budget.
//!
//! Every state change is written to the tasks bucket before it is announced, so a master that
//! is killed and restarted resumes from the bucket ([`Dispatcher::recover`]).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use async_nats::Client;
use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Notify, OwnedSemaphorePermit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use vgas_shared::codec::encode;
use vgas_shared::limits::MAX_DEADLINE;
use vgas_shared::wire::{TaskEvent, TaskRecord, TaskState, WorkerResult};
use vgas_shared::{now_ms, Encoding, Subjects, TaskId, WorkerId};

use crate::observe::{Counters, Observe};
use crate::retention::{FinalWrite, Retention};
use crate::scheduler::AgentScheduler;

pub mod assign;
mod audit;
pub mod direct;
mod finish;
pub mod gpu;
mod lapse;
mod relay;
use crate::store::TaskStore;
pub use finish::{Announced, ResultAck};
use gpu::{LeaseTable, ResourceManager};

/// How often the actor checks deadlines, lost workers and the queue.
pub const TICK: Duration = Duration::from_millis(250);

/// Commands the actor takes in one turn before it writes their records together: enough that
/// a burst of submits or results shares one round of writes, few enough that a turn stays
/// short (each command is microseconds of work).
const MAX_COMMANDS_PER_TURN: usize = 256;

/// Commands for the actor. The channel is bounded; senders wait when it is full.
#[derive(Debug)]
pub enum Command {
    /// A task written to the store and acknowledged to its submitter (or, submitted on
    /// `task.run`, to be answered with its `finished` event: `waiter`).
    Accepted {
        record: Box<TaskRecord>,
        permit: OwnedSemaphorePermit,
        waiter: Option<Waiter>,
    },
    /// A task written to the store already assigned: submit found a worker with a free slot
    /// (reserved) and nothing queued, so the record went in once, as `Assigned`. The
    /// actor announces it; the submit sends it ([`assign::send`]) right after handing it
    /// over, so the worker's answers come after this command.
    Placed {
        record: Box<TaskRecord>,
        waiter: Option<Waiter>,
    },
    /// A `task.run` of a task already accepted (the same id and spec again): its `finished`
    /// event goes to `waiter` too, if the task is still tracked here.
    Wait {
        task_id: TaskId,
        waiter: Waiter,
        reply: oneshot::Sender<Waiting>,
    },
    /// A worker's result, read from the results stream; acknowledged (`ack`) once it is
    /// recorded and announced.
    Result {
        result: WorkerResult,
        ack: ResultAck,
    },
    /// A worker's result offered straight to this master ([`direct`]): taken only when the
    /// stream has brought everything before it, and answered on `reply` either way.
    DirectResult {
        result: WorkerResult,
        reply: Option<async_nats::Subject>,
    },
    /// A worker acknowledged an assignment: it starts the attempt, or (`queued`) queues it
    /// ahead of its slots and says `started` itself later.
    Started {
        task_id: TaskId,
        attempt: u32,
        worker: WorkerId,
        queued: bool,
    },
    /// A worker's event, read from the results stream in order with its results; `done`
    /// fires once it is relayed (`relay`).
    Event {
        /// The worker and task its subject names.
        worker: WorkerId,
        task_id: TaskId,
        payload: Bytes,
        /// Its sequence in the results stream (`wire::HEADER_EVENT_SEQ`).
        seq: u64,
        done: oneshot::Sender<()>,
    },
    /// A worker refused or did not acknowledge an assignment.
    AssignFailed {
        task_id: TaskId,
        attempt: u32,
        reason: String,
        /// Nobody answered (no responders, or no acknowledgement in time), as opposed to a
        /// refusal.
        unanswered: bool,
    },
    Cancel {
        task_id: TaskId,
        reply: oneshot::Sender<bool>,
    },
}

/// A `task.run` caller waiting for a task's `finished` event: its request's reply subject,
/// answered once, in the request's encoding. Not durable: a master that stops drops its
/// waiters, and the caller runs the same id again (an idempotent resubmit) to wait anew.
#[derive(Debug, Clone)]
pub struct Waiter {
    pub reply: async_nats::Subject,
    pub encoding: Encoding,
}

/// What became of a [`Command::Wait`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Waiting {
    /// The task is tracked here: the waiter gets its `finished` event.
    Attached,
    /// The task has [`MAX_WAITERS_PER_TASK`] waiters already.
    Full,
    /// Not tracked here: finished already (its record says how), or not yet handed over.
    Untracked,
}

/// Callers one task answers on `task.run` at once: each rerun of an id adds one, so a
/// client retrying in a loop cannot grow a task's memory without bound.
pub const MAX_WAITERS_PER_TASK: usize = 16;

/// A task finished in memory whose record is not written yet: written with the others of
/// the same turn, then announced, then its result acknowledged.
#[derive(Debug)]
struct Finishing {
    rec: TaskRecord,
    event: TaskEvent,
    /// Acknowledgements of the results that led to it, sent once the record is written.
    acks: Vec<ResultAck>,
    /// `task.run` callers, answered with the event once it is announced.
    waiters: Vec<Waiter>,
}

#[derive(Debug)]
struct Tracked {
    rec: TaskRecord,
    /// Holds one admission slot while the task waits in the queue.
    permit: Option<OwnedSemaphorePermit>,
    queued_at_ms: u64,
    /// When it last entered the queue (accepted, or queued again after a lost attempt): the
    /// start of its dispatch latency.
    entered_queue_ms: u64,
    cancel_requested: bool,
    /// `task.run` callers waiting for its `finished` event.
    waiters: Vec<Waiter>,
    /// Where the current attempt's deadline counts from.
    clock: Clock,
    /// What the worker said of the current attempt so far, for its direct result.
    heard: direct::Heard,
    /// The worker and attempt last lost or handed back, while the task waits to run again:
    /// that attempt may still end (a worker that only paused, a requeue that could not be
    /// recorded), and its result, if it comes first, is the task's (see
    /// [`Dispatcher::on_result`]).
    lost: Option<(WorkerId, u32)>,
    /// Why the last attempt was lost, announced as `retrying` when the next one is sent.
    retry: Option<String>,
    /// Since when the current attempt's live worker has not listed it in its heartbeats,
    /// with no result come ([`audit`]).
    unlisted_since: Option<u64>,
}

/// Where an attempt's deadline counts from, for the master's check that its result is not
/// lost (the worker stops the task at its deadline itself).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Clock {
    /// Sent to the worker then (or taken back after a restart then).
    Assigned(u64),
    /// The worker queued it ahead of its slots then: it waits for the tasks before it,
    /// each stopped at its own deadline, so it is lost only after [`MAX_DEADLINE`] more.
    Queued(u64),
    /// The worker said it started then.
    Started(u64),
}

impl Clock {
    /// When the attempt was sent, queued or started, whichever came last.
    fn since_ms(self) -> u64 {
        match self {
            Clock::Assigned(at) | Clock::Queued(at) | Clock::Started(at) => at,
        }
    }

    /// When an attempt of `deadline_ms` is past its deadline.
    fn due_ms(self, deadline_ms: u64) -> u64 {
        match self {
            Clock::Assigned(at) | Clock::Started(at) => at + deadline_ms,
            Clock::Queued(at) => at + MAX_DEADLINE.as_millis() as u64 + deadline_ms,
        }
    }
}

/// The actor.
#[derive(Debug)]
pub struct Dispatcher {
    sched: Arc<AgentScheduler>,
    store: TaskStore,
    client: Client,
    subjects: Subjects,
    counters: Arc<Counters>,
    tasks: HashMap<TaskId, Tracked>,
    pending: VecDeque<TaskId>,
    tx: mpsc::Sender<Command>,
    tracker: TaskTracker,
    started_ms: u64,
    /// Final records of this turn, written together by [`Dispatcher::flush_finished`].
    finishing: Vec<Finishing>,
    /// Results whose recording this turn's flush completes, by task; acknowledged after it
    /// (a result whose final record could not be written waits with it).
    recorded: Vec<(TaskId, ResultAck)>,
    /// Final records a write failed for (JetStream electing a new stream leader, say): not
    /// announced, their results not acknowledged, written again from the next turn after
    /// [`finish::REWRITE_AFTER`]. A master killed meanwhile gets their results again.
    unwritten: Vec<Finishing>,
    /// When the unwritten records are tried next.
    rewrite_at: Option<tokio::time::Instant>,
    /// Assignments recorded before a restart, sent again when the actor starts: the master
    /// may have died between recording one and sending it. A worker that has it already
    /// acknowledges without running it twice.
    resend: Vec<(TaskId, WorkerId)>,
    /// GPU leases, one per attempt that asked for devices.
    gpus: ResourceManager,
    /// Metrics, and the dashboard's board when it is on.
    observe: Arc<Observe>,
    retention: Option<Retention>,
    /// The tasks this process announced lately, never announced again from a result that
    /// comes twice.
    announced: Announced,
    /// When the next audit of assigned attempts against heartbeats runs ([`audit`]).
    audit_at: u64,
}

impl Dispatcher {
    pub fn new(
        sched: Arc<AgentScheduler>,
        store: TaskStore,
        client: Client,
        subjects: Subjects,
        tx: mpsc::Sender<Command>,
        tracker: TaskTracker,
        observe: Arc<Observe>,
    ) -> Self {
        Dispatcher {
            counters: observe.counters.clone(),
            sched,
            store,
            client,
            subjects,
            tasks: HashMap::new(),
            pending: VecDeque::new(),
            tx,
            tracker,
            started_ms: now_ms(),
            finishing: Vec::new(),
            recorded: Vec::new(),
            unwritten: Vec::new(),
            rewrite_at: None,
            resend: Vec::new(),
            gpus: ResourceManager::default(),
            observe,
            retention: None,
            announced: Announced::default(),
            audit_at: 0,
        }
    }

    /// Remembers announced tasks in `announced`, shared with this process's other terms.
    pub fn set_announced(&mut self, announced: Announced) {
        self.announced = announced;
    }

    /// Finished tasks' records go to `retention`, which drops their specs when the setting
    /// says; without it they are written without their specs at once.
    pub fn set_retention(&mut self, retention: Retention) {
        self.retention = Some(retention);
    }

    fn final_write(&self, rec: &TaskRecord) -> FinalWrite {
        match &self.retention {
            Some(r) => r.final_write(rec),
            None => FinalWrite::DropNow,
        }
    }

    /// The GPU leases held now, for the status endpoint to show.
    pub fn lease_table(&self) -> LeaseTable {
        self.gpus.table()
    }

    /// Takes back every unfinished task from the store after a (re)start.
    pub fn recover(&mut self, records: Vec<TaskRecord>) {
        let mut per_worker: HashMap<WorkerId, usize> = HashMap::new();
        for rec in records {
            match &rec.state {
                TaskState::Finished { .. } => continue,
                TaskState::Queued => self.pending.push_back(rec.task_id.clone()),
                TaskState::Assigned { worker, gpus, .. } => {
                    self.gpus.restore(&rec.task_id, worker, gpus);
                    *per_worker.entry(worker.clone()).or_default() += 1;
                    self.resend.push((rec.task_id.clone(), worker.clone()));
                }
            }
            info!(task_id = %rec.task_id, "recovered unfinished task");
            self.observe.track(&rec);
            self.tasks.insert(
                rec.task_id.clone(),
                Tracked {
                    queued_at_ms: now_ms(),
                    entered_queue_ms: now_ms(),
                    rec,
                    permit: None,
                    cancel_requested: false,
                    waiters: Vec::new(),
                    // The worker may have queued or started it meanwhile: from now.
                    clock: Clock::Assigned(now_ms()),
                    heard: direct::Heard::default(),
                    lost: None,
                    retry: None,
                    unlisted_since: None,
                },
            );
        }
        for (w, n) in per_worker {
            self.sched.restore_in_flight(&w, n);
        }
        self.publish_counters();
    }

    /// Runs the actor until `stop`: commands, wake-ups and ticks.
    pub async fn run(
        mut self,
        mut rx: mpsc::Receiver<Command>,
        wake: Arc<Notify>,
        stop: CancellationToken,
    ) {
        for (id, worker) in std::mem::take(&mut self.resend) {
            self.dispatch_task(&id, worker).await;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let mut ticked = false;
            tokio::select! {
                _ = stop.cancelled() => break,
                cmd = rx.recv() => match cmd {
                    Some(cmd) => self.handle(cmd).await,
                    None => break,
                },
                _ = wake.notified() => {}
                _ = tick.tick() => {
                    self.check_assigned().await;
                    ticked = true;
                }
            }
            // Whatever else is already waiting joins this turn, so one round of writes to the
            // tasks bucket covers many tasks instead of one each.
            for _ in 1..MAX_COMMANDS_PER_TURN {
                match rx.try_recv() {
                    Ok(cmd) => self.handle(cmd).await,
                    Err(_) => break,
                }
            }
            self.flush_finished().await;
            // The whole queue on a tick (waits for a capable worker run out there); otherwise
            // only as far as there is room (see `try_dispatch`).
            self.try_dispatch(ticked).await;
            self.publish_counters();
        }
        self.flush_finished().await;
    }

    async fn handle(&mut self, cmd: Command) {
        match cmd {
            Command::Accepted {
                record,
                permit,
                waiter,
            } => {
                let id = self.track(*record, Some(permit), waiter);
                self.pending.push_back(id);
            }
            Command::Placed { record, waiter } => {
                let worker = match &record.state {
                    TaskState::Assigned { worker, .. } => Some(worker.clone()),
                    _ => None,
                };
                let id = self.track(*record, None, waiter);
                match worker {
                    Some(worker) => self.announce_assignment(&id, &worker).await,
                    None => self.pending.push_back(id),
                }
            }
            Command::Result { result, ack: done } => {
                let id = result.task_id.clone();
                if self.on_result(result).await {
                    self.observe.metrics.result_used(false);
                }
                // Acknowledged once this turn's records are written (`flush_finished`).
                self.recorded.push((id, done));
            }
            Command::DirectResult { result, reply } => self.on_direct_result(result, reply).await,
            Command::Started {
                task_id,
                attempt,
                worker,
                queued,
            } => self.on_started(&task_id, attempt, worker, queued).await,
            Command::Event {
                worker,
                task_id,
                payload,
                seq,
                done,
            } => {
                self.relay(worker, task_id, payload, seq).await;
                let _ = done.send(());
            }
            Command::AssignFailed {
                task_id,
                attempt,
                reason,
                unanswered,
            } => {
                self.on_assign_failed(&task_id, attempt, reason, unanswered)
                    .await
            }
            Command::Cancel { task_id, reply } => {
                let found = self.cancel(&task_id).await;
                let _ = reply.send(found);
            }
            Command::Wait {
                task_id,
                waiter,
                reply,
            } => {
                let waiting = match self.tasks.get_mut(&task_id) {
                    None => Waiting::Untracked,
                    Some(t) if t.waiters.len() >= MAX_WAITERS_PER_TASK => Waiting::Full,
                    Some(t) => {
                        t.waiters.push(waiter);
                        Waiting::Attached
                    }
                };
                let _ = reply.send(waiting);
            }
        }
    }

    /// Starts tracking a task just accepted (holding its queue place while it waits, if it
    /// is queued); returns its id.
    fn track(
        &mut self,
        rec: TaskRecord,
        permit: Option<OwnedSemaphorePermit>,
        waiter: Option<Waiter>,
    ) -> TaskId {
        let id = rec.task_id.clone();
        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
        self.observe.accepted(&rec);
        self.tasks.insert(
            id.clone(),
            Tracked {
                rec,
                permit,
                queued_at_ms: now_ms(),
                entered_queue_ms: now_ms(),
                cancel_requested: false,
                waiters: waiter.into_iter().collect(),
                clock: Clock::Assigned(now_ms()),
                heard: direct::Heard::default(),
                lost: None,
                retry: None,
                unlisted_since: None,
            },
        );
        id
    }

    /// Gives back what an attempt held on `worker`: its slot and its GPU leases.
    fn free(&self, id: &TaskId, worker: &WorkerId) {
        self.sched.release(worker);
        self.gpus.release(id);
    }

    /// Publishes one event in the submitter's encoding. Publishing only queues the bytes for
    /// the connection, in order; it waits only when the outbound buffer is full.
    async fn emit(&self, id: &TaskId, enc: Encoding, ev: &TaskEvent) {
        let Ok(bytes) = encode(enc, ev) else { return };
        let subject = self.subjects.task_events(id);
        if let Err(e) = self.client.publish(subject, Bytes::from(bytes)).await {
            warn!(task_id = %id, "could not publish task event: {e}");
        }
    }

    /// Answers each `task.run` caller with the task's `finished` event, in its own encoding.
    async fn answer_waiters(&self, id: &TaskId, ev: &TaskEvent, waiters: Vec<Waiter>) {
        for w in waiters {
            let Ok(bytes) = encode(w.encoding, ev) else {
                continue;
            };
            if let Err(e) = self.client.publish(w.reply, Bytes::from(bytes)).await {
                warn!(task_id = %id, "could not answer a task.run caller: {e}");
            }
        }
    }

    fn publish_counters(&self) {
        // Between turns every tracked task is either queued (in `pending`) or assigned:
        // counted without a walk over every task, which with a long queue cost a turn more
        // than the work it did.
        let in_flight = self.tasks.len().saturating_sub(self.pending.len());
        self.counters
            .queue_depth
            .store(self.pending.len(), Ordering::Relaxed);
        self.counters.in_flight.store(in_flight, Ordering::Relaxed);
    }
}
