//! Batch submission: one request with an array of specs, each accepted (or refused) on its
//! own with its own id and events; as JSON from a plain client, through `vgas submit
//! --batch`, across a master SIGKILL right after the batch was accepted, with a full queue,
//! and refused whole when it does not decode or is too large.

use std::time::Duration;

use vgas_shared::config::Role;
use vgas_shared::limits::MAX_BATCH_TASKS;
use vgas_shared::wire::{SwarmPulse, TaskOutcome, TaskQuery, TaskRecord, TaskState};
use vgas_shared::TaskId;
use vgas_tests::{collect, request, subscribe_events, wait_for, Swarm, WAIT};

async fn json_request(
    client: &async_nats::Client,
    subject: String,
    body: String,
) -> serde_json::Value {
    let reply = tokio::time::timeout(WAIT, client.request(subject, body.into()))
        .await
        .unwrap()
        .unwrap();
    serde_json::from_slice(&reply.payload).unwrap()
}

/// Submits the JSON `body` until a master answers (one may be starting), and returns the answer.
async fn submit_once_answered(
    client: &async_nats::Client,
    swarm: &Swarm,
    body: &str,
) -> serde_json::Value {
    wait_for("a master to answer", WAIT, || {
        let (client, subject, body) = (client.clone(), swarm.subjects.submit(), body.to_owned());
        async move {
            let reply = client.request(subject, body.into()).await.ok()?;
            serde_json::from_slice::<serde_json::Value>(&reply.payload).ok()
        }
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_json_array_is_answered_task_by_task_and_each_task_runs() {
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let (a, b) = (TaskId::random(), TaskId::random());
    let sub_a = client
        .subscribe(swarm.subjects.task_events(&a))
        .await
        .unwrap();
    let sub_b = client
        .subscribe(swarm.subjects.task_events(&b))
        .await
        .unwrap();
    let body = format!(
        r#"[{{"task_id":"{a}","cmd":["echo","first"]}},
            {{"cmd":[]}},
            {{"task_id":"{b}","cmd":["sh","-c","echo second; exit 3"]}}]"#
    );
    let v = json_request(&client, swarm.subjects.submit(), body).await;
    let answers = v.as_array().unwrap_or_else(|| panic!("{v}"));
    assert_eq!(answers.len(), 3);
    assert_eq!(answers[0]["task_id"], a.to_string());
    assert_eq!(answers[0]["duplicate"], false);
    assert_eq!(answers[1]["error"]["code"], "bad_request", "{v}");
    assert_eq!(answers[2]["task_id"], b.to_string());
    let ca = collect(sub_a, WAIT, Duration::ZERO).await.unwrap();
    assert_eq!(ca.stdout, "first\n");
    let cb = collect(sub_b, WAIT, Duration::ZERO).await.unwrap();
    assert_eq!(
        (cb.stdout.as_str(), cb.outcome()),
        ("second\n", TaskOutcome::Exited { exit_code: 3 })
    );
}

#[tokio::test]
async fn a_batch_that_does_not_decode_or_is_too_large_changes_nothing() {
    let (swarm, _procs, client) = Swarm::with_workers(&[]).await.unwrap();
    let submit = || swarm.subjects.submit();
    let v = json_request(
        &client,
        submit(),
        r#"[{"cmd":["true"]},{"cmd":["true"],"colour":1}]"#.into(),
    )
    .await;
    assert_eq!(v["error"]["code"], "bad_request", "{v}");
    let v = json_request(&client, submit(), "[]".into()).await;
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    let many = format!(
        "[{}]",
        vec![r#"{"cmd":["true"]}"#; MAX_BATCH_TASKS + 1].join(",")
    );
    let v = json_request(&client, submit(), many).await;
    assert_eq!(v["error"]["code"], "too_large", "{v}");
    let pulse: SwarmPulse = request(&client, swarm.subjects.status(), &())
        .await
        .unwrap();
    assert_eq!(pulse.tasks_accepted, 0);
}

#[tokio::test]
async fn a_full_queue_takes_what_fits_and_answers_busy_for_the_rest() {
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&["--queue-capacity", "5"]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    let body = format!("[{}]", [r#"{"cmd":["true"]}"#; 8].join(","));
    let v = submit_once_answered(&client, &swarm, &body).await;
    let answers = v.as_array().unwrap_or_else(|| panic!("{v}"));
    let busy = answers
        .iter()
        .filter(|a| a["error"]["code"] == "busy")
        .count();
    let accepted = answers.iter().filter(|a| a["task_id"].is_string()).count();
    assert_eq!((accepted, busy), (5, 3), "{v}");
}

#[tokio::test]
async fn the_cli_submits_a_file_of_specs_and_every_task_finishes() {
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 4)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut lines = vec!["# forty tasks, one per line".to_owned(), String::new()];
    for n in 0..40 {
        lines.push(format!(r#"{{"cmd":["sh","-c","echo {n}"]}}"#));
    }
    let file = dir.path().join("tasks.jsonl");
    std::fs::write(&file, lines.join("\n")).unwrap();
    let out = swarm
        .cli_in(dir.path(), &["submit", "--batch", "tasks.jsonl"], &[])
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ids: Vec<TaskId> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| TaskId::parse(l).unwrap())
        .collect();
    assert_eq!(ids.len(), 40);
    for id in &ids {
        let rec: TaskRecord = wait_for("the task to finish", WAIT, || async {
            let q = TaskQuery {
                task_id: id.clone(),
            };
            let rec: TaskRecord = request(&client, swarm.subjects.task_info(), &q)
                .await
                .ok()?;
            matches!(rec.state, TaskState::Finished { .. }).then_some(rec)
        })
        .await
        .unwrap();
        let TaskState::Finished { outcome, .. } = rec.state else {
            unreachable!()
        };
        assert_eq!(outcome, TaskOutcome::Exited { exit_code: 0 });
    }
    // A line that is not a spec stops the file before anything is sent.
    std::fs::write(&file, "{\"cmd\":[\"true\"]}\n{\"cmd\":\"true\"}\n").unwrap();
    let out = swarm
        .cli_in(dir.path(), &["submit", "--batch", "tasks.jsonl"], &[])
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("line 2"));
}

#[tokio::test]
async fn a_master_killed_in_the_middle_of_a_batch_loses_none_of_it() {
    const TASKS: usize = 300;
    let (mut swarm, mut procs, client) = Swarm::with_workers(&[("w1", 4)]).await.unwrap();
    let ids: Vec<TaskId> = (0..TASKS).map(|_| TaskId::random()).collect();
    let subs = subscribe_events(&client, &swarm.subjects, &ids)
        .await
        .unwrap();
    let body = format!(
        "[{}]",
        ids.iter()
            .enumerate()
            .map(|(n, id)| format!(r#"{{"task_id":"{id}","cmd":["echo","{n}"]}}"#))
            .collect::<Vec<_>>()
            .join(",")
    );
    // The batch is on its way (some records written, the answer not yet sent) when the
    // master dies; the submitter, with no answer, sends the same batch again: every task is
    // then accepted once (`duplicate` for those recorded before the kill) and runs once.
    let first = {
        let (client, subject, body) = (client.clone(), swarm.subjects.submit(), body.clone());
        tokio::spawn(async move { client.request(subject, body.into()).await })
    };
    tokio::time::sleep(Duration::from_millis(20)).await;
    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(WAIT).await.unwrap();
    let _ = first.await;
    let _master2 = swarm.master(&[]).unwrap();
    let v = submit_once_answered(&client, &swarm, &body).await;
    let accepted = v.as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(accepted.iter().all(|a| a["task_id"].is_string()), "{v}");
    assert_eq!(accepted.len(), TASKS);
    let collected = futures::future::join_all(
        subs.into_iter()
            .map(|s| collect(s, WAIT * 4, Duration::from_secs(1))),
    )
    .await;
    for (n, c) in collected.into_iter().enumerate() {
        let c = c.unwrap_or_else(|e| panic!("task {n}: {e:#}"));
        assert_eq!(c.finished_count(), 1, "task {n}");
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

/// Behind a full worker and a queue of waiting tasks, a task that no worker can take is
/// still abandoned when its wait for a capable worker runs out (the dispatcher stops its
/// scan at the first task that finds every worker full, and scans the whole queue on each
/// tick), and the queue behind it then runs.
#[tokio::test]
async fn a_task_no_worker_can_take_is_abandoned_on_time_behind_a_full_queue() {
    use std::os::unix::fs::PermissionsExt as _;
    // The master's queue, not the worker's, holds what the one slot cannot take.
    let (swarm, _procs, client) = Swarm::with_workers_args(&[("w1", 1)], &["--queue-ahead", "0"])
        .await
        .unwrap();
    // The blocker holds the only slot until the gate file appears (readable by the sandbox uid).
    let gate_dir = tempfile::tempdir().unwrap();
    std::fs::set_permissions(gate_dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let gate = gate_dir.path().join("open");
    let ids: Vec<TaskId> = (0..22).map(|_| TaskId::random()).collect();
    let (blocker, queued, impossible) = (&ids[0], &ids[1..21], &ids[21]);
    let subs = subscribe_events(&client, &swarm.subjects, &ids)
        .await
        .unwrap();
    let mut specs = vec![serde_json::json!({
        "task_id": blocker, "deadline_s": 60,
        "cmd": ["sh", "-c", format!("while [ ! -e {} ]; do sleep 0.05; done; echo blocker", gate.display())],
    })];
    for (n, id) in queued.iter().enumerate() {
        specs.push(serde_json::json!({"task_id": id, "cmd": ["echo", n.to_string()]}));
    }
    specs.push(serde_json::json!({
        "task_id": impossible, "cmd": ["true"], "wait_for_worker_s": 1,
        "needs": {"capabilities": ["no-such-capability"]},
    }));
    let v = json_request(
        &client,
        swarm.subjects.submit(),
        serde_json::Value::from(specs).to_string(),
    )
    .await;
    let answers = v.as_array().unwrap_or_else(|| panic!("{v}"));
    assert!(answers.iter().all(|a| a.get("error").is_none()), "{v}");

    let mut subs = subs.into_iter();
    let blocker_sub = subs.next().unwrap();
    let impossible_sub = subs.next_back().unwrap();
    let gone = collect(impossible_sub, WAIT, Duration::ZERO).await.unwrap();
    match gone.outcome() {
        TaskOutcome::Abandoned { message } => {
            assert!(message.contains("no-such-capability"), "{message}")
        }
        other => panic!("{other:?}"),
    }
    let pulse: SwarmPulse = request(&client, swarm.subjects.status(), &())
        .await
        .unwrap();
    assert_eq!(
        pulse.queue_depth,
        queued.len(),
        "the rest still waits behind the blocker"
    );
    std::fs::write(&gate, b"").unwrap();
    let b = collect(blocker_sub, WAIT, Duration::ZERO).await.unwrap();
    assert_eq!(b.stdout, "blocker\n");
    for (n, sub) in subs.enumerate() {
        let c = collect(sub, WAIT, Duration::ZERO).await.unwrap();
        assert_eq!(
            (c.stdout.clone(), c.outcome()),
            (format!("{n}\n"), TaskOutcome::Exited { exit_code: 0 })
        );
    }
}
