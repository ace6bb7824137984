//! Tool calling through the LLM gateway, end to end (a real nats-server and master, the fake
//! provider): OpenAI `tools` / `tool_calls` / `tool` messages and Anthropic `tool_use` /
//! merged `tool_result` blocks go out exactly as documented and streamed calls come back as
//! `tool_call` events; `max_cost_usd` refuses a call before any HTTP request.

use serde_json::json;
use vgas_shared::llm::{ChatMessage, CompletionEvent, CompletionRequest, ToolCall, ToolDef};
use vgas_shared::ErrorCode;
use vgas_tests::gateway::{complete, complete_with_tools, req, setup, ANTHROPIC_KEY, OPENAI_KEY};
use vgas_tests::provider::{
    anthropic_tool_use_stream, openai_stream, openai_tool_call_stream, FakeProvider,
    TOOL_STREAM_USAGE,
};

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
