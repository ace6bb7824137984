//! What one attempt runs, whatever its kind, in one shape: the assignment's spec parsed into a
//! [`Task`] (one that does not parse ends as an error outcome, never a crash), told who runs
//! it, then [`Worker::run_work`] matches on its [`Work`] and hands each kind's own typed part
//! to that kind's runner: the native sandbox, the wasm runtime, the compiler or the agent. Each
//! ends as a [`Run`] that owns the directory its large artifacts still sit in.

use std::borrow::Cow;
use std::path::Path;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use vgas_shared::wire::{Bounds, ExecTask, Task, TaskOutcome, TaskSpec, Work};
use vgas_shared::{TaskId, WorkerId};

use super::Worker;
use crate::compile::{CompileRun, Compiler};
use crate::env::EnvPath;
use crate::sandbox::{self, Job, KeptDir, OutputChunk};
use crate::wasm::{Artifact, TaskDir, WasmRun};

/// The environment names that tell a task who runs it; they override the task's own values.
const TASK_ID_VAR: &str = "VGAS_TASK_ID";
const ATTEMPT_VAR: &str = "VGAS_ATTEMPT";
const WORKER_ID_VAR: &str = "VGAS_WORKER_ID";
/// The root of an exec task's prepared environment.
const ENV_ROOT_VAR: &str = "VGAS_ENV_ROOT";
/// The devices a task that leased GPUs may use (their UUIDs), over the task's own value.
const CUDA_VISIBLE_DEVICES: &str = "CUDA_VISIBLE_DEVICES";

/// How one attempt's work ended: its outcome, the files it hands back, and the directory the
/// large ones still sit in.
#[derive(Debug)]
pub(super) struct Run {
    pub(super) outcome: TaskOutcome,
    pub(super) artifacts: Vec<Artifact>,
    /// Kept until the large artifacts are uploaded; dropping it removes it.
    pub(super) workdir: Option<Workdir>,
    /// How long the task's own process ran, where one did (compiles): sent with the
    /// artifacts, so a follower can tell the work from the path around it.
    pub(super) ran: Option<std::time::Duration>,
}

/// A run's directory, as its kind's runner kept it; removed when dropped.
#[derive(Debug)]
pub(super) enum Workdir {
    /// An agent's workspace.
    Temp(tempfile::TempDir),
    /// A wasm task's directory (kept warm for the next task if it is left empty).
    Wasm(TaskDir),
    /// A native task's directory, once every process of the task is dead.
    Kept(KeptDir),
}

impl Workdir {
    pub(super) fn path(&self) -> &Path {
        match self {
            Workdir::Temp(d) => d.path(),
            Workdir::Wasm(d) => d.path(),
            Workdir::Kept(d) => d.path(),
        }
    }
}

impl Run {
    /// A run that ended before anything started, nothing to hand back.
    fn ended(outcome: TaskOutcome) -> Run {
        Run {
            outcome,
            artifacts: Vec::new(),
            workdir: None,
            ran: None,
        }
    }

    fn error(message: String) -> Run {
        Run::ended(TaskOutcome::Error { message })
    }
}

impl From<WasmRun> for Run {
    fn from(r: WasmRun) -> Run {
        Run {
            outcome: r.outcome,
            artifacts: r.artifacts,
            workdir: r.dir.map(Workdir::Wasm),
            ran: None,
        }
    }
}

impl From<CompileRun> for Run {
    fn from(r: CompileRun) -> Run {
        Run {
            outcome: r.outcome,
            artifacts: r.artifacts,
            workdir: r.dir.map(Workdir::Kept),
            ran: r.ran,
        }
    }
}

/// The assignment's spec as the task it runs. The master parsed it before accepting it; the
/// worker parses it again rather than trust the wire, and one that does not parse here (a
/// master of another version, a damaged record) is a run that ended with the reason.
pub(super) fn task_of(spec: &TaskSpec) -> Result<Task, Box<Run>> {
    spec.parse()
        .map_err(|e| Box::new(Run::error(e.to_string())))
}

/// Tells the task who runs it: `VGAS_TASK_ID`, `VGAS_ATTEMPT` and `VGAS_WORKER_ID`, over the
/// task's own values, in the environment of every kind that has one.
pub(super) fn identify(work: &mut Work, task: &TaskId, attempt: u32, worker: &WorkerId) {
    if let Some(env) = work.env_mut() {
        env.insert(TASK_ID_VAR.into(), task.to_string());
        env.insert(ATTEMPT_VAR.into(), attempt.to_string());
        env.insert(WORKER_ID_VAR.into(), worker.to_string());
    }
}

/// `exec` in its prepared environment `env`: the environment's `bin` first on the task's
/// `PATH` (the task's own, else the worker's, else the sandbox's safe default) and
/// `VGAS_ENV_ROOT` naming its root.
fn in_environment(exec: &ExecTask, env: &EnvPath) -> ExecTask {
    let mut exec = exec.clone();
    let base = exec
        .env
        .get("PATH")
        .cloned()
        .or_else(|| std::env::var("PATH").ok().filter(|p| !p.is_empty()))
        .unwrap_or_else(|| sandbox::SAFE_DEFAULT_PATH.to_owned());
    exec.env
        .insert("PATH".into(), format!("{}:{base}", env.bin.display()));
    exec.env
        .insert(ENV_ROOT_VAR.into(), env.root.display().to_string());
    exec
}

impl Worker {
    /// Runs `work` under `bounds` in sandbox slot `slot` with the GPUs `gpus` leased to it,
    /// streaming its output into `out`: each kind's runner gets its own typed part. Never
    /// panics; every failure is an outcome.
    pub(super) async fn run_work(
        &self,
        work: &Work,
        bounds: &Bounds,
        gpus: &[String],
        slot: usize,
        out: Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> Run {
        match work {
            Work::Exec(exec) => {
                let mut exec = match self.prepare_environment(exec).await {
                    Ok(exec) => exec,
                    Err(message) => return Run::error(message),
                };
                let mut access = None;
                if !gpus.is_empty() {
                    match self.gpus.lease(gpus) {
                        Ok(lease) => {
                            exec.to_mut()
                                .env
                                .insert(CUDA_VISIBLE_DEVICES.into(), lease.visible);
                            access = Some(lease.access);
                        }
                        Err(message) => return Run::error(message),
                    }
                }
                let job = Job {
                    task: exec.as_ref(),
                    bounds,
                };
                let outcome = sandbox::run_exec(
                    &self.cfg.sandbox,
                    &self.isolation,
                    slot,
                    job,
                    access.as_ref(),
                    out,
                    cancel,
                );
                Run::ended(outcome.await)
            }
            Work::Cuda(cuda) => {
                let runner = crate::gpu::task::CudaRunner {
                    sandbox: &self.cfg.sandbox,
                    isolation: &self.isolation,
                    gpus: &self.gpus,
                    cache: self.ptx_cache.as_ref(),
                };
                let job = Job { task: cuda, bounds };
                runner.run(slot, job, gpus, out, cancel).await.into()
            }
            Work::Wasm(wasm) => {
                let run = self.wasm.run(
                    &self.cfg.sandbox.work_dir,
                    &self.cfg.sandbox.ceilings,
                    Job { task: wasm, bounds },
                    &self.modules,
                    out,
                    cancel,
                );
                run.await.into()
            }
            Work::Compile(compile) => {
                let compiler = Compiler {
                    sandbox: &self.cfg.sandbox,
                    isolation: &self.isolation,
                    envs: &self.envs,
                    sources: &self.sources,
                    offered: Some(&self.offered),
                };
                let job = Job {
                    task: compile,
                    bounds,
                };
                compiler.run(slot, job, out, cancel).await.into()
            }
            Work::Rustc(rustc) => {
                let runner = crate::rustc::RustcRunner {
                    sandbox: &self.cfg.sandbox,
                    isolation: &self.isolation,
                    toolchains: &self.rust,
                    sources: &self.sources,
                };
                let job = Job {
                    task: rustc,
                    bounds,
                };
                runner.run(slot, job, out, cancel).await.into()
            }
            Work::Agent(agent) => {
                let env = crate::agent::AgentEnv {
                    client: &self.client,
                    js: &self.js,
                    subjects: &self.cfg.conn.subjects,
                    sandbox: &self.cfg.sandbox,
                    isolation: &self.isolation,
                    slot,
                    worker_id: self.cfg.id.to_string(),
                };
                let (outcome, artifacts, workspace) =
                    crate::agent::run_task(&env, agent, out, cancel).await;
                Run {
                    outcome,
                    artifacts,
                    workdir: workspace.map(Workdir::Temp),
                    ran: None,
                }
            }
        }
    }

    /// An exec task's `environment`, prepared (a conda create may take minutes, so on a
    /// blocking thread), and the task in it ([`in_environment`]); the task as it is when it
    /// names none. `Err` is the reason, in words, for the task's result.
    async fn prepare_environment<'a>(
        &self,
        exec: &'a ExecTask,
    ) -> Result<Cow<'a, ExecTask>, String> {
        let Some(want) = exec.environment.clone() else {
            return Ok(Cow::Borrowed(exec));
        };
        let envs = self.envs.clone();
        let env = tokio::task::spawn_blocking(move || envs.setup_sandboxed_environment(&want))
            .await
            .map_err(|e| format!("environment set-up stopped: {e}"))?
            .map_err(|e| e.to_string())?;
        Ok(Cow::Owned(in_environment(exec, &env)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn spec(json: &str) -> TaskSpec {
        serde_json::from_str(json).expect("the JSON decodes")
    }

    #[test]
    fn a_spec_that_does_not_parse_on_the_worker_is_an_error_result() {
        for (json, want) in [
            (r#"{"cmd":[]}"#, "must name a program"),
            (
                r#"{"kind":"wasm","module":"sha256:AB"}"#,
                "64 lowercase hex",
            ),
            (r#"{"kind":"compile"}"#, "needs its \"compile\" segment"),
            (
                r#"{"cmd":["ls"],"files":[{"path":"../x","text":""}]}"#,
                "must be relative",
            ),
        ] {
            let Err(run) = task_of(&spec(json)) else {
                panic!("{json} parsed")
            };
            match &run.outcome {
                TaskOutcome::Error { message } => {
                    assert!(message.starts_with("invalid task: "), "{message}");
                    assert!(message.contains(want), "{json}: {message}");
                }
                other => panic!("{json}: {other:?}"),
            }
            assert!(run.artifacts.is_empty() && run.workdir.is_none(), "{json}");
        }
        assert!(task_of(&spec(r#"{"cmd":["ls"]}"#)).is_ok());
    }

    #[test]
    fn who_runs_the_task_overrides_its_own_env() {
        let module = format!("sha256:{}", "ab".repeat(32));
        let (task, worker) = (TaskId::parse("t1").unwrap(), WorkerId::parse("w1").unwrap());
        for json in [
            r#"{"cmd":["env"],"env":{"VGAS_TASK_ID":"mine","KEEP":"1"}}"#.to_owned(),
            format!(
                r#"{{"kind":"wasm","module":"{module}","env":{{"VGAS_ATTEMPT":"9","KEEP":"1"}}}}"#
            ),
        ] {
            let mut work = task_of(&spec(&json)).expect("parses").work;
            identify(&mut work, &task, 2, &worker);
            let env = match &work {
                Work::Exec(e) => &e.env,
                Work::Wasm(w) => &w.env,
                other => panic!("{other:?}"),
            };
            let get = |k: &str| env.get(k).map(String::as_str);
            assert_eq!(get(TASK_ID_VAR), Some("t1"), "{json}");
            assert_eq!(get(ATTEMPT_VAR), Some("2"), "{json}");
            assert_eq!(get(WORKER_ID_VAR), Some("w1"), "{json}");
            assert_eq!(get("KEEP"), Some("1"), "{json}");
        }
    }

    #[test]
    fn a_prepared_environment_goes_first_on_path_and_names_its_root() {
        let Work::Exec(exec) = task_of(&spec(r#"{"cmd":["cc"],"env":{"PATH":"/mine"}}"#))
            .expect("parses")
            .work
        else {
            panic!("not an exec task")
        };
        let env = EnvPath {
            root: PathBuf::from("/w/envs/k"),
            bin: PathBuf::from("/w/envs/k/bin"),
            identity: None,
        };
        let inside = in_environment(&exec, &env);
        let get = |k: &str| inside.env.get(k).map(String::as_str);
        assert_eq!(get("PATH"), Some("/w/envs/k/bin:/mine"));
        assert_eq!(get(ENV_ROOT_VAR), Some("/w/envs/k"));
        assert_eq!(inside.argv, exec.argv);
    }
}
