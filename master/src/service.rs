//! The master's NATS face: the micro service endpoints people and tools call (`submit`,
//! `status`, `info`, `cancel`, so `$SRV.PING`, `$SRV.INFO` and `$SRV.STATS` answer too), the
//! heartbeat subscription and the results consumer. Each request is decoded with a size limit,
//! validated, and answered in the encoding it came in; bad input gets an error reply and
//! changes nothing.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use async_nats::service::{endpoint::Endpoint, Request};
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::{mpsc, oneshot, Notify, Semaphore};
use tracing::{debug, warn};
use vgas_shared::codec::{decode, encode, encode_error};
use vgas_shared::error::WireError;
use vgas_shared::limits::{MAX_CONTROL_BYTES, MAX_HEARTBEAT_BYTES, MAX_SUBMIT_BYTES};
use vgas_shared::wire::{
    CancelReply, Heartbeat, SubmitReply, SwarmPulse, TaskQuery, TaskRecord, TaskSpec, TaskState,
};
use vgas_shared::{now_ms, Encoding, ErrorCode, Subjects, TaskId, VgaError, WorkerId};

use crate::dispatch::{Command, Waiter};
use crate::observe::Counters;
use crate::scheduler::AgentScheduler;
use crate::store::{Created, TaskStore};

mod batch;
mod results;
mod run;
pub use results::{result_of, results};

/// Everything a handler needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Handlers {
    pub sched: Arc<AgentScheduler>,
    pub store: TaskStore,
    pub counters: Arc<Counters>,
    pub tx: mpsc::Sender<Command>,
    pub subjects: Subjects,
    /// One permit per queue place: submit takes one or answers `busy`.
    pub admission: Arc<Semaphore>,
    pub queue_capacity: usize,
    pub started_ms: u64,
    /// Nodes seen by mDNS, when discovery is on.
    pub seen: Option<crate::discovery::SeenMap>,
    pub cluster: String,
    /// GPU leases held now, shown in status.
    pub leases: crate::dispatch::gpu::LeaseTable,
    /// This master's lease value (it leads while it serves), shown in status.
    pub master: vgas_shared::wire::MasterLease,
    /// Copies JetStream keeps of the swarm's streams, shown in status.
    pub replicas: vgas_shared::config::Replicas,
    /// Sends the assignment of a task placed at submit, and waits for its acknowledgement
    /// on `tracker`.
    pub client: async_nats::Client,
    pub tracker: tokio_util::task::TaskTracker,
}

type Answer = Result<Vec<u8>, WireError>;

fn err(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError {
        code,
        message: message.into(),
    }
}

/// Decodes a request body within its size limit; a failure comes back as the error reply, in
/// the encoding the request appears to use.
fn decode_request<T: serde::de::DeserializeOwned>(
    payload: &[u8],
    limit: usize,
) -> Result<(T, Encoding), (Encoding, WireError)> {
    decode(payload, limit).map_err(|e| {
        (
            Encoding::detect(payload),
            WireError::from(&VgaError::from(e)),
        )
    })
}

fn reply<T: Serialize>(enc: Encoding, value: &T) -> Answer {
    encode(enc, value).map_err(|e| err(ErrorCode::Internal, e.to_string()))
}

impl Handlers {
    /// `vgas.task.submit`: parse, take a queue place, record, then accept. The record keeps
    /// the wire spec (its durable form); the worker parses it again before it runs it.
    /// An array of specs is a batch ([`Handlers::submit_batch`]).
    pub async fn submit(&self, payload: &[u8]) -> (Encoding, Answer) {
        let enc = Encoding::detect(payload);
        if batch::is_batch(payload) {
            return (enc, self.submit_batch(payload, enc).await);
        }
        let spec: TaskSpec = match decode_request(payload, MAX_SUBMIT_BYTES) {
            Ok((spec, _)) => spec,
            Err((enc, e)) => return (enc, Err(e)),
        };
        let answer = match self.admit(spec) {
            Ok(spec) => self.accept(spec, enc, None).await,
            Err(e) => Err(e),
        };
        (enc, answer.and_then(|r| reply(enc, &r)))
    }

    /// What submit checks before it takes a queue place: the spec parses, and what it needs
    /// some live worker could ever give. The spec comes back with the needs its kind implies
    /// (a cuda task's NVRTC and GPU), so the dispatcher places it by the spec alone.
    fn admit(&self, mut spec: TaskSpec) -> Result<TaskSpec, WireError> {
        let task = spec.parse().map_err(|e| WireError::from(&e))?;
        spec.needs = task.needs;
        match self.never_satisfiable(&spec) {
            Some(refusal) => Err(err(ErrorCode::Unsatisfiable, refusal)),
            None => Ok(spec),
        }
    }

    /// A task that needs GPUs no live worker could ever give is refused at once, with what
    /// the swarm has, instead of waiting its `wait_for_worker_s` for nothing. Not in the first
    /// heartbeat window after a (re)start, while workers are still being heard from.
    fn never_satisfiable(&self, spec: &TaskSpec) -> Option<String> {
        let gpus = spec.needs.gpus.as_ref()?;
        let window = vgas_shared::limits::ABNORMAL_AFTER.as_millis() as u64;
        if now_ms().saturating_sub(self.started_ms) < window || self.sched.any_capable(&spec.needs)
        {
            return None;
        }
        Some(crate::dispatch::gpu::unsatisfiable(gpus, &self.sched))
    }

    /// Records a task and hands it to the dispatcher; `waiter`, a `task.run` caller, is
    /// answered with its `finished` event (not when the id was taken already: the answer
    /// says `duplicate`, and the caller waits on the task that has it).
    async fn accept(
        &self,
        mut spec: TaskSpec,
        enc: Encoding,
        waiter: Option<Waiter>,
    ) -> Result<SubmitReply, WireError> {
        let named = spec.task_id.is_some();
        let task_id = spec.task_id.clone().unwrap_or_else(TaskId::random);
        spec.task_id = Some(task_id.clone());
        let events = self.subjects.task_events(&task_id);
        let Ok(permit) = self.admission.clone().try_acquire_owned() else {
            // An idempotent resubmit is answered even when the queue is full. (With room, the
            // create below finds an existing id itself: no read for a fresh one.)
            if named {
                match self.store.get(&task_id).await {
                    Ok(Some(old)) => return self.resubmitted(&old, &spec),
                    Ok(None) => {}
                    Err(e) => {
                        return Err(err(
                            ErrorCode::Internal,
                            format!("could not read the task store: {e:#}"),
                        ))
                    }
                }
            }
            return Err(err(
                ErrorCode::Busy,
                format!(
                    "the admission queue is full ({} tasks waiting); retry later",
                    self.queue_capacity
                ),
            ));
        };
        // Nothing queued and a worker free: the task is placed now and its record written
        // once, already assigned (one write instead of a queued record and then an
        // assigned one). Queued tasks go first otherwise; GPU tasks always go through the
        // dispatcher's leases.
        let placed = match spec.needs.gpus {
            None if self.counters.queue_depth.load(Ordering::Relaxed) == 0 => {
                self.sched.gatling_rotate_next(&spec.needs).ok()
            }
            _ => None,
        };
        let digest = match self.store.digest(&spec) {
            Ok(d) => d,
            Err(e) => return Err(err(ErrorCode::Internal, format!("{e:#}"))),
        };
        let now = now_ms();
        let record = TaskRecord {
            task_id: task_id.clone(),
            spec,
            encoding: enc,
            accepted_ms: now,
            attempt: u32::from(placed.is_some()),
            state: match &placed {
                Some(w) => TaskState::Assigned {
                    worker: w.id.clone(),
                    since_ms: now,
                    gpus: Vec::new(),
                },
                None => TaskState::Queued,
            },
            retries: Vec::new(),
            spec_digest: Some(digest.clone()),
            spec_dropped_ms: None,
        };
        let created = self.store.create(&record).await;
        if let (Some(w), false) = (&placed, matches!(created, Ok(Created::New))) {
            self.sched.release(&w.id);
        }
        match created {
            Ok(Created::New) => {}
            Ok(Created::Exists(old)) if old.submitted_as(&record.spec, &digest) => {
                return Ok(SubmitReply {
                    task_id,
                    events,
                    duplicate: true,
                });
            }
            Ok(Created::Exists(_)) => {
                return Err(err(
                    ErrorCode::Conflict,
                    format!("task id {task_id} is already used by a different task"),
                ));
            }
            Err(e) => {
                return Err(err(
                    ErrorCode::Internal,
                    format!("could not record the task: {e:#}"),
                ))
            }
        }
        debug!(target: vgas_shared::logging::TASKS_TARGET, task_id = %task_id, cmd = ?record.spec.cmd, placed = placed.is_some(), "accepted");
        // Placed: sent from here, not by the dispatcher, so the worker has it without waiting
        // for the actor's turn (which may be writing other records).
        let assignment = placed.as_ref().map(|w| {
            (
                w.id.clone(),
                crate::dispatch::assign::assignment_of(&record),
            )
        });
        let cmd = match placed {
            // Its queue place is given back at once: it never waits in the queue.
            Some(_) => Command::Placed {
                record: Box::new(record),
                waiter,
            },
            None => Command::Accepted {
                record: Box::new(record),
                permit,
                waiter,
            },
        };
        if self.tx.send(cmd).await.is_err() {
            return Err(err(
                ErrorCode::Internal,
                "the master is shutting down; the task is recorded and resumes on restart",
            ));
        }
        if let Some((worker, a)) = assignment {
            let (tracker, client, tx) = (&self.tracker, &self.client, &self.tx);
            crate::dispatch::assign::send(tracker, client, &self.subjects, a, worker, tx);
        }
        Ok(SubmitReply {
            task_id,
            events,
            duplicate: false,
        })
    }

    /// The answer to a submit whose id is taken: the same spec is an idempotent resubmit,
    /// another spec is a conflict.
    fn resubmitted(&self, old: &TaskRecord, spec: &TaskSpec) -> Result<SubmitReply, WireError> {
        let task_id = old.task_id.clone();
        let same = self
            .store
            .digest(spec)
            .is_ok_and(|d| old.submitted_as(spec, &d));
        if !same {
            return Err(err(
                ErrorCode::Conflict,
                format!("task id {task_id} is already used by a different task"),
            ));
        }
        let events = self.subjects.task_events(&task_id);
        Ok(SubmitReply {
            task_id,
            events,
            duplicate: true,
        })
    }

    /// `vgas.status`: the `SwarmPulse`.
    pub fn status(&self) -> SwarmPulse {
        let mut pulse = self.sched.get_swarm_status();
        pulse.queue_depth = self.counters.queue_depth.load(Ordering::Relaxed);
        pulse.queue_capacity = self.queue_capacity;
        pulse.in_flight = self.counters.in_flight.load(Ordering::Relaxed);
        pulse.waiting_for_gpus = self.counters.waiting_for_gpus.load(Ordering::Relaxed);
        {
            let leases = self.leases.lock().expect("lease table");
            for n in &mut pulse.live {
                n.leases = leases.of_worker(&n.id);
            }
        }
        pulse.tasks_accepted = self.counters.accepted.load(Ordering::Relaxed);
        pulse.tasks_finished = self.counters.finished.load(Ordering::Relaxed);
        pulse.uptime_ms = now_ms().saturating_sub(self.started_ms);
        if let Some(seen) = &self.seen {
            let live: Vec<String> = pulse.live.iter().map(|n| n.id.to_string()).collect();
            pulse.unjoined = crate::discovery::unjoined(seen, &self.cluster, &live);
        }
        pulse.master = Some(self.master.clone());
        pulse.replicas = self.replicas.get() as u8;
        pulse
    }

    async fn info(&self, payload: &[u8]) -> (Encoding, Answer) {
        let (q, enc) = match decode_request::<TaskQuery>(payload, MAX_CONTROL_BYTES) {
            Ok(v) => v,
            Err((enc, e)) => return (enc, Err(e)),
        };
        let answer = match self.store.get(&q.task_id).await {
            Ok(Some(rec)) => reply(enc, &rec),
            Ok(None) => Err(err(ErrorCode::NotFound, format!("no task {}", q.task_id))),
            Err(e) => Err(err(ErrorCode::Internal, format!("{e:#}"))),
        };
        (enc, answer)
    }

    async fn cancel(&self, payload: &[u8]) -> (Encoding, Answer) {
        let (q, enc) = match decode_request::<TaskQuery>(payload, MAX_CONTROL_BYTES) {
            Ok(v) => v,
            Err((enc, e)) => return (enc, Err(e)),
        };
        let (tx, rx) = oneshot::channel();
        let cmd = Command::Cancel {
            task_id: q.task_id.clone(),
            reply: tx,
        };
        let found = self.tx.send(cmd).await.is_ok() && rx.await.unwrap_or(false);
        let answer = if found {
            reply(
                enc,
                &CancelReply {
                    task_id: q.task_id,
                    cancelling: true,
                },
            )
        } else {
            Err(err(
                ErrorCode::NotFound,
                format!("no unfinished task {}", q.task_id),
            ))
        };
        (enc, answer)
    }

    /// Serves one endpoint until it closes.
    ///
    /// Up to [`MAX_REQUESTS_IN_FLIGHT`] requests are answered at once: a submit waits for its
    /// record's JetStream write, and one at a time capped every client's submits together at
    /// one write's round trip each while the server could take many writes in flight.
    pub async fn serve(self, kind: EndpointKind, endpoint: Endpoint) {
        endpoint
            .for_each_concurrent(MAX_REQUESTS_IN_FLIGHT, |req| self.answer(kind, req))
            .await;
    }

    async fn answer(&self, kind: EndpointKind, req: Request) {
        let payload = &req.message.payload;
        let (enc, answer) = match kind {
            EndpointKind::Submit => self.submit(payload).await,
            EndpointKind::Run => match self.run(payload, req.message.reply.clone()).await {
                Some(answer) => answer,
                // Answered by the dispatcher when the task finishes.
                None => return,
            },
            EndpointKind::Status => {
                let enc = Encoding::detect(payload);
                if payload.len() > MAX_CONTROL_BYTES {
                    let e = err(ErrorCode::TooLarge, "status takes an empty payload");
                    (enc, Err(e))
                } else {
                    (enc, reply(enc, &self.status()))
                }
            }
            EndpointKind::Info => self.info(payload).await,
            EndpointKind::Cancel => self.cancel(payload).await,
        };
        respond(&req, enc, answer).await;
    }
}

/// Requests one endpoint answers at once. Submits from many clients (or one client with
/// many in flight) share the tasks bucket's writes instead of waiting for each other's; the
/// bound keeps what a flood holds in memory to this many decoded requests (each at most
/// `MAX_BATCH_BYTES`), the rest waiting in the subscription.
const MAX_REQUESTS_IN_FLIGHT: usize = 64;

/// Which endpoint a loop serves.
#[derive(Debug, Clone, Copy)]
pub enum EndpointKind {
    Submit,
    Run,
    Status,
    Info,
    Cancel,
}

async fn respond(req: &Request, enc: Encoding, answer: Answer) {
    let bytes = match answer {
        Ok(b) => b,
        Err(e) => {
            debug!(subject = %req.message.subject, "request refused: {e}");
            encode_error(enc, &e)
        }
    };
    if let Err(e) = req.respond(Ok(bytes.into())).await {
        // No reply subject (a plain publish): nothing to answer, nothing changed.
        debug!("could not respond: {e}");
    }
}

/// Reads heartbeats; a malformed one is logged and dropped.
pub async fn heartbeats(
    mut sub: async_nats::Subscriber,
    sched: Arc<AgentScheduler>,
    wake: Arc<Notify>,
) {
    while let Some(msg) = sub.next().await {
        let Some((from, hb)) = parse_heartbeat(&msg) else {
            continue;
        };
        if let Some(effect) = sched.handle_agent_heartbeat(hb) {
            debug!(worker = %from, ?effect, "heartbeat");
            wake.notify_one();
        }
    }
}

/// A heartbeat and the worker it is from, or `None` (logged) when it is malformed or names
/// another worker than its subject does.
pub fn parse_heartbeat(msg: &async_nats::Message) -> Option<(WorkerId, Heartbeat)> {
    let from = msg
        .subject
        .rsplit('.')
        .next()
        .and_then(|s| WorkerId::parse(s).ok())?;
    let hb: Heartbeat = match decode(&msg.payload, MAX_HEARTBEAT_BYTES) {
        Ok((hb, _)) => hb,
        Err(e) => {
            warn!(subject = %msg.subject, "dropping malformed heartbeat: {e}");
            return None;
        }
    };
    if hb.worker.as_ref() != Some(&from) {
        warn!(subject = %msg.subject, "dropping heartbeat whose worker id does not match its subject");
        return None;
    }
    Some((from, hb))
}
