//! Unit tests of `providers`: the request bodies in each wire format (tools, tool calls and
//! results) and the reassembly of streamed tool calls, with its bounds.

use super::*;
use vgas_shared::llm::ToolDef;

fn provider(kind: ProviderKind) -> ProviderConfig {
    ProviderConfig {
        kind,
        base_url: "http://127.0.0.1:9/v1".into(),
        needs_key: false,
        limits: Default::default(),
    }
}

fn body(kind: ProviderKind, req: &CompletionRequest) -> Value {
    let rb = build(&reqwest::Client::new(), &provider(kind), None, req);
    let r = rb.build().unwrap();
    serde_json::from_slice(r.body().unwrap().as_bytes().unwrap()).unwrap()
}

fn call(id: &str, name: &str, arguments: &str) -> ToolCall {
    ToolCall {
        id: id.into(),
        name: name.into(),
        arguments: arguments.into(),
    }
}

fn request() -> CompletionRequest {
    CompletionRequest {
        provider: "p".into(),
        model: "m".into(),
        system: None,
        messages: vec![
            ChatMessage::user("weather?"),
            ChatMessage::assistant(
                "Looking.",
                vec![
                    call("c1", "weather", r#"{"city":"Paris"}"#),
                    call("c2", "weather", "{broken"),
                ],
            ),
            ChatMessage::tool("c1", "sunny"),
            ChatMessage::tool("c2", "rain"),
            ChatMessage::assistant("", vec![call("c3", "time", "{}")]),
            ChatMessage::tool("c3", "noon"),
            ChatMessage::user("thanks"),
        ],
        max_tokens: None,
        temperature: None,
        tools: vec![ToolDef {
            name: "weather".into(),
            description: "Weather of a city".into(),
            parameters: json!({"type": "object", "properties": {"city": {"type": "string"}}}),
        }],
        max_cost_usd: None,
        caller: None,
    }
}

#[test]
fn openai_body_has_tools_tool_calls_and_tool_messages() {
    let b = body(ProviderKind::Openai, &request());
    assert_eq!(
        b["tools"],
        json!([{"type": "function", "function": {"name": "weather", "description": "Weather of a city", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}}])
    );
    let m = &b["messages"];
    assert_eq!(
        m[1],
        json!({"role": "assistant", "content": "Looking.", "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}},
            {"id": "c2", "type": "function", "function": {"name": "weather", "arguments": "{broken"}},
        ]})
    );
    assert_eq!(
        m[2],
        json!({"role": "tool", "tool_call_id": "c1", "content": "sunny"})
    );
    assert_eq!(m[4]["content"], Value::Null);
    assert_eq!(m.as_array().unwrap().len(), 7);
    // No tools: no `tools` key at all.
    let mut plain = request();
    plain.tools.clear();
    assert!(body(ProviderKind::OpenaiCompatible, &plain)
        .get("tools")
        .is_none());
}

#[test]
fn anthropic_body_has_tool_use_blocks_and_merged_tool_results() {
    let b = body(ProviderKind::Anthropic, &request());
    assert_eq!(
        b["tools"],
        json!([{"name": "weather", "description": "Weather of a city", "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}}}])
    );
    assert_eq!(
        b["messages"],
        json!([
            {"role": "user", "content": "weather?"},
            {"role": "assistant", "content": [
                {"type": "text", "text": "Looking."},
                {"type": "tool_use", "id": "c1", "name": "weather", "input": {"city": "Paris"}},
                {"type": "tool_use", "id": "c2", "name": "weather", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c1", "content": "sunny"},
                {"type": "tool_result", "tool_use_id": "c2", "content": "rain"},
            ]},
            {"role": "assistant", "content": [
                {"type": "tool_use", "id": "c3", "name": "time", "input": {}},
            ]},
            {"role": "user", "content": [
                {"type": "tool_result", "tool_use_id": "c3", "content": "noon"},
            ]},
            {"role": "user", "content": "thanks"},
        ])
    );
}

fn feed(kind: ProviderKind, events: &[&str]) -> (String, StreamState) {
    let mut st = StreamState::default();
    let mut text = String::new();
    for e in events {
        let ev = SseEvent {
            event: None,
            data: (*e).to_owned(),
        };
        if let Some(t) = on_event(kind, &ev, &mut st).unwrap() {
            text.push_str(&t);
        }
    }
    (text, st)
}

#[test]
fn openai_tool_call_fragments_are_joined_per_index() {
    let (text, mut st) = feed(
        ProviderKind::Openai,
        &[
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":[{"index":0,"id":"call_a","type":"function","function":{"name":"weather","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"ci"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":1,"id":"call_b","type":"function","function":{"name":"time","arguments":""}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"ty\":\"Oslo\"}"}}]},"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{},"finish_reason":"tool_calls"}]}"#,
            r#"{"choices":[],"usage":{"prompt_tokens":5,"completion_tokens":7}}"#,
            "[DONE]",
        ],
    );
    assert_eq!(text, "");
    assert!(st.done);
    assert_eq!(st.stop_reason.as_deref(), Some("tool_calls"));
    assert_eq!(
        st.take_tool_calls(),
        vec![
            call("call_a", "weather", r#"{"city":"Oslo"}"#),
            call("call_b", "time", "{}"),
        ]
    );
    assert!(st.take_tool_calls().is_empty());
}

#[test]
fn anthropic_tool_use_blocks_are_joined_and_text_still_streams() {
    let (text, mut st) = feed(
        ProviderKind::Anthropic,
        &[
            r#"{"type":"message_start","message":{"usage":{"input_tokens":10,"output_tokens":1}}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Checking"}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"content_block_start","index":1,"content_block":{"type":"tool_use","id":"toolu_1","name":"weather","input":{}}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\": "}}"#,
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"\"Oslo\"}"}}"#,
            r#"{"type":"content_block_stop","index":1}"#,
            r#"{"type":"content_block_start","index":2,"content_block":{"type":"tool_use","id":"toolu_2","name":"time","input":{}}}"#,
            r#"{"type":"content_block_delta","index":2,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_stop","index":2}"#,
            r#"{"type":"message_delta","delta":{"stop_reason":"tool_use","stop_sequence":null},"usage":{"output_tokens":30}}"#,
            r#"{"type":"message_stop"}"#,
        ],
    );
    assert_eq!(text, "Checking");
    assert!(st.done);
    assert_eq!(st.stop_reason.as_deref(), Some("tool_use"));
    assert_eq!(st.usage.output_tokens, 30);
    assert_eq!(
        st.take_tool_calls(),
        vec![
            call("toolu_1", "weather", r#"{"city": "Oslo"}"#),
            call("toolu_2", "time", "{}"),
        ]
    );
}

#[test]
fn a_stream_of_endless_tool_calls_is_refused() {
    let mut st = StreamState::default();
    let mut failed = false;
    for i in 0..=MAX_STREAMED_TOOL_CALLS {
        let data = format!(
            r#"{{"choices":[{{"index":0,"delta":{{"tool_calls":[{{"index":{i},"id":"c{i}","function":{{"name":"f","arguments":"{{}}"}}}}]}}}}]}}"#
        );
        let ev = SseEvent { event: None, data };
        failed |= on_event(ProviderKind::Openai, &ev, &mut st).is_err();
    }
    assert!(failed);
    assert_eq!(st.tool_calls.len(), MAX_STREAMED_TOOL_CALLS);

    let mut st = StreamState::default();
    let start = r#"{"type":"content_block_start","index":0,"content_block":{"type":"tool_use","id":"t","name":"f","input":{}}}"#;
    let ev = |data: String| SseEvent { event: None, data };
    on_event(ProviderKind::Anthropic, &ev(start.into()), &mut st).unwrap();
    let piece = "x".repeat(64 * 1024);
    let delta = format!(
        r#"{{"type":"content_block_delta","index":0,"delta":{{"type":"input_json_delta","partial_json":"{piece}"}}}}"#
    );
    let fails = (0..=MAX_TOOL_ARGUMENT_BYTES / piece.len())
        .map(|_| on_event(ProviderKind::Anthropic, &ev(delta.clone()), &mut st).is_err())
        .filter(|e| *e)
        .count();
    assert_eq!(fails, 1);
}
