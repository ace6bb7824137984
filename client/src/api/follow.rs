//! Submit a task and follow it to its end. The events of a task carry the attempt they belong
//! to; [`Following`] drops what a lost attempt printed or wrote once a newer attempt has begun,
//! and asks the master for the task's record every [`POLL_INTERVAL`], so a follower that
//! missed the final event (a master restart, a reconnect) still ends. One that asked for it
//! ([`Swarm::submit_direct`]) also takes the task's files straight from its worker
//! (`super::direct`), whichever of the two copies of a file comes first.

use std::collections::{HashSet, VecDeque};

use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::Subscriber;
use base64::Engine as _;
use futures::StreamExt;
use tokio::time::{Instant, Interval};
use vgas_shared::codec::decode_as;
use vgas_shared::wire::{
    check_relative_path, SubmitReply, TaskEvent, TaskOutcome, TaskQuery, TaskRecord, TaskSpec,
    TaskState,
};
use vgas_shared::{Encoding, TaskId, WorkerId};

use super::direct::Direct;
use super::Swarm;

/// How often a follower asks for the task's record, in case it missed the final event.
pub const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How long a follower that learnt from the record that the task has finished still reads
/// events already on their way (output, artifacts) before it ends.
const DRAIN_WINDOW: Duration = Duration::from_millis(200);

/// One step of a followed task, with lost attempts' output already dropped.
#[derive(Debug, Clone, PartialEq)]
pub enum Step {
    /// An attempt started on `worker`.
    Started {
        worker: WorkerId,
        attempt: u32,
    },
    Stdout(String),
    Stderr(String),
    /// A new attempt begins: whatever the caller kept of the earlier one is void.
    Retrying {
        attempt: u32,
        reason: String,
    },
    /// A file the task wrote.
    Artifact(Artifact),
    /// The task's one final result. Nothing follows it.
    Finished {
        outcome: TaskOutcome,
        worker: Option<WorkerId>,
    },
}

/// The relayed events of one task seen so far, by their `wire::HEADER_EVENT_SEQ`: the master
/// relays a worker's event at least once, in stream order, so one whose sequence is not
/// above the highest seen is a repeat.
#[derive(Debug, Default)]
pub struct RelayedSeen(u64);

impl RelayedSeen {
    /// False for a relayed event seen already; true for anything else (the master's own
    /// events carry no sequence).
    pub fn is_new(&mut self, msg: &async_nats::Message) -> bool {
        let seq = msg
            .headers
            .as_ref()
            .and_then(|h| h.get(vgas_shared::wire::HEADER_EVENT_SEQ))
            .and_then(|v| v.as_str().parse::<u64>().ok());
        match seq {
            Some(seq) if seq <= self.0 => false,
            Some(seq) => {
                self.0 = seq;
                true
            }
            None => true,
        }
    }
}

/// A file a task wrote, as its event announced it.
#[derive(Debug, Clone, PartialEq)]
pub struct Artifact {
    /// Relative to the task directory (checked: no `..`, not absolute).
    pub path: String,
    /// The file's permission bits on the worker (`None` from a worker that does not send them).
    pub mode: Option<u32>,
    pub body: ArtifactBody,
    /// How long the task's own process ran on the worker, when the worker said (compiles).
    pub ran: Option<Duration>,
    /// Bytes of stdout and of stderr the attempt sent before this file, when the worker
    /// said: the output is complete once that much of it has come.
    pub output_before: Option<(u64, u64)>,
}

/// Where an artifact's bytes are.
#[derive(Debug, Clone, PartialEq)]
pub enum ArtifactBody {
    Inline(Vec<u8>),
    /// In the artifacts bucket under `object`, `size` bytes.
    Object {
        object: String,
        size: u64,
    },
}

/// A submitted task, with its events already subscribed.
#[derive(Debug)]
pub struct Submitted {
    pub reply: SubmitReply,
    pub following: Following,
}

impl Swarm {
    /// Submits `spec` (giving it a random id when it has none) and returns it with its events
    /// subscribed before the submit, so not one event is missed. A refusal (`busy`, bad input)
    /// is an error that downcasts to [`super::Refused`].
    pub async fn submit(&self, mut spec: TaskSpec, timeout: Duration) -> Result<Submitted> {
        let id = spec.task_id.get_or_insert_with(TaskId::random).clone();
        let events = self
            .client
            .subscribe(self.subjects.task_events(&id))
            .await?;
        let reply: SubmitReply = self
            .request_within(self.subjects.submit(), &spec, timeout)
            .await?;
        let mut following = Following::new(self.clone(), id, events);
        following.poll.reset();
        Ok(Submitted { reply, following })
    }

    /// [`Swarm::submit`], and the task's files read straight from the worker that runs it
    /// as well as through the master's relay (`super::direct`): a build unit is done a
    /// relay hop sooner. The worker subscription goes first, on the same connection as the
    /// submit, so the server has it before any worker can have the task.
    pub async fn submit_direct(&self, spec: TaskSpec, timeout: Duration) -> Result<Submitted> {
        let id = spec.task_id.clone().unwrap_or_else(TaskId::random);
        let direct = self
            .client
            .subscribe(self.subjects.any_worker_events(&id))
            .await?;
        let spec = TaskSpec {
            task_id: Some(id),
            ..spec
        };
        let mut submitted = self.submit(spec, timeout).await?;
        submitted.following.direct = Some(Direct::new(direct));
        Ok(submitted)
    }

    /// Follows a task submitted earlier (`vgas watch`): its record is asked for at once, so a
    /// task that has already finished ends the follow without waiting.
    pub async fn follow(&self, id: &TaskId) -> Result<Following> {
        let events = self.client.subscribe(self.subjects.task_events(id)).await?;
        Ok(Following::new(self.clone(), id.clone(), events))
    }
}

/// A task being followed; [`Following::next`] gives its steps in order.
#[derive(Debug)]
pub struct Following {
    swarm: Swarm,
    id: TaskId,
    events: Subscriber,
    /// The newest attempt seen; output of older (lost) attempts is dropped.
    attempt: u32,
    /// Relayed events seen: one relayed again by a restarted master is dropped.
    relayed: RelayedSeen,
    /// The worker's own events, when asked for ([`Swarm::submit_direct`]).
    direct: Option<Direct>,
    /// The files given so far, by attempt: the second copy of one (relayed, or direct) is
    /// dropped.
    files_given: HashSet<(u32, String)>,
    /// Steps found together (files held for the master's word), given one at a time.
    ready: VecDeque<Step>,
    poll: Interval,
    /// Past this, the follower cancels the task and gives up; until then, a failed poll (the
    /// master restarting) is tried again at the next tick.
    give_up: Option<(Instant, Duration)>,
    /// The record said the task finished: read events until the drain window closes.
    finishing: Option<(TaskOutcome, Option<WorkerId>, Instant)>,
    done: bool,
}

/// The follower gave up: no result within its limit. The task was asked to cancel.
#[derive(Debug, thiserror::Error)]
#[error("no result within {0:?}")]
pub struct NoResult(pub Duration);

impl Following {
    fn new(swarm: Swarm, id: TaskId, events: Subscriber) -> Self {
        Following {
            swarm,
            id,
            events,
            attempt: 0,
            relayed: RelayedSeen::default(),
            direct: None,
            files_given: HashSet::new(),
            ready: VecDeque::new(),
            poll: tokio::time::interval(POLL_INTERVAL),
            give_up: None,
            finishing: None,
            done: false,
        }
    }

    pub fn id(&self) -> &TaskId {
        &self.id
    }

    /// Gives up after `limit` from now: the task is cancelled and [`Following::next`] fails
    /// with [`NoResult`]. A follower with a limit rides out a master that does not answer.
    pub fn give_up_after(mut self, limit: Duration) -> Self {
        self.give_up = Some((Instant::now() + limit, limit));
        self
    }

    /// The next step. After [`Step::Finished`] it fails.
    pub async fn next(&mut self) -> Result<Step> {
        if self.done {
            bail!("task {} has already finished", self.id);
        }
        loop {
            if let Some(step) = self.ready.pop_front() {
                return Ok(self.seen(step));
            }
            if let Some((_, _, until)) = &self.finishing {
                let until = *until;
                let msg = tokio::time::timeout_at(until, self.events.next()).await;
                if let Ok(Some(msg)) = msg {
                    if let Some(step) = self.on_message(&msg)? {
                        return Ok(self.seen(step));
                    }
                    continue;
                }
                let (outcome, worker, _) = self.finishing.take().expect("finishing");
                return Ok(self.seen(Step::Finished { outcome, worker }));
            }
            let direct = async {
                match self.direct.as_mut() {
                    Some(d) => d.events.next().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = self.events.next() => {
                    let Some(msg) = msg else { bail!("the event subscription of task {} closed", self.id) };
                    if let Some(step) = self.on_message(&msg)? {
                        return Ok(self.seen(step));
                    }
                }
                msg = direct => match msg {
                    Some(msg) => self.on_direct(&msg)?,
                    // Closed (a reconnect gone wrong): the relay still brings everything.
                    None => self.direct = None,
                },
                _ = self.poll.tick() => self.poll_record().await?,
            }
        }
    }

    fn seen(&mut self, step: Step) -> Step {
        if matches!(step, Step::Finished { .. }) {
            self.done = true;
        }
        step
    }

    async fn poll_record(&mut self) -> Result<()> {
        if let Some((at, limit)) = self.give_up {
            if Instant::now() > at {
                let _ = self.swarm.cancel(&self.id).await;
                return Err(NoResult(limit).into());
            }
        }
        let query = TaskQuery {
            task_id: self.id.clone(),
        };
        let rec: Result<TaskRecord> = self
            .swarm
            .request(self.swarm.subjects.task_info(), &query)
            .await;
        match rec {
            Ok(TaskRecord {
                state:
                    TaskState::Finished {
                        outcome, worker, ..
                    },
                ..
            }) => {
                self.finishing = Some((outcome, worker, Instant::now() + DRAIN_WINDOW));
                Ok(())
            }
            Ok(_) => Ok(()),
            Err(_) if self.give_up.is_some() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The step a message makes, if any: a relayed event seen already is dropped.
    fn on_message(&mut self, msg: &async_nats::Message) -> Result<Option<Step>> {
        if !self.relayed.is_new(msg) {
            return Ok(None);
        }
        self.on_event(&msg.payload)
    }

    /// A message on the worker's own subject: a file of the current attempt from the worker
    /// the master named for it joins the steps.
    fn on_direct(&mut self, msg: &async_nats::Message) -> Result<()> {
        let subjects = &self.swarm.subjects;
        let Some(ev) = self
            .direct
            .as_mut()
            .and_then(|d| d.on_message(subjects, msg))
        else {
            return Ok(());
        };
        if let Some(step) = self.on_decoded(ev)? {
            self.ready.push_back(step);
        }
        Ok(())
    }

    /// The master named `worker` for `attempt`: files the worker sent before that was known
    /// join the steps, after the one that named it.
    fn named(&mut self, attempt: u32, worker: &WorkerId) -> Result<()> {
        let Some(d) = self.direct.as_mut() else {
            return Ok(());
        };
        for ev in d.runs(attempt, worker.clone()) {
            if let Some(step) = self.on_decoded(ev)? {
                self.ready.push_back(step);
            }
        }
        Ok(())
    }

    /// The step an event makes, if any: stale attempts' output and undecodable events are
    /// dropped.
    fn on_event(&mut self, payload: &[u8]) -> Result<Option<Step>> {
        let Ok(ev) = decode_as::<TaskEvent>(Encoding::detect(payload), payload) else {
            return Ok(None);
        };
        self.on_decoded(ev)
    }

    fn on_decoded(&mut self, ev: TaskEvent) -> Result<Option<Step>> {
        let current = |a: u32, me: &mut Self| {
            if a >= me.attempt {
                me.attempt = a;
                true
            } else {
                false
            }
        };
        Ok(match ev {
            TaskEvent::Assigned { attempt, worker } => {
                self.attempt = self.attempt.max(attempt);
                self.named(attempt, &worker)?;
                None
            }
            TaskEvent::Started { worker, attempt } => {
                self.named(attempt, &worker)?;
                current(attempt, self).then_some(Step::Started { worker, attempt })
            }
            TaskEvent::Stdout { attempt, data } => {
                current(attempt, self).then_some(Step::Stdout(data))
            }
            TaskEvent::Stderr { attempt, data } => {
                current(attempt, self).then_some(Step::Stderr(data))
            }
            TaskEvent::Retrying { attempt, reason } => {
                self.attempt = self.attempt.max(attempt);
                Some(Step::Retrying { attempt, reason })
            }
            TaskEvent::Artifact {
                attempt,
                path,
                base64,
                object,
                size,
                mode,
                ran_us,
                stdout_bytes,
                stderr_bytes,
            } => {
                if !current(attempt, self) || !self.files_given.insert((attempt, path.clone())) {
                    return Ok(None);
                }
                check_relative_path(&path)?;
                let body = match object {
                    Some(object) => ArtifactBody::Object {
                        object,
                        size: size.unwrap_or(0),
                    },
                    None => ArtifactBody::Inline(
                        base64::engine::general_purpose::STANDARD
                            .decode(base64)
                            .with_context(|| format!("artifact {path}: bad base64"))?,
                    ),
                };
                Some(Step::Artifact(Artifact {
                    path,
                    mode,
                    body,
                    ran: ran_us.map(Duration::from_micros),
                    output_before: stdout_bytes.zip(stderr_bytes),
                }))
            }
            TaskEvent::Finished {
                outcome, worker, ..
            } => Some(Step::Finished { outcome, worker }),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(seq: Option<&str>) -> async_nats::Message {
        let headers = seq.map(|s| {
            let mut h = async_nats::HeaderMap::new();
            h.insert(vgas_shared::wire::HEADER_EVENT_SEQ, s);
            h
        });
        async_nats::Message {
            subject: "vgas.task.t.events".into(),
            reply: None,
            payload: bytes::Bytes::new(),
            headers,
            status: None,
            description: None,
            length: 0,
        }
    }

    #[test]
    fn a_relayed_event_seen_already_is_a_repeat() {
        let mut seen = RelayedSeen::default();
        assert!(seen.is_new(&message(Some("7"))));
        assert!(seen.is_new(&message(Some("9"))));
        assert!(!seen.is_new(&message(Some("9"))), "relayed again");
        assert!(
            !seen.is_new(&message(Some("7"))),
            "an older one relayed again"
        );
        assert!(seen.is_new(&message(None)), "the master's own events");
        assert!(seen.is_new(&message(Some("not a number"))));
        assert!(seen.is_new(&message(Some("10"))));
    }
}
