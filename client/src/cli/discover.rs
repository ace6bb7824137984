//! `vgas discover`: listens for vgas nodes on the LAN (mDNS) and lists each with its mode,
//! cluster, addresses, and whether it joined (or why not), asking a reachable master which
//! workers are live.

use std::collections::HashMap;
use std::time::Duration;

use vgas_shared::config::Resolved;
use vgas_shared::discovery::{ClientMode, JoinRefusal, SeenNode};
use vgas_shared::mdns::{NetworkDiscovery, Seen};
use vgas_shared::wire::SwarmPulse;

/// How long `discover` waits to connect to a master and for its status, each: a master on the
/// LAN answers in milliseconds; one that does not is reported as unreachable, not waited on.
const LIVE_WORKERS_TIMEOUT: Duration = Duration::from_secs(2);

/// `vgas discover`: listens for `wait`, then lists every vgas node seen. Workers are marked
/// joined when this CLI can reach a master that lists them live.
pub async fn run(conn: &Resolved, wait: std::time::Duration, json: bool) -> anyhow::Result<i32> {
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
        super::print_stdout(&format!("{}\n", serde_json::to_string_pretty(&list)?))?;
        return Ok(0);
    }
    println!(
        "{:<7} {:<30} {:<12} {:<32} STATE",
        "MODE", "NODE", "CLUSTER", "ADDRESSES"
    );
    let ca = conn.trusted_ca();
    for n in &list {
        let addrs: Vec<String> = n.addresses.iter().map(|a| a.to_string()).collect();
        let state = match (n.advert.mode, n.not_joined, &live) {
            (ClientMode::Master, _, _) => match n.advert.refusal(&conn.cluster, ca.as_deref()) {
                Some(why) => why.describe().to_string(),
                None => format!(
                    "master of this cluster, NATS {}",
                    n.advert.urls_from(&n.addresses).join(" ")
                ),
            },
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
        LIVE_WORKERS_TIMEOUT,
        crate::connect::connect(conn, "vgas-discover"),
    )
    .await
    .ok()?
    .ok()?;
    let swarm = crate::api::Swarm::new(client, conn.subjects.clone());
    let pulse: SwarmPulse = swarm
        .request_within(swarm.subjects.status(), &(), LIVE_WORKERS_TIMEOUT)
        .await
        .ok()?;
    Some(pulse.live.iter().map(|n| n.id.to_string()).collect())
}
