//! Connecting to NATS with a role's credentials, with errors that say what to do.

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::ConnectOptions;
use vgas_shared::config::{Credentials, Resolved};
use vgas_shared::subjects::node_inbox_prefix;

/// The connect options for `creds`: with an nkey the client signs the server's challenge (the
/// seed never leaves this process); with a password it sends the password. Credentials that
/// carry the swarm's CA make the connection insist on TLS and trust only that CA.
pub fn auth_options(creds: Option<&Credentials>) -> Result<ConnectOptions> {
    let opts = match creds {
        Some(Credentials {
            seed: Some(seed), ..
        }) => ConnectOptions::with_nkey(seed.clone()),
        Some(c) => ConnectOptions::with_user_and_password(c.user.clone(), c.password.clone()),
        None => ConnectOptions::new(),
    };
    let Some(c) = creds else { return Ok(opts) };
    // A node's grants name only its own inboxes (no node reads another's replies).
    let opts = match c.node.as_deref() {
        Some(node) => opts.custom_inbox_prefix(node_inbox_prefix(node)),
        None => opts,
    };
    Ok(match c.ca.as_deref() {
        Some(ca) => {
            let client = c.cert.as_deref().zip(c.key.as_deref());
            opts.tls_client_config(crate::tls::client_config(ca, client)?)
                .require_tls(true)
        }
        None => opts,
    })
}

/// Tries at the first connection: a server that is starting, or reloading its users (`vgas
/// node add` elsewhere), refuses a connection for a moment; wrong credentials still fail in
/// about a second.
const CONNECT_TRIES: u32 = 4;

/// The pause after the first failed try, doubled after each.
const CONNECT_BACKOFF: Duration = Duration::from_millis(150);

/// The servers of a URL setting: one URL, or several separated by commas (the servers of a
/// cluster; the client takes the first that answers and learns the rest from the server).
pub fn server_urls(setting: &str) -> Result<Vec<async_nats::ServerAddr>> {
    setting
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .with_context(|| format!("{u:?} is not a NATS server URL"))
        })
        .collect::<Result<Vec<_>>>()
        .and_then(|urls| match urls.is_empty() {
            true => anyhow::bail!("no NATS server URL in {setting:?}"),
            false => Ok(urls),
        })
}

/// Connects as `name`. Reconnection after a server restart is async-nats' own (unlimited
/// attempts with back-off, over every server of the cluster it has heard of); subscriptions
/// are restored by the client.
pub async fn connect(cfg: &Resolved, name: &str) -> Result<async_nats::Client> {
    let urls = server_urls(&cfg.nats_url)?;
    let mut pause = CONNECT_BACKOFF;
    let mut tries = 1;
    let failed = loop {
        match auth_options(cfg.creds.as_ref())?
            .name(name)
            .connect(urls.clone())
            .await
        {
            Ok(client) => return Ok(client),
            Err(e) if tries >= CONNECT_TRIES => break e,
            Err(_) => {
                tokio::time::sleep(pause).await;
                pause *= 2;
                tries += 1;
            }
        }
    };
    let hint = if cfg.creds.is_none() {
        "; no credentials found: run `vgas init` or pass --creds"
    } else {
        ""
    };
    Err(failed).with_context(|| format!("connect to NATS at {}{hint}", cfg.nats_url))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_url_setting_names_one_server_or_a_cluster() {
        assert_eq!(server_urls("nats://127.0.0.1:4222").unwrap().len(), 1);
        let urls = server_urls("nats://a:4222, tls://b:4223,nats://c:4224").unwrap();
        assert_eq!(urls.len(), 3);
        assert_eq!(urls[1].host(), "b");
        assert_eq!(urls[1].port(), 4223);
        assert!(server_urls("").is_err());
        assert!(server_urls(" , ").is_err());
        let e = server_urls("nats://a:4222,http://[::1").unwrap_err();
        assert!(format!("{e:#}").contains("not a NATS server URL"), "{e:#}");
    }
}
