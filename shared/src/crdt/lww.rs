//! A last-writer-wins map: each key is a register holding a value or its removal, stamped
//! by a hybrid logical clock (`uhlc`: physical time with a counter, so stamps follow what a
//! writer has seen, and a unique clock id breaking ties). A merge keeps, key by key, the
//! entry with the larger stamp, so it is commutative, associative and idempotent (property
//! tests below). A removal is kept as an entry of its own (a tombstone) so that an older
//! write cannot bring the key back; tombstones are dropped after a while
//! ([`LwwMap::forget_removed`]), and a replica that was away longer than that may bring an
//! entry back until its writer removes it again.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
pub use uhlc::{Timestamp, HLC};

/// How far ahead of this host's clock a stamp may be. An entry stamped further ahead is
/// refused: it would beat every later write to its key for that long.
pub const MAX_CLOCK_AHEAD: Duration = Duration::from_secs(10);

/// A hybrid logical clock for `node`, its id derived from the node's name (stamps of two
/// nodes never tie).
pub fn clock(node: &str) -> HLC {
    let digest = Sha256::digest(node.as_bytes());
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    // An id must not be zero; a zero digest prefix is as good as impossible, but stay valid.
    id[0] |= 1;
    let id = uhlc::ID::try_from(id).expect("a non-zero 16-byte id");
    uhlc::HLCBuilder::new()
        .with_id(id)
        .with_max_delta(MAX_CLOCK_AHEAD)
        .build()
}

/// A stamp's physical part in milliseconds since the Unix epoch.
pub fn stamp_ms(at: &Timestamp) -> u64 {
    at.get_time().to_duration().as_millis() as u64
}

/// One register on the wire: a value, or `None` for a removal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry<V> {
    pub key: String,
    pub at: Timestamp,
    pub value: Option<V>,
}

/// The map. Keys are strings (MessagePack and JSON both carry them as they are).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LwwMap<V> {
    entries: BTreeMap<String, (Timestamp, Option<V>)>,
}

impl<V> Default for LwwMap<V> {
    fn default() -> Self {
        LwwMap {
            entries: BTreeMap::new(),
        }
    }
}

impl<V: Clone> LwwMap<V> {
    /// Writes `value` at `key` if `at` is later than what the key holds. Returns whether it
    /// was taken.
    pub fn set(&mut self, key: &str, value: V, at: Timestamp) -> bool {
        self.apply(key, at, Some(value))
    }

    /// Removes `key` as of `at` (a tombstone), if `at` is later than what it holds.
    pub fn remove(&mut self, key: &str, at: Timestamp) -> bool {
        self.apply(key, at, None)
    }

    /// Takes one register's entry if it is later than what the key holds. Equal stamps are
    /// the same write (a clock never gives a stamp twice), so the held one stays.
    pub fn apply(&mut self, key: &str, at: Timestamp, value: Option<V>) -> bool {
        match self.entries.get_mut(key) {
            Some(held) if held.0 >= at => false,
            Some(held) => {
                *held = (at, value);
                true
            }
            None => {
                self.entries.insert(key.to_owned(), (at, value));
                true
            }
        }
    }

    /// Merges another replica; returns whether anything changed here.
    pub fn merge(&mut self, other: &LwwMap<V>) -> bool {
        let mut changed = false;
        for (key, (at, value)) in &other.entries {
            changed |= self.apply(key, *at, value.clone());
        }
        changed
    }

    /// The live value of `key`.
    pub fn get(&self, key: &str) -> Option<&V> {
        self.entries.get(key).and_then(|(_, v)| v.as_ref())
    }

    /// The stamp `key` holds (a value's or a removal's).
    pub fn stamp(&self, key: &str) -> Option<Timestamp> {
        self.entries.get(key).map(|(at, _)| *at)
    }

    /// Live keys and values, in key order.
    pub fn live(&self) -> impl Iterator<Item = (&str, &V)> + '_ {
        self.entries
            .iter()
            .filter_map(|(k, (_, v))| v.as_ref().map(|v| (k.as_str(), v)))
    }

    /// Every register (removals too), for the wire.
    pub fn entries(&self) -> Vec<Entry<V>> {
        self.entries_of(self.entries.keys().map(String::as_str))
    }

    /// The registers of `keys` (those this map holds), for the wire.
    pub fn entries_of<'a>(&self, keys: impl IntoIterator<Item = &'a str>) -> Vec<Entry<V>> {
        keys.into_iter()
            .filter_map(|k| {
                let (at, value) = self.entries.get(k)?;
                Some(Entry {
                    key: k.to_owned(),
                    at: *at,
                    value: value.clone(),
                })
            })
            .collect()
    }

    /// Drops removals stamped before `before_ms` (ms since the Unix epoch); returns how many.
    pub fn forget_removed(&mut self, before_ms: u64) -> usize {
        let n = self.entries.len();
        self.entries
            .retain(|_, (at, v)| v.is_some() || stamp_ms(at) >= before_ms);
        n - self.entries.len()
    }

    /// Live registers.
    pub fn len(&self) -> usize {
        self.entries.values().filter(|(_, v)| v.is_some()).count()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A replica made by `writer`s' operations `(writer, key, value or removal)`, each writer
    /// a clock of its own, all writers sharing one fake time so that stamps tie in time and
    /// only their counters and ids order them.
    fn replica(ops: &[(u8, u8, Option<u8>)], clocks: &[HLC]) -> LwwMap<u8> {
        let mut m = LwwMap::default();
        for &(w, k, v) in ops {
            let at = clocks[w as usize % clocks.len()].new_timestamp();
            let key = format!("k{}", k % 5);
            match v {
                Some(v) => m.set(&key, v, at),
                None => m.remove(&key, at),
            };
        }
        m
    }

    fn clocks() -> Vec<HLC> {
        (0..3).map(|i| clock(&format!("master-{i}"))).collect()
    }

    fn ops() -> impl Strategy<Value = Vec<(u8, u8, Option<u8>)>> {
        proptest::collection::vec(any::<(u8, u8, Option<u8>)>(), 0..30)
    }

    fn merged(a: &LwwMap<u8>, b: &LwwMap<u8>) -> LwwMap<u8> {
        let mut m = a.clone();
        m.merge(b);
        m
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in ops(), b in ops()) {
            let c = clocks();
            let (a, b) = (replica(&a, &c), replica(&b, &c));
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative(a in ops(), b in ops(), x in ops()) {
            let c = clocks();
            let (a, b, x) = (replica(&a, &c), replica(&b, &c), replica(&x, &c));
            prop_assert_eq!(merged(&merged(&a, &b), &x), merged(&a, &merged(&b, &x)));
        }

        #[test]
        fn merge_is_idempotent(a in ops()) {
            let a = replica(&a, &clocks());
            prop_assert_eq!(merged(&a, &a), a.clone());
            let mut again = a.clone();
            prop_assert!(!again.merge(&a), "merging what is known changes nothing");
        }

        #[test]
        fn the_last_write_of_a_key_wins_in_any_order(a in ops(), b in ops()) {
            // Writes made after a replica has seen another's are later (the clock moves
            // past what it observed), so they win wherever they meet the older ones.
            let c = clocks();
            let older = replica(&a, &c);
            let newer = merged(&older, &replica(&b, &c));
            prop_assert_eq!(merged(&older, &newer), newer.clone());
            prop_assert_eq!(merged(&newer, &older), newer);
        }

        #[test]
        fn the_wire_form_carries_every_register(a in ops()) {
            let a = replica(&a, &clocks());
            let mut back = LwwMap::default();
            for e in a.entries() {
                back.apply(&e.key, e.at, e.value);
            }
            prop_assert_eq!(back, a);
        }
    }

    #[test]
    fn a_removal_beats_an_older_write_and_loses_to_a_newer_one() {
        let (a, b) = (clock("a"), clock("b"));
        let mut m = LwwMap::default();
        let t1 = a.new_timestamp();
        let t2 = b.new_timestamp();
        a.update_with_timestamp(&t2).unwrap();
        let t3 = a.new_timestamp();
        assert!(m.remove("w", t2));
        assert!(!m.set("w", 1, t1), "older than the removal");
        assert_eq!(m.get("w"), None);
        assert!(m.set("w", 3, t3));
        assert_eq!(m.get("w"), Some(&3));
        assert_eq!(m.len(), 1);
    }

    #[test]
    fn old_removals_are_forgotten_live_values_kept() {
        let a = clock("a");
        let mut m = LwwMap::default();
        m.set("live", 1, a.new_timestamp());
        m.set("gone", 2, a.new_timestamp());
        let removed_at = a.new_timestamp();
        m.remove("gone", removed_at);
        assert_eq!(m.forget_removed(stamp_ms(&removed_at)), 0, "not yet old");
        assert_eq!(m.forget_removed(stamp_ms(&removed_at) + 1), 1);
        assert_eq!(m.entries().len(), 1);
        assert_eq!(m.get("live"), Some(&1));
    }

    #[test]
    fn a_clock_moves_past_what_it_observed() {
        let (a, b) = (clock("a"), clock("b"));
        let seen = b.new_timestamp();
        a.update_with_timestamp(&seen).unwrap();
        assert!(a.new_timestamp() > seen);
        // A stamp far in the future is refused.
        let ahead = Timestamp::new(
            uhlc::NTP64::from(
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .unwrap()
                    + MAX_CLOCK_AHEAD * 3,
            ),
            *b.get_id(),
        );
        assert!(a.update_with_timestamp(&ahead).is_err());
    }
}
