//! Tasks parsed, not validated. [`TaskSpec`] is the wire form, a flat set of optional fields
//! that clients send and the master records; [`TaskSpec::parse`] checks everything that can be
//! checked without a worker and turns it into a [`Task`], whose [`Work`] carries exactly the
//! fields its kind has, already checked: an exec task's program ([`Argv`]), a wasm task's
//! module ([`ModuleRef`]), the input files decoded ([`TaskFile`]), a compile task's segment, an
//! agent task's run.
//!
//! Why: the checks exist once, here. The master parses a task before it accepts it, the
//! worker parses it again before it runs it (it does not trust the wire), and each kind's
//! runner takes its own typed part, so no runner re-checks a field or meets one its kind does
//! not have.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::{
    check_relative_path, CudaSpec, Env, InputFile, ModuleRef, Needs, TaskKind, TaskLimits, TaskSpec,
};
use crate::agent::AgentRun;
use crate::error::VgaError;
use crate::farm::rustc::RustcSpec;
use crate::farm::{compiler_tag, CompileSpec, EnvSpec};
use crate::ids::TaskId;
use crate::limits;

/// Why a compile task without its segment is refused.
const NO_SEGMENT: &str = "a compile task needs its \"compile\" segment";
/// Why an agent task without its run is refused.
const NO_AGENT_RUN: &str = "an agent task needs its \"agent\" run";
/// Why a rustc task without its compile is refused.
const NO_RUSTC: &str = "a rustc task needs its \"rustc\" compile";
/// Why a cuda task without its kernel is refused.
const NO_CUDA: &str = "a cuda task needs its \"cuda\" source and kernel";

/// A task as it runs: every check of [`TaskSpec::parse`] passed, its kind's fields in
/// [`Work`], the defaults of the wire form filled in.
#[derive(Debug, Clone, PartialEq)]
pub struct Task {
    /// The id the submitter chose, if it chose one.
    pub id: Option<TaskId>,
    /// What runs.
    pub work: Work,
    /// What one attempt may use.
    pub bounds: Bounds,
    /// What a worker must offer to take the task, with what its kind implies added (a cuda
    /// task needs NVRTC, and one GPU unless it asked for more or only compiles).
    pub needs: Needs,
    /// Whether the task may run again elsewhere when its worker is lost.
    pub retryable: bool,
    /// Attempts before giving up: 1 when not retryable.
    pub max_attempts: u32,
    /// How long the task may wait for a capable live worker.
    pub wait_for_worker: Duration,
}

/// What one attempt of a task may use: its wall-clock deadline and its resource limits (below
/// the worker's ceilings; `None` takes the worker's own).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bounds {
    /// 1 s to `limits::MAX_DEADLINE`.
    pub deadline: Duration,
    pub limits: TaskLimits,
}

/// What a task runs, one variant per kind, each with only its own fields. The wire kind is
/// [`Work::kind`].
#[derive(Debug, Clone, PartialEq)]
pub enum Work {
    /// A command in the native sandbox.
    Exec(ExecTask),
    /// A WASI module in the worker's wasmtime sandbox.
    Wasm(WasmTask),
    /// One build segment, compiled to an object.
    Compile(CompileTask),
    /// An AI agent run. The run says it all: an agent task's `env`, `stdin` and `files` are
    /// accepted on the wire but not used.
    Agent(AgentRun),
    /// CUDA C compiled to PTX and, unless compile-only, launched on the leased GPU.
    Cuda(CudaTask),
    /// One Rust crate compiled with the submitter's paths.
    Rustc(RustcTask),
}

/// A rustc task: the crate compile (checked) and the environment of the task's process.
#[derive(Debug, Clone, PartialEq)]
pub struct RustcTask {
    pub rustc: RustcSpec,
    /// Names checked (non-empty, no `=` or NUL), values without NUL.
    pub env: Env,
}

/// A cuda task: its kernel and launch (checked), the input files its buffers come from, and
/// the environment the compile and launch run with.
#[derive(Debug, Clone, PartialEq)]
pub struct CudaTask {
    pub cuda: CudaSpec,
    /// Names checked (non-empty, no `=` or NUL), values without NUL.
    pub env: Env,
    /// Written into the task directory; `in` and `inout` arguments name them.
    pub files: Vec<TaskFile>,
}

/// A command with args, env, stdin and input files, in the native sandbox.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecTask {
    /// The program, looked up on the task's `PATH`, and its arguments.
    pub argv: Argv,
    /// Names checked (non-empty, no `=` or NUL), values without NUL.
    pub env: Env,
    pub stdin: String,
    /// Written into the task directory before the command starts.
    pub files: Vec<TaskFile>,
    /// The toolchain or conda environment the command runs in, checked; the worker prepares
    /// it and puts its `bin` first on the task's `PATH`.
    pub environment: Option<EnvSpec>,
}

/// A WASI module named by content hash, with its argv, env, stdin and input files.
#[derive(Debug, Clone, PartialEq)]
pub struct WasmTask {
    pub module: ModuleRef,
    /// The module's argv, without NUL (may be empty: argv\[0\] is then the module's name).
    pub args: Vec<String>,
    /// Names checked (non-empty, no `=` or NUL), values without NUL.
    pub env: Env,
    pub stdin: String,
    /// Written into the module's directory before it starts.
    pub files: Vec<TaskFile>,
}

/// One build segment, with the user's files (so diagnostics can quote their lines) and the
/// compiler's environment.
#[derive(Debug, Clone, PartialEq)]
pub struct CompileTask {
    /// Checked ([`CompileSpec::validate`]); the task needs its compiler's capability.
    pub segment: CompileSpec,
    /// Names checked (non-empty, no `=` or NUL), values without NUL.
    pub env: Env,
    /// Written into the task directory at their relative paths.
    pub files: Vec<TaskFile>,
}

/// An exec task's command line: a program (not empty) and its arguments, none holding a NUL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Argv(Vec<String>);

/// An input file, checked: a path inside the task directory (relative, no `..`), its decoded
/// bytes and its mode.
#[derive(Clone, PartialEq, Eq)]
pub struct TaskFile {
    path: String,
    bytes: Vec<u8>,
    mode: Option<u32>,
}

/// The kind-specific part of a task, found before the common checks run.
enum Head<'a> {
    Exec(Argv),
    Wasm(ModuleRef),
    Compile(&'a CompileSpec),
    Agent(&'a AgentRun),
    Cuda(&'a CudaSpec),
    Rustc(&'a RustcSpec),
}

fn bad<T>(message: impl Into<String>) -> Result<T, VgaError> {
    Err(VgaError::InvalidTask(message.into()))
}

impl TaskSpec {
    /// Checks everything that can be checked without a worker and returns the task as it
    /// runs. A task that fails here was never accepted and changed nothing. The checks run in
    /// a fixed order, so a spec with several faults is refused for the first one.
    pub fn parse(&self) -> Result<Task, VgaError> {
        let segment = self.segment()?;
        let run = self.agent_run()?;
        if let Some(e) = &self.environment {
            if self.kind != TaskKind::Exec {
                return bad("only an exec task has an \"environment\"");
            }
            e.validate()?;
        }
        let head = self.head(segment, run)?;
        let mut env = BTreeMap::new();
        for (k, v) in &self.env {
            let Some(v) = v.clear() else {
                return bad(format!(
                    "env {k:?}: a sealed value is the master's own; send the value itself"
                ));
            };
            env.insert(k.clone(), v.to_owned());
        }
        if self
            .cmd
            .iter()
            .chain(env.values())
            .any(|s| s.contains('\0'))
        {
            return bad("command arguments and env values must not contain NUL");
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return bad(format!("env name {k:?} is not valid"));
            }
        }
        let deadline = self.deadline();
        if deadline.is_zero() || deadline > limits::MAX_DEADLINE {
            return bad(format!(
                "\"deadline_s\" must be 1 to {}",
                limits::MAX_DEADLINE.as_secs()
            ));
        }
        if let Some(n) = self.max_attempts {
            if n == 0 || n > limits::MAX_ATTEMPTS {
                return bad(format!(
                    "\"max_attempts\" must be 1 to {}",
                    limits::MAX_ATTEMPTS
                ));
            }
        }
        if self.files.len() > limits::MAX_INPUT_FILES {
            return bad(format!("at most {} input files", limits::MAX_INPUT_FILES));
        }
        let files = self
            .files
            .iter()
            .map(TaskFile::parse)
            .collect::<Result<Vec<_>, _>>()?;
        for c in &self.needs.capabilities {
            if c.is_empty() || c.len() > limits::MAX_CAPABILITY_LEN {
                return bad(format!(
                    "capability {c:?} must be 1 to {} characters",
                    limits::MAX_CAPABILITY_LEN
                ));
            }
        }
        if let Some(w) = self.wait_for_worker_s {
            if w > limits::NO_WORKER_WAIT.as_secs() {
                return bad(format!(
                    "\"wait_for_worker_s\" must be 0 to {}",
                    limits::NO_WORKER_WAIT.as_secs()
                ));
            }
        }
        let needs = self.checked_needs()?;
        if let Head::Cuda(c) = &head {
            let inputs = files.iter().map(TaskFile::path).collect();
            c.validate(&inputs)?;
        }
        let (env, stdin) = (Env::new(env), self.stdin.clone());
        let work = match head {
            Head::Exec(argv) => Work::Exec(ExecTask {
                argv,
                env,
                stdin,
                files,
                environment: self.environment.clone(),
            }),
            Head::Wasm(module) => Work::Wasm(WasmTask {
                module,
                args: self.cmd.clone(),
                env,
                stdin,
                files,
            }),
            Head::Compile(segment) => Work::Compile(CompileTask {
                segment: segment.clone(),
                env,
                files,
            }),
            Head::Agent(run) => Work::Agent(run.clone()),
            Head::Cuda(cuda) => Work::Cuda(CudaTask {
                cuda: cuda.clone(),
                env,
                files,
            }),
            Head::Rustc(rustc) => Work::Rustc(RustcTask {
                rustc: rustc.clone(),
                env,
            }),
        };
        Ok(Task {
            id: self.task_id.clone(),
            work,
            bounds: Bounds {
                deadline,
                limits: self.limits,
            },
            needs,
            retryable: self.retryable != Some(false),
            max_attempts: self.max_attempts(),
            wait_for_worker: self.wait_for_worker(),
        })
    }

    /// A compile task's segment, checked; `None` for the other kinds, which may not have one.
    fn segment(&self) -> Result<Option<&CompileSpec>, VgaError> {
        match (self.kind, &self.compile) {
            (TaskKind::Compile, None) => bad(NO_SEGMENT),
            (TaskKind::Compile, Some(c)) => {
                c.validate()?;
                if self.module.is_some() || !self.cmd.is_empty() || !self.stdin.is_empty() {
                    return bad(
                        "a compile task has no \"cmd\", \"module\" or \"stdin\": the segment says it all",
                    );
                }
                let tag = compiler_tag(&c.compiler);
                if !self.needs.capabilities.contains(&tag) {
                    return bad(format!(
                        "a compile task must need its compiler's capability {tag:?}"
                    ));
                }
                Ok(Some(c))
            }
            (_, Some(_)) => {
                bad("only a compile task (\"kind\":\"compile\") has a \"compile\" segment")
            }
            (_, None) => Ok(None),
        }
    }

    /// The task's needs, checked, with what its kind implies: a cuda task needs NVRTC
    /// ([`crate::gpu::NVRTC_CAPABILITY`]) and, unless it only compiles, one GPU when it named
    /// no count. Only exec and cuda tasks lease GPUs.
    fn checked_needs(&self) -> Result<Needs, VgaError> {
        let mut needs = self.needs.clone();
        if let Some(g) = &needs.gpus {
            if !matches!(self.kind, TaskKind::Exec | TaskKind::Cuda) {
                return bad("only exec and cuda tasks lease GPUs (\"needs.gpus\")");
            }
            g.validate()?;
        }
        if let (TaskKind::Cuda, Some(c)) = (self.kind, &self.cuda) {
            let tag = crate::gpu::NVRTC_CAPABILITY.to_owned();
            if !needs.capabilities.contains(&tag) {
                needs.capabilities.push(tag);
            }
            if !c.compile_only && needs.gpus.is_none() {
                needs.gpus = Some(crate::gpu::GpuNeeds::count(1));
            }
        }
        Ok(needs)
    }

    /// An agent task's run, checked; `None` for the other kinds, which may not have one.
    fn agent_run(&self) -> Result<Option<&AgentRun>, VgaError> {
        match (self.kind, &self.agent) {
            (TaskKind::Agent, None) => bad(NO_AGENT_RUN),
            (TaskKind::Agent, Some(a)) => {
                a.validate()?;
                if self.module.is_some() || !self.cmd.is_empty() {
                    return bad("an agent task has no \"cmd\" or \"module\"");
                }
                Ok(Some(a))
            }
            (_, Some(_)) => bad("only an agent task (\"kind\":\"agent\") has an \"agent\" run"),
            (_, None) => Ok(None),
        }
    }

    /// What only this kind has: the program, the module, the segment or the run.
    fn head<'a>(
        &'a self,
        segment: Option<&'a CompileSpec>,
        run: Option<&'a AgentRun>,
    ) -> Result<Head<'a>, VgaError> {
        if self.rustc.is_some() != (self.kind == TaskKind::Rustc) {
            return bad(if self.rustc.is_some() {
                "only a rustc task (\"kind\":\"rustc\") has a \"rustc\" compile"
            } else {
                NO_RUSTC
            });
        }
        if let (TaskKind::Rustc, Some(r)) = (self.kind, &self.rustc) {
            if self.module.is_some()
                || !self.cmd.is_empty()
                || !self.stdin.is_empty()
                || !self.files.is_empty()
            {
                return bad(
                    "a rustc task has no \"cmd\", \"module\", \"stdin\" or \"files\": its compile says it all",
                );
            }
            r.validate()?;
            let tag = compiler_tag(&r.compiler);
            if !self.needs.capabilities.contains(&tag) {
                return bad(format!(
                    "a rustc task must need its compiler's capability {tag:?}"
                ));
            }
            return Ok(Head::Rustc(r));
        }
        if self.cuda.is_some() != (self.kind == TaskKind::Cuda) {
            return bad(if self.cuda.is_some() {
                "only a cuda task (\"kind\":\"cuda\") has a \"cuda\" kernel"
            } else {
                NO_CUDA
            });
        }
        match (self.kind, &self.module) {
            (TaskKind::Cuda, Some(_)) => {
                bad("a cuda task has no \"module\": its source is in \"cuda\"")
            }
            (TaskKind::Cuda, None) if !self.cmd.is_empty() || !self.stdin.is_empty() => {
                bad("a cuda task has no \"cmd\" or \"stdin\": the kernel says it all")
            }
            (TaskKind::Cuda, None) => self
                .cuda
                .as_ref()
                .map(Head::Cuda)
                .map_or_else(|| bad(NO_CUDA), Ok),
            // `segment` and `agent_run` refused these kinds without their part already.
            (TaskKind::Compile, _) => segment
                .map(Head::Compile)
                .map_or_else(|| bad(NO_SEGMENT), Ok),
            (TaskKind::Agent, _) => run.map(Head::Agent).map_or_else(|| bad(NO_AGENT_RUN), Ok),
            (TaskKind::Exec, Some(_)) => {
                bad("an exec task must not name a \"module\" (use \"kind\":\"wasm\")")
            }
            (TaskKind::Exec, None) => Argv::new(self.cmd.clone()).map(Head::Exec),
            (TaskKind::Wasm, None) => bad("a wasm task must name its \"module\": \"sha256:<hex>\""),
            (TaskKind::Wasm, Some(m)) => ModuleRef::parse(m).map(Head::Wasm),
            (TaskKind::Rustc, _) => bad(NO_RUSTC),
        }
    }
}

impl Work {
    /// The kind on the wire.
    pub fn kind(&self) -> TaskKind {
        match self {
            Work::Exec(_) => TaskKind::Exec,
            Work::Wasm(_) => TaskKind::Wasm,
            Work::Compile(_) => TaskKind::Compile,
            Work::Agent(_) => TaskKind::Agent,
            Work::Cuda(_) => TaskKind::Cuda,
            Work::Rustc(_) => TaskKind::Rustc,
        }
    }

    /// The environment of the kinds whose processes get one (all but agent runs), to add to
    /// (for example the names that tell a task who runs it).
    pub fn env_mut(&mut self) -> Option<&mut Env> {
        match self {
            Work::Exec(t) => Some(&mut t.env),
            Work::Wasm(t) => Some(&mut t.env),
            Work::Compile(t) => Some(&mut t.env),
            Work::Cuda(t) => Some(&mut t.env),
            Work::Rustc(t) => Some(&mut t.env),
            Work::Agent(_) => None,
        }
    }
}

impl Argv {
    /// Checks that `argv` names a program and that no part holds a NUL.
    pub fn new(argv: Vec<String>) -> Result<Argv, VgaError> {
        if argv.first().is_none_or(|p| p.is_empty()) {
            return bad("\"cmd\" must name a program: [\"prog\", \"arg\", ...]");
        }
        if argv.iter().any(|a| a.contains('\0')) {
            return bad("command arguments and env values must not contain NUL");
        }
        Ok(Argv(argv))
    }

    /// The program: a name looked up on `PATH`, or a path.
    pub fn program(&self) -> &str {
        self.0.first().map_or("", String::as_str)
    }

    /// The arguments after the program.
    pub fn args(&self) -> &[String] {
        self.0.get(1..).unwrap_or_default()
    }

    /// The program and its arguments.
    pub fn as_slice(&self) -> &[String] {
        &self.0
    }
}

impl TaskFile {
    /// Checks the path and decodes the contents of `f`.
    pub fn parse(f: &InputFile) -> Result<TaskFile, VgaError> {
        check_relative_path(&f.path)?;
        Ok(TaskFile {
            bytes: f.contents()?,
            path: f.path.clone(),
            mode: f.mode,
        })
    }

    /// Relative to the task directory: no leading `/`, no `..`, `.` or empty components.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// The file's contents.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// Unix mode bits, when the submitter gave them.
    pub fn mode(&self) -> Option<u32> {
        self.mode
    }
}

impl fmt::Debug for TaskFile {
    /// The path, size and mode: the bytes may be a megabyte.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TaskFile")
            .field("path", &self.path)
            .field("bytes", &self.bytes.len())
            .field("mode", &self.mode)
            .finish()
    }
}

#[cfg(test)]
#[path = "task_tests.rs"]
mod tests;
