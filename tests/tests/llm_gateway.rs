//! The LLM gateway end to end: a real nats-server and master, a vault made by the real `vgas`
//! CLI, and a local fake provider speaking OpenAI's and Anthropic's streaming formats. Also:
//! 429 handling, quotas refusing before any HTTP request, no vault, and no key in any NATS
//! message or log of the run.

use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use serde_json::json;
use vgas_shared::codec::{decode_as, encode, Reply};
use vgas_shared::config::Role;
use vgas_shared::error::WireError;
use vgas_shared::llm::{
    ChatMessage, CompletionEvent, CompletionRequest, ToolCall, ToolDef, UsageReport,
};
use vgas_shared::{Encoding, ErrorCode, Subjects};
use vgas_tests::provider::{
    anthropic_stream, anthropic_tool_use_stream, openai_429, openai_stream,
    openai_tool_call_stream, FakeProvider, TOOL_STREAM_USAGE,
};
use vgas_tests::{bin, request, wait_for, Placement, Proc, Swarm, WAIT};

const PASS: &str = "test vault passphrase";
const OPENAI_KEY: &str = "sk-test-openai-4242424242424242";
const ANTHROPIC_KEY: &str = "sk-ant-test-7373737373737373";

/// Stores a key with the real CLI, reading it from standard input.
fn vault_store(swarm: &Swarm, provider: &str, key: &str) {
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

fn llm_toml(fake: &FakeProvider, openai_limits: &str) -> String {
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
async fn setup(
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

async fn start_master(swarm: &mut Swarm) -> Proc {
    let master = swarm
        .spawn_at(
            Placement::Local,
            "master",
            "vgas-master",
            &[],
            &[("VGAS_VAULT_PASSPHRASE", PASS)],
        )
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

fn req(provider: &str, model: &str) -> CompletionRequest {
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
async fn complete(
    client: &async_nats::Client,
    subjects: &Subjects,
    r: &CompletionRequest,
) -> (String, Result<CompletionEvent, WireError>) {
    let (text, calls, end) = complete_with_tools(client, subjects, r).await;
    assert!(calls.is_empty(), "unexpected tool calls: {calls:?}");
    (text, end)
}

/// Like [`complete`], also collecting the `tool_call` events (which must all come after the
/// text and before the end).
async fn complete_with_tools(
    client: &async_nats::Client,
    subjects: &Subjects,
    r: &CompletionRequest,
) -> (String, Vec<ToolCall>, Result<CompletionEvent, WireError>) {
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
        let msg = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("gateway answered")
            .unwrap();
        let ev: Reply<CompletionEvent> = decode_as(Encoding::MsgPack, &msg.payload).unwrap();
        match ev.into_result() {
            Ok(CompletionEvent::Delta { text: t }) => {
                assert!(calls.is_empty(), "text after a tool call");
                text.push_str(&t)
            }
            Ok(CompletionEvent::ToolCall(c)) => calls.push(c),
            Ok(done) => return (text, calls, Ok(done)),
            Err(e) => return (text, calls, Err(e)),
        }
    }
}

/// Records every message on every subject, as the master user may see them all.
async fn capture_all(swarm: &Swarm) -> Arc<Mutex<Vec<u8>>> {
    let all = Arc::new(Mutex::new(Vec::new()));
    let spy = swarm.connect(Role::Master).await.unwrap();
    let mut sub = spy.subscribe(">").await.unwrap();
    let sink = all.clone();
    tokio::spawn(async move {
        let _keep = spy;
        while let Some(m) = sub.next().await {
            let mut a = sink.lock().unwrap();
            a.extend_from_slice(m.subject.as_bytes());
            a.extend_from_slice(&m.payload);
        }
    });
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn openai_and_anthropic_stream_through_the_gateway_and_usage_survives_a_restart() {
    let fake = FakeProvider::start().await;
    let (mut swarm, mut master, worker) = setup(
        &fake,
        "",
        &[("openai", OPENAI_KEY), ("anthropic", ANTHROPIC_KEY)],
    )
    .await;
    let traffic = capture_all(&swarm).await;
    let s = swarm.subjects.clone();

    fake.push(openai_stream(
        &["Hello", ", ", "world"],
        1_000_000,
        1_000_000,
        400_000,
    ));
    let (text, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    assert_eq!(text, "Hello, world");
    let Ok(CompletionEvent::Done {
        usage,
        cost_usd,
        stop_reason,
        attempts,
        ..
    }) = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.cached_tokens),
        (1_000_000, 1_000_000, 400_000)
    );
    // 600k fresh input at 0.15, 400k cached at 0.075, 1M output at 0.60 (USD per million).
    assert!((cost_usd - (0.09 + 0.03 + 0.60)).abs() < 1e-9, "{cost_usd}");
    assert_eq!((stop_reason.as_deref(), attempts), (Some("stop"), 1));
    let r = &fake.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    let body = r.json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["max_completion_tokens"], 64);

    fake.push(anthropic_stream(&["Hi", " there"], 25, 15, 10));
    let (text, done) = complete(&worker, &s, &req("anthropic", "claude-sonnet-4-0")).await;
    assert_eq!(text, "Hi there");
    let Ok(CompletionEvent::Done {
        usage, stop_reason, ..
    }) = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.cached_tokens),
        (35, 15, 10)
    );
    assert_eq!(stop_reason.as_deref(), Some("end_turn"));
    let r = &fake.requests()[1];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.json()["system"], "Be brief.");
    assert_eq!(r.json()["max_tokens"], 64);

    // An OpenAI-compatible server without a key: no Authorization header at all.
    fake.push(openai_stream(&["ok"], 3, 1, 0));
    let (text, done) = complete(&worker, &s, &req("local", "llama3:8b")).await;
    assert_eq!(text, "ok");
    assert!(done.is_ok());
    assert_eq!(fake.requests()[2].header("authorization"), None);
    assert_eq!(fake.requests()[2].json()["max_tokens"], 64);

    // `vgas usage --json` sees all three, and still does after a master restart (JetStream KV).
    let usage_json = |swarm: &Swarm| {
        let out = swarm.cli(&["usage", "--json"]).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<UsageReport>(&out.stdout).unwrap()
    };
    let before = usage_json(&swarm);
    assert_eq!(before.rows.len(), 3, "{before:?}");
    let openai = before.rows.iter().find(|r| r.provider == "openai").unwrap();
    assert_eq!((openai.requests, openai.input_tokens), (1, 1_000_000));
    assert!(
        before
            .rows
            .iter()
            .find(|r| r.provider == "local")
            .unwrap()
            .unpriced
    );
    let table = String::from_utf8(swarm.cli(&["usage"]).unwrap().stdout).unwrap();
    assert!(
        table.contains("gpt-4o-mini") && table.contains("0.7200"),
        "{table}"
    );
    master.kill();
    let master2 = start_master(&mut swarm).await;
    let after = usage_json(&swarm);
    assert_eq!(after.rows, before.rows);

    // No key in any NATS message of the run, nor in the master's logs or the audit log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let traffic = traffic.lock().unwrap().clone();
    assert!(contains(&traffic, "Hello"), "the capture saw the stream");
    let audit = std::fs::read_to_string(swarm.state_dir().join("audit.log")).unwrap();
    assert_eq!(
        audit.lines().filter(|l| l.contains("llm.complete")).count(),
        3
    );
    for key in [OPENAI_KEY, ANTHROPIC_KEY] {
        assert!(!contains(&traffic, key), "a key went over NATS");
        assert!(!master.log_text().contains(key) && !master2.log_text().contains(key));
        assert!(!audit.contains(key));
    }
}

#[tokio::test]
async fn a_429_is_retried_after_the_time_it_names_and_insufficient_quota_is_not() {
    let fake = FakeProvider::start().await;
    let (swarm, _master, worker) = setup(&fake, "max_retries = 2", &[("openai", OPENAI_KEY)]).await;
    let s = swarm.subjects.clone();

    fake.push(openai_429(false, 1));
    fake.push(openai_stream(&["late"], 5, 1, 0));
    let t = Instant::now();
    let (text, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    assert_eq!(text, "late");
    assert!(
        matches!(done, Ok(CompletionEvent::Done { attempts: 2, .. })),
        "{done:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "retried before retry-after"
    );
    assert_eq!(fake.requests().len(), 2);

    fake.push(openai_429(true, 0));
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    let e = done.unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(e.message.contains("insufficient_quota"), "{}", e.message);
    assert_eq!(
        fake.requests().len(),
        3,
        "insufficient_quota is not retried"
    );
}

#[tokio::test]
async fn budgets_and_rate_limits_refuse_before_any_http_request() {
    let fake = FakeProvider::start().await;
    let (swarm, _master, worker) = setup(
        &fake,
        "daily_budget_usd = 0.0001\nrequests_per_minute = 1",
        &[("openai", OPENAI_KEY)],
    )
    .await;
    let s = swarm.subjects.clone();

    // 64 output tokens at $0.60/M is $0.0000384 worst case: within the budget.
    fake.push(openai_stream(&["one"], 100, 10, 0));
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    assert!(done.is_ok(), "{done:?}");
    // A second call within the minute: the request bucket refuses, nothing is sent.
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    let e = done.unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(
        e.message.starts_with("requests_per_minute:"),
        "{}",
        e.message
    );
    // A call whose worst case passes the daily budget is refused before the rate check.
    let mut big = req("openai", "gpt-4o-mini");
    big.max_tokens = Some(1000);
    let (_, done) = complete(&worker, &s, &big).await;
    let e = done.unwrap_err();
    assert!(e.message.starts_with("daily_budget:"), "{}", e.message);
    // An unpriced model with a budget set is refused too.
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-unknown")).await;
    assert!(done.unwrap_err().message.starts_with("unpriced_model:"));
    assert_eq!(
        fake.requests().len(),
        1,
        "refused calls reached the provider"
    );
}

#[tokio::test]
async fn without_a_vault_the_master_starts_and_calls_say_how_to_store_a_key() {
    let fake = FakeProvider::start().await;
    let (swarm, _master, worker) = setup(&fake, "", &[]).await;
    let s = swarm.subjects.clone();
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    let e = done.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(
        e.message.contains("vgas vault store openai"),
        "{}",
        e.message
    );
    let (_, done) = complete(&worker, &s, &req("nowhere", "m")).await;
    assert!(done.unwrap_err().message.contains("not configured"));
    let mut bad = req("openai", "m");
    bad.messages.clear();
    let (_, done) = complete(&worker, &s, &bad).await;
    assert_eq!(done.unwrap_err().code, ErrorCode::BadRequest);
    // A client may not call the gateway; a worker may not read usage.
    let client = swarm.connect(Role::Client).await.unwrap();
    let (_, refused) = tokio::time::timeout(Duration::from_secs(3), async {
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(inbox.clone()).await.unwrap();
        let b = encode(Encoding::MsgPack, &req("openai", "m")).unwrap();
        let _ = client
            .publish_with_reply(s.llm_complete(), inbox, b.into())
            .await;
        client.flush().await.ok();
        (
            (),
            tokio::time::timeout(Duration::from_millis(1500), sub.next())
                .await
                .is_err(),
        )
    })
    .await
    .unwrap();
    assert!(refused, "the client role reached the gateway");
    assert_eq!(fake.requests().len(), 0);
}

fn tool_defs() -> Vec<ToolDef> {
    vec![
        ToolDef {
            name: "get_weather".into(),
            description: "Current weather of a city".into(),
            parameters: json!({
                "type": "object",
                "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]}},
                "required": ["city"],
            }),
        },
        ToolDef {
            name: "get_time".into(),
            description: "Local time in a time zone".into(),
            parameters: json!({"type": "object", "properties": {"tz": {"type": "string"}}}),
        },
    ]
}

/// A chat two tool rounds in: two parallel calls (with text) and their results, then one call
/// whose arguments are not JSON and its result. `ids` name the three calls.
fn tool_chat(provider: &str, model: &str, ids: [&str; 3]) -> CompletionRequest {
    let call = |id: &str, name: &str, arguments: &str| ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    };
    let mut r = req(provider, model);
    r.tools = tool_defs();
    r.messages = vec![
        ChatMessage::user("Weather in Paris and Oslo, and the time in Oslo?"),
        ChatMessage::assistant(
            "Let me look.",
            vec![
                call(ids[0], "get_weather", r#"{"city":"Paris"}"#),
                call(ids[1], "get_weather", r#"{"city":"Oslo"}"#),
            ],
        ),
        ChatMessage::tool(ids[0], "18°C, sunny"),
        ChatMessage::tool(ids[1], "9°C, rain"),
        ChatMessage::assistant("", vec![call(ids[2], "get_time", "{\"tz\": Europe/Oslo")]),
        ChatMessage::tool(ids[2], "error: arguments are not JSON"),
    ];
    r
}

fn calls_of(wanted: &[(&str, &str, &str)]) -> Vec<ToolCall> {
    wanted
        .iter()
        .map(|(id, name, arguments)| ToolCall {
            id: (*id).into(),
            name: (*name).into(),
            arguments: (*arguments).into(),
        })
        .collect()
}

#[tokio::test]
async fn openai_tool_calls_go_out_as_tools_and_tool_messages_and_come_back_as_tool_call_events() {
    let fake = FakeProvider::start().await;
    let (swarm, _master, worker) = setup(&fake, "", &[("openai", OPENAI_KEY)]).await;
    let s = swarm.subjects.clone();
    let wanted = [
        (
            "call_Bergen1",
            "get_weather",
            r#"{"city":"Bergen","unit":"celsius"}"#,
        ),
        ("call_Time2", "get_time", r#"{"tz":"Europe/Oslo"}"#),
    ];
    fake.push(openai_tool_call_stream(&wanted));
    let r = tool_chat("openai", "gpt-4o-mini", ["call_1", "call_2", "call_3"]);
    let (text, calls, done) = complete_with_tools(&worker, &s, &r).await;
    assert_eq!(text, "");
    assert_eq!(calls, calls_of(&wanted));
    let Ok(CompletionEvent::Done {
        usage, stop_reason, ..
    }) = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(stop_reason.as_deref(), Some("tool_calls"));
    assert_eq!((usage.input_tokens, usage.output_tokens), TOOL_STREAM_USAGE);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].path, "/v1/chat/completions");
    assert_eq!(
        reqs[0].header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    let function = |t: &ToolDef| json!({"type": "function", "function": {"name": t.name, "description": t.description, "parameters": t.parameters}});
    let defs = tool_defs();
    assert_eq!(
        reqs[0].json(),
        json!({
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "Weather in Paris and Oslo, and the time in Oslo?"},
                {"role": "assistant", "content": "Let me look.", "tool_calls": [
                    {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
                    {"id": "call_2", "type": "function", "function": {"name": "get_weather", "arguments": "{\"city\":\"Oslo\"}"}},
                ]},
                {"role": "tool", "tool_call_id": "call_1", "content": "18°C, sunny"},
                {"role": "tool", "tool_call_id": "call_2", "content": "9°C, rain"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "call_3", "type": "function", "function": {"name": "get_time", "arguments": "{\"tz\": Europe/Oslo"}},
                ]},
                {"role": "tool", "tool_call_id": "call_3", "content": "error: arguments are not JSON"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
            "max_completion_tokens": 64,
            "tools": [function(&defs[0]), function(&defs[1])],
        })
    );
}

#[tokio::test]
async fn anthropic_tool_use_goes_out_as_tool_use_and_merged_tool_result_blocks_and_comes_back_as_tool_call_events(
) {
    let fake = FakeProvider::start().await;
    let (swarm, _master, worker) = setup(&fake, "", &[("anthropic", ANTHROPIC_KEY)]).await;
    let s = swarm.subjects.clone();
    let streamed = [
        (
            "toolu_01T1x1fJ34qAmk2tNTrN7Up6",
            "get_weather",
            r#"{"city": "Bergen", "unit": "celsius"}"#,
        ),
        // No input fragments at all: the call's arguments are `{}`.
        ("toolu_02Time", "get_time", ""),
    ];
    fake.push(anthropic_tool_use_stream("Checking Bergen.", &streamed));
    let r = tool_chat(
        "anthropic",
        "claude-sonnet-4-0",
        ["toolu_1", "toolu_2", "toolu_3"],
    );
    let (text, calls, done) = complete_with_tools(&worker, &s, &r).await;
    assert_eq!(text, "Checking Bergen.");
    assert_eq!(
        calls,
        calls_of(&[streamed[0], ("toolu_02Time", "get_time", "{}"),])
    );
    let Ok(CompletionEvent::Done {
        usage, stop_reason, ..
    }) = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(stop_reason.as_deref(), Some("tool_use"));
    assert_eq!((usage.input_tokens, usage.output_tokens), TOOL_STREAM_USAGE);

    let reqs = fake.requests();
    assert_eq!(reqs.len(), 1);
    let r0 = &reqs[0];
    assert_eq!(
        (r0.method.as_str(), r0.path.as_str()),
        ("POST", "/v1/messages")
    );
    assert_eq!(r0.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(r0.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r0.header("content-type"), Some("application/json"));
    assert_eq!(r0.header("authorization"), None);
    let defs = tool_defs();
    let tool = |t: &ToolDef| json!({"name": t.name, "description": t.description, "input_schema": t.parameters});
    assert_eq!(
        r0.json(),
        json!({
            "model": "claude-sonnet-4-0",
            "max_tokens": 64,
            "stream": true,
            "system": "Be brief.",
            "messages": [
                {"role": "user", "content": "Weather in Paris and Oslo, and the time in Oslo?"},
                {"role": "assistant", "content": [
                    {"type": "text", "text": "Let me look."},
                    {"type": "tool_use", "id": "toolu_1", "name": "get_weather", "input": {"city": "Paris"}},
                    {"type": "tool_use", "id": "toolu_2", "name": "get_weather", "input": {"city": "Oslo"}},
                ]},
                // Both results in one user turn, right after the calls.
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_1", "content": "18°C, sunny"},
                    {"type": "tool_result", "tool_use_id": "toolu_2", "content": "9°C, rain"},
                ]},
                // No text block for empty text; arguments that are not JSON become `{}`.
                {"role": "assistant", "content": [
                    {"type": "tool_use", "id": "toolu_3", "name": "get_time", "input": {}},
                ]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "toolu_3", "content": "error: arguments are not JSON"},
                ]},
            ],
            "tools": [tool(&defs[0]), tool(&defs[1])],
        })
    );
}

#[tokio::test]
async fn max_cost_usd_refuses_a_call_that_could_cost_more_before_any_http_request() {
    let fake = FakeProvider::start().await;
    let (swarm, _master, worker) = setup(&fake, "", &[("openai", OPENAI_KEY)]).await;
    let s = swarm.subjects.clone();

    // Worst case: 18 bytes of prompt is 5 input tokens at $0.15/M, 64 output tokens at
    // $0.60/M: 0.75 + 38.4 micro-USD, $0.000039.
    let mut r = req("openai", "gpt-4o-mini");
    r.max_cost_usd = Some(0.00003);
    let (_, done) = complete(&worker, &s, &r).await;
    let e = done.unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(
        e.message.starts_with("max_cost_usd:")
            && e.message.contains("could cost up to $0.000039")
            && e.message.contains("more than the $0.000030 left"),
        "{}",
        e.message
    );
    assert_eq!(
        fake.requests().len(),
        0,
        "a refused call reached the provider"
    );

    // Enough room: the call goes through.
    r.max_cost_usd = Some(0.00004);
    fake.push(openai_stream(&["ok"], 5, 1, 0));
    let (text, done) = complete(&worker, &s, &r).await;
    assert_eq!(text, "ok");
    assert!(done.is_ok(), "{done:?}");

    // A model without a price costs 0 here: even max_cost_usd 0 lets it through.
    let mut unpriced = req("local", "llama3:8b");
    unpriced.max_cost_usd = Some(0.0);
    fake.push(openai_stream(&["free"], 5, 1, 0));
    let (text, done) = complete(&worker, &s, &unpriced).await;
    assert_eq!(text, "free");
    assert!(done.is_ok(), "{done:?}");
    assert_eq!(fake.requests().len(), 2);
}
