//! The worker's native sandbox: runs one `exec` task as a process tree in a fresh directory,
//! under resource limits, with a read-only view of the rest of the file system, no network and
//! a uid of its own where the host allows it, streaming its output while it runs.
//!
//! Why native processes and not containers: a worker must start on any Linux box with nothing
//! installed, and the isolation that matters here (a task must not wreck the host, see the
//! network, or outlive its deadline) is a handful of syscalls. What the host allows is probed
//! once ([`Isolation::probe`]) and reported in heartbeats, so weaker isolation (for example a
//! worker that is not root) is visible instead of silent.
//!
//! Layout: [`run_exec`] here ties the pieces together for a parsed exec task ([`run_native`]
//! with a [`NativeJob`] and [`RunOptions`] for commands that run in a subdirectory and leave a
//! file to read back, like a compile);
//! `taskdir` prepares the directory and the environment and keeps or removes it, `mounts`
//! reads the mount table, `child` is what runs between fork and exec, `run` supervises the
//! running tree (deadline, cancel, output cap), `output` streams the pipes, `procs` finds and
//! kills processes, `outcome` turns endings into words, and `isolation` probes the host.

mod adopted;
mod child;
mod isolation;
mod mntns;
mod mounts;
mod netns;
mod outcome;
mod output;
mod procs;
mod run;
mod spawn;
mod taskdir;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_containment;
#[cfg(test)]
mod tests_escape;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use vgas_shared::limits;
use vgas_shared::wire::{Bounds, ExecTask, TaskFile, TaskLimits, TaskOutcome};

pub use isolation::Isolation;
pub use taskdir::KeptDir;

/// First sandbox uid (and gid) when the worker is root and `SandboxConfig::uid_base` is `None`
/// (tests and embedders): slot N runs as `DEFAULT_UID_BASE + N`. The `vgas-worker` binary
/// always sets its own per-process base instead (see `WorkerConfig::new`), so two workers on
/// one host never share a uid.
/// High enough to collide with no real account or the usual container uid ranges, so
/// `kill(-1)` as that uid can only hit the task's own processes, and one slot's processes can
/// neither signal nor read another's.
pub const DEFAULT_UID_BASE: u32 = 200_000;

/// `PATH` given to tasks when the worker itself has none.
pub const SAFE_DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// One mebibyte: per-task limits on the wire are in MiB, the sandbox works in bytes.
const MIB: u64 = 1024 * 1024;

/// Worker-wide ceilings and defaults for native tasks.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Per-task directories are created under here (created with mode 0711 if missing).
    pub work_dir: PathBuf,
    /// Per-task values are min(requested, ceiling); nothing requested means the ceiling.
    pub ceilings: Limits,
    /// When root: slot N runs as uid/gid `uid_base + N` (`None`: [`DEFAULT_UID_BASE`]).
    pub uid_base: Option<u32>,
}

impl SandboxConfig {
    /// A configuration with the default ceilings and uid base.
    pub fn new(work_dir: PathBuf) -> SandboxConfig {
        SandboxConfig {
            work_dir,
            ceilings: Limits::default(),
            uid_base: None,
        }
    }

    /// The uid (and gid) slot `slot` runs as when uids are switched; `None` on overflow.
    pub fn sandbox_uid(&self, slot: usize) -> Option<u32> {
        let base = self.uid_base.unwrap_or(DEFAULT_UID_BASE);
        u32::try_from(slot)
            .ok()
            .and_then(|s| base.checked_add(s))
            .filter(|&uid| uid != 0 && uid != u32::MAX)
    }
}

/// Task directories in `work_dir` (the worker's, or a slot's in it), for checks that none is
/// left behind: a slot's own directory (`mntns`) stays while it is empty.
#[cfg(test)]
pub(crate) fn task_dirs_left(work_dir: &Path) -> Vec<PathBuf> {
    let entries = |dir: &Path| {
        std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .collect::<Vec<_>>()
    };
    entries(work_dir)
        .into_iter()
        .flat_map(|p| {
            let slot = p
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with(mntns::SLOT_DIR_PREFIX));
            if slot && p.is_dir() {
                entries(&p)
            } else {
                vec![p]
            }
        })
        .collect()
}

/// Resource limits of one native task, in bytes, seconds and counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Address space (`RLIMIT_AS`).
    pub memory_bytes: u64,
    /// CPU time (`RLIMIT_CPU`): SIGXCPU at this, SIGKILL a little later.
    pub cpu_seconds: u64,
    /// Processes (threads included) of the sandbox uid (`RLIMIT_NPROC`).
    pub max_processes: u64,
    /// Combined stdout and stderr; past it the task is killed.
    pub output_cap: u64,
    /// Largest file the task may write (`RLIMIT_FSIZE`).
    pub file_size_bytes: u64,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            memory_bytes: limits::DEFAULT_MEMORY_BYTES,
            cpu_seconds: limits::DEFAULT_CPU_SECONDS,
            max_processes: limits::DEFAULT_MAX_PROCESSES,
            output_cap: limits::DEFAULT_OUTPUT_CAP,
            file_size_bytes: limits::DEFAULT_FILE_SIZE_BYTES,
        }
    }
}

impl Limits {
    /// The limits of one task: what it asked for, lowered to these ceilings; what it did not
    /// ask for is the ceiling. A request can only lower a limit, never raise it.
    pub fn for_task(&self, req: &TaskLimits) -> Limits {
        let mib = |v: Option<u64>, ceiling: u64| {
            v.map_or(ceiling, |m| m.saturating_mul(MIB).min(ceiling))
        };
        let count = |v: Option<u64>, ceiling: u64| v.map_or(ceiling, |n| n.min(ceiling));
        Limits {
            memory_bytes: mib(req.memory_mb, self.memory_bytes),
            cpu_seconds: count(req.cpu_seconds, self.cpu_seconds),
            max_processes: count(req.max_processes, self.max_processes),
            output_cap: mib(req.output_cap_mb, self.output_cap),
            file_size_bytes: mib(req.file_size_mb, self.file_size_bytes),
        }
    }
}

/// A chunk of output, as it is produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OutputChunk {
    Stdout(String),
    Stderr(String),
}

/// Builds a command's argv from the absolute working directory it will run in.
pub type CommandFor<'a> = dyn Fn(&Path) -> Vec<String> + Sync + 'a;

/// One kind's parsed task with the bounds of its attempt: what each kind's runner takes
/// ([`run_exec`] an `ExecTask`, the wasm runtime a `WasmTask`, the compiler a `CompileTask`).
#[derive(Debug)]
pub struct Job<'a, T> {
    /// The kind's own part of the task.
    pub task: &'a T,
    /// The deadline and limits of this attempt.
    pub bounds: &'a Bounds,
}

impl<T> Clone for Job<'_, T> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<T> Copy for Job<'_, T> {}

/// What a native run runs: the command (given the absolute working directory it will run
/// in), its environment on top of the sandbox's allow-list, its stdin, its input files and
/// the bounds of the attempt.
pub struct NativeJob<'a> {
    /// The argv, given the absolute working directory; its first part names the program.
    pub command: &'a CommandFor<'a>,
    /// Set on top of the sandbox's allow-list (`PATH`, `HOME`, `TMPDIR`, locale).
    pub env: &'a BTreeMap<String, String>,
    /// Fed to the command, then closed.
    pub stdin: &'a str,
    /// Written into the task directory before the command starts.
    pub files: &'a [TaskFile],
    /// The deadline and limits (lowered to the worker's ceilings).
    pub bounds: &'a Bounds,
}

impl<'a> NativeJob<'a> {
    /// An exec task's job: its env, stdin, files and bounds, run as `command` (its argv,
    /// wherever it runs).
    pub(crate) fn of_exec(job: Job<'a, ExecTask>, command: &'a CommandFor<'a>) -> NativeJob<'a> {
        NativeJob {
            command,
            env: &job.task.env,
            stdin: &job.task.stdin,
            files: &job.task.files,
            bounds: job.bounds,
        }
    }
}

impl std::fmt::Debug for NativeJob<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NativeJob")
            .field("command", &"fn(workdir) -> argv")
            // Names only: a value may be secret.
            .field("env", &self.env.keys().collect::<Vec<_>>())
            .field("stdin", &self.stdin.len())
            .field("files", &self.files)
            .field("bounds", &self.bounds)
            .finish()
    }
}

/// How a native run goes beyond a plain exec task (compile tasks use it): where in the task
/// directory the command runs, more files for that directory, and whether the directory is
/// kept for the caller to read back.
#[derive(Default)]
pub struct RunOptions<'a> {
    /// The working directory, relative to the task directory (checked like an input file's
    /// path, created, owned by the sandbox uid); empty: the task directory itself.
    pub workdir: &'a str,
    /// More files, relative to the task directory, written after the job's own (a job file
    /// at the same path is replaced).
    pub extra_files: &'a [(String, Vec<u8>)],
    /// Keep the task directory after the run ([`NativeRun::dir`]) instead of removing it.
    pub keep_dir: bool,
    /// The task leased GPUs: these are the device nodes it must not see.
    pub devices: Option<&'a DeviceAccess>,
    /// One more file that may still be on its way (a compile's input asked from its
    /// submitter): awaited once the rest of the directory is written, so its transfer
    /// overlaps that work, then written like `extra_files`. Its error ends the run as an
    /// `error` with that sentence.
    pub late_file: Option<LateFile<'a>>,
}

/// A file still on its way: its path relative to the task directory and its bytes, or why
/// it cannot come ([`RunOptions::late_file`]).
pub type LateFile<'a> =
    std::pin::Pin<Box<dyn Future<Output = Result<(String, Vec<u8>), String>> + Send + 'a>>;

/// What a task that leased GPUs may touch. The device nodes of every other GPU on the host
/// are covered by `/dev/null` in the task's mount namespace (so opening one finds no GPU),
/// and the address-space limit is lifted: CUDA reserves terabytes of virtual address space
/// for unified memory, and a process under `RLIMIT_AS` cannot initialise it. Memory is still
/// bounded by the host, not by the sandbox, for such a task.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceAccess {
    /// `/dev/nvidiaN` of the devices not leased to the task.
    pub hidden: Vec<PathBuf>,
}

impl std::fmt::Debug for RunOptions<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunOptions")
            .field("workdir", &self.workdir)
            .field(
                "extra_files",
                &self.extra_files.iter().map(|(p, _)| p).collect::<Vec<_>>(),
            )
            .field("keep_dir", &self.keep_dir)
            .field("devices", &self.devices)
            .field("late_file", &self.late_file.is_some())
            .finish()
    }
}

/// How a native run ended, and its directory when [`RunOptions::keep_dir`] asked for it.
#[derive(Debug)]
pub struct NativeRun {
    pub outcome: TaskOutcome,
    /// The task directory, once every process of the task is dead; `None` when it was not
    /// kept or never made.
    pub dir: Option<KeptDir>,
    /// How long the task's own process ran, from its spawn to its exit (not the sandbox's
    /// set-up and clean-up around it); `None` when it did not start or was killed.
    pub ran: Option<Duration>,
}

impl NativeRun {
    /// The kept directory of a run that exited 0; otherwise how it ended (its directory, if
    /// any, is removed here).
    pub fn succeeded(self) -> Result<KeptDir, TaskOutcome> {
        match (self.outcome, self.dir) {
            (TaskOutcome::Exited { exit_code: 0 }, Some(dir)) => Ok(dir),
            (TaskOutcome::Exited { exit_code: 0 }, None) => Err(TaskOutcome::Error {
                message: "the task directory was not kept after the run".into(),
            }),
            (outcome, _) => Err(outcome),
        }
    }
}

/// Runs an exec task in a fresh directory, streaming output into `out` as it is produced, and
/// returns how it ended. Never panics; every failure is a [`TaskOutcome`].
///
/// `slot` (0-based) picks the sandbox uid when uids are switched, so tasks running at the same
/// time in different slots cannot touch each other. If `cancel` fires, everything the task
/// started is killed and the result is [`TaskOutcome::Cancelled`]. The task's `environment`
/// is not prepared here: the worker prepares it and puts it into the task's env first.
pub async fn run_exec(
    cfg: &SandboxConfig,
    isolation: &Isolation,
    slot: usize,
    job: Job<'_, ExecTask>,
    devices: Option<&DeviceAccess>,
    out: Sender<OutputChunk>,
    cancel: CancellationToken,
) -> TaskOutcome {
    let argv = |_: &Path| job.task.argv.as_slice().to_vec();
    let native = NativeJob::of_exec(job, &argv);
    let opts = RunOptions {
        devices,
        ..RunOptions::default()
    };
    run_native(cfg, isolation, slot, &native, opts, out, cancel)
        .await
        .outcome
}

/// [`run_exec`] for a [`NativeJob`] with [`RunOptions`]: the same limits, uid, namespaces,
/// deadline, cancel and output streaming, in `opts.workdir` with `opts.extra_files` and then
/// `opts.late_file`. A kept directory is handed back only after supervision killed
/// everything the task started.
pub async fn run_native(
    cfg: &SandboxConfig,
    isolation: &Isolation,
    slot: usize,
    job: &NativeJob<'_>,
    mut opts: RunOptions<'_>,
    out: Sender<OutputChunk>,
    cancel: CancellationToken,
) -> NativeRun {
    let error = |message: String| NativeRun {
        outcome: TaskOutcome::Error { message },
        dir: None,
        ran: None,
    };
    let mut limits = cfg.ceilings.for_task(&job.bounds.limits);
    let hidden: &[PathBuf] = match opts.devices {
        Some(d) => {
            limits.memory_bytes = libc::RLIM_INFINITY;
            &d.hidden
        }
        None => &[],
    };
    let uid = if isolation.uid_switch {
        match cfg.sandbox_uid(slot) {
            Some(uid) => Some(uid),
            None => return error(format!("no sandbox uid for slot {slot}")),
        }
    } else {
        None
    };
    if cancel.is_cancelled() {
        return NativeRun {
            outcome: TaskOutcome::Cancelled,
            dir: None,
            ran: None,
        };
    }
    // Processes a crashed earlier run of this slot left behind would share the uid's limits.
    let clean = match uid {
        Some(uid) => {
            let clean = procs::ensure_clean(uid).await;
            if !clean {
                // A survivor may sit in the slot's kept namespaces: not shared with this task.
                netns::forget(uid);
                mntns::forget(uid);
            }
            clean
        }
        None => false,
    };
    let work_root = match taskdir::work_root(&cfg.work_dir, uid) {
        Ok(root) => root,
        Err(message) => return error(format!("sandbox setup failed: {message}")),
    };
    // The slot's kept mount namespace, where the task's directory goes in the slot's.
    let slot = match uid {
        Some(uid) if clean && isolation.mount_ns && hidden.is_empty() => {
            mntns::for_uid(&work_root, uid)
        }
        _ => None,
    };
    let parent = slot.as_ref().map_or(&work_root, |s| &s.dir);
    // Writing the directory holds this thread for a while (a compile's headers: half a
    // millisecond); what this task set going just before (the request for an offered
    // source, the assignment's acknowledgement) waits on this thread to be written to the
    // connection, so it goes first.
    tokio::task::yield_now().await;
    let dir = match taskdir::prepare(parent, job.files, &opts, uid) {
        Ok(dir) => dir,
        Err(message) => return error(format!("sandbox setup failed: {message}")),
    };
    if let Some(late) = opts.late_file.take() {
        let came = tokio::select! {
            came = late => came.map_err(|message| TaskOutcome::Error { message }),
            () = cancel.cancelled() => Err(TaskOutcome::Cancelled),
        };
        let written = came.and_then(|(path, bytes)| {
            taskdir::write_owned(dir.path(), &path, &bytes, uid).map_err(|message| {
                TaskOutcome::Error {
                    message: format!("sandbox setup failed: {message}"),
                }
            })
        });
        if let Err(outcome) = written {
            taskdir::remove(dir);
            return NativeRun {
                outcome,
                dir: None,
                ran: None,
            };
        }
    }
    let cwd = match opts.workdir {
        "" => dir.path().to_path_buf(),
        sub => dir.path().join(sub),
    };
    let argv = (job.command)(&cwd);
    let Some(program) = argv.first().filter(|p| !p.is_empty()).cloned() else {
        taskdir::remove(dir);
        return error("\"cmd\" must name a program".into());
    };
    if argv.iter().any(|a| a.contains('\0')) {
        taskdir::remove(dir);
        return error("command arguments must not contain NUL".into());
    }
    let env = match taskdir::environment(dir.path(), job.env) {
        Ok(env) => env,
        Err(message) => {
            taskdir::remove(dir);
            return error(message);
        }
    };
    let kept_mounts = slot.as_ref().map(|s| s.fd.clone());
    let plan = match child::ChildPlan::new(
        dir.path(),
        &cwd,
        isolation,
        &limits,
        uid,
        hidden,
        kept_mounts,
    ) {
        Ok(plan) => Arc::new(plan),
        Err(message) => {
            taskdir::remove(dir);
            return error(format!("sandbox setup failed: {message}"));
        }
    };

    let task_path = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone());
    let prepared = spawn::candidates(&program, task_path.as_deref()).and_then(|found| {
        let argv = argv
            .iter()
            .map(|a| CString::new(a.as_str()).map_err(|_| "an argument contains NUL".to_owned()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok((found, argv, spawn::environ(env)?))
    });
    let (found, c_argv, c_env) = match prepared {
        Ok(p) => p,
        Err(message) => {
            taskdir::remove(dir);
            return error(message);
        }
    };
    let spawned_at = std::time::Instant::now();
    let (outcome, ran) = match spawn::spawn(&found, &c_argv, &c_env, &plan) {
        Ok(child) => {
            let supervised = run::Job {
                uid,
                limits,
                deadline: job.bounds.deadline,
                stdin: job.stdin.to_owned(),
            };
            let run = run::supervise(child, supervised, out, cancel).await;
            let ran = run
                .exited
                .map(|at| at.saturating_duration_since(spawned_at));
            (run.outcome, ran)
        }
        Err(e) => (
            outcome::spawn_error(&e, &program, &plan, task_path.as_deref()),
            None,
        ),
    };
    // `supervise` has killed everything the task started; a failed spawn started nothing.
    if opts.keep_dir {
        // Out of the slot's directory, where the slot's next task could write to it.
        let moved = slot
            .as_ref()
            .map(|_| work_root.join(dir.path().file_name().unwrap_or_default()));
        return match KeptDir::new(dir, moved.as_deref()) {
            Ok(kept) => NativeRun {
                outcome,
                dir: Some(kept),
                ran,
            },
            Err(message) => error(message),
        };
    }
    taskdir::remove(dir);
    NativeRun {
        outcome,
        dir: None,
        ran,
    }
}
