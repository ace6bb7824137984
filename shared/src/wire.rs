//! The messages on the wire. Person-facing requests (`TaskSpec`, `TaskQuery`) refuse unknown
//! fields so a typo is an error, not a silent default; messages between our own processes
//! accept unknown fields (`#[serde(default)]`) so versions can mix during an upgrade.
//!
//! A `TaskSpec` is the wire form of a task; `TaskSpec::parse` (in `task`) checks it and turns
//! it into the `Task` that runs, each kind with only its own fields.

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::codec::Encoding;
use crate::error::VgaError;
use crate::ids::{TaskId, WorkerId};
use crate::limits;

pub mod board;
mod cuda;
mod env;
mod record;
mod status;
mod task;
pub use cuda::{virtual_arch, CudaSpec, KernelArg, PTX_ARTIFACT};
pub use env::{Env, EnvValue, MarkedValue, SealedValue};
pub use status::{AbnormalNode, Heartbeat, MasterLease, NodeStatus, SwarmPulse, Toolchain};
pub use task::{
    Argv, Bounds, CompileTask, CudaTask, ExecTask, RustcTask, Task, TaskFile, WasmTask, Work,
};
// The checked names live below the wire types (the build farm's types use them too).
pub use crate::names::{check_module_ref, check_relative_path, ModuleRef, MODULE_REF_PREFIX};

/// What a task runs. The build and agent kinds extend this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskKind {
    /// A command with args, env, stdin and input files, in the native sandbox.
    #[default]
    Exec,
    /// A WASI module named by content hash (`module`), run in the worker's wasmtime sandbox
    /// with `cmd` as its argv, the same env, stdin and input files.
    Wasm,
    /// One build segment (`compile`): a translation unit compiled to an object by the exact
    /// compiler its `compile.compiler` names; the object comes back as an artifact.
    Compile,
    /// An AI agent run (`agent`): an instruction through a pipeline of roles whose model calls
    /// go through the master's gateway and whose code is built on the swarm; the workspace
    /// files and `response.json` come back as artifacts.
    Agent,
    /// CUDA C (`cuda`) compiled with NVRTC to PTX and, unless compile-only, its kernel
    /// launched on the task's leased GPU; output buffers come back as artifacts.
    Cuda,
    /// One Rust crate (`rustc`) compiled by the exact rustc its `rustc.compiler` names, with
    /// the submitter's paths; its outputs come back as artifacts.
    Rustc,
}

impl TaskKind {
    /// The kind as it is written on the wire (`exec`, `wasm`...).
    pub fn as_str(self) -> &'static str {
        match self {
            TaskKind::Exec => "exec",
            TaskKind::Wasm => "wasm",
            TaskKind::Compile => "compile",
            TaskKind::Agent => "agent",
            TaskKind::Cuda => "cuda",
            TaskKind::Rustc => "rustc",
        }
    }
}

/// A task as a person or program submits it on `vgas.task.submit`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskSpec {
    /// Optional id chosen by the submitter, so it can subscribe to the events before it
    /// submits. Resubmitting the same spec under the same id is idempotent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub task_id: Option<TaskId>,
    #[serde(default)]
    pub kind: TaskKind,
    /// Program and arguments; the program is looked up on the worker's `PATH`. For a wasm
    /// task, the module's argv (may be empty: argv[0] is then the module's name).
    #[serde(default)]
    pub cmd: Vec<String>,
    /// Wasm tasks only: the module, `sha256:<64 lowercase hex>` of its bytes, as stored in
    /// the modules Object Store bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    /// Values are strings, or `{"value":"...","secret":true}` for one never stored in clear
    /// nor logged ([`EnvValue`]).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, EnvValue>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub stdin: String,
    /// Files written into the task directory before the command starts.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<InputFile>,
    /// Wall-clock deadline in seconds (default 300).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u64>,
    #[serde(default)]
    pub needs: Needs,
    /// Resource limits below the worker's ceilings.
    #[serde(default)]
    pub limits: TaskLimits,
    /// Whether the task may run again elsewhere when its worker is lost (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retryable: Option<bool>,
    /// Attempts before giving up (default 3, at most 10).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// Compile tasks only: the segment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compile: Option<crate::farm::CompileSpec>,
    /// Agent tasks only: the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent: Option<crate::agent::AgentRun>,
    /// How long the task may wait for a live worker that can run it before it is abandoned
    /// (default and most: `limits::NO_WORKER_WAIT`). 0 fails at once, so a build segment with
    /// no capable worker compiles locally instead of waiting.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_for_worker_s: Option<u64>,
    /// Exec tasks only: the toolchain or conda environment the command runs in. The worker
    /// prepares it (`EnvironmentManager::setup_sandboxed_environment`) and puts its `bin`
    /// first on the task's `PATH`; one it cannot satisfy fails the task with the reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<crate::farm::EnvSpec>,
    /// Cuda tasks only: the source, kernel and launch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cuda: Option<CudaSpec>,
    /// Rustc tasks only: the crate compile.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rustc: Option<crate::farm::rustc::RustcSpec>,
}

/// An input file: `{"path":"in.txt","text":"..."}` or `{"path":"in.bin","base64":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InputFile {
    pub path: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// Unix mode bits, for example 493 (0o755) for a script.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<u32>,
}

impl InputFile {
    /// The file's bytes.
    pub fn contents(&self) -> Result<Vec<u8>, VgaError> {
        match (&self.text, &self.base64) {
            (Some(t), None) => Ok(t.clone().into_bytes()),
            (None, Some(b)) => base64::engine::general_purpose::STANDARD
                .decode(b)
                .map_err(|e| {
                    VgaError::InvalidTask(format!("file {:?}: bad base64: {e}", self.path))
                }),
            _ => Err(VgaError::InvalidTask(format!(
                "file {:?}: give exactly one of \"text\" or \"base64\"",
                self.path
            ))),
        }
    }
}

/// What a worker must offer to take the task.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Needs {
    /// Capability tags the worker must advertise, all of them (for example `"gcc"`, `"gpu"`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// GPUs leased to the task for its attempt, whole devices (`2`, or an object with what each
    /// device must have: [`crate::gpu::GpuNeeds`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<crate::gpu::GpuNeeds>,
}

/// Per-task resource limits; `None` takes the worker's default, and a value above the
/// worker's ceiling is lowered to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_seconds: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_processes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_cap_mb: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file_size_mb: Option<u64>,
}

impl TaskSpec {
    /// Checks everything that can be checked without a worker: [`TaskSpec::parse`], with the
    /// parsed task dropped. A task that fails here was never accepted and changed nothing.
    pub fn validate(&self) -> Result<(), VgaError> {
        self.parse().map(|_| ())
    }

    pub fn deadline(&self) -> std::time::Duration {
        self.deadline_s
            .map(std::time::Duration::from_secs)
            .unwrap_or(limits::DEFAULT_DEADLINE)
    }

    /// How long the task may wait for a capable live worker.
    pub fn wait_for_worker(&self) -> std::time::Duration {
        self.wait_for_worker_s
            .map(std::time::Duration::from_secs)
            .unwrap_or(limits::NO_WORKER_WAIT)
    }

    pub fn max_attempts(&self) -> u32 {
        if self.retryable == Some(false) {
            1
        } else {
            self.max_attempts.unwrap_or(limits::DEFAULT_MAX_ATTEMPTS)
        }
    }
}

/// The accept reply to a submit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubmitReply {
    pub task_id: TaskId,
    /// The subject the task's events are published on.
    pub events: String,
    /// True when this id was already accepted with the same spec (an idempotent resubmit).
    #[serde(default)]
    pub duplicate: bool,
}

/// `{"task_id":"..."}`: the body of `vgas.task.info` and `vgas.task.cancel`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskQuery {
    pub task_id: TaskId,
}

/// Master to worker on `vgas.worker.<id>.cancel`: stop this attempt of the task (a worker not
/// running that attempt ignores it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelAttempt {
    pub task_id: TaskId,
    pub attempt: u32,
}

/// The answer to `vgas.task.cancel` for a task that is queued or running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CancelReply {
    pub task_id: TaskId,
    /// True: the cancel is on its way; the task's `finished` event says when it took effect.
    pub cancelling: bool,
}

/// How a task ended. The one final result of a task carries exactly one of these.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum TaskOutcome {
    /// The command ran and exited with this code (0 is success).
    Exited { exit_code: i32 },
    /// The command was killed by a signal it did not ask for: a limit or a crash.
    Signaled { signal: i32, message: String },
    /// The command passed its wall-clock deadline and was killed with its process group.
    TimedOut { deadline_s: u64 },
    /// The command exceeded a vgas limit (output cap) and was killed.
    LimitExceeded { limit: String, message: String },
    /// The task could not be run at all (bad program, sandbox setup failed, ...).
    Error { message: String },
    /// The task was cancelled on request.
    Cancelled,
    /// The master gave up: attempts exhausted, or no worker could take it.
    Abandoned { message: String },
}

impl TaskOutcome {
    /// The exit code `vgas submit` ends with, shell-style: the command's own, 124 for a
    /// timeout, 128+N for signal N, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            TaskOutcome::Exited { exit_code } => *exit_code,
            TaskOutcome::Signaled { signal, .. } => 128 + signal,
            TaskOutcome::TimedOut { .. } => 124,
            _ => 1,
        }
    }

    /// The outcome as a metric label: a few fixed values a dashboard can sum.
    pub fn label(&self) -> &'static str {
        match self {
            TaskOutcome::Exited { exit_code: 0 } => "succeeded",
            TaskOutcome::Exited { .. } => "failed",
            TaskOutcome::Signaled { .. } => "signaled",
            TaskOutcome::TimedOut { .. } => "timed_out",
            TaskOutcome::LimitExceeded { .. } => "limit_exceeded",
            TaskOutcome::Error { .. } => "error",
            TaskOutcome::Cancelled => "cancelled",
            TaskOutcome::Abandoned { .. } => "abandoned",
        }
    }

    pub fn succeeded(&self) -> bool {
        matches!(self, TaskOutcome::Exited { exit_code: 0 })
    }

    /// A one-line account for people.
    pub fn describe(&self) -> String {
        match self {
            TaskOutcome::Exited { exit_code } => format!("exited with code {exit_code}"),
            TaskOutcome::Signaled { signal, message } => {
                format!("killed by signal {signal}: {message}")
            }
            TaskOutcome::TimedOut { deadline_s } => format!("timed out after {deadline_s}s"),
            TaskOutcome::LimitExceeded { limit, message } => {
                format!("{limit} limit exceeded: {message}")
            }
            TaskOutcome::Error { message } => format!("could not run: {message}"),
            TaskOutcome::Cancelled => "cancelled".into(),
            TaskOutcome::Abandoned { message } => format!("abandoned: {message}"),
        }
    }
}

/// Header on every worker event the master relays to `vgas.task.<id>.events` (`stdout`,
/// `stderr`, `artifact`): the event's sequence in the results stream. The master relays an
/// event at least once (a master killed after relaying one and before acknowledging it
/// relays it again once restarted), and a task's relayed events come in stream order, so a
/// follower drops a relayed event whose sequence is not above the highest it has seen.
pub const HEADER_EVENT_SEQ: &str = "Vgas-Event-Seq";

/// The leading master's answer to a result offered on [`crate::Subjects::result_direct`]
/// when that result ended its task: the final record is written and `finished` announced,
/// so the worker stores nothing in the results stream. Any other answer (or none, or no
/// master listening) and the worker stores the result there, as it always could.
pub const RESULT_TAKEN: &[u8] = b"taken";

/// One event on `vgas.task.<id>.events`. Output chunks carry the attempt they belong to, so a
/// reader can drop a lost attempt's output when a `retrying` event says a new one began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TaskEvent {
    Assigned {
        worker: WorkerId,
        attempt: u32,
    },
    Started {
        worker: WorkerId,
        attempt: u32,
    },
    Stdout {
        attempt: u32,
        data: String,
    },
    Stderr {
        attempt: u32,
        data: String,
    },
    Retrying {
        attempt: u32,
        reason: String,
    },
    /// A file the task wrote into its directory (wasm tasks), sent before the result: inline
    /// in `base64` up to `limits::MAX_INLINE_ARTIFACT_BYTES`; larger (up to
    /// `limits::MAX_ARTIFACT_BYTES`) it is put into the artifacts Object Store bucket, `object`
    /// names it there, `size` is its length and `base64` is empty.
    Artifact {
        attempt: u32,
        /// Relative to the task directory.
        path: String,
        #[serde(default)]
        base64: String,
        /// The object's name in the artifacts bucket, for a file sent by reference.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        object: Option<String>,
        /// Bytes of a file sent by reference.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        size: Option<u64>,
        /// The file's permission bits on the worker (`0o755` for a binary it built), so the
        /// submitter's copy keeps them; set-id and sticky bits are never applied there.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<u32>,
        /// Microseconds the task's own process ran on the worker (spawn to exit), on the
        /// files of a compile: the work itself, apart from the path around it.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        ran_us: Option<u64>,
        /// Bytes of stdout and of stderr the attempt sent before this file: a client that
        /// reads the worker's events directly (`vgas.worker.<id>.events.<task>`) as well as
        /// the relayed ones knows from them when it has all of the output.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stdout_bytes: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stderr_bytes: Option<u64>,
    },
    /// The one final result, published once by the master.
    Finished {
        task_id: TaskId,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<WorkerId>,
        attempts: u32,
        duration_ms: u64,
        outcome: TaskOutcome,
    },
}

/// Master to worker on `vgas.worker.<id>.task`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assignment {
    pub task_id: TaskId,
    pub attempt: u32,
    pub spec: TaskSpec,
    /// The encoding the submitter used; events go out in it.
    #[serde(default)]
    pub encoding: Encoding,
    /// The GPUs leased to this attempt (UUIDs): the only devices the task may see.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
}

/// The worker's answer to an assignment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AssignAck {
    pub accepted: bool,
    #[serde(default)]
    pub reason: String,
    /// Accepted into the worker's queue ahead of its slots, not started: the worker sends
    /// a `started` event of its own when a slot takes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub queued: bool,
}

/// Worker to master, through JetStream: how one attempt ended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkerResult {
    pub task_id: TaskId,
    pub attempt: u32,
    pub worker: WorkerId,
    pub outcome: TaskOutcome,
    pub duration_ms: u64,
    /// The worker stopped before finishing (drain): run the task again, not counted as an
    /// attempt.
    #[serde(default)]
    pub handed_back: bool,
    /// How many events the worker published on its own event subject for this attempt
    /// before this result (its `started` for an attempt it queued, output, artifacts). A
    /// master that reads the result straight from the worker's subject acts on that copy
    /// only once it has had exactly that many from the results stream, so nothing overtakes
    /// the output; absent (older workers, an attempt that never ran), it waits for the
    /// stream's copy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub events: Option<u32>,
}

/// The state of one task, as kept in the tasks bucket and answered by `vgas.task.info`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub enum TaskState {
    Queued,
    Assigned {
        worker: WorkerId,
        since_ms: u64,
        /// The GPUs leased to this attempt (UUIDs), recorded before the assignment is sent:
        /// a restarted master takes its leases back from here.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        gpus: Vec<String>,
    },
    Finished {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<WorkerId>,
        outcome: TaskOutcome,
        finished_ms: u64,
    },
}

/// A task's durable record.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TaskRecord {
    pub task_id: TaskId,
    pub spec: TaskSpec,
    pub encoding: Encoding,
    pub accepted_ms: u64,
    /// The attempt now running or last run (1-based); 0 before the first assignment.
    pub attempt: u32,
    pub state: TaskState,
    /// Why earlier attempts ended without a result.
    #[serde(default)]
    pub retries: Vec<String>,
    /// A keyed digest of the spec as submitted (the master's key): an idempotent resubmit is
    /// recognised by it once the spec itself is dropped.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_digest: Option<String>,
    /// When the spec's payload (command, env, stdin, files, segment, run) was dropped from
    /// the record, after the task finished and the retention setting passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_dropped_ms: Option<u64>,
}

#[cfg(test)]
#[path = "wire_tests.rs"]
mod tests;
