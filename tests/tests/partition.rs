//! `sync_distributed_state`: two masters on the two sides of a partition (two clustered
//! nats-servers, each on a host of its own with its master beside it, and the network between
//! the two hosts cut: see `vgas_tests::netns`) both keep serving LLM calls; each spends at
//! most its partition allowance while it cannot hear the other, so a budget is exceeded by
//! one allowance at most; after the heal both hold the exact total. The node view too: a
//! worker that joins one side during the partition is in that side's view only, and in both
//! after the heal. Skipped, loudly, where namespaces cannot be made.

use std::time::Instant;

use vgas_shared::config::Role;
use vgas_shared::crdt::view::ViewReport;
use vgas_shared::error::WireError;
use vgas_shared::llm::{CompletionEvent, ProviderQuota, UsageReport};
use vgas_tests::cluster::Cluster;
use vgas_tests::gateway::{llm_toml, req, try_complete_text, vault_store, OPENAI_KEY, PASS};
use vgas_tests::netns::Lan;
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
    logs: &dyn Fn() -> String,
) -> (usize, String) {
    for n in 0..50 {
        let (_, end) = call(client, s, logs).await;
        if let Err(e) = end {
            return (n, e.message);
        }
    }
    panic!("no refusal after 50 calls");
}

/// One completion as a worker sends it; a gateway that falls silent fails the test with
/// `logs()` (the masters' and servers' logs: which side dropped it).
async fn call(
    client: &async_nats::Client,
    s: &vgas_shared::Subjects,
    logs: &dyn Fn() -> String,
) -> (String, Result<CompletionEvent, WireError>) {
    match try_complete_text(client, s, &req("openai", "gpt-4o-mini")).await {
        Ok(answer) => answer,
        Err(_) => panic!("the gateway fell silent\n{}", logs()),
    }
}

/// Carries connections from `listen` (the test's own end of the LAN) to `to` on loopback,
/// where the fake provider listens: the masters run on the LAN's hosts, which reach the
/// provider as they would reach one on the internet, through the test's end. Stops with the
/// test's runtime.
async fn relay(listen: std::net::Ipv4Addr, to: u16) -> u16 {
    let listener = tokio::net::TcpListener::bind((listen, 0)).await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move {
        while let Ok((mut inbound, _)) = listener.accept().await {
            tokio::spawn(async move {
                let _ = inbound.set_nodelay(true);
                if let Ok(mut out) = tokio::net::TcpStream::connect(("127.0.0.1", to)).await {
                    let _ = out.set_nodelay(true);
                    let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                }
            });
        }
    });
    port
}

#[tokio::test]
async fn two_masters_cut_apart_keep_spend_bounded_and_converge_after_the_heal() {
    // Two hosts, a server and a master on each.
    let Some(lan) = Lan::new(2).unwrap() else {
        return;
    };
    let fake = FakeProvider::start().await;
    for _ in 0..40 {
        fake.push(openai_stream(&["hi"], 1, 64, 0));
    }
    let mut cluster = Cluster::start_on(lan.hosts(), false).await.unwrap();
    let swarm = &mut cluster.swarm;
    let port = relay(lan.root_addr(), fake.port).await;
    let conf = llm_toml(
        &fake,
        &format!("daily_budget_usd = {BUDGET_USD}\npartition_allowance_usd = {ALLOWANCE_USD}"),
    )
    .replace(
        &fake.base_url(),
        &format!("http://{}:{port}/v1", lan.root_addr()),
    );
    std::fs::write(swarm.state_dir().join("llm.toml"), conf).unwrap();
    vault_store(swarm, "openai", OPENAI_KEY);
    // Each master runs on its server's host and talks to that server only; each side's
    // caller, in the test's own namespace, talks to that side's server over the LAN (the cut
    // is between the two hosts alone, so the test reaches both sides throughout).
    let urls: Vec<String> = cluster.nodes.iter().map(|n| n.url()).collect();
    let swarm = &mut cluster.swarm;
    let mut masters = Vec::new();
    let mut callers = Vec::new();
    for (host, url) in lan.hosts().iter().zip(&urls) {
        let env = [
            ("VGAS_NATS_URL", url.as_str()),
            ("VGAS_VAULT_PASSPHRASE", PASS),
            ("VGAS_NO_MDNS", "true"),
        ];
        masters.push(
            swarm
                .spawn_at(Placement::On(host), "master", "vgas-master", &[], &env)
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
    let nodes = &cluster.nodes;
    let logs = || -> String {
        let logs: Vec<String> = masters
            .iter()
            .map(|m| m.log_text())
            .chain(nodes.iter().map(|n| n.server.log_text()))
            .collect();
        logs.join("\n----\n")
    };
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
        let (_, end) = call(&callers[0].0, &s, &logs).await;
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

    // Each master has heard the other before the cut: one that never had cannot see it fall
    // silent (the six calls may all have been served by one master, which then holds them
    // without ever having heard the other).
    let heard_by = std::sync::Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    let both = wait_for("each master to hear the other", WAIT, || {
        let asks: Vec<_> = callers.iter().map(|(_, c)| c.clone()).collect();
        let (subject, heard_by) = (s.llm_usage(), heard_by.clone());
        async move {
            for c in asks {
                let r: UsageReport = request(&c, subject.clone(), &serde_json::json!({}))
                    .await
                    .ok()?;
                if r.masters_heard >= 1 {
                    heard_by.lock().unwrap().insert(r.answered_by);
                }
            }
            (heard_by.lock().unwrap().len() == 2).then_some(())
        }
    })
    .await;
    if let Err(e) = both {
        panic!("{e:#}\n{}", logs());
    }
    eprintln!("cutting the network between the two hosts");
    let routes_closed: Vec<usize> = cluster.nodes.iter().map(|n| n.routes_closed()).collect();
    lan.cut_between(0, 1).unwrap();
    let cut = Instant::now();
    // Each server drops its route once its pings go unanswered; until then it would send
    // some calls to the other side's master, where they would be lost.
    for (node, before) in cluster.nodes.iter().zip(routes_closed) {
        wait_for("each server to drop its route", WAIT, || async {
            (node.routes_closed() > before).then_some(())
        })
        .await
        .unwrap();
    }
    eprintln!(
        "both servers dropped their route {:?} after the cut",
        cut.elapsed()
    );
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
    // A worker joins on the second side: that side's view has it, the first side's not.
    let worker_env = [
        ("VGAS_NATS_URL", urls[1].as_str()),
        ("VGAS_NO_MDNS", "true"),
    ];
    let _late = swarm
        .spawn_at(
            Placement::On(lan.host(1)),
            "w-late",
            "vgas-worker",
            &["--id", "w-late", "--slots", "1"],
            &worker_env,
        )
        .unwrap();
    let has_late = |r: &ViewReport| r.nodes.iter().any(|n| n.id.as_str() == "w-late");
    let second = wait_for(
        "the second side's view to hold the new worker",
        WAIT,
        || async {
            let r: ViewReport = request(&callers[1].1, s.swarm_view(), &()).await.ok()?;
            has_late(&r).then_some(r.answered_by)
        },
    )
    .await
    .unwrap();
    // Each side's servers have just lost half their cluster: a request may go unanswered
    // while they settle, so it is asked again (what it answers is what is checked).
    let first: ViewReport = wait_for("the first side's view", WAIT, || async {
        request(&callers[0].1, s.swarm_view(), &()).await.ok()
    })
    .await
    .unwrap();
    assert_ne!(first.answered_by, second, "each side answers for itself");
    assert!(
        !has_late(&first),
        "the first side cannot have heard of it: {first:?}"
    );
    let first = first.answered_by;
    // Both sides keep serving, each up to its allowance.
    let mut spent_apart = 0.0;
    for (w, c) in &callers {
        let (calls, refusal) = spend_until_refused(w, &s, &logs).await;
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

    lan.heal_between(0, 1).unwrap();
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
    // The view converged too: the first side's master holds the worker that joined apart.
    let joined = wait_for(
        "the first side's view to hold the worker after the heal",
        WAIT,
        || async {
            let r: ViewReport = request(&callers[0].1, s.swarm_view(), &()).await.ok()?;
            (r.answered_by == first && has_late(&r)).then_some(())
        },
    )
    .await;
    joined.unwrap();
    // With the budget spent, both masters refuse now: for the budget once they have heard
    // (the allowance before); no call goes through.
    for (w, _) in &callers {
        let refused = wait_for("a refusal for the daily budget", WAIT, || async {
            let (_, end) = call(w, &s, &logs).await;
            let e = end.expect_err("no call goes through past the budget");
            e.message.starts_with("daily_budget:").then_some(())
        })
        .await;
        refused.unwrap();
    }
}
