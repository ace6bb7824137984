//! Batch submission next to one task per request, in the same run on the same swarm:
//! - single: `SINGLE` no-op wasm tasks submitted one per request, 32 requests in flight;
//! - batch: `QUEUED` no-op wasm tasks submitted in batches of `BATCH`, 4 batches in flight,
//!   to a master with no worker (so every task stays queued): accepted tasks per second, and
//!   the master's resident memory before and with all of them queued;
//! - drain: then one worker with 8 slots starts and runs them: finished tasks per second.
//!
//! Run: `VGAS_BIN_DIR=target/release cargo bench -p vgas-tests --bench batch`
//! (or `scripts/bench.sh`).

use std::time::{Duration, Instant};

use futures::StreamExt;
use sha2::{Digest, Sha256};
use vgas_shared::codec::{decode_as, encode, Reply};
use vgas_shared::config::Role;
use vgas_shared::wire::{SubmitReply, SwarmPulse, TaskKind, TaskSpec};
use vgas_shared::{Encoding, TaskId};
use vgas_tests::Swarm;

const QUEUED: usize = 100_000;
const BATCH: usize = 1_000;
const BATCHES_IN_FLIGHT: usize = 4;
const SINGLE: usize = 5_000;
const SINGLES_IN_FLIGHT: usize = 32;
const DRAIN_LIMIT: Duration = Duration::from_secs(900);

fn module() -> Vec<u8> {
    wat::parse_str(r#"(module (memory (export "memory") 1) (func (export "_start")))"#)
        .expect("wat")
}

fn spec(module: &str) -> TaskSpec {
    TaskSpec {
        task_id: Some(TaskId::random()),
        kind: TaskKind::Wasm,
        module: Some(module.to_owned()),
        ..Default::default()
    }
}

fn rss_mb(pid: i32) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

async fn status(client: &async_nats::Client, swarm: &Swarm) -> SwarmPulse {
    let msg = client
        .request(
            swarm.subjects.status(),
            encode(Encoding::MsgPack, &()).unwrap().into(),
        )
        .await
        .expect("status");
    let r: Reply<SwarmPulse> = decode_as(Encoding::MsgPack, &msg.payload).expect("decode");
    r.into_result().expect("status")
}

/// Sends `specs` as requests of `per` tasks, `in_flight` at once; returns the accepted count.
async fn submit(
    client: &async_nats::Client,
    swarm: &Swarm,
    specs: Vec<TaskSpec>,
    per: usize,
    in_flight: usize,
) -> usize {
    let bodies: Vec<Vec<u8>> = if per == 1 {
        specs
            .iter()
            .map(|s| encode(Encoding::MsgPack, s).unwrap())
            .collect()
    } else {
        specs
            .chunks(per)
            .map(|c| encode(Encoding::MsgPack, c).unwrap())
            .collect()
    };
    futures::stream::iter(bodies)
        .map(|body| {
            let (client, subject) = (client.clone(), swarm.subjects.submit());
            async move {
                let msg = client.request(subject, body.into()).await.expect("submit");
                if per == 1 {
                    let r: Reply<SubmitReply> = decode_as(Encoding::MsgPack, &msg.payload).unwrap();
                    usize::from(r.into_result().is_ok())
                } else {
                    let r: Reply<Vec<Reply<SubmitReply>>> =
                        decode_as(Encoding::MsgPack, &msg.payload).unwrap();
                    let answers = r.into_result().expect("batch");
                    answers
                        .into_iter()
                        .filter(|a| matches!(a, Reply::Ok(_)))
                        .count()
                }
            }
        })
        .buffer_unordered(in_flight)
        .fold(0, |n, k| async move { n + k })
        .await
}

#[tokio::main]
async fn main() {
    let mut swarm = Swarm::start().await.expect("swarm");
    let capacity = (QUEUED + SINGLE).to_string();
    let master = swarm
        .master(&["--queue-capacity", &capacity])
        .expect("master");
    let client = swarm.connect(Role::Client).await.expect("client");
    let bytes = module();
    let name = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let js = async_nats::jetstream::new(client.clone());
    let store = loop {
        match js.get_object_store(swarm.subjects.modules_bucket()).await {
            Ok(s) => break s,
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    store
        .put(name.as_str(), &mut bytes.as_slice())
        .await
        .expect("upload");

    let rss_before = rss_mb(master.pid());
    let singles: Vec<TaskSpec> = (0..SINGLE).map(|_| spec(&name)).collect();
    let started = Instant::now();
    let n = submit(&client, &swarm, singles, 1, SINGLES_IN_FLIGHT).await;
    let single_rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(n, SINGLE);

    let batch: Vec<TaskSpec> = (0..QUEUED).map(|_| spec(&name)).collect();
    let started = Instant::now();
    let n = submit(&client, &swarm, batch, BATCH, BATCHES_IN_FLIGHT).await;
    let batch_rate = n as f64 / started.elapsed().as_secs_f64();
    assert_eq!(n, QUEUED);
    // Accepted tasks reach the dispatcher's queue through its channel: measured once all
    // are there (bounded wait).
    let total = QUEUED + SINGLE;
    let waited = Instant::now();
    let mut queued = status(&client, &swarm).await.queue_depth;
    while queued < total && waited.elapsed() < Duration::from_secs(120) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        queued = status(&client, &swarm).await.queue_depth;
    }
    let rss_queued = rss_mb(master.pid());

    let _worker = swarm.worker("drain", 8, &[]).expect("worker");
    let started = Instant::now();
    let total = (QUEUED + SINGLE) as u64;
    let done = loop {
        let p = status(&client, &swarm).await;
        if p.tasks_finished >= total {
            break p.live.iter().map(|n| n.tasks_done).sum::<u64>();
        }
        assert!(
            started.elapsed() < DRAIN_LIMIT,
            "drained {} of {total}",
            p.tasks_finished
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    // Queued tasks wait at most 30 s for a worker: all of them ran only if submitting took less.
    assert_eq!(
        done, total,
        "tasks run by the worker (the rest were abandoned unrun)"
    );
    let drain_rate = total as f64 / started.elapsed().as_secs_f64();
    println!("batch: one task per request ({SINGLES_IN_FLIGHT} in flight): {single_rate:.0} tasks/s accepted");
    println!(
        "batch: batches of {BATCH} ({BATCHES_IN_FLIGHT} in flight): {batch_rate:.0} tasks/s accepted ({:.1}x)",
        batch_rate / single_rate
    );
    println!(
        "batch: master resident memory {rss_before:.0} MB before, {rss_queued:.0} MB with {queued} tasks queued"
    );
    println!(
        "batch: one worker (8 slots) drained {total} wasm no-op tasks at {drain_rate:.0} tasks/s"
    );
}
