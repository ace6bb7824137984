//! Throughput of small wasm tasks across one and two workers, next to the same number of
//! native tasks (`true`) in the same run on the same swarm: tasks per second with
//! `CONCURRENCY` submitters for `WINDOW`, and the p50 round trip of one task alone. The
//! module (WAT: prints `ok`) is uploaded once; each worker's compiled-module cache is warm
//! after the first task.
//!
//! Run: `VGAS_BIN_DIR=target/release cargo bench -p vgas-tests --bench wasm_throughput`
//! (or `scripts/bench.sh`).

use std::time::Duration;

use sha2::{Digest, Sha256};
use vgas_shared::config::Role;
use vgas_shared::wire::{TaskKind, TaskSpec};
use vgas_shared::TaskId;
use vgas_tests::bench::{latencies, pct_ms, run_task, throughput};
use vgas_tests::Swarm;

/// Submitters at once.
const CONCURRENCY: usize = 16;
/// How long each throughput measurement runs.
const WINDOW: Duration = Duration::from_secs(4);
/// Slots of each worker.
const SLOTS: usize = 4;

fn module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 100) "ok\n")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 100))
            (i32.store (i32.const 4) (i32.const 3))
            (drop (call $fd_write (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .expect("wat")
}

async fn one_task(client: &async_nats::Client, swarm: &Swarm, wasm: Option<&str>) {
    let task_id = Some(TaskId::random());
    let spec = match wasm {
        Some(m) => TaskSpec {
            task_id,
            kind: TaskKind::Wasm,
            module: Some(m.to_owned()),
            ..Default::default()
        },
        None => TaskSpec {
            task_id,
            cmd: vec!["true".into()],
            ..Default::default()
        },
    };
    run_task(client, swarm, &spec).await;
}

async fn run(workers: usize) {
    let mut swarm = Swarm::start().await.expect("swarm");
    let _m = swarm.master(&[]).expect("master");
    let slots = SLOTS.to_string();
    let _ws: Vec<_> = (0..workers)
        .map(|i| {
            swarm
                .worker(&format!("ww{i}"), SLOTS, &[])
                .unwrap_or_else(|e| panic!("worker {i} ({slots} slots): {e}"))
        })
        .collect();
    let client = swarm.connect(Role::Client).await.expect("client");
    swarm.wait_workers(&client, workers).await.expect("workers");
    let bytes = module();
    let name = format!("sha256:{}", hex::encode(Sha256::digest(&bytes)));
    let js = async_nats::jetstream::new(client.clone());
    js.get_object_store(swarm.subjects.modules_bucket())
        .await
        .expect("modules bucket")
        .put(name.as_str(), &mut bytes.as_slice())
        .await
        .expect("upload");
    let swarm = std::sync::Arc::new(swarm);
    let mut row = format!("| {workers} x {SLOTS} slots |");
    for wasm in [Some(name.as_str()), None] {
        let f = {
            let (c, s, m) = (client.clone(), swarm.clone(), wasm.map(str::to_owned));
            move || {
                let (c, s, m) = (c.clone(), s.clone(), m.clone());
                async move { one_task(&c, &s, m.as_deref()).await }
            }
        };
        let lat = latencies(10, 100, &f).await;
        let rate = throughput(CONCURRENCY, WINDOW, f).await;
        row.push_str(&format!(" {:.2} | {rate:.0} |", pct_ms(&lat, 0.5)));
    }
    println!("{row}");
}

fn main() {
    vgas_tests::bench::block_on(async {
        println!(
            "\nSmall wasm tasks next to native `true`, {CONCURRENCY} submitters for {WINDOW:?}\n"
        );
        println!("| workers | wasm p50 ms | wasm tasks/s | native p50 ms | native tasks/s |");
        println!("|---|---|---|---|---|");
        for workers in [1, 2] {
            run(workers).await;
        }
    });
}
