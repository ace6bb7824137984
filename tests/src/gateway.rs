//! The LLM gateway tests' set-up, shared by `llm_gateway.rs` and `llm_tools.rs`: llm.toml
//! pointing every provider at the fake server, keys stored with the real `vgas vault` CLI, a
//! master holding the passphrase, and a completion sent and collected the way a worker does.

use std::io::Write;
use std::process::{Command, Stdio};

use futures::StreamExt;
use vgas_shared::codec::{decode_as, encode, Reply};
use vgas_shared::config::Role;
use vgas_shared::error::WireError;
use vgas_shared::llm::{ChatMessage, CompletionEvent, CompletionRequest, ToolCall, UsageReport};
use vgas_shared::{Encoding, Subjects};

use crate::provider::FakeProvider;
use crate::{bin, request, wait_for, Placement, Proc, Swarm, WAIT};

pub const PASS: &str = "test vault passphrase";
pub const OPENAI_KEY: &str = "sk-test-openai-4242424242424242";
pub const ANTHROPIC_KEY: &str = "sk-ant-test-7373737373737373";

/// Stores a key with the real CLI, reading it from standard input.
pub fn vault_store(swarm: &Swarm, provider: &str, key: &str) {
    let mut child = Command::new(bin("vgas"))
        .args(["vault", "store", provider])
        .env("VGAS_STATE_DIR", swarm.state_dir())
        .env("VGAS_VAULT_PASSPHRASE", PASS)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    writeln!(child.stdin.take().unwrap(), "{key}").unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub fn llm_toml(fake: &FakeProvider, openai_limits: &str) -> String {
    let url = fake.base_url();
    format!(
        "[providers.openai]\nkind = 'openai'\nbase_url = '{url}'\n[providers.openai.limits]\n{openai_limits}\n\
         [providers.anthropic]\nkind = 'anthropic'\nbase_url = '{url}'\n\
         [providers.local]\nkind = 'openai_compatible'\nbase_url = '{url}'\nneeds_key = false\n\
         [prices.openai.'gpt-4o-mini']\ninput = 0.15\ncached_input = 0.075\noutput = 0.60\n\
         [prices.anthropic.'claude-sonnet-4-0']\ninput = 3.0\ncached_input = 0.3\noutput = 15.0\n"
    )
}

/// nats-server, llm.toml, keys stored with the CLI, a master with the passphrase, and a
/// worker-role connection once the master answers.
pub async fn setup(
    fake: &FakeProvider,
    limits: &str,
    keys: &[(&str, &str)],
) -> (Swarm, Proc, async_nats::Client) {
    let mut swarm = Swarm::start().await.unwrap();
    std::fs::write(swarm.state_dir().join("llm.toml"), llm_toml(fake, limits)).unwrap();
    for (p, k) in keys {
        vault_store(&swarm, p, k);
    }
    let master = start_master(&mut swarm).await;
    let worker = swarm.connect(Role::Worker).await.unwrap();
    (swarm, master, worker)
}

pub async fn start_master(swarm: &mut Swarm) -> Proc {
    start_master_with(swarm, &[], &[]).await
}

/// [`start_master`] with more arguments and environment.
pub async fn start_master_with(swarm: &mut Swarm, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut env = env.to_vec();
    env.push(("VGAS_VAULT_PASSPHRASE", PASS));
    let master = swarm
        .spawn_at(Placement::Local, "master", "vgas-master", args, &env)
        .unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    let s = swarm.subjects.clone();
    wait_for("the master's usage endpoint", WAIT, || {
        let (c, s) = (client.clone(), s.clone());
        async move {
            request::<_, UsageReport>(&c, s.llm_usage(), &serde_json::json!({}))
                .await
                .ok()
        }
    })
    .await
    .unwrap();
    master
}

pub fn req(provider: &str, model: &str) -> CompletionRequest {
    CompletionRequest {
        provider: provider.into(),
        model: model.into(),
        system: Some("Be brief.".into()),
        messages: vec![ChatMessage::user("Say hello")],
        max_tokens: Some(64),
        temperature: None,
        tools: Vec::new(),
        max_cost_usd: None,
        caller: Some("w1".into()),
    }
}

/// Sends a completion the way a worker does and collects the stream.
pub async fn complete(
    client: &async_nats::Client,
    subjects: &Subjects,
    r: &CompletionRequest,
) -> (String, Result<CompletionEvent, WireError>) {
    try_complete_text(client, subjects, r)
        .await
        .expect("gateway answered")
}

/// Like [`complete`], but a gateway that falls silent for [`WAIT`] is an `Err` (the caller
/// can show the masters' logs before it fails).
pub async fn try_complete_text(
    client: &async_nats::Client,
    subjects: &Subjects,
    r: &CompletionRequest,
) -> Result<(String, Result<CompletionEvent, WireError>), tokio::time::error::Elapsed> {
    let (text, calls, end) = try_complete(client, subjects, r).await?;
    assert!(calls.is_empty(), "unexpected tool calls: {calls:?}");
    Ok((text, end))
}

/// What a completion streamed: its text, its tool calls and how it ended.
pub type Completion = (String, Vec<ToolCall>, Result<CompletionEvent, WireError>);

/// Like [`complete`], also collecting the `tool_call` events (which must all come after the
/// text and before the end).
pub async fn complete_with_tools(
    client: &async_nats::Client,
    subjects: &Subjects,
    r: &CompletionRequest,
) -> Completion {
    try_complete(client, subjects, r)
        .await
        .expect("gateway answered")
}

/// Like [`complete_with_tools`], but a gateway that falls silent for [`WAIT`] is an `Err`
/// (the caller can show the masters' logs before it fails).
pub async fn try_complete(
    client: &async_nats::Client,
    subjects: &Subjects,
    r: &CompletionRequest,
) -> Result<Completion, tokio::time::error::Elapsed> {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.unwrap();
    let bytes = encode(Encoding::MsgPack, r).unwrap();
    client
        .publish_with_reply(subjects.llm_complete(), inbox, bytes.into())
        .await
        .unwrap();
    let mut text = String::new();
    let mut calls = Vec::new();
    loop {
        let msg = tokio::time::timeout(WAIT, sub.next()).await?.unwrap();
        let ev: Reply<CompletionEvent> = decode_as(Encoding::MsgPack, &msg.payload).unwrap();
        match ev.into_result() {
            Ok(CompletionEvent::Delta { text: t }) => {
                assert!(calls.is_empty(), "text after a tool call");
                text.push_str(&t)
            }
            Ok(CompletionEvent::ToolCall(c)) => calls.push(c),
            Ok(done) => return Ok((text, calls, Ok(done))),
            Err(e) => return Ok((text, calls, Err(e))),
        }
    }
}
