//! Helpers the benchmarks in `tests/benches/` share: sequential latency samples and
//! percentiles.

use std::time::{Duration, Instant};

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
