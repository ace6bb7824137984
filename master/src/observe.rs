//! What the master reports as it works, in one place: the Prometheus metrics always, and the
//! dashboard's board when the dashboard is on. The dispatcher reports each task's steps; the
//! build follower reports every build's updates, read from `vgas.build.*.updates` (the
//! `vgas build` of any submitter publishes there).

use std::sync::atomic::{AtomicU64, AtomicUsize};
use std::sync::Arc;

use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::debug;
use vgas_shared::codec::decode_as;
use vgas_shared::farm::BuildUpdate;
use vgas_shared::wire::{TaskOutcome, TaskRecord};
use vgas_shared::{now_ms, Encoding, Subjects, TaskId, WorkerId};

use crate::dashboard::board::Board;
use crate::metrics::MasterMetrics;

/// Figures shared with the status endpoint.
#[derive(Debug, Default)]
pub struct Counters {
    pub queue_depth: AtomicUsize,
    pub in_flight: AtomicUsize,
    pub accepted: AtomicU64,
    pub finished: AtomicU64,
    /// Queued tasks that some worker could run but whose GPUs are all leased now.
    pub waiting_for_gpus: AtomicUsize,
}

/// The metrics and, with the dashboard, the board.
#[derive(Debug, Default)]
pub struct Observe {
    /// This master's node id (`master-<8 hex>`): its lease value, its LLM usage slot.
    pub node: String,
    /// The figures `vgas status` shows.
    pub counters: Arc<Counters>,
    pub metrics: MasterMetrics,
    pub board: Option<Board>,
}

impl Observe {
    /// With a board when `dashboard` is on.
    pub fn new(dashboard: bool, node: &str) -> Self {
        Observe {
            node: node.to_owned(),
            counters: Arc::default(),
            metrics: MasterMetrics::new(),
            board: dashboard.then(Board::default),
        }
    }

    /// A task accepted by submit (not one recovered after a restart: that was counted by
    /// the master that accepted it).
    pub fn accepted(&self, rec: &TaskRecord) {
        self.metrics.accepted();
        self.track(rec);
    }

    /// A task the board follows without counting it (recovered after a restart).
    pub fn track(&self, rec: &TaskRecord) {
        if let Some(b) = &self.board {
            b.queued(rec);
        }
    }

    /// An attempt sent to `worker` after waiting since `queued_at_ms`.
    pub fn dispatched(&self, id: &TaskId, worker: &WorkerId, attempt: u32, queued_at_ms: u64) {
        self.metrics
            .dispatched(now_ms().saturating_sub(queued_at_ms));
        if let Some(b) = &self.board {
            b.running(id, worker.as_str(), attempt);
        }
    }

    /// An attempt lost, the task queued again.
    pub fn retried(&self, id: &TaskId) {
        self.metrics.retried();
        if let Some(b) = &self.board {
            b.requeued(id);
        }
    }

    /// The task's one final result, recorded.
    pub fn finished(&self, rec: &TaskRecord, outcome: &TaskOutcome, worker: Option<&WorkerId>) {
        self.metrics
            .finished(outcome, now_ms().saturating_sub(rec.accepted_ms));
        if let Some(b) = &self.board {
            b.finished(rec, outcome, worker.map(|w| w.as_str()));
        }
    }
}

/// Reads every build's updates until `stop`, into the metrics and the board.
pub async fn follow_builds(
    client: async_nats::Client,
    subjects: Subjects,
    observe: Arc<Observe>,
    stop: CancellationToken,
) {
    let mut sub = match client.subscribe(subjects.all_build_updates()).await {
        Ok(s) => s,
        Err(e) => {
            tracing::warn!("cannot follow builds: {e}");
            return;
        }
    };
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => return,
            m = sub.next() => match m { Some(m) => m, None => return },
        };
        let Some(build_id) = subjects.build_of_updates(&msg.subject) else {
            continue;
        };
        let update: BuildUpdate = match decode_as(Encoding::detect(&msg.payload), &msg.payload) {
            Ok(u) => u,
            Err(e) => {
                debug!(build_id, "unreadable build update: {e}");
                continue;
            }
        };
        observe.metrics.build_update(&update);
        if let Some(b) = &observe.board {
            b.build_update(build_id, &update);
        }
    }
}
