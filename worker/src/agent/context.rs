//! The seeds' `ContextManager`: an agent's memory slots. The running conversation of a role
//! is kept within a token budget by a stated rule (the first message, the instruction, always
//! stays; past the budget the oldest whole turns after it are dropped, an assistant message
//! with the tool results that answer it going together, and each dropped message leaves a
//! one-line summary in the instruction, what was called, answered, told or returned, the
//! oldest summaries going first when they no longer fit either); long-term notes outlive runs (one per run: what was asked, how it ended); the
//! knowledge base's best chunks for the instruction go into the system prompt. Notes, the
//! last conversation and the stats persist in the agents KV bucket, so a restart of the
//! master, the worker or the server keeps them.

use std::time::Duration;

use async_nats::jetstream::kv::Store;
use futures::StreamExt as _;
use serde::{Deserialize, Serialize};
use vgas_shared::agent::{PerformanceStats, RoleSpec};
use vgas_shared::kb::{Bm25Index, Chunk};
use vgas_shared::llm::ChatMessage;

/// Tokens of conversation a role's prompt may carry (estimated at 4 bytes a token): room for
/// a few files and diagnostics, well within every current model's window.
pub const CONVERSATION_TOKENS: usize = 24_000;

/// Long-term notes kept per agent; the oldest go first.
pub const MAX_NOTES: usize = 50;

/// Knowledge-base chunks put into the system prompt.
pub const KB_PROMPT_CHUNKS: usize = 2;

/// One-line summaries of dropped messages kept at most, each at most `SUMMARY_CHARS` long: a
/// bounded part of the prompt, within the same token budget.
const MAX_SUMMARIES: usize = 24;
const SUMMARY_CHARS: usize = 100;

/// Messages of the last conversation kept in KV.
const MAX_SAVED_MESSAGES: usize = 64;

/// What persists in `memory.<agent>`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Memory {
    pub notes: Vec<String>,
    pub last_conversation: Vec<ChatMessage>,
}

/// An agent's memory slots and knowledge base, for one run.
#[derive(Debug)]
pub struct ContextManager {
    pub agent: String,
    pub memory: Memory,
    /// Shared with the `search_kb` tool of the run.
    pub kb: std::sync::Arc<Bm25Index>,
    /// The conversation of the role now speaking.
    conversation: Vec<ChatMessage>,
    /// Messages dropped from it to stay within the budget.
    dropped: usize,
    /// What the newest of them said, one line each.
    summaries: std::collections::VecDeque<String>,
    pub token_budget: usize,
}

fn tokens(m: &ChatMessage) -> usize {
    let calls: usize = m
        .tool_calls
        .iter()
        .map(|c| c.name.len() + c.arguments.len())
        .sum();
    (m.content.len() + calls).div_ceil(4) + 4
}

impl ContextManager {
    pub fn new(agent: &str, memory: Memory, kb: Bm25Index) -> ContextManager {
        ContextManager {
            agent: agent.to_owned(),
            memory,
            kb: std::sync::Arc::new(kb),
            conversation: Vec::new(),
            dropped: 0,
            summaries: Default::default(),
            token_budget: CONVERSATION_TOKENS,
        }
    }

    /// Starts a role's conversation with `instruction`.
    pub fn begin(&mut self, instruction: String) {
        self.conversation = vec![ChatMessage::user(instruction)];
        self.dropped = 0;
        self.summaries.clear();
    }

    pub fn push(&mut self, m: ChatMessage) {
        self.conversation.push(m);
        self.trim();
    }

    /// The rule: drop the oldest turn after the instruction (leaving its summaries), then the
    /// oldest summaries, until within the budget; the newest turn always stays whole.
    fn trim(&mut self) {
        loop {
            let used: usize = self.conversation.iter().map(tokens).sum::<usize>()
                + self
                    .summaries
                    .iter()
                    .map(|l| l.len().div_ceil(4) + 1)
                    .sum::<usize>();
            if used <= self.token_budget {
                return;
            }
            // A turn: one message, plus the tool results that answer it.
            let mut end = 2;
            while end < self.conversation.len() && self.conversation[end].role == "tool" {
                end += 1;
            }
            if self.conversation.len() > 2 && end < self.conversation.len() {
                self.dropped += end - 1;
                let gone: Vec<ChatMessage> = self.conversation.drain(1..end).collect();
                self.summaries.extend(gone.iter().flat_map(summarize));
                while self.summaries.len() > MAX_SUMMARIES {
                    self.summaries.pop_front();
                }
            } else if self.summaries.pop_front().is_none() {
                return;
            }
        }
    }

    /// The messages to send.
    pub fn messages(&self) -> Vec<ChatMessage> {
        let mut out = self.conversation.clone();
        if self.dropped > 0 {
            if let Some(first) = out.first_mut() {
                first.content.push_str(&format!(
                    "\n\n[{} earlier messages of this conversation were dropped to stay within the context budget; the latest of them, in order:",
                    self.dropped
                ));
                for line in &self.summaries {
                    first.content.push_str("\n- ");
                    first.content.push_str(line);
                }
                first.content.push(']');
            }
        }
        out
    }

    pub fn conversation(&self) -> &[ChatMessage] {
        &self.conversation
    }

    /// The system prompt of `role` for `instruction`: the role's prompt and answer shape, the
    /// long-term notes, and the knowledge base's best chunks.
    pub fn system_prompt(&self, role: &RoleSpec, instruction: &str) -> String {
        let mut s = role.system_prompt.trim().to_owned();
        if !role.output.trim().is_empty() {
            s.push_str("\n\n");
            s.push_str(role.output.trim());
        }
        if !self.memory.notes.is_empty() {
            s.push_str("\n\nNotes from earlier runs of this agent:");
            for n in &self.memory.notes {
                s.push_str("\n- ");
                s.push_str(n);
            }
        }
        let hits = self.kb.search(instruction, KB_PROMPT_CHUNKS);
        if !hits.is_empty() {
            s.push_str("\n\nFrom the knowledge base:");
            for (_, c) in hits {
                s.push_str(&format!("\n[{} #{}]\n{}", c.source, c.index, c.text));
            }
        }
        s
    }

    /// Adds a long-term note, keeping the newest [`MAX_NOTES`].
    pub fn note(&mut self, text: String) {
        self.memory.notes.push(text);
        let extra = self.memory.notes.len().saturating_sub(MAX_NOTES);
        self.memory.notes.drain(..extra);
    }

    /// Keeps the conversation of the role that spoke last for the memory.
    pub fn keep_conversation(&mut self) {
        let n = self.conversation.len().saturating_sub(MAX_SAVED_MESSAGES);
        self.memory.last_conversation = self.conversation[n..].to_vec();
    }
}

/// The one-line summaries a dropped message leaves.
fn summarize(m: &ChatMessage) -> Vec<String> {
    let cut = |s: &str| {
        let one: String = s.split_whitespace().collect::<Vec<_>>().join(" ");
        if one.len() <= SUMMARY_CHARS {
            one
        } else {
            format!("{}...", &one[..one.floor_char_boundary(SUMMARY_CHARS)])
        }
    };
    let mut out = Vec::new();
    match m.role.as_str() {
        "assistant" => {
            if !m.content.trim().is_empty() {
                out.push(cut(&format!("you answered: {}", m.content)));
            }
            for c in &m.tool_calls {
                out.push(cut(&format!("you called {}({})", c.name, c.arguments)));
            }
        }
        "tool" => out.push(cut(&format!("the tool returned: {}", m.content))),
        _ => out.push(cut(&format!("you were told: {}", m.content))),
    }
    out
}

fn memory_key(agent: &str) -> String {
    format!("memory.{agent}")
}

fn stats_key(agent: &str) -> String {
    format!("stats.{agent}")
}

/// The KV key prefix of an agent's knowledge base.
pub fn kb_prefix(agent: &str) -> String {
    format!("kb.{agent}.")
}

async fn get_json<T: for<'de> Deserialize<'de> + Default>(
    kv: &Store,
    key: &str,
) -> Result<T, String> {
    match kv.get(key).await {
        Ok(Some(b)) => serde_json::from_slice(&b).map_err(|e| format!("{key} is unreadable: {e}")),
        Ok(None) => Ok(T::default()),
        Err(e) => Err(format!("read {key}: {e}")),
    }
}

async fn put_json<T: Serialize>(kv: &Store, key: &str, v: &T) -> Result<(), String> {
    let b = serde_json::to_vec(v).map_err(|e| e.to_string())?;
    kv.put(key, b.into())
        .await
        .map(|_| ())
        .map_err(|e| format!("write {key}: {e}"))
}

/// Loads the agent's memory and knowledge base.
pub async fn load(kv: &Store, agent: &str) -> Result<ContextManager, String> {
    let memory: Memory = get_json(kv, &memory_key(agent)).await?;
    let prefix = kb_prefix(agent);
    let mut keys: Vec<String> = Vec::new();
    let mut listed = kv
        .keys()
        .await
        .map_err(|e| format!("list the knowledge base: {e}"))?;
    while let Some(k) = listed.next().await {
        let k = k.map_err(|e| format!("list the knowledge base: {e}"))?;
        if k.starts_with(&prefix) {
            keys.push(k);
        }
    }
    keys.sort();
    let mut chunks: Vec<Chunk> = Vec::new();
    for k in keys {
        let batch: Vec<Chunk> = get_json(kv, &k).await?;
        chunks.extend(batch);
    }
    Ok(ContextManager::new(agent, memory, Bm25Index::build(chunks)))
}

pub async fn save_memory(kv: &Store, cm: &ContextManager) -> Result<(), String> {
    put_json(kv, &memory_key(&cm.agent), &cm.memory).await
}

/// Read-modify-write of `stats.<agent>` with the KV revision as a guard, retried a few times
/// when two runs of one agent race.
pub async fn update_stats(kv: &Store, agent: &str, f: impl Fn(&mut PerformanceStats)) {
    let key = stats_key(agent);
    for _ in 0..5 {
        let (mut s, rev) = match kv.entry(&key).await {
            Ok(Some(e)) => (
                serde_json::from_slice::<PerformanceStats>(&e.value).unwrap_or_default(),
                Some(e.revision),
            ),
            Ok(None) => (PerformanceStats::default(), None),
            Err(e) => {
                tracing::warn!("agent {agent}: stats not read: {e}");
                return;
            }
        };
        s.agent = agent.to_owned();
        f(&mut s);
        let Ok(bytes) = serde_json::to_vec(&s) else {
            return;
        };
        let wrote = match rev {
            Some(r) => kv.update(&key, bytes.into(), r).await.is_ok(),
            None => kv.create(&key, bytes.into()).await.is_ok(),
        };
        if wrote {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tracing::warn!("agent {agent}: stats not written (contended)");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_conversation_stays_within_its_budget_by_dropping_the_oldest_turns() {
        let mut cm = ContextManager::new("a", Memory::default(), Bm25Index::build(Vec::new()));
        cm.token_budget = 200;
        cm.begin("the instruction".into());
        for i in 0..20 {
            cm.push(ChatMessage::assistant(
                format!("turn {i} {}", "x".repeat(80)),
                vec![vgas_shared::llm::ToolCall {
                    id: format!("c{i}"),
                    name: "list_files".into(),
                    arguments: "{}".into(),
                }],
            ));
            cm.push(ChatMessage::tool(format!("c{i}"), "ok"));
        }
        let m = cm.messages();
        // Within the budget, summaries included (the header line of the note is extra).
        assert!(m.iter().map(tokens).sum::<usize>() <= 200 + 30, "{m:?}");
        assert!(m[0].content.starts_with("the instruction"));
        let first = &m[0].content;
        assert!(first.contains("earlier messages of this conversation were dropped"));
        // The newest dropped turn is summarised: its call and its result.
        assert!(first.contains("you called list_files({})"), "{first}");
        assert!(first.contains("the tool returned: ok"), "{first}");
        // A tool result never loses the assistant message that called it.
        for (i, msg) in m.iter().enumerate().skip(1) {
            if msg.role == "tool" {
                assert_eq!(m[i - 1].role, "assistant", "{m:?}");
            }
        }
        assert!(m.last().unwrap().tool_call_id.as_deref() == Some("c19"));
    }

    #[test]
    fn a_turn_with_several_tool_results_is_dropped_whole() {
        let mut cm = ContextManager::new("a", Memory::default(), Bm25Index::build(Vec::new()));
        // Tight enough that the second result of a turn pushes the conversation over.
        cm.token_budget = 55;
        cm.begin("go".into());
        let call = |id: &str| vgas_shared::llm::ToolCall {
            id: id.into(),
            name: "read_file".into(),
            arguments: format!("{{\"path\":\"{}\"}}", "p".repeat(40)),
        };
        for t in 0..4 {
            let (a, b) = (format!("a{t}"), format!("b{t}"));
            cm.push(ChatMessage::assistant("", vec![call(&a), call(&b)]));
            cm.push(ChatMessage::tool(a, "x".repeat(30)));
            cm.push(ChatMessage::tool(b, "y".repeat(30)));
        }
        let m = cm.messages();
        assert!(cm.dropped > 0);
        // Every tool result follows the assistant message that called it, or another result.
        for (i, msg) in m.iter().enumerate().skip(1) {
            if msg.role == "tool" {
                assert!(
                    matches!(m[i - 1].role.as_str(), "assistant" | "tool"),
                    "{m:?}"
                );
            }
        }
        assert_eq!(m[1].role, "assistant", "{m:?}");
        assert_eq!(m.last().unwrap().tool_call_id.as_deref(), Some("b3"));
    }

    #[test]
    fn the_system_prompt_carries_notes_and_the_best_knowledge_base_chunk() {
        let kb = Bm25Index::build(vec![
            Chunk {
                source: "tcp.md".into(),
                index: 0,
                text: "TCP retransmission timers back off exponentially".into(),
            },
            Chunk {
                source: "arena.md".into(),
                index: 0,
                text: "An arena allocator frees everything at once".into(),
            },
        ]);
        let mut cm = ContextManager::new("a", Memory::default(), kb);
        cm.note("earlier: wrote a ring buffer".into());
        let role = vgas_shared::agent::builtin_roles().remove(0);
        let s = cm.system_prompt(&role, "write an arena allocator in C");
        assert!(s.contains("earlier: wrote a ring buffer"));
        assert!(s.contains("[arena.md #0]"), "{s}");
        assert!(s.find("arena.md") < s.find("tcp.md").or(Some(usize::MAX)));
    }
}
