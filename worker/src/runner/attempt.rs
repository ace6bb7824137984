//! One attempt from its slot to its result: the work run, its output and files published
//! on this worker's event subject as they come, the work directory removed, the result
//! made. An attempt that waited in the queue ahead of the slots owes its own `started`
//! (its acknowledgement said "queued"), said only if it runs long enough to matter
//! (`--started-after-ms`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::info;
use vgas_shared::limits::EVENT_CHANNEL_CAPACITY;
use vgas_shared::wire::{Assignment, TaskEvent, TaskOutcome, WorkerResult};

use super::report::{FileNote, OutputSent};
use super::{work, Worker};
use crate::sandbox::OutputChunk;

/// An attempt queued ahead of the slots says `started` itself once it has run this long, or
/// before its first output or file, whichever comes first. One that ends sooner says
/// nothing: its result implies it ran, and the master announces `started` from the result,
/// just before `finished`. Under a burst of short tasks, most of them queued, that is one
/// event fewer per task through the results stream (a JetStream write, its delivery to the
/// master and the acknowledgement); a longer task's `started` comes this much after it did.
///
/// The default of `--started-after-ms`.
pub const STARTED_AFTER: Duration = Duration::from_millis(10);

/// The most `--started-after-ms` may say: past a minute, someone following a long queued
/// task would take it for one that never began.
pub const MAX_STARTED_AFTER: Duration = Duration::from_secs(60);

impl Worker {
    /// Runs one attempt in slot `slot` and says how it ended; the caller sends the result
    /// once the slot is free again.
    pub(super) async fn run_attempt(
        &self,
        a: &Assignment,
        slot: usize,
        cancel: CancellationToken,
        handed_back: Arc<AtomicBool>,
        owes_started: bool,
    ) -> WorkerResult {
        let started = Instant::now();
        // `started` is the master's to say, on the acknowledgement (or, `owes_started`, this
        // worker's, see [`STARTED_AFTER`]); output goes to this worker's own event subject,
        // which the master relays (and a client may read directly: each file says how much
        // output came before it).
        let subjects = &self.cfg.conn.subjects;
        let events = subjects.worker_events(&self.cfg.id, &a.task_id);
        tracing::debug!(target: vgas_shared::logging::TASKS_TARGET, cmd = ?a.spec.cmd, "started");
        let (tx, mut rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
        let started_event = TaskEvent::Started {
            worker: self.cfg.id.clone(),
            attempt: a.attempt,
        };
        let forward = async {
            let (mut sent, mut published) = (OutputSent::default(), 0u32);
            let mut owed = owes_started;
            let started_after = tokio::time::sleep(self.cfg.started_after);
            tokio::pin!(started_after);
            loop {
                let chunk = tokio::select! {
                    chunk = rx.recv() => chunk,
                    () = &mut started_after, if owed => {
                        owed = false;
                        published += u32::from(self.emit(&events, a.encoding, &started_event).await);
                        continue;
                    }
                };
                let Some(chunk) = chunk else { break };
                if std::mem::take(&mut owed) {
                    published += u32::from(self.emit(&events, a.encoding, &started_event).await);
                }
                let ev = match chunk {
                    OutputChunk::Stdout(data) => {
                        sent.stdout += data.len() as u64;
                        TaskEvent::Stdout {
                            attempt: a.attempt,
                            data,
                        }
                    }
                    OutputChunk::Stderr(data) => {
                        sent.stderr += data.len() as u64;
                        TaskEvent::Stderr {
                            attempt: a.attempt,
                            data,
                        }
                    }
                };
                published += u32::from(self.emit(&events, a.encoding, &ev).await);
            }
            (sent, published, owed)
        };
        // A spec that does not parse here ends as an error, like any run that could not start.
        let run = async {
            match work::task_of(&a.spec) {
                Ok(mut task) => {
                    work::identify(&mut task.work, &a.task_id, a.attempt, &self.cfg.id);
                    self.run_work(&task.work, &task.bounds, &a.gpus, slot, tx, cancel)
                        .await
                }
                Err(refused) => *refused,
            }
        };
        let (run, (sent, mut published, mut owed)) = tokio::join!(run, forward);
        // The work directory stays until the large artifacts in it are uploaded.
        let work::Run {
            mut outcome,
            artifacts,
            workdir,
            ran,
        } = run;
        let note = FileNote {
            ran_us: ran.map(|d| d.as_micros() as u64),
            sent,
        };
        for art in artifacts {
            let ev = match self.artifact_event(&a.task_id, a.attempt, art, note).await {
                Ok(ev) => ev,
                Err(message) => {
                    if outcome.succeeded() {
                        outcome = TaskOutcome::Error { message };
                    }
                    continue;
                }
            };
            if std::mem::take(&mut owed) {
                published += u32::from(self.emit(&events, a.encoding, &started_event).await);
            }
            published += u32::from(self.emit(&events, a.encoding, &ev).await);
        }
        // Uploaded: the work directory goes now, once the files just published are written
        // to the connection (its writer waits on this thread, and removing a compile's
        // directory, its headers and input, holds the thread for a good part of a
        // millisecond). Not on a blocking thread: a wasm task's empty directory goes in
        // microseconds, and the hand-off cost it more than that.
        if let Some(dir) = workdir {
            tracing::debug!(dir = %dir.path().display(), "removing the work directory");
            tokio::task::yield_now().await;
            drop(dir);
        }
        let handed_back = handed_back.load(Ordering::Acquire) && outcome == TaskOutcome::Cancelled;
        if outcome.succeeded() {
            tracing::debug!(target: vgas_shared::logging::TASKS_TARGET, handed_back, "ended: {}", outcome.describe());
        } else {
            info!(target: vgas_shared::logging::TASKS_TARGET, handed_back, "ended: {}", outcome.describe());
        }
        self.cfg
            .metrics
            .finished(a.spec.kind, &outcome, started.elapsed().as_millis() as u64);
        WorkerResult {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            worker: self.cfg.id.clone(),
            outcome,
            duration_ms: started.elapsed().as_millis() as u64,
            handed_back,
            events: Some(published),
        }
    }
}
