//! One role speaking: the loop of model calls and tool calls for one instruction, under the
//! run's hard limits (budget, rounds, wall clock, cancel) and the loop detector, with every
//! call timed and metered into the run's [`Meter`].

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vgas_shared::agent::{AgentRun, RoleSpec, RunEnd, TranscriptEntry, LOOP_REPEATS};
use vgas_shared::llm::{ChatMessage, CompletionRequest, TokenUsage};
use vgas_shared::Subjects;

use super::context::{update_stats, ContextManager};
use super::llm::{self, CallError};
use super::tools::{self, Tools};

/// Response times kept for the percentiles.
pub const MAX_LATENCIES: usize = 256;

/// Most bytes of one transcript entry: the transcript is a record, not a second copy of every
/// file.
const MAX_TRANSCRIPT_TEXT: usize = 4096;

/// What a run has used so far, across its roles.
#[derive(Debug)]
pub struct Meter {
    pub spent_usd: f64,
    pub usage: TokenUsage,
    pub rounds: u32,
    pub calls: u64,
    pub latencies_ms: Vec<u64>,
    pub call_time: Duration,
    pub started: Instant,
    pub transcript: Vec<TranscriptEntry>,
    /// What each role has spent in this run, for the roles' own `max_cost_usd`.
    pub role_spent: std::collections::HashMap<String, f64>,
    /// Signatures of the latest tool calls, newest last.
    recent_calls: VecDeque<String>,
}

impl Default for Meter {
    fn default() -> Meter {
        Meter::new()
    }
}

impl Meter {
    pub fn new() -> Meter {
        Meter {
            spent_usd: 0.0,
            usage: TokenUsage::default(),
            rounds: 0,
            calls: 0,
            latencies_ms: Vec::new(),
            call_time: Duration::ZERO,
            started: Instant::now(),
            transcript: Vec::new(),
            role_spent: std::collections::HashMap::new(),
            recent_calls: VecDeque::new(),
        }
    }

    pub fn log(&mut self, role: &str, kind: &str, text: &str) {
        let mut text = text.to_owned();
        if text.len() > MAX_TRANSCRIPT_TEXT {
            text.truncate(text.floor_char_boundary(MAX_TRANSCRIPT_TEXT));
            text.push_str(" [...]");
        }
        self.transcript.push(TranscriptEntry {
            role: role.to_owned(),
            kind: kind.to_owned(),
            text,
        });
    }

    /// Records a tool call; true when it is the same call as the [`LOOP_REPEATS`] - 1 before.
    fn repeats(&mut self, name: &str, arguments: &str) -> bool {
        let sig = format!("{name} {}", arguments.trim());
        self.recent_calls.push_back(sig.clone());
        if self.recent_calls.len() > LOOP_REPEATS {
            self.recent_calls.pop_front();
        }
        self.recent_calls.len() == LOOP_REPEATS && self.recent_calls.iter().all(|s| *s == sig)
    }
}

/// Where a role's model calls go and under which limits.
pub struct Limits<'a> {
    /// The agents bucket, for the in-flight count of calls in the agent's stats.
    pub kv: Option<&'a async_nats::jetstream::kv::Store>,
    pub run: &'a AgentRun,
    pub client: &'a async_nats::Client,
    pub subjects: &'a Subjects,
    pub caller: String,
    pub cancel: CancellationToken,
    /// Sends one progress line to the task's stdout.
    pub progress: &'a (dyn Fn(String) + Sync),
}

impl std::fmt::Debug for Limits<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limits")
            .field("run", &self.run)
            .field("caller", &self.caller)
            .finish_non_exhaustive()
    }
}

/// What a role's turns work with: the memory, the tools, the limits and the run's meter.
#[derive(Debug)]
pub struct Turn<'a, 't> {
    pub cm: &'a mut ContextManager,
    pub tools: &'a mut Tools<'t>,
    pub limits: &'a Limits<'a>,
    pub meter: &'a mut Meter,
}

/// How a role's turn ended.
#[derive(Debug)]
pub enum Spoke {
    /// The role answered without calling a tool.
    Answer(String),
    /// A limit or failure ended the run.
    End(RunEnd),
}

/// Lets `role` speak until it answers: from a fresh conversation on `instruction` when
/// `fresh`, else continuing the conversation with `instruction` as the next user message.
pub async fn speak(
    role: &RoleSpec,
    instruction: String,
    fresh: bool,
    t: &mut Turn<'_, '_>,
) -> Spoke {
    let first =
        t.cm.conversation()
            .first()
            .map(|m| m.content.clone())
            .unwrap_or_default();
    let topic = if fresh { instruction.clone() } else { first };
    if fresh {
        t.cm.begin(instruction.clone());
    } else {
        t.cm.push(ChatMessage::user(instruction.clone()));
    }
    t.meter.log(&role.name, "instruction", &instruction);
    t.tools.allowed = role.tools.clone();
    let defs = tools::definitions(&role.tools);
    let run = t.limits.run;
    for _ in 0..role.max_rounds() {
        if t.meter.started.elapsed() >= run.wall() {
            return Spoke::End(RunEnd::Wall {
                message: format!("{} s", run.wall().as_secs()),
            });
        }
        if t.meter.rounds >= run.rounds() {
            return Spoke::End(RunEnd::Rounds {
                message: format!("the run's {} rounds are used", run.rounds()),
            });
        }
        let run_left = run.budget() - t.meter.spent_usd;
        if run_left <= 0.0 {
            return Spoke::End(RunEnd::Budget {
                message: format!(
                    "${:.6} of ${:.6} spent before the next call",
                    t.meter.spent_usd,
                    run.budget()
                ),
            });
        }
        let role_spent = t.meter.role_spent.get(&role.name).copied().unwrap_or(0.0);
        let role_left = role.limits.max_cost_usd.map(|c| c - role_spent);
        if role_left.is_some_and(|l| l <= 0.0) {
            return Spoke::End(RunEnd::Budget {
                message: format!(
                    "{} spent ${role_spent:.6} of its own ${:.6}",
                    role.name,
                    role.limits.max_cost_usd.unwrap_or(0.0)
                ),
            });
        }
        // The gateway refuses a call whose worst case is more than this: the run's budget
        // or the role's, whichever is less.
        let left = role_left.map_or(run_left, |r| r.min(run_left));
        let req = CompletionRequest {
            provider: run.provider.clone(),
            model: run.model.clone(),
            system: Some(t.cm.system_prompt(role, &topic)),
            messages: t.cm.messages(),
            max_tokens: Some(role.max_tokens()),
            temperature: None,
            tools: defs.clone(),
            max_cost_usd: Some(left),
            caller: Some(t.limits.caller.clone()),
        };
        t.meter.rounds += 1;
        let wall_left = run.wall().saturating_sub(t.meter.started.elapsed());
        let agent = &run.agent;
        if let Some(kv) = t.limits.kv {
            update_stats(kv, agent, |s| s.in_flight += 1).await;
        }
        let answer = tokio::select! {
            a = llm::complete(t.limits.client, t.limits.subjects, &req) => Some(a),
            _ = t.limits.cancel.cancelled() => None,
            _ = tokio::time::sleep(wall_left) => None,
        };
        if let Some(kv) = t.limits.kv {
            update_stats(kv, agent, |s| s.in_flight = s.in_flight.saturating_sub(1)).await;
        }
        let Some(answer) = answer else {
            return Spoke::End(if t.limits.cancel.is_cancelled() {
                RunEnd::Cancelled
            } else {
                RunEnd::Wall {
                    message: format!("{} s, during a model call", run.wall().as_secs()),
                }
            });
        };
        let answer = match answer {
            Ok(a) => a,
            Err(CallError::Quota(message)) => return Spoke::End(RunEnd::Budget { message }),
            Err(CallError::Other(message)) => return Spoke::End(RunEnd::Error { message }),
        };
        t.meter.calls += 1;
        t.meter.spent_usd += answer.cost_usd;
        *t.meter.role_spent.entry(role.name.clone()).or_default() += answer.cost_usd;
        t.meter.usage.input_tokens += answer.usage.input_tokens;
        t.meter.usage.output_tokens += answer.usage.output_tokens;
        t.meter.usage.cached_tokens += answer.usage.cached_tokens;
        t.meter.call_time += answer.elapsed;
        t.meter.latencies_ms.push(answer.elapsed.as_millis() as u64);
        if t.meter.latencies_ms.len() > MAX_LATENCIES {
            t.meter.latencies_ms.remove(0);
        }
        if !answer.text.is_empty() {
            t.meter.log(&role.name, "answer", &answer.text);
        }
        if answer.tool_calls.is_empty() {
            t.cm.push(ChatMessage::assistant(answer.text.clone(), Vec::new()));
            (t.limits.progress)(format!("[{}] answered", role.name));
            return Spoke::Answer(answer.text);
        }
        t.cm.push(ChatMessage::assistant(
            answer.text.clone(),
            answer.tool_calls.clone(),
        ));
        for call in &answer.tool_calls {
            t.meter.log(
                &role.name,
                "tool_call",
                &format!("{}({})", call.name, call.arguments),
            );
            (t.limits.progress)(format!("[{}] {}", role.name, call.name));
            if t.meter.repeats(&call.name, &call.arguments) {
                return Spoke::End(RunEnd::Loop {
                    message: format!(
                        "{} called {} with the same arguments {LOOP_REPEATS} times in a row",
                        role.name, call.name
                    ),
                });
            }
            let wall_left = run.wall().saturating_sub(t.meter.started.elapsed());
            let result = tokio::select! {
                r = t.tools.call(&call.name, &call.arguments) => r,
                _ = t.limits.cancel.cancelled() => return Spoke::End(RunEnd::Cancelled),
                _ = tokio::time::sleep(wall_left) => return Spoke::End(RunEnd::Wall {
                    message: format!("{} s, during the tool call {}", run.wall().as_secs(), call.name),
                }),
            };
            t.meter.log(&role.name, "tool_result", &result);
            t.cm.push(ChatMessage::tool(call.id.clone(), result));
        }
    }
    Spoke::End(RunEnd::Rounds {
        message: format!("{} used its {} rounds", role.name, role.max_rounds()),
    })
}
