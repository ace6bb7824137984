//! Wire types of the LLM gateway: a worker's completion request on `<prefix>.llm.complete`,
//! the events streamed back on its reply subject, token usage, and the usage report on
//! `<prefix>.llm.usage`. JSON and MessagePack alike, as everywhere.
//!
//! Tool calling is the providers' own: a request may offer `tools` (name, description, JSON
//! Schema of the arguments), the stream then carries `tool_call` events, and the caller sends
//! each result back as a `tool` message naming the call's id. The gateway translates both ways
//! to OpenAI's `tools` / `tool_calls` and Anthropic's `tool_use` / `tool_result` blocks.

use serde::{Deserialize, Serialize};

use crate::error::VgaError;

/// Largest completion request accepted (1 MiB): a prompt past this belongs in a file the
/// agent reads, not in one message.
pub const MAX_COMPLETION_REQUEST_BYTES: usize = 1024 * 1024;

/// Output tokens asked for when a request names none (Anthropic requires a number; the quota
/// check needs one to estimate the call).
pub const DEFAULT_MAX_TOKENS: u32 = 1024;

/// The most output tokens a request may ask for.
pub const MAX_MAX_TOKENS: u32 = 1_000_000;

/// Tools one request may offer: more is a prompt bloated past use.
pub const MAX_TOOLS: usize = 64;

/// One message of a chat.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `user`, `assistant` or `tool` (a `system` message is taken as the system prompt).
    pub role: String,
    #[serde(default)]
    pub content: String,
    /// The tools an `assistant` message called, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tool_calls: Vec<ToolCall>,
    /// On a `tool` message: the id of the call this is the result of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tool_call_id: Option<String>,
}

impl ChatMessage {
    pub fn user(content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "user".into(),
            content: content.into(),
            ..Default::default()
        }
    }

    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> ChatMessage {
        ChatMessage {
            role: "assistant".into(),
            content: content.into(),
            tool_calls,
            tool_call_id: None,
        }
    }

    /// The result of the call `id`.
    pub fn tool(id: impl Into<String>, content: impl Into<String>) -> ChatMessage {
        ChatMessage {
            role: "tool".into(),
            content: content.into(),
            tool_calls: Vec::new(),
            tool_call_id: Some(id.into()),
        }
    }
}

/// A tool offered to the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolDef {
    pub name: String,
    pub description: String,
    /// JSON Schema of the arguments object.
    pub parameters: serde_json::Value,
}

/// A call the model made: `arguments` is the JSON text exactly as the model wrote it (it may
/// be malformed; the caller answers that with a message the model can correct).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ToolCall {
    pub id: String,
    pub name: String,
    pub arguments: String,
}

/// A completion request from a worker (or anyone holding the worker role).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompletionRequest {
    /// A provider configured on the master (`openai`, `anthropic`, or a name from llm.toml).
    pub provider: String,
    pub model: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub system: Option<String>,
    pub messages: Vec<ChatMessage>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub temperature: Option<f32>,
    /// Tools the model may call.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolDef>,
    /// The most this one call may cost: the gateway refuses it, before any request, when the
    /// worst case (the input estimate and `max_tokens` at the model's prices) is more. How an
    /// agent run keeps within its budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
    /// Who asks (a worker id), for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl CompletionRequest {
    /// Checks what the master can check before spending anything.
    pub fn validate(&self) -> Result<(), VgaError> {
        let bad = |m: String| Err(VgaError::InvalidTask(m));
        if !is_provider_name(&self.provider) {
            return bad(format!("provider {:?} is not a valid name", self.provider));
        }
        if self.model.is_empty()
            || self.model.len() > 256
            || self.model.chars().any(char::is_control)
        {
            return bad("model must be 1 to 256 characters without control characters".into());
        }
        if self.messages.is_empty() {
            return bad("messages must not be empty".into());
        }
        for m in &self.messages {
            if !matches!(m.role.as_str(), "user" | "assistant" | "system" | "tool") {
                return bad(format!(
                    "message role {:?}: use user, assistant, system or tool",
                    m.role
                ));
            }
            if m.role == "tool" && m.tool_call_id.is_none() {
                return bad("a tool message must name its tool_call_id".into());
            }
            if !m.tool_calls.is_empty() && m.role != "assistant" {
                return bad("only an assistant message carries tool_calls".into());
            }
        }
        if self.tools.len() > MAX_TOOLS {
            return bad(format!("at most {MAX_TOOLS} tools"));
        }
        for t in &self.tools {
            let ok = !t.name.is_empty()
                && t.name.len() <= 64
                && t.name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
            if !ok {
                return bad(format!(
                    "tool name {:?}: 1 to 64 of A-Z a-z 0-9 _ -",
                    t.name
                ));
            }
            if !t.parameters.is_object() {
                return bad(format!(
                    "tool {}: parameters must be a JSON Schema object",
                    t.name
                ));
            }
        }
        if let Some(c) = self.max_cost_usd {
            if !c.is_finite() || c < 0.0 {
                return bad("max_cost_usd must be a number of 0 or more".into());
            }
        }
        if let Some(t) = self.max_tokens {
            if t == 0 || t > MAX_MAX_TOKENS {
                return bad(format!("max_tokens must be 1 to {MAX_MAX_TOKENS}"));
            }
        }
        if let Some(c) = &self.caller {
            if c.len() > 64 || c.chars().any(char::is_control) {
                return bad("caller must be at most 64 characters".into());
            }
        }
        Ok(())
    }

    /// Output tokens this request may use.
    pub fn max_tokens_or_default(&self) -> u32 {
        self.max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)
    }

    /// A rough input token count (4 bytes a token), used only to reserve rate-limit room
    /// before the provider reports the real number.
    pub fn estimated_input_tokens(&self) -> u64 {
        let bytes: usize = self
            .messages
            .iter()
            .map(|m| {
                m.content.len()
                    + m.tool_calls
                        .iter()
                        .map(|c| c.name.len() + c.arguments.len())
                        .sum::<usize>()
            })
            .sum::<usize>()
            + self.system.as_ref().map_or(0, String::len)
            + self
                .tools
                .iter()
                .map(|t| t.name.len() + t.description.len() + t.parameters.to_string().len())
                .sum::<usize>();
        (bytes as u64).div_ceil(4)
    }
}

/// Tokens of one call as the provider reported them. `input_tokens` includes the cached ones.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenUsage {
    #[serde(default)]
    pub input_tokens: u64,
    #[serde(default)]
    pub output_tokens: u64,
    /// Input tokens served from the provider's prompt cache (billed at a lower price).
    #[serde(default)]
    pub cached_tokens: u64,
}

impl TokenUsage {
    pub fn total(&self) -> u64 {
        self.input_tokens + self.output_tokens
    }
}

/// One message on a completion's reply subject. A refusal or failure is instead the usual
/// error reply, `{"error":{"code":...,"message":...}}`, and nothing follows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CompletionEvent {
    /// A piece of the answer, in order.
    Delta { text: String },
    /// A whole tool call, once the provider has streamed all of it (before `done`).
    ToolCall(ToolCall),
    /// The end: what the provider reported, and what it cost.
    Done {
        provider: String,
        model: String,
        usage: TokenUsage,
        cost_usd: f64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_reason: Option<String>,
        /// HTTP attempts made (more than 1 after a 429 was retried).
        attempts: u32,
    },
}

/// Usage of one provider and model on one UTC day.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub provider: String,
    pub model: String,
    /// `YYYY-MM-DD`, UTC.
    pub day: String,
    pub requests: u64,
    #[serde(default)]
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_usd: f64,
    /// True when the model has no price in llm.toml (its cost counts as 0).
    #[serde(default)]
    pub unpriced: bool,
}

/// Rates over the last minute for one provider and model.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageRate {
    pub provider: String,
    pub model: String,
    pub requests_per_s: f64,
    pub tokens_per_s: f64,
}

/// Budget and limiter state of one provider.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ProviderQuota {
    pub provider: String,
    /// Whether a call can be made: configured, and a key is stored if it needs one.
    #[serde(default)]
    pub ready: bool,
    pub spent_today_usd: f64,
    pub spent_month_usd: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub daily_budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub monthly_budget_usd: Option<f64>,
    pub in_flight: u64,
    /// Set while the provider's own headers say to wait (ms since the epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blocked_until_ms: Option<u64>,
    /// Set while the answering master is cut off from another (a partition).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<PartitionSpend>,
}

/// What a partition has let the answering master spend on a provider.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct PartitionSpend {
    /// The masters it has not heard from.
    pub silent_masters: Vec<String>,
    pub for_ms: u64,
    /// Its own spend on the provider since.
    pub spent_usd: f64,
    /// The most it may spend meanwhile; `None` without a budget.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allowance_usd: Option<f64>,
}

/// The answer on `<prefix>.llm.usage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub rows: Vec<UsageRow>,
    pub rates: Vec<UsageRate>,
    pub providers: Vec<ProviderQuota>,
    /// The master that answered (every master serves LLM calls and keeps the merged usage).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub answered_by: String,
    /// Other masters whose usage this one has heard lately (each publishes it every 0.5 s):
    /// the masters a partition would be noticed against.
    #[serde(default)]
    pub masters_heard: usize,
}

/// A provider's name: 1 to 64 letters, digits, `-` or `_` (also the vault's entry name).
pub fn is_provider_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}
