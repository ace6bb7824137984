//! A fake LLM provider for the gateway tests: a tokio `TcpListener` speaking HTTP/1.1 that
//! records every request and answers from a script, streaming SSE bodies in chunked transfer
//! encoding byte for byte as OpenAI and Anthropic document them, with their headers.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// A request as the server received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub method: String,
    pub path: String,
    /// Names lower-cased.
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Recorded {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("request body is JSON")
    }
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub struct Scripted {
    /// Pause after each chunk of a chunked answer, so streaming is observable (zero in the
    /// benchmark).
    pub pace: Duration,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// Sent as separate chunks (SSE) when `chunked`, else as one body with Content-Length.
    pub chunks: Vec<String>,
    pub chunked: bool,
}

/// Default pause between streamed chunks.
pub const STREAM_PACE: Duration = Duration::from_millis(5);

/// The server; stops when dropped.
#[derive(Debug)]
pub struct FakeProvider {
    pub port: u16,
    pub requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Scripted>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeProvider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeProvider {
    pub async fn start() -> FakeProvider {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::new()));
        let (r, s) = (requests.clone(), script.clone());
        let task = tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                // Each SSE event is its own small write: without this, Nagle's algorithm and
                // the peer's delayed ACK add about 40 ms per response.
                let _ = conn.set_nodelay(true);
                tokio::spawn(serve(conn, r.clone(), s.clone()));
            }
        });
        FakeProvider {
            port,
            requests,
            script,
            task,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}/v1", self.port)
    }

    pub fn push(&self, s: Scripted) {
        self.script.lock().unwrap().push_back(s);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.requests.lock().unwrap().clone()
    }
}

async fn serve(
    mut conn: TcpStream,
    requests: Arc<Mutex<Vec<Recorded>>>,
    script: Arc<Mutex<VecDeque<Scripted>>>,
) {
    let mut buf = Vec::new();
    loop {
        // Read one request: headers to the blank line, then Content-Length bytes.
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i;
            }
            let mut tmp = [0u8; 8192];
            match conn.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        let mut lines = head.split("\r\n");
        let mut first = lines.next().unwrap_or_default().split(' ');
        let (method, path) = (
            first.next().unwrap_or_default().to_owned(),
            first.next().unwrap_or_default().to_owned(),
        );
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
            .collect();
        let len: usize = headers
            .iter()
            .find(|(k, _)| k == "content-length")
            .and_then(|(_, v)| v.parse().ok())
            .unwrap_or(0);
        let body_start = head_end + 4;
        while buf.len() < body_start + len {
            let mut tmp = [0u8; 8192];
            match conn.read(&mut tmp).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&tmp[..n]),
            }
        }
        let body = buf[body_start..body_start + len].to_vec();
        buf.drain(..body_start + len);
        requests.lock().unwrap().push(Recorded {
            method,
            path,
            headers,
            body,
        });
        let answer = script.lock().unwrap().pop_front().unwrap_or(Scripted {
            status: 500,
            headers: vec![("content-type".into(), "application/json".into())],
            chunks: vec![
                r#"{"error":{"message":"no scripted answer","type":"server_error"}}"#.into(),
            ],
            chunked: false,
            pace: Duration::ZERO,
        });
        if write_answer(&mut conn, &answer).await.is_err() {
            return;
        }
    }
}

async fn write_answer(conn: &mut TcpStream, a: &Scripted) -> std::io::Result<()> {
    let reason = match a.status {
        200 => "OK",
        429 => "Too Many Requests",
        401 => "Unauthorized",
        _ => "Error",
    };
    let mut head = format!("HTTP/1.1 {} {reason}\r\n", a.status);
    for (k, v) in &a.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if a.chunked {
        head.push_str("transfer-encoding: chunked\r\n\r\n");
        conn.write_all(head.as_bytes()).await?;
        for c in &a.chunks {
            conn.write_all(format!("{:x}\r\n{c}\r\n", c.len()).as_bytes())
                .await?;
            conn.flush().await?;
            if !a.pace.is_zero() {
                tokio::time::sleep(a.pace).await;
            }
        }
        conn.write_all(b"0\r\n\r\n").await?;
    } else {
        let body: String = a.chunks.concat();
        head.push_str(&format!("content-length: {}\r\n\r\n", body.len()));
        conn.write_all(head.as_bytes()).await?;
        conn.write_all(body.as_bytes()).await?;
    }
    conn.flush().await
}

fn h(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// An OpenAI Chat Completions stream (with `stream_options.include_usage`) saying `words`,
/// as the API reference shows it: role chunk, content chunks, finish chunk, usage chunk with
/// empty `choices`, `[DONE]`.
pub fn openai_stream(words: &[&str], prompt: u64, completion: u64, cached: u64) -> Scripted {
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":null}}\n\n"
        )
    };
    let mut chunks = vec![chunk("{\"role\":\"assistant\",\"content\":\"\"}", "null")];
    for w in words {
        chunks.push(chunk(
            &format!("{{\"content\":{}}}", serde_json::json!(w)),
            "null",
        ));
    }
    chunks.push(chunk("{}", "\"stop\""));
    chunks.push(format!(
        "data: {{\"id\":\"chatcmpl-123\",\"object\":\"chat.completion.chunk\",\"created\":1694268190,\"model\":\"gpt-4o-mini\",\"system_fingerprint\":\"fp_44709d6fcb\",\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":{cached}}}}}}}\n\n",
        prompt + completion
    ));
    chunks.push("data: [DONE]\n\n".into());
    Scripted {
        status: 200,
        headers: h(&[
            ("content-type", "text/event-stream; charset=utf-8"),
            ("x-request-id", "req_123"),
            ("openai-processing-ms", "42"),
            ("x-ratelimit-limit-requests", "500"),
            ("x-ratelimit-remaining-requests", "499"),
            ("x-ratelimit-reset-requests", "120ms"),
            ("x-ratelimit-limit-tokens", "200000"),
            ("x-ratelimit-remaining-tokens", "199950"),
            ("x-ratelimit-reset-tokens", "15ms"),
        ]),
        chunks,
        chunked: true,
        pace: STREAM_PACE,
    }
}

/// An Anthropic Messages stream saying `words`, event for event as the streaming docs show.
pub fn anthropic_stream(words: &[&str], input: u64, output: u64, cache_read: u64) -> Scripted {
    let ev = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n");
    let mut chunks = vec![ev(
        "message_start",
        format!("{{\"type\": \"message_start\", \"message\": {{\"id\": \"msg_1nZdL29xx5MUA1yADyHTEsnR8uuvGzszyY\", \"type\": \"message\", \"role\": \"assistant\", \"content\": [], \"model\": \"claude-sonnet-4-0\", \"stop_reason\": null, \"stop_sequence\": null, \"usage\": {{\"input_tokens\": {input}, \"cache_creation_input_tokens\": 0, \"cache_read_input_tokens\": {cache_read}, \"output_tokens\": 1}}}}}}"),
    )];
    chunks.push(ev(
        "content_block_start",
        "{\"type\": \"content_block_start\", \"index\": 0, \"content_block\": {\"type\": \"text\", \"text\": \"\"}}".into(),
    ));
    chunks.push(ev("ping", "{\"type\": \"ping\"}".into()));
    for w in words {
        chunks.push(ev(
            "content_block_delta",
            format!("{{\"type\": \"content_block_delta\", \"index\": 0, \"delta\": {{\"type\": \"text_delta\", \"text\": {}}}}}", serde_json::json!(w)),
        ));
    }
    chunks.push(ev(
        "content_block_stop",
        "{\"type\": \"content_block_stop\", \"index\": 0}".into(),
    ));
    chunks.push(ev(
        "message_delta",
        format!("{{\"type\": \"message_delta\", \"delta\": {{\"stop_reason\": \"end_turn\", \"stop_sequence\":null}}, \"usage\": {{\"output_tokens\": {output}}}}}"),
    ));
    chunks.push(ev("message_stop", "{\"type\": \"message_stop\"}".into()));
    Scripted {
        status: 200,
        headers: h(&[
            ("content-type", "text/event-stream; charset=utf-8"),
            ("request-id", "req_018EeWyXxfu5pfWkrYcMdjWG"),
            ("anthropic-ratelimit-requests-limit", "50"),
            ("anthropic-ratelimit-requests-remaining", "49"),
            ("anthropic-ratelimit-requests-reset", "2024-06-10T06:13:40Z"),
            ("anthropic-ratelimit-tokens-limit", "80000"),
            ("anthropic-ratelimit-tokens-remaining", "79000"),
            ("anthropic-ratelimit-tokens-reset", "2024-06-10T06:13:40Z"),
        ]),
        chunks,
        chunked: true,
        pace: STREAM_PACE,
    }
}

/// A 429 as OpenAI sends it: a rate limit with `retry-after`, or `insufficient_quota`.
pub fn openai_429(insufficient_quota: bool, retry_after_s: u32) -> Scripted {
    let (msg, kind) = if insufficient_quota {
        (
            "You exceeded your current quota, please check your plan and billing details.",
            "insufficient_quota",
        )
    } else {
        ("Rate limit reached for gpt-4o-mini on requests per min (RPM): Limit 3, Used 3, Requested 1.", "requests")
    };
    Scripted {
        status: 429,
        headers: h(&[
            ("content-type", "application/json; charset=utf-8"),
            ("retry-after", &retry_after_s.to_string()),
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", &format!("{retry_after_s}s")),
        ]),
        chunks: vec![format!(
            "{{\"error\":{{\"message\":\"{msg}\",\"type\":\"{kind}\",\"param\":null,\"code\":\"{}\"}}}}",
            if insufficient_quota { "insufficient_quota" } else { "rate_limit_exceeded" }
        )],
        chunked: false,
        pace: Duration::ZERO,
    }
}

/// `text` cut into about `parts` pieces at character boundaries, as a provider streams an
/// argument string: never empty pieces, the whole when it is short.
fn fragments(text: &str, parts: usize) -> Vec<&str> {
    let chars: Vec<usize> = text.char_indices().map(|(i, _)| i).collect();
    if chars.is_empty() {
        return Vec::new();
    }
    let step = chars.len().div_ceil(parts.max(1));
    let mut out = Vec::new();
    let mut k = 0;
    while k < chars.len() {
        let start = chars[k];
        let end = chars.get(k + step).copied().unwrap_or(text.len());
        out.push(&text[start..end]);
        k += step;
    }
    out
}

/// Usage the tool-call streams report: (prompt or input tokens, completion or output tokens).
pub const TOOL_STREAM_USAGE: (u64, u64) = (82, 18);

/// A JSON string literal (quoted and escaped) of `s`.
fn q(s: &str) -> String {
    serde_json::Value::from(s).to_string()
}

/// An OpenAI Chat Completions stream in which the model calls `calls` (id, function name,
/// arguments JSON text), chunk for chunk as the function-calling guide streams them: the first
/// chunk has the role, `content: null` and the first call's `index`, `id`, `type` and
/// `function.name` with empty `arguments`; each call's arguments follow in three fragments
/// under its `index`; then a chunk with `finish_reason: "tool_calls"`, the usage chunk (with
/// `stream_options.include_usage`) and `[DONE]`.
pub fn openai_tool_call_stream(calls: &[(&str, &str, &str)]) -> Scripted {
    const HEAD: &str = "\"id\":\"chatcmpl-9lfaWd5mQQ7Fp1bJqCOu2V6sh1JvO\",\"object\":\"chat.completion.chunk\",\"created\":1721075653,\"model\":\"gpt-4o-mini-2024-07-18\",\"system_fingerprint\":\"fp_8b761cb050\"";
    let chunk = |delta: &str, finish: &str| {
        format!(
            "data: {{{HEAD},\"choices\":[{{\"index\":0,\"delta\":{delta},\"logprobs\":null,\"finish_reason\":{finish}}}],\"usage\":null}}\n\n"
        )
    };
    let mut chunks = Vec::new();
    for (i, (id, name, arguments)) in calls.iter().enumerate() {
        let first = format!(
            "\"tool_calls\":[{{\"index\":{i},\"id\":{},\"type\":\"function\",\"function\":{{\"name\":{},\"arguments\":\"\"}}}}]",
            q(id),
            q(name)
        );
        let delta = if i == 0 {
            format!("{{\"role\":\"assistant\",\"content\":null,{first},\"refusal\":null}}")
        } else {
            format!("{{{first}}}")
        };
        chunks.push(chunk(&delta, "null"));
        for f in fragments(arguments, 3) {
            chunks.push(chunk(
                &format!(
                    "{{\"tool_calls\":[{{\"index\":{i},\"function\":{{\"arguments\":{}}}}}]}}",
                    q(f)
                ),
                "null",
            ));
        }
    }
    chunks.push(chunk("{}", "\"tool_calls\""));
    let (prompt, completion) = TOOL_STREAM_USAGE;
    chunks.push(format!(
        "data: {{{HEAD},\"choices\":[],\"usage\":{{\"prompt_tokens\":{prompt},\"completion_tokens\":{completion},\"total_tokens\":{},\"prompt_tokens_details\":{{\"cached_tokens\":0}}}}}}\n\n",
        prompt + completion
    ));
    chunks.push("data: [DONE]\n\n".into());
    let mut s = openai_stream(&[], 0, 0, 0);
    s.chunks = chunks;
    s
}

/// An Anthropic Messages stream in which the model says `text` (no text block when empty) and
/// then calls `calls` (id, name, input JSON text), event for event as the tool-use streaming
/// docs show: `message_start`, a `text` block, then per call `content_block_start` with
/// `{"type":"tool_use","id","name","input":{}}`, an empty `input_json_delta` and the input in
/// three `partial_json` fragments, `content_block_stop`; `message_delta` with
/// `stop_reason: "tool_use"` and the usage, `message_stop`.
pub fn anthropic_tool_use_stream(text: &str, calls: &[(&str, &str, &str)]) -> Scripted {
    let ev = |name: &str, data: String| format!("event: {name}\ndata: {data}\n\n");
    let (input, output) = TOOL_STREAM_USAGE;
    let mut chunks = vec![ev(
        "message_start",
        format!("{{\"type\":\"message_start\",\"message\":{{\"id\":\"msg_014p7gG3wDgGV9EUtLvnow3U\",\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude-sonnet-4-0\",\"stop_sequence\":null,\"usage\":{{\"input_tokens\":{input},\"output_tokens\":2}},\"content\":[],\"stop_reason\":null}}}}"),
    )];
    let mut index = 0;
    if !text.is_empty() {
        chunks.push(ev(
            "content_block_start",
            "{\"type\":\"content_block_start\",\"index\":0,\"content_block\":{\"type\":\"text\",\"text\":\"\"}}".into(),
        ));
        chunks.push(ev("ping", "{\"type\": \"ping\"}".into()));
        for f in fragments(text, 2) {
            chunks.push(ev(
                "content_block_delta",
                format!("{{\"type\":\"content_block_delta\",\"index\":0,\"delta\":{{\"type\":\"text_delta\",\"text\":{}}}}}", q(f)),
            ));
        }
        chunks.push(ev(
            "content_block_stop",
            "{\"type\":\"content_block_stop\",\"index\":0}".into(),
        ));
        index = 1;
    }
    for (id, name, arguments) in calls {
        chunks.push(ev(
            "content_block_start",
            format!("{{\"type\":\"content_block_start\",\"index\":{index},\"content_block\":{{\"type\":\"tool_use\",\"id\":{},\"name\":{},\"input\":{{}}}}}}", q(id), q(name)),
        ));
        for f in std::iter::once("").chain(fragments(arguments, 3)) {
            chunks.push(ev(
                "content_block_delta",
                format!("{{\"type\":\"content_block_delta\",\"index\":{index},\"delta\":{{\"type\":\"input_json_delta\",\"partial_json\":{}}}}}", q(f)),
            ));
        }
        chunks.push(ev(
            "content_block_stop",
            format!("{{\"type\":\"content_block_stop\",\"index\":{index}}}"),
        ));
        index += 1;
    }
    chunks.push(ev(
        "message_delta",
        format!("{{\"type\":\"message_delta\",\"delta\":{{\"stop_reason\":\"tool_use\",\"stop_sequence\":null}},\"usage\":{{\"output_tokens\":{output}}}}}"),
    ));
    chunks.push(ev("message_stop", "{\"type\":\"message_stop\"}".into()));
    let mut s = anthropic_stream(&[], 0, 0, 0);
    s.chunks = chunks;
    s
}

/// One provider call made directly, as a client with no gateway would: `body` POSTed to the
/// fake server's `/v1/chat/completions` on a new TCP connection, the stream read to `[DONE]`.
/// The benchmarks' baseline.
pub async fn direct_call(port: u16, body: &str) {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    conn.set_nodelay(true).expect("nodelay");
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer sk-bench\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    conn.write_all(req.as_bytes()).await.expect("write");
    conn.shutdown().await.expect("shutdown");
    let mut out = Vec::new();
    conn.read_to_end(&mut out).await.expect("read");
    assert!(
        out.windows(6).any(|w| w == b"[DONE]"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}
