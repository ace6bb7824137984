//! `vgas agent`: run an instruction through the agent pipeline as a task on the swarm
//! (`run`), add documents to an agent's knowledge base (`kb add`), show what agents have
//! used (`stats`) and the built-in roles (`roles`).

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use vgas_shared::agent::{AgentRun, RoleSpec, DEFAULT_RUN_WALL_S};
use vgas_shared::llm::UsageReport;
use vgas_shared::wire::{TaskKind, TaskSpec};
use vgas_shared::TaskId;

use crate::api::{Swarm, REQUEST_TIMEOUT};

/// Seconds an agent task's deadline allows past the run's own wall-clock limit, so the run
/// reports its limit itself before the task deadline kills it.
const DEADLINE_SLACK_S: u64 = 60;

#[derive(Debug, clap::Subcommand)]
pub enum AgentCmd {
    /// Run an instruction: Architect, Programmer (built on the swarm, repaired on its
    /// diagnostics), Tester. Files and response.json are saved under ./vgas-artifacts/.
    Run(RunArgs),
    /// The agent's knowledge base.
    #[command(subcommand)]
    Kb(KbCmd),
    /// Calls, response times, tokens per second, in-flight calls and cost per agent.
    Stats {
        #[arg(long)]
        json: bool,
    },
    /// The built-in roles, as TOML (a starting point for `--role FILE`).
    Roles,
}

#[derive(Debug, clap::Subcommand)]
pub enum KbCmd {
    /// Add every text document under DIR (chunked, searched by BM25).
    Add {
        dir: PathBuf,
        #[arg(long, default_value = "default")]
        agent: String,
    },
}

#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The instruction, in words.
    pub instruction: String,
    /// The agent's name: its memory, knowledge base and stats.
    #[arg(long, default_value = "default")]
    pub agent: String,
    /// A provider configured on the master (default: the only one ready).
    #[arg(long)]
    pub provider: Option<String>,
    /// The model to call.
    #[arg(long, env = "VGAS_AGENT_MODEL")]
    pub model: Option<String>,
    /// The run's spending budget in US dollars.
    #[arg(long)]
    pub budget: Option<f64>,
    /// Model calls over the whole run.
    #[arg(long)]
    pub max_rounds: Option<u32>,
    /// Wall-clock limit of the run in seconds.
    #[arg(long)]
    pub wall: Option<u64>,
    /// Programmer turns after a failed build.
    #[arg(long)]
    pub repair_rounds: Option<u32>,
    /// A role file (TOML) to add or to replace a built-in role of the same name (repeatable).
    #[arg(long = "role", value_name = "FILE")]
    pub roles: Vec<PathBuf>,
    /// Role names in order, comma-separated (default architect,programmer,tester).
    #[arg(long, value_delimiter = ',')]
    pub pipeline: Vec<String>,
}

/// What to do when no provider can be called: said exactly.
pub fn no_provider_help(asked: Option<&str>) -> String {
    let what = match asked {
        Some(p) => format!(
            "the provider {p:?} is not ready on the master (not configured, or no key stored)"
        ),
        None => "no LLM provider is ready on the master".into(),
    };
    format!(
        "{what}. Either store a key on the master's machine:\n\
         \n    vgas vault store openai        # or: vgas vault store anthropic (reads the key without echo)\n\
         \nor point the master at a local OpenAI-compatible server (Ollama, vLLM, llama.cpp) in\n\
         its llm.toml (<state-dir>/llm.toml, or VGAS_LLM_CONFIG), then restart vgas-master:\n\
         \n    [providers.local]\n    kind = \"openai_compatible\"\n    base_url = \"http://127.0.0.1:11434/v1\"   # Ollama; vLLM :8000/v1, llama.cpp :8080/v1\n    needs_key = false\n\
         \nand run: vgas agent run --provider local --model MODEL \"...\""
    )
}

pub async fn run(swarm: &Swarm, cmd: AgentCmd) -> Result<i32> {
    match cmd {
        AgentCmd::Roles => {
            for r in vgas_shared::agent::BUILTIN_ROLES {
                super::print_stdout(&format!("{r}\n"))?;
            }
            Ok(0)
        }
        AgentCmd::Stats { json } => {
            let kv = crate::agents::bucket(&swarm.client, &swarm.subjects).await?;
            let stats = crate::agents::all_stats(&kv).await?;
            if json {
                super::print_stdout(&format!("{}\n", serde_json::to_string_pretty(&stats)?))?;
            } else {
                super::print_stdout(&crate::agents::render_stats(&stats))?;
            }
            Ok(0)
        }
        AgentCmd::Kb(KbCmd::Add { dir, agent }) => {
            let kv = crate::agents::bucket(&swarm.client, &swarm.subjects).await?;
            let (docs, chunks) = crate::agents::kb_add(&kv, &agent, &dir).await?;
            println!("added {docs} documents ({chunks} chunks) to the knowledge base of {agent}");
            Ok(0)
        }
        AgentCmd::Run(args) => run_agent(swarm, args).await,
    }
}

async fn run_agent(swarm: &Swarm, args: RunArgs) -> Result<i32> {
    let mut roles = Vec::new();
    for f in &args.roles {
        let text = std::fs::read_to_string(f).with_context(|| format!("read {}", f.display()))?;
        roles.push(RoleSpec::from_toml(&text).with_context(|| format!("{}", f.display()))?);
    }
    let report: UsageReport = swarm
        .request(
            swarm.subjects.llm_usage(),
            &std::collections::BTreeMap::<String, String>::new(),
        )
        .await?;
    let ready: Vec<&str> = report
        .providers
        .iter()
        .filter(|p| p.ready)
        .map(|p| p.provider.as_str())
        .collect();
    let provider = match &args.provider {
        Some(p) if ready.contains(&p.as_str()) => p.clone(),
        Some(p) => bail!("{}", no_provider_help(Some(p))),
        None => match ready.as_slice() {
            [only] => (*only).to_owned(),
            [] => bail!("{}", no_provider_help(None)),
            many => bail!(
                "several providers are ready ({}); choose one with --provider",
                many.join(", ")
            ),
        },
    };
    let Some(model) = args.model.clone() else {
        bail!("name the model to call with --model (or VGAS_AGENT_MODEL)");
    };
    let defaults: Vec<String> = AgentRun::default_pipeline();
    let run = AgentRun {
        instruction: args.instruction.clone(),
        agent: args.agent.clone(),
        provider,
        model,
        pipeline: if args.pipeline.is_empty() {
            defaults
        } else {
            args.pipeline.clone()
        },
        roles,
        budget_usd: args.budget,
        max_rounds: args.max_rounds,
        wall_s: args.wall,
        repair_rounds: args.repair_rounds,
    };
    let spec = TaskSpec {
        task_id: Some(TaskId::random()),
        kind: TaskKind::Agent,
        deadline_s: Some(args.wall.unwrap_or(DEFAULT_RUN_WALL_S) + DEADLINE_SLACK_S),
        agent: Some(run),
        // A run spends money: it is not silently run a second time elsewhere.
        retryable: Some(false),
        ..Default::default()
    };
    spec.validate()?;
    let submitted = swarm.submit(spec, REQUEST_TIMEOUT).await?;
    eprintln!(
        "vgas: agent run {} started as task {}",
        args.agent, submitted.reply.task_id
    );
    super::submit::print_to_end(swarm, submitted.following).await
}
