//! Joining a swarm. With an explicit NATS URL the worker simply connects. Without one it finds
//! a master of its cluster by mDNS (`NetworkDiscovery`), connects to the URL the master
//! advertises, and keeps browsing: when its connection is dead and the master is announced at
//! another address, it ends the session (handing running tasks back) and joins there, with no
//! restart. It also announces itself (`ClientMode::Slave`) so `vgas discover` and the
//! master's status can see it.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Result;
use async_nats::connection::State;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vgas_shared::discovery::{Advert, ClientMode, PROTOCOL_VERSION};
use vgas_shared::mdns::{NetworkDiscovery, Seen};

use crate::runner::Worker;
use crate::WorkerConfig;

/// How long a connection may stay down before a master announced elsewhere is joined instead.
pub const MOVE_AFTER_DISCONNECT: Duration = Duration::from_secs(3);

/// How often the session watcher looks at the connection state.
const WATCH_INTERVAL: Duration = Duration::from_millis(500);

/// How long one connection attempt to an advertised URL may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// Masters seen on the LAN, by mDNS full name, with the URLs to reach each.
#[derive(Debug, Default)]
struct Masters {
    usable: HashMap<String, Vec<String>>,
}

impl Masters {
    /// `ca`: the fingerprint of the CA this worker's credentials trust (none: no TLS).
    fn apply(&mut self, seen: Seen, cluster: &str, ca: Option<&str>) {
        match seen {
            Seen::Up { fullname, node } => match node.advert.refusal(cluster, ca) {
                None => {
                    let urls = node.advert.urls_from(&node.addresses);
                    if !urls.is_empty() {
                        self.usable.insert(fullname, urls);
                    }
                }
                Some(why) if node.advert.mode == ClientMode::Master => {
                    info!(master = %node.advert.node_id, cluster = %node.advert.cluster, "not joining: {}", why.describe());
                }
                Some(_) => {}
            },
            Seen::Down { fullname } => {
                self.usable.remove(&fullname);
            }
        }
    }

    fn urls(&self) -> Vec<String> {
        let mut all: Vec<String> = self.usable.values().flatten().cloned().collect();
        all.sort();
        all.dedup();
        all
    }
}

/// Runs the worker until `shutdown`: directly, or through discovery when no URL was given.
pub async fn run(cfg: WorkerConfig, shutdown: CancellationToken) -> Result<()> {
    let mut disco = match &cfg.conn.mdns {
        Some(m) => match NetworkDiscovery::start(m) {
            Ok(d) => Some(d),
            Err(e) => {
                warn!("mDNS unavailable, not announcing: {e}");
                None
            }
        },
        None => None,
    };
    if let Some(d) = disco.as_mut() {
        let advert = Advert {
            mode: ClientMode::Slave,
            node_id: cfg.id.to_string(),
            cluster: cfg.conn.cluster.clone(),
            proto: PROTOCOL_VERSION,
            nats_urls: Vec::new(),
            http_port: None,
            summary: format!("slots={} caps={}", cfg.slots, cfg.capabilities.join(",")),
            ca: None,
        };
        if let Err(e) = d.broadcast_presence(&advert, 0) {
            warn!("could not announce this worker: {e}");
        }
    }
    // The metrics endpoint outlives each session with a master.
    let http = tokio_util::task::TaskTracker::new();
    let http_stop = shutdown.child_token();
    if let Some(addr) = cfg.metrics_addr {
        crate::metrics::serve(
            addr,
            cfg.metrics_token.clone(),
            cfg.metrics.clone(),
            &http,
            http_stop.clone(),
        )
        .await?;
    }
    let result = match &disco {
        Some(d) if !cfg.conn.nats_url_explicit => {
            let seen = d.browse()?;
            discovered(cfg, seen, shutdown).await
        }
        _ => Worker::start(cfg).await?.serve(shutdown).await,
    };
    if let Some(d) = disco {
        tokio::task::spawn_blocking(move || d.stop()).await.ok();
    }
    http.close();
    http_stop.cancel();
    http.wait().await;
    result
}

/// Joins the masters mDNS shows, session after session, until `shutdown`.
async fn discovered(
    cfg: WorkerConfig,
    mut seen: mpsc::Receiver<Seen>,
    shutdown: CancellationToken,
) -> Result<()> {
    let cluster = cfg.conn.cluster.clone();
    let ca = cfg.conn.trusted_ca();
    let mut masters = Masters::default();
    info!(cluster = %cluster, "no NATS URL given: looking for a master by mDNS");
    loop {
        // Wait for a master we may join, then try its URLs in order.
        let worker = loop {
            if let Some(w) = try_urls(&cfg, &masters.urls()).await {
                break w;
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                ev = seen.recv() => match ev {
                    Some(ev) => masters.apply(ev, &cluster, ca.as_deref()),
                    None => anyhow::bail!("mDNS browsing stopped"),
                },
                _ = tokio::time::sleep(MOVE_AFTER_DISCONNECT) => {}
            }
        };
        let client = worker.client().clone();
        let hand_back = worker.hand_back_switch();
        let session = CancellationToken::new();
        // The session is served on this task, beside the watch below: it ends with it.
        let serving = worker.serve(session.clone());
        tokio::pin!(serving);
        let mut served = None;
        let mut tick = tokio::time::interval(WATCH_INTERVAL);
        let mut down_for = Duration::ZERO;
        let moved = loop {
            tokio::select! {
                _ = shutdown.cancelled() => break false,
                r = &mut serving, if served.is_none() => served = Some(r),
                ev = seen.recv() => if let Some(ev) = ev { masters.apply(ev, &cluster, ca.as_deref()) },
                _ = tick.tick() => {
                    down_for = if client.connection_state() == State::Connected { Duration::ZERO } else { down_for + WATCH_INTERVAL };
                    if down_for >= MOVE_AFTER_DISCONNECT && !masters.urls().is_empty() {
                        break true;
                    }
                }
            }
        };
        if moved {
            info!(urls = ?masters.urls(), "connection lost and a master is announced: rejoining");
            hand_back.store(true, Ordering::Release);
        }
        session.cancel();
        let served = match served {
            Some(r) => r,
            None => serving.await,
        };
        if let Err(e) = served {
            if !moved {
                return Err(e);
            }
            warn!("worker session ended: {e:#}");
        }
        if !moved {
            return Ok(());
        }
    }
}

/// Starts a worker session on the first URL that accepts us.
async fn try_urls(cfg: &WorkerConfig, urls: &[String]) -> Option<Worker> {
    for url in urls {
        let mut c = cfg.clone();
        c.conn.nats_url = url.clone();
        match tokio::time::timeout(CONNECT_TIMEOUT, Worker::start(c)).await {
            Ok(Ok(w)) => {
                info!(url, "joined the master found by mDNS");
                return Some(w);
            }
            Ok(Err(e)) => warn!(url, "could not join: {e:#}"),
            Err(_) => warn!(url, "could not join: timed out"),
        }
    }
    None
}
