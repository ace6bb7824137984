//! `acquire_cluster_gpu` with 1,000 workers of 8 (declared) GPUs each: nanoseconds to grant a
//! lease and release it, when every device is free and when seven in eight are leased (the
//! rotation passes busy workers), next to a plain `gatling_rotate_next` pick in the same run.
//!
//! Run: `cargo bench -p vgas-master --bench leases`

use criterion::{criterion_group, criterion_main, Criterion};
use vgas_master::dispatch::gpu::ResourceManager;
use vgas_master::scheduler::{AgentScheduler, WorkerEntry};
use vgas_shared::gpu::{GpuDevice, GpuNeeds};
use vgas_shared::wire::Needs;
use vgas_shared::TaskId;

const WORKERS: usize = 1_000;
const GPUS: u32 = 8;

fn pool() -> AgentScheduler {
    let workers = (0..WORKERS)
        .map(|i| {
            let w = WorkerEntry::synthetic(&format!("w{i}"), 64, &[]);
            w.set_gpus(
                (0..GPUS)
                    .map(|d| GpuDevice::simulated(d, format!("GPU-w{i}-{d}")))
                    .collect(),
            );
            w
        })
        .collect();
    AgentScheduler::with_pool(workers)
}

fn bench(c: &mut Criterion) {
    let sched = pool();
    let gpus = GpuNeeds::count(1);
    let needs = Needs {
        capabilities: Vec::new(),
        gpus: Some(gpus.clone()),
    };
    let task = TaskId::parse("bench").expect("id");
    let mut g = c.benchmark_group("gpu_lease_1000_workers");
    g.bench_function("plain_pick", |b| {
        b.iter(|| {
            let w = sched
                .gatling_rotate_next(&Needs::default())
                .expect("worker");
            w.release();
        })
    });
    let rm = ResourceManager::default();
    g.bench_function("grant_and_release_all_free", |b| {
        b.iter(|| {
            let lock = rm
                .acquire_cluster_gpu(&sched, &task, &needs, &gpus)
                .expect("lease");
            rm.release(&lock.task_id);
            lock.worker.release();
        })
    });
    // Seven in eight leased: the devices 0-6 of every worker held by other tasks.
    let busy = ResourceManager::default();
    for (w, _) in sched.gpu_inventory() {
        for d in 0..GPUS - 1 {
            let holder = TaskId::parse(&format!("h{w}-{d}")).expect("id");
            busy.restore(&holder, &w, &[format!("GPU-{w}-{d}")]);
        }
    }
    g.bench_function("grant_and_release_7_of_8_leased", |b| {
        b.iter(|| {
            let lock = busy
                .acquire_cluster_gpu(&sched, &task, &needs, &gpus)
                .expect("lease");
            busy.release(&lock.task_id);
            lock.worker.release();
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
