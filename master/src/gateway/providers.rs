//! The providers' wire formats: building the HTTP request (OpenAI Chat Completions with
//! `stream_options.include_usage`, Anthropic Messages, OpenAI-compatible servers by base URL)
//! and reading their SSE streams into text, usage and a stop reason.

use secrecy::{ExposeSecret, SecretString};
use serde_json::{json, Value};
use vgas_shared::llm::{CompletionRequest, TokenUsage};

use super::sse::SseEvent;
use crate::keys::config::{ProviderConfig, ProviderKind};

/// The Messages API version vgas speaks.
pub const ANTHROPIC_VERSION: &str = "2023-06-01";

/// What a stream has said so far.
#[derive(Debug, Default, Clone)]
pub struct StreamState {
    pub usage: TokenUsage,
    pub stop_reason: Option<String>,
    pub done: bool,
    /// Whether the provider reported usage at all (OpenAI only does with include_usage).
    pub usage_seen: bool,
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
    let chat: Vec<Value> = req
        .messages
        .iter()
        .filter(|m| m.role != "system")
        .map(|m| json!({"role": m.role, "content": m.content}))
        .collect();
    match p.kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => {
            let mut messages = Vec::new();
            if !system.is_empty() {
                messages.push(json!({"role": "system", "content": system.join("\n\n")}));
            }
            messages.extend(chat);
            let mut body = json!({
                "model": req.model,
                "messages": messages,
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
                "messages": chat,
                "stream": true,
            });
            if !system.is_empty() {
                body["system"] = json!(system.join("\n\n"));
            }
            if let Some(t) = req.temperature {
                body["temperature"] = json!(t);
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

/// Reads one event: the text it adds, or the provider's error message.
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
