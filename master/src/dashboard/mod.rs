//! The master's web dashboard and its Prometheus endpoint (`vgas-master --dashboard ADDR`,
//! `--metrics ADDR`). The page is three static files embedded here; its data comes as
//! server-sent events, one JSON view per page, built from the master's own state (the
//! scheduler, the dispatcher's board, the build follower, the usage book) at most
//! [`VIEW_INTERVAL`] apart and only when it changed: no polling, and 1,000 workers cost a
//! page of [`BOARD_PAGE_ROWS`] rows. Access: `client::http` (the dashboard always wants its
//! token; metrics are open to loopback like NATS's monitoring port).
//!
//! [`BOARD_PAGE_ROWS`]: vgas_shared::wire::board::BOARD_PAGE_ROWS

pub mod board;
mod routes;
mod views;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use async_nats::service::endpoint::Endpoint;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;
use vgas_client::http::{self, Token};
use vgas_shared::codec::encode;
use vgas_shared::wire::board::DashboardInfo;
use vgas_shared::Encoding;

use crate::keys::ApiKeyManager;
use crate::observe::Observe;
use crate::service::Handlers;

/// Where `--dashboard` alone serves: loopback, like NATS's monitoring port.
pub const DEFAULT_DASHBOARD_ADDR: &str = "127.0.0.1:8470";

/// Where `--metrics` alone serves.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9470";

/// How often a page's view may change: updates in between are coalesced into the next.
pub const VIEW_INTERVAL: Duration = Duration::from_millis(500);

/// How long an agent's statistics (read from the agents bucket) are reused before they are
/// read again: they change once per agent run.
pub const AGENT_STATS_MAX_AGE: Duration = Duration::from_secs(5);

/// The dashboard's settings.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    pub addr: SocketAddr,
    /// The token; a random one when the operator gives none.
    pub token: Token,
    /// The URL people reach it by (behind a proxy, say), printed by `vgas dashboard`;
    /// `http://<addr>/` when not given.
    pub public_url: Option<String>,
}

/// What the dashboard's handlers read.
#[derive(Debug, Clone)]
pub struct Shared {
    pub handlers: Handlers,
    pub observe: Arc<Observe>,
    pub keys: Arc<ApiKeyManager>,
    pub client: async_nats::Client,
    /// For `/metrics` from elsewhere than loopback, and the whole dashboard.
    pub token: Option<Token>,
    /// The master's shutdown: open event streams end with it.
    pub stop: CancellationToken,
}

/// The URL `vgas dashboard` prints: the base, with the token to trade for a cookie.
fn url_with_token(base: &str, token: &Token) -> String {
    format!("{}/?token={}", base.trim_end_matches('/'), token.expose())
}

fn base_url(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        vgas_shared::host::hostname()
    } else {
        addr.ip().to_string()
    };
    match addr {
        SocketAddr::V6(_) if !addr.ip().is_unspecified() => {
            format!("http://[{host}]:{}", addr.port())
        }
        _ => format!("http://{host}:{}", addr.port()),
    }
}

/// Starts the dashboard (with `/metrics`); returns the URL with its token.
pub fn start(
    cfg: &DashboardConfig,
    reserved: &http::Reserved,
    shared: Shared,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<String> {
    let bound = reserved.bound()?;
    let base = cfg
        .public_url
        .clone()
        .unwrap_or_else(|| base_url(bound.addr));
    let url = url_with_token(&base, &cfg.token);
    info!(addr = %bound.addr, "dashboard ready (vgas dashboard prints its URL)");
    let router = routes::dashboard(Shared {
        token: Some(cfg.token.clone()),
        ..shared
    });
    http::serve(bound, router, tracker, shutdown);
    Ok(url)
}

/// Starts a metrics-only endpoint on `reserved`; returns the address it is bound to.
pub fn start_metrics(
    reserved: &http::Reserved,
    shared: Shared,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<SocketAddr> {
    let bound = reserved.bound()?;
    let at = bound.addr;
    info!(addr = %at, "metrics endpoint ready");
    http::serve(bound, routes::metrics_only(shared), tracker, shutdown);
    Ok(at)
}

/// Answers `<prefix>.dashboard` with the dashboard's URL (or none) until `stop`.
pub async fn answer_info(mut ep: Endpoint, url: Option<String>, stop: CancellationToken) {
    let info = DashboardInfo { url };
    loop {
        let req = tokio::select! {
            _ = stop.cancelled() => return,
            r = ep.next() => match r { Some(r) => r, None => return },
        };
        let enc = Encoding::detect(&req.message.payload);
        let body = encode(enc, &info).unwrap_or_default();
        let _ = req.respond(Ok(body.into())).await;
    }
}
