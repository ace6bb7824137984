//! End-to-end figures, each measured in the same run as its peer on the same nats-server:
//!
//! 1. a no-op task (`true`) through master and worker(s): p50/p99 round trip and tasks per
//!    second, with 1, 2 and 4 workers, next to raw NATS request-reply;
//! 2. 1,000 simulated workers heartbeating every second: the master's CPU share and the
//!    latency of `vgas.status`.
//!
//! Run: `scripts/bench.sh` (release binaries), or
//! `VGAS_BIN_DIR=target/release cargo bench -p vgas-tests --bench e2e`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use vgas_shared::config::Role;
use vgas_shared::wire::{SwarmPulse, TaskSpec};
use vgas_shared::TaskId;
use vgas_tests::bench::{cpu_seconds, latencies, pct_ms, run_task, throughput, HeartbeatFlood};
use vgas_tests::{request, Swarm};

/// Sequential round trips per latency measurement.
const LATENCY_SAMPLES: usize = 300;
/// Requests in flight at once for the throughput measurement.
const CONCURRENCY: usize = 32;
/// How long each throughput measurement runs.
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(4);
/// Simulated workers for the heartbeat measurement, and how long it runs.
const SIM_WORKERS: usize = 1_000;
const SIM_SECONDS: u64 = 10;

async fn raw_roundtrip(client: &async_nats::Client) {
    client
        .request("bench.echo", "x".into())
        .await
        .expect("echo");
}

async fn task_roundtrip(client: &async_nats::Client, swarm: &Swarm) {
    let spec = TaskSpec {
        task_id: Some(TaskId::random()),
        cmd: vec!["true".into()],
        ..Default::default()
    };
    run_task(client, swarm, &spec).await;
}

/// p50 and p99 in ms of sequential runs of `f`, then tasks/requests per second with
/// `CONCURRENCY` loops for `THROUGHPUT_WINDOW`.
async fn measure<F, Fut>(f: F) -> (f64, f64, f64)
where
    F: Fn() -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let lat = latencies(20, LATENCY_SAMPLES, &f).await;
    let rate = throughput(CONCURRENCY, THROUGHPUT_WINDOW, f).await;
    (pct_ms(&lat, 0.5), pct_ms(&lat, 0.99), rate)
}

async fn noop_tasks(workers: usize) {
    let mut swarm = Swarm::start().await.expect("swarm");
    let _m = swarm.master(&[]).expect("master");
    let _ws: Vec<_> = (0..workers)
        .map(|i| swarm.worker(&format!("bw{i}"), 8, &[]).expect("worker"))
        .collect();
    let client = swarm.connect(Role::Client).await.expect("client");
    swarm.wait_workers(&client, workers).await.expect("workers");

    // The peer: raw request-reply on the same server, answered by a plain responder.
    let responder = swarm.connect(Role::Master).await.expect("responder");
    let mut echo = responder.subscribe("bench.echo").await.expect("echo sub");
    let r2 = responder.clone();
    tokio::spawn(async move {
        while let Some(m) = echo.next().await {
            if let Some(reply) = m.reply {
                let _ = r2.publish(reply, m.payload).await;
            }
        }
    });
    let admin = swarm.connect(Role::Master).await.expect("admin");
    let (rp50, rp99, rrate) = measure({
        let c = admin.clone();
        move || {
            let c = c.clone();
            async move { raw_roundtrip(&c).await }
        }
    })
    .await;
    let swarm = Arc::new(swarm);
    let (tp50, tp99, trate) = measure({
        let (c, s) = (client.clone(), swarm.clone());
        move || {
            let (c, s) = (c.clone(), s.clone());
            async move { task_roundtrip(&c, &s).await }
        }
    })
    .await;
    println!(
        "| {workers} | {tp50:.2} | {tp99:.2} | {trate:.0} | {rp50:.3} | {rp99:.3} | {rrate:.0} | {:.1}x | {:.1}% |",
        tp50 / rp50,
        100.0 * trate / rrate
    );
}

async fn thousand_heartbeats() {
    let mut swarm = Swarm::start().await.expect("swarm");
    let master = swarm.master(&[]).expect("master");
    let client = swarm.connect(Role::Client).await.expect("client");
    let flood = HeartbeatFlood::start(&swarm, &client, SIM_WORKERS).await;
    let subjects = swarm.subjects.clone();
    let cpu0 = cpu_seconds(master.pid());
    let t0 = Instant::now();
    let mut lat = Vec::new();
    while t0.elapsed() < Duration::from_secs(SIM_SECONDS) {
        let t = Instant::now();
        let p: SwarmPulse = request(&client, subjects.status(), &())
            .await
            .expect("status");
        lat.push(t.elapsed());
        assert_eq!(p.live.len(), SIM_WORKERS);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let share = 100.0 * (cpu_seconds(master.pid()) - cpu0) / t0.elapsed().as_secs_f64();
    flood.stop().await;
    lat.sort();
    println!(
        "| {SIM_WORKERS} | {SIM_SECONDS} s | {share:.1}% of one core | {:.2} | {:.2} | {} |",
        pct_ms(&lat, 0.5),
        pct_ms(&lat, 0.99),
        lat.len()
    );
}

fn main() {
    // `cargo bench` passes `--bench`; a filter argument (if any) is ignored.
    vgas_tests::bench::block_on(async {
        println!("\nNo-op task (`true`) vs raw NATS request-reply on the same server");
        println!("latency: {LATENCY_SAMPLES} sequential; throughput: {CONCURRENCY} in flight for {THROUGHPUT_WINDOW:?}\n");
        println!("| workers | task p50 ms | task p99 ms | tasks/s | raw p50 ms | raw p99 ms | raw req/s | p50 ratio | throughput vs raw |");
        println!("|---|---|---|---|---|---|---|---|---|");
        for workers in [1, 2, 4] {
            noop_tasks(workers).await;
        }
        println!("\n1,000 simulated workers heartbeating every second\n");
        println!("| workers | window | master CPU | status p50 ms | status p99 ms | samples |");
        println!("|---|---|---|---|---|---|");
        thousand_heartbeats().await;
    });
}
