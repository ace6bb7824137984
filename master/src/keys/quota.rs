//! Quotas, checked before a call is made: a daily and a monthly budget per provider, a
//! requests-per-minute and a tokens-per-minute token bucket, a cap on concurrent calls, and
//! whatever the provider's own rate-limit headers last said. A refused call takes nothing
//! from any bucket and names the limit that refused it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::config::{Limits, DEFAULT_MAX_CONCURRENT};

/// Which limit refused a call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum QuotaLimit {
    DailyBudget,
    MonthlyBudget,
    RequestsPerMinute,
    TokensPerMinute,
    Concurrency,
    /// The provider's own headers (`retry-after`, remaining 0 until a reset).
    ProviderRateLimit,
    /// A budget is set but the model has no price, so the call could not be accounted.
    Unpriced,
    /// Another master is silent (a partition) and this one spent its allowance meanwhile.
    PartitionAllowance,
}

impl QuotaLimit {
    pub fn name(self) -> &'static str {
        match self {
            QuotaLimit::DailyBudget => "daily_budget",
            QuotaLimit::MonthlyBudget => "monthly_budget",
            QuotaLimit::RequestsPerMinute => "requests_per_minute",
            QuotaLimit::TokensPerMinute => "tokens_per_minute",
            QuotaLimit::Concurrency => "max_concurrent",
            QuotaLimit::ProviderRateLimit => "provider_rate_limit",
            QuotaLimit::Unpriced => "unpriced_model",
            QuotaLimit::PartitionAllowance => "partition_allowance",
        }
    }
}

/// A refusal: the limit, what it says, and when trying again may work.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("{}: {message}", limit.name())]
pub struct QuotaRefusal {
    pub limit: QuotaLimit,
    pub message: String,
    pub retry_after_ms: Option<u64>,
}

/// Held for the length of one call: its concurrency slot, and the tokens it reserved.
#[derive(Debug)]
pub struct QuotaPermit {
    _slot: OwnedSemaphorePermit,
    pub provider: String,
    pub reserved_tokens: u64,
}

/// A token bucket: `capacity` per minute, refilled continuously.
#[derive(Debug, Clone)]
struct Bucket {
    capacity: f64,
    level: f64,
    last_ms: u64,
}

impl Bucket {
    fn new(per_minute: f64, now_ms: u64) -> Bucket {
        Bucket {
            capacity: per_minute,
            level: per_minute,
            last_ms: now_ms,
        }
    }

    fn refill(&mut self, now_ms: u64) {
        let dt = now_ms.saturating_sub(self.last_ms) as f64;
        self.level = (self.level + dt * self.capacity / 60_000.0).min(self.capacity);
        self.last_ms = now_ms.max(self.last_ms);
    }

    /// Milliseconds until `n` is available (0 if it is now).
    fn wait_for(&self, n: f64) -> u64 {
        let n = n.min(self.capacity);
        if self.level >= n {
            0
        } else {
            ((n - self.level) * 60_000.0 / self.capacity).ceil() as u64
        }
    }
}

#[derive(Debug)]
struct State {
    rpm: Option<Bucket>,
    tpm: Option<Bucket>,
    blocked_until_ms: u64,
    blocked_why: String,
}

#[derive(Debug)]
struct ProviderLimiter {
    slots: Arc<Semaphore>,
    max_concurrent: u32,
    state: Mutex<State>,
}

/// Per-provider limiters, made on first use from the provider's [`Limits`].
#[derive(Debug, Default)]
pub struct Limiter {
    providers: Mutex<HashMap<String, Arc<ProviderLimiter>>>,
}

/// What a check needs to know about the call and the provider's spend.
#[derive(Debug, Clone)]
pub struct CallEstimate {
    pub tokens: u64,
    /// Worst-case cost in micro-USD, `None` when the model has no price.
    pub cost_micro_usd: Option<u64>,
    pub spent_today_micro_usd: u64,
    pub spent_month_micro_usd: u64,
    /// What this master spent on the provider since another master fell silent (a
    /// partition); `None` while it hears every master.
    pub partition: Option<super::usage::Exposure>,
}

fn usd(micro: u64) -> String {
    format!("${:.4}", micro as f64 / 1e6)
}

impl Limiter {
    fn get(&self, provider: &str, limits: &Limits, now_ms: u64) -> Arc<ProviderLimiter> {
        let mut map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(provider.to_owned())
            .or_insert_with(|| {
                let max = limits
                    .max_concurrent
                    .unwrap_or(DEFAULT_MAX_CONCURRENT)
                    .max(1);
                Arc::new(ProviderLimiter {
                    slots: Arc::new(Semaphore::new(max as usize)),
                    max_concurrent: max,
                    state: Mutex::new(State {
                        rpm: limits
                            .requests_per_minute
                            .map(|r| Bucket::new(f64::from(r.max(1)), now_ms)),
                        tpm: limits
                            .tokens_per_minute
                            .map(|t| Bucket::new(t.max(1) as f64, now_ms)),
                        blocked_until_ms: 0,
                        blocked_why: String::new(),
                    }),
                })
            })
            .clone()
    }

    /// Checks every limit; takes from the buckets and a concurrency slot only if all pass.
    pub fn check(
        &self,
        provider: &str,
        limits: &Limits,
        est: CallEstimate,
        now_ms: u64,
    ) -> Result<QuotaPermit, QuotaRefusal> {
        let refuse = |limit, message: String, retry_after_ms| QuotaRefusal {
            limit,
            message,
            retry_after_ms,
        };
        let budget_set = limits.daily_budget_usd.is_some() || limits.monthly_budget_usd.is_some();
        let cost = match est.cost_micro_usd {
            Some(c) => c,
            None if budget_set => {
                return Err(refuse(
                    QuotaLimit::Unpriced,
                    format!("{provider} has a budget but this model has no price; add it under [prices.{provider}] in llm.toml"),
                    None,
                ))
            }
            None => 0,
        };
        // Cut off from another master: the budget's remainder may be spent on both sides,
        // so this side spends at most its allowance until it hears from every master.
        if let (Some(allowance), Some(x)) = (limits.partition_allowance_micro_usd(), &est.partition)
        {
            if x.own_since_micro_usd.saturating_add(cost) > allowance {
                return Err(refuse(
                    QuotaLimit::PartitionAllowance,
                    format!(
                        "masters {} silent for {} s (a partition): this master has spent {} of its {} allowance on {provider} since; this call could cost up to {}",
                        x.silent.join(", "),
                        x.for_ms / 1000,
                        usd(x.own_since_micro_usd),
                        usd(allowance),
                        usd(cost)
                    ),
                    Some(super::usage::sync::PEER_SILENCE.as_millis() as u64),
                ));
            }
        }
        for (limit, budget, spent, period) in [
            (
                QuotaLimit::DailyBudget,
                limits.daily_budget_usd,
                est.spent_today_micro_usd,
                "today (UTC)",
            ),
            (
                QuotaLimit::MonthlyBudget,
                limits.monthly_budget_usd,
                est.spent_month_micro_usd,
                "this month (UTC)",
            ),
        ] {
            if let Some(b) = budget {
                let b = (b * 1e6).round().max(0.0) as u64;
                if spent.saturating_add(cost) > b {
                    return Err(refuse(
                        limit,
                        format!("{provider} has spent {} of its {} budget {period}; this call could cost up to {}", usd(spent), usd(b), usd(cost)),
                        None,
                    ));
                }
            }
        }
        let lim = self.get(provider, limits, now_ms);
        let mut st = lim.state.lock().unwrap_or_else(|p| p.into_inner());
        if st.blocked_until_ms > now_ms {
            let wait = st.blocked_until_ms - now_ms;
            return Err(refuse(
                QuotaLimit::ProviderRateLimit,
                format!("{provider} asked to wait {wait} ms ({})", st.blocked_why),
                Some(wait),
            ));
        }
        if let Some(b) = st.rpm.as_mut() {
            b.refill(now_ms);
            let wait = b.wait_for(1.0);
            if wait > 0 {
                return Err(refuse(
                    QuotaLimit::RequestsPerMinute,
                    format!(
                        "{provider} is at its limit of {} requests per minute",
                        b.capacity
                    ),
                    Some(wait),
                ));
            }
        }
        if let Some(b) = st.tpm.as_mut() {
            b.refill(now_ms);
            let wait = b.wait_for(est.tokens as f64);
            if wait > 0 {
                return Err(refuse(
                    QuotaLimit::TokensPerMinute,
                    format!("{provider} is at its limit of {} tokens per minute ({} needed, {:.0} left)", b.capacity, est.tokens, b.level.max(0.0)),
                    Some(wait),
                ));
            }
        }
        let Ok(slot) = lim.slots.clone().try_acquire_owned() else {
            return Err(refuse(
                QuotaLimit::Concurrency,
                format!(
                    "{provider} already has {} calls in flight",
                    lim.max_concurrent
                ),
                None,
            ));
        };
        if let Some(b) = st.rpm.as_mut() {
            b.level -= 1.0;
        }
        if let Some(b) = st.tpm.as_mut() {
            b.level -= (est.tokens as f64).min(b.capacity);
        }
        Ok(QuotaPermit {
            _slot: slot,
            provider: provider.to_owned(),
            reserved_tokens: est.tokens,
        })
    }

    /// After a call: charges the difference between the tokens used and those reserved.
    pub fn settle(&self, permit: &QuotaPermit, used_tokens: u64) {
        let map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(lim) = map.get(&permit.provider) {
            let mut st = lim.state.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(b) = st.tpm.as_mut() {
                b.level -= used_tokens as f64 - permit.reserved_tokens as f64;
            }
        }
    }

    /// What the provider's response headers say: remaining requests and tokens, when they
    /// reset, and `retry-after`. Names are lower-case.
    pub fn observe_headers<'a>(
        &self,
        provider: &str,
        limits: &Limits,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
        now_ms: u64,
    ) {
        let lim = self.get(provider, limits, now_ms);
        let mut st = lim.state.lock().unwrap_or_else(|p| p.into_inner());
        let h: HashMap<&str, &str> = headers.into_iter().collect();
        let block = |until: u64, why: String, st: &mut State| {
            if until > st.blocked_until_ms {
                st.blocked_until_ms = until;
                st.blocked_why = why;
            }
        };
        if let Some(secs) = h
            .get("retry-after")
            .and_then(|v| v.trim().parse::<f64>().ok())
        {
            block(
                now_ms + (secs.max(0.0) * 1000.0) as u64,
                format!("retry-after: {secs}"),
                &mut st,
            );
        }
        for (kind, remaining, reset, reset_is_time) in [
            (
                "requests",
                "x-ratelimit-remaining-requests",
                "x-ratelimit-reset-requests",
                false,
            ),
            (
                "tokens",
                "x-ratelimit-remaining-tokens",
                "x-ratelimit-reset-tokens",
                false,
            ),
            (
                "requests",
                "anthropic-ratelimit-requests-remaining",
                "anthropic-ratelimit-requests-reset",
                true,
            ),
            (
                "tokens",
                "anthropic-ratelimit-tokens-remaining",
                "anthropic-ratelimit-tokens-reset",
                true,
            ),
            (
                "tokens",
                "anthropic-ratelimit-input-tokens-remaining",
                "anthropic-ratelimit-input-tokens-reset",
                true,
            ),
            (
                "tokens",
                "anthropic-ratelimit-output-tokens-remaining",
                "anthropic-ratelimit-output-tokens-reset",
                true,
            ),
        ] {
            let Some(left) = h.get(remaining).and_then(|v| v.trim().parse::<u64>().ok()) else {
                continue;
            };
            let bucket = if kind == "requests" {
                st.rpm.as_mut()
            } else {
                st.tpm.as_mut()
            };
            if let Some(b) = bucket {
                b.refill(now_ms);
                b.level = b.level.min(left as f64);
            }
            if left == 0 {
                let until = h.get(reset).and_then(|v| {
                    if reset_is_time {
                        parse_rfc3339_ms(v)
                    } else {
                        parse_go_duration_ms(v).map(|d| now_ms + d)
                    }
                });
                if let Some(until) = until {
                    block(until, format!("{remaining}: 0"), &mut st);
                }
            }
        }
    }

    /// In-flight calls and the provider block, for the usage report.
    pub fn snapshot(&self, provider: &str, now_ms: u64) -> (u64, Option<u64>) {
        let map = self.providers.lock().unwrap_or_else(|p| p.into_inner());
        let Some(lim) = map.get(provider) else {
            return (0, None);
        };
        let in_flight = lim.max_concurrent as u64 - lim.slots.available_permits() as u64;
        let st = lim.state.lock().unwrap_or_else(|p| p.into_inner());
        (
            in_flight,
            (st.blocked_until_ms > now_ms).then_some(st.blocked_until_ms),
        )
    }
}

/// Parses OpenAI's reset durations: `1s`, `6m0s`, `20ms`, `1h2m3.5s`.
pub fn parse_go_duration_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    let mut any = false;
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                1.0
            }
            ('h', _) => 3_600_000.0,
            ('m', _) => 60_000.0,
            ('s', _) => 1000.0,
            _ => return None,
        };
        total += num.parse::<f64>().ok()? * unit;
        num.clear();
        any = true;
    }
    if !num.is_empty() {
        // A bare number is seconds.
        total += num.parse::<f64>().ok()? * 1000.0;
        any = true;
    }
    any.then_some(total.ceil() as u64)
}

/// Parses an RFC 3339 UTC time (`2024-06-10T12:00:30Z`, fractions and offsets allowed) to ms.
pub fn parse_rfc3339_ms(s: &str) -> Option<u64> {
    let s = s.trim();
    let (date, rest) = s.split_once(['T', 't', ' '])?;
    let mut d = date.split('-');
    let (y, m, dd): (i64, i64, i64) = (
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
        d.next()?.parse().ok()?,
    );
    let tz_at = rest.find(['Z', 'z', '+', '-']).unwrap_or(rest.len());
    let (time, tz) = rest.split_at(tz_at);
    let mut t = time.split(':');
    let (hh, mm): (i64, i64) = (t.next()?.parse().ok()?, t.next()?.parse().ok()?);
    let sec: f64 = t.next()?.parse().ok()?;
    let offset_min = match tz.chars().next() {
        None | Some('Z' | 'z') => 0,
        Some(sign) => {
            let (oh, om) = tz[1..].split_once(':')?;
            let o = oh.parse::<i64>().ok()? * 60 + om.parse::<i64>().ok()?;
            if sign == '-' {
                -o
            } else {
                o
            }
        }
    };
    // Days from civil (Howard Hinnant).
    let y2 = if m <= 2 { y - 1 } else { y };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + dd - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 - offset_min * 60;
    let ms = secs as f64 * 1000.0 + sec * 1000.0;
    (ms >= 0.0).then_some(ms as u64)
}

#[cfg(test)]
mod tests;
