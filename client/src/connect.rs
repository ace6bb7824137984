//! Connecting to NATS with a role's credentials, with errors that say what to do.

use anyhow::{Context, Result};
use vgas_shared::config::Resolved;

/// Connects as `name`. Reconnection after a server restart is async-nats' own (unlimited
/// attempts with back-off); subscriptions are restored by the client.
pub async fn connect(cfg: &Resolved, name: &str) -> Result<async_nats::Client> {
    let mut opts = async_nats::ConnectOptions::new().name(name);
    if let Some(c) = &cfg.creds {
        opts = opts.user_and_password(c.user.clone(), c.password.clone());
    }
    opts.connect(cfg.nats_url.as_str()).await.with_context(|| {
        let hint = if cfg.creds.is_none() {
            "; no credentials found: run `vgas init` or pass --creds"
        } else {
            ""
        };
        format!("connect to NATS at {}{hint}", cfg.nats_url)
    })
}
