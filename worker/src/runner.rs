//! Taking and running assignments. An assignment is acknowledged only when a place is in hand:
//! a slot, or a turn in the queue ahead of the slots (`--queue-ahead`, acknowledged as
//! `queued`, with a `started` event of the worker's own when a slot takes it), so a worker
//! never holds more tasks than its places and a slot that frees starts the next task without
//! a round trip to the master; each task streams its output as
//! events (on its own event subject, which the master relays to the task's) and ends with
//! exactly one `WorkerResult`, published through JetStream so a result
//! survives a master that is down at that moment. What one attempt runs, whatever its kind,
//! is the `work` module's.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::{jetstream, Client, Message};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, info_span, warn, Instrument};
use vgas_shared::codec::{decode, encode};
use vgas_shared::limits::{HEARTBEAT_INTERVAL, MAX_SUBMIT_BYTES, SHUTDOWN_TIMEOUT};
use vgas_shared::wire::{
    AssignAck, Assignment, CancelAttempt, Heartbeat, TaskOutcome, WorkerResult,
};
use vgas_shared::{Encoding, TaskId};

use crate::compile::sources_bucket;
use crate::env::EnvironmentManager;
use crate::gpu::Gpus;
use crate::probe;
use crate::rustc::RustToolchains;
use crate::sandbox::Isolation;
use crate::wasm::{ObjectStoreSource, WasmRuntime};
use crate::WorkerConfig;

mod ahead;
mod attempt;
mod attempts;
mod report;
mod work;

use attempts::{Attempts, RecentAttempts, Running};

pub use ahead::{AheadPolicy, QueueAhead};
pub use attempt::{MAX_STARTED_AFTER, STARTED_AFTER};

/// How long leaving waits for the server to confirm what was sent.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// A started worker.
#[derive(Debug)]
pub struct Worker {
    cfg: Arc<WorkerConfig>,
    client: Client,
    js: jetstream::Context,
    isolation: Arc<Isolation>,
    slots: Arc<Semaphore>,
    /// Places: the slots and the queue ahead of them; an assignment takes one or is
    /// refused.
    places: Arc<Semaphore>,
    /// How many of the places beyond the slots are offered now.
    ahead: Arc<QueueAhead>,
    /// Free slot numbers (each maps to its own sandbox uid).
    free_slots: Arc<Mutex<Vec<usize>>>,
    /// The attempts here, and cancels that came before their assignment.
    running: Arc<Mutex<Attempts>>,
    /// Attempts taken lately, running or done ([`attempts::RECENT_ATTEMPTS`]).
    taken: Arc<Mutex<RecentAttempts>>,
    draining: Arc<AtomicBool>,
    tracker: TaskTracker,
    /// Set before shutdown to skip the drain: running tasks are handed back at once (the
    /// master moved and this connection is dead, so they could not report anyway).
    hand_back_now: Arc<AtomicBool>,
    seq: Arc<AtomicU64>,
    /// Until when results go straight to the stream, unoffered: set when an offer went
    /// unanswered ([`report::OFFERS_PAUSED_FOR`]).
    offers_paused_until: Arc<Mutex<Option<Instant>>>,
    /// What every heartbeat repeats (identity, slots, CPUs, memory, toolchains, capabilities,
    /// isolation), worked out once at start; each beat fills in only what changes.
    beat_template: Heartbeat,
    /// The wasmtime engine and module caches that `wasm` tasks run with.
    wasm: Arc<WasmRuntime>,
    /// The modules bucket, read when a module is in no cache.
    modules: ObjectStoreSource,
    /// The compilers (with their identities) and environments of this worker.
    envs: Arc<EnvironmentManager>,
    /// The build sources bucket, read for segments whose source is sent by reference.
    sources: crate::compile::Memoized<ObjectStoreSource>,
    /// Where sources a build's submitter offers are asked for.
    offered: crate::offered::OfferedSources,
    /// The GPUs and NVRTC found here.
    gpus: Arc<Gpus>,
    /// The Rust toolchains found here, for `rustc` tasks.
    rust: Arc<RustToolchains>,
    /// The swarm's PTX cache (`None` when a master of an older version did not create it).
    ptx_cache: Option<jetstream::kv::Store>,
}

impl Worker {
    pub async fn start(cfg: WorkerConfig) -> Result<Worker> {
        let client =
            vgas_client::connect::connect(&cfg.conn, &format!("vgas-worker {}", cfg.id)).await?;
        let js = jetstream::new(client.clone());
        // Independent probes, at once: identifying compilers runs them and hashes them.
        let (id, work_dir) = (cfg.id.to_string(), cfg.sandbox.work_dir.clone());
        let (isolation, toolchains, envs, gpus) = tokio::join!(
            tokio::task::spawn_blocking(Isolation::probe),
            tokio::task::spawn_blocking(probe::toolchains),
            tokio::task::spawn_blocking(move || EnvironmentManager::probe(&id, &work_dir)),
            tokio::task::spawn_blocking(Gpus::probe),
        );
        let isolation = isolation.context("probe isolation")?;
        let gpus = gpus.context("probe GPUs")?;
        info!(nvrtc = ?gpus.nvrtc.as_ref().map(|n| &n.version), "{}", gpus.note);
        let mut toolchains = toolchains.context("probe toolchains")?;
        let envs = Arc::new(envs.context("probe compilers")?);
        let (e2, work_dir) = (envs.clone(), cfg.sandbox.work_dir.clone());
        let rust = tokio::task::spawn_blocking(move || RustToolchains::probe(&e2, &work_dir))
            .await
            .context("probe Rust toolchains")?;
        let mut capabilities = cfg.capabilities.clone();
        envs.offer(&mut toolchains, &mut capabilities);
        for tag in rust.tags() {
            if !capabilities.contains(&tag) {
                capabilities.push(tag);
            }
        }
        if gpus.nvrtc.is_some() {
            capabilities.push(vgas_shared::gpu::NVRTC_CAPABILITY.to_owned());
        }
        let ahead = Arc::new(QueueAhead::new(cfg.queue_ahead, cfg.slots));
        let beat_template = Heartbeat {
            worker: Some(cfg.id.clone()),
            hostname: probe::hostname(),
            host: vgas_shared::host::host_id(),
            slots: cfg.slots,
            cpus: probe::cpus(),
            memory_mb: probe::memory_mb(),
            toolchains,
            capabilities,
            isolation: isolation.describe(),
            gpus: gpus.devices.clone(),
            cuda_driver: gpus.driver.clone(),
            ..Default::default()
        };
        let ptx_cache = js.get_key_value(cfg.conn.subjects.ptx_bucket()).await.ok();
        let wasm = Arc::new(WasmRuntime::new(&cfg.wasm)?);
        let modules = ObjectStoreSource::modules(js.clone(), cfg.conn.subjects.modules_bucket());
        let sources = crate::compile::Memoized::new(sources_bucket(
            js.clone(),
            cfg.conn.subjects.build_sources_bucket(),
        ));
        let offered = crate::offered::OfferedSources::new(
            client.clone(),
            cfg.conn.subjects.clone(),
            crate::compile::MAX_SOURCE_BYTES,
        );
        info!(worker = %cfg.id, slots = cfg.slots, isolation = %isolation.describe(), compilers = envs.compilers().len(), "worker starting");
        Ok(Worker {
            wasm,
            modules,
            envs,
            sources,
            offered,
            slots: Arc::new(Semaphore::new(cfg.slots)),
            places: Arc::new(Semaphore::new(cfg.slots + ahead.max())),
            ahead,
            free_slots: Arc::new(Mutex::new((0..cfg.slots).rev().collect())),
            cfg: Arc::new(cfg),
            client,
            js,
            isolation: Arc::new(isolation),
            running: Arc::default(),
            taken: Arc::default(),
            draining: Arc::default(),
            tracker: TaskTracker::new(),
            hand_back_now: Arc::default(),
            seq: Arc::default(),
            offers_paused_until: Arc::default(),
            beat_template,
            gpus: Arc::new(gpus),
            rust: Arc::new(rust),
            ptx_cache,
        })
    }

    fn heartbeat(&self, leaving: bool) -> Heartbeat {
        let running: Vec<(TaskId, u32)> = self
            .running
            .lock()
            .expect("running lock")
            .running
            .iter()
            .map(|(id, r)| (id.clone(), r.attempt))
            .collect();
        Heartbeat {
            seq: self.seq.fetch_add(1, Ordering::Relaxed),
            free_slots: self.slots.available_permits(),
            queue_ahead: self.ahead.offer(),
            running,
            load1: probe::load1(),
            draining: self.draining.load(Ordering::Acquire),
            leaving,
            ..self.beat_template.clone()
        }
    }

    async fn beat(&self, leaving: bool) {
        let hb = self.heartbeat(leaving);
        self.cfg
            .metrics
            .beat(hb.slots, hb.free_slots, hb.gpus.len(), hb.draining);
        let subject = self.cfg.conn.subjects.heartbeat(&self.cfg.id);
        match encode(Encoding::MsgPack, &hb) {
            Ok(bytes) => {
                if let Err(e) = self.client.publish(subject, bytes.into()).await {
                    warn!("heartbeat not sent: {e}");
                }
            }
            Err(e) => warn!("heartbeat not encoded: {e}"),
        }
    }

    /// Serves assignments until `shutdown`, then drains and leaves.
    /// The connection this worker serves on.
    pub fn client(&self) -> &Client {
        &self.client
    }

    /// A switch that makes the next shutdown hand running tasks back instead of draining.
    pub fn hand_back_switch(&self) -> Arc<AtomicBool> {
        self.hand_back_now.clone()
    }

    pub async fn serve(self, shutdown: CancellationToken) -> Result<()> {
        let subjects = self.cfg.conn.subjects.clone();
        let mut tasks = self
            .client
            .subscribe(subjects.worker_task(&self.cfg.id))
            .await?;
        let mut cancels = self
            .client
            .subscribe(subjects.worker_cancel(&self.cfg.id))
            .await?;
        let me = Arc::new(self);
        // Heartbeats run beside the work below, on this same task, until it has drained.
        let beats = async {
            let mut tick = tokio::time::interval(HEARTBEAT_INTERVAL);
            loop {
                tick.tick().await;
                me.beat(false).await;
            }
        };
        let work = async {
            info!(worker = %me.cfg.id, "worker ready");
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    msg = tasks.next() => match msg {
                        Some(msg) => me.on_assignment(msg).await,
                        None => break,
                    },
                    msg = cancels.next() => if let Some(msg) = msg { me.on_cancel(&msg) },
                }
            }
            me.drain(tasks).await;
        };
        tokio::select! {
            () = work => {}
            () = beats => {}
        }
        me.beat(true).await;
        // A flush waits for the server; bounded, since the server may be gone (master moved).
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, me.client.flush()).await;
        info!("worker stopped");
        Ok(())
    }

    /// Drain: refuse new work, tell the master, give running tasks time, hand back the rest.
    async fn drain(&self, mut tasks: async_nats::Subscriber) {
        self.draining.store(true, Ordering::Release);
        let _ = tokio::time::timeout(FLUSH_TIMEOUT, tasks.unsubscribe()).await;
        self.beat(false).await;
        self.tracker.close();
        let n = self.running.lock().expect("running lock").running.len();
        info!(running = n, "draining");
        let drain = if self.hand_back_now.load(Ordering::Acquire) {
            Duration::ZERO
        } else {
            self.cfg.drain_timeout
        };
        if tokio::time::timeout(drain, self.tracker.wait())
            .await
            .is_err()
        {
            for r in self.running.lock().expect("running lock").running.values() {
                r.handed_back.store(true, Ordering::Release);
                r.cancel.cancel();
            }
            if tokio::time::timeout(SHUTDOWN_TIMEOUT, self.tracker.wait())
                .await
                .is_err()
            {
                warn!("some tasks did not stop within {SHUTDOWN_TIMEOUT:?}");
            }
        }
    }

    fn on_cancel(&self, msg: &Message) {
        let Ok((c, _)) = decode::<CancelAttempt>(&msg.payload, 1024) else {
            return;
        };
        self.running
            .lock()
            .expect("running lock")
            .cancel(c.task_id, c.attempt);
    }

    async fn on_assignment(self: &Arc<Self>, msg: Message) {
        let refuse = |reason: String| AssignAck {
            accepted: false,
            reason,
            queued: false,
        };
        let accept = |queued: bool| AssignAck {
            accepted: true,
            reason: String::new(),
            queued,
        };
        // Sent again (a restarted master): taken already, and its result, if it has ended.
        let taken = |a: &Assignment| {
            let key = (a.task_id.clone(), a.attempt);
            let taken = self.taken.lock().expect("taken lock");
            taken.contains(&key).then(|| taken.result(&key).cloned())
        };
        let mut again = None;
        let (ack, work) = match decode::<Assignment>(&msg.payload, 2 * MAX_SUBMIT_BYTES) {
            Err(e) => (refuse(format!("malformed assignment: {e}")), None),
            // It runs here still (its result comes when it ends), or it has ended and its
            // result goes out again below.
            Ok((a, _)) if let Some(result) = taken(&a) => {
                again = result;
                (accept(false), None)
            }
            Ok(_) if self.draining.load(Ordering::Acquire) => {
                (refuse("worker is draining".into()), None)
            }
            // A place: a slot now, or a turn in the queue ahead of the slots, as many as
            // this worker offered.
            Ok(_)
                if self.slots.available_permits() == 0 && self.waiting() >= self.ahead.admits() =>
            {
                (refuse("no free slot".into()), None)
            }
            Ok((a, _)) => match self.places.clone().try_acquire_owned() {
                Err(_) => (refuse("no free slot".into()), None),
                Ok(place) => {
                    self.taken
                        .lock()
                        .expect("taken lock")
                        .insert((a.task_id.clone(), a.attempt));
                    let slot = self.slots.clone().try_acquire_owned().ok();
                    (accept(slot.is_none()), Some((a, place, slot)))
                }
            },
        };
        if let Some(reply) = msg.reply {
            if let Ok(bytes) = encode(Encoding::MsgPack, &ack) {
                if let Err(e) = self.client.publish(reply, bytes.into()).await {
                    warn!("could not acknowledge an assignment: {e}");
                }
            }
        }
        if let Some(result) = again {
            // Off the assignment loop: storing it may wait out a server restart.
            let me = self.clone();
            self.tracker
                .spawn(async move { me.publish_result_again(&result).await });
        }
        let Some((a, place, slot)) = work else {
            return;
        };
        let cancel = CancellationToken::new();
        let handed_back = Arc::new(AtomicBool::new(false));
        self.running.lock().expect("running lock").start(
            a.task_id.clone(),
            Running {
                attempt: a.attempt,
                cancel: cancel.clone(),
                handed_back: handed_back.clone(),
            },
        );
        // An offered source is asked for now, while the attempt starts or waits its turn.
        let prefetched =
            (a.spec.compile.as_ref()).and_then(|c| self.offered.prefetch(c, &self.tracker));
        let me = self.clone();
        let span = info_span!("task", task_id = %a.task_id, attempt = a.attempt);
        self.tracker.spawn(
            async move {
                let _prefetched = prefetched;
                let queued = slot.is_none();
                if let Some(permit) = me.take_slot(&a, slot, &cancel, &handed_back).await {
                    let n = me.free_slots.lock().expect("slots lock").pop().unwrap_or(0);
                    let held = Instant::now();
                    // Queued, it says `started` itself (the acknowledgement could not).
                    let result = me.run_attempt(&a, n, cancel, handed_back, queued).await;
                    me.ahead.record(held.elapsed());
                    me.free_slots.lock().expect("slots lock").push(n);
                    drop(permit);
                    // The slot is free while the result goes out; the place it took stays
                    // taken until then, which bounds the results on their way.
                    me.publish_result(&result).await;
                }
                me.running
                    .lock()
                    .expect("running lock")
                    .running
                    .remove(&a.task_id);
                drop(place);
            }
            .instrument(span),
        );
    }

    /// Attempts accepted that wait for a slot: each holds a place, and a running one a slot
    /// too.
    fn waiting(&self) -> usize {
        let places = self.cfg.slots + self.ahead.max() - self.places.available_permits();
        let running = self.cfg.slots - self.slots.available_permits();
        places.saturating_sub(running)
    }

    /// A slot for an accepted attempt: the one it got at once, or the next one free after
    /// the attempts queued before it (the semaphore serves waiters in order). An attempt
    /// cancelled while it waits, or that a draining worker has not started, ends without
    /// running: its result says so (handed back when draining), and `None` comes back.
    async fn take_slot(
        &self,
        a: &Assignment,
        slot: Option<OwnedSemaphorePermit>,
        cancel: &CancellationToken,
        handed_back: &AtomicBool,
    ) -> Option<OwnedSemaphorePermit> {
        let permit = if cancel.is_cancelled() {
            // Cancelled before it arrived: never started, even with a slot free.
            None
        } else if slot.is_some() {
            return slot;
        } else {
            tokio::select! {
                p = self.slots.clone().acquire_owned() => p.ok(),
                () = cancel.cancelled() => None,
            }
        };
        let draining = self.draining.load(Ordering::Acquire);
        if permit.is_some() && !draining {
            return permit;
        }
        let handed_back = draining || handed_back.load(Ordering::Acquire);
        info!(handed_back, "ended before it started");
        let result = WorkerResult {
            task_id: a.task_id.clone(),
            attempt: a.attempt,
            worker: self.cfg.id.clone(),
            outcome: TaskOutcome::Cancelled,
            duration_ms: 0,
            handed_back,
            events: None,
        };
        self.publish_result(&result).await;
        None
    }
}
