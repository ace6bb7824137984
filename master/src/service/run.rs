//! `vgas.task.run`: submit one task and have its `finished` event as the reply, the way
//! `ray.get(f.remote())` or `nats request` waits for an answer. The task is accepted exactly
//! as on `task.submit` (the same checks, the same record before anything else); only the
//! answer differs: a refusal comes back at once, an accepted task is answered when it ends,
//! by the dispatcher, on the request's reply subject.
//!
//! The wait is not durable: a master that stops drops its callers, whose requests time out.
//! Running the same `task_id` again is an idempotent resubmit that waits on the task that
//! id already names: still running here, it is answered when it ends; finished, its final
//! record answers at once. So a caller that names its tasks never loses one and never runs
//! one twice.

use std::time::Duration;

use tokio::sync::oneshot;
use vgas_shared::error::WireError;
use vgas_shared::limits::MAX_SUBMIT_BYTES;
use vgas_shared::wire::TaskSpec;
use vgas_shared::{Encoding, ErrorCode, TaskId};

use super::{batch, decode_request, err, reply, Answer, Handlers};
use crate::dispatch::{Command, Waiter, Waiting, MAX_WAITERS_PER_TASK};

/// Times a rerun asks the dispatcher for a task that is neither tracked nor finished: the
/// first submit of that id may be between its record's write and the hand-over (a few
/// microseconds), or a restarted master still taking the unfinished ones back.
const UNTRACKED_TRIES: u32 = 20;

/// The pause between those asks.
const UNTRACKED_PAUSE: Duration = Duration::from_millis(50);

impl Handlers {
    /// Accepts the task with its caller as a waiter. `None`: the dispatcher answers when the
    /// task ends; `Some`: the answer now (a refusal, or a finished task's event).
    pub(super) async fn run(
        &self,
        payload: &[u8],
        reply_to: Option<async_nats::Subject>,
    ) -> Option<(Encoding, Answer)> {
        let enc = Encoding::detect(payload);
        if batch::is_batch(payload) {
            let e = err(
                ErrorCode::BadRequest,
                "task.run takes one task spec; submit an array on task.submit",
            );
            return Some((enc, Err(e)));
        }
        let spec: TaskSpec = match decode_request(payload, MAX_SUBMIT_BYTES) {
            Ok((spec, _)) => spec,
            Err((enc, e)) => return Some((enc, Err(e))),
        };
        // A plain publish has nobody to answer: the task would run for nobody to see.
        let Some(reply) = reply_to else {
            let e = err(
                ErrorCode::BadRequest,
                "task.run is a request: it needs a reply subject",
            );
            return Some((enc, Err(e)));
        };
        let waiter = Waiter {
            reply,
            encoding: enc,
        };
        let spec = match self.admit(spec) {
            Ok(spec) => spec,
            Err(e) => return Some((enc, Err(e))),
        };
        match self.accept(spec, enc, Some(waiter.clone())).await {
            Ok(r) if !r.duplicate => None,
            Ok(r) => self.wait_on(r.task_id, waiter).await,
            Err(e) => Some((enc, Err(e))),
        }
    }

    /// Waits on a task that was accepted before: answered by the dispatcher when it ends, or
    /// now from its final record.
    async fn wait_on(&self, task_id: TaskId, waiter: Waiter) -> Option<(Encoding, Answer)> {
        let enc = waiter.encoding;
        for _ in 0..UNTRACKED_TRIES {
            let (tx, rx) = oneshot::channel();
            let cmd = Command::Wait {
                task_id: task_id.clone(),
                waiter: waiter.clone(),
                reply: tx,
            };
            if self.tx.send(cmd).await.is_err() {
                return Some((enc, Err(shutting_down())));
            }
            match rx.await {
                Ok(Waiting::Attached) => return None,
                Ok(Waiting::Full) => {
                    let e = err(
                        ErrorCode::Busy,
                        format!(
                            "task {task_id} already has {MAX_WAITERS_PER_TASK} callers waiting; follow its events instead"
                        ),
                    );
                    return Some((enc, Err(e)));
                }
                Ok(Waiting::Untracked) => {}
                Err(_) => return Some((enc, Err(shutting_down()))),
            }
            match self.store.get(&task_id).await {
                Ok(Some(rec)) => {
                    if let Some(ev) = rec.finished_event() {
                        return Some((enc, reply(enc, &ev)));
                    }
                }
                Ok(None) => {}
                Err(e) => {
                    let e = err(
                        ErrorCode::Internal,
                        format!("could not read the task store: {e:#}"),
                    );
                    return Some((enc, Err(e)));
                }
            }
            tokio::time::sleep(UNTRACKED_PAUSE).await;
        }
        let e = err(
            ErrorCode::Internal,
            format!("task {task_id} is recorded but not yet taken up by this master; run it again"),
        );
        Some((enc, Err(e)))
    }
}

fn shutting_down() -> WireError {
    err(
        ErrorCode::Internal,
        "the master is shutting down; the task is recorded: run the same task_id again to wait for it",
    )
}
