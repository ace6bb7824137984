//! `vgas submit` and `vgas watch`: a task built from the command line, submitted, its output
//! streamed as it comes and its files saved under [`ARTIFACT_DIR`]; the exit code is the
//! task's own (124 timeout, 128+N signal, 75 busy).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use base64::Engine as _;
use vgas_shared::gpu::GpuNeeds;
use vgas_shared::wire::{EnvValue, InputFile, Needs, TaskOutcome, TaskSpec};
use vgas_shared::{ErrorCode, TaskId};

use crate::api::{refused_with, Following, Step, Swarm, REQUEST_TIMEOUT};

/// Where `vgas submit` and `vgas watch` save artifacts, under the current directory: a
/// directory of its own, so a task can never overwrite the user's files.
pub const ARTIFACT_DIR: &str = "vgas-artifacts";

/// The exit code of a submit the master refused as busy (`EX_TEMPFAIL`: try again later).
pub const EXIT_BUSY: i32 = 75;

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Wall-clock deadline in seconds.
    #[arg(long)]
    pub deadline: Option<u64>,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Secret environment variable (repeatable): its value is taken from this process's own
    /// environment (so it is not on the command line), or given as NAME=VALUE. The master
    /// keeps it only sealed and no log or event shows it.
    #[arg(long = "secret-env", value_name = "NAME[=VALUE]")]
    pub secret_env: Vec<String>,
    /// Send this process's standard input to the command.
    #[arg(long)]
    pub stdin: bool,
    /// Copy a local file into the task directory, as LOCAL or LOCAL:REMOTE (repeatable).
    #[arg(long = "file", value_name = "LOCAL[:REMOTE]")]
    pub files: Vec<String>,
    /// Capability the worker must have (repeatable).
    #[arg(long = "needs", value_name = "CAP")]
    pub needs: Vec<String>,
    /// Do not run the task again if its worker is lost.
    #[arg(long)]
    pub no_retry: bool,
    /// Task id to use (default: a random one).
    #[arg(long)]
    pub id: Option<TaskId>,
    /// Print the task id and return without following the output.
    #[arg(long)]
    pub detach: bool,
    /// Run this WASI module (uploaded to the modules bucket if missing) instead of a
    /// command; what follows `--` is its argv.
    #[arg(long, value_name = "MODULE.wasm")]
    pub wasm: Option<PathBuf>,
    /// Run the command with this toolchain first on PATH (gcc, g++, clang, clang++, cc, c++,
    /// rustc), optionally `NAME@VERSION` (`gcc@>=12`); the worker must have it.
    #[arg(long, value_name = "NAME[@VERSION]", conflicts_with = "conda")]
    pub toolchain: Option<String>,
    /// Run the command in a conda environment of these packages, made (once) by the worker's
    /// micromamba or conda.
    #[arg(long, value_name = "PACKAGE")]
    pub conda: Vec<String>,
    /// Lease this many whole GPUs for the task: an exec task sees only them
    /// (`CUDA_VISIBLE_DEVICES`, `/dev/nvidia*`).
    #[arg(long, value_name = "N")]
    pub gpus: Option<u32>,
    #[command(flatten)]
    pub cuda: super::cuda::CudaArgs,
    /// Submit the task specs in this file, one JSON object per line (`-`: stdin), in
    /// batches; prints their ids and does not wait for them.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "wasm", "cuda", "cmd", "detach", "id", "stdin", "deadline", "env", "secret_env", "files", "needs",
        "no_retry", "toolchain", "conda", "gpus",
    ])]
    pub batch: Option<PathBuf>,
    /// The command and its arguments (with --wasm: the module's argv).
    #[arg(required_unless_present_any = ["wasm", "cuda", "batch"], last = true)]
    pub cmd: Vec<String>,
}

/// The `EnvSpec` of `--toolchain` or `--conda`.
fn environment(args: &SubmitArgs) -> Option<vgas_shared::farm::EnvSpec> {
    if !args.conda.is_empty() {
        return Some(vgas_shared::farm::EnvSpec {
            toolchain: "conda".into(),
            packages: args.conda.clone(),
            ..Default::default()
        });
    }
    let t = args.toolchain.as_deref()?;
    let (name, version) = match t.split_once('@') {
        Some((n, v)) => (n, Some(v.to_owned())),
        None => (t, None),
    };
    Some(vgas_shared::farm::EnvSpec {
        toolchain: name.to_owned(),
        version,
        ..Default::default()
    })
}

pub fn build_spec(args: &SubmitArgs, id: TaskId) -> Result<TaskSpec> {
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?}: expected NAME=VALUE"))?;
        env.insert(k.to_owned(), EnvValue::from(v));
    }
    for name in &args.secret_env {
        let (k, v) = match name.split_once('=') {
            Some((k, v)) => (k.to_owned(), v.to_owned()),
            None => {
                let v = std::env::var(name).with_context(|| {
                    format!("--secret-env {name}: not set in this environment (or give NAME=VALUE)")
                })?;
                (name.clone(), v)
            }
        };
        env.insert(k, EnvValue::secret(v));
    }
    let mut files = Vec::new();
    for f in &args.files {
        let (local, remote) = match f.split_once(':') {
            Some((l, r)) => (PathBuf::from(l), r.to_owned()),
            None => {
                let name = PathBuf::from(f)
                    .file_name()
                    .context("--file needs a file name")?
                    .to_string_lossy()
                    .into_owned();
                (PathBuf::from(f), name)
            }
        };
        let bytes = std::fs::read(&local).with_context(|| format!("read {}", local.display()))?;
        files.push(InputFile {
            path: remote,
            base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
            ..Default::default()
        });
    }
    let mut stdin = String::new();
    if args.stdin {
        std::io::stdin()
            .read_to_string(&mut stdin)
            .context("read standard input")?;
    }
    let spec = TaskSpec {
        task_id: Some(id),
        cmd: args.cmd.clone(),
        env,
        stdin,
        files,
        deadline_s: args.deadline,
        needs: Needs {
            capabilities: args.needs.clone(),
            gpus: args.gpus.map(GpuNeeds::count),
        },
        retryable: args.no_retry.then_some(false),
        environment: environment(args),
        ..Default::default()
    };
    let spec = super::wasm::wasm_spec(spec, args.wasm.as_deref())?;
    let spec = super::cuda::cuda_spec(spec, &args.cuda)?;
    spec.validate()?;
    Ok(spec)
}

/// Submits the task `args` describe and follows it (or prints its id with `--detach`).
pub async fn submit(swarm: &Swarm, args: SubmitArgs) -> Result<i32> {
    let id = args.id.clone().unwrap_or_else(TaskId::random);
    let spec = build_spec(&args, id)?;
    if let (Some(path), Some(name)) = (&args.wasm, &spec.module) {
        super::wasm::upload_module(swarm, path, name).await?;
    }
    let submitted = match swarm.submit(spec, REQUEST_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => match refused_with(&e, ErrorCode::Busy) {
            Some(w) => {
                eprintln!("vgas: {}", w.message);
                return Ok(EXIT_BUSY);
            }
            None => return Err(e),
        },
    };
    if args.detach {
        println!("{}", submitted.reply.task_id);
        return Ok(0);
    }
    print_to_end(swarm, submitted.following).await
}

/// `vgas watch`: follows a running task, or prints how a finished one ended.
pub async fn watch(swarm: &Swarm, id: &TaskId) -> Result<i32> {
    print_to_end(swarm, swarm.follow(id).await?).await
}

/// Prints a task's output as it streams, saves its artifacts under [`ARTIFACT_DIR`], and
/// returns its exit code once it has finished.
pub async fn print_to_end(swarm: &Swarm, mut following: Following) -> Result<i32> {
    let dir = Path::new(ARTIFACT_DIR);
    loop {
        match following.next().await? {
            Step::Stdout(data) => {
                let mut out = std::io::stdout().lock();
                out.write_all(data.as_bytes())?;
                out.flush()?;
            }
            Step::Stderr(data) => {
                let mut err = std::io::stderr().lock();
                err.write_all(data.as_bytes())?;
                err.flush()?;
            }
            Step::Retrying { attempt, reason } => {
                eprintln!("vgas: retrying as attempt {attempt}: {reason}");
            }
            Step::Artifact(art) => {
                let to = swarm.save_artifact(dir, &art).await?;
                eprintln!("vgas: wrote {}", to.display());
            }
            Step::Started { .. } => {}
            Step::Finished { outcome, .. } => return Ok(report(following.id(), &outcome)),
        }
    }
}

fn report(id: &TaskId, outcome: &TaskOutcome) -> i32 {
    if !outcome.succeeded() {
        eprintln!("vgas: task {id} {}", outcome.describe());
    }
    outcome.exit_code()
}
