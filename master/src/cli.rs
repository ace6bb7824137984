//! The `vgas` user CLI: `init`, `submit`, `status`, `watch`, `cancel`. It speaks MessagePack to
//! the master like any of our processes; everything it does can also be done with the `nats`
//! CLI in JSON (see docs/protocol.md).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use async_nats::Client;
use base64::Engine as _;
use clap::{Parser, Subcommand};
use futures::StreamExt;
use serde::de::DeserializeOwned;
use serde::Serialize;
use vgas_shared::codec::{decode_as, encode, Reply};
use vgas_shared::config::{CommonArgs, Resolved, Role};
use vgas_shared::wire::{
    InputFile, Needs, SubmitReply, SwarmPulse, TaskEvent, TaskOutcome, TaskQuery, TaskRecord,
    TaskSpec, TaskState,
};
use vgas_shared::{Encoding, ErrorCode, TaskId};

/// How long the CLI waits for the master to answer a request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// How often a follower asks for the task's record, in case it missed the final event.
const POLL_INTERVAL: Duration = Duration::from_secs(2);

#[derive(Debug, Parser)]
#[command(name = "vgas", version, about = "Run work on the vgas swarm")]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create the swarm's NATS users and the server's auth.conf (idempotent).
    Init,
    /// Run a command on the swarm, streaming its output; exits with its exit code.
    Submit(SubmitArgs),
    /// Show the swarm: live and abnormal workers, queue, in-flight tasks.
    Status {
        /// Print the raw SwarmPulse as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Follow a task's output and result.
    Watch { task_id: TaskId },
    /// Cancel a task.
    Cancel { task_id: TaskId },
    /// List the vgas nodes on the LAN (mDNS): mode, cluster, addresses, joined or not.
    Discover {
        /// Seconds to listen.
        #[arg(long, default_value_t = 3)]
        wait: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Provider API keys in the master's vault (run on the master's machine).
    #[command(subcommand)]
    Vault(crate::cli_vault::VaultCmd),
    /// Build C/C++ on the swarm: `vgas build -- make -j8`, `--compdb`, or `--plan`.
    Build(crate::build::cli::BuildArgs),
    /// AI agents: run an instruction through Architect, Programmer and Tester; knowledge
    /// base; stats.
    #[command(subcommand)]
    Agent(crate::cli_agent::AgentCmd),
    /// LLM usage by provider, model and day, with budgets and rates.
    Usage {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, clap::Args)]
pub struct SubmitArgs {
    /// Wall-clock deadline in seconds.
    #[arg(long)]
    pub deadline: Option<u64>,
    /// Environment variable for the command (repeatable).
    #[arg(long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
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
    /// The command and its arguments (with --wasm: the module's argv).
    #[arg(required_unless_present = "wasm", last = true)]
    pub cmd: Vec<String>,
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    let conn = cli.common.resolve(Role::Client)?;
    if let Cmd::Init = cli.cmd {
        let report = crate::auth::init(&conn.state_dir, &conn.subjects)?;
        for p in &report.created {
            println!("created {}", p.display());
        }
        for p in &report.kept {
            println!("kept    {}", p.display());
        }
        println!("wrote   {}", report.auth_conf.display());
        return Ok(0);
    }
    if let Cmd::Discover { wait, json } = cli.cmd {
        return crate::discovery::discover_cmd(&conn, Duration::from_secs(wait), json).await;
    }
    if let Cmd::Vault(cmd) = cli.cmd {
        return crate::cli_vault::run_vault(&conn, cmd);
    }
    let client = crate::connect::connect(&conn, "vgas-cli").await?;
    let code = match cli.cmd {
        Cmd::Init | Cmd::Discover { .. } | Cmd::Vault(_) => unreachable!("handled above"),
        Cmd::Usage { json } => crate::cli_vault::run_usage(&client, &conn, json).await?,
        Cmd::Submit(args) => submit(&client, &conn, args).await?,
        Cmd::Build(args) => crate::build::cli::run(&client, &conn, args).await?,
        Cmd::Agent(cmd) => crate::cli_agent::run(&client, &conn, cmd).await?,
        Cmd::Status { json } => {
            let pulse: SwarmPulse = request(
                &client,
                conn.subjects.status(),
                &BTreeMap::<String, String>::new(),
            )
            .await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&pulse)?);
            } else {
                print!("{}", render_status(&pulse));
                // Agents, when any has run (`vgas agent stats --json` for the figures).
                if let Ok(kv) = crate::agents::bucket(&client, &conn.subjects).await {
                    if let Ok(stats) = crate::agents::all_stats(&kv).await {
                        if !stats.is_empty() {
                            print!("agents:\n{}", crate::agents::render_stats(&stats));
                        }
                    }
                }
            }
            0
        }
        Cmd::Watch { task_id } => follow(&client, &conn, &task_id).await?,
        Cmd::Cancel { task_id } => {
            let _: serde_json::Value = request(
                &client,
                conn.subjects.task_cancel(),
                &TaskQuery {
                    task_id: task_id.clone(),
                },
            )
            .await?;
            println!("cancelling {task_id}");
            0
        }
    };
    client.flush().await.ok();
    Ok(code)
}

/// The CLI's answer to a refused request.
#[derive(Debug, thiserror::Error)]
#[error("the master refused: {0}")]
pub struct Refused(pub vgas_shared::error::WireError);

pub(crate) async fn request<Q: Serialize, A: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &Q,
) -> Result<A> {
    request_within(client, subject, body, REQUEST_TIMEOUT).await
}

/// A MessagePack request to the master with its own time limit; a refusal is [`Refused`].
pub(crate) async fn request_within<Q: Serialize, A: DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &Q,
    timeout: std::time::Duration,
) -> Result<A> {
    let bytes = encode(Encoding::MsgPack, body)?;
    let msg = tokio::time::timeout(timeout, client.request(subject.clone(), bytes.into()))
        .await
        .with_context(|| format!("no answer on {subject} within {timeout:?}"))?
        .with_context(|| format!("request on {subject} (is vgas-master running?)"))?;
    let reply: Reply<A> =
        decode_as(Encoding::MsgPack, &msg.payload).context("decode the master's reply")?;
    reply.into_result().map_err(|e| Refused(e).into())
}

/// The `EnvSpec` of `--toolchain` or `--conda`.
fn environment(args: &SubmitArgs) -> Option<vgas_shared::build::EnvSpec> {
    if !args.conda.is_empty() {
        return Some(vgas_shared::build::EnvSpec {
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
    Some(vgas_shared::build::EnvSpec {
        toolchain: name.to_owned(),
        version,
        ..Default::default()
    })
}

fn build_spec(args: &SubmitArgs, id: TaskId) -> Result<TaskSpec> {
    let mut env = BTreeMap::new();
    for kv in &args.env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--env {kv:?}: expected NAME=VALUE"))?;
        env.insert(k.to_owned(), v.to_owned());
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
        },
        retryable: args.no_retry.then_some(false),
        environment: environment(args),
        ..Default::default()
    };
    let spec = crate::cli_wasm::wasm_spec(spec, args.wasm.as_deref())?;
    spec.validate()?;
    Ok(spec)
}

async fn submit(client: &Client, conn: &Resolved, args: SubmitArgs) -> Result<i32> {
    let id = args.id.clone().unwrap_or_else(TaskId::random);
    let spec = build_spec(&args, id.clone())?;
    if let (Some(path), Some(name)) = (&args.wasm, &spec.module) {
        crate::cli_wasm::upload_if_missing(client, conn, path, name).await?;
    }
    // Subscribe before submitting so not one chunk of output is missed.
    let sub = client.subscribe(conn.subjects.task_events(&id)).await?;
    let reply: SubmitReply = match request(client, conn.subjects.submit(), &spec).await {
        Ok(r) => r,
        Err(e) => match e.downcast_ref::<Refused>() {
            Some(Refused(w)) if w.code == ErrorCode::Busy => {
                eprintln!("vgas: {}", w.message);
                return Ok(75);
            }
            _ => return Err(e),
        },
    };
    if args.detach {
        println!("{}", reply.task_id);
        return Ok(0);
    }
    follow_events(client, conn, &id, sub).await
}

async fn follow(client: &Client, conn: &Resolved, id: &TaskId) -> Result<i32> {
    let sub = client.subscribe(conn.subjects.task_events(id)).await?;
    follow_events(client, conn, id, sub).await
}

/// What a follower does with one event.
#[derive(Debug, Default)]
struct Follower {
    /// The newest attempt seen; output of older (lost) attempts is dropped.
    attempt: u32,
    /// Artifacts sent by reference, to fetch from the artifacts bucket: path, object, size.
    fetches: Vec<(String, String, u64)>,
}

impl Follower {
    /// Fetches the artifacts sent by reference since the last call.
    async fn fetch_artifacts(&mut self, client: &Client, conn: &Resolved) -> Result<()> {
        for (path, object, size) in std::mem::take(&mut self.fetches) {
            crate::cli_wasm::fetch_artifact(client, conn, &path, &object, size).await?;
        }
        Ok(())
    }

    /// Prints output, notes retries; returns the outcome once the task has finished.
    fn on_event(&mut self, payload: &[u8]) -> Result<Option<TaskOutcome>> {
        let Ok(ev) = decode_as::<TaskEvent>(Encoding::detect(payload), payload) else {
            return Ok(None);
        };
        match ev {
            TaskEvent::Assigned { attempt, .. } | TaskEvent::Started { attempt, .. } => {
                self.attempt = self.attempt.max(attempt)
            }
            TaskEvent::Stdout { attempt, data } if attempt >= self.attempt => {
                let mut out = std::io::stdout().lock();
                out.write_all(data.as_bytes())?;
                out.flush()?;
            }
            TaskEvent::Stderr { attempt, data } if attempt >= self.attempt => {
                let mut err = std::io::stderr().lock();
                err.write_all(data.as_bytes())?;
                err.flush()?;
            }
            TaskEvent::Retrying { attempt, reason } => {
                self.attempt = attempt;
                eprintln!("vgas: retrying as attempt {attempt}: {reason}");
            }
            TaskEvent::Finished { outcome, .. } => return Ok(Some(outcome)),
            TaskEvent::Artifact {
                attempt,
                path,
                base64,
                object,
                size,
            } if attempt >= self.attempt => match object {
                Some(object) => self.fetches.push((path, object, size.unwrap_or(0))),
                None => crate::cli_wasm::save_artifact(&path, &base64)?,
            },
            _ => {}
        }
        Ok(None)
    }
}

/// Prints a task's output as it streams and returns its exit code once it has finished. The
/// task's record is polled too, so a follower that missed the final event still ends.
pub(crate) async fn follow_events(
    client: &Client,
    conn: &Resolved,
    id: &TaskId,
    mut sub: async_nats::Subscriber,
) -> Result<i32> {
    let mut follower = Follower::default();
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    loop {
        tokio::select! {
            msg = sub.next() => {
                let Some(msg) = msg else { bail!("event subscription closed") };
                let done = follower.on_event(&msg.payload)?;
                follower.fetch_artifacts(client, conn).await?;
                if let Some(outcome) = done {
                    return Ok(report(id, &outcome));
                }
            }
            _ = poll.tick() => {
                let rec: TaskRecord = request(client, conn.subjects.task_info(), &TaskQuery { task_id: id.clone() }).await?;
                if let TaskState::Finished { outcome, .. } = rec.state {
                    // Let output already on its way arrive before ending.
                    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), sub.next()).await {
                        let done = follower.on_event(&msg.payload)?.is_some();
                        follower.fetch_artifacts(client, conn).await?;
                        if done {
                            break;
                        }
                    }
                    return Ok(report(id, &outcome));
                }
            }
        }
    }
}

fn report(id: &TaskId, outcome: &TaskOutcome) -> i32 {
    if !outcome.succeeded() {
        eprintln!("vgas: task {id} {}", outcome.describe());
    }
    outcome.exit_code()
}

/// The `vgas status` table.
pub fn render_status(p: &SwarmPulse) -> String {
    let mut s = format!(
        "{} live, {} abnormal | queue {}/{} | in flight {} | accepted {} finished {}\n",
        p.live.len(),
        p.abnormal.len(),
        p.queue_depth,
        p.queue_capacity,
        p.in_flight,
        p.tasks_accepted,
        p.tasks_finished
    );
    s.push_str(&format!(
        "{:<28} {:<14} {:>5} {:>4} {:>5} {:>4} {:>7} {:>5} {:>6}  {:<10} {}\n",
        "WORKER",
        "HOST",
        "SLOTS",
        "BUSY",
        "LOAD",
        "CPUS",
        "MEM_MB",
        "DONE",
        "SEEN",
        "ISOLATION",
        "CAPABILITIES"
    ));
    for n in &p.live {
        let state = if n.draining { " (draining)" } else { "" };
        s.push_str(&format!(
            "{:<28} {:<14} {:>5} {:>4} {:>5.2} {:>4} {:>7} {:>5} {:>5}s  {:<10} {}{}\n",
            n.id.as_str(),
            n.hostname,
            n.slots,
            n.in_flight,
            n.load1,
            n.cpus,
            n.memory_mb,
            n.tasks_done,
            n.last_seen_ms_ago / 1000,
            n.isolation,
            n.capabilities.join(","),
            state
        ));
    }
    for u in &p.unjoined {
        let why = u.not_joined.map(|w| w.describe()).unwrap_or("");
        s.push_str(&format!(
            "SEEN     {:<28} cluster {} at {:?}: {}\n",
            u.advert.node_id, u.advert.cluster, u.addresses, why
        ));
    }
    for a in &p.abnormal {
        s.push_str(&format!(
            "ABNORMAL {:<28} {} (last seen {}s ago)\n",
            a.id.as_str(),
            a.reason,
            a.last_seen_ms_ago / 1000
        ));
    }
    s
}
