//! The vgas worker: beats to the master, takes assignments through a slot semaphore, runs
//! them in the native sandbox, streams their output and reports one result per attempt.
//!
//! `run` is the whole worker; `main` only parses settings and wires up signals, so tests start
//! the same worker as a process.

pub mod agent;
pub mod compile;
pub mod env;
pub mod gpu;
pub mod join;
pub mod metrics;
pub mod offered;
pub mod probe;
pub mod runner;
pub mod rustc;
pub mod sandbox;
pub mod wasm;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio_util::sync::CancellationToken;
use vgas_shared::config::Resolved;
use vgas_shared::limits::DEFAULT_DRAIN_TIMEOUT;
use vgas_shared::WorkerId;

use crate::sandbox::{Limits, SandboxConfig};

/// Most task slots one worker runs; also the width of its sandbox uid range.
pub const MAX_SLOTS: usize = 512;

/// Most attempts one worker queues ahead of its slots: each is an accepted attempt (its
/// spec in memory, its deadline not yet counting) that another worker might have run, so
/// more than a few per slot only hides work from the rest of the swarm.
pub const MAX_QUEUE_AHEAD: usize = 4 * MAX_SLOTS;

/// First uid of the sandbox ranges: above any uid a distribution hands out to people.
const SANDBOX_UID_FLOOR: u32 = 1_000_000;

/// A sandbox uid range no other running worker on this host has: the sandbox kills every
/// process of a slot's uid when its task ends, so two workers on one host must never share
/// one. A pid is unique among running processes (`pid_max` is at most 2^22, so the range
/// ends below 2^32 - 1, the largest uid).
fn process_uid_base() -> u32 {
    SANDBOX_UID_FLOOR + std::process::id() * MAX_SLOTS as u32
}

/// Worker settings after flags, environment and file are merged.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    pub conn: Resolved,
    pub id: WorkerId,
    /// Tasks run at once.
    pub slots: usize,
    /// Tasks taken beyond the slots, each waiting here for a slot.
    pub queue_ahead: runner::AheadPolicy,
    /// How long an attempt taken into that queue runs before it says `started` itself
    /// ([`runner::STARTED_AFTER`]).
    pub started_after: Duration,
    /// Capability tags offered on top of the toolchains found.
    pub capabilities: Vec<String>,
    pub sandbox: SandboxConfig,
    /// The wasm sandbox's module caches.
    pub wasm: crate::wasm::WasmConfig,
    /// How long SIGTERM lets running tasks finish before handing them back.
    pub drain_timeout: Duration,
    /// The metrics, shared by every session with a master.
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
    /// Where `/metrics` is served, when asked for.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The bearer token `/metrics` wants from elsewhere than loopback.
    pub metrics_token: Option<vgas_client::http::Token>,
}

impl WorkerConfig {
    /// Defaults from the file section `[worker]`, then built-in values.
    pub fn new(conn: Resolved) -> Result<Self> {
        let f = conn.file.worker.clone();
        let mut ceilings = Limits::default();
        if let Some(mb) = f.memory_mb {
            ceilings.memory_bytes = mb * 1024 * 1024;
        }
        if let Some(s) = f.cpu_seconds {
            ceilings.cpu_seconds = s;
        }
        if let Some(n) = f.max_processes {
            ceilings.max_processes = n;
        }
        if let Some(mb) = f.output_cap_mb {
            ceilings.output_cap = mb * 1024 * 1024;
        }
        let work_dir = f
            .work_dir
            .clone()
            .unwrap_or_else(|| std::env::temp_dir().join("vgas-worker"));
        std::fs::create_dir_all(&work_dir)
            .with_context(|| format!("create work dir {}", work_dir.display()))?;
        let metrics = Arc::new(crate::metrics::WorkerMetrics::default());
        // A node identity's credentials name the worker: its grants cover only that id.
        let id = match conn.creds.as_ref().and_then(|c| c.node.as_deref()) {
            Some(node) => WorkerId::parse(node).context("the node name in the credentials")?,
            None => WorkerId::generate(&probe::hostname()),
        };
        Ok(WorkerConfig {
            id,
            slots: f.slots.unwrap_or_else(probe::cpus).clamp(1, MAX_SLOTS),
            queue_ahead: runner::AheadPolicy::Fixed(0),
            started_after: runner::STARTED_AFTER,
            capabilities: f.capabilities.clone().unwrap_or_default(),
            sandbox: SandboxConfig {
                work_dir: work_dir.clone(),
                ceilings,
                uid_base: Some(f.sandbox_uid_base.unwrap_or_else(process_uid_base)),
            },
            wasm: crate::wasm::WasmConfig {
                metrics: metrics.clone(),
                ..crate::wasm::WasmConfig::new(work_dir.join("wasm-cache"))
            },
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            metrics,
            metrics_addr: None,
            metrics_token: None,
            conn,
        })
    }
}

/// Runs the worker until `shutdown` fires, then drains: no new tasks, running ones get
/// `drain_timeout` to finish and are handed back after that.
pub async fn run(cfg: WorkerConfig, shutdown: CancellationToken) -> Result<()> {
    join::run(cfg, shutdown).await
}
