//! Runs one wasm task: a fresh directory with the input files, a WASI context that preopens
//! only that directory (as `.`) with the task's args, env and stdin and no network, the
//! program run on a blocking thread (`start`), then the outcome in plain words and the files
//! the module wrote as artifacts (collected by `artifacts`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use vgas_shared::wire::{TaskFile, TaskOutcome, WasmTask};
use wasmtime_wasi::p2::pipe::MemoryInputPipe;
use wasmtime_wasi::{FsPerms, WasiCtxBuilder};

use super::artifacts::{collect_artifacts, Artifact};
use super::dirs::{DirPool, TaskDir};
use super::guard::Guard;
use super::start::{missing_entry, run_program};
use super::stdio::{ChunkOut, Which};
use super::{ModuleSource, WasmRuntime};
use crate::sandbox::{Job, Limits, OutputChunk};

/// How long past its deadline (or a cancel) a module stuck inside a host call (a long WASI
/// sleep) is waited for; after that the task is reported and the thread left to end at its
/// next epoch check.
const STUCK_GRACE: Duration = Duration::from_secs(2);

/// How a wasm task ended and what it left.
#[derive(Debug)]
pub struct WasmRun {
    pub outcome: TaskOutcome,
    pub artifacts: Vec<Artifact>,
    /// The task directory, kept while large artifacts in it are uploaded; removed (or kept
    /// warm, if empty) on drop.
    pub dir: Option<TaskDir>,
}

impl WasmRuntime {
    /// Runs a wasm task in a fresh directory under `work_dir`, streaming output into `out`.
    /// Never panics; every failure is a [`TaskOutcome`].
    pub async fn run(
        &self,
        work_dir: &Path,
        ceilings: &Limits,
        job: Job<'_, WasmTask>,
        source: &impl ModuleSource,
        out: Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> WasmRun {
        let fail = |message: String| WasmRun {
            outcome: TaskOutcome::Error { message },
            artifacts: Vec::new(),
            dir: None,
        };
        let (task, bounds) = (job.task, job.bounds);
        let name = &task.module;
        let module = tokio::select! {
            loaded = self.load(name, source) => match loaded {
                Ok((m, from)) => {
                    tracing::debug!(?from, "module loaded");
                    self.metrics.wasm_loaded(from);
                    m
                }
                Err(message) => return fail(message),
            },
            _ = cancel.cancelled() => return WasmRun { outcome: TaskOutcome::Cancelled, artifacts: Vec::new(), dir: None },
        };
        if let Some(why) = missing_entry(&self.engine, &module) {
            return fail(format!("{name} {why}"));
        }
        let dir = match prepare_dir(&self.dirs, work_dir, &task.files) {
            Ok(d) => d,
            Err(e) => return fail(format!("sandbox setup failed: {e}")),
        };
        let limits = ceilings.for_task(&bounds.limits);
        let guard = Guard::new(
            limits,
            bounds.deadline,
            dir.path().to_path_buf(),
            cancel.clone(),
        );
        let argv: Vec<String> = if task.args.is_empty() {
            vec![name.to_string()]
        } else {
            task.args.clone()
        };
        let env: Vec<(String, String)> = task.env.clone().into_inner().into_iter().collect();
        let mut wasi = WasiCtxBuilder::new();
        // No network: no socket address passes the context's default check either, but the
        // interfaces are switched off outright so that stays true whatever that default.
        wasi.allow_tcp(false)
            .allow_udp(false)
            .allow_ip_name_lookup(false)
            .args(&argv)
            .envs(&env)
            .stdin(MemoryInputPipe::new(task.stdin.clone()))
            .stdout(ChunkOut {
                which: Which::Stdout,
                tx: out.clone(),
                guard: guard.clone(),
            })
            .stderr(ChunkOut {
                which: Which::Stderr,
                tx: out,
                guard: guard.clone(),
            });
        if let Err(e) = wasi.preopened_dir(dir.path(), ".", FsPerms::ReadWrite) {
            return fail(format!(
                "sandbox setup failed: preopen the task directory: {e}"
            ));
        }
        let (engine, linkers) = (self.engine.clone(), self.linkers.clone());
        let (hex, in_thread) = (name.hex().to_owned(), guard.clone());
        let mut handle = tokio::task::spawn_blocking(move || {
            run_program(&engine, &linkers, &hex, &module, wasi, &in_thread)
        });
        let stuck = async {
            tokio::select! {
                _ = tokio::time::sleep(bounds.deadline + STUCK_GRACE) => {}
                _ = async { cancel.cancelled().await; tokio::time::sleep(STUCK_GRACE).await } => {}
            }
        };
        let ran = tokio::select! {
            r = &mut handle => r,
            _ = stuck => {
                // The thread still holds the directory open; it is removed by the OS's
                // clean-up of the work dir, not here, to not pull files from under it.
                guard.hit(if cancel.is_cancelled() { super::guard::Stop::Cancelled } else { super::guard::Stop::Deadline });
                let outcome = guard.outcome().unwrap_or(TaskOutcome::Cancelled);
                dir.keep();
                return WasmRun { outcome, artifacts: Vec::new(), dir: None };
            }
        };
        let outcome = match ran {
            Ok(o) => o,
            Err(e) => TaskOutcome::Error {
                message: format!("the wasm run failed inside the worker: {e}"),
            },
        };
        let (outcome, artifacts) = collect_artifacts(dir.path(), &task.files, outcome);
        WasmRun {
            outcome,
            artifacts,
            dir: Some(dir),
        }
    }
}

/// An empty task directory under `work_dir` (a warm one when there is one) holding the
/// task's input files.
fn prepare_dir(
    pool: &Arc<DirPool>,
    work_dir: &Path,
    files: &[TaskFile],
) -> Result<TaskDir, String> {
    let dir = pool
        .take(work_dir)
        .map_err(|e| format!("create a task directory in {}: {e}", work_dir.display()))?;
    for f in files {
        let path = dir.path().join(f.path());
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| format!("{}: {e}", f.path()))?;
        }
        std::fs::write(&path, f.bytes()).map_err(|e| format!("{}: {e}", f.path()))?;
    }
    Ok(dir)
}
