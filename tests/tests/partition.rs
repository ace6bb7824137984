//! `sync_distributed_state`: two masters on the two sides of a partition (two clustered
//! nats-servers whose only route the test cuts) both keep serving LLM calls; each spends at
//! most its partition allowance while it cannot hear the other, so a budget is exceeded by
//! one allowance at most; after the heal both hold the exact total.

use std::time::Instant;

use vgas_shared::config::Role;
use vgas_shared::llm::{ProviderQuota, UsageReport};
use vgas_tests::cluster::Cluster;
use vgas_tests::gateway::{complete, llm_toml, req, vault_store, OPENAI_KEY, PASS};
use vgas_tests::provider::{openai_stream, FakeProvider};
use vgas_tests::{request, wait_for, Placement, WAIT};

/// One call's cost: 1 prompt token at $0.15/M and 64 completion tokens at $0.60/M (at most
/// the worst case the gateway estimates before the call).
const BUDGET_USD: f64 = 0.0004;
const ALLOWANCE_USD: f64 = 0.00012;

async fn openai(client: &async_nats::Client, s: &vgas_shared::Subjects) -> ProviderQuota {
    let r: UsageReport = request(client, s.llm_usage(), &serde_json::json!({}))
        .await
        .unwrap();
    r.providers
        .into_iter()
        .find(|p| p.provider == "openai")
        .expect("openai in the report")
}

/// Calls through `client` until the gateway refuses; returns how many went through and the
/// refusal.
async fn spend_until_refused(
    client: &async_nats::Client,
    s: &vgas_shared::Subjects,
) -> (usize, String) {
    for n in 0..50 {
        let (_, end) = complete(client, s, &req("openai", "gpt-4o-mini")).await;
        if let Err(e) = end {
            return (n, e.message);
        }
    }
    panic!("no refusal after 50 calls");
}

#[tokio::test]
async fn two_masters_cut_apart_keep_spend_bounded_and_converge_after_the_heal() {
    let fake = FakeProvider::start().await;
    for _ in 0..40 {
        fake.push(openai_stream(&["hi"], 1, 64, 0));
    }
    let (mut cluster, links) = Cluster::pair_over_links().await.unwrap();
    let swarm = &mut cluster.swarm;
    std::fs::write(
        swarm.state_dir().join("llm.toml"),
        llm_toml(
            &fake,
            &format!("daily_budget_usd = {BUDGET_USD}\npartition_allowance_usd = {ALLOWANCE_USD}"),
        ),
    )
    .unwrap();
    vault_store(swarm, "openai", OPENAI_KEY);
    // Each master, and each side's caller, talks to its own server only.
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let swarm = &mut cluster.swarm;
    let mut masters = Vec::new();
    let mut callers = Vec::new();
    for url in &urls {
        let env = [
            ("VGAS_NATS_URL", url.as_str()),
            ("VGAS_VAULT_PASSPHRASE", PASS),
        ];
        masters.push(
            swarm
                .spawn_at(Placement::Local, "master", "vgas-master", &[], &env)
                .unwrap(),
        );
        // A worker calls LLMs; a client reads the usage report.
        let mut side = Vec::new();
        for role in [Role::Worker, Role::Client] {
            let creds = swarm.creds(role);
            side.push(
                vgas_client::connect::auth_options(Some(&creds))
                    .unwrap()
                    .connect(url.as_str())
                    .await
                    .unwrap(),
            );
        }
        callers.push((side[0].clone(), side[1].clone()));
    }
    let s = swarm.subjects.clone();
    for (_, c) in &callers {
        let up = wait_for("a master's usage endpoint", WAIT, || async {
            request::<_, UsageReport>(c, s.llm_usage(), &serde_json::json!({}))
                .await
                .ok()
        })
        .await;
        if let Err(e) = up {
            let logs: Vec<String> = masters.iter().map(|m| m.log_text()).collect();
            panic!("{e:#}\n{}", logs.join("\n----\n"));
        }
    }

    eprintln!("both masters answer");
    // Before the cut: six calls on one side; the other side's master holds the same total.
    for _ in 0..6 {
        let (_, end) = complete(&callers[0].0, &s, &req("openai", "gpt-4o-mini")).await;
        end.unwrap();
    }
    // Both masters hold the six calls (each served some: the calls are spread over them).
    let mut before = 0.0;
    for (_, c) in &callers {
        let heard = wait_for("each master to hold all six calls", WAIT, || async {
            let r: UsageReport = request(c, s.llm_usage(), &serde_json::json!({}))
                .await
                .ok()?;
            let calls: u64 = r.rows.iter().map(|row| row.requests).sum();
            let p = r.providers.into_iter().find(|p| p.provider == "openai")?;
            (calls == 6).then_some(p.spent_today_usd)
        })
        .await;
        match heard {
            Ok(spent) => before = spent,
            Err(e) => {
                let logs: Vec<String> = masters.iter().map(|m| m.log_text()).collect();
                panic!("{e:#}\n{}", logs.join("\n----\n"));
            }
        }
    }

    eprintln!("cutting the links");
    links.iter().for_each(|l| l.cut());
    for (_, c) in &callers {
        let silent = wait_for("each master to see the other fall silent", WAIT, || async {
            let r: UsageReport = request(c, s.llm_usage(), &serde_json::json!({}))
                .await
                .ok()?;
            let p = r.providers.into_iter().find(|p| p.provider == "openai")?;
            p.partition.map(|_| ())
        })
        .await;
        if let Err(e) = silent {
            let logs: Vec<String> = masters
                .iter()
                .map(|m| m.log_text())
                .chain(cluster.nodes.iter().map(|n| n.server.log_text()))
                .collect();
            panic!("{e:#}\n{}", logs.join("\n----\n"));
        }
    }
    eprintln!("both sides see the partition");
    // Both sides keep serving, each up to its allowance.
    let mut spent_apart = 0.0;
    for (w, c) in &callers {
        let (calls, refusal) = spend_until_refused(w, &s).await;
        assert!(calls > 0, "a side of the partition kept serving");
        assert!(
            refusal.starts_with("partition_allowance:"),
            "refused by the allowance: {refusal}"
        );
        let p = openai(c, &s).await.partition.expect("still partitioned");
        assert!(p.spent_usd <= ALLOWANCE_USD + 1e-12, "{p:?}");
        assert_eq!(p.allowance_usd, Some(ALLOWANCE_USD));
        spent_apart += p.spent_usd;
    }

    links.iter().for_each(|l| l.heal());
    let healed = Instant::now();
    let exact = before + spent_apart;
    // Both masters, each answering for itself, hold the exact total and see no partition.
    let agreed = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let converged = wait_for("both masters to hold the exact total", WAIT, || {
        let asks: Vec<_> = callers.iter().map(|(_, c)| c.clone()).collect();
        let (s, agreed) = (s.clone(), agreed.clone());
        async move {
            for c in &asks {
                let Ok(r) =
                    request::<_, UsageReport>(c, s.llm_usage(), &serde_json::json!({})).await
                else {
                    continue;
                };
                let Some(p) = r.providers.iter().find(|p| p.provider == "openai") else {
                    continue;
                };
                if (p.spent_today_usd - exact).abs() < 1e-9 && p.partition.is_none() {
                    agreed.lock().unwrap().insert(r.answered_by.clone());
                }
            }
            (agreed.lock().unwrap().len() == 2).then_some(())
        }
    })
    .await;
    converged.unwrap();
    let took = healed.elapsed();
    let overspend = exact - BUDGET_USD;
    eprintln!(
        "converged {took:?} after the heal; total ${exact:.6} against a ${BUDGET_USD} budget: overspend ${overspend:.6} (bound: one allowance, ${ALLOWANCE_USD})"
    );
    assert!(
        overspend <= ALLOWANCE_USD + 1e-12,
        "overspend {overspend} past the bound"
    );
    // With the budget spent, both masters refuse now: for the budget once they have heard
    // (the allowance before); no call goes through.
    for (w, _) in &callers {
        let refused = wait_for("a refusal for the daily budget", WAIT, || async {
            let (_, end) = complete(w, &s, &req("openai", "gpt-4o-mini")).await;
            let e = end.expect_err("no call goes through past the budget");
            e.message.starts_with("daily_budget:").then_some(())
        })
        .await;
        refused.unwrap();
    }
}
