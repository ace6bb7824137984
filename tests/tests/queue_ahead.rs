//! A worker's queue ahead of its slots (`--queue-ahead`): the master hands it tasks beyond
//! its slots once every slot in the swarm is taken; each waits there for a slot in turn,
//! its `started` event comes only once it has taken one (said by the worker after it has
//! run a while or printed, or announced from its result), and one cancelled or handed back
//! while it waits never runs.

use std::time::{Duration, Instant};

use futures::StreamExt;
use vgas_shared::codec::{decode_as, encode};
use vgas_shared::config::Role;
use vgas_shared::wire::{
    AssignAck, Assignment, CancelReply, Heartbeat, SubmitReply, SwarmPulse, TaskEvent, TaskOutcome,
    TaskQuery,
};
use vgas_shared::{Encoding, TaskId, WorkerId};
use vgas_tests::{collect, request, sh, subscribe_events, Collected, Swarm, WAIT};

fn starts(events: &[TaskEvent]) -> usize {
    events
        .iter()
        .filter(|e| matches!(e, TaskEvent::Started { .. }))
        .count()
}

/// Submits shell `script` under task id `id`.
async fn submit_as(client: &async_nats::Client, swarm: &Swarm, id: &TaskId, script: &str) {
    let mut spec = sh(script);
    spec.task_id = Some(id.clone());
    let _: SubmitReply = request(client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();
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
        submit_as(&client, &swarm, id, script).await;
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

/// What a task's events say, in order, without their contents.
fn kinds(events: &[TaskEvent]) -> Vec<&'static str> {
    events
        .iter()
        .map(|e| match e {
            TaskEvent::Assigned { .. } => "assigned",
            TaskEvent::Started { .. } => "started",
            TaskEvent::Stdout { .. } => "stdout",
            TaskEvent::Finished { .. } => "finished",
            _ => "other",
        })
        .collect()
}

/// Runs `scripts` on one worker of one slot that queues the rest (`--started-after-ms
/// ms`), the first taking the slot: each task's collected events, and what the worker
/// itself said on its event subject for each (a queued attempt's `started`, output).
async fn queued_behind_one(
    started_after_ms: &str,
    scripts: &[&str],
) -> (Vec<Collected>, Vec<Vec<&'static str>>) {
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let args = ["--queue-ahead", "3", "--started-after-ms", started_after_ms];
    let _worker = swarm.worker("w1", 1, &args).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let w1 = WorkerId::parse("w1").unwrap();
    let mut said = client
        .subscribe(swarm.subjects.worker_events_of(&w1))
        .await
        .unwrap();
    let ids: Vec<TaskId> = scripts.iter().map(|_| TaskId::random()).collect();
    let subs = subscribe_events(&client, &swarm.subjects, &ids)
        .await
        .unwrap();
    for (id, script) in ids.iter().zip(scripts) {
        submit_as(&client, &swarm, id, script).await;
    }
    let mut done = Vec::new();
    for sub in subs {
        let c = collect(sub, WAIT, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });
        done.push(c);
    }
    let mut by_task = vec![Vec::new(); ids.len()];
    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(300), said.next()).await {
        let ev: TaskEvent = decode_as(Encoding::detect(&msg.payload), &msg.payload).unwrap();
        let task = ids
            .iter()
            .position(|id| msg.subject.ends_with(id.as_str()))
            .expect("an event of one of these tasks");
        by_task[task].extend(kinds(std::slice::from_ref(&ev)));
    }
    (done, by_task)
}

/// A queued attempt says `started` itself only once it has run `--started-after-ms`, or
/// before its first output: one that ends sooner says nothing before its result, and the
/// master announces its `started` from the result, just before `finished` (one event fewer
/// through the results stream). Every task's events read the same whichever way its
/// `started` came.
#[tokio::test]
async fn a_queued_task_says_started_only_after_a_while_or_before_its_output() {
    let scripts = ["sleep 1", "true", "sleep 0.5", "echo said"];
    let plain = ["assigned", "started", "finished"];
    let printed = ["assigned", "started", "stdout", "finished"];
    let read = |done: &[Collected]| {
        assert_eq!(kinds(&done[0].events), plain);
        assert_eq!(kinds(&done[1].events), plain);
        assert_eq!(kinds(&done[2].events), plain);
        assert_eq!(kinds(&done[3].events), printed);
    };
    let none: [&str; 0] = [];
    // Never within these tasks' time: only the printing one says it, before its output.
    let (done, said) = queued_behind_one("60000", &scripts).await;
    read(&done);
    assert_eq!(said, [&none[..], &none, &none, &["started", "stdout"]]);
    // At once, as every queued attempt did before: each of the three queued says it.
    let (done, said) = queued_behind_one("0", &scripts).await;
    read(&done);
    assert_eq!(
        said,
        [
            &none[..],
            &["started"],
            &["started"],
            &["started", "stdout"]
        ]
    );
    // After a while: said by a task that runs past it, while it runs.
    let (done, said) = queued_behind_one("200", &["sleep 0.5", "sleep 0.6"]).await;
    assert_eq!(kinds(&done[1].events), plain);
    assert_eq!(said, [&none[..], &["started"]]);
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
    // The first runs, the second waits in w1's queue: each submitted once w1 lists the one
    // before in its heartbeat (submitted together, the two assignments could reach w1 in
    // either order under load, and the second could take the slot).
    let observer = swarm.connect(Role::Master).await.unwrap();
    let w1_id = WorkerId::parse("w1").unwrap();
    for (id, script) in ids.iter().zip(["sleep 5; echo running", "echo queued"]) {
        submit_as(&client, &swarm, id, script).await;
        let held = Instant::now();
        while !next_beat(&observer, &swarm, &w1_id)
            .await
            .running
            .contains(&(id.clone(), 1))
        {
            assert!(held.elapsed() < WAIT, "w1 never listed {id}");
        }
    }
    // SIGTERM: the running task finishes; the queued one goes back, to the next worker.
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

/// The next heartbeat of `worker`, as the master reads it.
async fn next_beat(observer: &async_nats::Client, swarm: &Swarm, worker: &WorkerId) -> Heartbeat {
    let mut beats = observer
        .subscribe(swarm.subjects.heartbeat(worker))
        .await
        .unwrap();
    let msg = tokio::time::timeout(WAIT, beats.next())
        .await
        .expect("a heartbeat")
        .unwrap();
    decode_as(Encoding::MsgPack, &msg.payload).unwrap()
}

/// Sends `worker` an assignment as the master does and returns its answer.
async fn assign(observer: &async_nats::Client, swarm: &Swarm, worker: &WorkerId) -> AssignAck {
    send_assignment(observer, swarm, worker, TaskId::random(), sh("sleep 2")).await
}

/// Sends `worker` attempt 1 of task `id` with `spec`, as the master does, and returns its
/// answer.
async fn send_assignment(
    observer: &async_nats::Client,
    swarm: &Swarm,
    worker: &WorkerId,
    id: TaskId,
    spec: vgas_shared::wire::TaskSpec,
) -> AssignAck {
    let a = Assignment {
        task_id: id,
        attempt: 1,
        spec,
        encoding: Encoding::Json,
        gpus: Vec::new(),
    };
    let bytes = encode(Encoding::MsgPack, &a).unwrap();
    let reply = observer
        .request(swarm.subjects.worker_task(worker), bytes.into())
        .await
        .unwrap();
    decode_as(Encoding::MsgPack, &reply.payload).unwrap()
}

#[tokio::test]
async fn a_worker_offers_its_queue_in_heartbeats_and_takes_no_more_than_it_offered() {
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let _w1 = swarm.worker("w1", 1, &["--queue-ahead", "1"]).unwrap();
    // Without the flag: one per slot until its tasks' length says how many it needs.
    let _w2 = swarm.worker("w2", 2, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 2).await.unwrap();
    let observer = swarm.connect(Role::Master).await.unwrap();
    let (w1, w2) = (
        WorkerId::parse("w1").unwrap(),
        WorkerId::parse("w2").unwrap(),
    );
    assert_eq!(next_beat(&observer, &swarm, &w1).await.queue_ahead, 1);
    assert_eq!(next_beat(&observer, &swarm, &w2).await.queue_ahead, 2);

    // One slot and one place ahead of it: a third assignment is refused, not queued.
    let acks = [
        assign(&observer, &swarm, &w1).await,
        assign(&observer, &swarm, &w1).await,
        assign(&observer, &swarm, &w1).await,
    ];
    assert!(acks[0].accepted && !acks[0].queued, "{acks:?}");
    assert!(acks[1].accepted && acks[1].queued, "{acks:?}");
    assert!(!acks[2].accepted, "{acks:?}");
    assert_eq!(acks[2].reason, "no free slot");
}

#[tokio::test]
async fn a_cancel_that_overtakes_its_assignment_still_stops_the_attempt() {
    // The master's cancel and its assignment leave from different tasks; a cancel that comes
    // first must not be lost: the attempt ends cancelled and never runs. No master here: the
    // test speaks for it.
    let mut swarm = Swarm::start().await.unwrap();
    let _w1 = swarm.worker("w1", 1, &[]).unwrap();
    let observer = swarm.connect(Role::Master).await.unwrap();
    let w1 = WorkerId::parse("w1").unwrap();
    next_beat(&observer, &swarm, &w1).await;
    let id = TaskId::random();
    let mut results = observer
        .subscribe(swarm.subjects.result(&w1, &id))
        .await
        .unwrap();
    let mut events = observer
        .subscribe(swarm.subjects.worker_events(&w1, &id))
        .await
        .unwrap();
    let cancel = vgas_shared::wire::CancelAttempt {
        task_id: id.clone(),
        attempt: 1,
    };
    let bytes = encode(Encoding::MsgPack, &cancel).unwrap();
    observer
        .publish(swarm.subjects.worker_cancel(&w1), bytes.into())
        .await
        .unwrap();
    observer.flush().await.unwrap();
    let ack = send_assignment(&observer, &swarm, &w1, id.clone(), sh("echo ran")).await;
    assert!(ack.accepted, "{ack:?}");
    let msg = tokio::time::timeout(WAIT, results.next())
        .await
        .expect("a result")
        .unwrap();
    let r: vgas_shared::wire::WorkerResult = decode_as(Encoding::MsgPack, &msg.payload).unwrap();
    assert_eq!(r.outcome, TaskOutcome::Cancelled, "{r:?}");
    assert!(!r.handed_back, "{r:?}");
    // It never ran: no output came.
    let late = tokio::time::timeout(Duration::from_millis(300), events.next()).await;
    assert!(
        late.is_err(),
        "an event of an attempt that never ran: {late:?}"
    );
}

/// `--started-after-ms` takes a number of milliseconds up to a minute; anything else is
/// refused at start with the reason, before the worker connects to anything.
#[test]
fn a_started_after_past_a_minute_or_not_a_number_is_refused() {
    for (value, says) in [("70000", "over the most"), ("soon", "not a number")] {
        let out = std::process::Command::new(vgas_tests::bin("vgas-worker"))
            .args(["--started-after-ms", value])
            .output()
            .unwrap();
        assert!(!out.status.success());
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(says), "{value}: {err}");
    }
}
