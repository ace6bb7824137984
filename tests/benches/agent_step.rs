//! Overhead per agent step: what one step of an agent (context assembly, the call through
//! the master's gateway, a tool call, the next round) costs next to the same provider call
//! made directly, in the same run against the same local OpenAI-format server. A step's cost
//! is measured as the marginal time of a run: a run of `STEPS` tool-calling steps plus an
//! answer, minus a run that answers at once, over `STEPS`; task dispatch and set-up cancel
//! out.
//!
//! Run: `VGAS_BIN_DIR=target/release cargo bench -p vgas-tests --bench agent_step`
//! (part of `scripts/bench.sh`).

use std::time::{Duration, Instant};

use vgas_shared::agent::{AgentRun, RoleSpec};
use vgas_shared::config::Role;
use vgas_shared::wire::{TaskKind, TaskSpec};
use vgas_shared::TaskId;
use vgas_tests::bench::{latencies, pct_ms, run_task};
use vgas_tests::provider::{
    direct_call, openai_stream, openai_tool_call_stream, FakeProvider, Scripted,
};
use vgas_tests::Swarm;

/// Tool-calling steps of the long run.
const STEPS: usize = 20;
/// Runs of each length; the medians are compared.
const REPS: usize = 5;
/// Direct calls measured, after `WARMUP`.
const SAMPLES: usize = 200;
const WARMUP: usize = 20;

fn quick(mut s: Scripted) -> Scripted {
    s.pace = Duration::ZERO;
    s
}

fn run_spec(instruction: &str) -> TaskSpec {
    let role = RoleSpec::from_toml(
        "name = \"stepper\"\nsystem_prompt = \"You look for files.\"\ntools = [\"read_file\"]\n[limits]\nmax_rounds = 30\n",
    )
    .expect("role");
    TaskSpec {
        task_id: Some(TaskId::random()),
        kind: TaskKind::Agent,
        retryable: Some(false),
        agent: Some(AgentRun {
            instruction: instruction.into(),
            agent: "bench".into(),
            provider: "local".into(),
            model: "m".into(),
            pipeline: vec!["stepper".into()],
            roles: vec![role],
            budget_usd: None,
            max_rounds: None,
            wall_s: None,
            repair_rounds: None,
        }),
        ..Default::default()
    }
}

fn median(mut v: Vec<Duration>) -> f64 {
    v.sort();
    v[v.len() / 2].as_secs_f64() * 1e3
}

fn main() {
    vgas_tests::bench::block_on(async {
        let fake = FakeProvider::start().await;
        let mut swarm = Swarm::start().await.expect("swarm");
        let toml = format!(
            "[providers.local]\nkind = 'openai_compatible'\nbase_url = '{}'\nneeds_key = false\n",
            fake.base_url()
        );
        std::fs::write(swarm.state_dir().join("llm.toml"), toml).expect("llm.toml");
        let _master = swarm.master(&[]).expect("master");
        let _worker = swarm.worker("w1", 1, &[]).expect("worker");
        let client = swarm.connect(Role::Client).await.expect("client");
        swarm.wait_workers(&client, 1).await.expect("worker up");

        for _ in 0..SAMPLES + WARMUP {
            fake.push(quick(openai_stream(&["Hello", ", ", "world"], 12, 3, 0)));
        }
        let body = serde_json::json!({
            "model": "m", "stream": true, "stream_options": {"include_usage": true},
            "messages": [{"role": "user", "content": "Say hello"}], "max_tokens": 64
        })
        .to_string();
        let lat = latencies(WARMUP, SAMPLES, || direct_call(fake.port, &body)).await;
        let direct_p50 = pct_ms(&lat, 0.5);

        let mut one = Vec::new();
        let mut many = Vec::new();
        for rep in 0..REPS + 1 {
            fake.push(quick(openai_stream(&["done"], 50, 2, 0)));
            let t = Instant::now();
            run_task(&client, &swarm, &run_spec("answer at once")).await;
            let short = t.elapsed();
            for i in 0..STEPS {
                let args = serde_json::json!({ "path": format!("missing-{i}.txt") }).to_string();
                fake.push(quick(openai_tool_call_stream(&[(
                    &format!("c{i}"),
                    "read_file",
                    &args,
                )])));
            }
            fake.push(quick(openai_stream(&["done"], 50, 2, 0)));
            let t = Instant::now();
            run_task(&client, &swarm, &run_spec("look for the files")).await;
            let long = t.elapsed();
            // The first pair warms the worker's and the master's caches.
            if rep > 0 {
                one.push(short);
                many.push(long);
            }
        }
        let (t1, tn) = (median(one), median(many));
        let step = (tn - t1) / STEPS as f64;
        println!("\nAgent step overhead ({REPS} runs of each length after one warm-up pair; {SAMPLES} direct calls)\n");
        println!("| what | ms |");
        println!("|---|---|");
        println!("| direct provider call, p50 (new TCP connection each) | {direct_p50:.3} |");
        println!("| agent run answering at once, median (dispatch, memory load and save, one call) | {t1:.1} |");
        println!("| agent run of {STEPS} read_file steps + answer, median | {tn:.1} |");
        println!("| one agent step (marginal: (long - short) / {STEPS}) | {step:.3} |");
        println!(
            "| overhead per step over a direct call | {:.3} |",
            step - direct_p50
        );
    });
}
