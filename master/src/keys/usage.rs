//! Usage accounting: per provider, model and UTC day, the requests, errors, input, output
//! and cached tokens and the cost in micro-USD; per provider and model, requests and tokens
//! per second over a sliding minute. Counters are persisted in a JetStream KV bucket (one key
//! per provider, model and day) so a master restart keeps them, and budgets with them.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use vgas_shared::crdt::{UsageCounts, UsageKey, UsageSlot, UsageState};
use vgas_shared::llm::{TokenUsage, UsageRate, UsageRow};
use vgas_shared::Subjects;

pub mod sync;

/// How long a call's usage may wait for the bucket before the call ends anyway (the persist
/// loop writes it later): JetStream answers in milliseconds unless it has no quorum.
const PERSIST_WAIT: std::time::Duration = std::time::Duration::from_millis(250);

/// Width of the sliding window behind the per-second rates.
pub const RATE_WINDOW_MS: u64 = 60_000;

/// How long usage counters are kept in the bucket (400 days: a year of monthly reports).
pub const USAGE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(400 * 24 * 3600);

/// Samples kept per provider and model in the window; older ones are dropped first, so a
/// burst past this undercounts the rate rather than growing memory.
const MAX_WINDOW_SAMPLES: usize = 4096;

/// The persisted counters of one provider, model and day, as one master counted them (its
/// slot in the KV key's last token; a key without one is from before masters kept slots).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DayCounters {
    pub provider: String,
    pub model: String,
    pub day: String,
    pub requests: u64,
    #[serde(default)]
    pub errors: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cached_tokens: u64,
    pub cost_micro_usd: u64,
    #[serde(default)]
    pub unpriced: bool,
}

impl DayCounters {
    fn of(key: &UsageKey, c: &UsageCounts) -> DayCounters {
        DayCounters {
            provider: key.provider.clone(),
            model: key.model.clone(),
            day: key.day.clone(),
            requests: c.requests,
            errors: c.errors,
            input_tokens: c.input_tokens,
            output_tokens: c.output_tokens,
            cached_tokens: c.cached_tokens,
            cost_micro_usd: c.cost_micro_usd,
            unpriced: c.unpriced,
        }
    }

    fn split(&self) -> (UsageKey, UsageCounts) {
        (
            UsageKey {
                provider: self.provider.clone(),
                model: self.model.clone(),
                day: self.day.clone(),
            },
            UsageCounts {
                requests: self.requests,
                errors: self.errors,
                input_tokens: self.input_tokens,
                output_tokens: self.output_tokens,
                cached_tokens: self.cached_tokens,
                cost_micro_usd: self.cost_micro_usd,
                unpriced: self.unpriced,
            },
        )
    }
}

/// The slot of usage stored before masters kept one each.
const EARLIER_SLOT: &str = "earlier";

#[derive(Debug, Default)]
struct Book {
    /// Every master's slots (the CRDT); this master adds only to its own.
    state: UsageState,
    /// Spend in micro-USD over every master by provider, then by day (`YYYY-MM-DD`) and by
    /// month (`YYYY-MM`), for budget checks; grown by what each merge grew. Nested so that a
    /// lookup by `&str` allocates nothing.
    spend: HashMap<String, HashMap<String, u64>>,
    /// (time, tokens) of recent calls per (provider, model), this master's own.
    window: HashMap<(String, String), VecDeque<(u64, u64)>>,
    /// Own slots changed since they were last written to the bucket.
    dirty: BTreeSet<UsageKey>,
    /// Other masters by node id: when their digest last came, and what it said they lack.
    peers: HashMap<String, sync::Peer>,
    /// When a slot of each other master last grew here (through any master's digest).
    grew: HashMap<String, Instant>,
    /// Where the next relay of others' slots starts, so relays go round all of them.
    relay_from: usize,
    /// Set while some master has gone silent (a partition, or a crash).
    silence: Option<Silence>,
}

/// A partition as this master sees it: since when, who, and what it had spent then.
#[derive(Debug, Clone)]
struct Silence {
    since: Instant,
    peers: Vec<String>,
    /// This master's own cost per provider when the silence began.
    own_at_start: HashMap<String, u64>,
}

/// What a partition has let this master spend on one provider so far.
#[derive(Debug, Clone, PartialEq)]
pub struct Exposure {
    pub silent: Vec<String>,
    pub for_ms: u64,
    /// This master's own spend on the provider since the silence began, micro-USD.
    pub own_since_micro_usd: u64,
}

/// The usage counters and their bucket.
#[derive(Debug, Default)]
pub struct UsageBook {
    /// This master's slot (its node id).
    node: String,
    book: Mutex<Book>,
    kv: Option<kv::Store>,
    /// Serializes bucket writes so a slower put never overwrites a newer value.
    persist: tokio::sync::Mutex<()>,
}

/// `YYYY-MM-DD` of a time in ms since the epoch (UTC).
pub fn day_of(ms: u64) -> String {
    let days = (ms / 86_400_000) as i64;
    let (y, m, d) = civil_from_days(days);
    format!("{y:04}-{m:02}-{d:02}")
}

/// Howard Hinnant's days-to-civil: (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

/// A KV key for a provider, model, day and master slot. Model names may hold characters KV
/// keys do not allow (`llama3:8b`); those are written `=XX` (hex), which is reversible.
fn slot_key(key: &UsageKey, node: &str) -> String {
    format!("{}.{node}", kv_key(&key.provider, &key.model, &key.day))
}

/// The node of a stored slot's key: its fourth token; a key of three is from before slots.
fn node_of(kv_key: &str) -> &str {
    kv_key.splitn(4, '.').nth(3).unwrap_or(EARLIER_SLOT)
}

fn kv_key(provider: &str, model: &str, day: &str) -> String {
    let mut m = String::with_capacity(model.len());
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' {
            m.push(b as char);
        } else {
            m.push_str(&format!("={b:02X}"));
        }
    }
    format!("{day}.{provider}.{m}")
}

impl Book {
    /// Adds `cost` to the spend totals of `key`'s provider, day and month.
    fn count(&mut self, key: &UsageKey, cost: u64) {
        if cost == 0 {
            return;
        }
        let periods = match self.spend.get_mut(key.provider.as_str()) {
            Some(p) => p,
            None => self.spend.entry(key.provider.clone()).or_default(),
        };
        for period in [key.day.as_str(), &key.day[..7]] {
            match periods.get_mut(period) {
                Some(v) => *v += cost,
                None => {
                    periods.insert(period.to_owned(), cost);
                }
            }
        }
    }

    /// Recomputes the spend totals from the state.
    fn retotal(&mut self) {
        self.spend.clear();
        let totals: Vec<(UsageKey, u64)> = self
            .state
            .totals()
            .map(|(k, t)| (k.clone(), t.cost_micro_usd))
            .collect();
        for (k, cost) in totals {
            self.count(&k, cost);
        }
    }
}

impl UsageBook {
    /// A book kept in memory only (tests, benchmarks), counting as master `node`.
    pub fn in_memory() -> UsageBook {
        UsageBook::in_memory_as("this")
    }

    /// A book kept in memory only, counting in `node`'s slot.
    pub fn in_memory_as(node: &str) -> UsageBook {
        UsageBook {
            node: node.to_owned(),
            ..UsageBook::default()
        }
    }

    /// This master's slot.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// Makes the usage bucket with `replicas` copies, or binds to it (the master, at start).
    pub async fn create_bucket(
        js: &jetstream::Context,
        subjects: &Subjects,
        replicas: vgas_shared::config::Replicas,
    ) -> Result<kv::Store> {
        let bucket = subjects.usage_bucket();
        js.create_key_value(kv::Config {
            bucket: bucket.clone(),
            description: "vgas LLM usage per provider, model and day".into(),
            history: 1,
            max_age: USAGE_MAX_AGE,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.get(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("open JetStream KV bucket {bucket}"))
    }

    /// Opens the usage bucket ([`UsageBook::create_bucket`] made it) and loads every slot in
    /// it; this master counts in a new slot of its own, `node`.
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        node: &str,
    ) -> Result<UsageBook> {
        let bucket = subjects.usage_bucket();
        let store = js
            .get_key_value(&bucket)
            .await
            .with_context(|| format!("open JetStream KV bucket {bucket}"))?;
        let keys: Vec<String> = match store.keys().await {
            Ok(k) => k.try_collect().await.context("list usage keys")?,
            Err(e) => return Err(e).context("list usage keys"),
        };
        let mut book = Book::default();
        for key in keys {
            let Some(bytes) = store.get(&key).await.context("read usage")? else {
                continue;
            };
            match rmp_decode(&bytes) {
                Some(c) if c.day.len() == 10 => {
                    let (k, counts) = c.split();
                    book.state.merge_slot(&UsageSlot {
                        key: k,
                        node: node_of(&key).to_owned(),
                        counts,
                    });
                }
                _ => tracing::warn!(key, "skipping unreadable usage record"),
            }
        }
        book.retotal();
        Ok(UsageBook {
            node: node.to_owned(),
            book: Mutex::new(book),
            kv: Some(store),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    /// Adds one call to this master's slot; returns its cost in micro-USD. Writes the slot
    /// to the bucket; when that fails (no JetStream quorum in a partition) the slot stays
    /// marked and is written by a later call or sync tick: the call itself is counted.
    pub async fn record(
        &self,
        provider: &str,
        model: &str,
        usage: &TokenUsage,
        cost_micro_usd: Option<u64>,
        ok: bool,
        now_ms: u64,
    ) -> Result<u64> {
        let key = UsageKey {
            provider: provider.to_owned(),
            model: model.to_owned(),
            day: day_of(now_ms),
        };
        let cost = cost_micro_usd.unwrap_or(0);
        {
            let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
            let counts = UsageCounts {
                requests: 1,
                errors: u64::from(!ok),
                input_tokens: usage.input_tokens,
                output_tokens: usage.output_tokens,
                cached_tokens: usage.cached_tokens,
                cost_micro_usd: cost,
                unpriced: cost_micro_usd.is_none() && usage.total() > 0,
            };
            b.state.add(&self.node, key.clone(), &counts);
            b.count(&key, cost);
            b.dirty.insert(key);
            let w = b
                .window
                .entry((provider.to_owned(), model.to_owned()))
                .or_default();
            w.push_back((now_ms, usage.total()));
            while w.len() > MAX_WINDOW_SAMPLES
                || w.front().is_some_and(|(t, _)| *t + RATE_WINDOW_MS < now_ms)
            {
                w.pop_front();
            }
        }
        // Written before the call's end is sent, unless JetStream is slow to take it (no
        // quorum in a partition): then the persist loop writes it later; the call is counted
        // here and in every master that hears this one.
        match tokio::time::timeout(PERSIST_WAIT, self.persist_dirty()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("usage kept in memory, written later: {e:#}"),
            Err(_) => tracing::warn!("usage kept in memory, written later: JetStream is slow"),
        }
        Ok(cost)
    }

    /// Writes this master's changed slots to the bucket. A slot stays marked until the
    /// value written is still its value (a call counted meanwhile marks it again), so a
    /// write cut short loses nothing.
    pub async fn persist_dirty(&self) -> Result<()> {
        let Some(kv) = &self.kv else { return Ok(()) };
        let _serial = self.persist.lock().await;
        let dirty: Vec<(UsageKey, UsageCounts)> = {
            let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
            b.dirty
                .iter()
                .filter_map(|k| b.state.slot(k, &self.node).map(|c| (k.clone(), c)))
                .collect()
        };
        for (key, counts) in dirty {
            let bytes = vgas_shared::codec::encode(
                vgas_shared::Encoding::MsgPack,
                &DayCounters::of(&key, &counts),
            )?;
            kv.put(slot_key(&key, &self.node), bytes.into())
                .await
                .context("persist usage")?;
            let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
            if b.state.slot(&key, &self.node) == Some(counts) {
                b.dirty.remove(&key);
            }
        }
        Ok(())
    }

    /// Spend of a provider today and this month, in micro-USD.
    pub fn spend(&self, provider: &str, now_ms: u64) -> (u64, u64) {
        let day = day_of(now_ms);
        let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let Some(periods) = b.spend.get(provider) else {
            return (0, 0);
        };
        let of = |period: &str| periods.get(period).copied().unwrap_or(0);
        (of(&day), of(&day[..7]))
    }

    /// Every day's counters over every master, oldest day first.
    pub fn rows(&self) -> Vec<UsageRow> {
        let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<UsageRow> = b
            .state
            .totals()
            .map(|(k, c)| UsageRow {
                provider: k.provider.clone(),
                model: k.model.clone(),
                day: k.day.clone(),
                requests: c.requests,
                errors: c.errors,
                input_tokens: c.input_tokens,
                output_tokens: c.output_tokens,
                cached_tokens: c.cached_tokens,
                cost_usd: c.cost_micro_usd as f64 / 1e6,
                unpriced: c.unpriced,
            })
            .collect();
        rows.sort_by(|a, b| (&a.day, &a.provider, &a.model).cmp(&(&b.day, &b.provider, &b.model)));
        rows
    }

    /// Requests and tokens per second over the last [`RATE_WINDOW_MS`].
    pub fn rates(&self, now_ms: u64) -> Vec<UsageRate> {
        let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let secs = RATE_WINDOW_MS as f64 / 1000.0;
        let mut out: Vec<UsageRate> = b
            .window
            .iter()
            .map(|((p, m), w)| {
                let recent = w.iter().filter(|(t, _)| *t + RATE_WINDOW_MS >= now_ms);
                let (n, tokens) = recent.fold((0u64, 0u64), |(n, s), (_, t)| (n + 1, s + t));
                UsageRate {
                    provider: p.clone(),
                    model: m.clone(),
                    requests_per_s: n as f64 / secs,
                    tokens_per_s: tokens as f64 / secs,
                }
            })
            .filter(|r| r.requests_per_s > 0.0)
            .collect();
        out.sort_by(|a, b| (&a.provider, &a.model).cmp(&(&b.provider, &b.model)));
        out
    }
}

fn rmp_decode(bytes: &[u8]) -> Option<DayCounters> {
    vgas_shared::codec::decode_as(vgas_shared::Encoding::MsgPack, bytes).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_dates() {
        assert_eq!(day_of(0), "1970-01-01");
        assert_eq!(day_of(951_782_400_000), "2000-02-29");
        assert_eq!(day_of(1_718_000_000_000), "2024-06-10");
    }

    #[test]
    fn kv_keys_escape_model_names() {
        assert_eq!(
            kv_key("ollama", "llama3:8b", "2024-06-10"),
            "2024-06-10.ollama.llama3=3A8b"
        );
        assert_ne!(kv_key("o", "a:b", "d"), kv_key("o", "a_b", "d"));
    }

    #[tokio::test]
    async fn counts_spend_and_rates() {
        let book = UsageBook::in_memory();
        let t = 1_718_000_000_000;
        let u = TokenUsage {
            input_tokens: 100,
            output_tokens: 50,
            cached_tokens: 20,
        };
        book.record("openai", "m", &u, Some(1_500), true, t)
            .await
            .unwrap();
        book.record("openai", "m", &u, Some(500), false, t + 1000)
            .await
            .unwrap();
        book.record("openai", "x", &u, None, true, t).await.unwrap();
        assert_eq!(book.spend("openai", t), (2_000, 2_000));
        assert_eq!(book.spend("anthropic", t), (0, 0));
        let rows = book.rows();
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].requests, rows[0].errors, rows[0].input_tokens),
            (2, 1, 200)
        );
        assert!(rows[1].unpriced);
        let rates = book.rates(t + 1000);
        assert_eq!(rates[0].requests_per_s, 2.0 / 60.0);
        assert_eq!(rates[0].tokens_per_s, 300.0 / 60.0);
        assert!(book.rates(t + 120_000).is_empty(), "the window slides");
        // The next day starts from zero; the month does not.
        assert_eq!(book.spend("openai", t + 86_400_000), (0, 2_000));
    }
}
