//! An agent's model calls: a `CompletionRequest` to the master's gateway on
//! `<prefix>.llm.complete` with a private reply inbox, its stream of text and tool calls read
//! to the `done` event (or the gateway's one error reply), timed for the agent's stats. The
//! worker never sees a provider key: the gateway holds them.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use vgas_shared::codec::{decode_as, encode, Reply};
use vgas_shared::error::WireError;
use vgas_shared::llm::{CompletionEvent, CompletionRequest, TokenUsage, ToolCall};
use vgas_shared::{Encoding, ErrorCode, Subjects};

/// How long the gateway may stay silent before a call is given up: longer than the gateway's
/// own provider read timeout (120 s), so the gateway's error arrives first.
pub const CALL_SILENCE_TIMEOUT: Duration = Duration::from_secs(150);

/// One finished call.
#[derive(Debug, Clone, Default)]
pub struct Answer {
    pub text: String,
    pub tool_calls: Vec<ToolCall>,
    pub usage: TokenUsage,
    pub cost_usd: f64,
    pub stop_reason: Option<String>,
    /// First request byte to the `done` event.
    pub elapsed: Duration,
}

/// Why a call gave no answer.
#[derive(Debug, Clone)]
pub enum CallError {
    /// The gateway refused on quota or budget before spending anything.
    Quota(String),
    /// Anything else: the provider, the gateway, the connection.
    Other(String),
}

impl std::fmt::Display for CallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CallError::Quota(m) | CallError::Other(m) => f.write_str(m),
        }
    }
}

/// Makes one call through the gateway.
pub async fn complete(
    client: &async_nats::Client,
    subjects: &Subjects,
    req: &CompletionRequest,
) -> Result<Answer, CallError> {
    let started = Instant::now();
    let inbox = client.new_inbox();
    let mut sub = client
        .subscribe(inbox.clone())
        .await
        .map_err(|e| CallError::Other(format!("subscribe to the reply inbox: {e}")))?;
    let bytes = encode(Encoding::MsgPack, req)
        .map_err(|e| CallError::Other(format!("encode the request: {e}")))?;
    client
        .publish_with_reply(subjects.llm_complete(), inbox, bytes.into())
        .await
        .map_err(|e| CallError::Other(format!("send the request to the gateway: {e}")))?;
    let mut answer = Answer::default();
    loop {
        let msg = match tokio::time::timeout(CALL_SILENCE_TIMEOUT, sub.next()).await {
            Ok(Some(m)) => m,
            Ok(None) => return Err(CallError::Other("the reply inbox closed".into())),
            Err(_) => {
                return Err(CallError::Other(format!(
                    "the gateway said nothing for {} s (is a master running?)",
                    CALL_SILENCE_TIMEOUT.as_secs()
                )))
            }
        };
        let ev: Reply<CompletionEvent> = decode_as(Encoding::MsgPack, &msg.payload)
            .map_err(|e| CallError::Other(format!("unreadable gateway event: {e}")))?;
        match ev.into_result() {
            Ok(CompletionEvent::Delta { text }) => answer.text.push_str(&text),
            Ok(CompletionEvent::ToolCall(call)) => answer.tool_calls.push(call),
            Ok(CompletionEvent::Done {
                usage,
                cost_usd,
                stop_reason,
                ..
            }) => {
                answer.usage = usage;
                answer.cost_usd = cost_usd;
                answer.stop_reason = stop_reason;
                answer.elapsed = started.elapsed();
                return Ok(answer);
            }
            Err(WireError {
                code: ErrorCode::QuotaExceeded,
                message,
            }) => return Err(CallError::Quota(message)),
            Err(e) => return Err(CallError::Other(e.to_string())),
        }
    }
}
