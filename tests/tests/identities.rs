//! One identity per node, with the repository's `nats.conf` and the `auth.conf` that `vgas init`
//! and `vgas node` write: a worker node's key reads only its own assignments and heartbeats
//! only as itself, its results and events count only for its own tasks, its replies come to
//! inboxes only it reads; `vgas node revoke` disconnects it within a second and it cannot come back,
//! while the other workers keep working; `auth.conf` holds no secret.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use vgas_shared::config::{Credentials, Role};
use vgas_shared::identity::NodeRegistry;
use vgas_shared::wire::{Heartbeat, SubmitReply, SwarmPulse, TaskEvent, TaskOutcome, WorkerResult};
use vgas_shared::{Encoding, TaskId, WorkerId};
use vgas_tests::{collect, request, run_task, sh, wait_for, Swarm, WAIT};

/// A connection as `creds`, with the server's errors (permission violations) collected.
async fn connect_as(
    swarm: &Swarm,
    creds: &Credentials,
) -> anyhow::Result<(async_nats::Client, Arc<Mutex<Vec<String>>>)> {
    let errors = Arc::new(Mutex::new(Vec::new()));
    let sink = errors.clone();
    let client = vgas_client::connect::auth_options(Some(creds))?
        .max_reconnects(Some(1))
        .event_callback(move |ev| {
            let sink = sink.clone();
            async move {
                sink.lock().unwrap().push(ev.to_string());
            }
        })
        .connect(swarm.url())
        .await?;
    Ok((client, errors))
}

fn node_creds(swarm: &Swarm, name: &str) -> (std::path::PathBuf, Credentials) {
    let path = NodeRegistry::creds_path(&swarm.state_dir(), &WorkerId::parse(name).unwrap());
    let creds = Credentials::load(&path).unwrap();
    (path, creds)
}

fn cli_ok(swarm: &Swarm, args: &[&str]) -> String {
    let out = swarm.cli(args).unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "vgas {args:?}: {text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[tokio::test]
async fn a_worker_node_reaches_only_its_own_subjects_and_a_revoked_one_is_cut_off() {
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    for name in ["a", "b"] {
        let said = cli_ok(&swarm, &["node", "add", "worker", name]);
        assert!(said.contains("reloads auth.conf"), "{said}");
    }
    // The server's file lists public keys only.
    let conf = std::fs::read_to_string(swarm.state_dir().join("auth.conf")).unwrap();
    let (path_a, a) = node_creds(&swarm, "a");
    let (path_b, b) = node_creds(&swarm, "b");
    assert!(conf.contains(&a.user) && conf.contains(&b.user));
    assert!(!conf.contains(a.seed.as_deref().unwrap()) && !conf.contains("password"));
    let mode =
        std::os::unix::fs::PermissionsExt::mode(&std::fs::metadata(&path_a).unwrap().permissions());
    assert_eq!(mode & 0o777, 0o600);
    // A name is never issued twice.
    assert!(!swarm
        .cli(&["node", "add", "worker", "a"])
        .unwrap()
        .status
        .success());

    // Worker b runs with its node's key, under its name.
    let path_b = path_b.display().to_string();
    let _wb = swarm.worker("b", 1, &["--creds", &path_b]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let s = swarm.subjects.clone();

    // Node a's key: b's assignments are not readable, b's heartbeat not writable.
    let (spy, errors) = connect_as(&swarm, &a).await.unwrap();
    let mut b_tasks = spy
        .subscribe(s.worker_task(&WorkerId::parse("b").unwrap()))
        .await
        .unwrap();
    let mut every = spy.subscribe(s.all_worker_tasks()).await.unwrap();
    let mut every_inbox = spy.subscribe("_INBOX.>").await.unwrap();
    let forged = Heartbeat {
        worker: Some(WorkerId::parse("b").unwrap()),
        slots: 64,
        ..Default::default()
    };
    let bytes = vgas_shared::codec::encode(Encoding::MsgPack, &forged).unwrap();
    spy.publish(
        s.heartbeat(&WorkerId::parse("b").unwrap()),
        bytes.clone().into(),
    )
    .await
    .unwrap();
    let ghost = WorkerId::parse("ghost").unwrap();
    spy.publish(s.heartbeat(&ghost), bytes.into())
        .await
        .unwrap();
    spy.flush().await.unwrap();
    let c = run_task(&client, &s, sh("echo private"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "private\n");
    for sub in [&mut b_tasks, &mut every] {
        assert!(
            tokio::time::timeout(Duration::from_millis(300), sub.next())
                .await
                .map_or(true, |m| m.is_none()),
            "node a read an assignment of b"
        );
    }

    // Results for b's task forged by a: on b's subject refused by the server; on a's own,
    // claiming b or a, dropped by the master. The task ends once, with b's real result.
    let id = TaskId::random();
    let mut spec = sh("sleep 1; echo real");
    spec.task_id = Some(id.clone());
    let sub = client.subscribe(s.task_events(&id)).await.unwrap();
    let _: SubmitReply = request(&client, s.submit(), &spec).await.unwrap();
    let (wa, wb) = (WorkerId::parse("a").unwrap(), WorkerId::parse("b").unwrap());
    for (subject, claims) in [
        (s.result(&wb, &id), wb.clone()),
        (s.result(&wa, &id), wb.clone()),
        (s.result(&wa, &id), wa.clone()),
    ] {
        let forged = WorkerResult {
            task_id: id.clone(),
            attempt: 1,
            worker: claims,
            outcome: TaskOutcome::Exited { exit_code: 42 },
            duration_ms: 1,
            handed_back: false,
            events: Some(0),
        };
        let bytes = vgas_shared::codec::encode(Encoding::MsgPack, &forged).unwrap();
        spy.publish(subject, bytes.into()).await.unwrap();
    }
    // Events for b's task forged by a: on the task's own subject or b's event subject refused
    // by the server; on a's event subject dropped by the master (the task is not a's).
    let forged_out = TaskEvent::Stdout {
        attempt: 1,
        data: "forged\n".into(),
    };
    let forged_end = TaskEvent::Finished {
        task_id: id.clone(),
        worker: Some(wa.clone()),
        attempts: 1,
        duration_ms: 1,
        outcome: TaskOutcome::Exited { exit_code: 42 },
    };
    let forged_start = TaskEvent::Started {
        worker: wa.clone(),
        attempt: 1,
    };
    for (subject, ev) in [
        (s.task_events(&id), &forged_out),
        (s.task_events(&id), &forged_end),
        (s.worker_events(&wb, &id), &forged_out),
        (s.worker_events(&wa, &id), &forged_start),
        (s.worker_events(&wa, &id), &forged_out),
        (s.worker_events(&wa, &id), &forged_end),
    ] {
        let bytes = vgas_shared::codec::encode(Encoding::Json, ev).unwrap();
        spy.publish(subject, bytes.into()).await.unwrap();
    }
    spy.flush().await.unwrap();
    let done = collect(sub, WAIT, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(done.finished_count(), 1, "{:?}", done.events);
    assert_eq!(done.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(done.stdout, "real\n");
    assert!(
        done.events.iter().all(|e| match e {
            TaskEvent::Started { worker, .. } | TaskEvent::Assigned { worker, .. } => *worker == wb,
            _ => true,
        }),
        "{:?}",
        done.events
    );
    // A client reading b's task's files straight from the workers' subjects too
    // (`submit_direct`) believes only the worker the master named: a file node a puts on
    // its own subject for the task is never taken, one on b's is refused by the server.
    let api = vgas_client::api::Swarm::new(client.clone(), s.clone());
    let id = TaskId::random();
    let mut spec = sh("sleep 1; echo real");
    spec.task_id = Some(id.clone());
    // What the follower's own subscription sees there, read beside it.
    let mut seen_there = client.subscribe(s.any_worker_events(&id)).await.unwrap();
    let mut following = api.submit_direct(spec, WAIT).await.unwrap().following;
    let forged_file = TaskEvent::Artifact {
        attempt: 1,
        path: "out.txt".into(),
        base64: "Zm9yZ2Vk".into(),
        object: None,
        size: None,
        mode: None,
        ran_us: None,
        stdout_bytes: Some(0),
        stderr_bytes: Some(0),
    };
    let mut steps = Vec::new();
    loop {
        let step = tokio::time::timeout(WAIT, following.next())
            .await
            .expect("the task ends")
            .unwrap();
        if let vgas_client::api::Step::Started { worker, .. } = &step {
            assert_eq!(*worker, wb);
            // The master has named b; a forges a file for the running attempt.
            for worker in [&wa, &wb] {
                let bytes = vgas_shared::codec::encode(Encoding::Json, &forged_file).unwrap();
                spy.publish(s.worker_events(worker, &id), bytes.into())
                    .await
                    .unwrap();
            }
            spy.flush().await.unwrap();
        }
        let end = matches!(step, vgas_client::api::Step::Finished { .. });
        steps.push(step);
        if end {
            break;
        }
    }
    assert!(
        !steps
            .iter()
            .any(|s| matches!(s, vgas_client::api::Step::Artifact(_))),
        "a forged file was taken: {steps:?}"
    );
    let mut forged_seen = false;
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_millis(500), seen_there.next()).await
    {
        forged_seen |= m.subject.as_str() == s.worker_events(&wa, &id);
    }
    assert!(
        forged_seen,
        "a client reads the workers' subjects: the forged file reached it"
    );
    assert!(
        steps.contains(&vgas_client::api::Step::Stdout("real\n".into())),
        "{steps:?}"
    );

    // Other nodes' replies are not a's to read: its inboxes are its own.
    assert!(
        tokio::time::timeout(Duration::from_millis(300), every_inbox.next())
            .await
            .map_or(true, |m| m.is_none()),
        "node a read another connection's reply"
    );

    let violations = errors.lock().unwrap().clone();
    assert!(
        violations
            .iter()
            .filter(|e| e.contains("Permissions Violation"))
            .count()
            >= 8,
        "{violations:?}"
    );
    let p: SwarmPulse = request(&client, s.status(), &()).await.unwrap();
    assert_eq!(p.live.len(), 1, "a forged heartbeat joined: {p:?}");
    assert_eq!(p.live[0].slots, 1, "b's heartbeat was overwritten: {p:?}");

    // A worker with a's key cannot run under another name.
    let path_a_s = path_a.display().to_string();
    let out = std::process::Command::new(vgas_tests::bin("vgas-worker"))
        .args([
            "--id",
            "b",
            "--creds",
            &path_a_s,
            "--nats-url",
            &swarm.url(),
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("node a"));

    // Revoked: the connection is closed within a second and a new one is refused.
    let said = cli_ok(&swarm, &["node", "revoke", "a"]);
    assert!(said.contains("revoked a"), "{said}");
    assert!(
        !path_a.exists(),
        "the revoked node's credentials file is deleted here"
    );
    wait_for(
        "node a to be disconnected",
        Duration::from_secs(1),
        || async {
            (spy.connection_state() != async_nats::connection::State::Connected).then_some(())
        },
    )
    .await
    .unwrap();
    assert!(
        connect_as(&swarm, &a).await.is_err(),
        "a revoked key connected again"
    );
    let listed = cli_ok(&swarm, &["node", "list"]);
    assert!(
        listed
            .lines()
            .any(|l| l.starts_with("a ") && l.contains("revoked")),
        "{listed}"
    );
    // Worker b and the clients kept working all along.
    let c = run_task(&client, &s, sh("echo after"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(c.stdout, "after\n");
}

#[tokio::test]
async fn a_results_stream_from_before_per_worker_subjects_is_brought_up_to_date() {
    // The stream as an older master made it: results on `<prefix>.result.<task>`.
    let mut swarm = Swarm::start().await.unwrap();
    let admin = swarm.connect(Role::Master).await.unwrap();
    let js = async_nats::jetstream::new(admin);
    let old_subject = format!("{}.result.*", swarm.subjects.prefix());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: swarm.subjects.results_stream(),
        subjects: vec![old_subject],
        retention: async_nats::jetstream::stream::RetentionPolicy::WorkQueue,
        ..Default::default()
    })
    .await
    .unwrap();
    let _master = swarm.master(&[]).unwrap();
    let _worker = swarm.worker("w1", 1, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    // The result and the output travel on today's subjects and still reach the master.
    let c = run_task(
        &client,
        &swarm.subjects,
        sh("echo upgraded"),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(c.finished_count(), 1);
    assert_eq!(c.stdout, "upgraded\n");
    let info = js
        .get_stream(swarm.subjects.results_stream())
        .await
        .unwrap()
        .cached_info()
        .config
        .subjects
        .clone();
    assert_eq!(
        info,
        vec![
            swarm.subjects.all_results(),
            swarm.subjects.all_worker_events()
        ]
    );
}
