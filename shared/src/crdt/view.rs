//! The swarm's node and GPU-lease view as every master holds it (`sync_distributed_state`):
//! one last-writer-wins register per worker (what it is, when a master last heard it) and one
//! per leased device (which task holds it), merged between masters over NATS. Any master,
//! leading or standing by, on either side of a partition, can say which workers exist and
//! which devices are taken; after a heal every master holds the latest of each.
//!
//! Who writes what: every master writes a worker's register from its heartbeats (only when
//! something in it changed or it was last written [`NODE_REFRESH_MS`] ago, so masters hearing
//! the same worker do not take turns writing it); only the leading master writes lease
//! registers, from its lease table, and removes those its table no longer holds. A worker's
//! leaving heartbeat removes its register; one nobody has heard for [`NODE_FORGET_MS`] is
//! removed by whoever notices.

use serde::{Deserialize, Serialize};

use super::lww::{Entry, LwwMap, Timestamp, HLC};
use crate::wire::Heartbeat;
use crate::{TaskId, WorkerId};

/// A master writes a worker's register again after this long even when nothing changed, so
/// the view says how recently the worker was heard (to within this, plus one sync interval).
pub const NODE_REFRESH_MS: u64 = 5_000;

/// A worker not heard from for this long is removed from the view: its heartbeats (one a
/// second) have stopped for sixty of them, whichever master was listening.
pub const NODE_FORGET_MS: u64 = 60_000;

/// A removal is remembered this long, longer than any partition we expect to heal from
/// with the view intact; after it, a replica that was away longer may bring an entry back
/// (a lease's until the leader removes it again, a worker's until it is forgotten again).
pub const REMOVAL_KEEP_MS: u64 = 600_000;

/// One worker, as a master last heard it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSeen {
    pub id: WorkerId,
    pub hostname: String,
    /// The machine it runs on (`Heartbeat::host`).
    pub host: String,
    pub slots: usize,
    /// Its GPUs' UUIDs.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpus: Vec<String>,
    pub draining: bool,
    /// When a master last heard it (ms since the Unix epoch, that master's clock).
    pub heard_ms: u64,
    /// Which master.
    pub heard_by: String,
}

impl NodeSeen {
    /// The same worker in the same shape, whenever and by whomever heard.
    fn same_as(&self, other: &NodeSeen) -> bool {
        (
            &self.id,
            &self.hostname,
            &self.host,
            self.slots,
            &self.gpus,
            self.draining,
        ) == (
            &other.id,
            &other.hostname,
            &other.host,
            other.slots,
            &other.gpus,
            other.draining,
        )
    }
}

/// One leased device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseSeen {
    pub worker: WorkerId,
    /// The device's UUID.
    pub device: String,
    pub task: TaskId,
    /// The leading master that granted or last confirmed it.
    pub by: String,
}

impl LeaseSeen {
    /// The register's key: one per device of a worker.
    pub fn key(worker: &WorkerId, device: &str) -> String {
        format!("{worker}/{device}")
    }
}

/// A master's whole view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SwarmView {
    pub nodes: LwwMap<NodeSeen>,
    pub leases: LwwMap<LeaseSeen>,
}

/// What a master publishes on `<prefix>.swarm.view.sync`: the registers it wrote since its
/// last message, or all it holds (every few seconds, in pieces that fit a message), which
/// carries others' writes through it and brings a newcomer or a healed side up to date.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewDigest {
    /// The sender's node id.
    pub node: String,
    #[serde(default)]
    pub nodes: Vec<Entry<NodeSeen>>,
    #[serde(default)]
    pub leases: Vec<Entry<LeaseSeen>>,
}

/// The answer on `<prefix>.swarm.view`: the answering master's view.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewReport {
    pub answered_by: String,
    /// Whether the answering master leads the swarm now.
    pub leading: bool,
    /// Other masters it has heard within the last few seconds.
    pub masters: Vec<String>,
    pub nodes: Vec<NodeSeen>,
    pub leases: Vec<LeaseSeen>,
}

/// What a merge did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Merged {
    /// Registers that changed here.
    pub changed: usize,
    /// Entries stamped too far ahead of this host's clock, not taken.
    pub refused: usize,
}

impl SwarmView {
    /// Records a heartbeat `by` heard at `now_ms`: writes the worker's register when it
    /// changed shape or was last written [`NODE_REFRESH_MS`] ago, removes it on a leaving
    /// beat. Returns the key written, if any.
    pub fn heard(
        &mut self,
        clock: &HLC,
        from: &WorkerId,
        hb: &Heartbeat,
        by: &str,
        now_ms: u64,
    ) -> Option<String> {
        let key = from.to_string();
        if hb.leaving {
            let held = self.nodes.get(&key).is_some();
            return (held && self.nodes.remove(&key, clock.new_timestamp())).then_some(key);
        }
        let seen = NodeSeen {
            id: from.clone(),
            hostname: hb.hostname.clone(),
            host: hb.host.clone(),
            slots: hb.slots,
            gpus: hb.gpus.iter().map(|g| g.uuid.clone()).collect(),
            draining: hb.draining,
            heard_ms: now_ms,
            heard_by: by.to_owned(),
        };
        if let Some(held) = self.nodes.get(&key) {
            let fresh = now_ms.saturating_sub(held.heard_ms) < NODE_REFRESH_MS;
            if fresh && held.same_as(&seen) {
                return None;
            }
        }
        self.nodes
            .set(&key, seen, clock.new_timestamp())
            .then_some(key)
    }

    /// Brings the lease registers in line with the leading master's lease table `held`
    /// (worker, device, task): writes the leases it holds that the view lacks or has
    /// otherwise, removes the view's live leases it does not hold. Returns the keys written.
    pub fn reconcile_leases(
        &mut self,
        clock: &HLC,
        held: &[(WorkerId, String, TaskId)],
        by: &str,
    ) -> Vec<String> {
        let mut written = Vec::new();
        let mut keep = std::collections::BTreeSet::new();
        for (worker, device, task) in held {
            let key = LeaseSeen::key(worker, device);
            keep.insert(key.clone());
            if self.leases.get(&key).is_some_and(|l| &l.task == task) {
                continue;
            }
            let lease = LeaseSeen {
                worker: worker.clone(),
                device: device.clone(),
                task: task.clone(),
                by: by.to_owned(),
            };
            if self.leases.set(&key, lease, clock.new_timestamp()) {
                written.push(key);
            }
        }
        let stale: Vec<String> = self
            .leases
            .live()
            .filter(|(k, _)| !keep.contains(*k))
            .map(|(k, _)| k.to_owned())
            .collect();
        for key in stale {
            if self.leases.remove(&key, clock.new_timestamp()) {
                written.push(key);
            }
        }
        written
    }

    /// Removes workers nobody has heard for [`NODE_FORGET_MS`] and forgets removals older
    /// than [`REMOVAL_KEEP_MS`]. Returns the worker keys removed.
    pub fn forget(&mut self, clock: &HLC, now_ms: u64) -> Vec<String> {
        let silent: Vec<String> = self
            .nodes
            .live()
            .filter(|(_, n)| now_ms.saturating_sub(n.heard_ms) >= NODE_FORGET_MS)
            .map(|(k, _)| k.to_owned())
            .collect();
        let removed: Vec<String> = silent
            .into_iter()
            .filter(|k| self.nodes.remove(k, clock.new_timestamp()))
            .collect();
        let before = now_ms.saturating_sub(REMOVAL_KEEP_MS);
        self.nodes.forget_removed(before);
        self.leases.forget_removed(before);
        removed
    }

    /// Merges another master's registers. The clock observes every stamp it takes, so this
    /// master's next writes are later than anything it has seen; a stamp too far ahead of
    /// this host's clock is refused.
    pub fn merge(&mut self, clock: &HLC, d: &ViewDigest) -> Merged {
        let mut m = Merged::default();
        let mut take = |at: &Timestamp| {
            let ok = clock.update_with_timestamp(at).is_ok();
            if !ok {
                m.refused += 1;
            }
            ok
        };
        let mut changed = 0;
        for e in &d.nodes {
            if take(&e.at) && self.nodes.apply(&e.key, e.at, e.value.clone()) {
                changed += 1;
            }
        }
        for e in &d.leases {
            if take(&e.at) && self.leases.apply(&e.key, e.at, e.value.clone()) {
                changed += 1;
            }
        }
        m.changed = changed;
        m
    }

    /// The registers of these keys, as a digest from `node`.
    pub fn digest_of<'a>(
        &self,
        node: &str,
        nodes: impl IntoIterator<Item = &'a str>,
        leases: impl IntoIterator<Item = &'a str>,
    ) -> ViewDigest {
        ViewDigest {
            node: node.to_owned(),
            nodes: self.nodes.entries_of(nodes),
            leases: self.leases.entries_of(leases),
        }
    }

    /// Everything this view holds, as digests of at most `per_message` registers each.
    pub fn full_digests(&self, node: &str, per_message: usize) -> Vec<ViewDigest> {
        let per_message = per_message.max(1);
        let mut out = Vec::new();
        let nodes = self.nodes.entries();
        let leases = self.leases.entries();
        for chunk in nodes.chunks(per_message) {
            out.push(ViewDigest {
                node: node.to_owned(),
                nodes: chunk.to_vec(),
                leases: Vec::new(),
            });
        }
        for chunk in leases.chunks(per_message) {
            out.push(ViewDigest {
                node: node.to_owned(),
                nodes: Vec::new(),
                leases: chunk.to_vec(),
            });
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::lww::clock;
    use super::*;

    fn hb(id: &WorkerId, slots: usize) -> Heartbeat {
        Heartbeat {
            worker: Some(id.clone()),
            hostname: "h".into(),
            host: "host-1".into(),
            slots,
            ..Default::default()
        }
    }

    fn wid(s: &str) -> WorkerId {
        WorkerId::parse(s).unwrap()
    }

    #[test]
    fn masters_hearing_the_same_worker_do_not_take_turns_writing_it() {
        let (ca, cb) = (clock("a"), clock("b"));
        let (mut a, mut b) = (SwarmView::default(), SwarmView::default());
        let w = wid("w1");
        let t = 1_000_000;
        let key = a.heard(&ca, &w, &hb(&w, 4), "a", t).expect("first sight");
        let d = a.digest_of("a", [key.as_str()], []);
        assert_eq!(b.merge(&cb, &d).changed, 1);
        assert_eq!(
            b.heard(&cb, &w, &hb(&w, 4), "b", t + 900),
            None,
            "a just wrote it"
        );
        assert!(
            b.heard(&cb, &w, &hb(&w, 8), "b", t + 950).is_some(),
            "new shape"
        );
        assert!(
            b.heard(&cb, &w, &hb(&w, 8), "b", t + 950 + NODE_REFRESH_MS)
                .is_some(),
            "refreshed"
        );
        let mut leaving = hb(&w, 8);
        leaving.leaving = true;
        assert!(b.heard(&cb, &w, &leaving, "b", t + 10_000).is_some());
        assert!(b.nodes.get("w1").is_none());
        // The removal travels: a's older write loses to it.
        let d = b.digest_of("b", ["w1"], []);
        assert_eq!(a.merge(&ca, &d).changed, 1);
        assert!(a.nodes.get("w1").is_none());
    }

    #[test]
    fn leases_follow_the_leaders_table_and_a_new_leader_overrides_the_old() {
        let (ca, cb) = (clock("a"), clock("b"));
        let (mut a, mut b) = (SwarmView::default(), SwarmView::default());
        let (w, t1, t2) = (wid("w1"), TaskId::random(), TaskId::random());
        let held = vec![(w.clone(), "GPU-0".to_owned(), t1.clone())];
        let keys = a.reconcile_leases(&ca, &held, "a");
        assert_eq!(keys, vec!["w1/GPU-0".to_owned()]);
        assert!(
            a.reconcile_leases(&ca, &held, "a").is_empty(),
            "nothing new"
        );
        b.merge(&cb, &a.digest_of("a", [], ["w1/GPU-0"]));
        assert_eq!(b.leases.get("w1/GPU-0").unwrap().task, t1);
        // b leads now and holds the device for another task; a's view follows after a merge.
        let held = vec![(w.clone(), "GPU-0".to_owned(), t2.clone())];
        assert_eq!(b.reconcile_leases(&cb, &held, "b").len(), 1);
        a.merge(&ca, &b.digest_of("b", [], ["w1/GPU-0"]));
        assert_eq!(a.leases.get("w1/GPU-0").unwrap().task, t2);
        // Released: removed everywhere after the merge.
        assert_eq!(b.reconcile_leases(&cb, &[], "b").len(), 1);
        a.merge(&ca, &b.full_digests("b", 1)[0]);
        assert!(a.leases.is_empty());
    }

    #[test]
    fn silent_workers_are_forgotten_and_far_future_stamps_refused() {
        let c = clock("a");
        let mut v = SwarmView::default();
        let w = wid("w1");
        v.heard(&c, &w, &hb(&w, 1), "a", 1_000);
        assert!(v.forget(&c, 1_000 + NODE_FORGET_MS - 1).is_empty());
        assert_eq!(v.forget(&c, 1_000 + NODE_FORGET_MS), vec!["w1".to_owned()]);
        let future = Timestamp::new(
            uhlc::NTP64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    + std::time::Duration::from_secs(3600),
            ),
            *clock("x").get_id(),
        );
        let d = ViewDigest {
            node: "x".into(),
            nodes: vec![Entry {
                key: "w9".into(),
                at: future,
                value: None,
            }],
            leases: Vec::new(),
        };
        let m = v.merge(&c, &d);
        assert_eq!((m.changed, m.refused), (0, 1));
    }
}
