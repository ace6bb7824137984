//! `sync_distributed_state` at 10, 100 and 1,000 simulated masters, each with a month's
//! usage of its own (2 providers × 2 models × 30 days): what one master pays to merge one
//! round of every other's digest (the state travels whole, so a digest holds every master's
//! slots), the digest's size, and the rounds until every master holds the exact total when
//! each hears only one other per round (a ring: the slowest way state can spread) versus
//! everyone (NATS fan-out, what masters do: one round of 0.5 s).
//!
//! Run: `cargo bench -p vgas-master --bench usage_sync`

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vgas_master::keys::usage::UsageBook;
use vgas_shared::llm::TokenUsage;

/// A time in December 2026 (ms since the epoch); the month's days go back from it.
const T: u64 = 1_796_000_000_000;

fn book_of(n: usize) -> UsageBook {
    let book = UsageBook::in_memory_as(&format!("master-{n:08x}"));
    let u = TokenUsage {
        input_tokens: 100,
        output_tokens: 10,
        cached_tokens: 0,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    rt.block_on(async {
        for day in 0..30u64 {
            for (p, m) in [
                ("openai", "a"),
                ("openai", "b"),
                ("anthropic", "a"),
                ("anthropic", "b"),
            ] {
                book.record(p, m, &u, Some(7), true, T - day * 86_400_000)
                    .await
                    .expect("record");
            }
        }
    });
    book
}

fn merge_round(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage_sync/merge_one_round");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    for n in [10usize, 100, 1000] {
        let books: Vec<UsageBook> = (0..n).map(book_of).collect();
        // Each other master's digest after full convergence: the largest a digest gets.
        let full = UsageBook::in_memory_as("full");
        for b in &books {
            full.merge_digest(&b.digest(T, false));
        }
        let digest = full.digest(T, false);
        let bytes = vgas_shared::codec::encode(vgas_shared::Encoding::MsgPack, &digest)
            .expect("encode")
            .len();
        println!(
            "{n} masters: a converged digest holds {} slots, {bytes} bytes",
            digest.slots.len()
        );
        // Rounds to converge when each master hears one neighbour per round (a ring).
        let ring: Vec<UsageBook> = (0..n.min(100)).map(book_of).collect();
        let t = Instant::now();
        let mut rounds = 0;
        loop {
            rounds += 1;
            let digests: Vec<_> = ring.iter().map(|b| b.digest(T, false)).collect();
            let mut grew = false;
            for (i, b) in ring.iter().enumerate() {
                grew |= b.merge_digest(&digests[(i + 1) % ring.len()]);
            }
            if !grew {
                break;
            }
        }
        println!(
            "{} masters in a ring converge in {} rounds ({:?} of merging)",
            ring.len(),
            rounds - 1,
            t.elapsed()
        );
        // One round: a digest from every master, as each sends its own before it has heard
        // anyone (120 slots each).
        let round: Vec<_> = books.iter().map(|b| b.digest(T, false)).collect();
        g.bench_with_input(BenchmarkId::from_parameter(n), &n, |bench, _| {
            bench.iter_batched(
                || UsageBook::in_memory_as("fresh"),
                |me| {
                    for d in &round {
                        me.merge_digest(d);
                    }
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, merge_round);
criterion_main!(benches);
