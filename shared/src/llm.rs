//! Wire types of the LLM gateway: a worker's completion request on `<prefix>.llm.complete`,
//! the events streamed back on its reply subject, token usage, and the usage report on
//! `<prefix>.llm.usage`. JSON and MessagePack alike, as everywhere.

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

/// One message of a chat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ChatMessage {
    /// `user` or `assistant` (a `system` message is taken as the system prompt).
    pub role: String,
    pub content: String,
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
    /// Who asks (a worker id), for the audit log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub caller: Option<String>,
}

impl CompletionRequest {
    /// Checks what the master can check before spending anything.
    pub fn validate(&self) -> Result<(), VgaError> {
        let bad = |m: String| Err(VgaError::InvalidTask(m));
        if crate::vault::validate_provider(&self.provider).is_err() {
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
            if !matches!(m.role.as_str(), "user" | "assistant" | "system") {
                return bad(format!(
                    "message role {:?}: use user, assistant or system",
                    m.role
                ));
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
        let bytes: usize = self.messages.iter().map(|m| m.content.len()).sum::<usize>()
            + self.system.as_ref().map_or(0, String::len);
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
}

/// The answer on `<prefix>.llm.usage`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct UsageReport {
    pub rows: Vec<UsageRow>,
    pub rates: Vec<UsageRate>,
    pub providers: Vec<ProviderQuota>,
}
