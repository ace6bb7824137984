//! The swarm end to end: submit and stream, Gatling fair share, status, the `vgas` CLI, and
//! a worker joining a running swarm.

use std::time::Duration;

use vgas_shared::config::Role;
use vgas_shared::wire::{TaskEvent, TaskOutcome};
use vgas_tests::{run_task, sh, Swarm};

#[tokio::test]
async fn submit_streams_output_live_and_reports_exit_code() {
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();

    // A chunk printed before a pause must arrive before the task ends.
    let id = vgas_shared::TaskId::random();
    let mut spec = sh("echo first; sleep 2; echo second >&2; exit 3");
    spec.task_id = Some(id.clone());
    let mut sub = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let _: vgas_shared::wire::SubmitReply =
        vgas_tests::request(&client, swarm.subjects.submit(), &spec)
            .await
            .unwrap();
    let first_at = loop {
        let msg = tokio::time::timeout(Duration::from_secs(20), futures::StreamExt::next(&mut sub))
            .await
            .unwrap()
            .unwrap();
        let ev: TaskEvent =
            vgas_shared::codec::decode_as(vgas_shared::Encoding::MsgPack, &msg.payload).unwrap();
        if let TaskEvent::Stdout { data, .. } = ev {
            assert_eq!(data, "first\n");
            break std::time::Instant::now();
        }
    };
    let rest = vgas_tests::collect(sub, Duration::from_secs(20), Duration::from_millis(300))
        .await
        .unwrap();
    assert!(
        first_at.elapsed() >= Duration::from_secs(1),
        "first chunk came only at the end"
    );
    assert_eq!(rest.stderr, "second\n");
    assert_eq!(rest.outcome(), TaskOutcome::Exited { exit_code: 3 });
    assert_eq!(rest.finished_count(), 1);
}

#[tokio::test]
async fn every_output_chunk_comes_before_the_finished_event() {
    // Workers publish on their own event subjects and the master relays; a task that ends
    // right after a burst of output still has all of it ahead of its `finished` (`collect`
    // fails on any output after it), in several tasks at once.
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 4)]).await.unwrap();
    let lines = 20_000;
    let runs = (0..4).map(|_| {
        run_task(
            &client,
            &swarm.subjects,
            sh(&format!("seq 1 {lines}; seq 1 {lines} >&2")),
            Duration::from_millis(300),
        )
    });
    for c in futures::future::join_all(runs).await {
        let c = c.unwrap();
        assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });
        let want: String = (1..=lines).map(|i| format!("{i}\n")).collect();
        assert!(
            c.stdout == want,
            "stdout: {} of {} bytes",
            c.stdout.len(),
            want.len()
        );
        assert!(
            c.stderr == want,
            "stderr: {} of {} bytes",
            c.stderr.len(),
            want.len()
        );
    }
}

#[tokio::test]
async fn quiet_tasks_at_once_each_announce_assigned_started_finished_once_in_order() {
    // A quiet task may end on its result read straight from the worker, which under load
    // can reach the master before the worker's acknowledgement: `started` must still come
    // once, between `assigned` and `finished` (docs/protocol.md, `vgas.result`).
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 4)]).await.unwrap();
    let runs = (0..48).map(|_| {
        run_task(
            &client,
            &swarm.subjects,
            sh("true"),
            Duration::from_millis(300),
        )
    });
    for c in futures::future::join_all(runs).await {
        let c = c.unwrap();
        assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });
        // A worker whose queue ahead is full refuses an assignment and the task is assigned
        // again (no attempt lost, no `retrying`): one or more `assigned`, then one `started`
        // and the `finished` of the last of them.
        let (last, tail) = c.events.split_at(c.events.len() - 2);
        let assigned: Vec<u32> = last
            .iter()
            .map(|e| match e {
                TaskEvent::Assigned { attempt, .. } => *attempt,
                other => panic!("{other:?} before `started`: {:?}", c.events),
            })
            .collect();
        let attempt = *assigned.last().expect("no `assigned`");
        assert!(
            matches!(
                tail,
                [TaskEvent::Started { attempt: s, .. }, TaskEvent::Finished { attempts: f, .. }]
                    if *s == attempt && *f == attempt
            ),
            "{:?}",
            c.events
        );
    }
}

#[tokio::test]
async fn stdin_env_and_input_files_reach_the_command() {
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let mut spec =
        sh("cat; echo \"$GREETING\"; cat data/in.txt; echo \"$VGAS_WORKER_ID $VGAS_ATTEMPT\"");
    spec.stdin = "from stdin\n".into();
    spec.env.insert("GREETING".into(), "hello env".into());
    spec.files.push(vgas_shared::wire::InputFile {
        path: "data/in.txt".into(),
        text: Some("from a file\n".into()),
        ..Default::default()
    });
    let c = run_task(&client, &swarm.subjects, spec, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "from stdin\nhello env\nfrom a file\nw1 1\n");
    assert!(c.outcome().succeeded());
}

#[tokio::test]
async fn gatling_rotation_shares_work_fairly_across_three_workers() {
    let mut swarm = Swarm::start().await.unwrap();
    let _m = swarm.master(&[]).unwrap();
    let _ws: Vec<_> = ["wa", "wb", "wc"]
        .iter()
        .map(|id| swarm.worker(id, 10, &[]).unwrap())
        .collect();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 3).await.unwrap();

    let mut runs = Vec::new();
    for _ in 0..30 {
        let (client, subjects) = (client.clone(), swarm.subjects.clone());
        runs.push(tokio::spawn(async move {
            run_task(&client, &subjects, sh("sleep 0.2"), Duration::ZERO).await
        }));
    }
    let mut counts = std::collections::BTreeMap::new();
    for r in runs {
        let c = r.await.unwrap().unwrap();
        let Some(TaskEvent::Finished {
            worker: Some(w),
            outcome,
            ..
        }) = c.finished()
        else {
            panic!("{:?}", c.events)
        };
        assert!(outcome.succeeded(), "{outcome:?} {:?}", c.stderr);
        *counts.entry(w.to_string()).or_insert(0) += 1;
    }
    let (min, max) = (
        counts.values().min().unwrap(),
        counts.values().max().unwrap(),
    );
    assert_eq!(counts.len(), 3, "{counts:?}");
    assert!(max - min <= 1, "unfair share: {counts:?}");
}

#[tokio::test]
async fn cli_submit_status_and_a_late_worker() {
    let (mut swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();

    let out = swarm
        .cli(&["submit", "--", "sh", "-c", "echo out; echo err >&2; exit 7"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "out\n");
    assert!(
        String::from_utf8_lossy(&out.stderr).starts_with("err\n"),
        "{out:?}"
    );
    assert_eq!(out.status.code(), Some(7));

    // One more worker adds capacity with no change on the master.
    let _w2 = swarm.worker("w2", 3, &["--capability", "big"]).unwrap();
    let pulse = swarm.wait_workers(&client, 2).await.unwrap();
    let w2 = pulse.live.iter().find(|n| n.id.as_str() == "w2").unwrap();
    assert_eq!(w2.slots, 3);
    assert!(w2.capabilities.contains(&"big".to_string()));

    let out = swarm.cli(&["status"]).unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert!(text.starts_with("2 live, 0 abnormal"), "{text}");
    assert!(text.contains("w2"), "{text}");
    let out = swarm.cli(&["status", "--json"]).unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["live"].as_array().unwrap().len(), 2);

    // A task that needs the capability only w2 has goes to w2.
    let out = swarm
        .cli(&["submit", "--needs", "big", "--", "echo", "on big"])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout), "on big\n");
}

#[tokio::test]
async fn cli_watch_and_cancel() {
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();

    // Detach, then watch the running task to its end.
    let out = swarm
        .cli(&[
            "submit",
            "--detach",
            "--id",
            "watched",
            "--",
            "sh",
            "-c",
            "sleep 1; echo late; exit 5",
        ])
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "watched");
    let out = swarm.cli(&["watch", "watched"]).unwrap();
    assert_eq!(out.status.code(), Some(5), "{out:?}");
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("late"),
        "{out:?}"
    );
    // Watching a finished task reports how it ended.
    let out = swarm.cli(&["watch", "watched"]).unwrap();
    assert_eq!(out.status.code(), Some(5));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("exited with code 5"),
        "{out:?}"
    );

    // Cancel a running task: it ends as cancelled, once, and the worker keeps serving.
    let id = vgas_shared::TaskId::parse("doomed").unwrap();
    let sub = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let out = swarm
        .cli(&["submit", "--detach", "--id", "doomed", "--", "sleep", "60"])
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    tokio::time::sleep(Duration::from_millis(500)).await;
    let out = swarm.cli(&["cancel", "doomed"]).unwrap();
    assert!(out.status.success(), "{out:?}");
    let c = vgas_tests::collect(sub, Duration::from_secs(20), Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(c.outcome(), TaskOutcome::Cancelled);
    assert_eq!(c.finished_count(), 1);
    let out = swarm.cli(&["cancel", "doomed"]).unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "cancelling a finished task is an error"
    );
    let c = run_task(&client, &swarm.subjects, sh("echo next"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "next\n");
}

/// A task submitted while a worker has a free slot and nothing waits is recorded once,
/// already assigned (attempt 1), before its submitter hears "accepted"; one submitted while
/// the only slot is taken is recorded queued and assigned later. Both run once.
#[tokio::test]
async fn a_task_with_a_free_worker_is_recorded_assigned_at_once_otherwise_queued() {
    use vgas_shared::wire::{SubmitReply, TaskQuery, TaskRecord, TaskState};
    // The master's queue, not the worker's, holds what the one slot cannot take.
    let (swarm, _procs, client) = Swarm::with_workers_args(&[("w1", 1)], &["--queue-ahead", "0"])
        .await
        .unwrap();
    let info = |id: &vgas_shared::TaskId| {
        let (client, subject) = (client.clone(), swarm.subjects.task_info());
        let q = TaskQuery {
            task_id: id.clone(),
        };
        async move {
            vgas_tests::request::<_, TaskRecord>(&client, subject, &q)
                .await
                .unwrap()
        }
    };
    // Subscribes to the task's events, submits `script` and reads its record back.
    let submit = |script: &'static str| {
        let (client, subjects) = (client.clone(), swarm.subjects.clone());
        async move {
            let id = vgas_shared::TaskId::random();
            let mut spec = sh(script);
            spec.task_id = Some(id.clone());
            let sub = client.subscribe(subjects.task_events(&id)).await.unwrap();
            let _: SubmitReply = vgas_tests::request(&client, subjects.submit(), &spec)
                .await
                .unwrap();
            (id, sub)
        }
    };
    let (first, sub_first) = submit("sleep 1; echo first").await;
    let rec = info(&first).await;
    assert!(
        matches!(&rec.state, TaskState::Assigned { worker, .. } if worker.as_str() == "w1"),
        "{:?}",
        rec.state
    );
    assert_eq!(rec.attempt, 1);
    let (second, sub_second) = submit("echo second").await;
    let rec = info(&second).await;
    assert_eq!(
        (rec.state, rec.attempt),
        (TaskState::Queued, 0),
        "the only slot is taken"
    );

    for (sub, out) in [(sub_first, "first\n"), (sub_second, "second\n")] {
        let c = vgas_tests::collect(sub, vgas_tests::WAIT, Duration::from_millis(300))
            .await
            .unwrap();
        assert_eq!(
            (c.stdout.as_str(), c.outcome()),
            (out, TaskOutcome::Exited { exit_code: 0 })
        );
        let finished = c
            .events
            .iter()
            .filter(|e| matches!(e, TaskEvent::Finished { .. }))
            .count();
        assert_eq!(finished, 1);
    }
}
