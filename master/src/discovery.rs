//! The master's side of `NetworkDiscovery`: it announces itself (`ClientMode::Master`) with the
//! NATS URLs workers should use, and browses the LAN so `vgas status` can list workers it sees
//! that have not joined, with the likely reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use vgas_shared::config::Resolved;
use vgas_shared::discovery::{
    Advert, ClientMode, JoinRefusal, SeenNode, HOST_PLACEHOLDER, PROTOCOL_VERSION,
};
use vgas_shared::mdns::{NetworkDiscovery, Seen};

/// Nodes seen by mDNS, by full name.
pub type SeenMap = Arc<Mutex<HashMap<String, SeenNode>>>;

/// The URLs a master advertises for `nats_url` (one URL, or a cluster's, comma-separated):
/// a loopback or wildcard host becomes the placeholder that each worker fills with the
/// address the advert reached it from.
pub fn advertised_urls(nats_url: &str) -> Vec<String> {
    nats_url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(advertised_url)
        .collect()
}

fn advertised_url(nats_url: &str) -> String {
    let rest = nats_url
        .split_once("://")
        .map(|(_, r)| r)
        .unwrap_or(nats_url);
    let hostport = rest.rsplit('@').next().unwrap_or(rest);
    let (host, port) = match hostport.rsplit_once(':') {
        Some((h, p)) => (h, p),
        None => (hostport, "4222"),
    };
    let local = matches!(
        host,
        "127.0.0.1" | "localhost" | "0.0.0.0" | "::1" | "[::1]" | "::" | "[::]" | ""
    );
    if local {
        format!("nats://{HOST_PLACEHOLDER}:{port}")
    } else {
        format!("nats://{host}:{port}")
    }
}

/// Starts announcing and browsing (the browse loop on `tracker` until `stop`); `None` when
/// mDNS is off or unavailable (logged).
pub fn start(
    conn: &Resolved,
    node_id: &str,
    http_port: Option<u16>,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Option<(NetworkDiscovery, SeenMap)> {
    let cfg = conn.mdns.as_ref()?;
    let mut d = match NetworkDiscovery::start(cfg) {
        Ok(d) => d,
        Err(e) => {
            warn!("mDNS unavailable, not announcing: {e}");
            return None;
        }
    };
    let urls = advertised_urls(&conn.nats_url);
    let port = urls
        .first()
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .unwrap_or(4222);
    let advert = Advert {
        mode: ClientMode::Master,
        node_id: node_id.to_owned(),
        cluster: conn.cluster.clone(),
        proto: PROTOCOL_VERSION,
        nats_urls: urls,
        http_port,
        summary: String::new(),
        ca: conn.trusted_ca(),
    };
    if let Err(e) = d.broadcast_presence(&advert, port) {
        warn!("could not announce the master: {e}");
    } else {
        info!(cluster = %conn.cluster, urls = ?advert.nats_urls, "announcing the master by mDNS");
    }
    let seen: SeenMap = Arc::default();
    match d.browse() {
        Ok(mut rx) => {
            let map = seen.clone();
            tracker.spawn(async move {
                loop {
                    let ev = tokio::select! {
                        _ = stop.cancelled() => break,
                        ev = rx.recv() => match ev { Some(ev) => ev, None => break },
                    };
                    let mut map = map.lock().expect("seen lock");
                    match ev {
                        Seen::Up { fullname, node } => {
                            map.insert(fullname, node);
                        }
                        Seen::Down { fullname } => {
                            map.remove(&fullname);
                        }
                    }
                }
            });
        }
        Err(e) => warn!("mDNS browsing unavailable: {e}"),
    }
    Some((d, seen))
}

/// Workers seen on the LAN that are not live here, each with the likely reason.
pub fn unjoined(seen: &SeenMap, cluster: &str, live: &[String]) -> Vec<SeenNode> {
    let map = seen.lock().expect("seen lock");
    let mut out: Vec<SeenNode> = map
        .values()
        .filter(|n| n.advert.mode == ClientMode::Slave && !live.contains(&n.advert.node_id))
        .map(|n| {
            let why = n
                .advert
                .refusal_as_worker(cluster)
                .unwrap_or(JoinRefusal::NotConnected);
            SeenNode {
                not_joined: Some(why),
                ..n.clone()
            }
        })
        .collect();
    out.sort_by(|a, b| a.advert.node_id.cmp(&b.advert.node_id));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_become_placeholders() {
        assert_eq!(
            advertised_urls("nats://127.0.0.1:4222"),
            ["nats://{host}:4222"]
        );
        assert_eq!(
            advertised_urls("nats://localhost:5000"),
            ["nats://{host}:5000"]
        );
        assert_eq!(
            advertised_urls("nats://10.0.0.5:4222"),
            ["nats://10.0.0.5:4222"]
        );
        assert_eq!(
            advertised_urls("nats://u:p@nats.lan:4333"),
            ["nats://nats.lan:4333"]
        );
        assert_eq!(
            advertised_urls("nats://10.0.0.5:4222, nats://10.0.0.6:4222"),
            ["nats://10.0.0.5:4222", "nats://10.0.0.6:4222"]
        );
    }
}
