//! The LLM gateway end to end: a real nats-server and master, a vault made by the real `vgas`
//! CLI, and a local fake provider speaking OpenAI's and Anthropic's streaming formats. Also:
//! 429 handling, quotas refusing before any HTTP request, no vault, and no key in any NATS
//! message or log of the run.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use vgas_shared::codec::encode;
use vgas_shared::config::Role;
use vgas_shared::llm::{CompletionEvent, UsageReport};
use vgas_shared::{Encoding, ErrorCode};
use vgas_tests::gateway::{complete, req, setup, start_master, ANTHROPIC_KEY, OPENAI_KEY};
use vgas_tests::provider::{anthropic_stream, openai_429, openai_stream, FakeProvider};
use vgas_tests::Swarm;

/// Records every message on every subject, as the master user may see them all.
async fn capture_all(swarm: &Swarm) -> Arc<Mutex<Vec<u8>>> {
    let all = Arc::new(Mutex::new(Vec::new()));
    let spy = swarm.connect(Role::Master).await.unwrap();
    let mut sub = spy.subscribe(">").await.unwrap();
    let sink = all.clone();
    tokio::spawn(async move {
        let _keep = spy;
        while let Some(m) = sub.next().await {
            let mut a = sink.lock().unwrap();
            a.extend_from_slice(m.subject.as_bytes());
            a.extend_from_slice(&m.payload);
        }
    });
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[tokio::test]
async fn openai_and_anthropic_stream_through_the_gateway_and_usage_survives_a_restart() {
    let fake = FakeProvider::start().await;
    let (mut swarm, mut master, worker) = setup(
        &fake,
        "",
        &[("openai", OPENAI_KEY), ("anthropic", ANTHROPIC_KEY)],
    )
    .await;
    let traffic = capture_all(&swarm).await;
    let s = swarm.subjects.clone();

    fake.push(openai_stream(
        &["Hello", ", ", "world"],
        1_000_000,
        1_000_000,
        400_000,
    ));
    let (text, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    assert_eq!(text, "Hello, world");
    let Ok(CompletionEvent::Done {
        usage,
        cost_usd,
        stop_reason,
        attempts,
        ..
    }) = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.cached_tokens),
        (1_000_000, 1_000_000, 400_000)
    );
    // 600k fresh input at 0.15, 400k cached at 0.075, 1M output at 0.60 (USD per million).
    assert!((cost_usd - (0.09 + 0.03 + 0.60)).abs() < 1e-9, "{cost_usd}");
    assert_eq!((stop_reason.as_deref(), attempts), (Some("stop"), 1));
    let r = &fake.requests()[0];
    assert_eq!(
        (r.method.as_str(), r.path.as_str()),
        ("POST", "/v1/chat/completions")
    );
    assert_eq!(
        r.header("authorization"),
        Some(format!("Bearer {OPENAI_KEY}").as_str())
    );
    let body = r.json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["stream_options"]["include_usage"], true);
    assert_eq!(body["messages"][0]["role"], "system");
    assert_eq!(body["max_completion_tokens"], 64);

    fake.push(anthropic_stream(&["Hi", " there"], 25, 15, 10));
    let (text, done) = complete(&worker, &s, &req("anthropic", "claude-sonnet-4-0")).await;
    assert_eq!(text, "Hi there");
    let Ok(CompletionEvent::Done {
        usage, stop_reason, ..
    }) = done
    else {
        panic!("{done:?}")
    };
    assert_eq!(
        (usage.input_tokens, usage.output_tokens, usage.cached_tokens),
        (35, 15, 10)
    );
    assert_eq!(stop_reason.as_deref(), Some("end_turn"));
    let r = &fake.requests()[1];
    assert_eq!(r.path, "/v1/messages");
    assert_eq!(r.header("x-api-key"), Some(ANTHROPIC_KEY));
    assert_eq!(r.header("anthropic-version"), Some("2023-06-01"));
    assert_eq!(r.json()["system"], "Be brief.");
    assert_eq!(r.json()["max_tokens"], 64);

    // An OpenAI-compatible server without a key: no Authorization header at all.
    fake.push(openai_stream(&["ok"], 3, 1, 0));
    let (text, done) = complete(&worker, &s, &req("local", "llama3:8b")).await;
    assert_eq!(text, "ok");
    assert!(done.is_ok());
    assert_eq!(fake.requests()[2].header("authorization"), None);
    assert_eq!(fake.requests()[2].json()["max_tokens"], 64);

    // `vgas usage --json` sees all three, and still does after a master restart (JetStream KV).
    let usage_json = |swarm: &Swarm| {
        let out = swarm.cli(&["usage", "--json"]).unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<UsageReport>(&out.stdout).unwrap()
    };
    let before = usage_json(&swarm);
    assert_eq!(before.rows.len(), 3, "{before:?}");
    let openai = before.rows.iter().find(|r| r.provider == "openai").unwrap();
    assert_eq!((openai.requests, openai.input_tokens), (1, 1_000_000));
    assert!(
        before
            .rows
            .iter()
            .find(|r| r.provider == "local")
            .unwrap()
            .unpriced
    );
    let table = String::from_utf8(swarm.cli(&["usage"]).unwrap().stdout).unwrap();
    assert!(
        table.contains("gpt-4o-mini") && table.contains("0.7200"),
        "{table}"
    );
    master.kill();
    let master2 = start_master(&mut swarm).await;
    let after = usage_json(&swarm);
    assert_eq!(after.rows, before.rows);

    // No key in any NATS message of the run, nor in the master's logs or the audit log.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let traffic = traffic.lock().unwrap().clone();
    assert!(contains(&traffic, "Hello"), "the capture saw the stream");
    let audit = std::fs::read_to_string(swarm.state_dir().join("audit.log")).unwrap();
    assert_eq!(
        audit.lines().filter(|l| l.contains("llm.complete")).count(),
        3
    );
    for key in [OPENAI_KEY, ANTHROPIC_KEY] {
        assert!(!contains(&traffic, key), "a key went over NATS");
        assert!(!master.log_text().contains(key) && !master2.log_text().contains(key));
        assert!(!audit.contains(key));
    }
}

#[tokio::test]
async fn a_429_is_retried_after_the_time_it_names_and_insufficient_quota_is_not() {
    let fake = FakeProvider::start().await;
    let (swarm, _master, worker) = setup(&fake, "max_retries = 2", &[("openai", OPENAI_KEY)]).await;
    let s = swarm.subjects.clone();

    fake.push(openai_429(false, 1));
    fake.push(openai_stream(&["late"], 5, 1, 0));
    let t = Instant::now();
    let (text, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    assert_eq!(text, "late");
    assert!(
        matches!(done, Ok(CompletionEvent::Done { attempts: 2, .. })),
        "{done:?}"
    );
    assert!(
        t.elapsed() >= Duration::from_secs(1),
        "retried before retry-after"
    );
    assert_eq!(fake.requests().len(), 2);

    fake.push(openai_429(true, 0));
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    let e = done.unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(e.message.contains("insufficient_quota"), "{}", e.message);
    assert_eq!(
        fake.requests().len(),
        3,
        "insufficient_quota is not retried"
    );
}

#[tokio::test]
async fn budgets_and_rate_limits_refuse_before_any_http_request() {
    let fake = FakeProvider::start().await;
    let (swarm, _master, worker) = setup(
        &fake,
        "daily_budget_usd = 0.0001\nrequests_per_minute = 1",
        &[("openai", OPENAI_KEY)],
    )
    .await;
    let s = swarm.subjects.clone();

    // 64 output tokens at $0.60/M is $0.0000384 worst case: within the budget.
    fake.push(openai_stream(&["one"], 100, 10, 0));
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    assert!(done.is_ok(), "{done:?}");
    // A second call within the minute: the request bucket refuses, nothing is sent.
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    let e = done.unwrap_err();
    assert_eq!(e.code, ErrorCode::QuotaExceeded);
    assert!(
        e.message.starts_with("requests_per_minute:"),
        "{}",
        e.message
    );
    // A call whose worst case passes the daily budget is refused before the rate check.
    let mut big = req("openai", "gpt-4o-mini");
    big.max_tokens = Some(1000);
    let (_, done) = complete(&worker, &s, &big).await;
    let e = done.unwrap_err();
    assert!(e.message.starts_with("daily_budget:"), "{}", e.message);
    // An unpriced model with a budget set is refused too.
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-unknown")).await;
    assert!(done.unwrap_err().message.starts_with("unpriced_model:"));
    assert_eq!(
        fake.requests().len(),
        1,
        "refused calls reached the provider"
    );
}

#[tokio::test]
async fn without_a_vault_the_master_starts_and_calls_say_how_to_store_a_key() {
    let fake = FakeProvider::start().await;
    let (swarm, _master, worker) = setup(&fake, "", &[]).await;
    let s = swarm.subjects.clone();
    let (_, done) = complete(&worker, &s, &req("openai", "gpt-4o-mini")).await;
    let e = done.unwrap_err();
    assert_eq!(e.code, ErrorCode::Unavailable);
    assert!(
        e.message.contains("vgas vault store openai"),
        "{}",
        e.message
    );
    let (_, done) = complete(&worker, &s, &req("nowhere", "m")).await;
    assert!(done.unwrap_err().message.contains("not configured"));
    let mut bad = req("openai", "m");
    bad.messages.clear();
    let (_, done) = complete(&worker, &s, &bad).await;
    assert_eq!(done.unwrap_err().code, ErrorCode::BadRequest);
    // A client may not call the gateway; a worker may not read usage.
    let client = swarm.connect(Role::Client).await.unwrap();
    let (_, refused) = tokio::time::timeout(Duration::from_secs(3), async {
        let inbox = client.new_inbox();
        let mut sub = client.subscribe(inbox.clone()).await.unwrap();
        let b = encode(Encoding::MsgPack, &req("openai", "m")).unwrap();
        let _ = client
            .publish_with_reply(s.llm_complete(), inbox, b.into())
            .await;
        client.flush().await.ok();
        (
            (),
            tokio::time::timeout(Duration::from_millis(1500), sub.next())
                .await
                .is_err(),
        )
    })
    .await
    .unwrap();
    assert!(refused, "the client role reached the gateway");
    assert_eq!(fake.requests().len(), 0);
}
