//! The node and GPU-lease view every master holds (`sync_distributed_state`, last-writer-wins
//! registers with hybrid logical clocks): the leader and a standby both show every worker and
//! every lease; a standby that takes over after a SIGKILL keeps them; a released lease and a
//! worker that leaves disappear from the view; `vgas status --view` prints it.

use std::collections::HashMap;

use vgas_shared::config::Role;
use vgas_shared::crdt::view::ViewReport;
use vgas_shared::gpu::GpuNeeds;
use vgas_shared::wire::{SubmitReply, TaskSpec};
use vgas_shared::TaskId;
use vgas_tests::{request, sh, Proc, Swarm, WAIT};

const DEVICE: &str =
    r#"[{"uuid":"GPU-view-0","name":"Simulated GPU","memory_total_mb":16000,"compute":"9.0"}]"#;

/// Asks `swarm.view` until `n` different masters have answered with a view that satisfies
/// `ok`; their latest answers by master.
async fn views_of(
    client: &async_nats::Client,
    swarm: &Swarm,
    n: usize,
    what: &str,
    ok: impl Fn(&ViewReport) -> bool,
) -> HashMap<String, ViewReport> {
    let mut good: HashMap<String, ViewReport> = HashMap::new();
    let mut last: Option<ViewReport> = None;
    let deadline = std::time::Instant::now() + WAIT;
    while good.len() < n && std::time::Instant::now() < deadline {
        if let Ok(r) = request::<_, ViewReport>(client, swarm.subjects.swarm_view(), &()).await {
            match ok(&r) {
                true => good.insert(r.answered_by.clone(), r.clone()),
                false => good.remove(&r.answered_by),
            };
            last = Some(r);
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let found = good.len() >= n;
    assert!(found, "{what}: last answer {last:#?}");
    good
}

fn master_of<'a>(masters: &'a mut [Proc], id: &str) -> &'a mut Proc {
    masters
        .iter_mut()
        .find(|m| m.log_text().contains(id))
        .unwrap_or_else(|| panic!("no master logged its id {id}"))
}

#[tokio::test]
async fn every_master_holds_workers_and_leases_through_a_takeover() {
    let mut swarm = Swarm::start().await.unwrap();
    let mut masters = vec![swarm.master(&[]).unwrap()];
    let _gpu = swarm
        .worker_with_env("w-gpu", 1, &[("VGAS_SIMULATED_GPUS", DEVICE)])
        .unwrap();
    let mut cpu = swarm.worker("w-cpu", 1, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 2).await.unwrap();
    masters.push(swarm.master(&[]).unwrap());

    // A task holding the device.
    let id = TaskId::random();
    let mut spec: TaskSpec = sh("sleep 60");
    spec.task_id = Some(id.clone());
    spec.needs.gpus = Some(GpuNeeds {
        count: 1,
        min_free_mb: None,
        min_compute: None,
        device: None,
    });
    let _: SubmitReply = request(&client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();

    let holds = |r: &ViewReport| {
        r.nodes.len() == 2
            && r.leases.len() == 1
            && r.leases[0].task == id
            && r.leases[0].device == "GPU-view-0"
    };
    let views = views_of(
        &client,
        &swarm,
        2,
        "both masters see both workers and the lease",
        holds,
    )
    .await;
    let leaders: Vec<&ViewReport> = views.values().filter(|r| r.leading).collect();
    assert_eq!(leaders.len(), 1, "one leads: {views:#?}");
    let leader = leaders[0].answered_by.clone();
    for r in views.values() {
        let others: Vec<&String> = views.keys().filter(|k| **k != r.answered_by).collect();
        assert_eq!(
            r.masters.iter().collect::<Vec<_>>(),
            others,
            "each hears the other"
        );
        let gpu = r.nodes.iter().find(|n| n.id.as_str() == "w-gpu").unwrap();
        assert_eq!(gpu.gpus, vec!["GPU-view-0".to_owned()]);
        assert_eq!(r.leases[0].by, leader, "only the leader writes leases");
    }

    // The CLI prints it.
    let out = swarm.cli(&["status", "--view"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("w-gpu") && text.contains("w-cpu"), "{text}");
    assert!(
        text.contains(&format!("GPU w-gpu GPU-view-0: leased to {id}")),
        "{text}"
    );

    // The leader dies; the standby leads, with the same view.
    master_of(&mut masters, &leader).kill();
    let survivor = views_of(
        &client,
        &swarm,
        1,
        "the standby leads with the lease",
        |r| r.leading && r.answered_by != leader && holds(r),
    )
    .await;
    assert_eq!(survivor.len(), 1);

    // Cancelled: the device is given back, and the view says so.
    let out = swarm.cli(&["cancel", id.as_str()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    views_of(&client, &swarm, 1, "the lease is gone from the view", |r| {
        r.leases.is_empty()
    })
    .await;

    // A worker that stops says so: it leaves the view.
    cpu.signal(libc::SIGTERM);
    cpu.wait_exit(WAIT).await.unwrap();
    views_of(
        &client,
        &swarm,
        1,
        "the stopped worker is gone from the view",
        |r| r.nodes.len() == 1 && r.nodes[0].id.as_str() == "w-gpu",
    )
    .await;
}
