//! The Prometheus endpoints, scraped during a real run: every metric the docs list is there,
//! counters only grow, histogram buckets are consistent, the figures agree with `vgas status`,
//! and nothing secret is in them; from elsewhere than loopback, nobody reads metrics or the
//! dashboard without the token.

use std::collections::BTreeMap;
use std::time::Duration;

use vgas_shared::config::Role;
use vgas_shared::farm::{BuildStats, BuildUpdate, Origin};
use vgas_shared::wire::SwarmPulse;
use vgas_shared::{TaskId, WorkerId};
use vgas_tests::gateway::{
    complete, llm_toml, req, start_master_with, vault_store, OPENAI_KEY, PASS,
};
use vgas_tests::netns::Lan;
use vgas_tests::provider::{openai_stream, FakeProvider};
use vgas_tests::tasks::{run_task, sh};
use vgas_tests::{free_port, wait_for, Placement, Swarm, WAIT};

/// One scrape: `name{labels}` to value, and the raw text.
struct Scrape {
    samples: BTreeMap<String, f64>,
    text: String,
}

impl Scrape {
    fn get(&self, key: &str) -> f64 {
        *self
            .samples
            .get(key)
            .unwrap_or_else(|| panic!("no sample {key} in:\n{}", self.text))
    }

    /// Sums the samples of `name` whose labels contain every one of `having`.
    fn sum(&self, name: &str, having: &[&str]) -> f64 {
        self.samples
            .iter()
            .filter(|(k, _)| {
                let (n, labels) = k.split_once('{').unwrap_or((k, ""));
                n == name && having.iter().all(|h| labels.contains(h))
            })
            .map(|(_, v)| v)
            .sum()
    }
}

async fn scrape(url: &str) -> Scrape {
    let resp = reqwest::get(url).await.unwrap();
    assert_eq!(resp.status(), 200, "{url}");
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    assert!(ct.starts_with("application/openmetrics-text"), "{ct}");
    let text = resp.text().await.unwrap();
    assert!(text.ends_with("# EOF\n"), "{text}");
    let mut samples = BTreeMap::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (key, value) = line.rsplit_once(' ').unwrap();
        samples.insert(key.to_owned(), value.parse::<f64>().unwrap());
    }
    Scrape { samples, text }
}

/// Every histogram's buckets are cumulative, and `+Inf` equals its count.
fn histograms_consistent(s: &Scrape, name: &str) {
    let mut series: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for (k, v) in &s.samples {
        let Some(rest) = k.strip_prefix(&format!("{name}_bucket{{")) else {
            continue;
        };
        // Label values here hold no commas: split the pairs, take `le` out.
        let labels = rest.trim_end_matches('}');
        let le = labels
            .split(',')
            .find_map(|p| p.strip_prefix("le=\""))
            .unwrap_or_else(|| panic!("bucket without le: {k}"))
            .trim_end_matches('"');
        let others: Vec<&str> = labels
            .split(',')
            .filter(|p| !p.starts_with("le="))
            .collect();
        let others = others.join(",");
        let le = if le == "+Inf" {
            f64::INFINITY
        } else {
            le.parse().unwrap()
        };
        series.entry(others).or_default().push((le, *v));
    }
    assert!(!series.is_empty(), "no buckets of {name}:\n{}", s.text);
    for (others, mut buckets) in series {
        buckets.sort_by(|a, b| a.0.partial_cmp(&b.0).unwrap());
        for w in buckets.windows(2) {
            assert!(
                w[0].1 <= w[1].1,
                "{name}{{{others}}} buckets not cumulative: {buckets:?}"
            );
        }
        let inf = buckets.last().unwrap();
        assert!(inf.0.is_infinite(), "{name}: no +Inf bucket");
        let count_key = if others.is_empty() {
            format!("{name}_count")
        } else {
            format!("{name}_count{{{others}}}")
        };
        assert_eq!(
            inf.1,
            s.get(&count_key),
            "{name}: +Inf bucket against count"
        );
    }
}

/// A wasm module that does nothing, as a file for `vgas submit --wasm`.
fn noop_wasm(dir: &std::path::Path) -> std::path::PathBuf {
    let bytes = wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
        .unwrap();
    let p = dir.join("noop.wasm");
    std::fs::write(&p, bytes).unwrap();
    p
}

fn pulse(swarm: &Swarm) -> SwarmPulse {
    let out = swarm.cli(&["status", "--json"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn metrics_are_complete_monotonic_and_agree_with_status() {
    let fake = FakeProvider::start().await;
    let mut swarm = Swarm::start().await.unwrap();
    std::fs::write(
        swarm.state_dir().join("llm.toml"),
        llm_toml(&fake, "daily_budget_usd = 5.0"),
    )
    .unwrap();
    vault_store(&swarm, "openai", OPENAI_KEY);
    let (mport, wport) = (free_port(), free_port());
    let maddr = format!("127.0.0.1:{mport}");
    let _master = start_master_with(&mut swarm, &["--metrics", &maddr], &[]).await;
    let waddr = format!("127.0.0.1:{wport}");
    let _w1 = swarm.worker("w1", 2, &["--metrics", &waddr]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let (murl, wurl) = (
        format!("http://{maddr}/metrics"),
        format!("http://{waddr}/metrics"),
    );

    let before = scrape(&murl).await;
    for name in [
        "vgas_tasks_accepted_total",
        "vgas_tasks_retried_total",
        "vgas_queue_depth",
        "vgas_queue_capacity",
        "vgas_tasks_in_flight",
        "vgas_gpus",
        "vgas_gpu_leases",
        "vgas_build_cache_hit_ratio",
    ] {
        before.get(name);
    }

    // Work of every sort: tasks that succeed and fail, wasm twice (compiled, then from
    // memory), one LLM call, and a build's updates as `vgas build` publishes them.
    let subjects = swarm.subjects.clone();
    for script in ["true", "exit 3"] {
        run_task(&client, &subjects, sh(script), Duration::ZERO)
            .await
            .unwrap();
    }
    let wasm = noop_wasm(swarm.dir.path());
    for _ in 0..2 {
        let out = swarm
            .cli(&["submit", "--wasm", wasm.to_str().unwrap()])
            .unwrap();
        assert!(out.status.success(), "{out:?}");
    }
    fake.push(openai_stream(&["Hello", " there"], 12, 5, 0));
    let worker_conn = swarm.connect(Role::Worker).await.unwrap();
    let (_, end) = complete(&worker_conn, &subjects, &req("openai", "gpt-4o-mini")).await;
    end.unwrap();
    let w = WorkerId::parse("w1").unwrap();
    let stats = BuildStats {
        segments: 3,
        remote: 1,
        cache_hits: 1,
        cache_misses: 2,
        local: 1,
        not_distributed: 2,
        ..BuildStats::default()
    };
    let updates = [
        BuildUpdate::Started {
            build_id: "m1".into(),
            segments: 3,
        },
        BuildUpdate::Queued {
            segment: "a.c".into(),
            task_id: TaskId::random(),
        },
        BuildUpdate::Compiling {
            segment: "a.c".into(),
            worker: w.clone(),
            attempt: 1,
        },
        BuildUpdate::Done {
            segment: "a.c".into(),
            origin: Origin::Worker { worker: w },
            compile_ms: 30,
            overhead_ms: 2,
            diagnostics: String::new(),
        },
        BuildUpdate::Done {
            segment: "b.c".into(),
            origin: Origin::Cache,
            compile_ms: 0,
            overhead_ms: 0,
            diagnostics: String::new(),
        },
        BuildUpdate::Done {
            segment: "c.c".into(),
            origin: Origin::Local {
                reason: "no worker has this compiler".into(),
            },
            compile_ms: 20,
            overhead_ms: 0,
            diagnostics: String::new(),
        },
        BuildUpdate::Finished {
            exit_code: 0,
            stats,
            binary: None,
            report: Default::default(),
        },
    ];
    for u in &updates {
        let body = serde_json::to_vec(u).unwrap();
        client
            .publish(subjects.build_updates("m1"), body.into())
            .await
            .unwrap();
    }
    client.flush().await.unwrap();

    let after = wait_for("the build and the tasks in the metrics", WAIT, || async {
        let s = scrape(&murl).await;
        let ok = s.samples.get("vgas_builds_total{result=\"ok\"}") == Some(&1.0)
            && s.sum("vgas_tasks_finished_total", &[]) >= 4.0;
        ok.then_some(s)
    })
    .await
    .unwrap();
    let status = pulse(&swarm);

    // Counters only grow.
    for (k, v) in &before.samples {
        if k.contains("_total") || k.contains("_count") || k.contains("_bucket") {
            let now = after.samples.get(k).copied().unwrap_or(0.0);
            assert!(now >= *v, "{k} went down: {v} -> {now}");
        }
    }
    // Tasks, as `vgas status` counts them.
    assert_eq!(
        after.get("vgas_tasks_accepted_total"),
        status.tasks_accepted as f64
    );
    assert_eq!(
        after.sum("vgas_tasks_finished_total", &[]),
        status.tasks_finished as f64
    );
    assert_eq!(
        after.get("vgas_tasks_finished_total{outcome=\"succeeded\"}"),
        3.0
    );
    assert_eq!(
        after.get("vgas_tasks_finished_total{outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(after.get("vgas_queue_depth"), status.queue_depth as f64);
    assert_eq!(
        after.get("vgas_queue_capacity"),
        status.queue_capacity as f64
    );
    assert_eq!(
        after.get("vgas_workers{state=\"live\"}"),
        status.live.len() as f64
    );
    assert_eq!(
        after.get("vgas_workers{state=\"abnormal\"}"),
        status.abnormal.len() as f64
    );
    let slots: usize = status.live.iter().map(|n| n.slots).sum();
    assert_eq!(after.sum("vgas_slots", &[]), slots as f64);
    histograms_consistent(&after, "vgas_task_dispatch_seconds");
    histograms_consistent(&after, "vgas_task_end_to_end_seconds");
    assert_eq!(after.get("vgas_task_end_to_end_seconds_count"), 4.0);
    // Each of those ended by one copy of its result, whichever came first usable.
    assert_eq!(after.sum("vgas_results_used_total", &[]), 4.0);
    // None printed anything: the master can act on the copy straight from the worker.
    assert!(
        after.sum("vgas_results_used_total", &["copy=\"direct\""]) >= 1.0,
        "no result was taken straight from its worker:\n{}",
        after.text
    );
    // Build units by origin, the cache's ratio.
    assert_eq!(
        after.get("vgas_build_units_total{origin=\"worker\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        after.get("vgas_build_units_total{origin=\"cache\",result=\"ok\"}"),
        1.0
    );
    assert_eq!(
        after.get("vgas_build_units_total{origin=\"here\",result=\"ok\"}"),
        3.0
    );
    assert_eq!(
        after.get("vgas_build_cache_lookups_total{result=\"hit\"}"),
        1.0
    );
    assert_eq!(
        after.get("vgas_build_cache_lookups_total{result=\"miss\"}"),
        2.0
    );
    assert!((after.get("vgas_build_cache_hit_ratio") - 1.0 / 3.0).abs() < 1e-9);
    // The LLM call: requests, tokens, cost, spend against the budget.
    let pm = "provider=\"openai\",model=\"gpt-4o-mini\"";
    assert_eq!(
        after.get(&format!("vgas_llm_requests_total{{{pm},result=\"ok\"}}")),
        1.0
    );
    assert_eq!(
        after.get(&format!("vgas_llm_tokens_total{{{pm},kind=\"input\"}}")),
        12.0
    );
    assert_eq!(
        after.get(&format!("vgas_llm_tokens_total{{{pm},kind=\"output\"}}")),
        5.0
    );
    let cost = after.get(&format!("vgas_llm_cost_usd_total{{{pm}}}"));
    // The usage book counts whole micro-dollars.
    assert!(
        (cost - (12.0 * 0.15 + 5.0 * 0.60) / 1e6).abs() <= 1e-6,
        "{cost}"
    );
    assert!(cost > 0.0);
    let spent = after.get("vgas_llm_spent_usd{provider=\"openai\",period=\"day\"}");
    assert!((spent - cost).abs() < 1e-9, "{spent} against {cost}");
    let left = after.get("vgas_llm_budget_remaining_usd{provider=\"openai\",period=\"day\"}");
    assert!((left - (5.0 - cost)).abs() < 1e-9, "{left}");
    // Nothing secret.
    for secret in [OPENAI_KEY, PASS] {
        assert!(!after.text.contains(secret), "a secret in the metrics");
    }

    // The worker's own: attempts by kind and outcome, where wasm modules came from.
    let wm = wait_for("the worker's slots gauge", WAIT, || async {
        let s = scrape(&wurl).await;
        s.samples
            .contains_key("vgas_worker_slots{state=\"free\"}")
            .then_some(s)
    })
    .await
    .unwrap();
    assert_eq!(
        wm.get("vgas_worker_tasks_total{kind=\"exec\",outcome=\"succeeded\"}"),
        1.0
    );
    assert_eq!(
        wm.get("vgas_worker_tasks_total{kind=\"exec\",outcome=\"failed\"}"),
        1.0
    );
    assert_eq!(
        wm.get("vgas_worker_tasks_total{kind=\"wasm\",outcome=\"succeeded\"}"),
        2.0
    );
    // The first load compiles, or finds the module compiled on disk by an earlier run.
    let first = wm.sum("vgas_worker_wasm_modules_total", &["from=\"compiled\""])
        + wm.sum("vgas_worker_wasm_modules_total", &["from=\"disk\""]);
    assert_eq!(first, 1.0, "{}", wm.text);
    assert_eq!(
        wm.get("vgas_worker_wasm_modules_total{from=\"memory\"}"),
        1.0
    );
    assert_eq!(wm.sum("vgas_worker_slots", &[]), 2.0);
    histograms_consistent(&wm, "vgas_worker_task_run_seconds");
}

#[tokio::test]
async fn from_elsewhere_nothing_is_served_without_the_token() {
    let Some(lan) = Lan::new(1).unwrap() else {
        return;
    };
    let h0 = lan.host(0).clone();
    let mut swarm = Swarm::start_on(Some(h0.clone())).await.unwrap();
    let token = "dashboard-token-for-the-access-test";
    let (dport, mport) = (free_port(), free_port());
    let (d, m) = (format!("0.0.0.0:{dport}"), format!("0.0.0.0:{mport}"));
    let _master = swarm
        .spawn_at(
            Placement::On(&h0),
            "master",
            "vgas-master",
            &["--dashboard", &d, "--metrics", &m],
            &[("VGAS_DASHBOARD_TOKEN", token)],
        )
        .unwrap();
    let http = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let at = |port: u16, path: &str| format!("http://{}:{port}{path}", h0.addr);
    // This test process is another host of the LAN: not loopback to the master.
    let metrics = at(mport, "/metrics");
    wait_for("the metrics endpoint", WAIT, || async {
        http.get(&metrics).send().await.ok()
    })
    .await
    .unwrap();
    for url in [
        at(dport, "/"),
        at(dport, "/app.js"),
        at(dport, "/api/stream?view=swarm"),
        at(dport, "/api/task/t1/stream"),
        at(dport, "/metrics"),
        at(mport, "/metrics"),
        at(dport, "/?token=wrong-token-0123456789"),
    ] {
        let r = http.get(&url).send().await.unwrap();
        assert_eq!(r.status(), 401, "{url} without the token");
        let r = http
            .get(&url)
            .header("authorization", "Bearer not-the-token-0123456789")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 401, "{url} with a wrong token");
    }
    let bearer = format!("Bearer {token}");
    for url in [at(dport, "/"), at(dport, "/metrics"), at(mport, "/metrics")] {
        let r = http
            .get(&url)
            .header("authorization", &bearer)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{url} with the token");
    }
    // The token in the URL is traded for an HttpOnly cookie, and the cookie lets the page in.
    let r = http
        .get(at(dport, &format!("/?token={token}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 303);
    let cookie = r.headers()["set-cookie"].to_str().unwrap().to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let r = http
        .get(at(dport, "/"))
        .header("cookie", pair)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("default-src 'self'"), "{csp}");
    // From the master's own host, loopback reads metrics without a token, not the dashboard.
    let local = std::process::Command::new("ip")
        .args(["netns", "exec", &h0.ns, "python3", "-c"])
        .arg(format!(
            "import urllib.request,urllib.error,sys\n\
             def code(u):\n  try: return urllib.request.urlopen(u).status\n  except urllib.error.HTTPError as e: return e.code\n\
             print(code('http://127.0.0.1:{mport}/metrics'), code('http://127.0.0.1:{dport}/'))"
        ))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&local.stdout).trim(),
        "200 401",
        "{local:?}"
    );
}

#[tokio::test]
async fn a_master_whose_metrics_address_is_taken_stops_with_the_reason() {
    // Bound at start, not in each term as leader: a master that cannot have its address
    // says so and exits, rather than running on without status or metrics.
    let mut swarm = Swarm::start().await.unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    for flag in ["--metrics", "--dashboard"] {
        let mut master = swarm.master(&[flag, &addr]).unwrap();
        let status = master.wait_exit(WAIT).await.unwrap();
        assert!(!status.success());
        let log = master.log_text();
        assert!(
            log.contains(&format!("endpoint to {addr}")) && log.contains("in use"),
            "{log}"
        );
    }
}
