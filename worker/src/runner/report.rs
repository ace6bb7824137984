//! What leaves the worker for an attempt: its events (an artifact inline, or by reference
//! once uploaded to the artifacts bucket) and its result, taken by the leading master
//! straight away or else stored in JetStream through a nats-server restart, with a message
//! id that makes a retried publish a duplicate.

use std::time::{Duration, Instant};

use async_nats::HeaderMap;
use base64::Engine as _;
use bytes::Bytes;
use tracing::warn;
use vgas_shared::codec::encode;
use vgas_shared::wire::{TaskEvent, WorkerResult, RESULT_TAKEN};
use vgas_shared::{Encoding, TaskId};

use super::Worker;
use crate::wasm::{Artifact, ArtifactBody};

/// Attempts to store a result in JetStream before giving up on it (with back-off, about a
/// minute in all): long enough to ride out a nats-server restart.
const RESULT_PUBLISH_ATTEMPTS: u32 = 30;

/// How long a worker waits for the master to take a result offered straight to it before
/// storing it in the results stream instead. The master answers once it has written the
/// task's final record, a fraction of a millisecond here and seconds at worst while a
/// cluster elects a stream leader; a result stored after a late answer is a duplicate the
/// master acknowledges and announces nothing for, so waiting longer only delays a result
/// whose master died.
const DIRECT_RESULT_WAIT: Duration = Duration::from_secs(2);

/// How long a worker stores its results without offering them after an offer went
/// unanswered: the master that did not answer may be dead (its successor takes results from
/// the stream as fast), or the server's grants may predate the direct subject, when every
/// offer would wait out [`DIRECT_RESULT_WAIT`]. Half a minute bounds that cost to one
/// result in that time.
pub(super) const OFFERS_PAUSED_FOR: Duration = Duration::from_secs(30);

/// Bytes of stdout and stderr an attempt has sent.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct OutputSent {
    pub(super) stdout: u64,
    pub(super) stderr: u64,
}

/// What each file of an attempt says about the run that wrote it: how long the task's own
/// process ran (compiles), and how much output the attempt sent before its files, so a
/// client that reads the files straight from the worker knows when it has all the output.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct FileNote {
    pub(super) ran_us: Option<u64>,
    pub(super) sent: OutputSent,
}

impl Worker {
    /// The event for one artifact: inline, or by reference once uploaded to the artifacts
    /// bucket. The error is a sentence for the task's outcome.
    pub(super) async fn artifact_event(
        &self,
        task: &TaskId,
        attempt: u32,
        art: Artifact,
        note: FileNote,
    ) -> Result<TaskEvent, String> {
        let (ran_us, stdout_bytes, stderr_bytes) =
            (note.ran_us, Some(note.sent.stdout), Some(note.sent.stderr));
        Ok(match art.body {
            ArtifactBody::Inline(bytes) => TaskEvent::Artifact {
                attempt,
                path: art.path,
                base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
                object: None,
                size: None,
                mode: art.mode,
                ran_us,
                stdout_bytes,
                stderr_bytes,
            },
            ArtifactBody::Large { file, size } => {
                let bucket = self.cfg.conn.subjects.artifacts_bucket();
                let object =
                    crate::wasm::upload(&self.js, &bucket, task, attempt, &art.path, &file).await?;
                TaskEvent::Artifact {
                    attempt,
                    path: art.path,
                    base64: String::new(),
                    object: Some(object),
                    size: Some(size),
                    mode: art.mode,
                    ran_us,
                    stdout_bytes,
                    stderr_bytes,
                }
            }
        })
    }

    /// Publishes one event of an attempt on this worker's own event subject; whether it was
    /// handed to the connection (what the result's `events` counts).
    pub(super) async fn emit(&self, subject: &str, enc: Encoding, ev: &TaskEvent) -> bool {
        let Ok(bytes) = encode(enc, ev) else {
            return false;
        };
        match self
            .client
            .publish(subject.to_owned(), Bytes::from(bytes))
            .await
        {
            Ok(()) => true,
            Err(e) => {
                warn!("could not publish an event: {e}");
                false
            }
        }
    }

    /// Hands the result to the leading master, remembering it for an assignment of the same
    /// attempt sent again ([`Worker::publish_result_again`]): offered straight to the master
    /// first, which answers [`RESULT_TAKEN`] once the task's final record is written and
    /// announced; otherwise (no master, an answer of any other kind, none in
    /// [`DIRECT_RESULT_WAIT`]) stored in JetStream, retrying through a server restart. The
    /// message id makes a retried publish of the same attempt a duplicate JetStream drops.
    pub(super) async fn publish_result(&self, r: &WorkerResult) {
        self.taken.lock().expect("taken lock").ended(r);
        if self.offer_result(r).await {
            return;
        }
        self.store_result(r, format!("{}-{}", r.task_id, r.attempt))
            .await;
    }

    /// Offers a result to the leading master outside JetStream; whether it took it.
    async fn offer_result(&self, r: &WorkerResult) -> bool {
        let paused = *self.offers_paused_until.lock().expect("offers lock");
        if paused.is_some_and(|until| Instant::now() < until) {
            return false;
        }
        let subject = self
            .cfg
            .conn
            .subjects
            .result_direct(&self.cfg.id, &r.task_id);
        let Ok(bytes) = encode(Encoding::MsgPack, r) else {
            return false;
        };
        let asked = self.client.request(subject, Bytes::from(bytes));
        match tokio::time::timeout(DIRECT_RESULT_WAIT, asked).await {
            Ok(Ok(answer)) => answer.payload.as_ref() == RESULT_TAKEN,
            Ok(Err(e)) => {
                // No responders: no master leads now; the stream keeps the result for one.
                tracing::debug!(task_id = %r.task_id, "result not taken directly: {e}");
                false
            }
            Err(_) => {
                *self.offers_paused_until.lock().expect("offers lock") =
                    Some(Instant::now() + OFFERS_PAUSED_FOR);
                warn!(
                    task_id = %r.task_id,
                    "no answer from the master in {DIRECT_RESULT_WAIT:?}: the result is stored in \
                     the results stream, and so are the next {OFFERS_PAUSED_FOR:?} of results \
                     (a master killed or frozen, or server grants older than this worker: \
                     run `vgas init` again to add <prefix>.result.<worker>.*.direct)"
                );
                false
            }
        }
    }

    /// Stores an attempt's result once more: its assignment came again (a master that
    /// recovered the task's record still naming this attempt), and the first copy may have
    /// been taken and dropped meanwhile. A message id of its own, so JetStream does not take
    /// it for the first copy; a master that had that one ignores this one.
    pub(super) async fn publish_result_again(&self, r: &WorkerResult) {
        let n = self.seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(task_id = %r.task_id, attempt = r.attempt, "assigned again after it ended: sending its result again");
        self.store_result(r, format!("{}-{}-again-{n}", r.task_id, r.attempt))
            .await;
    }

    async fn store_result(&self, r: &WorkerResult, msg_id: String) {
        let subject = self.cfg.conn.subjects.result(&self.cfg.id, &r.task_id);
        let Ok(bytes) = encode(Encoding::MsgPack, r) else {
            return;
        };
        let bytes = Bytes::from(bytes);
        let mut delay = Duration::from_millis(100);
        for n in 1..=RESULT_PUBLISH_ATTEMPTS {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", msg_id.as_str());
            let sent = async {
                self.js
                    .publish_with_headers(subject.clone(), headers, bytes.clone())
                    .await?
                    .await
                    .map_err(async_nats::Error::from)
            };
            match sent.await {
                Ok(_) => return,
                Err(e) => {
                    warn!(try_number = n, "result not stored yet: {e}");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
        warn!("gave up storing the result; the master will retry the task after its deadline");
    }
}
