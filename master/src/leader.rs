//! Several masters, one leader. Every `vgas-master` of a swarm competes for one lease: the
//! key `master` in the KV bucket `<prefix>_leader`, replicated like the rest of the swarm's
//! state. The holder renews it every [`LEASE_RENEW`] with a compare-and-set on the revision it
//! wrote last; the others watch it as standbys, serving nothing, and take it over (again by
//! compare-and-set, so only one wins) once its revision has not moved for [`LEASE_TTL`] by
//! their own clock.
//!
//! Fencing: a leader serves only until [`LEASE_TTL`] minus [`LEASE_MARGIN`] after it *sent*
//! its last successful renewal, and steps down then unless a newer renewal succeeded. A
//! standby starts its wait only after it *saw* that renewal, which the server stored after
//! it was sent, so the old leader has stopped at least [`LEASE_MARGIN`] before a new one can
//! start, whatever their clocks read (only elapsed time on each host is compared). A renewal
//! refused because the revision moved means another master took over: the leader steps down
//! at once. The results stream is fenced too: a new leader replaces the results consumer, so
//! the old one's pending pulls deliver nothing.
//!
//! Why a lease and not partitions or a shared work queue: every piece of the master (the
//! Gatling scheduler's view of workers and GPU leases, admission's bound, the exactly-once
//! bookkeeping of results) is a single actor whose state a restarted master rebuilds from
//! the tasks bucket, results stream and heartbeats; a standby that takes over is exactly
//! such a restart, with the rebuild path the fault tests already cover. `gatling_rotate_next`
//! stays the one place a worker is picked.

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vgas_shared::codec::{decode_as, encode};
use vgas_shared::config::Replicas;
use vgas_shared::wire::MasterLease;
use vgas_shared::{Encoding, Subjects};

/// How long a lease nobody renews keeps its holder: the failover time after a master dies
/// is this plus a standby's poll. Long enough that a loaded leader renews (every
/// [`LEASE_RENEW`]) several times over; short enough that a submit rides out a failover.
pub const LEASE_TTL: Duration = Duration::from_secs(3);

/// How often the leader renews: six tries inside one [`LEASE_TTL`].
pub const LEASE_RENEW: Duration = Duration::from_millis(500);

/// How much earlier than a standby may take over the leader stops serving: covers the time
/// a renewal takes to reach the server and the drift between two hosts' clock rates.
pub const LEASE_MARGIN: Duration = Duration::from_secs(1);

/// How often a standby reads the lease.
const STANDBY_POLL: Duration = Duration::from_millis(200);

/// The lease's key in the bucket.
const LEASE_KEY: &str = "master";

/// Makes the lease bucket (one value, no history) or binds to it.
pub async fn open(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: Replicas,
) -> Result<kv::Store> {
    let bucket = subjects.leader_bucket();
    js.create_key_value(kv::Config {
        bucket: bucket.clone(),
        description: "vgas master lease: which master leads the swarm".into(),
        history: 1,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.get(),
        ..Default::default()
    })
    .await
    .with_context(|| format!("open JetStream KV bucket {bucket}"))
}

/// The lease this master holds.
#[derive(Debug)]
pub struct Lease {
    kv: kv::Store,
    value: Bytes,
    revision: u64,
    /// Past this instant the master must not act as leader without a newer renewal.
    valid_until: Instant,
}

/// The master id a lease value names (empty when it does not decode), for the log.
fn holder_id(value: &[u8]) -> String {
    decode_as::<MasterLease>(Encoding::MsgPack, value)
        .map(|h| h.id)
        .unwrap_or_default()
}

/// Waits until this master holds the lease; `None` when `stop` fires first.
pub async fn acquire(
    kv: &kv::Store,
    me: &MasterLease,
    stop: &CancellationToken,
) -> Result<Option<Lease>> {
    let value = Bytes::from(encode(Encoding::MsgPack, me)?);
    // The revision last seen and when it was first seen.
    let mut seen: Option<(u64, Instant)> = None;
    let mut told = false;
    // The revision a takeover was last announced for (a takeover that JetStream refuses,
    // for want of a quorum, is tried at every poll and told once).
    let mut warned: Option<u64> = None;
    loop {
        if stop.is_cancelled() {
            return Ok(None);
        }
        let sent = Instant::now();
        let taken = match kv.entry(LEASE_KEY).await {
            Ok(Some(e)) if e.operation == kv::Operation::Put => match seen {
                Some((rev, at)) if rev == e.revision && at.elapsed() >= LEASE_TTL => {
                    if warned != Some(rev) {
                        warn!(
                            silent_for = ?at.elapsed(),
                            previous = holder_id(&e.value),
                            "the leading master stopped renewing its lease: taking over"
                        );
                        warned = Some(rev);
                    }
                    kv.update(LEASE_KEY, value.clone(), e.revision).await.ok()
                }
                Some((rev, _)) if rev == e.revision => None,
                _ => {
                    seen = Some((e.revision, Instant::now()));
                    if !told {
                        info!(
                            leader = holder_id(&e.value),
                            "another master leads: standing by"
                        );
                        told = true;
                    }
                    None
                }
            },
            // No lease, or the last holder gave it back.
            Ok(_) => kv.create(LEASE_KEY, value.clone()).await.ok(),
            Err(e) => {
                warn!("could not read the master lease: {e}");
                None
            }
        };
        if let Some(revision) = taken {
            return Ok(Some(Lease {
                kv: kv.clone(),
                value,
                revision,
                valid_until: sent + LEASE_TTL - LEASE_MARGIN,
            }));
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(STANDBY_POLL) => {}
        }
    }
}

/// Why a master stopped leading.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// The master is shutting down; it gave the lease back.
    Stopped,
    /// Another master took the lease, or it could not be renewed in time.
    Lost,
}

impl Lease {
    /// Renews the lease until `stop` fires (then gives it back, so a standby takes over at
    /// once) or the lease is lost (then cancels `term`, the token everything this master
    /// runs as leader stops on).
    pub async fn keep(mut self, term: CancellationToken, stop: CancellationToken) -> Ended {
        loop {
            tokio::select! {
                _ = stop.cancelled() => {
                    let _ = self.kv.delete_expect_revision(LEASE_KEY, Some(self.revision)).await;
                    return Ended::Stopped;
                }
                _ = term.cancelled() => return Ended::Lost,
                _ = tokio::time::sleep_until(self.valid_until.into()) => {
                    warn!("the master lease was not renewed in time: stepping down");
                    term.cancel();
                    return Ended::Lost;
                }
                _ = tokio::time::sleep(LEASE_RENEW) => {}
            }
            let sent = Instant::now();
            let renewed = tokio::time::timeout(
                LEASE_RENEW,
                self.kv.update(LEASE_KEY, self.value.clone(), self.revision),
            )
            .await;
            match renewed {
                Ok(Ok(revision)) => {
                    self.revision = revision;
                    self.valid_until = sent + LEASE_TTL - LEASE_MARGIN;
                }
                Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    // A renewal that timed out here may still have been stored: the lease
                    // is then ours at a revision we did not hear of.
                    match self.kv.entry(LEASE_KEY).await {
                        Ok(Some(e)) if e.value == self.value => {
                            self.revision = e.revision;
                            continue;
                        }
                        _ => {}
                    }
                    warn!("another master took the lease: stepping down");
                    term.cancel();
                    return Ended::Lost;
                }
                Ok(Err(e)) => warn!("could not renew the master lease: {e}"),
                Err(_) => warn!("renewing the master lease took over {LEASE_RENEW:?}"),
            }
        }
    }
}
