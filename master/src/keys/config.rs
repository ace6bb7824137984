//! `llm.toml`: the operator's file of providers (kind and base URL), per-provider limits
//! (budgets, rate buckets, concurrency) and the price table. Unknown keys are errors, like
//! `vgas.toml`. Without the file, `openai` and `anthropic` work at their public URLs with no
//! budget and the default concurrency cap.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

/// Concurrent calls per provider when llm.toml sets none: enough for a busy swarm, few
/// enough that a runaway agent cannot open hundreds of connections to a paid API.
pub const DEFAULT_MAX_CONCURRENT: u32 = 16;

/// Retries of a call answered 429 (rate limited) before the error is passed on.
pub const DEFAULT_MAX_RETRIES: u32 = 2;

/// The wire format a provider speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// OpenAI Chat Completions.
    Openai,
    /// Anthropic Messages.
    Anthropic,
    /// Any server speaking OpenAI Chat Completions (Ollama, vLLM, llama.cpp), by base URL.
    OpenaiCompatible,
}

/// Budgets and rate limits of one provider. Every field is optional: unset means unlimited
/// (concurrency: [`DEFAULT_MAX_CONCURRENT`]).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    pub daily_budget_usd: Option<f64>,
    pub monthly_budget_usd: Option<f64>,
    pub requests_per_minute: Option<u32>,
    pub tokens_per_minute: Option<u64>,
    pub max_concurrent: Option<u32>,
    pub max_retries: Option<u32>,
    /// What one master may spend on this provider while another master is silent (a
    /// partition): the most the budget can be exceeded by, per master but one [default: 5%
    /// of the smallest budget].
    pub partition_allowance_usd: Option<f64>,
}

/// Share of the smallest budget a master may spend while partitioned, when no allowance is
/// set: small enough that three masters cut apart overspend by a tenth at most.
pub const DEFAULT_PARTITION_SHARE: f64 = 0.05;

impl Limits {
    /// The partition allowance in micro-USD; `None` when the provider has no budget (there
    /// is nothing to overspend).
    pub fn partition_allowance_micro_usd(&self) -> Option<u64> {
        let smallest = [self.daily_budget_usd, self.monthly_budget_usd]
            .into_iter()
            .flatten()
            .reduce(f64::min)?;
        let usd = self
            .partition_allowance_usd
            .unwrap_or(smallest * DEFAULT_PARTITION_SHARE);
        Some((usd * 1e6).round().max(0.0) as u64)
    }
}

/// One provider.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    pub kind: ProviderKind,
    /// Base URL up to the version, e.g. `https://api.openai.com/v1`.
    pub base_url: String,
    /// Whether calls need a key from the vault (a local Ollama needs none).
    #[serde(default = "yes")]
    pub needs_key: bool,
    #[serde(default)]
    pub limits: Limits,
}

fn yes() -> bool {
    true
}

/// USD per million tokens of one model.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input: f64,
    pub output: f64,
    /// Cached input tokens; defaults to the input price.
    pub cached_input: Option<f64>,
}

impl Price {
    /// Cost in micro-USD (USD per million tokens times tokens is micro-USD exactly).
    pub fn cost_micro_usd(&self, u: &vgas_shared::llm::TokenUsage) -> u64 {
        let cached = u.cached_tokens.min(u.input_tokens);
        let fresh = u.input_tokens - cached;
        let c = fresh as f64 * self.input
            + cached as f64 * self.cached_input.unwrap_or(self.input)
            + u.output_tokens as f64 * self.output;
        c.round().max(0.0) as u64
    }
}

/// The whole file.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LlmConfig {
    #[serde(default)]
    pub providers: BTreeMap<String, ProviderConfig>,
    /// `[prices.<provider>."<model>"]`; the model `"*"` prices every model not named.
    #[serde(default)]
    pub prices: BTreeMap<String, BTreeMap<String, Price>>,
}

impl LlmConfig {
    /// Reads `path`; a missing file is the built-in default.
    pub fn load(path: &Path) -> Result<LlmConfig> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(LlmConfig::default()),
            Err(e) => return Err(e).with_context(|| format!("read {}", path.display())),
        };
        let cfg: LlmConfig =
            toml::from_str(&text).with_context(|| format!("parse {}", path.display()))?;
        for (name, p) in &cfg.providers {
            vgas_shared::vault::validate_provider(name)
                .with_context(|| format!("{}: provider name", path.display()))?;
            if !(p.base_url.starts_with("http://") || p.base_url.starts_with("https://")) {
                bail!(
                    "{}: provider {name}: base_url must start with http:// or https://",
                    path.display()
                );
            }
        }
        Ok(cfg)
    }

    /// The provider's settings: from the file, else the built-in `openai` and `anthropic`.
    pub fn provider(&self, name: &str) -> Option<ProviderConfig> {
        if let Some(p) = self.providers.get(name) {
            return Some(p.clone());
        }
        let (kind, url) = match name {
            "openai" => (ProviderKind::Openai, "https://api.openai.com/v1"),
            "anthropic" => (ProviderKind::Anthropic, "https://api.anthropic.com/v1"),
            _ => return None,
        };
        Some(ProviderConfig {
            kind,
            base_url: url.into(),
            needs_key: true,
            limits: Limits::default(),
        })
    }

    /// The price of a model, if the table has one.
    pub fn price(&self, provider: &str, model: &str) -> Option<Price> {
        let table = self.prices.get(provider)?;
        table.get(model).or_else(|| table.get("*")).copied()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgas_shared::llm::TokenUsage;

    #[test]
    fn parses_the_documented_example_and_prices_calls() {
        let text = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/llm.example.toml"),
        )
        .unwrap();
        let cfg: LlmConfig = toml::from_str(&text).unwrap();
        let p = cfg.price("openai", "gpt-4o-mini").unwrap();
        // 1M fresh input at $0.15, 1M cached at $0.075, 1M output at $0.60.
        let u = TokenUsage {
            input_tokens: 2_000_000,
            cached_tokens: 1_000_000,
            output_tokens: 1_000_000,
        };
        assert_eq!(p.cost_micro_usd(&u), 150_000 + 75_000 + 600_000);
        assert!(cfg.provider("ollama").is_some());
        assert_eq!(
            cfg.provider("anthropic").unwrap().kind,
            ProviderKind::Anthropic
        );
        assert!(cfg.provider("nobody").is_none());
        assert!(toml::from_str::<LlmConfig>(
            "[providers.x]\nkind='openai'\nbase_url='http://a'\nbudget=1"
        )
        .is_err());
    }
}
