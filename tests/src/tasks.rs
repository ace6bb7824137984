//! Talking to a running swarm as a plain client: MessagePack requests, submitting a task and
//! collecting its events to the end, and a shell task spec.

use std::time::Duration;

use anyhow::{bail, Result};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vgas_shared::codec::{decode_as, encode, Reply};
use vgas_shared::wire::{SubmitReply, TaskEvent, TaskSpec};
use vgas_shared::{Encoding, Subjects, TaskId};

use crate::WAIT;

/// A MessagePack request that expects a non-error reply.
pub async fn request<Q: Serialize, A: DeserializeOwned>(
    client: &async_nats::Client,
    subject: String,
    body: &Q,
) -> Result<A> {
    let bytes = encode(Encoding::MsgPack, body)?;
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject, bytes.into()),
    )
    .await??;
    let reply: Reply<A> = decode_as(Encoding::MsgPack, &msg.payload)?;
    Ok(reply.into_result()?)
}

/// Everything a task published, collected until its `finished` event.
#[derive(Debug, Default)]
pub struct Collected {
    pub stdout: String,
    pub stderr: String,
    pub events: Vec<TaskEvent>,
}

impl Collected {
    pub fn finished(&self) -> Option<&TaskEvent> {
        self.events
            .iter()
            .find(|e| matches!(e, TaskEvent::Finished { .. }))
    }

    pub fn outcome(&self) -> vgas_shared::wire::TaskOutcome {
        match self.finished() {
            Some(TaskEvent::Finished { outcome, .. }) => outcome.clone(),
            _ => panic!("no finished event in {:?}", self.events),
        }
    }

    pub fn finished_count(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, TaskEvent::Finished { .. }))
            .count()
    }
}

/// Subscribes to a task's events, submits it, and collects events until it finishes (then
/// waits `linger` more to catch any duplicate final result).
pub async fn run_task(
    client: &async_nats::Client,
    subjects: &Subjects,
    mut spec: TaskSpec,
    linger: Duration,
) -> Result<Collected> {
    let id = spec.task_id.clone().unwrap_or_else(TaskId::random);
    spec.task_id = Some(id.clone());
    let sub = client.subscribe(subjects.task_events(&id)).await?;
    let _: SubmitReply = request(client, subjects.submit(), &spec).await?;
    collect(sub, WAIT + spec.deadline(), linger).await
}

/// One subscription to the events of each task, in order, made before the tasks are
/// submitted so that no event is missed.
pub async fn subscribe_events(
    client: &async_nats::Client,
    subjects: &Subjects,
    ids: &[TaskId],
) -> Result<Vec<async_nats::Subscriber>> {
    let mut subs = Vec::with_capacity(ids.len());
    for id in ids {
        subs.push(client.subscribe(subjects.task_events(id)).await?);
    }
    Ok(subs)
}

/// Collects events from `sub` until a `finished` event (plus `linger`), or fails after `timeout`
/// or when any event but a (duplicate) `finished` follows the first `finished`.
pub async fn collect(
    mut sub: async_nats::Subscriber,
    timeout: Duration,
    linger: Duration,
) -> Result<Collected> {
    use futures::StreamExt;
    let mut c = Collected::default();
    let end = tokio::time::Instant::now() + timeout;
    let mut linger_end: Option<tokio::time::Instant> = None;
    // As the protocol tells followers: a relayed event seen already (a restarted master
    // relays what its predecessor had not acknowledged) is dropped by its sequence.
    let mut relayed = vgas_client::api::RelayedSeen::default();
    loop {
        let until = linger_end.unwrap_or(end);
        let msg = match tokio::time::timeout_at(until, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => bail!("subscription closed"),
            Err(_) if linger_end.is_some() => return Ok(c),
            Err(_) => bail!("no finished event within {timeout:?}; got {:?}", c.events),
        };
        if !relayed.is_new(&msg) {
            continue;
        }
        let ev: TaskEvent = decode_as(Encoding::detect(&msg.payload), &msg.payload)?;
        // The master relays a worker's events before it announces the end, never after.
        if linger_end.is_some() && !matches!(ev, TaskEvent::Finished { .. }) {
            bail!("{ev:?} after the finished event; got {:?}", c.events);
        }
        match &ev {
            TaskEvent::Stdout { data, .. } => c.stdout.push_str(data),
            TaskEvent::Stderr { data, .. } => c.stderr.push_str(data),
            TaskEvent::Finished { .. } if linger_end.is_none() => {
                linger_end = Some(tokio::time::Instant::now() + linger);
            }
            _ => {}
        }
        c.events.push(ev);
    }
}

/// A spec for `sh -c script`.
pub fn sh(script: &str) -> TaskSpec {
    TaskSpec {
        cmd: vec!["sh".into(), "-c".into(), script.into()],
        ..Default::default()
    }
}

/// Submits `spec` (with a random id unless it has one) and returns its event subscription
/// and the worker that started it.
pub async fn submit_until_started(
    client: &async_nats::Client,
    subjects: &Subjects,
    mut spec: TaskSpec,
) -> (async_nats::Subscriber, String, Vec<TaskEvent>) {
    let id = spec.task_id.get_or_insert_with(TaskId::random).clone();
    let mut sub = client.subscribe(subjects.task_events(&id)).await.unwrap();
    let _: SubmitReply = request(client, subjects.submit(), &spec).await.unwrap();
    let mut seen = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut sub))
            .await
            .expect("started event")
            .unwrap();
        let ev: TaskEvent = decode_as(Encoding::MsgPack, &msg.payload).unwrap();
        seen.push(ev.clone());
        if let TaskEvent::Started { worker, .. } = ev {
            return (sub, worker.to_string(), seen);
        }
    }
}

/// The worker a task's `finished` event names.
pub fn finished_worker(events: &[TaskEvent]) -> String {
    events
        .iter()
        .find_map(|e| match e {
            TaskEvent::Finished {
                worker: Some(w), ..
            } => Some(w.to_string()),
            _ => None,
        })
        .expect("finished with a worker")
}
