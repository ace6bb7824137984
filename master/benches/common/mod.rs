//! What the criterion benchmarks of this crate share: timing a call made by several threads
//! at once.

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

/// Each of `threads` threads calls `f` `iters` times, all starting together; the slowest
/// thread's time is the result, so criterion reports the time per call one thread sees.
pub fn contended<F>(threads: usize, iters: u64, f: Arc<F>) -> Duration
where
    F: Fn() + Send + Sync + ?Sized + 'static,
{
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|_| {
            let (f, barrier) = (f.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let start = Instant::now();
                for _ in 0..iters {
                    f();
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
