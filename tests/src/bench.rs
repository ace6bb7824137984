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

/// utime + stime of `pid`, in seconds.
pub fn cpu_seconds(pid: i32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit(')').next().unwrap_or("");
    let f: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = f.get(11).and_then(|v| v.parse().ok()).unwrap_or(0.0)
        + f.get(12).and_then(|v| v.parse().ok()).unwrap_or(0.0);
    ticks / unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64
}

/// Resident memory of `pid`, in MiB (`VmRSS`).
pub fn rss_mib(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map(|kib| kib / 1024.0)
        .unwrap_or(0.0)
}

/// `n` simulated workers (`sim0000`...), each heartbeating every second from one connection,
/// as real workers do (MessagePack), until dropped. [`HeartbeatFlood::start`] returns once the
/// master (asked through `client`) lists all of them live.
#[derive(Debug)]
pub struct HeartbeatFlood {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    sender: Option<tokio::task::JoinHandle<()>>,
}

impl HeartbeatFlood {
    pub async fn start(
        swarm: &crate::Swarm,
        client: &async_nats::Client,
        n: usize,
    ) -> HeartbeatFlood {
        swarm.wait_workers(client, 0).await.expect("master up");
        let flood = Self::beat(swarm, n).await;
        swarm
            .wait_workers(client, n)
            .await
            .expect("all simulated workers live");
        flood
    }

    async fn beat(swarm: &crate::Swarm, n: usize) -> HeartbeatFlood {
        use vgas_shared::codec::encode;
        use vgas_shared::wire::Heartbeat;
        use vgas_shared::{Encoding, WorkerId};
        let beater = swarm
            .connect(vgas_shared::config::Role::Worker)
            .await
            .expect("beater");
        let subjects = swarm.subjects.clone();
        let beats: Vec<(String, bytes::Bytes)> = (0..n)
            .map(|i| {
                let id = WorkerId::parse(&format!("sim{i:04}")).expect("id");
                let hb = Heartbeat {
                    worker: Some(id.clone()),
                    slots: 8,
                    free_slots: 8,
                    cpus: 8,
                    hostname: "sim".into(),
                    ..Default::default()
                };
                (
                    subjects.heartbeat(&id),
                    encode(Encoding::MsgPack, &hb).expect("encode").into(),
                )
            })
            .collect();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let st = stop.clone();
        let sender = tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            while !st.load(std::sync::atomic::Ordering::Relaxed) {
                tick.tick().await;
                for (subject, payload) in &beats {
                    beater
                        .publish(subject.clone(), payload.clone())
                        .await
                        .expect("beat");
                }
                beater.flush().await.expect("flush");
            }
        });
        HeartbeatFlood {
            stop,
            sender: Some(sender),
        }
    }

    /// Stops the beats and waits for the sender.
    pub async fn stop(mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(s) = self.sender.take() {
            let _ = s.await;
        }
    }
}
