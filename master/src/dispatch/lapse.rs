//! Attempts that end without a result: a worker that stopped heartbeating, a deadline that
//! passed, a cancel. Each lost attempt counts against the task's attempt budget: the task goes
//! back to the head of the queue (announced as `retrying` when its next attempt is sent) or
//! is given up with the last reason; a cancel stops the running attempt on its worker, or
//! ends a queued task at once.

use tracing::warn;
use vgas_shared::codec::encode;
use vgas_shared::limits::{ABNORMAL_AFTER, DEADLINE_GRACE};
use vgas_shared::wire::{CancelAttempt, TaskOutcome, TaskState};
use vgas_shared::{now_ms, Encoding, TaskId, WorkerId};

use super::Dispatcher;

impl Dispatcher {
    /// Retries attempts whose worker is gone or whose deadline passed with no result, and
    /// audits the others against their workers' heartbeats (`audit`).
    pub(super) async fn check_assigned(&mut self) {
        let now = now_ms();
        let beat_window = ABNORMAL_AFTER.as_millis() as u64;
        self.sched.reap();
        let mut lost = Vec::new();
        for (id, t) in &self.tasks {
            let TaskState::Assigned {
                worker, since_ms, ..
            } = &t.rec.state
            else {
                continue;
            };
            let age = now.saturating_sub(*since_ms);
            let deadline = (t.rec.spec.deadline() + DEADLINE_GRACE).as_millis() as u64;
            if now > t.clock.due_ms(deadline) {
                lost.push((
                    id.clone(),
                    worker.clone(),
                    format!(
                        "no result from worker {worker} within the deadline of {}s",
                        t.rec.spec.deadline().as_secs()
                    ),
                ));
            } else if !self.sched.is_live(worker)
                && age > beat_window
                && now.saturating_sub(self.started_ms) > beat_window
            {
                lost.push((
                    id.clone(),
                    worker.clone(),
                    format!("worker {worker} stopped heartbeating"),
                ));
            }
        }
        for (id, worker, reason) in lost {
            warn!(task_id = %id, "attempt lost: {reason}");
            self.free(&id, &worker);
            self.lose_attempt(&id, reason).await;
        }
        if now >= self.audit_at {
            self.audit_at = now + super::audit::AUDIT_EVERY.as_millis() as u64;
            self.audit_attempts().await;
        }
    }

    /// Counts a lost attempt; queues the task again or gives up.
    pub(super) async fn lose_attempt(&mut self, id: &TaskId, reason: String) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if t.cancel_requested {
            self.finalize(id, TaskOutcome::Cancelled, None).await;
            return;
        }
        t.rec.retries.push(reason.clone());
        let max = t.rec.spec.max_attempts() as usize;
        if t.rec.retries.len() >= max {
            let message = if max == 1 {
                format!("{reason}; the task is not retryable")
            } else {
                format!("gave up after {max} attempts; last: {reason}")
            };
            self.finalize(id, TaskOutcome::Abandoned { message }, None)
                .await;
        } else {
            self.requeue(id, Some(reason)).await;
        }
    }

    /// Puts a task back at the head of the queue; `reason` is announced as a retry when the
    /// next attempt is sent ([`Dispatcher::dispatch_task`]), not before: the lost attempt may
    /// still end the task first, and then no other attempt begins (see `on_result`).
    pub(super) async fn requeue(&mut self, id: &TaskId, reason: Option<String>) {
        let Some(t) = self.tasks.get_mut(id) else {
            return;
        };
        if let TaskState::Assigned { worker, .. } = &t.rec.state {
            t.lost = Some((worker.clone(), t.rec.attempt));
        }
        t.rec.state = TaskState::Queued;
        t.entered_queue_ms = now_ms();
        self.observe.retried(id);
        if let Err(e) = self.store.put(&t.rec).await {
            warn!(task_id = %id, "could not record requeue: {e:#}");
        }
        if reason.is_some() {
            t.retry = reason;
        }
        self.pending.push_front(id.clone());
    }

    pub(super) async fn cancel(&mut self, id: &TaskId) -> bool {
        let Some(t) = self.tasks.get_mut(id) else {
            return false;
        };
        t.cancel_requested = true;
        match &t.rec.state {
            TaskState::Assigned { worker, .. } => {
                let (worker, attempt) = (worker.clone(), t.rec.attempt);
                self.send_cancel(id, &worker, attempt).await;
            }
            _ => {
                self.pending.retain(|p| p != id);
                self.finalize(id, TaskOutcome::Cancelled, None).await;
            }
        }
        true
    }

    /// Tells `worker` to stop `attempt` of a task; a worker not running it ignores this.
    pub(super) async fn send_cancel(&self, id: &TaskId, worker: &WorkerId, attempt: u32) {
        let Ok(bytes) = encode(
            Encoding::MsgPack,
            &CancelAttempt {
                task_id: id.clone(),
                attempt,
            },
        ) else {
            return;
        };
        let subject = self.subjects.worker_cancel(worker);
        if let Err(e) = self.client.publish(subject, bytes.into()).await {
            warn!(task_id = %id, "could not send cancel: {e}");
        }
    }
}
