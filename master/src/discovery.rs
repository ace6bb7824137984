//! The master's side of `NetworkDiscovery`: it announces itself (`ClientMode::Master`) with the
//! NATS URLs workers should use, and browses the LAN so `vgas status` can list workers it sees
//! that have not joined, with the likely reason.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vgas_shared::config::Resolved;
use vgas_shared::discovery::{
    Advert, ClientMode, JoinRefusal, SeenNode, HOST_PLACEHOLDER, PROTOCOL_VERSION,
};
use vgas_shared::mdns::{NetworkDiscovery, Seen};

/// Nodes seen by mDNS, by full name.
pub type SeenMap = Arc<Mutex<HashMap<String, SeenNode>>>;

/// The URLs a master advertises for `nats_url`: a loopback or wildcard host becomes the
/// placeholder that each worker fills with the address the advert reached it from.
pub fn advertised_urls(nats_url: &str) -> Vec<String> {
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
        vec![format!("nats://{HOST_PLACEHOLDER}:{port}")]
    } else {
        vec![format!("nats://{host}:{port}")]
    }
}

/// Starts announcing and browsing; `None` when mDNS is off or unavailable (logged).
pub fn start(
    conn: &Resolved,
    node_id: &str,
    http_port: Option<u16>,
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
            tokio::spawn(async move {
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

/// `vgas discover`: listens for `wait`, then lists every vgas node seen. Workers are marked
/// joined when this CLI can reach a master that lists them live.
pub async fn discover_cmd(
    conn: &Resolved,
    wait: std::time::Duration,
    json: bool,
) -> anyhow::Result<i32> {
    let cfg = conn.mdns.clone().unwrap_or_default();
    let d = NetworkDiscovery::start(&cfg)?;
    let mut rx = d.browse()?;
    let mut nodes: HashMap<String, SeenNode> = HashMap::new();
    let end = tokio::time::Instant::now() + wait;
    while let Ok(Some(ev)) = tokio::time::timeout_at(end, rx.recv()).await {
        match ev {
            Seen::Up { fullname, node } => {
                nodes.insert(fullname, node);
            }
            Seen::Down { fullname } => {
                nodes.remove(&fullname);
            }
        }
    }
    tokio::task::spawn_blocking(move || d.stop()).await.ok();
    let live = live_workers(conn).await;
    let mut list: Vec<SeenNode> = nodes.into_values().collect();
    for n in &mut list {
        if n.advert.mode == ClientMode::Slave {
            n.not_joined = match (&live, n.advert.refusal_as_worker(&conn.cluster)) {
                (_, Some(why)) => Some(why),
                (Some(live), None) if !live.contains(&n.advert.node_id) => {
                    Some(JoinRefusal::NotConnected)
                }
                _ => None,
            };
        }
    }
    list.sort_by(|a, b| {
        (a.advert.mode != ClientMode::Master, &a.advert.node_id)
            .cmp(&(b.advert.mode != ClientMode::Master, &b.advert.node_id))
    });
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(0);
    }
    println!(
        "{:<7} {:<30} {:<12} {:<32} STATE",
        "MODE", "NODE", "CLUSTER", "ADDRESSES"
    );
    for n in &list {
        let addrs: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
        let state = match (n.advert.mode, n.not_joined, &live) {
            (ClientMode::Master, _, _) if n.advert.refusal(&conn.cluster).is_some() => {
                "other cluster or version".to_string()
            }
            (ClientMode::Master, _, _) => format!(
                "master of this cluster, NATS {}",
                n.advert.urls_from(&n.addresses).join(" ")
            ),
            (_, Some(why), _) => why.describe().to_string(),
            (_, None, Some(_)) => "joined".to_string(),
            (_, None, None) => "unknown (no master reachable from here)".to_string(),
        };
        let mode = if n.advert.mode == ClientMode::Master {
            "master"
        } else {
            "worker"
        };
        println!(
            "{:<7} {:<30} {:<12} {:<32} {}",
            mode,
            n.advert.node_id,
            n.advert.cluster,
            addrs.join(","),
            state
        );
    }
    if list.is_empty() {
        println!("no vgas node answered within {}s", wait.as_secs());
    }
    Ok(0)
}

/// The ids of live workers, when a master is reachable with this CLI's settings.
async fn live_workers(conn: &Resolved) -> Option<Vec<String>> {
    let client = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        crate::connect::connect(conn, "vgas-discover"),
    )
    .await
    .ok()?
    .ok()?;
    let bytes = vgas_shared::codec::encode(vgas_shared::Encoding::MsgPack, &()).ok()?;
    let msg = tokio::time::timeout(
        std::time::Duration::from_secs(2),
        client.request(conn.subjects.status(), bytes.into()),
    )
    .await
    .ok()?
    .ok()?;
    let reply: vgas_shared::codec::Reply<vgas_shared::wire::SwarmPulse> =
        vgas_shared::codec::decode_as(vgas_shared::Encoding::MsgPack, &msg.payload).ok()?;
    Some(
        reply
            .into_result()
            .ok()?
            .live
            .iter()
            .map(|n| n.id.to_string())
            .collect(),
    )
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
    }
}
