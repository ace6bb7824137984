//! The providers' wire formats: building the HTTP request (OpenAI Chat Completions with
//! `stream_options.include_usage`, Anthropic Messages, OpenAI-compatible servers by base URL)
//! and reading their SSE streams into text, tool calls, usage and a stop reason.
//!
//! Tool calling is each provider's own: OpenAI's `tools` / `tool_calls` / `role: tool`
//! messages, Anthropic's `tools` with `input_schema`, `tool_use` blocks and `tool_result`
//! blocks in the next user turn. Streamed calls are put together in [`StreamState`] and
//! handed out whole by [`StreamState::take_tool_calls`].

use std::collections::BTreeMap;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use vgas_shared::llm::{ChatMessage, CompletionRequest, TokenUsage, ToolCall};

use super::sse::SseEvent;
use crate::keys::config::{ProviderConfig, ProviderKind};

/// The Messages API version vgas speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// A tool call being streamed: OpenAI's `delta.tool_calls[index]`, Anthropic's `tool_use`
/// content block at `index`.
#[derive(Debug, Default, Clone)]
pub struct PartialToolCall {
    pub id: String,
    pub name: String,
    /// The argument fragments so far, joined.
    pub arguments: String,
    /// Anthropic: a non-empty `input` given whole in `content_block_start`, used when no
    /// `input_json_delta` follows.
    pub start_input: Option<String>,
}

/// What a stream has said so far.
#[derive(Debug, Default, Clone)]
pub struct StreamState {
    pub usage: TokenUsage,
    pub stop_reason: Option<String>,
    pub done: bool,
    /// Whether the provider reported usage at all (OpenAI only does with include_usage).
    pub usage_seen: bool,
    /// Tool calls by the provider's index, in the order the model made them.
    pub tool_calls: BTreeMap<u64, PartialToolCall>,
    /// Bytes of tool-call arguments streamed so far ([`MAX_TOOL_ARGUMENT_BYTES`]).
    pub tool_argument_bytes: usize,
}

impl StreamState {
    /// The tool calls the stream carried, whole and in index order. Empty arguments (a call
    /// without any, as Anthropic streams it) are `{}`.
    pub fn take_tool_calls(&mut self) -> Vec<ToolCall> {
        std::mem::take(&mut self.tool_calls)
            .into_values()
            .map(|c| {
                let arguments = if !c.arguments.trim().is_empty() {
                    c.arguments
                } else {
                    c.start_input.unwrap_or_else(|| "{}".to_owned())
                };
                ToolCall {
                    id: c.id,
                    name: c.name,
                    arguments,
                }
            })
            .collect()
    }
}

/// OpenAI's `messages`: the system prompt first, then the chat with its tool calls and results.
fn openai_messages(system: &[&str], msgs: &[ChatMessage]) -> Vec<Value> {
    let mut out = Vec::new();
    if !system.is_empty() {
        out.push(json!({"role": "system", "content": system.join("\n\n")}));
    }
    for m in msgs.iter().filter(|m| m.role != "system") {
        out.push(match m.role.as_str() {
            "tool" => json!({
                "role": "tool",
                "tool_call_id": m.tool_call_id.as_deref().unwrap_or_default(),
                "content": m.content,
            }),
            "assistant" if !m.tool_calls.is_empty() => {
                let calls: Vec<Value> = m
                    .tool_calls
                    .iter()
                    .map(|c| {
                        json!({
                            "id": c.id,
                            "type": "function",
                            "function": {"name": c.name, "arguments": c.arguments},
                        })
                    })
                    .collect();
                let content = if m.content.is_empty() {
                    Value::Null
                } else {
                    json!(m.content)
                };
                json!({"role": "assistant", "content": content, "tool_calls": calls})
            }
            _ => json!({"role": m.role, "content": m.content}),
        });
    }
    out
}

/// Anthropic's `messages`: an assistant's tool calls as `tool_use` blocks (arguments that are
/// not JSON become `{}`), and each run of `tool` messages as one user turn of `tool_result`
/// blocks, as the Messages API wants the results right after the call.
fn anthropic_messages(msgs: &[ChatMessage]) -> Vec<Value> {
    let mut out: Vec<Value> = Vec::new();
    let mut in_results = false;
    for m in msgs.iter().filter(|m| m.role != "system") {
        if m.role == "tool" {
            let block = json!({
                "type": "tool_result",
                "tool_use_id": m.tool_call_id.as_deref().unwrap_or_default(),
                "content": m.content,
            });
            match out.last_mut() {
                Some(last) if in_results => {
                    if let Some(blocks) = last["content"].as_array_mut() {
                        blocks.push(block);
                    }
                }
                _ => out.push(json!({"role": "user", "content": [block]})),
            }
            in_results = true;
            continue;
        }
        in_results = false;
        if m.role == "assistant" && !m.tool_calls.is_empty() {
            let mut blocks = Vec::new();
            if !m.content.is_empty() {
                blocks.push(json!({"type": "text", "text": m.content}));
            }
            for c in &m.tool_calls {
                let input = serde_json::from_str::<Value>(&c.arguments)
                    .ok()
                    .filter(Value::is_object)
                    .unwrap_or_else(|| json!({}));
                blocks
                    .push(json!({"type": "tool_use", "id": c.id, "name": c.name, "input": input}));
            }
            out.push(json!({"role": "assistant", "content": blocks}));
        } else {
            out.push(json!({"role": m.role, "content": m.content}));
        }
    }
    out
}

/// The request for one call. The key is read here and nowhere else.
pub fn build(
    http: &reqwest::Client,
    p: &ProviderConfig,
    key: Option<&SecretString>,
    req: &CompletionRequest,
) -> reqwest::RequestBuilder {
    let base = p.base_url.trim_end_matches('/');
    let mut system: Vec<&str> = req.system.iter().map(String::as_str).collect();
    system.extend(
        req.messages
            .iter()
            .filter(|m| m.role == "system")
            .map(|m| m.content.as_str()),
    );
    match p.kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            let mut body = json!({
                "model": req.model,
                "messages": openai_messages(&system, &req.messages),
                "stream": true,
                "stream_options": {"include_usage": true},
            });
            if let Some(t) = req.max_tokens {
                let field = if p.kind == ProviderKind::Openai {
                    "max_completion_tokens"
                } else {
                    "max_tokens"
                };
                body[field] = json!(t);
            }
            if let Some(t) = req.temperature {
                body["temperature"] = json!(t);
            }
            if !req.tools.is_empty() {
                let tools: Vec<Value> = req
                    .tools
                    .iter()
                    .map(|t| {
                        json!({
                            "type": "function",
                            "function": {
                                "name": t.name,
                                "description": t.description,
                                "parameters": t.parameters,
                            },
                        })
                    })
                    .collect();
                body["tools"] = json!(tools);
            }
            let mut rb = http.post(format!("{base}/chat/completions")).json(&body);
            if let Some(k) = key {
                rb = rb.bearer_auth(k.expose_secret());
            }
            rb
        }
        ProviderKind::Anthropic => {
            let mut body = json!({
                "model": req.model,
                "max_tokens": req.max_tokens_or_default(),
                "messages": anthropic_messages(&req.messages),
                "stream": true,
            });
            if !system.is_empty() {
                body["system"] = json!(system.join("\n\n"));
            }
            if let Some(t) = req.temperature {
                body["temperature"] = json!(t);
            }
            if !req.tools.is_empty() {
                let tools: Vec<Value> = req
                    .tools
                    .iter()
                    .map(|t| {
                        json!({
                            "name": t.name,
                            "description": t.description,
                            "input_schema": t.parameters,
                        })
                    })
                    .collect();
                body["tools"] = json!(tools);
            }
            let mut rb = http
                .post(format!("{base}/messages"))
                .header("anthropic-version", ANTHROPIC_VERSION)
                .json(&body);
            if let Some(k) = key {
                rb = rb.header("x-api-key", k.expose_secret());
            }
            rb
        }
    }
}

fn u(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Tool calls one answer may stream: far more than any model makes in one turn; a stream
/// past it is broken or hostile and must not grow the master's memory.
pub const MAX_STREAMED_TOOL_CALLS: usize = 256;

/// The most bytes of arguments all tool calls of one answer may stream together (1 MiB, the
/// size of a whole request): the caller sends them back in its next request, which could not
/// be larger.
pub const MAX_TOOL_ARGUMENT_BYTES: usize = 1024 * 1024;

/// The call at `index`, opened on first sight.
fn tool_call_at(st: &mut StreamState, index: u64) -> Result<&mut PartialToolCall, String> {
    if !st.tool_calls.contains_key(&index) && st.tool_calls.len() >= MAX_STREAMED_TOOL_CALLS {
        return Err(format!(
            "the stream carried more than {MAX_STREAMED_TOOL_CALLS} tool calls"
        ));
    }
    Ok(st.tool_calls.entry(index).or_default())
}

/// Appends to the call at `index`, within [`MAX_TOOL_ARGUMENT_BYTES`] for the whole stream.
fn append_arguments(st: &mut StreamState, index: u64, fragment: &str) -> Result<(), String> {
    st.tool_argument_bytes += fragment.len();
    if st.tool_argument_bytes > MAX_TOOL_ARGUMENT_BYTES {
        return Err(format!(
            "the stream's tool calls have more than {MAX_TOOL_ARGUMENT_BYTES} bytes of arguments"
        ));
    }
    if let Some(call) = st.tool_calls.get_mut(&index) {
        call.arguments.push_str(fragment);
    }
    Ok(())
}

/// Reads one event: the text it adds, or the provider's error message. Tool calls and usage
/// go into `st`; the caller takes the calls once the stream has ended
/// ([`StreamState::take_tool_calls`]).
pub fn on_event(
    kind: ProviderKind,
    ev: &SseEvent,
    st: &mut StreamState,
) -> Result<Option<String>, String> {
    match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            if ev.data.trim() == "[DONE]" {
                st.done = true;
                return Ok(None);
            }
            let v: Value = serde_json::from_str(&ev.data)
                .map_err(|e| format!("unreadable stream event: {e}"))?;
            if let Some(err) = v.get("error") {
                return Err(err["message"].as_str().unwrap_or("error").to_owned());
            }
            if let Some(usage) = v.get("usage").filter(|x| x.is_object()) {
                st.usage = TokenUsage {
                    input_tokens: u(&usage["prompt_tokens"]),
                    output_tokens: u(&usage["completion_tokens"]),
                    cached_tokens: u(&usage["prompt_tokens_details"]["cached_tokens"]),
                };
                st.usage_seen = true;
            }
            let choice = &v["choices"][0];
            if let Some(r) = choice["finish_reason"].as_str() {
                st.stop_reason = Some(r.to_owned());
            }
            // The first fragment of a call names its id and function; the later ones only
            // append to `function.arguments`. `index` says which call a fragment belongs to
            // (a server that leaves it out is read by position).
            if let Some(calls) = choice["delta"]["tool_calls"].as_array() {
                for (i, c) in calls.iter().enumerate() {
                    let index = c["index"].as_u64().unwrap_or(i as u64);
                    let call = tool_call_at(st, index)?;
                    if let Some(id) = c["id"].as_str().filter(|x| !x.is_empty()) {
                        if call.id.is_empty() {
                            call.id = id.to_owned();
                        }
                    }
                    if let Some(n) = c["function"]["name"].as_str().filter(|x| !x.is_empty()) {
                        if call.name.is_empty() {
                            call.name = n.to_owned();
                        }
                    }
                    if let Some(a) = c["function"]["arguments"].as_str() {
                        append_arguments(st, index, a)?;
                    }
                }
            }
            Ok(choice["delta"]["content"]
                .as_str()
                .filter(|s| !s.is_empty())
                .map(str::to_owned))
        }
        ProviderKind::Anthropic => {
            let v: Value = serde_json::from_str(&ev.data)
                .map_err(|e| format!("unreadable stream event: {e}"))?;
            match v["type"].as_str().unwrap_or_default() {
                "message_start" => {
                    let us = &v["message"]["usage"];
                    let cached = u(&us["cache_read_input_tokens"]);
                    st.usage.input_tokens =
                        u(&us["input_tokens"]) + cached + u(&us["cache_creation_input_tokens"]);
                    st.usage.cached_tokens = cached;
                    st.usage.output_tokens = u(&us["output_tokens"]);
                    st.usage_seen = true;
                    Ok(None)
                }
                "content_block_delta" if v["delta"]["type"] == "text_delta" => {
                    Ok(v["delta"]["text"].as_str().map(str::to_owned))
                }
                // A `tool_use` block opens with its id and name and `input: {}`; the input
                // follows as `input_json_delta` fragments until `content_block_stop`.
                "content_block_start" if v["content_block"]["type"] == "tool_use" => {
                    let b = &v["content_block"];
                    let call = tool_call_at(st, u(&v["index"]))?;
                    call.id = b["id"].as_str().unwrap_or_default().to_owned();
                    call.name = b["name"].as_str().unwrap_or_default().to_owned();
                    call.start_input = b["input"]
                        .as_object()
                        .filter(|o| !o.is_empty())
                        .map(|o| Value::Object(o.clone()).to_string());
                    Ok(None)
                }
                "content_block_delta" if v["delta"]["type"] == "input_json_delta" => {
                    let fragment = v["delta"]["partial_json"].as_str().unwrap_or("");
                    append_arguments(st, u(&v["index"]), fragment)?;
                    Ok(None)
                }
                "message_delta" => {
                    if let Some(r) = v["delta"]["stop_reason"].as_str() {
                        st.stop_reason = Some(r.to_owned());
                    }
                    if let Some(o) = v["usage"]["output_tokens"].as_u64() {
                        // Cumulative, per the Messages streaming docs.
                        st.usage.output_tokens = o;
                    }
                    Ok(None)
                }
                "message_stop" => {
                    st.done = true;
                    Ok(None)
                }
                "error" => Err(v["error"]["message"].as_str().unwrap_or("error").to_owned()),
                _ => Ok(None),
            }
        }
    }
}

#[cfg(test)]
mod tests;
