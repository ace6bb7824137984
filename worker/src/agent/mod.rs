//! AI agents on the worker. An agent task (`kind: "agent"`) runs an [`AgentRun`]: one
//! instruction through a pipeline of roles (by default Architect, then Programmer with a
//! build on the swarm and bounded repair rounds on its diagnostics, then Tester running a
//! real test in the sandbox). Model calls go through the master's gateway (`llm`), tools act
//! on a fresh workspace (`tools`), one role's loop of calls is `role`, and the memory slots
//! and knowledge base are the `context` module's `ContextManager`, kept in JetStream KV.
//!
//! [`Agent`] is the seeds' common agent interface: `execute_instruction` returns the
//! [`ResponseResult`], `update_context` gives it a `ContextManager`, `query_performance`
//! says what it has used. A run passes only when the build and the Tester's command really
//! succeeded, never on a model's say-so.

pub mod context;
pub mod inline;
pub mod llm;
pub mod role;
pub mod tools;

use std::path::PathBuf;
use std::time::Duration;

use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use vgas_shared::agent::{AgentRun, PerformanceStats, ResponseResult, RoleSpec, RunEnd};
use vgas_shared::kb::Bm25Index;
use vgas_shared::wire::TaskOutcome;
use vgas_shared::{now_ms, Subjects};

use self::context::{ContextManager, Memory};
use self::role::{speak, Limits, Meter, Spoke, Turn};
use self::tools::Tools;
use crate::sandbox::{Isolation, OutputChunk, SandboxConfig};
use crate::wasm::{collect_artifacts, Artifact, ArtifactBody};

/// What an agent task needs from its worker.
#[derive(Debug)]
pub struct AgentEnv<'a> {
    pub client: &'a async_nats::Client,
    pub js: &'a async_nats::jetstream::Context,
    pub subjects: &'a Subjects,
    pub sandbox: &'a SandboxConfig,
    pub isolation: &'a Isolation,
    pub slot: usize,
    pub worker_id: String,
}

/// An agent: a named pipeline of roles with its memory, for one run.
#[derive(Debug)]
pub struct Agent<'a> {
    run: AgentRun,
    env: &'a AgentEnv<'a>,
    context: ContextManager,
    meter: Meter,
    workspace: PathBuf,
    cancel: CancellationToken,
    out: Sender<OutputChunk>,
    /// Where the in-flight count of calls is kept, when the agents bucket is at hand.
    kv: Option<async_nats::jetstream::kv::Store>,
}

impl<'a> Agent<'a> {
    pub fn new(
        run: AgentRun,
        env: &'a AgentEnv<'a>,
        workspace: PathBuf,
        cancel: CancellationToken,
        out: Sender<OutputChunk>,
    ) -> Agent<'a> {
        let context =
            ContextManager::new(&run.agent, Memory::default(), Bm25Index::build(Vec::new()));
        Agent {
            run,
            env,
            context,
            meter: Meter::new(),
            workspace,
            cancel,
            out,
            kv: None,
        }
    }

    /// Gives the agent its memory slots and knowledge base.
    pub fn update_context(&mut self, c: ContextManager) {
        self.context = c;
    }

    pub fn context(&self) -> &ContextManager {
        &self.context
    }

    /// What this run has used so far.
    pub fn query_performance(&self) -> PerformanceStats {
        let m = &self.meter;
        let mut sorted = m.latencies_ms.clone();
        sorted.sort_unstable();
        let pct = |p: f64| -> u64 {
            if sorted.is_empty() {
                return 0;
            }
            sorted[((sorted.len() - 1) as f64 * p).round() as usize]
        };
        let secs = m.call_time.as_secs_f64().max(1e-9);
        PerformanceStats {
            agent: self.run.agent.clone(),
            runs: 1,
            calls: m.calls,
            cpu_ms: 0,
            p50_ms: pct(0.5),
            p90_ms: pct(0.9),
            p99_ms: pct(0.99),
            input_tokens: m.usage.input_tokens,
            output_tokens: m.usage.output_tokens,
            tokens_in_per_s: if m.calls == 0 {
                0.0
            } else {
                m.usage.input_tokens as f64 / secs
            },
            tokens_out_per_s: if m.calls == 0 {
                0.0
            } else {
                m.usage.output_tokens as f64 / secs
            },
            in_flight: 0,
            cost_usd: m.spent_usd,
            updated_ms: now_ms(),
            call_ms: m.call_time.as_millis() as u64,
            recent_ms: m.latencies_ms.clone(),
        }
    }

    /// Runs `instruction` through the pipeline.
    pub async fn execute_instruction(&mut self, instruction: String) -> ResponseResult {
        let progress = self.progress_owned();
        let limits = Limits {
            kv: self.kv.as_ref(),
            run: &self.run,
            client: self.env.client,
            subjects: self.env.subjects,
            caller: self.env.worker_id.clone(),
            cancel: self.cancel.clone(),
            progress: &progress,
        };
        let mut tools = Tools {
            dir: self.workspace.clone(),
            client: self.env.client,
            subjects: self.env.subjects,
            sandbox: self.env.sandbox,
            isolation: self.env.isolation,
            slot: self.env.slot,
            kb: self.context.kb.clone(),
            cancel: self.cancel.clone(),
            last_build: None,
            last_command: None,
            allowed: Vec::new(),
        };
        let cm = &mut self.context;
        let mut turn = Turn {
            cm,
            tools: &mut tools,
            limits: &limits,
            meter: &mut self.meter,
        };
        let (answer, end) = pipeline(&self.run, &instruction, &mut turn).await;
        let cm = &mut self.context;
        let diagnostics = tools
            .last_build
            .as_ref()
            .filter(|b| !b.ok)
            .map(|b| b.text.clone())
            .unwrap_or_default();
        let artifacts = tools.files();
        cm.note(format!(
            "\"{}\": {} (files: {})",
            short(&instruction, 120),
            end.describe(),
            if artifacts.is_empty() {
                "none".into()
            } else {
                artifacts.join(", ")
            }
        ));
        cm.keep_conversation();
        ResponseResult {
            agent: self.run.agent.clone(),
            answer,
            end,
            artifacts,
            diagnostics,
            transcript: self.meter.transcript.clone(),
            usage: self.meter.usage,
            cost_usd: self.meter.spent_usd,
            rounds: self.meter.rounds,
        }
    }

    fn progress_owned(&self) -> impl Fn(String) + Sync {
        let out = self.out.clone();
        move |line: String| {
            let _ = out.try_send(OutputChunk::Stdout(format!("{line}\n")));
        }
    }
}

fn short(s: &str, n: usize) -> String {
    let one_line = s.split_whitespace().collect::<Vec<_>>().join(" ");
    if one_line.len() <= n {
        one_line
    } else {
        format!("{}...", &one_line[..one_line.floor_char_boundary(n)])
    }
}

/// The roles in order, with the Programmer's build and repairs and the Tester's check.
async fn pipeline(run: &AgentRun, instruction: &str, t: &mut Turn<'_, '_>) -> (String, RunEnd) {
    let mut plan = String::new();
    let mut last_answer = String::new();
    for name in &run.pipeline {
        let Some(role) = run.role(name) else {
            return (
                last_answer,
                RunEnd::Error {
                    message: format!("no role {name}"),
                },
            );
        };
        let mut task = format!("Instruction:\n{instruction}");
        if !plan.is_empty() {
            task.push_str(&format!("\n\nThe Architect's plan:\n{plan}"));
        }
        let spoke = match role.name.as_str() {
            "programmer" => programmer(run, &role, task, t).await,
            "tester" => tester(&role, task, t).await,
            _ => speak(&role, task, true, t).await,
        };
        match spoke {
            Spoke::Answer(a) => {
                if role.name == "architect" {
                    plan = a.clone();
                }
                last_answer = a;
            }
            Spoke::End(end) => return (last_answer, end),
        }
    }
    (last_answer, RunEnd::Passed)
}

/// The Programmer writes and builds; a failed build's diagnostics go back to it for at most
/// `run.repairs()` more turns.
async fn programmer(run: &AgentRun, role: &RoleSpec, task: String, t: &mut Turn<'_, '_>) -> Spoke {
    let mut spoke = speak(role, task, true, t).await;
    let mut repairs = 0;
    loop {
        let answer = match spoke {
            Spoke::Answer(a) => a,
            end => return end,
        };
        // The model's word is not a build: build now unless its last build call passed and
        // nothing was written since (a write resets it).
        let built = match &t.tools.last_build {
            Some(b) if b.ok => b.clone(),
            _ => {
                t.tools.allowed.push("build".into());
                let _ = t.tools.call("build", "{}").await;
                let b = t.tools.last_build.clone().unwrap_or_default();
                t.meter.log(&role.name, "build", &b.text);
                b
            }
        };
        (t.limits.progress)(format!(
            "[build] {}",
            if built.ok { "succeeded" } else { "failed" }
        ));
        if built.ok {
            return Spoke::Answer(answer);
        }
        if repairs >= run.repairs() {
            return Spoke::End(RunEnd::Failed {
                message: format!(
                    "the build still fails after {repairs} repair rounds:\n{}",
                    built.text
                ),
            });
        }
        repairs += 1;
        spoke = speak(
            role,
            format!(
                "The build on the swarm failed. Fix the files, then answer.\n{}",
                built.text
            ),
            false,
            t,
        )
        .await;
    }
}

/// The Tester writes and runs a test; the run passes only if its last command exited 0.
async fn tester(role: &RoleSpec, task: String, t: &mut Turn<'_, '_>) -> Spoke {
    let binary = t.tools.last_build.as_ref().and_then(|b| b.binary.clone());
    let task = match &binary {
        Some(b) => format!("{task}\n\nThe build made ./{b} in the workspace."),
        None => task,
    };
    t.tools.last_command = None;
    match speak(role, task, true, t).await {
        Spoke::Answer(a) => match &t.tools.last_command {
            Some(c) if c.exit_code == Some(0) => Spoke::Answer(a),
            Some(c) => Spoke::End(RunEnd::Failed {
                message: format!(
                    "the Tester's test `{}` ended {}",
                    c.command,
                    c.exit_code
                        .map_or("without an exit code".into(), |x| format!(
                            "with exit code {x}"
                        ))
                ),
            }),
            None => Spoke::End(RunEnd::Failed {
                message: "the Tester answered without running a test".into(),
            }),
        },
        end => end,
    }
}

/// Runs an agent task start to end: memory and knowledge base from KV, the pipeline, the
/// memory and stats back to KV, the workspace files and `response.json` as artifacts. The
/// workspace comes back too: the caller keeps it until its large artifacts are uploaded, and
/// dropping it removes it.
pub async fn run_task(
    env: &AgentEnv<'_>,
    run: &AgentRun,
    out: Sender<OutputChunk>,
    cancel: CancellationToken,
) -> (TaskOutcome, Vec<Artifact>, Option<tempfile::TempDir>) {
    let fail = |message: String| (TaskOutcome::Error { message }, Vec::new(), None);
    let kv = match env.js.get_key_value(env.subjects.agents_bucket()).await {
        Ok(kv) => kv,
        Err(e) => {
            return fail(format!(
                "the agents bucket is not there (is the master up?): {e}"
            ))
        }
    };
    let context = match context::load(&kv, &run.agent).await {
        Ok(c) => c,
        Err(e) => return fail(format!("cannot load the agent's memory: {e}")),
    };
    let workspace = match tempfile::Builder::new()
        .prefix("agent-")
        .tempdir_in(&env.sandbox.work_dir)
    {
        Ok(d) => d,
        Err(e) => return fail(format!("cannot create the workspace: {e}")),
    };
    let instruction = run.instruction.clone();
    let mut agent = Agent::new(
        run.clone(),
        env,
        workspace.path().to_path_buf(),
        cancel,
        out.clone(),
    );
    agent.update_context(context);
    agent.kv = Some(kv.clone());
    let (result, cpu) = CpuMeter::new(agent.execute_instruction(instruction)).await;
    let mut perf = agent.query_performance();
    perf.cpu_ms = cpu.as_millis() as u64;
    if let Err(e) = context::save_memory(&kv, agent.context()).await {
        tracing::warn!("agent {}: memory not saved: {e}", perf.agent);
    }
    context::update_stats(&kv, &perf.agent, |s| {
        merge_stats(s, &perf, &agent.meter.latencies_ms)
    })
    .await;
    let _ = out
        .send(OutputChunk::Stdout(format!(
            "[agent] {}\n",
            result.end.describe()
        )))
        .await;
    if !result.end.passed() {
        let _ = out
            .send(OutputChunk::Stderr(format!(
                "agent run {}\n",
                result.end.describe()
            )))
            .await;
    }
    let outcome = match result.end {
        RunEnd::Passed => TaskOutcome::Exited { exit_code: 0 },
        RunEnd::Cancelled => TaskOutcome::Cancelled,
        _ => TaskOutcome::Exited { exit_code: 1 },
    };
    // The workspace files, within the same bounds as a wasm task's (an agent task has no
    // input files to leave out), then the result itself.
    let (outcome, mut artifacts) = collect_artifacts(workspace.path(), &[], outcome);
    artifacts.push(Artifact {
        path: "response.json".into(),
        mode: None,
        body: ArtifactBody::Inline(serde_json::to_vec_pretty(&result).unwrap_or_default()),
    });
    (outcome, artifacts, Some(workspace))
}

/// Folds one run's figures into the agent's stats.
fn merge_stats(s: &mut PerformanceStats, run: &PerformanceStats, latencies: &[u64]) {
    s.agent = run.agent.clone();
    s.runs += 1;
    s.calls += run.calls;
    s.cpu_ms += run.cpu_ms;
    s.input_tokens += run.input_tokens;
    s.output_tokens += run.output_tokens;
    s.cost_usd += run.cost_usd;
    s.recent_ms.extend_from_slice(latencies);
    let extra = s.recent_ms.len().saturating_sub(role::MAX_LATENCIES);
    s.recent_ms.drain(..extra);
    let mut sorted = s.recent_ms.clone();
    sorted.sort_unstable();
    let pct = |p: f64| {
        sorted
            .get(((sorted.len().max(1) - 1) as f64 * p).round() as usize)
            .copied()
            .unwrap_or(0)
    };
    s.p50_ms = pct(0.5);
    s.p90_ms = pct(0.9);
    s.p99_ms = pct(0.99);
    s.call_ms += latencies.iter().sum::<u64>();
    let secs = (s.call_ms as f64 / 1000.0).max(1e-9);
    s.tokens_in_per_s = s.input_tokens as f64 / secs;
    s.tokens_out_per_s = s.output_tokens as f64 / secs;
    s.updated_ms = now_ms();
}

fn thread_cpu() -> Option<Duration> {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec into the pointer it is given.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

pin_project_lite::pin_project! {
    /// Measures the CPU time a future spends in its own polls (on whichever thread polls
    /// it): the agent's own work on the worker, not its sandboxed commands or builds, which
    /// are accounted as their own processes and tasks.
    struct CpuMeter<F> {
        #[pin]
        inner: F,
        used: Duration,
    }
}

impl<F> CpuMeter<F> {
    fn new(inner: F) -> CpuMeter<F> {
        CpuMeter {
            inner,
            used: Duration::ZERO,
        }
    }
}

impl<F: std::future::Future> std::future::Future for CpuMeter<F> {
    type Output = (F::Output, Duration);
    fn poll(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Self::Output> {
        let this = self.project();
        let before = thread_cpu();
        let r = this.inner.poll(cx);
        if let (Some(b), Some(a)) = (before, thread_cpu()) {
            *this.used += a.saturating_sub(b);
        }
        r.map(|v| (v, *this.used))
    }
}
