//! A worker's queue ahead of its slots (`--queue-ahead`): the master hands it tasks beyond
//! its slots once every slot in the swarm is taken; each waits there for a slot in turn,
//! its `started` event comes when it really starts, and one cancelled or handed back while
//! it waits never runs.

use std::time::{Duration, Instant};

use vgas_shared::config::Role;
use vgas_shared::wire::{CancelReply, SubmitReply, SwarmPulse, TaskEvent, TaskOutcome, TaskQuery};
use vgas_shared::TaskId;
use vgas_tests::{collect, request, sh, subscribe_events, Swarm, WAIT};

fn starts(events: &[TaskEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, TaskEvent::Started { .. }))
        .count()
}

#[tokio::test]
async fn queued_tasks_start_in_turn_and_one_cancelled_while_queued_never_runs() {
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let _worker = swarm.worker("w1", 1, &["--queue-ahead", "2"]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();

    let ids: Vec<TaskId> = (0..3).map(|_| TaskId::random()).collect();
    let subs = subscribe_events(&client, &swarm.subjects, &ids)
        .await
        .unwrap();
    let scripts = ["sleep 1.5; echo first", "echo second", "echo never"];
    let t0 = Instant::now();
    for (id, script) in ids.iter().zip(scripts) {
        let mut spec = sh(script);
        spec.task_id = Some(id.clone());
        let _: SubmitReply = request(&client, swarm.subjects.submit(), &spec)
            .await
            .unwrap();
    }
    // All three on the worker (one slot, two queued there), none in the master's queue.
    let pulse: SwarmPulse = request(&client, swarm.subjects.status(), &())
        .await
        .unwrap();
    assert_eq!(pulse.queue_depth, 0, "{pulse:?}");
    assert_eq!(pulse.live[0].in_flight, 3, "{pulse:?}");
    // The third is cancelled while it waits behind the first.
    let q = TaskQuery {
        task_id: ids[2].clone(),
    };
    let c: CancelReply = request(&client, swarm.subjects.task_cancel(), &q)
        .await
        .unwrap();
    assert!(c.cancelling);

    let mut subs = subs.into_iter();
    let mut next = || subs.next().unwrap();
    let first = collect(next(), WAIT, Duration::from_millis(300))
        .await
        .unwrap();
    let second = collect(next(), WAIT, Duration::from_millis(300))
        .await
        .unwrap();
    let third = collect(next(), WAIT, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(first.stdout, "first\n");
    assert_eq!(second.stdout, "second\n");
    // The second ran only once the first gave its slot back, and said `started` once.
    assert!(t0.elapsed() >= Duration::from_millis(1500));
    assert_eq!(starts(&first.events), 1, "{:?}", first.events);
    assert_eq!(starts(&second.events), 1, "{:?}", second.events);
    assert_eq!(second.finished_count(), 1);
    // The cancelled one never started.
    assert_eq!(third.outcome(), TaskOutcome::Cancelled);
    assert_eq!(starts(&third.events), 0, "{:?}", third.events);
    assert_eq!(third.stdout, "");
}

#[tokio::test]
async fn a_draining_worker_hands_back_what_it_queued_and_another_runs_it() {
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let w1 = swarm
        .worker("w1", 1, &["--queue-ahead", "1", "--drain-timeout", "10"])
        .unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();

    let ids: Vec<TaskId> = (0..2).map(|_| TaskId::random()).collect();
    let subs = subscribe_events(&client, &swarm.subjects, &ids)
        .await
        .unwrap();
    for (id, script) in ids.iter().zip(["sleep 1; echo running", "echo queued"]) {
        let mut spec = sh(script);
        spec.task_id = Some(id.clone());
        let _: SubmitReply = request(&client, swarm.subjects.submit(), &spec)
            .await
            .unwrap();
    }
    // SIGTERM: the running task finishes; the queued one goes back, to the next worker.
    tokio::time::sleep(Duration::from_millis(300)).await;
    w1.signal(libc::SIGTERM);
    let _w2 = swarm.worker("w2", 1, &[]).unwrap();
    let mut subs = subs.into_iter();
    let running = collect(subs.next().unwrap(), WAIT * 2, Duration::from_millis(300))
        .await
        .unwrap();
    let queued = collect(subs.next().unwrap(), WAIT * 2, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(running.stdout, "running\n");
    assert_eq!(running.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(queued.stdout, "queued\n");
    assert_eq!(queued.finished_count(), 1);
    let Some(TaskEvent::Finished { worker, .. }) = queued.finished() else {
        unreachable!()
    };
    assert_eq!(worker.as_ref().map(|w| w.as_str()), Some("w2"));
    assert!(
        queued
            .events
            .iter()
            .any(|e| matches!(e, TaskEvent::Retrying { .. })),
        "{:?}",
        queued.events
    );
}
