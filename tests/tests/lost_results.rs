//! Results that a master could wait for in vain: a lost attempt's result that comes while
//! its task waits to run again; the result of an attempt whose assignment a recovering
//! master sends again after the first copy was taken; an attempt its live worker no longer
//! holds (a worker restarted under its id faster than its silence shows). Each task ends
//! once, without waiting out its deadline.

use std::time::Duration;

use futures::StreamExt;
use vgas_shared::codec::{decode_as, encode};
use vgas_shared::config::Role;
use vgas_shared::wire::{
    AssignAck, Assignment, TaskEvent, TaskOutcome, TaskQuery, TaskRecord, TaskSpec, TaskState,
    WorkerResult,
};
use vgas_shared::{Encoding, TaskId, WorkerId};
use vgas_tests::{
    collect, finished_worker, request, sh, submit_until_started, wait_for, Swarm, WAIT,
};

#[tokio::test]
async fn a_lost_attempt_whose_result_comes_before_the_retry_ends_the_task() {
    // A worker that stops heartbeating loses its attempt and the task waits to run again;
    // if that attempt's result comes before any other attempt is sent (the worker had only
    // paused, or the requeue could not be recorded with the tasks stream between leaders),
    // it ends the task. Ignored as stale, it had left a record still naming the attempt
    // whose result was gone: a new term re-sent it, the worker had run it already, and the
    // task waited out its whole deadline. Made here with w1 frozen mid-task (so the retry
    // has nowhere to go) and its attempt's output and result put into the results stream.
    let (swarm, procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let master = swarm.connect(Role::Master).await.unwrap();
    let id = TaskId::random();
    let spec = TaskSpec {
        task_id: Some(id.clone()),
        ..sh("sleep 60")
    };
    let (events, worker, _) = submit_until_started(&client, &swarm.subjects, spec).await;
    assert_eq!(worker, "w1");
    procs[1].signal(libc::SIGSTOP);
    // The attempt is lost once the record says queued again (no `retrying` yet: that is
    // announced when the next attempt is sent).
    wait_for("w1's attempt to be lost", WAIT, || {
        let (client, q) = (
            client.clone(),
            TaskQuery {
                task_id: id.clone(),
            },
        );
        let subject = swarm.subjects.task_info();
        async move {
            let rec: TaskRecord = request(&client, subject, &q).await.ok()?;
            (rec.state == TaskState::Queued).then_some(())
        }
    })
    .await
    .unwrap();
    let w1 = WorkerId::parse("w1").unwrap();
    let js = async_nats::jetstream::new(master.clone());
    let late = TaskEvent::Stdout {
        attempt: 1,
        data: "late\n".into(),
    };
    let result = WorkerResult {
        task_id: id.clone(),
        attempt: 1,
        worker: w1.clone(),
        outcome: TaskOutcome::Exited { exit_code: 0 },
        duration_ms: 5_000,
        handed_back: false,
        events: Some(1),
    };
    for (subject, payload) in [
        (
            swarm.subjects.worker_events(&w1, &id),
            encode(Encoding::MsgPack, &late).unwrap(),
        ),
        (
            swarm.subjects.result(&w1, &id),
            encode(Encoding::MsgPack, &result).unwrap(),
        ),
    ] {
        js.publish(subject, payload.into())
            .await
            .unwrap()
            .await
            .unwrap();
    }
    let rest = collect(events, WAIT, Duration::from_secs(1)).await;
    procs[1].signal(libc::SIGCONT);
    let rest = rest.expect("the task to end with its lost attempt's result");
    assert_eq!(rest.finished_count(), 1, "{:?}", rest.events);
    assert_eq!(rest.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(finished_worker(&rest.events), "w1");
    assert_eq!(
        rest.stdout, "late\n",
        "the lost attempt's output is relayed"
    );
    assert!(
        rest.events
            .iter()
            .any(|e| matches!(e, TaskEvent::Finished { attempts, .. } if *attempts == 1)),
        "{:?}",
        rest.events
    );
    assert!(
        !rest.events.iter().any(|e| matches!(
            e,
            TaskEvent::Assigned { attempt: 2.., .. } | TaskEvent::Retrying { .. }
        )),
        "no second attempt began: {:?}",
        rest.events
    );
}

#[tokio::test]
async fn an_attempt_assigned_again_after_it_ended_sends_its_result_again() {
    // A master that recovers a record still naming an attempt sends that assignment again;
    // if the attempt's result had been taken and dropped meanwhile (a requeue that could
    // not be recorded, then a new term), nothing else would end the task before its
    // deadline. The worker answers such an assignment with the attempt's result again.
    // Shown here without a master: the test sends w1 an assignment twice, as a master would.
    let (swarm, mut procs, _client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(WAIT).await.unwrap();
    let master = swarm.connect(Role::Master).await.unwrap();
    let w1 = WorkerId::parse("w1").unwrap();
    let id = TaskId::random();
    let mut results = master
        .subscribe(swarm.subjects.result(&w1, &id))
        .await
        .unwrap();
    let assignment = Assignment {
        task_id: id.clone(),
        attempt: 1,
        spec: TaskSpec {
            task_id: Some(id.clone()),
            ..sh("echo once; exit 3")
        },
        encoding: Encoding::MsgPack,
        gpus: Vec::new(),
    };
    let assign = || async {
        let bytes = encode(Encoding::MsgPack, &assignment).unwrap();
        let reply = tokio::time::timeout(
            WAIT,
            master.request(swarm.subjects.worker_task(&w1), bytes.into()),
        )
        .await
        .expect("an acknowledgement")
        .unwrap();
        let ack: AssignAck = decode_as(Encoding::MsgPack, &reply.payload).unwrap();
        assert!(ack.accepted, "{ack:?}");
    };
    assign().await;
    let first = next_result(&mut results).await;
    assert_eq!(first.outcome, TaskOutcome::Exited { exit_code: 3 });
    assert_eq!((first.task_id.clone(), first.attempt), (id.clone(), 1));

    // Sent again: acknowledged, not run again, and the very result sent once more.
    let mut output = master
        .subscribe(swarm.subjects.worker_events(&w1, &id))
        .await
        .unwrap();
    assign().await;
    let again = next_result(&mut results).await;
    assert_eq!(again, first);
    let ran = tokio::time::timeout(Duration::from_secs(1), output.next()).await;
    assert!(ran.is_err(), "the attempt ran again: {ran:?}");
    let js = async_nats::jetstream::new(master.clone());
    let mut stream = js
        .get_stream(swarm.subjects.results_stream())
        .await
        .unwrap();
    let stored = stream.info().await.unwrap().state.messages;
    // The attempt's output events and its result, then the result again: JetStream did not
    // drop the second copy as a duplicate of the first.
    assert!(stored >= 3, "{stored} messages in the results stream");
}

/// The next result on `results`, decoded.
async fn next_result(results: &mut async_nats::Subscriber) -> WorkerResult {
    let msg = tokio::time::timeout(WAIT, results.next())
        .await
        .expect("a result")
        .unwrap();
    decode_as(Encoding::MsgPack, &msg.payload).unwrap()
}

#[tokio::test]
async fn an_attempt_its_live_worker_no_longer_holds_is_assigned_again() {
    // A worker restarted under the same id faster than its silence shows (a service manager
    // restarting it at once) heartbeats on without the attempts its old process held, and
    // their results never come: the master sends such an attempt's assignment again once
    // the worker has not listed it for a while, instead of waiting out the deadline. The
    // test plays worker w9: it heartbeats listing nothing, acknowledges every assignment,
    // and sends the attempt's result only when it is assigned a second time.
    let (swarm, _procs, client) = Swarm::with_workers(&[]).await.unwrap();
    let fake = swarm.connect(Role::Worker).await.unwrap();
    let w9 = WorkerId::parse("w9").unwrap();
    let mut assignments = fake
        .subscribe(swarm.subjects.worker_task(&w9))
        .await
        .unwrap();
    let beats = {
        let (fake, subject) = (fake.clone(), swarm.subjects.heartbeat(&w9));
        let beat = vgas_shared::wire::Heartbeat {
            worker: Some(w9.clone()),
            slots: 1,
            free_slots: 1,
            cpus: 1,
            hostname: "w9".into(),
            ..Default::default()
        };
        let bytes = bytes::Bytes::from(encode(Encoding::MsgPack, &beat).unwrap());
        tokio::spawn(async move {
            for _ in 0..120 {
                fake.publish(subject.clone(), bytes.clone()).await.unwrap();
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        })
    };
    swarm.wait_workers(&client, 1).await.unwrap();
    let id = TaskId::random();
    let events = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let spec = TaskSpec {
        task_id: Some(id.clone()),
        ..sh("true")
    };
    let _: vgas_shared::wire::SubmitReply = request(&client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();
    assert_eq!(take(&fake, &mut assignments).await, (id.clone(), 1));
    let again = std::time::Instant::now();
    assert_eq!(
        take(&fake, &mut assignments).await,
        (id.clone(), 1),
        "the same attempt, sent again"
    );
    eprintln!("assigned again {:?} after the first", again.elapsed());
    let result = WorkerResult {
        task_id: id.clone(),
        attempt: 1,
        worker: w9.clone(),
        outcome: TaskOutcome::Exited { exit_code: 0 },
        duration_ms: 1,
        handed_back: false,
        events: Some(0),
    };
    let js = async_nats::jetstream::new(fake.clone());
    js.publish(
        swarm.subjects.result(&w9, &id),
        encode(Encoding::MsgPack, &result).unwrap().into(),
    )
    .await
    .unwrap()
    .await
    .unwrap();
    let seen = collect(events, WAIT, Duration::from_millis(500))
        .await
        .unwrap();
    beats.abort();
    assert_eq!(seen.finished_count(), 1, "{:?}", seen.events);
    assert_eq!(seen.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(finished_worker(&seen.events), "w9");
    let started = seen
        .events
        .iter()
        .filter(|e| matches!(e, TaskEvent::Started { .. }))
        .count();
    assert_eq!(
        started, 1,
        "acknowledged twice, started once: {:?}",
        seen.events
    );
}

/// Takes the next assignment on `assignments` as a worker would (acknowledged, accepted);
/// its task and attempt.
async fn take(
    worker: &async_nats::Client,
    assignments: &mut async_nats::Subscriber,
) -> (TaskId, u32) {
    let msg = tokio::time::timeout(Duration::from_secs(40), assignments.next())
        .await
        .expect("an assignment")
        .unwrap();
    let a: Assignment = decode_as(Encoding::MsgPack, &msg.payload).unwrap();
    let ack = AssignAck {
        accepted: true,
        reason: String::new(),
        queued: false,
    };
    let reply = msg.reply.expect("a request");
    worker
        .publish(reply, encode(Encoding::MsgPack, &ack).unwrap().into())
        .await
        .unwrap();
    (a.task_id, a.attempt)
}

#[tokio::test]
async fn a_worker_restarted_at_once_under_its_id_leaves_no_task_waiting_for_its_deadline() {
    // The same as a real worker: w1 is killed mid-task and started again under its id at
    // once. Whether the master saw it fall silent (the lapse) or not (the audit), the task
    // ends well before its 300 s deadline, once.
    let (mut swarm, mut procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let id = TaskId::random();
    let spec = TaskSpec {
        task_id: Some(id.clone()),
        ..sh("sleep 2; echo done")
    };
    let (events, worker, _) = submit_until_started(&client, &swarm.subjects, spec).await;
    assert_eq!(worker, "w1");
    procs[1].signal(libc::SIGKILL);
    procs[1].wait_exit(WAIT).await.unwrap();
    let _w1 = swarm.worker("w1", 1, &[]).unwrap();
    let seen = collect(events, Duration::from_secs(60), Duration::from_millis(500))
        .await
        .expect("the task to end within a minute");
    assert_eq!(seen.finished_count(), 1, "{:?}", seen.events);
    assert_eq!(seen.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert!(seen.stdout.ends_with("done\n"), "{:?}", seen.stdout);
}
