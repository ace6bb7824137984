//! The seeds' `ContextManager`: an agent's memory slots. The running conversation of a role
//! is kept within a token budget by a stated rule (the first message, the instruction, always
//! stays; past the budget the oldest whole turns after it are dropped, an assistant message
//! with the tool results that answer it going together, and the prompt says how many were
//! dropped); long-term notes outlive runs (one per run: what was asked, how it ended); the
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
    pub kb: Bm25Index,
    /// The conversation of the role now speaking.
    conversation: Vec<ChatMessage>,
    /// Messages dropped from it to stay within the budget.
    dropped: usize,
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
            kb,
            conversation: Vec::new(),
            dropped: 0,
            token_budget: CONVERSATION_TOKENS,
        }
    }

    /// Starts a role's conversation with `instruction`.
    pub fn begin(&mut self, instruction: String) {
        self.conversation = vec![ChatMessage::user(instruction)];
        self.dropped = 0;
    }

    pub fn push(&mut self, m: ChatMessage) {
        self.conversation.push(m);
        self.trim();
    }

    /// The rule: drop the oldest turn after the instruction until within the budget.
    fn trim(&mut self) {
        while self.conversation.iter().map(tokens).sum::<usize>() > self.token_budget
            && self.conversation.len() > 2
        {
            // A turn: one message, plus the tool results that answer it.
            let mut end = 2;
            while end < self.conversation.len() - 1 && self.conversation[end].role == "tool" {
                end += 1;
            }
            if end >= self.conversation.len() {
                break;
            }
            self.dropped += end - 1;
            self.conversation.drain(1..end);
        }
    }

    /// The messages to send.
    pub fn messages(&self) -> Vec<ChatMessage> {
        let mut out = self.conversation.clone();
        if self.dropped > 0 {
            if let Some(first) = out.first_mut() {
                first.content.push_str(&format!(
                    "\n\n[{} earlier messages of this conversation were dropped to stay within the context budget]",
                    self.dropped
                ));
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
        cm.token_budget = 100;
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
        assert!(m.iter().map(tokens).sum::<usize>() <= 100 + 40, "{m:?}");
        assert!(m[0].content.starts_with("the instruction"));
        assert!(m[0]
            .content
            .contains("earlier messages of this conversation were dropped"));
        // A tool result never loses the assistant message that called it.
        for (i, msg) in m.iter().enumerate().skip(1) {
            if msg.role == "tool" {
                assert_eq!(m[i - 1].role, "assistant", "{m:?}");
            }
        }
        assert!(m.last().unwrap().tool_call_id.as_deref() == Some("c19"));
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
