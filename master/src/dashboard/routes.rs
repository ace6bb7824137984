//! The dashboard's HTTP routes: the page and its two files, the view streams, a task's
//! output stream and `/metrics`. Every route but `/metrics` wants the token; `/?token=` trades
//! it for an HttpOnly, SameSite=Strict cookie and sends the browser on without it in the URL.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use futures::stream::{self, Stream, StreamExt};
use serde_json::json;
use tokio_util::sync::CancellationToken;
use vgas_client::http::{caller, metrics_response, unauthorized, Caller, TOKEN_COOKIE};
use vgas_shared::codec::decode_as;
use vgas_shared::wire::board::{OutputChunk, TaskRow};
use vgas_shared::wire::TaskEvent;
use vgas_shared::{now_ms, Encoding, TaskId};

use super::board::row_of_record;
use super::views::{self, Cache, Page};
use super::{Shared, VIEW_INTERVAL};

const INDEX_HTML: &str = include_str!("assets/index.html");
const APP_JS: &str = include_str!("assets/app.js");
const APP_CSS: &str = include_str!("assets/app.css");

/// The page loads only its own files; nothing inline, nothing from elsewhere.
const CSP: &str = "default-src 'self'; img-src 'self' data:; style-src 'self'; script-src 'self'; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'";

/// How often a task's page asks the record whether the task ended, in case its `finished`
/// event was missed (as `vgas watch` does).
const TASK_RECHECK: Duration = Duration::from_secs(2);

/// Server-sent events are answered with this comment every so often, so proxies keep the
/// connection and the browser notices a dead one.
const KEEP_ALIVE: Duration = Duration::from_secs(15);

pub fn dashboard(shared: Shared) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/app.js", get(app_js))
        .route("/app.css", get(app_css))
        .route("/api/stream", get(view_stream))
        .route("/api/task/{id}/stream", get(task_stream))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(shared)
}

pub fn metrics_only(shared: Shared) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .fallback(not_found)
        .with_state(shared)
}

fn holder(s: &Shared, peer: SocketAddr, headers: &HeaderMap) -> bool {
    caller(peer, headers, s.token.as_ref()) == Caller::Holder
}

async fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

/// The headers every page response carries.
fn page_headers(content_type: &'static str) -> [(header::HeaderName, HeaderValue); 5] {
    [
        (header::CONTENT_TYPE, HeaderValue::from_static(content_type)),
        (
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(CSP),
        ),
        (
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ),
        // The first URL carries the token: it must not leak as a referrer.
        (
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        ),
        (header::CACHE_CONTROL, HeaderValue::from_static("no-store")),
    ]
}

#[derive(Debug, serde::Deserialize)]
struct TokenQuery {
    token: Option<String>,
}

async fn index(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<TokenQuery>,
    headers: HeaderMap,
) -> Response {
    if let (Some(given), Some(token)) = (q.token.as_deref(), s.token.as_ref()) {
        if !token.matches(given) {
            return unauthorized();
        }
        let cookie = format!(
            "{TOKEN_COOKIE}={}; HttpOnly; SameSite=Strict; Path=/",
            token.expose()
        );
        let mut r = Redirect::to("/").into_response();
        if let Ok(v) = HeaderValue::from_str(&cookie) {
            r.headers_mut().insert(header::SET_COOKIE, v);
        }
        r.headers_mut().insert(
            header::REFERRER_POLICY,
            HeaderValue::from_static("no-referrer"),
        );
        return r;
    }
    asset(&s, peer, &headers, "text/html; charset=utf-8", INDEX_HTML)
}

/// A page file for the token's holder, with the page's headers.
fn asset(
    s: &Shared,
    peer: SocketAddr,
    headers: &HeaderMap,
    content_type: &'static str,
    body: &'static str,
) -> Response {
    if !holder(s, peer, headers) {
        return unauthorized();
    }
    (page_headers(content_type), body).into_response()
}

async fn app_js(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    asset(&s, peer, &headers, "text/javascript; charset=utf-8", APP_JS)
}

async fn app_css(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    asset(&s, peer, &headers, "text/css; charset=utf-8", APP_CSS)
}

async fn metrics(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
) -> Response {
    if caller(peer, &headers, s.token.as_ref()) == Caller::Stranger {
        return unauthorized();
    }
    let pulse = s.handlers.status();
    let leases = pulse.live.iter().map(|n| n.leases.len()).sum();
    let keys = s.keys.clone();
    let usage = tokio::task::spawn_blocking(move || keys.usage_report())
        .await
        .ok();
    s.observe
        .metrics
        .observe_state(&pulse, leases, usage.as_ref());
    metrics_response(s.observe.metrics.registry())
}

#[derive(Debug, serde::Deserialize)]
struct StreamQuery {
    view: String,
    #[serde(default)]
    page: usize,
    id: Option<String>,
}

/// Server-sent events that end when the master stops (a stream left open would hold the
/// server's graceful shutdown for its whole timeout).
fn sse(s: impl Stream<Item = Event> + Send + 'static, stop: CancellationToken) -> Response {
    let s = s.take_until(stop.cancelled_owned());
    Sse::new(s.map(Ok::<_, Infallible>))
        .keep_alive(KeepAlive::new().interval(KEEP_ALIVE))
        .into_response()
}

/// `GET /api/stream?view=..`: the page's view now, then again each time it changed, at most
/// every [`VIEW_INTERVAL`].
async fn view_stream(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<StreamQuery>,
    headers: HeaderMap,
) -> Response {
    if !holder(&s, peer, &headers) {
        return unauthorized();
    }
    let page = match Page::parse(&q.view, q.page, q.id.as_deref()) {
        Ok(p) => p,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    let started = s.handlers.started_ms;
    let stop = s.stop.clone();
    let mut tick = tokio::time::interval(VIEW_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = (s, page, Cache::default(), None::<serde_json::Value>, tick);
    let events = stream::unfold(
        state,
        move |(s, page, mut cache, mut last, mut tick)| async move {
            loop {
                tick.tick().await;
                let mut view = views::build(&s, &page, &mut cache).await;
                if last.as_ref() == Some(&view) {
                    continue;
                }
                last = Some(view.clone());
                if let Some(ov) = view.get_mut("overview") {
                    ov["uptime_ms"] = json!(now_ms().saturating_sub(started));
                }
                let ev = Event::default().event("view").data(view.to_string());
                return Some((ev, (s, page, cache, last, tick)));
            }
        },
    );
    sse(events, stop)
}

/// `GET /api/task/<id>/stream`: the task's row, then its output as it runs (the current
/// attempt's; a retry says so and starts over), then `end`.
async fn task_stream(
    State(s): State<Shared>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> Response {
    if !holder(&s, peer, &headers) {
        return unauthorized();
    }
    let id = match TaskId::parse(&id) {
        Ok(id) => id,
        Err(e) => return (StatusCode::BAD_REQUEST, format!("{e}\n")).into_response(),
    };
    // Subscribe before reading the row, so nothing said in between is missed.
    let sub = match s
        .client
        .subscribe(s.handlers.subjects.task_events(&id))
        .await
    {
        Ok(sub) => sub,
        Err(e) => {
            return (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n")).into_response();
        }
    };
    let Some(row) = task_row(&s, &id).await else {
        return (StatusCode::NOT_FOUND, format!("no task {id}\n")).into_response();
    };
    let done = row.state == "finished";
    let first = stream::iter(vec![task_event(&row), overview_event(&s)]);
    if done {
        return sse(first.chain(stream::iter(vec![end_event()])), s.stop.clone());
    }
    let stop = s.stop.clone();
    let mut recheck = tokio::time::interval(TASK_RECHECK);
    recheck.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    recheck.reset();
    let state = Some((s, id, sub, row, recheck));
    let rest = stream::unfold(state, |state| async move {
        let (s, id, mut sub, mut row, mut recheck) = state?;
        loop {
            let msg = tokio::select! {
                m = sub.next() => m,
                _ = recheck.tick() => {
                    match task_row(&s, &id).await {
                        Some(r) if r.state == "finished" => {
                            return Some((vec![task_event(&r), overview_event(&s), end_event()], None));
                        }
                        _ => {
                            let ov = overview_event(&s);
                            return Some((vec![ov], Some((s, id, sub, row, recheck))));
                        }
                    }
                }
            };
            let Some(msg) = msg else {
                return Some((vec![end_event()], None));
            };
            let Ok(ev) = decode_as::<TaskEvent>(Encoding::detect(&msg.payload), &msg.payload)
            else {
                continue;
            };
            let out = match ev {
                TaskEvent::Started { worker, attempt }
                | TaskEvent::Assigned { worker, attempt } => {
                    row.state = "running".into();
                    row.worker = Some(worker.to_string());
                    row.attempt = attempt;
                    row.since_ms = now_ms();
                    vec![task_event(&row), overview_event(&s)]
                }
                TaskEvent::Stdout { attempt, data } => vec![output("stdout", attempt, data)],
                TaskEvent::Stderr { attempt, data } => vec![output("stderr", attempt, data)],
                TaskEvent::Retrying { attempt, reason } => {
                    let data = json!({ "attempt": attempt, "reason": reason });
                    vec![Event::default().event("retrying").data(data.to_string())]
                }
                TaskEvent::Finished {
                    worker,
                    attempts,
                    duration_ms,
                    outcome,
                    ..
                } => {
                    row.state = "finished".into();
                    row.worker = worker.map(|w| w.to_string()).or(row.worker);
                    row.attempt = attempts;
                    row.since_ms = now_ms();
                    row.outcome = Some(outcome.describe());
                    row.ok = Some(outcome.succeeded());
                    row.duration_ms = Some(duration_ms);
                    let ov = overview_event(&s);
                    return Some((vec![task_event(&row), ov, end_event()], None));
                }
                TaskEvent::Artifact { .. } => continue,
            };
            return Some((out, Some((s, id, sub, row, recheck))));
        }
    });
    sse(first.chain(rest.flat_map(stream::iter)), stop)
}

/// A task's row: the board's, or from its record.
async fn task_row(s: &Shared, id: &TaskId) -> Option<TaskRow> {
    if let Some(r) = s.observe.board.as_ref().and_then(|b| b.task(id)) {
        return Some(r);
    }
    s.handlers
        .store
        .get(id)
        .await
        .ok()
        .flatten()
        .map(|rec| row_of_record(&rec))
}

fn task_event(row: &TaskRow) -> Event {
    let data = serde_json::to_string(row).unwrap_or_default();
    Event::default().event("task").data(data)
}

fn output(stream: &str, attempt: u32, data: String) -> Event {
    let chunk = OutputChunk {
        stream: stream.into(),
        attempt,
        data,
    };
    let data = serde_json::to_string(&chunk).unwrap_or_default();
    Event::default().event("output").data(data)
}

/// The overview strip's figures, for a task's page.
fn overview_event(s: &Shared) -> Event {
    let data = serde_json::to_string(&views::overview_now(s)).unwrap_or_default();
    Event::default().event("overview").data(data)
}

fn end_event() -> Event {
    Event::default().event("end").data("{}")
}
