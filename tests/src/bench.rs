//! Helpers the benchmarks in `tests/benches/` share: their runtime, sequential latency
//! samples and percentiles.

use std::time::{Duration, Instant};

/// Runs a benchmark's body to its end on a multi-threaded runtime (a `harness = false`
/// bench's `main`).
pub fn block_on<F: std::future::Future>(body: F) -> F::Output {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime")
        .block_on(body)
}

/// Runs `f` `warmup` times unmeasured, then `samples` times, and returns the sorted latencies.
pub async fn latencies<F, Fut>(warmup: usize, samples: usize, f: F) -> Vec<Duration>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    for _ in 0..warmup {
        f().await;
    }
    let mut lat = Vec::with_capacity(samples);
    for _ in 0..samples {
        let t = Instant::now();
        f().await;
        lat.push(t.elapsed());
    }
    lat.sort();
    lat
}

/// The `p` percentile (0.0 to 1.0) of sorted latencies, in milliseconds.
pub fn pct_ms(sorted: &[Duration], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64() * 1e3
}

/// Runs of `f` per second with `concurrency` loops calling it for `window`.
pub async fn throughput<F, Fut>(concurrency: usize, window: Duration, f: F) -> f64
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    use std::sync::atomic::{AtomicU64, Ordering};
    let done = std::sync::Arc::new(AtomicU64::new(0));
    let end = Instant::now() + window;
    let loops: Vec<_> = (0..concurrency)
        .map(|_| {
            let (f, done) = (f.clone(), done.clone());
            tokio::spawn(async move {
                while Instant::now() < end {
                    f().await;
                    done.fetch_add(1, Ordering::Relaxed);
                }
            })
        })
        .collect();
    let start = Instant::now();
    for l in loops {
        l.await.expect("loop");
    }
    done.load(Ordering::Relaxed) as f64 / start.elapsed().as_secs_f64()
}

/// Submits `spec` (which must carry its task id) and waits until it finished successfully:
/// one task round trip as a client sees it.
pub async fn run_task(
    client: &async_nats::Client,
    swarm: &crate::Swarm,
    spec: &vgas_shared::wire::TaskSpec,
) {
    let id = spec.task_id.clone().expect("the spec names its task id");
    let sub = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .expect("subscribe");
    let _: vgas_shared::wire::SubmitReply = crate::request(client, swarm.subjects.submit(), spec)
        .await
        .expect("submit");
    let c = crate::collect(sub, Duration::from_secs(30), Duration::ZERO)
        .await
        .expect("finished");
    assert!(c.outcome().succeeded(), "{:?}", c.outcome());
}
