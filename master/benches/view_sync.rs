//! The node and GPU-lease view (`sync_distributed_state`, last-writer-wins registers) at
//! 10, 100 and 1,000 simulated workers, each with one GPU leased: what a master pays to
//! merge another master's whole view (every 5 s; first contact, where every register is new,
//! and the steady state, where it holds them all and one in ten changed), the size of that
//! view on the wire, and of the 0.5 s delta when one in ten workers changed.
//!
//! Run: `cargo bench -p vgas-master --bench view_sync`

use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use vgas_shared::crdt::lww::clock;
use vgas_shared::crdt::view::{SwarmView, ViewDigest};
use vgas_shared::wire::Heartbeat;
use vgas_shared::{TaskId, WorkerId};

/// A time in December 2026 (ms since the epoch).
const T: u64 = 1_796_000_000_000;

fn size(d: &ViewDigest) -> usize {
    vgas_shared::codec::encode(vgas_shared::Encoding::MsgPack, d)
        .expect("encode")
        .len()
}

/// The view of a leading master that has heard `n` workers, each with one GPU leased.
fn view_of(n: usize, node: &str) -> (SwarmView, Vec<String>, Vec<String>) {
    let c = clock(node);
    let mut v = SwarmView::default();
    let (mut nodes, mut held) = (Vec::new(), Vec::new());
    for i in 0..n {
        let id = WorkerId::parse(&format!("worker-{i:05}")).expect("an id");
        let hb = Heartbeat {
            worker: Some(id.clone()),
            hostname: format!("host-{i:05}"),
            host: format!("{i:032x}"),
            slots: 8,
            ..Default::default()
        };
        nodes.extend(v.heard(&c, &id, &hb, node, T));
        held.push((
            id,
            format!("GPU-{i:08x}-0000-0000-0000-000000000000"),
            TaskId::random(),
        ));
    }
    let leases = v.reconcile_leases(&c, &held, node);
    (v, nodes, leases)
}

fn merge_view(c: &mut Criterion) {
    let mut g = c.benchmark_group("view_sync/merge_whole_view");
    g.measurement_time(Duration::from_secs(5)).sample_size(10);
    for n in [10usize, 100, 1000] {
        let (leader, nodes, leases) = view_of(n, "leader");
        let whole = leader.full_digests("leader", vgas_master::view::PER_MESSAGE);
        let bytes: usize = whole.iter().map(size).sum();
        let tenth = |keys: &[String]| keys.iter().step_by(10).cloned().collect::<Vec<_>>();
        let (some_nodes, some_leases) = (tenth(&nodes), tenth(&leases));
        let delta = leader.digest_of(
            "leader",
            some_nodes.iter().map(String::as_str),
            some_leases.iter().map(String::as_str),
        );
        println!(
            "{n} workers: the whole view is {} registers in {} message(s), {bytes} bytes; a delta with one in ten changed is {} bytes",
            nodes.len() + leases.len(),
            whole.len(),
            size(&delta)
        );
        g.bench_with_input(BenchmarkId::new("first_contact", n), &n, |bench, _| {
            let standby = clock("standby");
            bench.iter_batched(
                SwarmView::default,
                |mut v| {
                    for d in &whole {
                        v.merge(&standby, d);
                    }
                    v
                },
                criterion::BatchSize::LargeInput,
            )
        });
        // The steady state: the standby holds the view; the leader rewrote one in ten.
        let standby = clock("standby");
        let mut held = SwarmView::default();
        for d in &whole {
            held.merge(&standby, d);
        }
        let mut newer = leader.clone();
        let c = clock("leader");
        for (k, lease) in leader.leases.live().step_by(10) {
            newer.leases.set(k, lease.clone(), c.new_timestamp());
        }
        let again = newer.full_digests("leader", vgas_master::view::PER_MESSAGE);
        g.bench_with_input(BenchmarkId::new("steady", n), &n, |bench, _| {
            bench.iter_batched(
                || held.clone(),
                |mut v| {
                    for d in &again {
                        v.merge(&standby, d);
                    }
                    v
                },
                criterion::BatchSize::LargeInput,
            )
        });
    }
    g.finish();
}

criterion_group!(benches, merge_view);
criterion_main!(benches);
