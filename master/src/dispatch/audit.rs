//! The audit of assigned attempts against their workers' heartbeats. A worker lists in every
//! heartbeat the attempts it holds, from its acknowledgement until the attempt's result is
//! stored; an attempt that its live worker no longer lists, and whose result has not come,
//! has lost its result somewhere between the two: the worker was restarted under the same id
//! faster than its silence could show (its new process never heard of the attempt), it gave
//! up storing the result while JetStream was away, or the result was taken and dropped
//! before the record naming the attempt could be replaced. Without the audit such a task
//! waited out its whole deadline (300 s by default).
//!
//! The assignment is sent again, as a recovering master sends it: a worker that ran the
//! attempt sends its result again, one that never heard of it runs it, one with no room
//! refuses and the task is queued again. Only while the results stream has nothing waiting
//! for this master: a result on its way is not taken for a lost one, and a backlog after a
//! restart does not turn into a wave of assignments sent again.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use tracing::warn;
use vgas_shared::limits::HEARTBEAT_INTERVAL;
use vgas_shared::wire::TaskState;
use vgas_shared::{now_ms, TaskId, WorkerId};

use super::{assign, Dispatcher};

/// How often the audit runs: once a heartbeat.
pub(super) const AUDIT_EVERY: Duration = HEARTBEAT_INTERVAL;

/// A heartbeat speaks for an attempt only when it came this long after the attempt was sent
/// (or taken back after a restart): one sent before the worker took the assignment may
/// still be on its way, and the worker lists an attempt from its acknowledgement on.
const BEAT_AFTER: Duration = Duration::from_secs(2 * HEARTBEAT_INTERVAL.as_secs());

/// How long an attempt may go unlisted, with no result, before its assignment is sent again
/// (and again after as long, while it stays so): ten heartbeats, so a result stored just as
/// the worker stopped listing it has long been read.
pub(super) const UNLISTED_FOR: Duration = Duration::from_secs(10 * HEARTBEAT_INTERVAL.as_secs());

impl Dispatcher {
    /// Sends again the assignments of attempts unlisted for [`UNLISTED_FOR`] by their live
    /// workers (see the module's notes).
    pub(super) async fn audit_attempts(&mut self) {
        // Between turns every tracked task is queued or assigned: nothing assigned, nothing
        // to audit (and no copy of every worker's latest heartbeat to make).
        if self.tasks.len() == self.pending.len() {
            return;
        }
        let now = now_ms();
        let beats = self.sched.latest_beats();
        let mut listed: HashMap<&WorkerId, HashSet<(&TaskId, u32)>> = HashMap::new();
        let mut due = Vec::new();
        for (id, t) in &mut self.tasks {
            let TaskState::Assigned { worker, .. } = &t.rec.state else {
                continue;
            };
            let Some((beat_at, beat)) = beats.get(worker) else {
                // Not live: the lapse takes the attempt (`check_assigned`).
                continue;
            };
            if *beat_at < t.clock.since_ms() + BEAT_AFTER.as_millis() as u64 {
                continue;
            }
            let held = listed
                .entry(worker)
                .or_insert_with(|| beat.running.iter().map(|(t, a)| (t, *a)).collect());
            if held.contains(&(id, t.rec.attempt)) {
                t.unlisted_since = None;
                continue;
            }
            let since = *t.unlisted_since.get_or_insert(now);
            if now.saturating_sub(since) >= UNLISTED_FOR.as_millis() as u64 {
                due.push((id.clone(), worker.clone()));
            }
        }
        if due.is_empty() || self.results_waiting().await {
            return;
        }
        for (id, worker) in due {
            let Some(t) = self.tasks.get_mut(&id) else {
                continue;
            };
            warn!(task_id = %id, attempt = t.rec.attempt, %worker, "worker {worker} no longer holds the attempt and its result has not come: sending the assignment again");
            t.unlisted_since = Some(now);
            let assignment = assign::assignment_of(&t.rec);
            let (tracker, client, tx) = (&self.tracker, &self.client, &self.tx);
            assign::send(tracker, client, &self.subjects, assignment, worker, tx);
        }
    }

    /// Whether the results stream holds results not yet delivered to this master (or could
    /// not say): the audit waits for them.
    async fn results_waiting(&self) -> bool {
        let js = async_nats::jetstream::new(self.client.clone());
        match crate::store::results_not_delivered(&js, &self.subjects).await {
            Ok(n) => n > 0,
            Err(e) => {
                tracing::debug!("the audit could not read the results consumer: {e:#}");
                true
            }
        }
    }
}
