//! AI agents through the real swarm: nats-server, a master whose gateway calls a local
//! server speaking the OpenAI wire format (tool calls streamed chunk for chunk) and playing a
//! recorded conversation, and a worker of two slots (the agent's and its build's). A full run
//! in which the Programmer's first C does not compile, the diagnostics go back to it, its fix
//! builds on the swarm and the Tester's test passes; a run stopped by its budget before the
//! next call; a looping agent stopped; a write to `../outside` refused; the knowledge base
//! putting the right document in the prompt; memory surviving a master restart; and what
//! `vgas agent run` says with no provider at all.

use std::path::Path;

use serde_json::Value;
use vgas_shared::config::Role;
use vgas_tests::build::skip_without_gcc;
use vgas_tests::provider::{
    anthropic_stream, anthropic_tool_use_stream, openai_stream, openai_tool_call_stream,
    FakeProvider, Scripted,
};
use vgas_tests::{Proc, Swarm};

/// llm.toml: at the fake server, the `local` OpenAI-compatible provider and `anth`, an
/// Anthropic one, both priced so budgets bite: $10 per million tokens in and out.
fn llm_toml(fake: &FakeProvider) -> String {
    let url = fake.base_url();
    format!(
        "[providers.local]\nkind = 'openai_compatible'\nbase_url = '{url}'\nneeds_key = false\n\
         [providers.anth]\nkind = 'anthropic'\nbase_url = '{url}'\nneeds_key = false\n\
         [prices.local.'m1']\ninput = 10.0\ncached_input = 10.0\noutput = 10.0\n\
         [prices.anth.'m1']\ninput = 10.0\ncached_input = 10.0\noutput = 10.0\n"
    )
}

/// Which wire format the recorded conversation speaks.
#[derive(Clone, Copy, PartialEq)]
enum Wire {
    OpenAi,
    Anthropic,
}

impl Wire {
    fn provider(self) -> &'static str {
        match self {
            Wire::OpenAi => "local",
            Wire::Anthropic => "anth",
        }
    }

    fn text(self, words: &[&str]) -> Scripted {
        match self {
            Wire::OpenAi => openai_stream(words, 100, 50, 0),
            Wire::Anthropic => anthropic_stream(words, 100, 50, 0),
        }
    }

    fn call(self, id: &str, name: &str, args: Value) -> Scripted {
        self.calls(&[(id, name, args)])
    }

    /// One answer calling several tools.
    fn calls(self, calls: &[(&str, &str, Value)]) -> Scripted {
        let args: Vec<String> = calls.iter().map(|c| c.2.to_string()).collect();
        let calls: Vec<(&str, &str, &str)> = calls
            .iter()
            .zip(&args)
            .map(|(c, a)| (c.0, c.1, a.as_str()))
            .collect();
        match self {
            Wire::OpenAi => openai_tool_call_stream(&calls),
            Wire::Anthropic => anthropic_tool_use_stream("", &calls),
        }
    }
}

struct Setup {
    swarm: Swarm,
    procs: Vec<Proc>,
    fake: FakeProvider,
}

async fn setup() -> Setup {
    let fake = FakeProvider::start().await;
    let mut swarm = Swarm::start().await.unwrap();
    std::fs::write(swarm.state_dir().join("llm.toml"), llm_toml(&fake)).unwrap();
    let mut procs = vec![swarm.master(&[]).unwrap()];
    procs.push(swarm.worker("w1", 2, &[]).unwrap());
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    Setup { swarm, procs, fake }
}

fn text(words: &[&str]) -> Scripted {
    Wire::OpenAi.text(words)
}

fn call(id: &str, name: &str, args: Value) -> Scripted {
    Wire::OpenAi.call(id, name, args)
}

/// `vgas agent run` with `args` on the OpenAI-format provider; (exit code, stdout, stderr).
fn agent_run(s: &Setup, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    agent_run_on(s, Wire::OpenAi, cwd, args)
}

fn agent_run_on(s: &Setup, wire: Wire, cwd: &Path, args: &[&str]) -> (i32, String, String) {
    let mut all = vec![
        "agent",
        "run",
        "--provider",
        wire.provider(),
        "--model",
        "m1",
    ];
    all.extend_from_slice(args);
    let out = s.swarm.cli_in(cwd, &all, &[]).unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn response(cwd: &Path) -> Value {
    let path = cwd.join("vgas-artifacts/response.json");
    serde_json::from_slice(&std::fs::read(&path).expect("response.json came back")).unwrap()
}

/// The chat messages of the n-th request the provider got.
fn messages(s: &Setup, n: usize) -> Vec<Value> {
    s.fake.requests()[n].json()["messages"]
        .as_array()
        .unwrap()
        .clone()
}

const BROKEN_C: &str =
    "#include <stdio.h>\nint main(void) {\n    printf(\"%d\\n\", 6 * 7)\n    return 0;\n}\n";
/// The fix: the arithmetic moves into a workspace header, which the build tool inlines.
const FIXED_C: &str = "#include <stdio.h>\n#include \"calc.h\"\nint main(void) {\n    printf(\"%d\\n\", answer());\n    return 0;\n}\n";
const CALC_H: &str = "#pragma once\nstatic int answer(void) { return 6 * 7; }\n";
const TEST_SH: &str = "#!/bin/sh\nset -e\nout=$(./app)\n[ \"$out\" = 42 ] || { echo \"got $out\"; exit 1; }\necho PASS\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_compile_is_repaired_from_its_diagnostics_then_built_and_tested() {
    full_run(Wire::OpenAi).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_run_speaking_anthropic_tool_use() {
    full_run(Wire::Anthropic).await;
}

/// Architect, Programmer (broken C, diagnostics, fix), build on the swarm, Tester.
async fn full_run(wire: Wire) {
    if skip_without_gcc() {
        return;
    }
    let s = setup().await;
    let plan = r#"{"design":"print 6*7","files":[{"path":"main.c","purpose":"main"}],"build":{"sources":["main.c"],"output":"app"},"test":"./app prints 42"}"#;
    for scripted in [
        wire.text(&[plan]),
        wire.call(
            "c1",
            "write_file",
            serde_json::json!({"path":"main.c","content":BROKEN_C}),
        ),
        wire.text(&["wrote main.c"]),
        wire.calls(&[
            (
                "c2a",
                "write_file",
                serde_json::json!({"path":"calc.h","content":CALC_H}),
            ),
            (
                "c2",
                "write_file",
                serde_json::json!({"path":"main.c","content":FIXED_C}),
            ),
        ]),
        wire.text(&["fixed the missing semicolon"]),
        wire.call(
            "c3",
            "write_file",
            serde_json::json!({"path":"test.sh","content":TEST_SH}),
        ),
        wire.call(
            "c4",
            "run_command",
            serde_json::json!({"command":"sh test.sh"}),
        ),
        wire.text(&["{\"passed\": true, \"summary\": \"./app prints 42\"}"]),
    ] {
        s.fake.push(scripted);
    }
    let cwd = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) =
        agent_run_on(&s, wire, cwd.path(), &["print six times seven in C"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(
        stdout.contains("[build] failed") && stdout.contains("[build] succeeded"),
        "{stdout}"
    );
    let r = response(cwd.path());
    assert_eq!(r["end"]["reason"], "passed", "{r:#}");
    assert_eq!(r["rounds"], 8);
    // The diagnostics went back to the Programmer: the 4th call carries gcc's error on the
    // line of the missing semicolon.
    let m = messages(&s, 3);
    let last = m.last().unwrap();
    assert_eq!(last["role"], "user");
    let said = last["content"].as_str().unwrap();
    assert!(
        said.contains("main.c:3") && said.contains("error"),
        "{said}"
    );
    // Tools were offered in the provider's own format, and the results went back as `tool`
    // messages naming their call.
    let body = s.fake.requests()[1].json();
    let names: Vec<&str> = body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| match wire {
            Wire::OpenAi => t["function"]["name"].as_str().unwrap(),
            Wire::Anthropic => t["name"].as_str().unwrap(),
        })
        .collect();
    assert!(
        names.contains(&"write_file") && names.contains(&"build"),
        "{names:?}"
    );
    let m = messages(&s, 2);
    match wire {
        Wire::OpenAi => {
            let tool = m.iter().find(|x| x["role"] == "tool").unwrap();
            assert_eq!(tool["tool_call_id"], "c1");
        }
        Wire::Anthropic => {
            let blocks: Vec<&Value> = m
                .iter()
                .filter_map(|x| x["content"].as_array())
                .flatten()
                .collect();
            let used = blocks.iter().find(|b| b["type"] == "tool_use").unwrap();
            assert_eq!(used["id"], "c1");
            assert_eq!(used["input"]["path"], "main.c");
            let result = blocks.iter().find(|b| b["type"] == "tool_result").unwrap();
            assert_eq!(result["tool_use_id"], "c1");
        }
    }
    // The binary built on the swarm comes back with its mode, runs here and passes the same
    // test.
    let app = cwd.path().join("vgas-artifacts/app");
    use std::os::unix::fs::PermissionsExt as _;
    let mode = std::fs::metadata(&app).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o755, "vgas-artifacts/app lost its mode: {mode:o}");
    let out = std::process::Command::new(&app).output().unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "42\n");
    assert_eq!(
        std::fs::read_to_string(cwd.path().join("vgas-artifacts/main.c")).unwrap(),
        FIXED_C
    );
    // `vgas status` shows the agent.
    let out = s.swarm.cli(&["status"]).unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(
        status.contains("agents:") && status.contains("default"),
        "{status}"
    );
    // Stats: eight calls, some cost, nothing in flight.
    let out = s.swarm.cli(&["agent", "stats", "--json"]).unwrap();
    let stats: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats[0]["agent"], "default", "{stats}");
    assert_eq!(stats[0]["calls"], 8);
    assert_eq!(stats[0]["in_flight"], 0);
    assert!(stats[0]["cost_usd"].as_f64().unwrap() > 0.0);
    drop(s.procs);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_is_stopped_by_its_budget_before_the_next_call() {
    let s = setup().await;
    s.fake.push(text(&["{\"design\":\"x\"}"]));
    s.fake.push(text(&["never sent"]));
    let cwd = tempfile::tempdir().unwrap();
    // The Architect's worst case (2048 output tokens at $10/M, plus its prompt) fits $0.03;
    // after it, the Programmer's (4096 output tokens) does not fit what is left.
    let (code, stdout, stderr) =
        agent_run(&s, cwd.path(), &["--budget", "0.03", "write hello world"]);
    assert_eq!(code, 1, "{stdout}\n{stderr}");
    let r = response(cwd.path());
    assert_eq!(r["end"]["reason"], "budget", "{r:#}");
    assert!(stderr.contains("stopped by the budget"), "{stderr}");
    assert_eq!(
        s.fake.requests().len(),
        1,
        "the refused call reached the provider"
    );
    assert!(r["cost_usd"].as_f64().unwrap() <= 0.03);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_looping_agent_is_stopped_with_a_report() {
    let s = setup().await;
    for i in 0..5 {
        s.fake
            .push(call(&format!("l{i}"), "list_files", serde_json::json!({})));
    }
    let cwd = tempfile::tempdir().unwrap();
    let (code, _, stderr) = agent_run(&s, cwd.path(), &["--pipeline", "programmer", "look around"]);
    assert_eq!(code, 1, "{stderr}");
    let r = response(cwd.path());
    assert_eq!(r["end"]["reason"], "loop", "{r:#}");
    assert!(
        r["end"]["message"].as_str().unwrap().contains("list_files"),
        "{r:#}"
    );
    assert_eq!(s.fake.requests().len(), 3);
}

/// `vgas agent run` of `instruction` by `agent` with the scribe role alone, its file written
/// into `cwd`; (exit code, stdout, stderr).
fn scribe_run(s: &Setup, cwd: &Path, agent: &str, instruction: &str) -> (i32, String, String) {
    let role = cwd.join("scribe.toml");
    std::fs::write(&role, SCRIBE).unwrap();
    let role = role.display().to_string();
    let args = [
        "--agent",
        agent,
        "--role",
        &role,
        "--pipeline",
        "scribe",
        instruction,
    ];
    agent_run(s, cwd, &args)
}

/// A role that needs no code: a file in TOML.
const SCRIBE: &str = "name = \"scribe\"\nsystem_prompt = \"You write notes into files.\"\ntools = [\"write_file\", \"search_kb\"]\n[limits]\nmax_rounds = 4\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_outside_the_workspace_is_refused_with_a_message_the_model_can_read() {
    let s = setup().await;
    s.fake.push(call(
        "o1",
        "write_file",
        serde_json::json!({"path":"../outside","content":"x"}),
    ));
    s.fake
        .push(call("o2", "no_such_tool", serde_json::json!({})));
    s.fake.push(call(
        "o3",
        "write_file",
        serde_json::json!({"path":"notes.txt"}),
    ));
    s.fake.push(text(&["done"]));
    let cwd = tempfile::tempdir().unwrap();
    let (code, stdout, stderr) = scribe_run(&s, cwd.path(), "default", "write a note");
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let tool_reply = |n: usize| {
        let m = messages(&s, n);
        m.last().unwrap()["content"].as_str().unwrap().to_owned()
    };
    let t = tool_reply(1);
    assert!(
        t.contains("refused") && t.contains("leaves the workspace"),
        "{t}"
    );
    let t = tool_reply(2);
    assert!(
        t.contains("no tool \"no_such_tool\"") && t.contains("write_file"),
        "{t}"
    );
    let t = tool_reply(3);
    assert!(t.contains("\"content\"") && t.contains("missing"), "{t}");
    // Nothing was written beside the workspaces.
    let work = std::env::temp_dir().join("vgas-worker");
    assert!(!work.join("outside").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_knowledge_base_puts_the_right_document_in_the_prompt() {
    let s = setup().await;
    let docs = tempfile::tempdir().unwrap();
    std::fs::write(
        docs.path().join("tcp.md"),
        "TCP retransmission: timers back off exponentially after each loss.",
    )
    .unwrap();
    std::fs::write(docs.path().join("bloom.md"), "A bloom filter answers set membership with false positives but never false negatives; k hash functions set k bits.").unwrap();
    std::fs::write(
        docs.path().join("arena.md"),
        "An arena allocator hands out memory from one block and frees it all at once.",
    )
    .unwrap();
    let out = s
        .swarm
        .cli(&[
            "agent",
            "kb",
            "add",
            &docs.path().display().to_string(),
            "--agent",
            "kbagent",
        ])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("added 3 documents"));
    s.fake.push(text(&["ok"]));
    let cwd = tempfile::tempdir().unwrap();
    let (code, _, stderr) = scribe_run(
        &s,
        cwd.path(),
        "kbagent",
        "how many hash functions does a bloom filter use?",
    );
    assert_eq!(code, 0, "{stderr}");
    let system = messages(&s, 0)[0]["content"].as_str().unwrap().to_owned();
    assert!(
        system.contains("[bloom.md #0]") && system.contains("k hash functions"),
        "{system}"
    );
    let bloom = system.find("bloom.md").unwrap();
    assert!(system.find("tcp.md").is_none_or(|t| t > bloom), "{system}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_survives_a_master_restart() {
    let mut s = setup().await;
    s.fake.push(text(&["noted"]));
    let cwd = tempfile::tempdir().unwrap();
    let (code, _, stderr) = scribe_run(&s, cwd.path(), "mem", "remember the zebra protocol");
    assert_eq!(code, 0, "{stderr}");
    s.procs[0].kill();
    s.procs[0] = s.swarm.master(&[]).unwrap();
    s.fake.push(text(&["again"]));
    let mut done = None;
    for _ in 0..50 {
        let (code, out, err) = scribe_run(&s, cwd.path(), "mem", "what did you do before?");
        if code == 0 {
            done = Some(());
            break;
        }
        assert!(
            err.contains("is vgas-master running")
                || err.contains("no answer")
                || err.contains("not ready"),
            "{out}\n{err}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    assert!(done.is_some(), "the second run never ran");
    let reqs = s.fake.requests();
    let system = reqs.last().unwrap().json()["messages"][0]["content"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(
        system.contains("Notes from earlier runs")
            && system.contains("remember the zebra protocol"),
        "{system}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_provider_agent_run_says_how_to_store_a_key_or_use_a_local_server() {
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    let _ = client;
    let cwd = tempfile::tempdir().unwrap();
    let mut last = String::new();
    for _ in 0..50 {
        let out = swarm
            .cli_in(cwd.path(), &["agent", "run", "--model", "m", "hello"], &[])
            .unwrap();
        last = String::from_utf8_lossy(&out.stderr).into_owned();
        if last.contains("no LLM provider is ready") {
            assert_ne!(out.status.code(), Some(0));
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    for needle in [
        "vgas vault store openai",
        "openai_compatible",
        "needs_key = false",
        "Ollama",
    ] {
        assert!(last.contains(needle), "{needle}: {last}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_run_shows_in_status_while_it_runs_and_is_cancelled() {
    let s = setup().await;
    // A slow answer: 200 words, 50 ms apart, so the run is still in its first call.
    let words: Vec<String> = (0..200).map(|i| format!("w{i} ")).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    let mut slow = text(&words);
    slow.pace = std::time::Duration::from_millis(50);
    s.fake.push(slow);
    let client = s.swarm.connect(Role::Client).await.unwrap();
    let id = vgas_shared::TaskId::random();
    let run: vgas_shared::agent::AgentRun = serde_json::from_value(serde_json::json!({
        "instruction": "take your time", "provider": "local", "model": "m1",
        "pipeline": ["architect"]
    }))
    .unwrap();
    let spec = vgas_shared::wire::TaskSpec {
        task_id: Some(id.clone()),
        kind: vgas_shared::wire::TaskKind::Agent,
        agent: Some(run),
        retryable: Some(false),
        ..Default::default()
    };
    let sub = client
        .subscribe(s.swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let _: vgas_shared::wire::SubmitReply =
        vgas_tests::request(&client, s.swarm.subjects.submit(), &spec)
            .await
            .unwrap();
    vgas_tests::wait_for("the run in flight", vgas_tests::WAIT, || {
        let out = s.swarm.cli(&["status", "--json"]).unwrap();
        let pulse: Value = serde_json::from_slice(&out.stdout).unwrap();
        let busy = pulse["in_flight"] == 1 && !s.fake.requests().is_empty();
        async move { busy.then_some(()) }
    })
    .await
    .unwrap();
    let out = s.swarm.cli(&["cancel", &id.to_string()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = vgas_tests::collect(
        sub,
        std::time::Duration::from_secs(20),
        std::time::Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(c.outcome(), vgas_shared::wire::TaskOutcome::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_is_held_to_its_own_spending_limit() {
    let s = setup().await;
    // The first turn costs (100 + 1050 tokens at $10/M) $0.0115 of the role's own $0.012;
    // the role's second turn could cost more than the $0.0005 left (100 output tokens alone
    // are $0.001), so the gateway refuses it although the run's $1 budget would allow it.
    s.fake.push(openai_stream(&["ok"], 100, 1050, 0));
    s.fake.push(text(&["never sent"]));
    let cwd = tempfile::tempdir().unwrap();
    let role = cwd.path().join("thrifty.toml");
    std::fs::write(
        &role,
        "name = \"thrifty\"\nsystem_prompt = \"Be brief.\"\n[limits]\nmax_tokens = 100\nmax_cost_usd = 0.012\n",
    )
    .unwrap();
    let role = role.display().to_string();
    let (code, _, stderr) = agent_run(
        &s,
        cwd.path(),
        &["--role", &role, "--pipeline", "thrifty,thrifty", "say ok"],
    );
    assert_eq!(code, 1, "{stderr}");
    let r = response(cwd.path());
    assert_eq!(r["end"]["reason"], "budget", "{r:#}");
    assert_eq!(s.fake.requests().len(), 1);
}
