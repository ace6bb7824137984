//! `gatling_rotate_next` with 1,000 workers: nanoseconds per call (pick plus release) as one
//! thread sees it, with 1, 2 and 8 threads calling at once.
//!
//! Run: `cargo bench -p vgas-master --bench gatling`

mod common;

use std::sync::Arc;

use common::contended;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vgas_master::scheduler::{AgentScheduler, WorkerEntry};
use vgas_shared::wire::Needs;

const WORKERS: usize = 1_000;

fn pool(caps: &[&str]) -> Arc<AgentScheduler> {
    let workers = (0..WORKERS)
        .map(|i| WorkerEntry::synthetic(&format!("w{i}"), 64, caps))
        .collect();
    Arc::new(AgentScheduler::with_pool(workers))
}

/// One call as the benchmark times it: a pick, then the release of the reserved slot.
fn pick_and_release(
    s: Arc<AgentScheduler>,
    needs: Needs,
) -> Arc<impl Fn() + Send + Sync + 'static> {
    Arc::new(move || {
        let w = s.gatling_rotate_next(&needs).expect("a free worker");
        w.release();
    })
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("gatling_rotate_next_1000_workers");
    for (label, caps, needs) in [
        ("any", vec![], Needs::default()),
        (
            "needs_gcc",
            vec!["gcc", "make"],
            Needs {
                capabilities: vec!["gcc".into()],
                gpus: None,
            },
        ),
    ] {
        let call = pick_and_release(pool(&caps), needs);
        for threads in [1usize, 2, 8] {
            g.bench_with_input(
                BenchmarkId::new(label, format!("{threads}_threads")),
                &threads,
                |b, &t| b.iter_custom(|iters| contended(t, iters, call.clone())),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
