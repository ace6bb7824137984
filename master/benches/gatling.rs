//! `gatling_rotate_next` with 1,000 workers: nanoseconds per call (pick plus release) as one
//! thread sees it, with 1, 2 and 8 threads calling at once.
//!
//! Run: `cargo bench -p vgas-master --bench gatling`

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

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

/// Each of `threads` threads makes `iters` calls; the slowest thread's time is the result.
fn contended(s: &Arc<AgentScheduler>, needs: &Needs, threads: usize, iters: u64) -> Duration {
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (s, needs, barrier) = (s.clone(), needs.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    let w = s.gatling_rotate_next(&needs).expect("a free worker");
                    w.release();
                }
                start.elapsed()
            })
        })
        .collect();
    handles
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .max()
        .unwrap_or_default()
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
            },
        ),
    ] {
        let s = pool(&caps);
        for threads in [1usize, 2, 8] {
            g.bench_with_input(
                BenchmarkId::new(label, format!("{threads}_threads")),
                &threads,
                |b, &t| b.iter_custom(|iters| contended(&s, &needs, t, iters)),
            );
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
