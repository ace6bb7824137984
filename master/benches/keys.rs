//! `get_decrypted_key` and `check_quota_availability` latency: nanoseconds per call as the
//! slowest of 1 or 8 threads calling at once sees it. The vault is a real file (16 providers)
//! opened once; a check releases its concurrency permit at once, as a finished call would.
//!
//! Run: `cargo bench -p vgas-master --bench keys`

use std::sync::Arc;

mod common;

use common::contended;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use secrecy::{ExposeSecret, SecretString};
use vgas_master::keys::usage::UsageBook;
use vgas_master::keys::{ApiKeyManager, KeyConfig};
use vgas_shared::vault::{KdfParams, KeySource, VaultOp};

fn manager(dir: &std::path::Path) -> Arc<ApiKeyManager> {
    std::fs::write(
        dir.join("llm.toml"),
        "[providers.openai]\nkind = 'openai'\nbase_url = 'http://127.0.0.1:1/v1'\n\
         [providers.openai.limits]\ndaily_budget_usd = 1000000.0\nmonthly_budget_usd = 1000000.0\n\
         requests_per_minute = 1000000000\ntokens_per_minute = 1000000000000\nmax_concurrent = 64\n\
         [prices.openai.'gpt-4o-mini']\ninput = 0.15\noutput = 0.6\n",
    )
    .expect("write llm.toml");
    let cfg = KeyConfig {
        vault_path: dir.join("vault"),
        source: Some(KeySource::Passphrase(SecretString::from(
            "bench".to_owned(),
        ))),
        params: KdfParams::RECOMMENDED,
        llm_config_path: dir.join("llm.toml"),
        audit_path: None,
    };
    let m = Arc::new(ApiKeyManager::new(cfg, UsageBook::in_memory()).expect("manager"));
    for i in 0..16 {
        m.vault_operation(VaultOp::Store {
            provider: format!("provider{i}"),
            key: SecretString::from(format!("sk-bench-{i}-{}", "x".repeat(40))),
        })
        .expect("store");
    }
    m
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("tempdir");
    let m = manager(dir.path());
    let mut g = c.benchmark_group("api_key_manager");
    for threads in [1usize, 8] {
        let mk = m.clone();
        let get: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let k = mk.get_decrypted_key("provider7").expect("key");
            assert!(!k.expose_secret().is_empty());
        });
        g.bench_with_input(
            BenchmarkId::new("get_decrypted_key", format!("{threads}_threads")),
            &threads,
            |b, &t| b.iter_custom(|iters| contended(t, iters, get.clone())),
        );
        let mq = m.clone();
        let check: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            let p = mq
                .check_quota_availability("openai", "gpt-4o-mini", 500, 256)
                .expect("allowed");
            drop(p);
        });
        g.bench_with_input(
            BenchmarkId::new("check_quota_availability", format!("{threads}_threads")),
            &threads,
            |b, &t| b.iter_custom(|iters| contended(t, iters, check.clone())),
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
