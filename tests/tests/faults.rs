//! Faults: a worker killed mid-task, a master killed and restarted, a worker draining on
//! SIGTERM, and a nats-server restart. In each case the submitter sees exactly one final
//! result and no accepted task is lost.

use std::time::Duration;

use futures::StreamExt;
use vgas_shared::codec::decode_as;
use vgas_shared::config::Role;
use vgas_shared::wire::{SubmitReply, TaskEvent, TaskOutcome, TaskSpec};
use vgas_shared::{Encoding, TaskId};
use vgas_tests::{
    collect, finished_worker, request, run_task, sh, submit_until_started, wait_for, Swarm, WAIT,
};

#[tokio::test]
async fn worker_killed_mid_task_the_task_completes_elsewhere() {
    let (swarm, procs, client) = Swarm::with_workers(&[("w1", 1), ("w2", 1)]).await.unwrap();

    let (sub, first, _) =
        submit_until_started(&client, &swarm.subjects, sh("sleep 2; echo done")).await;
    if first == "w1" {
        procs[1].signal(libc::SIGKILL)
    } else {
        procs[2].signal(libc::SIGKILL)
    }
    let c = collect(sub, WAIT * 2, Duration::from_secs(2))
        .await
        .unwrap();
    assert_eq!(c.finished_count(), 1, "{:?}", c.events);
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_ne!(finished_worker(&c.events), first);
    assert!(c
        .events
        .iter()
        .any(|e| matches!(e, TaskEvent::Retrying { reason, .. } if reason.contains("heartbeat"))));
    // The killed worker is reported abnormal with the reason.
    let p: vgas_shared::wire::SwarmPulse = request(&client, swarm.subjects.status(), &())
        .await
        .unwrap();
    assert!(
        p.abnormal
            .iter()
            .any(|a| a.id.as_str() == first && a.reason.contains("heartbeat")),
        "{p:?}"
    );
}

#[tokio::test]
async fn master_killed_and_restarted_resumes_every_accepted_task() {
    let (mut swarm, mut procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();

    // One task running, one queued behind it (the worker has one slot).
    let (running, _, _) =
        submit_until_started(&client, &swarm.subjects, sh("sleep 3; echo first")).await;
    let queued_id = TaskId::random();
    let mut queued = sh("echo second");
    queued.task_id = Some(queued_id.clone());
    let queued_sub = client
        .subscribe(swarm.subjects.task_events(&queued_id))
        .await
        .unwrap();
    let _: SubmitReply = request(&client, swarm.subjects.submit(), &queued)
        .await
        .unwrap();

    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(WAIT).await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let _master2 = swarm.master(&[]).unwrap();

    let a = collect(running, WAIT * 2, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(a.finished_count(), 1, "{:?}", a.events);
    assert_eq!(a.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(a.stdout, "first\n");
    let b = collect(queued_sub, WAIT * 2, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(b.finished_count(), 1, "{:?}", b.events);
    assert_eq!(b.stdout, "second\n");
}

/// One `task.run` request: its answer, the `finished` event (or the refusal as an error).
async fn run_request(
    client: &async_nats::Client,
    swarm: &Swarm,
    spec: &TaskSpec,
    within: Duration,
) -> anyhow::Result<TaskEvent> {
    let bytes = vgas_shared::codec::encode(Encoding::MsgPack, spec)?;
    let msg = tokio::time::timeout(
        within,
        client.request(swarm.subjects.task_run(), bytes.into()),
    )
    .await??;
    let reply: vgas_shared::codec::Reply<TaskEvent> = decode_as(Encoding::MsgPack, &msg.payload)?;
    Ok(reply.into_result()?)
}

/// `task.run`'s wait is not durable but its task is: a caller whose master is killed runs
/// the same id again on the next master and gets the task's one outcome, and the task ran
/// once.
#[tokio::test]
async fn a_task_run_whose_master_is_killed_is_answered_on_a_rerun_by_the_next_master() {
    let (mut swarm, mut procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let id = TaskId::random();
    let mut spec = sh("sleep 2; echo ran; exit 7");
    spec.task_id = Some(id.clone());
    let events = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let waiting = {
        let (client, swarm_subjects, spec) = (client.clone(), swarm.subjects.clone(), spec.clone());
        tokio::spawn(async move {
            let bytes = vgas_shared::codec::encode(Encoding::MsgPack, &spec).unwrap();
            client
                .request(swarm_subjects.task_run(), bytes.into())
                .await
        })
    };
    // Running on the worker: the master goes.
    let info = loop {
        let q = vgas_shared::wire::TaskQuery {
            task_id: id.clone(),
        };
        if let Ok(rec) =
            request::<_, vgas_shared::wire::TaskRecord>(&client, swarm.subjects.task_info(), &q)
                .await
        {
            if matches!(rec.state, vgas_shared::wire::TaskState::Assigned { .. }) {
                break rec;
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(info.attempt, 1);
    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(WAIT).await.unwrap();
    waiting.abort();
    let _master2 = swarm.master(&[]).unwrap();

    // Run again until the new master answers (no responders while it starts).
    let deadline = tokio::time::Instant::now() + WAIT * 2;
    let fin = loop {
        match run_request(&client, &swarm, &spec, WAIT * 2).await {
            Ok(fin) => break fin,
            Err(e) if tokio::time::Instant::now() < deadline => {
                println!("rerun: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => panic!("no answer from the next master: {e:#}"),
        }
    };
    let TaskEvent::Finished {
        task_id,
        outcome,
        attempts,
        ..
    } = &fin
    else {
        panic!("not a finished event: {fin:?}");
    };
    assert_eq!((task_id, attempts), (&id, &1));
    assert_eq!(*outcome, TaskOutcome::Exited { exit_code: 7 });
    // Ended now: a rerun is answered at once from the record, with the same event.
    let again = run_request(&client, &swarm, &spec, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(again, fin);
    let seen = collect(events, WAIT, Duration::from_secs(1)).await.unwrap();
    assert_eq!(seen.finished_count(), 1, "{:?}", seen.events);
    assert_eq!(seen.stdout, "ran\n", "the task ran once");
}

/// Runs `echo once` on worker w1 to its end and returns its id and the result message the
/// worker sent (offered to the master, caught on its direct subject by `master`), to be put
/// into the results stream as the worker's stored copy would be.
async fn run_once_on_w1(
    client: &async_nats::Client,
    master: &async_nats::Client,
    swarm: &Swarm,
) -> (TaskId, async_nats::Message) {
    let id = TaskId::random();
    let worker = vgas_shared::WorkerId::parse("w1").unwrap();
    let mut results = master
        .subscribe(swarm.subjects.result_direct(&worker, &id))
        .await
        .unwrap();
    let mut spec = sh("echo once");
    spec.task_id = Some(id.clone());
    let first = run_task(client, &swarm.subjects, spec, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(first.outcome(), TaskOutcome::Exited { exit_code: 0 });
    let sent = tokio::time::timeout(WAIT, results.next())
        .await
        .expect("the worker's result")
        .unwrap();
    (id, sent)
}

#[tokio::test]
async fn a_task_recorded_finished_but_unannounced_is_announced_by_the_next_master() {
    // The state a master leaves when killed after writing a task's final record and before
    // announcing it: the record finished, the worker's result still in the results stream.
    // It is made here by running a task to its end, then putting the very result the
    // worker sent back into the stream while no master runs.
    let (mut swarm, mut procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let master = swarm.connect(Role::Master).await.unwrap();
    let (id, sent) = run_once_on_w1(&client, &master, &swarm).await;
    let w1 = vgas_shared::WorkerId::parse("w1").unwrap();
    // The master that announced it gets the same result once more (its acknowledgement
    // lost with a server of a cluster, say): it announces nothing again.
    let js = async_nats::jetstream::new(master.clone());
    assert!(
        republished_in_silence(&client, &swarm, &js, &id, sent.payload.clone()).await,
        "a result again announced a task its master announced"
    );

    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(WAIT).await.unwrap();
    js.publish(swarm.subjects.result(&w1, &id), sent.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    let events = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let _master2 = swarm.master(&[]).unwrap();
    let again = collect(events, WAIT, Duration::from_secs(1)).await.unwrap();
    assert_eq!(again.finished_count(), 1, "{:?}", again.events);
    assert_eq!(again.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(finished_worker(&again.events), "w1");

    // Nor does the next master, once it has announced it.
    assert!(
        republished_in_silence(&client, &swarm, &js, &id, sent.payload.clone()).await,
        "a result again announced a task the next master announced"
    );

    // A result of another attempt (a stale one) did not finish the task: not announced.
    let (mut stale, enc) = {
        let enc = Encoding::detect(&sent.payload);
        let r: vgas_shared::wire::WorkerResult = decode_as(enc, &sent.payload).unwrap();
        (r, enc)
    };
    stale.attempt += 1;
    let payload = vgas_shared::codec::encode(enc, &stale).unwrap();
    assert!(
        republished_in_silence(&client, &swarm, &js, &id, payload.into()).await,
        "an event for a stale attempt's result"
    );
}

#[tokio::test]
async fn a_standby_that_heard_a_task_announced_stays_silent_when_it_takes_over() {
    // The state a leader leaves when killed between announcing a task and acknowledging the
    // result that ended it: the task announced, the result still in the results stream.
    // Made here by running a task to its end with a second master standing by, then killing
    // the leader and putting the very result the worker sent back into the stream. The
    // standby heard the announcement: when it takes over and gets the result, it announces
    // nothing again (before it listened, it announced the task a second time).
    let (mut swarm, mut procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let standby = swarm.master(&[]).unwrap();
    wait_for("the second master standing by", WAIT, || {
        let standing = standby
            .log_text()
            .contains("another master leads: standing by");
        async move { standing.then_some(()) }
    })
    .await
    .unwrap();
    let master = swarm.connect(Role::Master).await.unwrap();
    let (id, sent) = run_once_on_w1(&client, &master, &swarm).await;
    let w1 = vgas_shared::WorkerId::parse("w1").unwrap();

    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(WAIT).await.unwrap();
    let mut events = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let js = async_nats::jetstream::new(master.clone());
    js.publish(swarm.subjects.result(&w1, &id), sent.payload.clone())
        .await
        .unwrap()
        .await
        .unwrap();
    // The standby takes over once the lease lapses, and takes the result: nothing left in
    // the results stream (acknowledged results leave it).
    let results_stream = swarm.subjects.results_stream();
    wait_for("the standby to take the result", WAIT * 2, || async {
        let mut stream = js.get_stream(&results_stream).await.ok()?;
        let info = stream.info().await.ok()?;
        (info.state.messages == 0).then_some(())
    })
    .await
    .unwrap();
    assert!(
        standby.log_text().contains("leading the swarm"),
        "the standby leads now"
    );
    let heard = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
    assert!(
        heard.is_err(),
        "the task was announced again: {heard:?}\n{}",
        standby.log_text()
    );
}

/// Puts `payload` into the results stream as worker w1's result for `id`, and says whether
/// no event of that task followed within two seconds.
async fn republished_in_silence(
    client: &async_nats::Client,
    swarm: &Swarm,
    js: &async_nats::jetstream::Context,
    id: &TaskId,
    payload: bytes::Bytes,
) -> bool {
    let worker = vgas_shared::WorkerId::parse("w1").unwrap();
    let events = client
        .subscribe(swarm.subjects.task_events(id))
        .await
        .unwrap();
    js.publish(swarm.subjects.result(&worker, id), payload)
        .await
        .unwrap()
        .await
        .unwrap();
    tokio::time::timeout(Duration::from_secs(2), events.into_future())
        .await
        .is_err()
}

/// Tasks in the burst of `a_master_killed_in_the_middle_of_a_burst_loses_no_accepted_task`.
const BURST: usize = 60;

#[tokio::test]
async fn a_master_killed_in_the_middle_of_a_burst_loses_no_accepted_task() {
    // The master writes a turn's assignments and final records together and acknowledges
    // results only after: a SIGKILL between any two of those steps must lose nothing and
    // finish nothing twice.
    let (mut swarm, mut procs, client) = Swarm::with_workers(&[("w1", 4)]).await.unwrap();
    let mut subs = Vec::with_capacity(BURST);
    let mut submits = Vec::with_capacity(BURST);
    for n in 0..BURST {
        let id = TaskId::random();
        let mut spec = sh(&format!("sleep 0.0{}; echo {n}", n % 10));
        spec.task_id = Some(id.clone());
        subs.push(
            client
                .subscribe(swarm.subjects.task_events(&id))
                .await
                .unwrap(),
        );
        let (client, subject) = (client.clone(), swarm.subjects.submit());
        submits.push(async move {
            let _: SubmitReply = request(&client, subject, &spec).await.unwrap();
        });
    }
    futures::future::join_all(submits).await;
    // Some tasks are done, some running, most still queued when the master dies.
    tokio::time::sleep(Duration::from_millis(150)).await;
    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(WAIT).await.unwrap();
    let _master2 = swarm.master(&[]).unwrap();
    let collected = futures::future::join_all(
        subs.into_iter()
            .map(|sub| collect(sub, WAIT * 4, Duration::from_secs(1))),
    )
    .await;
    for (n, c) in collected.into_iter().enumerate() {
        let c = c.unwrap_or_else(|e| panic!("task {n}: {e:#}"));
        assert_eq!(c.finished_count(), 1, "task {n}: {:?}", c.events);
        assert_eq!(
            c.outcome(),
            TaskOutcome::Exited { exit_code: 0 },
            "task {n}"
        );
        assert!(
            c.stdout.ends_with(&format!("{n}\n")),
            "task {n}: {:?}",
            c.stdout
        );
    }
}

#[tokio::test]
async fn sigterm_drains_running_tasks_then_leaves() {
    let (swarm, mut procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();

    let (sub, _, _) = submit_until_started(
        &client,
        &swarm.subjects,
        sh("sleep 2; echo finished anyway"),
    )
    .await;
    procs[1].signal(libc::SIGTERM);
    let c = collect(sub, WAIT, Duration::ZERO).await.unwrap();
    assert_eq!(c.stdout, "finished anyway\n");
    assert!(c.outcome().succeeded());
    assert!(
        procs[1].wait_exit(WAIT).await.unwrap().success(),
        "{}",
        procs[1].log_text()
    );
    swarm.wait_workers(&client, 0).await.unwrap();
}

#[tokio::test]
async fn a_draining_worker_hands_back_what_it_cannot_finish() {
    let mut swarm = Swarm::start().await.unwrap();
    let _m = swarm.master(&[]).unwrap();
    let mut w1 = swarm.worker("w1", 1, &["--drain-timeout", "1"]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();

    let (sub, first, _) =
        submit_until_started(&client, &swarm.subjects, sh("sleep 3; echo done")).await;
    assert_eq!(first, "w1");
    let _w2 = swarm.worker("w2", 1, &[]).unwrap();
    swarm.wait_workers(&client, 2).await.unwrap();
    w1.signal(libc::SIGTERM);
    let c = collect(sub, WAIT * 2, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(c.finished_count(), 1);
    assert!(c.outcome().succeeded(), "{:?}", c.events);
    assert_eq!(finished_worker(&c.events), "w2");
    assert!(c
        .events
        .iter()
        .any(|e| matches!(e, TaskEvent::Retrying { reason, .. } if reason.contains("handed"))));
    assert!(w1.wait_exit(WAIT).await.unwrap().success());
}

#[tokio::test]
async fn the_swarm_survives_a_nats_server_restart() {
    let (mut swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    assert!(
        run_task(&client, &swarm.subjects, sh("echo before"), Duration::ZERO)
            .await
            .unwrap()
            .outcome()
            .succeeded()
    );

    swarm.restart_server().await.unwrap();
    // Everyone reconnects by themselves; the test's client too.
    swarm.wait_workers(&client, 1).await.unwrap();
    let c = run_task(&client, &swarm.subjects, sh("echo after"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "after\n");
}

#[tokio::test]
async fn a_frozen_worker_turns_abnormal_and_rejoins_when_it_thaws() {
    let (swarm, procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();

    procs[1].signal(libc::SIGSTOP);
    let p = vgas_tests::wait_for("w1 to turn abnormal", WAIT, || {
        let (client, s) = (client.clone(), swarm.subjects.clone());
        async move {
            let p: vgas_shared::wire::SwarmPulse = request(&client, s.status(), &()).await.ok()?;
            (!p.abnormal.is_empty()).then_some(p)
        }
    })
    .await
    .unwrap();
    assert_eq!(p.abnormal[0].id.as_str(), "w1");
    assert!(p.live.is_empty());
    procs[1].signal(libc::SIGCONT);
    let p = swarm.wait_workers(&client, 1).await.unwrap();
    assert!(p.abnormal.is_empty(), "{p:?}");
    let c = run_task(&client, &swarm.subjects, sh("echo back"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "back\n");
}
