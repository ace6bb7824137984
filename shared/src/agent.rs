//! AI agents as data: a role is a TOML file (name, system prompt, the tools it may call, the
//! shape of its answer, its limits), an agent run is a task (`kind: "agent"`) carrying an
//! [`AgentRun`], and what a run returns is a [`ResponseResult`]; [`PerformanceStats`] is what
//! `vgas agent stats` and `vgas status` show per agent. The seeds' common agent interface
//! (`execute_instruction`, `update_context`, `query_performance`) is implemented on the
//! worker, which runs agents; these are the types both ends share.

use serde::{Deserialize, Serialize};

use crate::error::VgaError;
use crate::llm::TokenUsage;

/// The built-in roles, as shipped in `shared/roles/`.
pub const BUILTIN_ROLES: [&str; 4] = [
    include_str!("../roles/architect.toml"),
    include_str!("../roles/programmer.toml"),
    include_str!("../roles/reviewer.toml"),
    include_str!("../roles/tester.toml"),
];

/// Every tool an agent can be given. A role naming any other is refused when loaded.
pub const TOOL_NAMES: [&str; 6] = [
    "read_file",
    "write_file",
    "list_files",
    "build",
    "run_command",
    "search_kb",
];

/// Rounds (model calls) one role may take when its file names no limit.
pub const DEFAULT_ROLE_ROUNDS: u32 = 8;

/// Output tokens per call when a role names no limit.
pub const DEFAULT_ROLE_TOKENS: u32 = 2048;

/// A run's spending budget when the submitter names none (US dollars).
pub const DEFAULT_RUN_BUDGET_USD: f64 = 1.0;

/// A run's round limit (model calls over all roles) when the submitter names none.
pub const DEFAULT_RUN_ROUNDS: u32 = 40;

/// A run's wall-clock limit when the submitter names none.
pub const DEFAULT_RUN_WALL_S: u64 = 900;

/// Programmer rounds after a failed build before the run gives up, when none is named.
pub const DEFAULT_REPAIR_ROUNDS: u32 = 3;

/// The same tool call with the same arguments this many times in a row is a loop.
pub const LOOP_REPEATS: usize = 3;

/// Agent names: they key memory and knowledge bases in KV, so they are KV-key safe.
pub fn validate_agent_name(name: &str) -> Result<(), VgaError> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if ok {
        Ok(())
    } else {
        Err(VgaError::InvalidTask(format!(
            "agent name {name:?}: 1 to 64 of A-Z a-z 0-9 _ -"
        )))
    }
}

/// Limits a role file may set.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleLimits {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    /// Output tokens per call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_tokens: Option<u32>,
    /// The most this role may spend in one run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_cost_usd: Option<f64>,
}

/// A role, as its TOML file says.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleSpec {
    pub name: String,
    #[serde(default)]
    pub description: String,
    pub system_prompt: String,
    /// Tool names from [`TOOL_NAMES`].
    #[serde(default)]
    pub tools: Vec<String>,
    /// The shape of the answer, told to the model after the system prompt.
    #[serde(default)]
    pub output: String,
    #[serde(default)]
    pub limits: RoleLimits,
}

impl RoleSpec {
    /// Parses and checks a role file.
    pub fn from_toml(text: &str) -> Result<RoleSpec, VgaError> {
        let role: RoleSpec = toml::from_str(text)
            .map_err(|e| VgaError::Config(format!("role file: {}", e.message())))?;
        role.validate()?;
        Ok(role)
    }

    pub fn validate(&self) -> Result<(), VgaError> {
        validate_agent_name(&self.name).map_err(|_| {
            VgaError::Config(format!(
                "role name {:?}: 1 to 64 of A-Z a-z 0-9 _ -",
                self.name
            ))
        })?;
        if self.system_prompt.trim().is_empty() {
            return Err(VgaError::Config(format!(
                "role {}: system_prompt is empty",
                self.name
            )));
        }
        for t in &self.tools {
            if !TOOL_NAMES.contains(&t.as_str()) {
                return Err(VgaError::Config(format!(
                    "role {}: unknown tool {t:?} (known: {})",
                    self.name,
                    TOOL_NAMES.join(", ")
                )));
            }
        }
        Ok(())
    }

    pub fn max_rounds(&self) -> u32 {
        self.limits.max_rounds.unwrap_or(DEFAULT_ROLE_ROUNDS)
    }

    pub fn max_tokens(&self) -> u32 {
        self.limits.max_tokens.unwrap_or(DEFAULT_ROLE_TOKENS)
    }
}

/// The built-in roles, parsed.
pub fn builtin_roles() -> Vec<RoleSpec> {
    BUILTIN_ROLES
        .iter()
        .map(|t| RoleSpec::from_toml(t).expect("the built-in roles parse"))
        .collect()
}

/// What an agent task runs: one instruction through a pipeline of roles.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentRun {
    pub instruction: String,
    /// The agent's name: its memory and knowledge base in KV, its line in `vgas agent stats`.
    #[serde(default = "default_agent")]
    pub agent: String,
    /// A provider configured on the master (`openai`, `anthropic`, or a name in llm.toml).
    pub provider: String,
    pub model: String,
    /// Role names, in order: the default pipeline is architect, programmer (with the build
    /// and its repair rounds), tester. A single role runs alone.
    #[serde(default = "default_pipeline")]
    pub pipeline: Vec<String>,
    /// Roles beyond (or replacing) the built-in ones, as their files say.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<RoleSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget_usd: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_rounds: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wall_s: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub repair_rounds: Option<u32>,
}

fn default_agent() -> String {
    "default".into()
}

fn default_pipeline() -> Vec<String> {
    AgentRun::default_pipeline()
}

impl AgentRun {
    /// Architect, Programmer, Tester.
    pub fn default_pipeline() -> Vec<String> {
        vec!["architect".into(), "programmer".into(), "tester".into()]
    }

    pub fn validate(&self) -> Result<(), VgaError> {
        let bad = |m: String| Err(VgaError::InvalidTask(m));
        if self.instruction.trim().is_empty() {
            return bad("an agent run needs an instruction".into());
        }
        validate_agent_name(&self.agent)?;
        if self.pipeline.is_empty() {
            return bad("the pipeline names no role".into());
        }
        for r in &self.roles {
            r.validate()
                .map_err(|e| VgaError::InvalidTask(e.to_string()))?;
        }
        let known = |n: &str| {
            self.roles.iter().any(|r| r.name == n) || builtin_roles().iter().any(|r| r.name == n)
        };
        for n in &self.pipeline {
            if !known(n) {
                return bad(format!("the pipeline names an unknown role {n:?}"));
            }
        }
        if let Some(b) = self.budget_usd {
            if !b.is_finite() || b <= 0.0 {
                return bad("budget_usd must be more than 0".into());
            }
        }
        Ok(())
    }

    /// The role called `name`: the run's own first, else the built-in one.
    pub fn role(&self, name: &str) -> Option<RoleSpec> {
        self.roles
            .iter()
            .find(|r| r.name == name)
            .cloned()
            .or_else(|| builtin_roles().into_iter().find(|r| r.name == name))
    }

    pub fn budget(&self) -> f64 {
        self.budget_usd.unwrap_or(DEFAULT_RUN_BUDGET_USD)
    }

    pub fn rounds(&self) -> u32 {
        self.max_rounds.unwrap_or(DEFAULT_RUN_ROUNDS)
    }

    pub fn wall(&self) -> std::time::Duration {
        std::time::Duration::from_secs(self.wall_s.unwrap_or(DEFAULT_RUN_WALL_S))
    }

    pub fn repairs(&self) -> u32 {
        self.repair_rounds.unwrap_or(DEFAULT_REPAIR_ROUNDS)
    }
}

/// Why a run ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum RunEnd {
    /// Every role finished; the build and the tests (when in the pipeline) passed.
    Passed,
    /// A role finished but its work failed: the build after the last repair round, or the
    /// Tester's test.
    Failed {
        message: String,
    },
    /// The next call could cost more than the budget left.
    Budget {
        message: String,
    },
    /// The run's or a role's round limit.
    Rounds {
        message: String,
    },
    /// The wall-clock limit.
    Wall {
        message: String,
    },
    /// The same tool call again and again with no progress.
    Loop {
        message: String,
    },
    /// The gateway or provider failed.
    Error {
        message: String,
    },
    Cancelled,
}

impl RunEnd {
    pub fn passed(&self) -> bool {
        matches!(self, RunEnd::Passed)
    }

    /// One line for people.
    pub fn describe(&self) -> String {
        match self {
            RunEnd::Passed => "passed".into(),
            RunEnd::Cancelled => "cancelled".into(),
            RunEnd::Failed { message } => format!("failed: {message}"),
            RunEnd::Budget { message } => format!("stopped by the budget: {message}"),
            RunEnd::Rounds { message } => format!("stopped by the round limit: {message}"),
            RunEnd::Wall { message } => format!("stopped by the wall-clock limit: {message}"),
            RunEnd::Loop { message } => format!("stopped as a loop: {message}"),
            RunEnd::Error { message } => format!("error: {message}"),
        }
    }
}

/// One line of a run's transcript.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TranscriptEntry {
    /// The role speaking or being answered.
    pub role: String,
    /// `instruction`, `answer`, `tool_call`, `tool_result`, `build`, `note`.
    pub kind: String,
    pub text: String,
}

/// What `execute_instruction` returns: the final answer, the artifacts, the transcript, what
/// it cost and why it ended. Also the `response.json` artifact of an agent task.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ResponseResult {
    pub agent: String,
    pub answer: String,
    pub end: RunEnd,
    /// Workspace files, relative paths (they come back as the task's artifacts).
    pub artifacts: Vec<String>,
    /// Compiler diagnostics of the last build, if any.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub diagnostics: String,
    pub transcript: Vec<TranscriptEntry>,
    pub usage: TokenUsage,
    pub cost_usd: f64,
    pub rounds: u32,
}

/// What `query_performance` returns, per agent: kept in KV and shown by `vgas agent stats`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PerformanceStats {
    pub agent: String,
    pub runs: u64,
    pub calls: u64,
    /// CPU time the agent's runs spent on the worker (its own work, not the model's).
    pub cpu_ms: u64,
    /// Response time of model calls: first request byte to the end of the stream.
    pub p50_ms: u64,
    pub p90_ms: u64,
    pub p99_ms: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    /// Tokens per second of call time, in and out.
    pub tokens_in_per_s: f64,
    pub tokens_out_per_s: f64,
    /// Calls in progress now.
    pub in_flight: u64,
    pub cost_usd: f64,
    /// ms since the epoch of the last update.
    pub updated_ms: u64,
    /// Total time of all calls, for the rates.
    #[serde(default)]
    pub call_ms: u64,
    /// The latest response times (at most 256), for the percentiles.
    #[serde(default)]
    pub recent_ms: Vec<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_builtin_roles_parse_and_name_known_tools() {
        let roles = builtin_roles();
        let names: Vec<&str> = roles.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(names, ["architect", "programmer", "reviewer", "tester"]);
        assert!(roles[1].tools.contains(&"build".to_string()));
    }

    #[test]
    fn a_role_with_an_unknown_tool_is_refused_with_the_known_ones() {
        let e = RoleSpec::from_toml("name = \"x\"\nsystem_prompt = \"p\"\ntools = [\"rm_rf\"]\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown tool \"rm_rf\"") && e.contains("write_file"),
            "{e}"
        );
    }

    #[test]
    fn a_run_naming_an_unknown_role_is_refused() {
        let run: AgentRun = serde_json::from_str(
            r#"{"instruction":"x","provider":"openai","model":"m","pipeline":["poet"]}"#,
        )
        .unwrap();
        assert!(run.validate().unwrap_err().to_string().contains("poet"));
        let ok: AgentRun =
            serde_json::from_str(r#"{"instruction":"x","provider":"openai","model":"m"}"#).unwrap();
        ok.validate().unwrap();
        assert_eq!(ok.pipeline, ["architect", "programmer", "tester"]);
    }
}
