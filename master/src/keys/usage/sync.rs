//! `sync_distributed_state` for LLM usage: every master that serves LLM calls publishes a
//! [`UsageDigest`] every [`SYNC_INTERVAL`] on `<prefix>.llm.usage.sync` and merges the
//! others' (a state-based CRDT, see `vgas_shared::crdt`). Budgets are checked against the
//! merged total, so they hold across masters; within one interval two masters may each spend
//! what the other has not yet heard of.
//!
//! What a digest carries: the sender's own slots of this month, always (every master hears
//! every other directly on a NATS subject, so that alone converges in one interval however
//! many masters there are); and others' slots, up to [`RELAY_SLOTS`], only when a master it
//! hears lacks them: one that named them unheard (a master whose slots it holds but whose
//! digests stopped reaching it: a route cut between two servers while a third reaches
//! both), or one that holds slots of a different set of masters (it has never heard of some).
//! Relays go round every slot held, so state still travels through any chain of masters.
//!
//! A partition: a master that has heard from another and then hears nothing for
//! [`PEER_SILENCE`] takes it for cut off (or dead) and, on providers with a budget, lets
//! itself spend at most the provider's partition allowance until it hears from every
//! master again. However long the partition, the budget can be exceeded by at most the
//! allowance of each master but one; after the heal the counters converge to the exact
//! total within one interval. A master that stops cleanly says so, and is not waited for;
//! one silent past [`PEER_FORGET`] is taken for dead and no longer limits spending.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use vgas_shared::codec::{decode_as, encode};
use vgas_shared::crdt::UsageDigest;
use vgas_shared::Encoding;

use super::{day_of, Exposure, Silence, UsageBook};

/// How often a master publishes its usage view: budgets lag the other masters by this.
pub const SYNC_INTERVAL: Duration = Duration::from_millis(500);

/// Silence after which another master counts as cut off: four intervals missed.
pub const PEER_SILENCE: Duration = Duration::from_secs(2);

/// Silence after which another master counts as dead and no longer limits spending.
pub const PEER_FORGET: Duration = Duration::from_secs(600);

/// Others' slots a digest relays at most: about 150 bytes each, so a digest stays near
/// 300 KB however many masters there are (a month's usage of one master on a few models is
/// a few hundred slots; 1,000 masters' would be 19 MB, past the server's payload limit).
pub const RELAY_SLOTS: usize = 2_000;

/// What another master's latest digest said.
#[derive(Debug, Clone)]
pub struct Peer {
    heard: Instant,
    unheard: Vec<String>,
    known: u64,
}

impl UsageBook {
    /// This master's digest: its own slots of this month, and others' slots that masters
    /// it hears lack (see the module's documentation).
    pub fn digest(&self, now_ms: u64, leaving: bool) -> UsageDigest {
        let month_start = format!("{}-01", &day_of(now_ms)[..7]);
        let mut guard = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let b = &mut *guard;
        let known = b.state.known_hash(&month_start);
        let all = b.state.slots_since(&month_start);
        let fresh = || {
            b.peers
                .values()
                .filter(|p| p.heard.elapsed() < PEER_SILENCE)
        };
        let wanted: std::collections::BTreeSet<&str> = fresh()
            .flat_map(|p| p.unheard.iter().map(String::as_str))
            .filter(|n| *n != self.node)
            .collect();
        let differ = fresh().any(|p| p.known != known);
        let (mut slots, others): (Vec<_>, Vec<_>) =
            all.into_iter().partition(|s| s.node == self.node);
        // What to relay: the slots of masters someone named unheard, and, when someone
        // holds a different set of masters, everyone else's too.
        let relay: Vec<_> = match differ {
            true => others,
            false => others
                .into_iter()
                .filter(|s| wanted.contains(s.node.as_str()))
                .collect(),
        };
        if !relay.is_empty() {
            // The next `RELAY_SLOTS` of them, round from where the last relay ended, so
            // that every one goes out however many there are.
            let start = b.relay_from % relay.len();
            let n = RELAY_SLOTS.min(relay.len());
            slots.extend(relay.iter().cycle().skip(start).take(n).cloned());
            b.relay_from = (start + n) % relay.len();
        }
        let unheard = self.unheard(b, &month_start);
        UsageDigest {
            node: self.node.clone(),
            slots,
            leaving,
            unheard,
            known,
        }
    }

    /// Masters whose slots this book holds and that grew lately (within [`PEER_FORGET`])
    /// but whose own digests have not come for [`PEER_SILENCE`]: their slots reach this
    /// master only through others.
    fn unheard(&self, b: &super::Book, month_start: &str) -> Vec<String> {
        b.state
            .nodes_since(month_start)
            .into_iter()
            .filter(|n| *n != self.node)
            .filter(|n| b.grew.get(*n).is_some_and(|t| t.elapsed() < PEER_FORGET))
            .filter(|n| {
                b.peers
                    .get(*n)
                    .is_none_or(|p| p.heard.elapsed() >= PEER_SILENCE)
            })
            .map(str::to_owned)
            .collect()
    }

    /// Merges another master's digest; returns whether anything grew. Its sender counts as
    /// heard from now (or, when it is leaving, as gone).
    pub fn merge_digest(&self, d: &UsageDigest) -> bool {
        if d.node == self.node {
            return false;
        }
        let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        if d.leaving {
            b.peers.remove(&d.node);
        } else {
            let peer = Peer {
                heard: Instant::now(),
                unheard: d.unheard.clone(),
                known: d.known,
            };
            b.peers.insert(d.node.clone(), peer);
        }
        let mut grew = false;
        let mut grown: Vec<&str> = Vec::new();
        for s in &d.slots {
            let before = b.state.slot(&s.key, &s.node).unwrap_or_default();
            if b.state.merge_slot(s) {
                grew = true;
                // The totals grow by what the slot grew: no pass over the whole state.
                let after = b.state.slot(&s.key, &s.node).unwrap_or_default();
                b.count(&s.key, after.cost_micro_usd - before.cost_micro_usd);
                if s.node != self.node && grown.last() != Some(&s.node.as_str()) {
                    grown.push(&s.node);
                }
            }
        }
        let now = Instant::now();
        for n in grown {
            match b.grew.get_mut(n) {
                Some(t) => *t = now,
                None => {
                    b.grew.insert(n.to_owned(), now);
                }
            }
        }
        grew
    }

    /// Brings the partition view up to date: who is silent, since when. Returns the silent
    /// masters when the view changed (for the log).
    pub fn observe_peers(&self) -> Option<Vec<String>> {
        let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        b.peers.retain(|_, p| p.heard.elapsed() < PEER_FORGET);
        b.grew.retain(|_, t| t.elapsed() < PEER_FORGET);
        let mut silent: Vec<String> = b
            .peers
            .iter()
            .filter(|(_, p)| p.heard.elapsed() >= PEER_SILENCE)
            .map(|(n, _)| n.clone())
            .collect();
        silent.sort();
        let before = b.silence.as_ref().map(|s| s.peers.clone());
        match (&mut b.silence, silent.is_empty()) {
            (None, true) => return None,
            (Some(_), true) => b.silence = None,
            (Some(s), false) => s.peers = silent.clone(),
            (None, false) => {
                // This master's own cost per provider, in one pass over its slots.
                let mut own_at_start: HashMap<String, u64> = HashMap::new();
                for slot in b.state.slots_since("") {
                    if slot.node == self.node {
                        *own_at_start.entry(slot.key.provider).or_default() +=
                            slot.counts.cost_micro_usd;
                    }
                }
                b.silence = Some(Silence {
                    since: Instant::now(),
                    peers: silent.clone(),
                    own_at_start,
                });
            }
        }
        (before.as_ref() != Some(&silent)).then_some(silent)
    }

    /// What the current partition, if any, has let this master spend on `provider`.
    pub fn exposure(&self, provider: &str) -> Option<Exposure> {
        let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let s = b.silence.as_ref()?;
        let at_start = s.own_at_start.get(provider).copied().unwrap_or(0);
        Some(Exposure {
            silent: s.peers.clone(),
            for_ms: s.since.elapsed().as_millis() as u64,
            own_since_micro_usd: b
                .state
                .own_cost(&self.node, provider)
                .saturating_sub(at_start),
        })
    }

    /// Masters heard from within [`PEER_FORGET`].
    pub fn peers(&self) -> usize {
        let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        b.peers.len()
    }
}

/// Writes the slots the bucket missed (a partition, a slow JetStream) every
/// [`SYNC_INTERVAL`] until `stop`: apart from the exchange, which a write waiting for
/// JetStream must never hold up.
pub async fn persist(book: Arc<UsageBook>, stop: CancellationToken) {
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tick.tick() => {
                if let Err(e) = book.persist_dirty().await {
                    tracing::debug!("usage still not written: {e:#}");
                }
            }
        }
    }
}

/// Publishes this master's view every [`SYNC_INTERVAL`] and merges the others' until
/// `stop`, then says it is leaving.
pub async fn run(
    book: Arc<UsageBook>,
    client: async_nats::Client,
    subject: String,
    stop: CancellationToken,
) {
    let mut sub = match client.subscribe(subject.clone()).await {
        Ok(s) => s,
        Err(e) => {
            warn!("LLM usage is not shared with other masters: {e}");
            return;
        }
    };
    let mut tick = tokio::time::interval(SYNC_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let publish = |leaving: bool| {
        let d = book.digest(vgas_shared::now_ms(), leaving);
        encode(Encoding::MsgPack, &d).map(Bytes::from)
    };
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            msg = sub.next() => {
                let Some(msg) = msg else { break };
                match decode_as::<UsageDigest>(Encoding::MsgPack, &msg.payload) {
                    Ok(d) => {
                        if book.merge_digest(&d) {
                            tracing::debug!(from = %d.node, slots = d.slots.len(), "merged another master's usage");
                        }
                    }
                    Err(e) => warn!("an unreadable usage digest on {subject}: {e}"),
                }
            }
            _ = tick.tick() => {
                if let Some(silent) = book.observe_peers() {
                    match silent.is_empty() {
                        true => info!("every master is heard from again: spend limits are the budgets"),
                        false => warn!(?silent, "masters fell silent: a partition limits this master's spend to the allowance"),
                    }
                }
                if let Ok(bytes) = publish(false) {
                    let _ = client.publish(subject.clone(), bytes).await;
                }
            }
        }
    }
    if let Ok(bytes) = publish(true) {
        let _ = client.publish(subject, bytes).await;
        let _ = client.flush().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgas_shared::llm::TokenUsage;

    const T: u64 = 1_718_000_000_000;

    async fn spend(book: &UsageBook, cost: u64) {
        let u = TokenUsage {
            input_tokens: 1,
            output_tokens: 1,
            cached_tokens: 0,
        };
        book.record("openai", "m", &u, Some(cost), true, T)
            .await
            .unwrap();
    }

    #[tokio::test]
    async fn masters_exchanging_digests_hold_the_exact_total_in_any_order() {
        let (a, b, c) = (
            UsageBook::in_memory_as("a"),
            UsageBook::in_memory_as("b"),
            UsageBook::in_memory_as("c"),
        );
        spend(&a, 100).await;
        spend(&b, 20).await;
        spend(&b, 3).await;
        spend(&c, 4_000).await;
        // c hears only from b, a only from c: state travels through whoever has it.
        assert!(c.merge_digest(&b.digest(T, false)));
        assert!(a.merge_digest(&c.digest(T, false)));
        assert!(
            !a.merge_digest(&c.digest(T, false)),
            "a repeat grows nothing"
        );
        assert_eq!(a.spend("openai", T), (4_123, 4_123));
        b.merge_digest(&a.digest(T, false));
        c.merge_digest(&a.digest(T, false));
        for book in [&a, &b, &c] {
            assert_eq!(book.spend("openai", T).0, 4_123);
            assert_eq!(book.rows()[0].requests, 4);
        }
        // Its own digest is not a peer's.
        assert!(!a.merge_digest(&a.digest(T, false)));
    }

    #[tokio::test]
    async fn a_silent_master_limits_spend_to_what_was_spent_since() {
        let (a, b) = (UsageBook::in_memory_as("a"), UsageBook::in_memory_as("b"));
        spend(&a, 500).await;
        a.merge_digest(&b.digest(T, false));
        assert_eq!(a.observe_peers(), None, "b was just heard from");
        assert!(a.exposure("openai").is_none());
        // b falls silent.
        a.book.lock().unwrap().peers.get_mut("b").unwrap().heard =
            Instant::now() - PEER_SILENCE - Duration::from_millis(1);
        assert_eq!(a.observe_peers(), Some(vec!["b".to_owned()]));
        spend(&a, 70).await;
        spend(&a, 5).await;
        let x = a.exposure("openai").unwrap();
        assert_eq!(
            (x.silent, x.own_since_micro_usd),
            (vec!["b".to_owned()], 75)
        );
        // b is heard again: the partition is over.
        a.merge_digest(&b.digest(T, false));
        assert_eq!(a.observe_peers(), Some(Vec::new()));
        assert!(a.exposure("openai").is_none());
        // A master that says it leaves is not waited for.
        a.merge_digest(&b.digest(T, true));
        assert_eq!(a.peers(), 0);
    }

    #[tokio::test]
    async fn masters_that_hear_each_other_send_only_their_own_slots() {
        let books: Vec<UsageBook> = ["a", "b", "c"]
            .iter()
            .map(|n| UsageBook::in_memory_as(n))
            .collect();
        for (i, b) in books.iter().enumerate() {
            spend(b, 10 * (i as u64 + 1)).await;
        }
        // Two rounds: everyone hears everyone, and knows the same masters.
        for _ in 0..2 {
            let ds: Vec<UsageDigest> = books.iter().map(|b| b.digest(T, false)).collect();
            for b in &books {
                for d in &ds {
                    b.merge_digest(d);
                }
            }
        }
        for b in &books {
            assert_eq!(b.spend("openai", T).0, 60);
            let d = b.digest(T, false);
            assert!(d.unheard.is_empty());
            assert!(
                d.slots.iter().all(|s| s.node == d.node),
                "nothing to relay: {d:?}"
            );
        }
    }

    #[tokio::test]
    async fn a_master_cut_off_from_another_gets_its_slots_through_a_third() {
        let (a, b, c) = (
            UsageBook::in_memory_as("a"),
            UsageBook::in_memory_as("b"),
            UsageBook::in_memory_as("c"),
        );
        spend(&c, 7).await;
        for (x, y) in [(&a, &b), (&a, &c), (&b, &a), (&b, &c), (&c, &a), (&c, &b)] {
            x.merge_digest(&y.digest(T, false));
        }
        assert_eq!(a.spend("openai", T).0, 7);
        // The route between a and c is cut: a stops hearing c; b hears both.
        a.book.lock().unwrap().peers.get_mut("c").unwrap().heard =
            Instant::now() - PEER_SILENCE - Duration::from_millis(1);
        let from_a = a.digest(T, false);
        assert_eq!(from_a.unheard, vec!["c".to_owned()]);
        b.merge_digest(&from_a);
        spend(&c, 100).await;
        b.merge_digest(&c.digest(T, false));
        let from_b = b.digest(T, false);
        assert!(from_b.slots.iter().any(|s| s.node == "c"), "b relays c");
        assert!(a.merge_digest(&from_b));
        assert_eq!(a.spend("openai", T).0, 107, "c's new spend reached a");
    }
}
