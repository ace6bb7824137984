//! The native sandbox through the whole swarm: a fork bomb, an endless loop, a memory hog and
//! a write outside the task directory each end as a clear failed result, and the worker stays
//! healthy and keeps serving.

use std::time::Duration;

use vgas_shared::config::Role;
use vgas_shared::wire::{SwarmPulse, TaskOutcome, TaskSpec};
use vgas_tests::{request, run_task, sh, Swarm};

fn with(mut spec: TaskSpec, f: impl FnOnce(&mut TaskSpec)) -> TaskSpec {
    f(&mut spec);
    spec
}

#[tokio::test]
async fn hostile_tasks_fail_cleanly_and_the_worker_keeps_serving() {
    let mut swarm = Swarm::start().await.unwrap();
    let _m = swarm.master(&[]).unwrap();
    let mut w = swarm.worker("w1", 2, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    let pulse = swarm.wait_workers(&client, 1).await.unwrap();
    let isolation = pulse.live[0].isolation.clone();
    let s = swarm.subjects.clone();
    let marker = format!("/tmp/vgas-escape-{}", vgas_shared::TaskId::random());

    let endless = with(sh("while :; do :; done"), |t| t.deadline_s = Some(2));
    let fork_bomb = with(sh("bomb() { bomb | bomb; }; bomb"), |t| {
        t.deadline_s = Some(10);
        t.limits.max_processes = Some(64);
    });
    let memory_hog = with(sh("head -c 2000000000 /dev/zero | tail > /dev/null"), |t| {
        t.limits.memory_mb = Some(128);
    });
    let escape = sh(&format!("echo pwned > {marker}"));
    let noisy = with(sh("yes vgas"), |t| t.limits.output_cap_mb = Some(1));

    let c = run_task(&client, &s, endless, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.outcome(), TaskOutcome::TimedOut { deadline_s: 2 });

    let c = run_task(&client, &s, fork_bomb, Duration::ZERO)
        .await
        .unwrap();
    assert!(!c.outcome().succeeded(), "fork bomb: {:?}", c.outcome());
    assert!(
        c.stderr.contains("fork")
            || c.stderr.contains("Resource")
            || matches!(c.outcome(), TaskOutcome::TimedOut { .. }),
        "fork bomb should hit the process limit: {:?} {}",
        c.outcome(),
        c.stderr
    );

    let c = run_task(&client, &s, memory_hog, Duration::ZERO)
        .await
        .unwrap();
    assert!(!c.outcome().succeeded(), "memory hog: {:?}", c.outcome());

    let c = run_task(&client, &s, noisy, Duration::ZERO).await.unwrap();
    assert!(
        matches!(c.outcome(), TaskOutcome::LimitExceeded { ref limit, .. } if limit == "output"),
        "{:?}",
        c.outcome()
    );
    assert!(
        c.stdout.len() <= 1024 * 1024 + 16 * 1024,
        "{} bytes got through",
        c.stdout.len()
    );

    let c = run_task(&client, &s, escape, Duration::ZERO).await.unwrap();
    if isolation == "full" {
        assert!(
            !c.outcome().succeeded(),
            "write outside the task dir succeeded"
        );
        assert!(
            c.stderr.contains("Read-only") || c.stderr.contains("ermission"),
            "{}",
            c.stderr
        );
        assert!(
            !std::path::Path::new(&marker).exists(),
            "{marker} was written"
        );
    } else {
        eprintln!("SKIPPED the escape check: this host's isolation is {isolation:?}, not full (needs root)");
        let _ = std::fs::remove_file(&marker);
    }

    // Still healthy: live, and serving.
    let c = run_task(&client, &s, sh("echo alive"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "alive\n");
    let p: SwarmPulse = request(&client, s.status(), &()).await.unwrap();
    assert_eq!(p.live.len(), 1);
    assert!(p.abnormal.is_empty(), "{p:?}");
    assert!(
        w.wait_exit(Duration::from_millis(10)).await.is_err(),
        "worker died"
    );
}
