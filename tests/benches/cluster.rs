//! Past one server, measured in one run:
//!
//! 1. a no-op task (`true`) through master and one worker: p50/p99 round trip and tasks per
//!    second on one server, on a three-node cluster with one copy of each stream, and on the
//!    same cluster with three copies;
//! 2. failover after the leading master's SIGKILL (two masters, one server): from the kill to
//!    the next accepted submit, the next dispatched task and the next finished one;
//! 3. the same after a SIGKILL of the server leading the tasks stream (three servers, three
//!    copies).
//!
//! Run: `VGAS_BIN_DIR=target/release cargo bench -p vgas-tests --bench cluster`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use vgas_shared::codec::decode_as;
use vgas_shared::config::Role;
use vgas_shared::wire::{SubmitReply, TaskEvent, TaskSpec};
use vgas_shared::{Encoding, TaskId};
use vgas_tests::bench::{latencies, pct_ms, run_task, throughput};
use vgas_tests::cluster::Cluster;
use vgas_tests::{request, Proc, Swarm};

const LATENCY_SAMPLES: usize = 200;
const CONCURRENCY: usize = 32;
const THROUGHPUT_WINDOW: Duration = Duration::from_secs(4);
/// Kills per failover measurement.
const KILLS: usize = 3;

fn noop() -> TaskSpec {
    TaskSpec {
        task_id: Some(TaskId::random()),
        cmd: vec!["true".into()],
        ..Default::default()
    }
}

/// p50, p99 and tasks/s of no-op tasks on `swarm` (a master and a worker already up).
async fn task_path(swarm: Arc<Swarm>, label: &str) {
    let client = swarm.connect(Role::Client).await.expect("client");
    swarm.wait_workers(&client, 1).await.expect("worker");
    let f = {
        let (c, s) = (client.clone(), swarm.clone());
        move || {
            let (c, s) = (c.clone(), s.clone());
            async move { run_task(&c, &s, &noop()).await }
        }
    };
    let lat = latencies(20, LATENCY_SAMPLES, &f).await;
    let rate = throughput(CONCURRENCY, THROUGHPUT_WINDOW, f).await;
    println!(
        "| {label} | {:.2} | {:.2} | {rate:.0} |",
        pct_ms(&lat, 0.5),
        pct_ms(&lat, 0.99)
    );
}

/// After `kill` at `t0`: ms to an accepted submit, to its `assigned` event and to its
/// `finished` event. Submits are sent one after another, each a new task with a 1 s limit
/// (the client library retries within it while nothing serves), until one is accepted.
async fn after_kill(client: &async_nats::Client, swarm: &Swarm, t0: Instant) -> (f64, f64, f64) {
    let api = vgas_client::api::Swarm::new(client.clone(), swarm.subjects.clone());
    let mut events = loop {
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no submit accepted in 60 s"
        );
        let spec = noop();
        let id = spec.task_id.clone().expect("id");
        let events = client
            .subscribe(swarm.subjects.task_events(&id))
            .await
            .expect("subscribe");
        let sent: anyhow::Result<SubmitReply> = api
            .request_within(swarm.subjects.submit(), &spec, Duration::from_secs(1))
            .await;
        if sent.is_ok() {
            break events;
        }
    };
    let accepted = t0.elapsed();
    let mut assigned = None;
    loop {
        let msg = tokio::time::timeout(Duration::from_secs(60), events.next())
            .await
            .expect("events")
            .expect("subscription");
        match decode_as::<TaskEvent>(Encoding::detect(&msg.payload), &msg.payload) {
            Ok(TaskEvent::Assigned { .. }) => assigned = assigned.or(Some(t0.elapsed())),
            Ok(TaskEvent::Finished { .. }) => {
                let ms = |d: Duration| d.as_secs_f64() * 1e3;
                let done = t0.elapsed();
                return (ms(accepted), ms(assigned.unwrap_or(done)), ms(done));
            }
            _ => {}
        }
    }
}

fn row(label: &str, samples: &[(f64, f64, f64)]) {
    let median = |f: fn(&(f64, f64, f64)) -> f64| {
        let mut v: Vec<f64> = samples.iter().map(f).collect();
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "| {label} | {} | {:.0} | {:.0} | {:.0} |",
        samples.len(),
        median(|s| s.0),
        median(|s| s.1),
        median(|s| s.2)
    );
}

async fn master_failover() {
    let mut swarm = Swarm::start().await.expect("swarm");
    let mut masters: Vec<Proc> = vec![
        swarm.master(&[]).expect("m1"),
        swarm.master(&[]).expect("m2"),
    ];
    let _w = swarm.worker("fw1", 4, &[]).expect("worker");
    let client = swarm.connect(Role::Client).await.expect("client");
    swarm.wait_workers(&client, 1).await.expect("worker");
    let mut samples = Vec::new();
    for _ in 0..KILLS {
        // Settled: a task runs, and the other master stands by.
        run_task(&client, &swarm, &noop()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let p: vgas_shared::wire::SwarmPulse = request(&client, swarm.subjects.status(), &())
            .await
            .expect("status");
        let id = p.master.expect("a leader").id;
        let leader = masters
            .iter_mut()
            .find(|m| {
                m.log_text()
                    .lines()
                    .any(|l| l.contains("leading the swarm") && l.contains(&id))
            })
            .expect("the leader's process");
        leader.signal(libc::SIGKILL);
        let t0 = Instant::now();
        samples.push(after_kill(&client, &swarm, t0).await);
        masters.push(swarm.master(&[]).expect("a new standby"));
    }
    row("leading master SIGKILLed (2 masters, 1 server)", &samples);
}

async fn server_failover() {
    let mut cluster = Cluster::start(3, false).await.expect("cluster");
    let _m = cluster.swarm.master(&[]).expect("master");
    let _w = cluster.swarm.worker("fw1", 4, &[]).expect("worker");
    let client = cluster.swarm.connect(Role::Client).await.expect("client");
    cluster
        .swarm
        .wait_workers(&client, 1)
        .await
        .expect("worker");
    let admin = cluster.swarm.connect(Role::Master).await.expect("admin");
    let stream = format!("KV_{}", cluster.swarm.subjects.tasks_bucket());
    let mut samples = Vec::new();
    for _ in 0..KILLS {
        run_task(&client, &cluster.swarm, &noop()).await;
        tokio::time::sleep(Duration::from_secs(2)).await;
        let (leader, _) = cluster.stream_peers(&admin, &stream).await.expect("leader");
        cluster.node(&leader).server.signal(libc::SIGKILL);
        let t0 = Instant::now();
        samples.push(after_kill(&client, &cluster.swarm, t0).await);
        cluster.restart(&leader).expect("restart");
        cluster.wait_jetstream().await.expect("jetstream");
    }
    row(
        "tasks stream's leader SIGKILLed (3 servers, 3 copies)",
        &samples,
    );
}

fn main() {
    vgas_tests::bench::block_on(async {
        println!("\nNo-op task (`true`), one worker of 4 slots; latency {LATENCY_SAMPLES} sequential, throughput {CONCURRENCY} in flight for {THROUGHPUT_WINDOW:?}\n");
        println!("| servers | p50 ms | p99 ms | tasks/s |");
        println!("|---|---|---|---|");
        {
            let mut swarm = Swarm::start().await.expect("swarm");
            let _m = swarm.master(&[]).expect("master");
            let _w = swarm.worker("bw1", 4, &[]).expect("worker");
            task_path(Arc::new(swarm), "one server").await;
        }
        for copies in ["1", "3"] {
            let mut cluster = Cluster::start(3, false).await.expect("cluster");
            let _m = cluster
                .swarm
                .master(&["--replicas", copies])
                .expect("master");
            let _w = cluster.swarm.worker("bw1", 4, &[]).expect("worker");
            let Cluster { swarm, nodes } = cluster;
            task_path(Arc::new(swarm), &format!("three, replicas {copies}")).await;
            drop(nodes);
        }
        println!("\nFailover, median of {KILLS} kills: ms from the SIGKILL to the next submit accepted, its task assigned, finished\n");
        println!("| what died | kills | accepted | assigned | finished |");
        println!("|---|---|---|---|---|");
        master_failover().await;
        server_failover().await;
    });
}
