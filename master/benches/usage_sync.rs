//! `sync_distributed_state` at 10, 100 and 1,000 simulated masters, each with a month's
//! usage of its own (2 providers × 2 models × 30 days = 120 slots): what one master pays to
//! merge one round of every other's digest (masters that hear each other send their own
//! slots only), the size of a digest with and without relayed slots, and the rounds until
//! every master holds the exact total when all hear each other (NATS fan-out, what masters
//! do) versus a ring where each hears only its two neighbours and state must be relayed
//! (10 and 30 masters).
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

fn size(d: &vgas_shared::crdt::UsageDigest) -> usize {
    vgas_shared::codec::encode(vgas_shared::Encoding::MsgPack, d)
        .expect("encode")
        .len()
}

/// Rounds until every master of `books` holds `total`, each merging in a round the digests
/// of the masters `hears(i)` names.
fn rounds_to_converge(
    books: &[UsageBook],
    total: u64,
    hears: impl Fn(usize) -> Vec<usize>,
) -> usize {
    for round in 1..=2_000 {
        let digests: Vec<_> = books.iter().map(|b| b.digest(T, false)).collect();
        for (i, b) in books.iter().enumerate() {
            for j in hears(i) {
                b.merge_digest(&digests[j]);
            }
        }
        if books.iter().all(|b| b.spend("openai", T).1 == total) {
            return round;
        }
    }
    usize::MAX
}

fn merge_round(c: &mut Criterion) {
    let mut g = c.benchmark_group("usage_sync/merge_one_round");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    for n in [10usize, 100, 1000] {
        let books: Vec<UsageBook> = (0..n).map(book_of).collect();
        // Every master's own month on openai, added up.
        let total = n as u64 * books[0].spend("openai", T).1;
        let own = books[0].digest(T, false);
        println!(
            "{n} masters: a digest of own slots holds {} slots, {} bytes",
            own.slots.len(),
            size(&own)
        );
        if n <= 100 {
            let t = Instant::now();
            let all = rounds_to_converge(&books, total, |_| (0..n).collect());
            println!(
                "{n} masters hearing each other converge in {all} round(s) ({:?} for all {n})",
                t.elapsed()
            );
            // The next round's digests, as master 0 hears them: all now hold the same
            // masters' slots, so no digest relays anything.
            let next: Vec<_> = books.iter().map(|b| b.digest(T, false)).collect();
            for d in &next {
                books[0].merge_digest(d);
            }
            let steady = books[0].digest(T, false);
            println!(
                "  then a digest holds {} slots ({} relayed, {} masters named unheard), {} bytes",
                steady.slots.len(),
                steady
                    .slots
                    .iter()
                    .filter(|s| s.node != steady.node)
                    .count(),
                steady.unheard.len(),
                size(&steady)
            );
        }
        // A ring (each master hears only its two neighbours) of n masters, up to 30: every
        // slot must be relayed up to n/2 times, in rounds of at most `RELAY_SLOTS` each.
        if n <= 100 {
            let n = n.min(30);
            let ring: Vec<UsageBook> = (0..n).map(book_of).collect();
            let total = n as u64 * ring[0].spend("openai", T).1;
            let t = Instant::now();
            let rounds = rounds_to_converge(&ring, total, |i| vec![(i + 1) % n, (i + n - 1) % n]);
            let relaying = ring[0].digest(T, false);
            println!(
                "{n} masters in a ring converge in {rounds} rounds ({:?}); a relaying digest held {} slots, {} bytes",
                t.elapsed(),
                relaying.slots.len(),
                size(&relaying)
            );
        }
        // One round: a digest from every master, its own slots (120 each), merged by a
        // master that has not heard of them (first contact: every slot is new here) and by
        // one that holds them all (the steady state: one slot of each grew since).
        let round: Vec<_> = (0..n).map(|i| book_of(i).digest(T, false)).collect();
        g.bench_with_input(BenchmarkId::new("first_contact", n), &n, |bench, _| {
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
        let me = UsageBook::in_memory_as("steady");
        for d in &round {
            me.merge_digest(d);
        }
        let mut grown = round.clone();
        let mut step = 0u64;
        g.bench_with_input(BenchmarkId::new("steady", n), &n, |bench, _| {
            bench.iter(|| {
                step += 1;
                for d in grown.iter_mut() {
                    d.slots[0].counts.cost_micro_usd += step;
                    me.merge_digest(d);
                }
            })
        });
    }
    g.finish();
}

criterion_group!(benches, merge_round);
criterion_main!(benches);
