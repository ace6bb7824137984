//! The LLM gateway: `<prefix>.llm.complete` takes a completion request from a worker, checks
//! the provider's quotas, decrypts the key for that call only, calls the provider over HTTPS
//! (reqwest with rustls), streams the answer back on the request's reply subject as
//! `{"type":"delta"}` messages, one `{"type":"tool_call"}` per tool the model called (whole,
//! in order, once the provider has streamed it all) and a final `{"type":"done"}` with the
//! provider's own usage and the cost, and records that usage. `<prefix>.llm.usage` answers the
//! usage report. Every call is audited. A refusal (a quota, or the request's own
//! `max_cost_usd`) is one error reply and nothing is spent.

pub mod providers;
pub mod sse;

use std::sync::Arc;
use std::time::Duration;

use async_nats::service::endpoint::Endpoint;
use futures::StreamExt;
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, info, warn};
use vgas_shared::codec::{decode, encode, encode_error};
use vgas_shared::error::WireError;
use vgas_shared::limits::MAX_CONTROL_BYTES;
use vgas_shared::llm::{
    CompletionEvent, CompletionRequest, TokenUsage, MAX_COMPLETION_REQUEST_BYTES,
};
use vgas_shared::vault::VaultErrorKind;
use vgas_shared::{now_ms, Encoding, ErrorCode, Subjects, VgaError};

use self::providers::StreamState;
use self::sse::SseReader;
use crate::keys::audit::{scrub, AuditEvent};
use crate::keys::config::DEFAULT_MAX_RETRIES;
use crate::keys::quota::{parse_go_duration_ms, parse_rfc3339_ms};
use crate::keys::ApiKeyManager;

/// Completions in progress at once across all providers; past it a request answers `busy`.
/// Each holds an HTTP connection and a task, so this bounds the master's fan-out.
pub const MAX_GATEWAY_CALLS: usize = 256;

/// The longest a 429 is waited out before retrying; a provider asking for longer gets its
/// error passed on instead of a worker hanging.
pub const MAX_RETRY_WAIT: Duration = Duration::from_secs(30);

/// Wait before retrying a 429 that names no time.
pub const DEFAULT_RETRY_WAIT: Duration = Duration::from_secs(1);

/// How long the provider may stay silent mid-stream before the call fails.
pub const PROVIDER_READ_TIMEOUT: Duration = Duration::from_secs(120);

/// How long connecting to a provider may take.
pub const PROVIDER_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Most bytes of a provider's error body kept for the error message.
const MAX_ERROR_BODY: usize = 2000;

/// What the gateway needs; cheap to clone.
#[derive(Debug, Clone)]
pub struct Gateway {
    pub keys: Arc<ApiKeyManager>,
    http: reqwest::Client,
    nats: async_nats::Client,
    /// One permit per call in progress ([`MAX_GATEWAY_CALLS`]).
    slots: Arc<Semaphore>,
    /// Every call is counted in the master's metrics.
    observe: Arc<crate::observe::Observe>,
}

fn err(code: ErrorCode, message: impl Into<String>) -> WireError {
    WireError {
        code,
        message: message.into(),
    }
}

/// The HTTP client every provider call uses: rustls, bounded connect and idle times.
pub fn http_client() -> reqwest::Client {
    reqwest::Client::builder()
        .connect_timeout(PROVIDER_CONNECT_TIMEOUT)
        .read_timeout(PROVIDER_READ_TIMEOUT)
        .user_agent(concat!("vgas/", env!("CARGO_PKG_VERSION")))
        .build()
        .expect("a reqwest client with static settings builds")
}

/// How long a 429 asks to wait: `retry-after`, else the latest reset header, else 1 s.
pub fn retry_wait(headers: &[(String, String)], now: u64) -> Duration {
    let get = |n: &str| {
        headers
            .iter()
            .find(|(k, _)| k == n)
            .map(|(_, v)| v.as_str())
    };
    if let Some(s) = get("retry-after").and_then(|v| v.trim().parse::<f64>().ok()) {
        return Duration::from_millis((s.max(0.0) * 1000.0) as u64);
    }
    let mut ms: Option<u64> = None;
    for (k, v) in headers {
        let d = if k.starts_with("x-ratelimit-reset-") {
            parse_go_duration_ms(v)
        } else if k.starts_with("anthropic-ratelimit-") && k.ends_with("-reset") {
            parse_rfc3339_ms(v).map(|t| t.saturating_sub(now))
        } else {
            None
        };
        ms = ms.max(d);
    }
    ms.map(Duration::from_millis).unwrap_or(DEFAULT_RETRY_WAIT)
}

/// The `message` of a provider's JSON error body, else the body itself (bounded).
fn error_message(body: &str) -> String {
    let msg = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|v| v["error"]["message"].as_str().map(str::to_owned))
        .unwrap_or_else(|| body.to_owned());
    msg.chars().take(MAX_ERROR_BODY).collect()
}

/// Refuses a call whose worst case (the input estimate and `max_tokens` of output, at the
/// model's llm.toml prices) is more than the request's `max_cost_usd`. A model without a
/// price counts as costing 0 here, as it does in the usage accounting: a budget in llm.toml
/// is what refuses unpriced models (`unpriced_model`).
fn check_max_cost(
    llm: &crate::keys::config::LlmConfig,
    req: &CompletionRequest,
    max_cost_usd: f64,
) -> Result<(), WireError> {
    let worst = TokenUsage {
        input_tokens: req.estimated_input_tokens(),
        output_tokens: u64::from(req.max_tokens_or_default()),
        cached_tokens: 0,
    };
    let cost = llm
        .price(&req.provider, &req.model)
        .map_or(0, |p| p.cost_micro_usd(&worst));
    let limit = (max_cost_usd * 1e6).round().max(0.0) as u64;
    if cost > limit {
        return Err(err(
            ErrorCode::QuotaExceeded,
            format!(
                "max_cost_usd: this call could cost up to ${:.6} ({} input tokens estimated, max_tokens {}), more than the ${:.6} left of the run's budget",
                cost as f64 / 1e6,
                worst.input_tokens,
                worst.output_tokens,
                limit as f64 / 1e6,
            ),
        ));
    }
    Ok(())
}

impl Gateway {
    pub fn new(
        keys: Arc<ApiKeyManager>,
        nats: async_nats::Client,
        observe: Arc<crate::observe::Observe>,
    ) -> Gateway {
        Gateway {
            keys,
            http: http_client(),
            nats,
            slots: Arc::new(Semaphore::new(MAX_GATEWAY_CALLS)),
            observe,
        }
    }

    async fn publish<T: Serialize>(&self, reply: &str, enc: Encoding, v: &T) {
        match encode(enc, v) {
            Ok(b) => {
                if let Err(e) = self.nats.publish(reply.to_owned(), b.into()).await {
                    debug!("gateway: could not publish to {reply}: {e}");
                }
            }
            Err(e) => warn!("gateway: could not encode a reply: {e}"),
        }
    }

    async fn publish_error(&self, reply: &str, enc: Encoding, e: &WireError) {
        let b = encode_error(enc, e);
        if let Err(e) = self.nats.publish(reply.to_owned(), b.into()).await {
            debug!("gateway: could not publish to {reply}: {e}");
        }
    }

    /// Serves one completion: everything after decoding. Publishes the stream, or one error.
    pub async fn complete(&self, req: CompletionRequest, reply: &str, enc: Encoding) {
        let result = self.call(&req, reply, enc).await;
        if let Err(e) = &result {
            self.publish_error(reply, enc, e).await;
        }
        if let Some(audit) = self.keys.audit_log() {
            audit.record(&AuditEvent {
                time_ms: now_ms(),
                op: "llm.complete",
                provider: Some(&req.provider),
                model: Some(&req.model),
                caller: req.caller.as_deref().unwrap_or("unknown"),
                outcome: match &result {
                    Ok(()) => "ok".into(),
                    Err(e) => format!("error: {e}"),
                },
            });
        }
    }

    async fn record(
        &self,
        req: &CompletionRequest,
        usage: &TokenUsage,
        ok: bool,
        permit: &crate::keys::quota::QuotaPermit,
    ) -> u64 {
        let cost = match self
            .keys
            .update_usage_stats(&req.provider, &req.model, usage, ok, Some(permit))
            .await
        {
            Ok(c) => c,
            Err(e) => {
                warn!(provider = %req.provider, "could not record usage: {e:#}");
                0
            }
        };
        self.observe
            .metrics
            .llm_call(&req.provider, &req.model, usage, ok, cost);
        cost
    }

    async fn call(
        &self,
        req: &CompletionRequest,
        reply: &str,
        enc: Encoding,
    ) -> Result<(), WireError> {
        let provider = &req.provider;
        let p = self.keys.llm_config().provider(provider).ok_or_else(|| {
            err(
                ErrorCode::Unavailable,
                format!("provider {provider} is not configured: add [providers.{provider}] (kind, base_url) to llm.toml"),
            )
        })?;
        if let Some(limit) = req.max_cost_usd {
            check_max_cost(self.keys.llm_config(), req, limit)?;
        }
        let permit = self
            .keys
            .check_quota_availability(
                provider,
                &req.model,
                req.estimated_input_tokens(),
                u64::from(req.max_tokens_or_default()),
            )
            .map_err(|r| err(ErrorCode::QuotaExceeded, r.to_string()))?;
        let key = if p.needs_key {
            Some(self.keys.get_decrypted_key(provider).map_err(|e| match e.kind() {
                VaultErrorKind::Missing => err(
                    ErrorCode::Unavailable,
                    format!("no key for provider {provider} on the master ({e}); store one with `vgas vault store {provider}`"),
                ),
                _ => err(ErrorCode::Unavailable, format!("the key vault cannot be used: {e}")),
            })?)
        } else {
            None
        };
        let max_retries = p.limits.max_retries.unwrap_or(DEFAULT_MAX_RETRIES);
        let mut attempts = 0u32;
        let resp = loop {
            attempts += 1;
            let sent = providers::build(&self.http, &p, key.as_ref(), req)
                .send()
                .await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.record(req, &TokenUsage::default(), false, &permit)
                        .await;
                    let secret = key
                        .as_ref()
                        .map(|k| secrecy::ExposeSecret::expose_secret(k).to_owned());
                    return Err(err(
                        ErrorCode::Upstream,
                        scrub(
                            &format!("{provider}: request failed: {e}"),
                            secret.as_deref(),
                        ),
                    ));
                }
            };
            let headers: Vec<(String, String)> = resp
                .headers()
                .iter()
                .filter_map(|(k, v)| {
                    Some((k.as_str().to_ascii_lowercase(), v.to_str().ok()?.to_owned()))
                })
                .collect();
            self.keys.observe_headers(
                provider,
                headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
            );
            let status = resp.status();
            if status.is_success() {
                break resp;
            }
            let body = resp.text().await.unwrap_or_default();
            let secret = key
                .as_ref()
                .map(|k| secrecy::ExposeSecret::expose_secret(k).to_owned());
            let message = scrub(&error_message(&body), secret.as_deref());
            let no_quota = body.contains("insufficient_quota");
            if status.as_u16() == 429 && !no_quota && attempts <= max_retries {
                let wait = retry_wait(&headers, now_ms());
                if wait <= MAX_RETRY_WAIT {
                    info!(provider = %provider, ?wait, attempt = attempts, "rate limited (429); retrying after the time the provider named");
                    tokio::time::sleep(wait).await;
                    continue;
                }
            }
            self.record(req, &TokenUsage::default(), false, &permit)
                .await;
            let code = if no_quota || status.as_u16() == 429 {
                ErrorCode::QuotaExceeded
            } else {
                ErrorCode::Upstream
            };
            let what = if no_quota {
                " (insufficient_quota: not retried)"
            } else {
                ""
            };
            return Err(err(
                code,
                format!("{provider} answered {status}{what}: {message}"),
            ));
        };
        // The key is not needed past the request: drop (and zeroize) it now.
        drop(key);
        let mut stream = resp.bytes_stream();
        let mut sse = SseReader::default();
        let mut st = StreamState::default();
        let mut failure: Option<WireError> = None;
        'read: while let Some(chunk) = stream.next().await {
            let events = match chunk.map_err(|e| e.to_string()).and_then(|c| sse.push(&c)) {
                Ok(evs) => evs,
                Err(e) => {
                    failure = Some(err(
                        ErrorCode::Upstream,
                        format!("{provider}: the stream broke: {e}"),
                    ));
                    break;
                }
            };
            for ev in events {
                match providers::on_event(p.kind, &ev, &mut st) {
                    Ok(Some(text)) => {
                        self.publish(reply, enc, &CompletionEvent::Delta { text })
                            .await
                    }
                    Ok(None) => {}
                    Err(m) => {
                        failure = Some(err(
                            ErrorCode::Upstream,
                            format!("{provider}: {}", scrub(&m, None)),
                        ));
                        break 'read;
                    }
                }
                if st.done {
                    break 'read;
                }
            }
        }
        if failure.is_none() && !st.done {
            failure = Some(err(
                ErrorCode::Upstream,
                format!("{provider}: the stream ended before its end marker"),
            ));
        }
        let cost = self
            .record(req, &st.usage, failure.is_none(), &permit)
            .await;
        drop(permit);
        if let Some(f) = failure {
            return Err(f);
        }
        if !st.usage_seen {
            warn!(provider = %provider, "the provider reported no usage; the call is counted with 0 tokens");
        }
        for call in st.take_tool_calls() {
            self.publish(reply, enc, &CompletionEvent::ToolCall(call))
                .await;
        }
        self.publish(
            reply,
            enc,
            &CompletionEvent::Done {
                provider: provider.clone(),
                model: req.model.clone(),
                usage: st.usage,
                cost_usd: cost as f64 / 1e6,
                stop_reason: st.stop_reason,
                attempts,
            },
        )
        .await;
        Ok(())
    }

    /// Serves `llm.complete` until the endpoint closes: each request runs in its own task,
    /// at most [`MAX_GATEWAY_CALLS`] at once.
    pub async fn serve_complete(self, mut endpoint: Endpoint, tracker: TaskTracker) {
        while let Some(req) = endpoint.next().await {
            let payload = req.message.payload.clone();
            let Some(reply) = req.message.reply.clone() else {
                debug!("llm.complete without a reply subject; ignored");
                continue;
            };
            let enc = Encoding::detect(&payload);
            let parsed = decode::<CompletionRequest>(&payload, MAX_COMPLETION_REQUEST_BYTES)
                .map_err(|e| WireError::from(&VgaError::from(e)))
                .and_then(|(r, _)| r.validate().map(|_| r).map_err(|e| WireError::from(&e)));
            let r = match parsed {
                Ok(r) => r,
                Err(e) => {
                    self.publish_error(&reply, enc, &e).await;
                    continue;
                }
            };
            let Ok(slot) = self.slots.clone().try_acquire_owned() else {
                let e = err(
                    ErrorCode::Busy,
                    format!("the gateway has {MAX_GATEWAY_CALLS} calls in progress; retry later"),
                );
                self.publish_error(&reply, enc, &e).await;
                continue;
            };
            let gw = self.clone();
            tracker.spawn(async move {
                gw.complete(r, &reply, enc).await;
                drop(slot);
            });
        }
    }

    /// Serves `llm.usage`: the report, in the request's encoding.
    pub async fn serve_usage(self, mut endpoint: Endpoint) {
        while let Some(req) = endpoint.next().await {
            let enc = Encoding::detect(&req.message.payload);
            let bytes = if req.message.payload.len() > MAX_CONTROL_BYTES {
                encode_error(
                    enc,
                    &err(ErrorCode::TooLarge, "usage takes an empty payload"),
                )
            } else {
                encode(enc, &self.keys.usage_report())
                    .unwrap_or_else(|e| encode_error(enc, &err(ErrorCode::Internal, e.to_string())))
            };
            if let Err(e) = req.respond(Ok(bytes.into())).await {
                debug!("could not respond: {e}");
            }
        }
    }
}

/// Builds the key manager (usage from JetStream KV), loads the vault in the background, and
/// adds the `llm_complete` and `llm_usage` endpoints to the master's service. A missing vault
/// is not an error: calls then answer how to store a key.
pub async fn start(
    conn: &vgas_shared::config::Resolved,
    js: &async_nats::jetstream::Context,
    service: &async_nats::service::Service,
    nats: async_nats::Client,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
    observe: Arc<crate::observe::Observe>,
) -> anyhow::Result<Gateway> {
    let subjects: &Subjects = &conn.subjects;
    let node = observe.node.clone();
    let usage = crate::keys::usage::UsageBook::open(js, subjects, &node).await?;
    let cfg = crate::keys::KeyConfig::from_env(&conn.state_dir);
    let keys = Arc::new(ApiKeyManager::new(cfg, usage)?);
    let preload = keys.clone();
    tracker.spawn_blocking(move || match preload.preload() {
        Ok(()) => info!(vault = %preload.vault_path().display(), "key vault ready"),
        Err(e) => warn!(vault = %preload.vault_path().display(), "key vault not usable yet: {e}"),
    });
    // Usage in step with the other masters' (`sync_distributed_state`), and in the bucket.
    tracker.spawn(crate::keys::usage::sync::persist(
        keys.usage_book(),
        shutdown.clone(),
    ));
    tracker.spawn(crate::keys::usage::sync::run(
        keys.usage_book(),
        nats.clone(),
        subjects.llm_usage_sync(),
        shutdown.clone(),
    ));
    let gw = Gateway::new(keys, nats, observe);
    let complete = service
        .endpoint_builder()
        .name("llm_complete")
        .add(subjects.llm_complete())
        .await
        .map_err(|e| anyhow::anyhow!("add endpoint {}: {e}", subjects.llm_complete()))?;
    let usage_ep = service
        .endpoint_builder()
        .name("llm_usage")
        .add(subjects.llm_usage())
        .await
        .map_err(|e| anyhow::anyhow!("add endpoint {}: {e}", subjects.llm_usage()))?;
    let (g1, g2, t) = (gw.clone(), gw.clone(), tracker.clone());
    let stop = shutdown.clone();
    tracker.spawn(async move {
        tokio::select! {
            _ = g1.serve_complete(complete, t) => {}
            _ = stop.cancelled() => {}
        }
    });
    tracker.spawn(async move {
        tokio::select! {
            _ = g2.serve_usage(usage_ep) => {}
            _ = shutdown.cancelled() => {}
        }
    });
    Ok(gw)
}
