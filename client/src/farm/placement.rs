//! Whether a unit goes to the swarm or compiles in place, here: a unit that no worker on
//! another host could take gains nothing from the round trip (the preprocessed text to a
//! worker on these same CPUs, its sandbox, the object back), so it compiles here, in place,
//! with the user's own command line. The swarm's view (which compilers the live workers on
//! other hosts offer) comes from `vgas.status`, fetched when first needed and again when
//! older than [`VIEW_TTL`]; hosts are told apart by [`vgas_shared::host::host_id`].
//!
//! With `VGAS_LOCAL_SLOTS=N`, up to N units of one `vgas build` also compile in place while
//! other hosts could take them: this machine's cores work alongside the swarm's (icecream's
//! local jobs, distcc's `localhost/N`). Units fill the other hosts' slots first (as the
//! build's last view of the swarm counts them, against its own units in flight there), and
//! take a local slot only when those are full. Off by default, so that a build's units go to
//! the workers.
//!
//! A local slot left idle (no unit took it for [`RACE_IDLE`]: the end of a build, or a build
//! whose `-j` is no more than the swarm's slots) races the newest unit waiting on the swarm
//! that no worker has started: it compiles the same segment here, as a worker would, and the
//! first to finish wins (Bazel's dynamic execution); a unit a worker already runs is not
//! raced, which would only compile it twice. Without it a build's units queued behind busy
//! or slow hosts keep this core idle.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, OwnedSemaphorePermit, Semaphore};
use vgas_shared::wire::SwarmPulse;

use crate::api::Swarm;

/// `0` turns compiling in place off: every unit goes to the swarm, even one only a worker
/// on this host could take.
pub const ENV_IN_PLACE: &str = "VGAS_IN_PLACE";

/// How long one view of the swarm is trusted: workers join and leave over seconds, and one
/// status request per unit would cost more than it tells.
pub const VIEW_TTL: Duration = Duration::from_secs(2);

/// Units of one build that may compile in place at once while other hosts could take them.
pub const ENV_LOCAL_SLOTS: &str = "VGAS_LOCAL_SLOTS";

/// How long a local slot must have been idle before it races a unit out on the swarm: longer
/// than make takes to start its next job after one finished (a wrapper process and the
/// helper's answer, a few ms), so that a unit of its own comes first.
pub const RACE_IDLE: Duration = Duration::from_millis(60);

/// How often a unit out on the swarm looks whether the local slot is idle enough to race it.
const RACE_POLL: Duration = Duration::from_millis(15);

/// Units of a build kept waiting on the swarm beyond the other hosts' slots before a local
/// slot takes one: when a worker's slot frees, the next unit is already there, where without
/// it the slot would wait for the build tool's next job to be preprocessed on this machine,
/// which is busy compiling too. Racing (above) keeps such a unit from holding up the end.
pub const QUEUED_AHEAD: usize = 1;

/// How long the status request may take; past it the unit goes to the swarm as before.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct View {
    fetched: Option<Instant>,
    /// Capability tags offered by live, non-draining workers on other hosts, with their slots
    /// in all; `None` when the swarm could not be asked.
    elsewhere: Option<HashMap<String, usize>>,
    /// Capability tags offered by live workers on this host.
    here: HashSet<String>,
}

/// The build's view of where units can go (cheap to clone; one per build).
#[derive(Debug, Clone)]
pub struct Placement {
    host: Option<String>,
    view: Arc<Mutex<View>>,
    /// `VGAS_LOCAL_SLOTS`: in-place compiles allowed beside the swarm's.
    local_slots: Option<Arc<Semaphore>>,
    /// Units of this build sent to the swarm and not yet back.
    remote: Arc<AtomicUsize>,
    /// When a local slot was last given back (or the build began).
    local_released: Arc<std::sync::Mutex<tokio::time::Instant>>,
    /// The units waiting on the swarm, by the order they went out; the newest races first.
    out: Arc<std::sync::Mutex<BTreeSet<u64>>>,
    next_out: Arc<AtomicU64>,
}

/// A local slot: given back (and the time noted) when dropped.
#[derive(Debug)]
pub struct LocalSlot {
    _permit: OwnedSemaphorePermit,
    released: Arc<std::sync::Mutex<tokio::time::Instant>>,
}

impl Drop for LocalSlot {
    fn drop(&mut self) {
        *self.released.lock().unwrap_or_else(|e| e.into_inner()) = tokio::time::Instant::now();
    }
}

/// A unit waiting on the swarm for its result, listed until dropped.
#[derive(Debug)]
pub struct OutOnSwarm {
    seq: u64,
    out: Arc<std::sync::Mutex<BTreeSet<u64>>>,
}

impl OutOnSwarm {
    /// A worker started the unit: racing it here now would only compile it twice, so it
    /// is no longer raced.
    pub fn started(&self) {
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&self.seq);
    }
}

impl Drop for OutOnSwarm {
    fn drop(&mut self) {
        self.started();
    }
}

/// A unit on its way through the swarm, counted until dropped.
#[derive(Debug)]
pub struct Remote(Arc<AtomicUsize>);

impl Drop for Remote {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Why a unit compiles in place, and the local slot it holds while it does (if it took one).
#[derive(Debug)]
pub struct Here {
    pub reason: String,
    pub slot: Option<LocalSlot>,
}

impl Placement {
    /// Compiling in place unless `VGAS_IN_PLACE=0`.
    pub fn from_env() -> Placement {
        let on = std::env::var(ENV_IN_PLACE).map_or(true, |v| v != "0");
        let slots = std::env::var(ENV_LOCAL_SLOTS)
            .ok()
            .and_then(|v| v.parse::<usize>().ok())
            .filter(|n| *n > 0 && on);
        Placement {
            host: on.then(vgas_shared::host::host_id),
            local_slots: slots.map(|n| Arc::new(Semaphore::new(n))),
            ..Placement::off()
        }
    }

    /// Never in place (a plan run by the master: it has no "here" to compile in).
    pub fn off() -> Placement {
        Placement {
            host: None,
            view: Arc::default(),
            local_slots: None,
            remote: Arc::default(),
            local_released: Arc::new(std::sync::Mutex::new(tokio::time::Instant::now())),
            out: Arc::default(),
            next_out: Arc::default(),
        }
    }

    /// Counts a unit that goes to the swarm until the value is dropped.
    pub fn going_remote(&self) -> Remote {
        self.remote.fetch_add(1, Ordering::AcqRel);
        Remote(self.remote.clone())
    }

    /// Lists a unit as waiting on the swarm until the value is dropped (see [`Self::idle_slot`]).
    pub fn out_on_swarm(&self) -> OutOnSwarm {
        let seq = self.next_out.fetch_add(1, Ordering::AcqRel);
        self.out
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(seq);
        OutOnSwarm {
            seq,
            out: self.out.clone(),
        }
    }

    /// A local slot for racing `unit` here, once one has been idle for [`RACE_IDLE`] and `unit`
    /// is the newest unit out on the swarm not yet started there; never (pending forever)
    /// without local slots, nor once a worker started it.
    pub async fn idle_slot(&self, unit: &OutOnSwarm) -> LocalSlot {
        let Some(slots) = self.local_slots.clone() else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(RACE_POLL).await;
            let idle = self
                .local_released
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .elapsed()
                >= RACE_IDLE;
            let newest = self
                .out
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .last()
                .is_some_and(|s| *s == unit.seq);
            if idle && newest {
                if let Ok(permit) = slots.clone().try_acquire_owned() {
                    return self.slot(permit);
                }
            }
        }
    }

    fn slot(&self, permit: OwnedSemaphorePermit) -> LocalSlot {
        LocalSlot {
            _permit: permit,
            released: self.local_released.clone(),
        }
    }

    /// Why a unit needing capability `tag` compiles here, or `None` to send it to the swarm.
    pub async fn here(&self, swarm: &Swarm, tag: &str) -> Option<Here> {
        let host = self.host.as_deref()?;
        let (reason, remote_slots) = {
            let mut view = self.view.lock().await;
            if view.fetched.is_none_or(|t| t.elapsed() > VIEW_TTL) {
                let pulse = swarm
                    .request_within::<_, SwarmPulse>(
                        swarm.subjects.status(),
                        &std::collections::BTreeMap::<String, String>::new(),
                        STATUS_TIMEOUT,
                    )
                    .await;
                *view = match pulse {
                    Ok(p) => view_of(&p, host),
                    Err(e) => {
                        tracing::debug!("swarm status for placement: {e:#}");
                        View::default()
                    }
                };
                view.fetched = Some(Instant::now());
            }
            let slots = view.elsewhere.as_ref().and_then(|e| e.get(tag)).copied();
            (reason(&view, tag), slots.unwrap_or(0))
        };
        self.decide(reason, remote_slots)
    }

    /// Here for `reason`; else the swarm while the other hosts' `remote_slots` (and
    /// [`QUEUED_AHEAD`] more) are not all taken by this build's units; else a free local
    /// slot, if any.
    fn decide(&self, reason: Option<String>, remote_slots: usize) -> Option<Here> {
        match reason {
            Some(reason) => Some(Here { reason, slot: None }),
            None if self.remote.load(Ordering::Acquire) < remote_slots + QUEUED_AHEAD => None,
            None => {
                let permit = self.local_slots.clone()?.try_acquire_owned().ok()?;
                Some(Here {
                    reason: "in place: a local slot was free (VGAS_LOCAL_SLOTS)".into(),
                    slot: Some(self.slot(permit)),
                })
            }
        }
    }
}

fn view_of(p: &SwarmPulse, host: &str) -> View {
    let mut v = View {
        elsewhere: Some(HashMap::new()),
        ..View::default()
    };
    for n in p.live.iter().filter(|n| !n.draining) {
        let tags = n.capabilities.iter().cloned();
        if n.host == host {
            v.here.extend(tags);
        } else if let Some(e) = v.elsewhere.as_mut() {
            for t in tags {
                *e.entry(t).or_default() += n.slots;
            }
        }
    }
    v
}

fn reason(v: &View, tag: &str) -> Option<String> {
    let elsewhere = v.elsewhere.as_ref()?;
    if elsewhere.contains_key(tag) {
        None
    } else if v.here.contains(tag) {
        Some("in place: only this host's workers have this compiler".into())
    } else {
        Some("in place: no worker has this compiler".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgas_shared::wire::NodeStatus;

    fn node(id: &str, host: &str, tag: &str, draining: bool) -> NodeStatus {
        NodeStatus {
            id: vgas_shared::WorkerId::parse(id).unwrap(),
            hostname: "h".into(),
            host: host.into(),
            slots: 2,
            free_slots: 2,
            in_flight: 0,
            cpus: 2,
            memory_mb: 1,
            load1: 0.0,
            capabilities: vec![tag.into()],
            toolchains: Vec::new(),
            isolation: "full".into(),
            gpus: Vec::new(),
            leases: Vec::new(),
            cuda_driver: None,
            draining,
            last_seen_ms_ago: 0,
            tasks_done: 0,
        }
    }

    #[test]
    fn a_unit_stays_here_only_when_no_other_host_could_take_it() {
        let pulse = |nodes: Vec<NodeStatus>| SwarmPulse {
            live: nodes,
            ..SwarmPulse::default()
        };
        let here = view_of(&pulse(vec![node("w1", "me", "compiler:a", false)]), "me");
        assert!(reason(&here, "compiler:a")
            .unwrap()
            .contains("only this host"));
        assert!(reason(&here, "compiler:b").unwrap().contains("no worker"));
        let both = view_of(
            &pulse(vec![
                node("w1", "me", "compiler:a", false),
                node("w2", "other", "compiler:a", false),
            ]),
            "me",
        );
        assert_eq!(reason(&both, "compiler:a"), None);
        // A draining worker elsewhere takes nothing new.
        let draining = view_of(&pulse(vec![node("w2", "other", "compiler:a", true)]), "me");
        assert!(reason(&draining, "compiler:a").is_some());
        // When the swarm cannot be asked, units go to it as before.
        assert_eq!(reason(&View::default(), "compiler:a"), None);
    }

    #[test]
    fn local_slots_take_units_only_when_the_other_hosts_are_full() {
        let p = Placement {
            host: Some("me".into()),
            local_slots: Some(Arc::new(Semaphore::new(1))),
            ..Placement::off()
        };
        // Two slots elsewhere: the first two units go there, and one more to wait there.
        let mut out = Vec::new();
        for _ in 0..2 + QUEUED_AHEAD {
            assert!(p.decide(None, 2).is_none());
            out.push(p.going_remote());
        }
        // Full: the next takes the local slot, the one after waits in the swarm's queue.
        let local = p.decide(None, 2).expect("the local slot");
        assert!(local.reason.contains("local slot"), "{}", local.reason);
        assert!(p.decide(None, 2).is_none());
        // Its slot back, the next one compiles here again; a unit back from the swarm frees
        // a remote slot, which comes first.
        drop(local);
        out.pop();
        assert!(p.decide(None, 2).is_none());
        out.push(p.going_remote());
        assert!(p.decide(None, 2).is_some());
        // Without VGAS_LOCAL_SLOTS, everything goes to the swarm; a reason is always here.
        let off = Placement::off();
        assert!(off.decide(None, 0).is_none());
        assert!(off.decide(Some("x".into()), 0).is_some());
    }

    /// Whether `f` finishes within `d` of (paused) time.
    async fn within<F: std::future::Future>(d: Duration, f: F) -> bool {
        tokio::time::timeout(d, f).await.is_ok()
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_local_slot_races_the_newest_unit_out_on_the_swarm() {
        let p = Placement {
            host: Some("me".into()),
            local_slots: Some(Arc::new(Semaphore::new(1))),
            ..Placement::off()
        };
        let (older, newer) = (p.out_on_swarm(), p.out_on_swarm());
        // The older unit never races while a newer one is out; one a worker started, never.
        assert!(!within(RACE_IDLE * 4, p.idle_slot(&older)).await);
        let started = p.out_on_swarm();
        started.started();
        assert!(!within(RACE_IDLE * 4, p.idle_slot(&started)).await);
        let slot = tokio::time::timeout(RACE_IDLE * 2, p.idle_slot(&newer))
            .await
            .expect("the newest unit races once the slot is idle");
        // The slot is taken: nobody else races; given back, it must be idle again first.
        drop(newer);
        assert!(!within(RACE_IDLE * 4, p.idle_slot(&older)).await);
        drop(slot);
        assert!(!within(RACE_IDLE / 2, p.idle_slot(&older)).await);
        assert!(within(RACE_IDLE * 2, p.idle_slot(&older)).await);
        // A unit compiling in place holds the slot just the same.
        let _queued = p.going_remote();
        let here = p.decide(None, 0).expect("the local slot");
        assert!(!within(RACE_IDLE * 4, p.idle_slot(&older)).await);
        drop(here);
        // Without local slots nothing races.
        let off = Placement::off();
        let unit = off.out_on_swarm();
        assert!(!within(RACE_IDLE * 10, off.idle_slot(&unit)).await);
    }
}
