//! How long a finished task's spec stays in its record. The payload a submitter sent (command,
//! env, stdin, files, a segment or a run) is needed until the task finishes; the record then
//! keeps the spec's shape and digest for `vgas.task.info` and idempotent resubmits, and the
//! payload is dropped once the retention setting (`--spec-retention`) has passed. With 0, or
//! a payload over [`KEEP_SPEC_UP_TO`], the final record is written without it; otherwise the
//! finished record goes to the [`run`] loop here, which rewrites it without the payload when
//! its time comes. Bounded: a finishing task that finds the loop's queue full has its record
//! written without the payload at once.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::warn;
use vgas_shared::now_ms;
use vgas_shared::wire::TaskRecord;
#[cfg(doc)]
use vgas_shared::wire::TaskSpec;

use crate::store::TaskStore;

/// The default retention after a task finishes: long enough for a follower that missed the
/// `finished` event to read the record with its spec, short enough that nothing confidential
/// stays at rest for long.
pub const DEFAULT_SPEC_RETENTION: Duration = Duration::from_secs(60);

/// The largest spec payload ([`TaskSpec::payload_len`]) a final record keeps for the retention
/// setting: a larger one (a build segment's preprocessed source, inline files or modules) is
/// written without it at once. Kept, it would cross nats-server and be stored a third time
/// (after the submit and the accepted record) for a reader that already sent it and wants
/// the outcome; in a build of Lua the final records with their sources were 29% of the bytes
/// the master sent the server (13.4 MB a build with them, 9.5 MB without).
pub const KEEP_SPEC_UP_TO: usize = 16 * 1024;

/// Finished records waiting for their spec to be dropped (about 300 bytes each, their payload
/// already gone from the copy kept here): 64 Ki of them is 20 MB at most.
pub const RETENTION_QUEUE: usize = 64 * 1024;

/// Records rewritten together, one round of writes.
const DROP_BATCH: usize = 256;

/// The dispatcher's side: where finished records go.
#[derive(Clone, Debug)]
pub struct Retention {
    grace: Duration,
    tx: mpsc::Sender<TaskRecord>,
}

/// What to write for a finishing task now, and what to hand the loop once it is written.
#[derive(Debug)]
pub enum FinalWrite {
    /// Write the record as it is; hand the permit its spec-less copy afterwards.
    Keep(mpsc::OwnedPermit<TaskRecord>),
    /// Write the record without its spec now (no retention, or the loop is full).
    DropNow,
}

impl Retention {
    /// The dispatcher's side and the receiver [`run`] takes.
    pub fn new(grace: Duration) -> (Retention, mpsc::Receiver<TaskRecord>) {
        let (tx, rx) = mpsc::channel(RETENTION_QUEUE);
        (Retention { grace, tx }, rx)
    }

    /// How the final record `rec` of a finishing task is written.
    pub fn final_write(&self, rec: &TaskRecord) -> FinalWrite {
        if self.grace.is_zero() || rec.spec.payload_len() > KEEP_SPEC_UP_TO {
            return FinalWrite::DropNow;
        }
        match self.tx.clone().try_reserve_owned() {
            Ok(permit) => FinalWrite::Keep(permit),
            Err(_) => FinalWrite::DropNow,
        }
    }

    /// When the spec of a record that finished at `finished_ms` is due to go.
    fn due_ms(&self, finished_ms: u64) -> u64 {
        finished_ms.saturating_add(self.grace.as_millis() as u64)
    }

    /// After a restart: the finished records that still hold their spec. Those past their
    /// time (or that find the queue full) are rewritten now; the rest wait in the loop.
    pub async fn recover(&self, store: &TaskStore, records: &[TaskRecord]) {
        let now = now_ms();
        let mut now_due = Vec::new();
        for rec in records {
            let (Some(finished), None) = (rec.finished_ms(), rec.spec_dropped_ms) else {
                continue;
            };
            let dropped = rec.without_spec(now);
            if self.due_ms(finished) <= now {
                now_due.push(dropped);
            } else if let Err(e) = self.tx.try_send(dropped) {
                now_due.push(e.into_inner());
            }
        }
        for chunk in now_due.chunks(DROP_BATCH) {
            write(store, chunk).await;
        }
    }
}

/// Rewrites each record that [`Retention`] was handed without its spec when its time comes,
/// until `stop`. A record still waiting when the master stops keeps its spec until the next
/// start's [`Retention::recover`].
pub async fn run(
    store: TaskStore,
    retention: Retention,
    mut rx: mpsc::Receiver<TaskRecord>,
    stop: CancellationToken,
) {
    let mut next: Option<TaskRecord> = None;
    loop {
        let first = match next.take() {
            Some(r) => r,
            None => tokio::select! {
                r = rx.recv() => match r {
                    Some(r) => r,
                    None => return,
                },
                _ = stop.cancelled() => return,
            },
        };
        let due = retention.due_ms(first.finished_ms().unwrap_or(0));
        let wait = Duration::from_millis(due.saturating_sub(now_ms()));
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = stop.cancelled() => return,
        }
        let now = now_ms();
        let mut batch = vec![first];
        while batch.len() < DROP_BATCH {
            match rx.try_recv() {
                Ok(r) if retention.due_ms(r.finished_ms().unwrap_or(0)) <= now => batch.push(r),
                Ok(r) => {
                    next = Some(r);
                    break;
                }
                Err(_) => break,
            }
        }
        for r in &mut batch {
            r.spec_dropped_ms = Some(now);
        }
        write(&store, &batch).await;
    }
}

async fn write(store: &TaskStore, recs: &[TaskRecord]) {
    let refs: Vec<&TaskRecord> = recs.iter().collect();
    for (r, w) in recs.iter().zip(store.put_all(&refs).await) {
        if let Err(e) = w {
            warn!(task_id = %r.task_id, "could not drop the spec from a finished record: {e:#}");
        }
    }
}

#[cfg(test)]
mod tests {
    use vgas_shared::wire::{TaskOutcome, TaskSpec, TaskState};
    use vgas_shared::{Encoding, TaskId};

    use super::*;

    fn finished(stdin: String) -> TaskRecord {
        TaskRecord {
            task_id: TaskId::random(),
            spec: TaskSpec {
                stdin,
                ..TaskSpec::default()
            },
            encoding: Encoding::MsgPack,
            accepted_ms: 1,
            attempt: 1,
            state: TaskState::Finished {
                worker: None,
                outcome: TaskOutcome::Exited { exit_code: 0 },
                finished_ms: 2,
            },
            retries: Vec::new(),
            spec_digest: None,
            spec_dropped_ms: None,
        }
    }

    #[test]
    fn only_a_small_payload_is_kept_for_the_retention_setting() {
        let (retention, _rx) = Retention::new(DEFAULT_SPEC_RETENTION);
        let small = finished("x".repeat(KEEP_SPEC_UP_TO));
        assert!(matches!(retention.final_write(&small), FinalWrite::Keep(_)));
        let large = finished("x".repeat(KEEP_SPEC_UP_TO + 1));
        assert!(matches!(retention.final_write(&large), FinalWrite::DropNow));
        let (none, _rx) = Retention::new(Duration::ZERO);
        assert!(matches!(none.final_write(&small), FinalWrite::DropNow));
    }
}
