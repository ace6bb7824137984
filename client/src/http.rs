//! The small HTTP endpoints vgas processes serve to people and their tools, never to each
//! other (NATS is the only wire between vgas processes): the Prometheus metrics of the master
//! and of each worker, and the master's dashboard. One access rule for all of them:
//! a request from a loopback address may read metrics as NATS's own monitoring port allows;
//! anything else needs the endpoint's token (as `Authorization: Bearer`, or the dashboard's
//! cookie). An endpoint bound beyond loopback without a token answers 401 to every request
//! from elsewhere: never anonymous on the LAN.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context, Result};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use prometheus_client::registry::Registry;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The dashboard's cookie, set from `?token=` on the first page load.
pub const TOKEN_COOKIE: &str = "vgas_dashboard";

/// Bytes of randomness in a generated token (hex: twice as many characters).
const TOKEN_BYTES: usize = 24;

/// The OpenMetrics text format `prometheus-client` writes (Prometheus reads it).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A bearer token, compared in constant time.
#[derive(Clone)]
pub struct Token(Arc<str>);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token from the operator (an environment variable or a file): at least 16
    /// characters, printable ASCII without spaces, so it survives a URL and a cookie.
    pub fn parse(s: &str) -> Result<Token> {
        let s = s.trim();
        anyhow::ensure!(
            s.len() >= 16 && s.bytes().all(|b| b.is_ascii_graphic() && !b"\";,\\&=%#?".contains(&b)),
            "a token is at least 16 printable characters, without quotes, ';', ',', '&', '=', '%', '#', '?' or '\\'"
        );
        Ok(Token(s.into()))
    }

    /// A fresh random token.
    pub fn generate() -> Token {
        let bytes: [u8; TOKEN_BYTES] = rand::random();
        Token(hex::encode(bytes).into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Constant-time comparison: a timing side channel must not spell the token out.
    pub fn matches(&self, given: &str) -> bool {
        let (a, b) = (self.0.as_bytes(), given.as_bytes());
        a.len() == b.len() && a.iter().zip(b).fold(0u8, |d, (x, y)| d | (x ^ y)) == 0
    }
}

/// Who a request is from, as far as access goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// Carries the endpoint's token.
    Holder,
    /// No (right) token, from a loopback address.
    Local,
    /// No (right) token, from elsewhere.
    Stranger,
}

/// Sorts a request by its peer address and the token it carries (bearer header or cookie).
pub fn caller(peer: SocketAddr, headers: &HeaderMap, token: Option<&Token>) -> Caller {
    if let Some(t) = token {
        if presented(headers).is_some_and(|g| t.matches(g)) {
            return Caller::Holder;
        }
    }
    if peer.ip().is_loopback() || peer.ip().to_canonical().is_loopback() {
        Caller::Local
    } else {
        Caller::Stranger
    }
}

/// The token a request carries: `Authorization: Bearer <t>` or the dashboard cookie.
fn presented(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v.strip_prefix("Bearer ") {
            return Some(t.trim());
        }
    }
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .find_map(|kv| kv.trim().strip_prefix(TOKEN_COOKIE)?.strip_prefix('='))
}

/// 401 with a word on how to get in.
pub fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"))],
        "a token is needed from here: `Authorization: Bearer <token>` (vgas dashboard prints the URL with it)\n",
    )
        .into_response()
}

/// The registry in the OpenMetrics text format, or 500 if it cannot be written.
pub fn metrics_response(registry: &Registry) -> Response {
    let mut text = String::new();
    match prometheus_client::encoding::text::encode(&mut text, registry) {
        Ok(()) => ([(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)], text).into_response(),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, format!("metrics: {e}\n")).into_response(),
    }
}

/// A bound listener, ready to serve.
#[derive(Debug)]
pub struct Bound {
    listener: tokio::net::TcpListener,
    pub addr: SocketAddr,
}

/// Binds `addr` (port 0 picks one). Binding beyond loopback is allowed; the access rule
/// keeps strangers out.
pub async fn bind(addr: SocketAddr, what: &str) -> Result<Bound> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("bind the {what} endpoint to {addr}"))?;
    let addr = listener.local_addr()?;
    Ok(Bound { listener, addr })
}

/// A listening socket bound once, at a process's start, and served again and again: a
/// master binds its dashboard and metrics addresses before it waits for the leader lease, so
/// an address it cannot have stops it at once with the reason, instead of failing every term
/// it leads; between terms the port stays its own.
#[derive(Debug)]
pub struct Reserved {
    listener: std::net::TcpListener,
    pub addr: SocketAddr,
}

impl Reserved {
    /// Binds `addr` (port 0 picks one).
    pub fn bind(addr: SocketAddr, what: &str) -> Result<Reserved> {
        let listener = std::net::TcpListener::bind(addr)
            .with_context(|| format!("bind the {what} endpoint to {addr}"))?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        Ok(Reserved { listener, addr })
    }

    /// The socket, ready to serve (in a Tokio runtime) until that serving ends.
    pub fn bound(&self) -> Result<Bound> {
        let listener = tokio::net::TcpListener::from_std(self.listener.try_clone()?)?;
        Ok(Bound {
            listener,
            addr: self.addr,
        })
    }
}

/// Serves `router` on `bound` until `shutdown`, on `tracker`.
pub fn serve(bound: Bound, router: Router, tracker: &TaskTracker, shutdown: CancellationToken) {
    let svc = router.into_make_service_with_connect_info::<SocketAddr>();
    tracker.spawn(async move {
        let served = axum::serve(bound.listener, svc)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::warn!("http endpoint on {} ended: {e}", bound.addr);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, v.parse().unwrap());
        }
        h
    }

    #[test]
    fn strangers_need_the_token_and_loopback_reads() {
        let t = Token::parse("0123456789abcdef0123").unwrap();
        let lan: SocketAddr = "10.1.2.3:5000".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let lo6: SocketAddr = "[::ffff:127.0.0.1]:5000".parse().unwrap();
        assert_eq!(caller(lan, &headers(&[]), Some(&t)), Caller::Stranger);
        assert_eq!(caller(lan, &headers(&[]), None), Caller::Stranger);
        assert_eq!(caller(lo, &headers(&[]), Some(&t)), Caller::Local);
        assert_eq!(caller(lo6, &headers(&[]), None), Caller::Local);
        let bearer = headers(&[("authorization", "Bearer 0123456789abcdef0123")]);
        assert_eq!(caller(lan, &bearer, Some(&t)), Caller::Holder);
        let wrong = headers(&[("authorization", "Bearer 0123456789abcdef0124")]);
        assert_eq!(caller(lan, &wrong, Some(&t)), Caller::Stranger);
        let cookie = headers(&[("cookie", "a=b; vgas_dashboard=0123456789abcdef0123")]);
        assert_eq!(caller(lan, &cookie, Some(&t)), Caller::Holder);
        // Without a configured token nobody is a holder, whatever they send.
        assert_eq!(caller(lan, &bearer, None), Caller::Stranger);
    }

    #[test]
    fn tokens_are_checked() {
        assert!(Token::parse("short").is_err());
        assert!(Token::parse("has a space in it ok").is_err());
        assert!(Token::parse("semi;colon-0123456789").is_err());
        let g = Token::generate();
        assert_eq!(g.expose().len(), TOKEN_BYTES * 2);
        assert!(Token::parse(g.expose()).is_ok());
        assert!(!g.matches(""));
    }
}
