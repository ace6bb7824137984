//! `sync_distributed_state`: what must stay writable on both sides of a partition between
//! masters, kept as state-based CRDTs merged over NATS.
//!
//! - LLM usage and spend (this module): every master that serves LLM calls counts its own
//!   calls in its own slot; a merge keeps, slot by slot and field by field, the larger count.
//!   Each field is thus a grow-only counter (G-counter) with one entry per master, so merges
//!   are commutative, associative and idempotent (property tests below) and every master that
//!   has heard every other's slots holds the exact total, however the messages were ordered,
//!   repeated or delayed.
//! - The node and GPU-lease view ([`view`]): last-writer-wins registers ([`lww`]) stamped by
//!   hybrid logical clocks, one per worker and one per leased device.

pub mod lww;
pub mod view;

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// One master's counts for one provider, model and UTC day. Only that master adds to it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct UsageCounts {
    pub requests: u64,
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micro_usd: u64,
    /// Some call had tokens but no price (a flag that only turns on).
    pub unpriced: bool,
}

impl UsageCounts {
    /// The join of two views of the same slot: each count's larger value.
    pub fn join(&mut self, other: &UsageCounts) {
        self.requests = self.requests.max(other.requests);
        self.errors = self.errors.max(other.errors);
        self.input_tokens = self.input_tokens.max(other.input_tokens);
        self.output_tokens = self.output_tokens.max(other.output_tokens);
        self.cached_tokens = self.cached_tokens.max(other.cached_tokens);
        self.cost_micro_usd = self.cost_micro_usd.max(other.cost_micro_usd);
        self.unpriced |= other.unpriced;
    }

    /// The sum of two different slots' counts.
    pub fn add(&mut self, other: &UsageCounts) {
        self.requests += other.requests;
        self.errors += other.errors;
        self.input_tokens += other.input_tokens;
        self.output_tokens += other.output_tokens;
        self.cached_tokens += other.cached_tokens;
        self.cost_micro_usd += other.cost_micro_usd;
        self.unpriced |= other.unpriced;
    }
}

/// Which counters a slot holds: provider, model and UTC day (`YYYY-MM-DD`).
#[derive(Debug, Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct UsageKey {
    pub provider: String,
    pub model: String,
    pub day: String,
}

/// The whole usage state: per key, one slot per master (by node id). A state-based CRDT.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UsageState {
    slots: BTreeMap<UsageKey, BTreeMap<String, UsageCounts>>,
}

/// [`UsageState`] on the wire: a list, since MessagePack and JSON maps want string keys.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageSlot {
    pub key: UsageKey,
    pub node: String,
    pub counts: UsageCounts,
}

impl UsageState {
    /// Adds a call's counts to `node`'s slot of `key` (only `node` itself may).
    pub fn add(&mut self, node: &str, key: UsageKey, counts: &UsageCounts) {
        self.slots
            .entry(key)
            .or_default()
            .entry(node.to_owned())
            .or_default()
            .add(counts);
    }

    /// Merges another view into this one. Returns whether anything grew.
    pub fn merge(&mut self, other: &UsageState) -> bool {
        let mut grew = false;
        for (key, nodes) in &other.slots {
            let mine = self.slots.entry(key.clone()).or_default();
            for (node, counts) in nodes {
                let slot = mine.entry(node.clone()).or_default();
                let before = *slot;
                slot.join(counts);
                grew |= *slot != before;
            }
        }
        grew
    }

    /// Merges one slot.
    pub fn merge_slot(&mut self, s: &UsageSlot) -> bool {
        // Most slots merged are known already: look them up without cloning their names.
        if let Some(slot) = self.slots.get_mut(&s.key).and_then(|n| n.get_mut(&s.node)) {
            let before = *slot;
            slot.join(&s.counts);
            return *slot != before;
        }
        let slot = self
            .slots
            .entry(s.key.clone())
            .or_default()
            .entry(s.node.clone())
            .or_default();
        slot.join(&s.counts);
        *slot != UsageCounts::default()
    }

    /// The total of a key over every master.
    pub fn total(&self, key: &UsageKey) -> UsageCounts {
        let mut t = UsageCounts::default();
        for c in self.slots.get(key).into_iter().flat_map(|n| n.values()) {
            t.add(c);
        }
        t
    }

    /// Every key with its total over every master, in key order.
    pub fn totals(&self) -> impl Iterator<Item = (&UsageKey, UsageCounts)> + '_ {
        self.slots.iter().map(|(k, nodes)| {
            let mut t = UsageCounts::default();
            for c in nodes.values() {
                t.add(c);
            }
            (k, t)
        })
    }

    /// The cost `node` itself has recorded for `provider` (every day).
    pub fn own_cost(&self, node: &str, provider: &str) -> u64 {
        self.slots
            .iter()
            .filter(|(k, _)| k.provider == provider)
            .filter_map(|(_, nodes)| nodes.get(node))
            .map(|c| c.cost_micro_usd)
            .sum()
    }

    /// `node`'s slot of `key`.
    pub fn slot(&self, key: &UsageKey, node: &str) -> Option<UsageCounts> {
        self.slots.get(key)?.get(node).copied()
    }

    /// The slots of days from `since_day` on (`YYYY-MM-DD` orders as text), for the wire.
    pub fn slots_since(&self, since_day: &str) -> Vec<UsageSlot> {
        self.slots
            .iter()
            .filter(|(k, _)| k.day.as_str() >= since_day)
            .flat_map(|(key, nodes)| {
                nodes.iter().map(|(node, counts)| UsageSlot {
                    key: key.clone(),
                    node: node.clone(),
                    counts: *counts,
                })
            })
            .collect()
    }

    /// The masters whose slots of days from `since_day` on this state holds.
    pub fn nodes_since(&self, since_day: &str) -> std::collections::BTreeSet<&str> {
        self.slots
            .iter()
            .filter(|(k, _)| k.day.as_str() >= since_day)
            .flat_map(|(_, nodes)| nodes.keys().map(String::as_str))
            .collect()
    }

    /// A digest of [`UsageState::nodes_since`]: two masters that hold slots of the same
    /// masters have the same one (a stable hash, whatever the build).
    pub fn known_hash(&self, since_day: &str) -> u64 {
        use sha2::{Digest, Sha256};
        let mut h = Sha256::new();
        for n in self.nodes_since(since_day) {
            h.update(n.as_bytes());
            h.update([0]);
        }
        let d = h.finalize();
        u64::from_le_bytes(d[..8].try_into().expect("8 bytes"))
    }

    /// Number of slots held.
    pub fn len(&self) -> usize {
        self.slots.values().map(BTreeMap::len).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.slots.is_empty()
    }
}

/// What a master publishes to the others every sync interval: its own slots of this month,
/// and, when some master it hears lacks what it holds, others' slots it relays (see
/// `master::keys::usage::sync`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UsageDigest {
    /// The sender's node id.
    pub node: String,
    pub slots: Vec<UsageSlot>,
    /// The sender is stopping: not a partition when it falls silent.
    #[serde(default)]
    pub leaving: bool,
    /// Masters whose slots the sender holds but has not heard from itself lately: whoever
    /// hears them relays their slots.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unheard: Vec<String>,
    /// [`UsageState::known_hash`] of the sender's state: a master that holds slots of other
    /// masters than the sender relays them.
    #[serde(default)]
    pub known: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn key(p: u8, d: u8) -> UsageKey {
        UsageKey {
            provider: format!("p{p}"),
            model: "m".into(),
            day: format!("2026-12-0{}", d % 9 + 1),
        }
    }

    /// A state made of `(node, provider, day, cost)` additions.
    fn state(ops: &[(u8, u8, u8, u16)]) -> UsageState {
        let mut s = UsageState::default();
        for &(node, p, d, cost) in ops {
            let counts = UsageCounts {
                requests: 1,
                cost_micro_usd: cost as u64,
                ..Default::default()
            };
            s.add(&format!("n{}", node % 4), key(p % 3, d), &counts);
        }
        s
    }

    fn ops() -> impl Strategy<Value = Vec<(u8, u8, u8, u16)>> {
        proptest::collection::vec(any::<(u8, u8, u8, u16)>(), 0..40)
    }

    fn merged(a: &UsageState, b: &UsageState) -> UsageState {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in ops(), b in ops()) {
            let (a, b) = (state(&a), state(&b));
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in ops(), b in ops(), c in ops()) {
            let (a, b, c) = (state(&a), state(&b), state(&c));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in ops()) {
            let a = state(&a);
            prop_assert_eq!(merged(&a, &a), a.clone());
            let mut twice = a.clone();
            prop_assert!(!twice.merge(&a), "merging what is known grows nothing");
        }

        #[test]
        fn a_later_view_of_a_slot_wins_whatever_the_order(first in ops(), more in ops()) {
            // A node's state grows; any replica that sees the older and the newer view, in
            // either order, ends with the newer one.
            let older = state(&first);
            let mut newer = older.clone();
            newer.merge(&state(&more));
            prop_assert_eq!(merged(&older, &newer), newer.clone());
            prop_assert_eq!(merged(&newer, &older), newer);
        }

        #[test]
        fn disjoint_masters_add_up_exactly(a in ops(), b in ops()) {
            // Masters n0/n1 on one side, n2/n3 on the other (a partition): the merged total
            // is the exact sum of both sides.
            let left: Vec<_> = a.iter().map(|&(n, p, d, c)| (n % 2, p, d, c)).collect();
            let right: Vec<_> = b.iter().map(|&(n, p, d, c)| (n % 2 + 2, p, d, c)).collect();
            let (l, r) = (state(&left), state(&right));
            let m = merged(&l, &r);
            for p in 0..3 {
                for d in 0..9 {
                    let k = key(p, d);
                    prop_assert_eq!(
                        m.total(&k).cost_micro_usd,
                        l.total(&k).cost_micro_usd + r.total(&k).cost_micro_usd
                    );
                }
            }
        }

        #[test]
        fn the_wire_form_carries_the_whole_state(a in ops()) {
            let a = state(&a);
            let mut back = UsageState::default();
            for s in a.slots_since("") {
                back.merge_slot(&s);
            }
            prop_assert_eq!(back, a);
        }
    }

    #[test]
    fn own_cost_counts_only_that_master() {
        let mut s = UsageState::default();
        let c = |cost| UsageCounts {
            cost_micro_usd: cost,
            ..Default::default()
        };
        s.add("a", key(0, 1), &c(5));
        s.add("a", key(0, 2), &c(7));
        s.add("b", key(0, 1), &c(100));
        s.add("a", key(1, 1), &c(1000));
        assert_eq!(s.own_cost("a", "p0"), 12);
        assert_eq!(s.total(&key(0, 1)).cost_micro_usd, 105);
        assert_eq!(s.len(), 4);
    }
}
