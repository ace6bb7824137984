//! `vgas usage`: the master's LLM usage report (`<prefix>.llm.usage`) by day, provider and
//! model, with budgets and rates.

use anyhow::Result;
use vgas_shared::llm::UsageReport;

use crate::api::Swarm;

/// Prints the master's usage report; the exit code.
pub async fn run(swarm: &Swarm, json: bool) -> Result<i32> {
    let report: UsageReport = swarm
        .request(swarm.subjects.llm_usage(), &serde_json::json!({}))
        .await?;
    if json {
        super::print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?))?;
    } else {
        super::print_stdout(&render_usage(&report))?;
    }
    Ok(0)
}

/// The `vgas usage` tables.
pub fn render_usage(r: &UsageReport) -> String {
    let mut s = format!(
        "{:<10} {:<12} {:<28} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10}\n",
        "DAY", "PROVIDER", "MODEL", "REQUESTS", "ERRORS", "INPUT", "CACHED", "OUTPUT", "COST_USD"
    );
    for row in &r.rows {
        s.push_str(&format!(
            "{:<10} {:<12} {:<28} {:>8} {:>6} {:>10} {:>10} {:>10} {:>10}\n",
            row.day,
            row.provider,
            row.model,
            row.requests,
            row.errors,
            row.input_tokens,
            row.cached_tokens,
            row.output_tokens,
            if row.unpriced {
                "unpriced".to_owned()
            } else {
                format!("{:.4}", row.cost_usd)
            }
        ));
    }
    for p in &r.providers {
        let budget = |b: Option<f64>| b.map_or("none".to_owned(), |b| format!("{b:.2}"));
        s.push_str(&format!(
            "{}: today ${:.4} (budget {}), this month ${:.4} (budget {}), {} in flight{}\n",
            p.provider,
            p.spent_today_usd,
            budget(p.daily_budget_usd),
            p.spent_month_usd,
            budget(p.monthly_budget_usd),
            p.in_flight,
            if p.blocked_until_ms.is_some() {
                ", rate limited by the provider"
            } else {
                ""
            }
        ));
        if let Some(x) = &p.partition {
            s.push_str(&format!(
                "  partitioned: masters {} silent for {} s; this master spent ${:.4} since (allowance {})\n",
                x.silent_masters.join(", "),
                x.for_ms / 1000,
                x.spent_usd,
                x.allowance_usd
                    .map_or("none: no budget".to_owned(), |a| format!("${a:.2}"))
            ));
        }
    }
    for rate in &r.rates {
        s.push_str(&format!(
            "{}/{}: {:.3} requests/s, {:.1} tokens/s over the last minute\n",
            rate.provider, rate.model, rate.requests_per_s, rate.tokens_per_s
        ));
    }
    s
}
