//! `AgentScheduler`: the live worker pool and Gatling rotation over it.
//!
//! "Agent" here is the seeds' word for a worker node (`handle_agent_heartbeat`), not an AI
//! agent: those are `agent` tasks (`vgas_shared::agent`, `vgas_worker::agent`), which this
//! scheduler places on workers like any other task.
//!
//! The hot path, [`AgentScheduler::gatling_rotate_next`], never takes a lock: it loads an
//! immutable snapshot of the dispatchable pool (`ArcSwap`), advances one shared `AtomicUsize`
//! cursor and reserves a slot on the first worker, from the cursor on, that is capable and has
//! room (a compare-and-swap on that worker's in-flight counter). Membership changes (a new
//! node, a node turning abnormal or draining) build a new snapshot and swap it in; they are
//! rare next to dispatches and take a mutex that dispatch never touches.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use arc_swap::{ArcSwap, ArcSwapOption};
use vgas_shared::gpu::GpuDevice;
use vgas_shared::limits::{ABNORMAL_AFTER, HEARTBEAT_INTERVAL, MISSED_BEATS_REMOVED};
use vgas_shared::wire::{AbnormalNode, Heartbeat, Needs, NodeStatus, SwarmPulse};
use vgas_shared::{now_ms, WorkerId};

/// One worker as the dispatcher sees it. Shared between snapshots, so counters survive a swap.
#[derive(Debug)]
pub struct WorkerEntry {
    pub id: WorkerId,
    /// Task slots the worker offers (from its heartbeat).
    slots: AtomicUsize,
    /// Attempts it takes beyond its slots, queued there for a slot (from its heartbeat).
    queue_ahead: AtomicUsize,
    /// Tasks we assigned and have not seen finish: the reservation counter CAS'd by dispatch.
    in_flight: AtomicUsize,
    /// Set when the worker says it drains: it keeps its tasks but gets no new one.
    draining: AtomicBool,
    /// Capability tags; swapped whole when a heartbeat changes them.
    capabilities: ArcSwap<Vec<String>>,
    /// GPUs, as the last heartbeat listed them; swapped whole when they change.
    gpus: ArcSwap<Vec<GpuDevice>>,
    /// Set when an assignment found no one answering; cleared by the next heartbeat. Until
    /// then no new work goes there, so a worker that just died is not sent the same task
    /// again and again before its missed beats make it abnormal.
    unanswered: AtomicBool,
    last_active_ms: AtomicU64,
    tasks_done: AtomicU64,
    /// The latest heartbeat, for `vgas status` and the dispatcher's audit of the attempts a
    /// worker holds (`dispatch::audit`).
    last_beat: ArcSwapOption<Heartbeat>,
}

impl WorkerEntry {
    fn new(id: WorkerId, slots: usize) -> Self {
        WorkerEntry {
            id,
            slots: AtomicUsize::new(slots),
            queue_ahead: AtomicUsize::new(0),
            in_flight: AtomicUsize::new(0),
            draining: AtomicBool::new(false),
            capabilities: ArcSwap::from_pointee(Vec::new()),
            gpus: ArcSwap::from_pointee(Vec::new()),
            unanswered: AtomicBool::new(false),
            last_active_ms: AtomicU64::new(now_ms()),
            tasks_done: AtomicU64::new(0),
            last_beat: ArcSwapOption::empty(),
        }
    }

    /// A test and benchmark helper: a worker with `slots` slots and these capabilities.
    pub fn synthetic(id: &str, slots: usize, capabilities: &[&str]) -> Arc<Self> {
        let e = WorkerEntry::new(WorkerId::parse(id).expect("valid id"), slots);
        e.capabilities.store(Arc::new(
            capabilities.iter().map(|s| s.to_string()).collect(),
        ));
        Arc::new(e)
    }

    /// A test and benchmark helper: this worker's GPUs, as a heartbeat would list them.
    pub fn set_gpus(&self, gpus: Vec<GpuDevice>) {
        self.gpus.store(Arc::new(gpus));
    }

    pub fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// The GPUs its last heartbeat listed.
    pub fn gpus(&self) -> Arc<Vec<GpuDevice>> {
        self.gpus.load_full()
    }

    /// Whether the worker could ever run a task with `needs`: every capability, and enough
    /// fitting GPUs (all idle).
    fn capable(&self, needs: &Needs) -> bool {
        if let Some(g) = &needs.gpus {
            if !g.could_ever(&self.gpus.load()) {
                return false;
            }
        }
        if needs.capabilities.is_empty() {
            return true;
        }
        let caps = self.capabilities.load();
        needs.capabilities.iter().all(|c| caps.contains(c))
    }

    /// Takes one slot if one is free, or with `ahead` a place in the queue ahead of its
    /// slots; never waits.
    fn try_reserve(&self, ahead: bool) -> bool {
        let mut places = self.slots.load(Ordering::Acquire);
        if ahead {
            places += self.queue_ahead.load(Ordering::Acquire);
        }
        self.in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < places).then_some(n + 1)
            })
            .is_ok()
    }

    /// A test and benchmark helper: the places it takes beyond its slots.
    pub fn set_queue_ahead(&self, n: usize) {
        self.queue_ahead.store(n, Ordering::Release);
    }

    /// Gives a slot back (saturating: a release after a restart may find nothing reserved).
    pub fn release(&self) {
        let _ = self
            .in_flight
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }
}

/// Why no worker was picked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NoWorker {
    #[error("no live worker has the required capabilities")]
    NoneCapable,
    #[error("every capable worker is busy")]
    AllBusy,
}

#[derive(Debug)]
enum Health {
    Live,
    Abnormal { reason: String },
}

#[derive(Debug)]
struct Node {
    entry: Arc<WorkerEntry>,
    health: Health,
}

/// The Gatling scheduler (seed: `AgentScheduler`).
#[derive(Debug)]
pub struct AgentScheduler {
    /// Dispatchable workers: live and not draining. Read lock-free by every dispatch.
    pool: ArcSwap<Vec<Arc<WorkerEntry>>>,
    cursor: AtomicUsize,
    /// Every known node, live or abnormal. Only heartbeats, the reaper and status touch it.
    nodes: Mutex<HashMap<WorkerId, Node>>,
    /// In-flight counts restored from the task store for workers not yet seen since a restart.
    restored: Mutex<HashMap<WorkerId, usize>>,
}

impl Default for AgentScheduler {
    fn default() -> Self {
        AgentScheduler {
            pool: ArcSwap::from_pointee(Vec::new()),
            cursor: AtomicUsize::new(0),
            nodes: Mutex::new(HashMap::new()),
            restored: Mutex::new(HashMap::new()),
        }
    }
}

/// What a heartbeat changed, so the caller knows whether queued work may now fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BeatEffect {
    Joined,
    Rejoined,
    Updated,
    Left,
}

impl AgentScheduler {
    pub fn new() -> Self {
        Self::default()
    }

    /// A scheduler over a fixed pool, for tests and benchmarks.
    pub fn with_pool(workers: Vec<Arc<WorkerEntry>>) -> Self {
        let s = Self::default();
        {
            let mut nodes = s.nodes.lock().expect("nodes lock");
            for w in &workers {
                nodes.insert(
                    w.id.clone(),
                    Node {
                        entry: w.clone(),
                        health: Health::Live,
                    },
                );
            }
        }
        s.pool.store(Arc::new(workers));
        s
    }

    /// Picks the next capable worker with a free slot, round robin, and reserves the slot.
    /// Lock-free: one atomic add, then at most one CAS per candidate.
    ///
    /// Only when every capable worker's slots are taken does it go round again for a place
    /// in a worker's queue ahead of its slots (`--queue-ahead`), so an idle slot anywhere
    /// always comes before a queue.
    pub fn gatling_rotate_next(&self, needs: &Needs) -> Result<Arc<WorkerEntry>, NoWorker> {
        match self.rotate(needs, false, |_| Some(())) {
            Err(NoWorker::AllBusy) => self.rotate(needs, true, |_| Some(())),
            picked => picked,
        }
        .map(|(w, ())| w)
    }

    /// [`AgentScheduler::gatling_rotate_next`] over the capable workers where `room` finds
    /// what the task needs besides a slot (a GPU task: its devices, free there), returned with
    /// the worker; a capable worker where it finds nothing counts as busy.
    /// Slots only: a task that holds devices does not wait in a queue with them.
    pub fn gatling_rotate_next_where<T>(
        &self,
        needs: &Needs,
        room: impl Fn(&WorkerEntry) -> Option<T>,
    ) -> Result<(Arc<WorkerEntry>, T), NoWorker> {
        self.rotate(needs, false, room)
    }

    /// One round of Gatling rotation: slots, or with `ahead` the queues ahead of them too.
    fn rotate<T>(
        &self,
        needs: &Needs,
        ahead: bool,
        room: impl Fn(&WorkerEntry) -> Option<T>,
    ) -> Result<(Arc<WorkerEntry>, T), NoWorker> {
        let pool = self.pool.load();
        let n = pool.len();
        if n == 0 {
            return Err(NoWorker::NoneCapable);
        }
        let start = self.cursor.fetch_add(1, Ordering::Relaxed);
        let mut any_capable = false;
        for i in 0..n {
            let w = &pool[(start.wrapping_add(i)) % n];
            if !w.capable(needs) {
                continue;
            }
            any_capable = true;
            if w.unanswered.load(Ordering::Acquire) {
                continue;
            }
            if let Some(found) = room(w) {
                if w.try_reserve(ahead) {
                    return Ok((w.clone(), found));
                }
            }
        }
        Err(if any_capable {
            NoWorker::AllBusy
        } else {
            NoWorker::NoneCapable
        })
    }

    /// Records a heartbeat: refreshes `last_active`, adds a new node, brings an abnormal one
    /// back, and removes one that says it is leaving.
    pub fn handle_agent_heartbeat(&self, hb: Heartbeat) -> Option<BeatEffect> {
        let id = hb.worker.clone()?;
        let mut nodes = self.nodes.lock().expect("nodes lock");
        if hb.leaving {
            let gone = nodes.remove(&id).is_some();
            drop(nodes);
            self.rebuild_pool();
            return gone.then_some(BeatEffect::Left);
        }
        let mut changed_pool = false;
        let effect = match nodes.get_mut(&id) {
            Some(node) => {
                let effect = match node.health {
                    Health::Abnormal { .. } => {
                        changed_pool = true;
                        BeatEffect::Rejoined
                    }
                    Health::Live => BeatEffect::Updated,
                };
                node.health = Health::Live;
                effect
            }
            None => {
                let entry = Arc::new(WorkerEntry::new(id.clone(), hb.slots));
                if let Some(n) = self.restored.lock().expect("restored lock").remove(&id) {
                    entry.in_flight.store(n, Ordering::Release);
                }
                nodes.insert(
                    id.clone(),
                    Node {
                        entry,
                        health: Health::Live,
                    },
                );
                changed_pool = true;
                BeatEffect::Joined
            }
        };
        let entry = &nodes[&id].entry;
        entry.last_active_ms.store(now_ms(), Ordering::Release);
        entry.unanswered.store(false, Ordering::Release);
        entry.slots.store(hb.slots, Ordering::Release);
        entry.queue_ahead.store(hb.queue_ahead, Ordering::Release);
        if entry.draining.swap(hb.draining, Ordering::AcqRel) != hb.draining {
            changed_pool = true;
        }
        if **entry.capabilities.load() != hb.capabilities {
            entry.capabilities.store(Arc::new(hb.capabilities.clone()));
        }
        if **entry.gpus.load() != hb.gpus {
            entry.gpus.store(Arc::new(hb.gpus.clone()));
        }
        entry.last_beat.store(Some(Arc::new(hb)));
        drop(nodes);
        if changed_pool {
            self.rebuild_pool();
        }
        Some(effect)
    }

    /// Marks nodes that missed beats abnormal and forgets long-gone ones. Returns the nodes
    /// that just turned abnormal: their tasks must be retried elsewhere.
    pub fn reap(&self) -> Vec<WorkerId> {
        let now = now_ms();
        let beat = HEARTBEAT_INTERVAL.as_millis() as u64;
        let abnormal_after = ABNORMAL_AFTER.as_millis() as u64;
        let remove_after = beat * MISSED_BEATS_REMOVED as u64;
        let mut newly = Vec::new();
        let mut nodes = self.nodes.lock().expect("nodes lock");
        nodes.retain(|id, node| {
            let silent = now.saturating_sub(node.entry.last_active_ms.load(Ordering::Acquire));
            if silent > remove_after {
                return false;
            }
            if silent > abnormal_after && matches!(node.health, Health::Live) {
                node.health = Health::Abnormal {
                    reason: format!("missed heartbeats: silent for {} ms", silent),
                };
                newly.push(id.clone());
            }
            true
        });
        drop(nodes);
        if !newly.is_empty() {
            self.rebuild_pool();
        }
        newly
    }

    /// Releases the slot a finished or lost attempt held on `worker`.
    pub fn release(&self, worker: &WorkerId) {
        if let Some(node) = self.nodes.lock().expect("nodes lock").get(worker) {
            node.entry.release();
        }
        let mut restored = self.restored.lock().expect("restored lock");
        if let Some(n) = restored.get_mut(worker) {
            *n = n.saturating_sub(1);
        }
    }

    /// `worker` did not answer an assignment: no new work goes there until it beats again.
    pub fn unanswered(&self, worker: &WorkerId) {
        if let Some(node) = self.nodes.lock().expect("nodes lock").get(worker) {
            node.entry.unanswered.store(true, Ordering::Release);
        }
    }

    /// Counts one finished task for `worker` (shown in status).
    pub fn count_done(&self, worker: &WorkerId) {
        if let Some(node) = self.nodes.lock().expect("nodes lock").get(worker) {
            node.entry.tasks_done.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// After a master restart: `worker` holds `n` of our tasks.
    pub fn restore_in_flight(&self, worker: &WorkerId, n: usize) {
        self.restored
            .lock()
            .expect("restored lock")
            .insert(worker.clone(), n);
    }

    /// Each live worker's latest heartbeat and when it came (ms since the epoch).
    pub fn latest_beats(&self) -> HashMap<WorkerId, (u64, Arc<Heartbeat>)> {
        let nodes = self.nodes.lock().expect("nodes lock");
        nodes
            .iter()
            .filter(|(_, n)| matches!(n.health, Health::Live))
            .filter_map(|(id, n)| {
                let at = n.entry.last_active_ms.load(Ordering::Acquire);
                Some((id.clone(), (at, n.entry.last_beat.load_full()?)))
            })
            .collect()
    }

    pub fn is_live(&self, worker: &WorkerId) -> bool {
        matches!(
            self.nodes.lock().expect("nodes lock").get(worker),
            Some(Node {
                health: Health::Live,
                ..
            })
        )
    }

    /// Live workers (draining included) that have every capability in `needs`.
    pub fn any_capable(&self, needs: &Needs) -> bool {
        self.nodes
            .lock()
            .expect("nodes lock")
            .values()
            .any(|n| matches!(n.health, Health::Live) && n.entry.capable(needs))
    }

    /// Every live worker's GPUs, for a refusal that says what the swarm has.
    pub fn gpu_inventory(&self) -> Vec<(WorkerId, Arc<Vec<GpuDevice>>)> {
        let mut out: Vec<_> = self
            .nodes
            .lock()
            .expect("nodes lock")
            .values()
            .filter(|n| matches!(n.health, Health::Live))
            .map(|n| (n.entry.id.clone(), n.entry.gpus()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    /// The swarm at a glance (seed: `get_swarm_status`); queue figures come from the caller.
    pub fn get_swarm_status(&self) -> SwarmPulse {
        let now = now_ms();
        let nodes = self.nodes.lock().expect("nodes lock");
        let mut pulse = SwarmPulse::default();
        for node in nodes.values() {
            let e = &node.entry;
            let ago = now.saturating_sub(e.last_active_ms.load(Ordering::Acquire));
            match &node.health {
                Health::Abnormal { reason } => pulse.abnormal.push(AbnormalNode {
                    id: e.id.clone(),
                    reason: reason.clone(),
                    last_seen_ms_ago: ago,
                }),
                Health::Live => {
                    let hb = e.last_beat.load_full().unwrap_or_default();
                    pulse.live.push(NodeStatus {
                        id: e.id.clone(),
                        hostname: hb.hostname.clone(),
                        host: hb.host.clone(),
                        slots: e.slots.load(Ordering::Acquire),
                        free_slots: hb.free_slots,
                        in_flight: e.in_flight(),
                        cpus: hb.cpus,
                        memory_mb: hb.memory_mb,
                        load1: hb.load1,
                        capabilities: hb.capabilities.clone(),
                        toolchains: hb.toolchains.clone(),
                        isolation: hb.isolation.clone(),
                        gpus: hb.gpus.clone(),
                        leases: Vec::new(),
                        cuda_driver: hb.cuda_driver.clone(),
                        draining: e.draining.load(Ordering::Acquire),
                        last_seen_ms_ago: ago,
                        tasks_done: e.tasks_done.load(Ordering::Relaxed),
                    })
                }
            }
        }
        pulse.live.sort_by(|a, b| a.id.cmp(&b.id));
        pulse.abnormal.sort_by(|a, b| a.id.cmp(&b.id));
        pulse
    }

    fn rebuild_pool(&self) {
        let nodes = self.nodes.lock().expect("nodes lock");
        let mut pool: Vec<Arc<WorkerEntry>> = nodes
            .values()
            .filter(|n| matches!(n.health, Health::Live))
            .filter(|n| !n.entry.draining.load(Ordering::Acquire))
            .map(|n| n.entry.clone())
            .collect();
        pool.sort_by(|a, b| a.id.cmp(&b.id));
        self.pool.store(Arc::new(pool));
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
