//! Quota checks, one line per case where possible.

use super::*;

const T0: u64 = 1_718_000_000_000;

fn est(tokens: u64, cost: Option<u64>, today: u64, month: u64) -> CallEstimate {
    CallEstimate {
        tokens,
        cost_micro_usd: cost,
        spent_today_micro_usd: today,
        spent_month_micro_usd: month,
        partition: None,
    }
}

fn refused(r: Result<QuotaPermit, QuotaRefusal>) -> QuotaLimit {
    r.expect_err("expected a refusal").limit
}

#[test]
fn budgets_refuse_before_the_call_and_name_the_limit() {
    let l = Limiter::default();
    let limits = Limits {
        daily_budget_usd: Some(1.0),
        monthly_budget_usd: Some(10.0),
        ..Default::default()
    };
    let check = |e| l.check("openai", &limits, e, T0);
    assert!(check(est(10, Some(100), 0, 0)).is_ok());
    assert_eq!(
        refused(check(est(10, Some(100), 999_950, 0))),
        QuotaLimit::DailyBudget
    );
    assert_eq!(
        refused(check(est(10, Some(100), 0, 9_999_950))),
        QuotaLimit::MonthlyBudget
    );
    assert_eq!(refused(check(est(10, None, 0, 0))), QuotaLimit::Unpriced);
    let msg = check(est(10, Some(100), 2_000_000, 0))
        .unwrap_err()
        .to_string();
    assert!(
        msg.starts_with("daily_budget: openai has spent $2.0000 of its $1.0000 budget"),
        "{msg}"
    );
    // No budget: an unpriced model is fine.
    assert!(l
        .check("free", &Limits::default(), est(1, None, 0, 0), T0)
        .is_ok());
}

#[test]
fn a_partition_limits_spend_to_the_allowance_only_where_a_budget_is_set() {
    let l = Limiter::default();
    let limits = Limits {
        daily_budget_usd: Some(1.0),
        partition_allowance_usd: Some(0.001),
        ..Default::default()
    };
    let cut = |own_since| CallEstimate {
        partition: Some(crate::keys::usage::Exposure {
            silent: vec!["master-b".into()],
            for_ms: 5_000,
            own_since_micro_usd: own_since,
        }),
        ..est(10, Some(100), 0, 0)
    };
    assert!(l.check("openai", &limits, cut(900), T0).is_ok());
    let e = l.check("openai", &limits, cut(901), T0).unwrap_err();
    assert_eq!(e.limit, QuotaLimit::PartitionAllowance);
    assert!(
        e.message
            .starts_with("masters master-b silent for 5 s (a partition): this master has spent $0.0009 of its $0.0010 allowance"),
        "{}",
        e.message
    );
    // No budget, nothing to overspend: a partition limits nothing.
    let free = Limits::default();
    assert!(l.check("free", &free, cut(1_000_000), T0).is_ok());
}

#[test]
fn request_bucket_refills_over_a_minute_and_refusals_take_nothing() {
    let l = Limiter::default();
    let limits = Limits {
        requests_per_minute: Some(2),
        ..Default::default()
    };
    let mut held = Vec::new();
    for _ in 0..2 {
        held.push(l.check("p", &limits, est(1, None, 0, 0), T0).unwrap());
    }
    let r = l.check("p", &limits, est(1, None, 0, 0), T0).unwrap_err();
    assert_eq!(r.limit, QuotaLimit::RequestsPerMinute);
    assert_eq!(r.retry_after_ms, Some(30_000));
    // Refused checks took nothing: after 30 s exactly one more fits.
    assert!(l
        .check("p", &limits, est(1, None, 0, 0), T0 + 30_000)
        .is_ok());
    assert!(l
        .check("p", &limits, est(1, None, 0, 0), T0 + 30_000)
        .is_err());
}

#[test]
fn token_bucket_reserves_then_settles_actual_use() {
    let l = Limiter::default();
    let limits = Limits {
        tokens_per_minute: Some(1000),
        ..Default::default()
    };
    let p = l.check("p", &limits, est(600, None, 0, 0), T0).unwrap();
    assert_eq!(
        refused(l.check("p", &limits, est(600, None, 0, 0), T0)),
        QuotaLimit::TokensPerMinute
    );
    l.settle(&p, 100); // used far less than reserved: 900 free again
    assert!(l.check("p", &limits, est(800, None, 0, 0), T0).is_ok());
}

#[test]
fn concurrency_cap_is_released_with_the_permit() {
    let l = Limiter::default();
    let limits = Limits {
        max_concurrent: Some(1),
        ..Default::default()
    };
    let p = l.check("p", &limits, est(1, None, 0, 0), T0).unwrap();
    assert_eq!(l.snapshot("p", T0).0, 1);
    assert_eq!(
        refused(l.check("p", &limits, est(1, None, 0, 0), T0)),
        QuotaLimit::Concurrency
    );
    drop(p);
    assert!(l.check("p", &limits, est(1, None, 0, 0), T0).is_ok());
}

#[test]
fn provider_headers_block_until_their_reset() {
    let l = Limiter::default();
    let none = Limits::default();
    l.observe_headers(
        "openai",
        &none,
        [
            ("x-ratelimit-remaining-requests", "0"),
            ("x-ratelimit-reset-requests", "6m0s"),
        ],
        T0,
    );
    let r = l
        .check("openai", &none, est(1, None, 0, 0), T0 + 1000)
        .unwrap_err();
    assert_eq!(
        (r.limit, r.retry_after_ms),
        (QuotaLimit::ProviderRateLimit, Some(359_000))
    );
    assert!(l
        .check("openai", &none, est(1, None, 0, 0), T0 + 360_000)
        .is_ok());

    l.observe_headers(
        "anthropic",
        &none,
        [
            ("anthropic-ratelimit-requests-remaining", "0"),
            ("anthropic-ratelimit-requests-reset", "2024-06-10T06:13:40Z"),
        ],
        T0,
    );
    assert_eq!(
        l.snapshot("anthropic", T0).1,
        Some(parse_rfc3339_ms("2024-06-10T06:13:40Z").unwrap())
    );
    l.observe_headers("x", &none, [("retry-after", "2")], T0);
    assert_eq!(
        l.check("x", &none, est(1, None, 0, 0), T0)
            .unwrap_err()
            .retry_after_ms,
        Some(2000)
    );
    // Remaining > 0 lowers a configured bucket but does not block.
    let rpm = Limits {
        requests_per_minute: Some(100),
        ..Default::default()
    };
    l.observe_headers("y", &rpm, [("x-ratelimit-remaining-requests", "1")], T0);
    assert!(l.check("y", &rpm, est(1, None, 0, 0), T0).is_ok());
    assert_eq!(
        refused(l.check("y", &rpm, est(1, None, 0, 0), T0)),
        QuotaLimit::RequestsPerMinute
    );
}

#[test]
fn parses_reset_formats() {
    for (s, ms) in [
        ("1s", 1000),
        ("6m0s", 360_000),
        ("20ms", 20),
        ("1h2m3.5s", 3_723_500),
        ("0.5", 500),
    ] {
        assert_eq!(parse_go_duration_ms(s), Some(ms), "{s}");
    }
    assert_eq!(parse_go_duration_ms("soon"), None);
    assert_eq!(parse_rfc3339_ms("1970-01-01T00:00:01Z"), Some(1000));
    assert_eq!(
        parse_rfc3339_ms("2024-06-10T06:13:20.5Z"),
        Some(1_718_000_000_500)
    );
    assert_eq!(
        parse_rfc3339_ms("2024-06-10T08:13:20+02:00"),
        Some(1_718_000_000_000)
    );
    assert_eq!(parse_rfc3339_ms("tomorrow"), None);
}
