//! Gateway overhead: a streamed completion through the master's LLM gateway
//! (`vgas.llm.complete`: quota check, key decryption, HTTPS client, usage recording, token
//! stream over NATS) next to the same request sent straight to the same local provider
//! server, in the same run. The provider is the byte-exact fake OpenAI server of the tests.
//!
//! Run: `VGAS_BIN_DIR=target/release cargo bench -p vgas-tests --bench gateway`
//! (part of `scripts/bench.sh`).

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use futures::StreamExt;
use vgas_shared::codec::{decode_as, encode, Reply};
use vgas_shared::config::Role;
use vgas_shared::llm::{ChatMessage, CompletionEvent, CompletionRequest, UsageReport};
use vgas_shared::Encoding;
use vgas_tests::bench::{latencies, pct_ms};
use vgas_tests::provider::{direct_call, openai_stream, FakeProvider};
use vgas_tests::{bin, request, wait_for, Placement, Swarm, WAIT};

/// Calls measured per path, after warm-up.
const SAMPLES: usize = 300;
const WARMUP: usize = 20;
const PASS: &str = "bench vault passphrase";

/// The provider request body the gateway sends, sent directly instead.
fn direct_body() -> String {
    serde_json::json!({
        "model": "gpt-4o-mini", "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "Say hello"}], "max_completion_tokens": 64
    })
    .to_string()
}

async fn gateway(client: &async_nats::Client, subject: &str, r: &CompletionRequest) {
    let inbox = client.new_inbox();
    let mut sub = client.subscribe(inbox.clone()).await.expect("subscribe");
    let bytes = encode(Encoding::MsgPack, r).expect("encode");
    client
        .publish_with_reply(subject.to_owned(), inbox, bytes.into())
        .await
        .expect("publish");
    let mut text = String::new();
    loop {
        let msg = tokio::time::timeout(WAIT, sub.next())
            .await
            .expect("answer")
            .expect("message");
        let ev: Reply<CompletionEvent> =
            decode_as(Encoding::MsgPack, &msg.payload).expect("decode");
        match ev.into_result().expect("completion") {
            CompletionEvent::Delta { text: t } => text.push_str(&t),
            _ => break,
        }
    }
    assert_eq!(text, "Hello, world");
}

async fn measure<F, Fut>(f: F) -> (f64, f64)
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let lat = latencies(WARMUP, SAMPLES, f).await;
    (pct_ms(&lat, 0.5), pct_ms(&lat, 0.99))
}

fn main() {
    vgas_tests::bench::block_on(async {
        let fake = FakeProvider::start().await;
        for _ in 0..2 * (SAMPLES + WARMUP) {
            let mut answer = openai_stream(&["Hello", ", ", "world"], 12, 3, 0);
            answer.pace = Duration::ZERO;
            fake.push(answer);
        }
        let mut swarm = Swarm::start().await.expect("swarm");
        let url = fake.base_url();
        let toml = format!(
            "[providers.openai]\nkind = 'openai'\nbase_url = '{url}'\n\
             [prices.openai.'gpt-4o-mini']\ninput = 0.15\ncached_input = 0.075\noutput = 0.60\n"
        );
        std::fs::write(swarm.state_dir().join("llm.toml"), toml).expect("llm.toml");
        let mut child = Command::new(bin("vgas"))
            .args(["vault", "store", "openai"])
            .env("VGAS_STATE_DIR", swarm.state_dir())
            .env("VGAS_VAULT_PASSPHRASE", PASS)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .spawn()
            .expect("vgas vault store");
        writeln!(
            child.stdin.take().expect("stdin"),
            "sk-bench-0000000000000000"
        )
        .expect("key");
        assert!(child.wait().expect("wait").success());
        let _m = swarm
            .spawn_at(
                Placement::Local,
                "master",
                "vgas-master",
                &[],
                &[("VGAS_VAULT_PASSPHRASE", PASS)],
            )
            .expect("master");
        let client = swarm.connect(Role::Client).await.expect("client");
        let s = swarm.subjects.clone();
        wait_for("the gateway", WAIT, || {
            let (c, s) = (client.clone(), s.clone());
            async move {
                request::<_, UsageReport>(&c, s.llm_usage(), &serde_json::json!({}))
                    .await
                    .ok()
            }
        })
        .await
        .expect("gateway up");
        let worker = swarm.connect(Role::Worker).await.expect("worker");
        let r = CompletionRequest {
            provider: "openai".into(),
            model: "gpt-4o-mini".into(),
            system: None,
            messages: vec![ChatMessage::user("Say hello")],
            max_tokens: Some(64),
            temperature: None,
            tools: Vec::new(),
            max_cost_usd: None,
            caller: Some("bench".into()),
        };
        let body = direct_body();
        let (dp50, dp99) = measure(|| direct_call(fake.port, &body)).await;
        let subject = s.llm_complete();
        let (gp50, gp99) = measure(|| gateway(&worker, &subject, &r)).await;
        println!("\nStreamed completion (3 deltas + usage), {SAMPLES} sequential calls after {WARMUP} warm-up\n");
        println!("| path | p50 ms | p99 ms |");
        println!("|---|---|---|");
        println!(
            "| direct to the local provider (new TCP connection each) | {dp50:.3} | {dp99:.3} |"
        );
        println!("| through vgas.llm.complete | {gp50:.3} | {gp99:.3} |");
        println!(
            "| gateway overhead (p50 difference) | {:.3} | |",
            gp50 - dp50
        );
    });
}
