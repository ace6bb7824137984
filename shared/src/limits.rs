//! Every limit vgas enforces, named once with the reason it exists. Settings that an operator
//! may change start from these values; per-task overrides are capped by them.

use std::time::Duration;

/// Largest submit payload accepted (1 MiB). Input files ride inside the task, so this bounds
/// what one client can make the master store per task; bigger inputs belong in Object Store.
pub const MAX_SUBMIT_BYTES: usize = 1024 * 1024;

/// Largest batch submit payload (8 MiB, the `max_payload` of the repository's `nats.conf`): a
/// batch of small tasks; each task in it is still bounded by [`MAX_SUBMIT_BYTES`]'s reason.
pub const MAX_BATCH_BYTES: usize = 8 * 1024 * 1024;

/// Most tasks in one batch: enough that a batch's round trip is shared by thousands of
/// tasks, few enough that one answer stays small and one request's work stays short.
pub const MAX_BATCH_TASKS: usize = 10_000;

/// Largest control request (status, info, cancel) accepted: these carry an id at most.
pub const MAX_CONTROL_BYTES: usize = 4 * 1024;

/// Largest heartbeat accepted: a node's toolchain list fits easily; more is garbage.
pub const MAX_HEARTBEAT_BYTES: usize = 64 * 1024;

/// Tasks accepted but not yet assigned. Past this, submit answers `busy` instead of letting
/// memory and latency grow without bound.
pub const DEFAULT_QUEUE_CAPACITY: usize = 1024;

/// Default wall-clock deadline of a task, and the largest one a task may ask for.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);
pub const MAX_DEADLINE: Duration = Duration::from_secs(24 * 3600);

/// Attempts a retryable task gets before it fails for good (first run included).
pub const DEFAULT_MAX_ATTEMPTS: u32 = 3;
/// The most attempts a task may ask for.
pub const MAX_ATTEMPTS: u32 = 10;

/// How often a worker beats.
pub const HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);
/// Beats a node may miss before it is abnormal (no new work; its tasks are retried).
pub const MISSED_BEATS_ABNORMAL: u32 = 3;
/// How long a node may be silent before it is abnormal: [`MISSED_BEATS_ABNORMAL`] beats. Also
/// how long a (re)started master waits before it judges its workers by their silence.
pub const ABNORMAL_AFTER: Duration =
    Duration::from_millis(HEARTBEAT_INTERVAL.as_millis() as u64 * MISSED_BEATS_ABNORMAL as u64);
/// Beats a node may miss before it is forgotten altogether.
pub const MISSED_BEATS_REMOVED: u32 = 30;

/// Extra time the master grants past a task's deadline before it assumes the worker lost it:
/// the worker kills at the deadline and needs a moment to report.
pub const DEADLINE_GRACE: Duration = Duration::from_secs(5);

/// How long a worker has to acknowledge an assignment before the master tries another.
pub const ASSIGN_ACK_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest capability tag: room for `compiler:` and 32 hex digits of an identity, and for
/// people's own tags; longer is garbage that would only bloat every heartbeat.
pub const MAX_CAPABILITY_LEN: usize = 96;

/// How long a task that no live worker can run waits for one to appear before it fails.
pub const NO_WORKER_WAIT: Duration = Duration::from_secs(30);

/// Largest chunk of stdout or stderr sent in one event.
pub const OUTPUT_CHUNK_BYTES: usize = 16 * 1024;

/// Default cap on a task's combined stdout and stderr (16 MiB); past it the task is killed.
pub const DEFAULT_OUTPUT_CAP: u64 = 16 * 1024 * 1024;
/// Default address-space limit of a native task (2 GiB).
pub const DEFAULT_MEMORY_BYTES: u64 = 2 * 1024 * 1024 * 1024;
/// Default CPU-seconds limit of a native task.
pub const DEFAULT_CPU_SECONDS: u64 = 600;
/// Default largest file a native task may write (1 GiB).
pub const DEFAULT_FILE_SIZE_BYTES: u64 = 1024 * 1024 * 1024;
/// Default cap on processes of a native task's sandbox user: stops fork bombs.
pub const DEFAULT_MAX_PROCESSES: u64 = 256;

/// Input files per task. Their total size is bounded by [`MAX_SUBMIT_BYTES`], since inputs
/// ride in the submit payload.
pub const MAX_INPUT_FILES: usize = 256;

/// Largest user file a compile segment names by reference for its diagnostics (64 KiB): the
/// submitter ships none larger, and a worker keeps the ones it fetched in memory.
pub const MAX_SEGMENT_FILE_BYTES: u64 = 64 * 1024;

/// Events per task kept in flight between a sandbox and the publisher; the sandbox waits
/// (back-pressure) rather than buffer without bound.
pub const EVENT_CHANNEL_CAPACITY: usize = 64;

/// How long a draining worker lets running tasks finish before it hands them back.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a process waits for its own tasks after shutdown is asked for.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// Largest wasm module a worker fetches from the modules bucket (256 MiB): real tools compiled
/// to WASI (compilers, synthesis tools) are 50 to 100 MB; past this a fetch is refused rather
/// than filling the worker's memory and disk.
pub const MAX_MODULE_BYTES: u64 = 256 * 1024 * 1024;

/// Size of the modules Object Store bucket (2 GiB, half of `max_file_store` in `nats.conf`):
/// bounds what clients can make the server store; a put past it fails and old modules must be
/// deleted.
pub const MODULES_BUCKET_MAX_BYTES: i64 = 2 * 1024 * 1024 * 1024;

/// Default disk bound of a worker's wasm cache (module bytes and compiled modules, 4 GiB);
/// past it the least recently used entries are removed.
pub const DEFAULT_WASM_CACHE_BYTES: u64 = 4 * 1024 * 1024 * 1024;

/// Largest file a wasm task's directory may hand back inline as an artifact event (1 MiB,
/// 1.4 MB as base64): keeps every event well under the server's message size limit.
pub const MAX_INLINE_ARTIFACT_BYTES: u64 = 1024 * 1024;

/// Largest worker event the master relays (the batch limit, the server's `max_payload` in
/// the repository's `nats.conf`): an inline artifact event, the largest kind, is under 1.5 MB.
pub const MAX_EVENT_BYTES: usize = MAX_BATCH_BYTES;

/// Largest file a wasm task may hand back at all (256 MiB), through the artifacts Object
/// Store bucket: past it the run ends `limit_exceeded` `artifact`. Bounds what one task makes
/// the server store and every follower download, well inside the bucket's size.
pub const MAX_ARTIFACT_BYTES: u64 = 256 * 1024 * 1024;

/// Size of the artifacts Object Store bucket (1 GiB, a quarter of `max_file_store` in
/// `nats.conf`, beside the modules bucket's half): a put past it fails and the task says so.
pub const ARTIFACTS_BUCKET_MAX_BYTES: i64 = 1024 * 1024 * 1024;

/// How long an artifact stays in the artifacts bucket (24 h): long enough for `vgas watch` or
/// a client to fetch it after the task, short enough that old builds do not fill the bucket.
pub const ARTIFACT_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(24 * 3600);

/// Most artifact files one wasm task sends back: a module that writes thousands of files
/// would otherwise flood the events subject.
pub const MAX_ARTIFACTS: usize = 256;

/// Largest PTX the swarm-wide PTX cache keeps per entry (1 MiB, the server's default message
/// size): bigger kernels are compiled again where they run.
pub const MAX_PTX_CACHE_ENTRY_BYTES: usize = 1024 * 1024;
