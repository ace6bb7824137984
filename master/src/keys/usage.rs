//! Usage accounting: per provider, model and UTC day, the requests, errors, input, output
//! and cached tokens and the cost in micro-USD; per provider and model, requests and tokens
//! per second over a sliding minute. Counters are persisted in a JetStream KV bucket (one key
//! per provider, model and day) so a master restart keeps them, and budgets with them.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv};
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use vgas_shared::llm::{TokenUsage, UsageRate, UsageRow};
use vgas_shared::Subjects;

/// Width of the sliding window behind the per-second rates.
pub const RATE_WINDOW_MS: u64 = 60_000;

/// How long usage counters are kept in the bucket (400 days: a year of monthly reports).
pub const USAGE_MAX_AGE: std::time::Duration = std::time::Duration::from_secs(400 * 24 * 3600);

/// Samples kept per provider and model in the window; older ones are dropped first, so a
/// burst past this undercounts the rate rather than growing memory.
const MAX_WINDOW_SAMPLES: usize = 4096;

/// The persisted counters of one provider, model and day.
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

type Key = (String, String, String);

#[derive(Debug, Default)]
struct Book {
    days: BTreeMap<Key, DayCounters>,
    /// (provider, day) and (provider, month) spend in micro-USD, for budget checks.
    spend_day: HashMap<(String, String), u64>,
    spend_month: HashMap<(String, String), u64>,
    /// (time, tokens) of recent calls per (provider, model).
    window: HashMap<(String, String), VecDeque<(u64, u64)>>,
}

/// The usage counters and their bucket.
#[derive(Debug, Default)]
pub struct UsageBook {
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

/// A KV key for a provider, model and day. Model names may hold characters KV keys do not
/// allow (`llama3:8b`); those are written `=XX` (hex), which is reversible.
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
    fn add(&mut self, c: &DayCounters, cost_delta: u64) {
        let month = c.day[..7].to_owned();
        *self
            .spend_day
            .entry((c.provider.clone(), c.day.clone()))
            .or_default() += cost_delta;
        *self
            .spend_month
            .entry((c.provider.clone(), month))
            .or_default() += cost_delta;
    }
}

impl UsageBook {
    /// A book kept in memory only (tests, benchmarks).
    pub fn in_memory() -> UsageBook {
        UsageBook::default()
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

    /// Opens the usage bucket ([`UsageBook::create_bucket`] made it) and loads every counter
    /// in it.
    pub async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<UsageBook> {
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
                    book.add(&c, c.cost_micro_usd);
                    book.days
                        .insert((c.provider.clone(), c.model.clone(), c.day.clone()), c);
                }
                _ => tracing::warn!(key, "skipping unreadable usage record"),
            }
        }
        Ok(UsageBook {
            book: Mutex::new(book),
            kv: Some(store),
            persist: tokio::sync::Mutex::new(()),
        })
    }

    /// Adds one call; returns its cost in micro-USD. Persists the day's counters.
    pub async fn record(
        &self,
        provider: &str,
        model: &str,
        usage: &TokenUsage,
        cost_micro_usd: Option<u64>,
        ok: bool,
        now_ms: u64,
    ) -> Result<u64> {
        let day = day_of(now_ms);
        let key = (provider.to_owned(), model.to_owned(), day.clone());
        let cost = cost_micro_usd.unwrap_or(0);
        {
            let mut b = self.book.lock().unwrap_or_else(|p| p.into_inner());
            let c = b.days.entry(key.clone()).or_insert_with(|| DayCounters {
                provider: provider.into(),
                model: model.into(),
                day: day.clone(),
                ..Default::default()
            });
            c.requests += 1;
            c.errors += u64::from(!ok);
            c.input_tokens += usage.input_tokens;
            c.output_tokens += usage.output_tokens;
            c.cached_tokens += usage.cached_tokens;
            c.cost_micro_usd += cost;
            c.unpriced |= cost_micro_usd.is_none() && usage.total() > 0;
            let snapshot = c.clone();
            b.add(&snapshot, cost);
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
        if let Some(kv) = &self.kv {
            let _serial = self.persist.lock().await;
            let latest = {
                let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
                b.days.get(&key).cloned()
            };
            if let Some(c) = latest {
                let bytes = vgas_shared::codec::encode(vgas_shared::Encoding::MsgPack, &c)?;
                kv.put(kv_key(provider, model, &day), bytes.into())
                    .await
                    .context("persist usage")?;
            }
        }
        Ok(cost)
    }

    /// Spend of a provider today and this month, in micro-USD.
    pub fn spend(&self, provider: &str, now_ms: u64) -> (u64, u64) {
        let day = day_of(now_ms);
        let month = day[..7].to_owned();
        let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let d = b
            .spend_day
            .get(&(provider.to_owned(), day))
            .copied()
            .unwrap_or(0);
        let m = b
            .spend_month
            .get(&(provider.to_owned(), month))
            .copied()
            .unwrap_or(0);
        (d, m)
    }

    /// Every day's counters, oldest day first.
    pub fn rows(&self) -> Vec<UsageRow> {
        let b = self.book.lock().unwrap_or_else(|p| p.into_inner());
        let mut rows: Vec<UsageRow> = b
            .days
            .values()
            .map(|c| UsageRow {
                provider: c.provider.clone(),
                model: c.model.clone(),
                day: c.day.clone(),
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
