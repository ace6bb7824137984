//! What workers say about themselves and what the master says about the swarm: the
//! `Heartbeat` every worker publishes each second (with its toolchains), and the
//! `SwarmPulse` that `vgas.status` answers, built from them. Internal messages: unknown
//! fields are tolerated so versions can mix.

use serde::{Deserialize, Serialize};

use crate::ids::{TaskId, WorkerId};

/// A toolchain found on a worker.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Toolchain {
    pub name: String,
    #[serde(default)]
    pub version: String,
    #[serde(default)]
    pub path: String,
    /// For compilers: the exact identity (`sha256:<hex>`); segments that name it need the
    /// capability tag `compiler:<first 32 hex digits>`, which the worker also offers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<crate::farm::CompilerIdentity>,
}

/// Worker to master on `vgas.heartbeat.<id>`, every `HEARTBEAT_INTERVAL`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Heartbeat {
    pub worker: Option<WorkerId>,
    pub seq: u64,
    pub hostname: String,
    /// Which machine's CPUs the worker runs on ([`crate::host::host_id`]): a build compiles
    /// in place when no worker on another host offers its compiler.
    pub host: String,
    pub slots: usize,
    /// Attempts it takes beyond its slots, each waiting for a slot in its own queue (first
    /// come, first served), so a slot starts its next task without a round trip to the
    /// master (`--queue-ahead`; absent from an older worker: none).
    #[serde(default)]
    pub queue_ahead: usize,
    pub free_slots: usize,
    /// Attempts held now (task id, attempt): running, or queued ahead of the slots, until
    /// their result is stored. For operators and tools, and for the master's audit: an
    /// attempt its live worker stops listing, whose result does not come, has its
    /// assignment sent again.
    pub running: Vec<(TaskId, u32)>,
    pub cpus: usize,
    pub memory_mb: u64,
    pub load1: f64,
    pub toolchains: Vec<Toolchain>,
    pub capabilities: Vec<String>,
    /// What the native sandbox could set up here (`full` or a list of what is missing).
    pub isolation: String,
    /// The GPUs the worker's probe found (none without `libcuda`), or its declared test ones.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<crate::gpu::GpuDevice>,
    /// The CUDA driver's version (`13.0`), when `libcuda` loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cuda_driver: Option<String>,
    /// No new work: the worker is shutting down.
    pub draining: bool,
    /// Last beat: forget this worker now.
    pub leaving: bool,
}

/// One live node in `SwarmPulse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub id: WorkerId,
    pub hostname: String,
    /// The worker's host id (see [`Heartbeat::host`]).
    #[serde(default)]
    pub host: String,
    pub slots: usize,
    pub free_slots: usize,
    pub in_flight: usize,
    pub cpus: usize,
    pub memory_mb: u64,
    pub load1: f64,
    pub capabilities: Vec<String>,
    pub toolchains: Vec<Toolchain>,
    pub isolation: String,
    /// The worker's GPUs, as its last heartbeat said.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<crate::gpu::GpuDevice>,
    /// Which of them are leased, and to which task (device UUID, task).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leases: Vec<(String, TaskId)>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda_driver: Option<String>,
    pub draining: bool,
    pub last_seen_ms_ago: u64,
    pub tasks_done: u64,
}

/// A node that stopped beating, with why it is listed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AbnormalNode {
    pub id: WorkerId,
    pub reason: String,
    pub last_seen_ms_ago: u64,
}

/// The swarm at a glance: the reply of `vgas.status`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct SwarmPulse {
    pub live: Vec<NodeStatus>,
    pub abnormal: Vec<AbnormalNode>,
    /// Accepted tasks waiting for a worker.
    pub queue_depth: usize,
    pub queue_capacity: usize,
    /// Tasks assigned and not yet finished.
    pub in_flight: usize,
    /// Queued tasks that wait for a busy GPU (some worker could run them, none has the
    /// devices free now).
    pub waiting_for_gpus: usize,
    pub tasks_accepted: u64,
    pub tasks_finished: u64,
    pub uptime_ms: u64,
    /// Workers seen on the LAN by mDNS that are not live here, with the likely reason.
    pub unjoined: Vec<crate::discovery::SeenNode>,
    /// The master that answered: it holds the master lease (others wait as standbys).
    pub master: Option<MasterLease>,
    /// Copies JetStream keeps of each stream and bucket of this swarm.
    pub replicas: u8,
}

/// Who leads the swarm: the value of the master lease (KV bucket `<prefix>_leader`, key
/// `master`), renewed by the leading master while it runs.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct MasterLease {
    /// The master's node id (`master-<8 hex>`, new at each start).
    pub id: String,
    /// The host it runs on.
    pub host: String,
    /// When it took the lease (ms since the Unix epoch).
    pub since_ms: u64,
}
