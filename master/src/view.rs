//! `sync_distributed_state` for the node and GPU-lease view (`vgas_shared::crdt::view`):
//! every master, leading or standing by, listens to the workers' heartbeats and keeps one
//! register per worker; the leading master keeps one per leased device from its lease table.
//! Every [`SYNC_INTERVAL`] each master publishes the registers it wrote since its last
//! message (none at all, when nothing changed, says it is there) on `<prefix>.swarm.view.sync`, and every [`FULL_EVERY`] intervals all it holds, so
//! writes travel through any master and a newcomer or a healed side catches up; it merges
//! what the others publish. `<prefix>.swarm.view` answers with the view (`vgas status --view`),
//! from any master: on the minority side of a partition, where no master can lead, too.

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use async_nats::service::ServiceExt;
use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use vgas_shared::codec::{decode_as, encode, encode_error};
use vgas_shared::crdt::lww::{clock, HLC};
use vgas_shared::crdt::view::{Merged, SwarmView, ViewDigest, ViewReport};
use vgas_shared::error::WireError;
use vgas_shared::limits::MAX_CONTROL_BYTES;
use vgas_shared::wire::Heartbeat;
use vgas_shared::{Encoding, ErrorCode, WorkerId};

use crate::dispatch::gpu::LeaseTable;

/// How often a master publishes the registers it wrote: the view lags by about this.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Every this many intervals a master publishes its whole view (every 5 s).
pub const FULL_EVERY: u32 = 10;

/// Registers per message of a whole view: at about 200 bytes each, 200 KB, well under the
/// server's payload limit however many workers there are.
pub const PER_MESSAGE: usize = 1_000;

/// Another master counts as heard (in the view's answer) within this long of its last
/// message: four intervals.
pub const MASTER_SILENCE: Duration = Duration::from_secs(2);

/// The leading master's lease table while this master leads; `None` while it stands by.
pub type Leading = Arc<Mutex<Option<LeaseTable>>>;

/// One master's view and what it has yet to publish.
pub struct ViewBook {
    node: String,
    clock: HLC,
    state: Mutex<State>,
}

impl std::fmt::Debug for ViewBook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ViewBook")
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

#[derive(Default)]
struct State {
    view: SwarmView,
    dirty_nodes: BTreeSet<String>,
    dirty_leases: BTreeSet<String>,
    masters: HashMap<String, Instant>,
}

impl ViewBook {
    pub fn new(node: &str) -> ViewBook {
        ViewBook {
            node: node.to_owned(),
            clock: clock(node),
            state: Mutex::new(State::default()),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Records a heartbeat heard now.
    pub fn heard(&self, from: &WorkerId, hb: &Heartbeat, now_ms: u64) {
        let mut s = self.state();
        if let Some(key) = s.view.heard(&self.clock, from, hb, &self.node, now_ms) {
            s.dirty_nodes.insert(key);
        }
    }

    /// One interval's upkeep: the lease registers follow `leases` (this master leads), and
    /// workers silent too long are removed.
    pub fn upkeep(&self, leases: Option<&LeaseTable>, now_ms: u64) {
        let held = leases.map(|t| t.lock().unwrap_or_else(|p| p.into_inner()).all());
        let mut s = self.state();
        if let Some(held) = held {
            let written = s.view.reconcile_leases(&self.clock, &held, &self.node);
            s.dirty_leases.extend(written);
        }
        let removed = s.view.forget(&self.clock, now_ms);
        s.dirty_nodes.extend(removed);
    }

    /// The registers written here since the last call (none at all still says this master
    /// is there).
    pub fn take_delta(&self) -> ViewDigest {
        let mut s = self.state();
        let nodes = std::mem::take(&mut s.dirty_nodes);
        let leases = std::mem::take(&mut s.dirty_leases);
        s.view.digest_of(
            &self.node,
            nodes.iter().map(String::as_str),
            leases.iter().map(String::as_str),
        )
    }

    /// The whole view, in messages of at most [`PER_MESSAGE`] registers.
    pub fn full(&self) -> Vec<ViewDigest> {
        self.state().view.full_digests(&self.node, PER_MESSAGE)
    }

    /// Merges another master's digest (its own are ignored).
    pub fn merge(&self, d: &ViewDigest) -> Merged {
        if d.node == self.node {
            return Merged::default();
        }
        let mut s = self.state();
        s.masters.insert(d.node.clone(), Instant::now());
        s.view.merge(&self.clock, d)
    }

    /// A master leaving says so with an empty digest it is not heard after.
    fn gone(&self, node: &str) {
        self.state().masters.remove(node);
    }

    /// The view as `swarm.view` answers it.
    pub fn report(&self, leading: bool) -> ViewReport {
        let mut s = self.state();
        s.masters
            .retain(|_, heard| heard.elapsed() < MASTER_SILENCE * 300);
        let mut masters: Vec<String> = s
            .masters
            .iter()
            .filter(|(_, heard)| heard.elapsed() < MASTER_SILENCE)
            .map(|(n, _)| n.clone())
            .collect();
        masters.sort();
        ViewReport {
            answered_by: self.node.clone(),
            leading,
            masters,
            nodes: s.view.nodes.live().map(|(_, n)| n.clone()).collect(),
            leases: s.view.leases.live().map(|(_, l)| l.clone()).collect(),
        }
    }
}

/// The sync subject's marker of a master that stops: a digest with no registers whose node
/// ends in this.
const LEAVING: &str = "#leaving";

/// Starts the view on this master: its micro service (`swarm.view`), the heartbeat listener,
/// and the exchange with the other masters, until `stop`.
pub async fn start(
    subjects: &vgas_shared::Subjects,
    client: async_nats::Client,
    book: Arc<ViewBook>,
    leading: Leading,
    tracker: &TaskTracker,
    stop: CancellationToken,
) -> Result<async_nats::service::Service> {
    let service = client
        .service_builder()
        .description("vgas swarm view: nodes and GPU leases as every master holds them")
        .start(subjects.view_service_name(), env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("register the view service: {e}"))?;
    let mut endpoint = service
        .endpoint_builder()
        .name("view")
        .add(subjects.swarm_view())
        .await
        .map_err(|e| anyhow::anyhow!("add endpoint {}: {e}", subjects.swarm_view()))?;
    let heartbeats = client.subscribe(subjects.all_heartbeats()).await?;
    let sync_subject = subjects.swarm_view_sync();
    let sync = client.subscribe(sync_subject.clone()).await?;

    let (b, l, s) = (book.clone(), leading.clone(), stop.clone());
    tracker.spawn(async move {
        loop {
            tokio::select! {
                _ = s.cancelled() => break,
                req = endpoint.next() => {
                    let Some(req) = req else { break };
                    let enc = Encoding::detect(&req.message.payload);
                    let bytes = if req.message.payload.len() > MAX_CONTROL_BYTES {
                        encode_error(enc, &WireError {
                            code: ErrorCode::TooLarge,
                            message: "view takes an empty payload".into(),
                        })
                    } else {
                        let leads = l.lock().unwrap_or_else(|p| p.into_inner()).is_some();
                        encode(enc, &b.report(leads)).unwrap_or_else(|e| {
                            encode_error(enc, &WireError { code: ErrorCode::Internal, message: e.to_string() })
                        })
                    };
                    if let Err(e) = req.respond(Ok(bytes.into())).await {
                        debug!("could not respond: {e}");
                    }
                }
            }
        }
    });
    tracker.spawn(exchange(
        book,
        client,
        heartbeats,
        sync,
        sync_subject,
        leading,
        stop,
    ));
    Ok(service)
}

/// Listens to heartbeats and the other masters, publishes this master's registers.
async fn exchange(
    book: Arc<ViewBook>,
    client: async_nats::Client,
    mut heartbeats: async_nats::Subscriber,
    mut sync: async_nats::Subscriber,
    subject: String,
    leading: Leading,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks: u32 = 0;
    let publish = |d: &ViewDigest| encode(Encoding::MsgPack, d).map(Bytes::from);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = heartbeats.next() => {
                let Some(msg) = msg else { break };
                if let Some((from, hb)) = crate::service::parse_heartbeat(&msg) {
                    book.heard(&from, &hb, vgas_shared::now_ms());
                }
            }
            msg = sync.next() => {
                let Some(msg) = msg else { break };
                match decode_as::<ViewDigest>(Encoding::MsgPack, &msg.payload) {
                    Ok(d) => match d.node.strip_suffix(LEAVING) {
                        Some(node) => book.gone(node),
                        None => {
                            let m = book.merge(&d);
                            if m.refused > 0 {
                                warn!(from = %d.node, refused = m.refused, "view registers stamped too far ahead of this host's clock were not taken");
                            }
                        }
                    },
                    Err(e) => warn!("an unreadable view digest on {subject}: {e}"),
                }
            }
            _ = tick.tick() => {
                let leases = leading.lock().unwrap_or_else(|p| p.into_inner()).clone();
                book.upkeep(leases.as_ref(), vgas_shared::now_ms());
                ticks = ticks.wrapping_add(1);
                let delta = book.take_delta();
                let digests = match ticks.is_multiple_of(FULL_EVERY) {
                    true => book.full(),
                    false => vec![delta],
                };
                for d in &digests {
                    if let Ok(bytes) = publish(d) {
                        let _ = client.publish(subject.clone(), bytes).await;
                    }
                }
            }
        }
    }
    let bye = ViewDigest {
        node: format!("{}{LEAVING}", book.node),
        ..Default::default()
    };
    if let Ok(bytes) = publish(&bye) {
        let _ = client.publish(subject, bytes).await;
        let _ = client.flush().await;
    }
}
