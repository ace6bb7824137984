//! Data at rest: a secret env value reaches the task and nothing else (no record, log line,
//! event or file of the server's store), even across a master SIGKILL while the task waits;
//! a finished task's record drops its spec after the retention setting and still answers
//! `vgas.task.info` and idempotent resubmits; a sealed value from a submitter is refused.

use std::path::Path;
use std::time::Duration;

use futures::StreamExt;
use sha2::{Digest, Sha256};
use vgas_shared::config::Role;
use vgas_shared::error::WireError;
use vgas_shared::wire::{
    EnvValue, SealedValue, SubmitReply, TaskOutcome, TaskQuery, TaskRecord, TaskState,
};
use vgas_shared::{ErrorCode, TaskId};
use vgas_tests::{collect, request, sh, wait_for, Swarm, WAIT};

/// The secret: long and unusual enough that finding it anywhere is no coincidence.
const SECRET: &str = "vgas-test-secret-5b0c7e1a9f";

/// Every file under `dir` whose bytes contain `needle`.
fn files_containing(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if let Ok(bytes) = std::fs::read(&p) {
                if bytes.windows(needle.len()).any(|w| w == needle) {
                    found.push(p.display().to_string());
                }
            }
        }
    }
    found
}

async fn info(client: &async_nats::Client, swarm: &Swarm, id: &TaskId) -> Option<TaskRecord> {
    let q = TaskQuery {
        task_id: id.clone(),
    };
    request(client, swarm.subjects.task_info(), &q).await.ok()
}

#[tokio::test]
async fn a_secret_env_value_reaches_the_task_and_nothing_else() {
    let mut swarm = Swarm::start().await.unwrap();
    let mut master = swarm.master(&["--spec-retention", "1"]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 0).await.unwrap();
    // Every message on the server (records written, events, results, replies), as a snoop
    // with the master's grants sees it.
    let snoop = swarm.connect(Role::Master).await.unwrap();
    let mut seen = snoop.subscribe(">").await.unwrap();

    // Queued with no worker, so it waits in the record through a master SIGKILL.
    let id = TaskId::random();
    let mut spec = sh("printf %s \"$TOKEN\" | sha256sum; echo \"plain=$PLAIN\"");
    spec.task_id = Some(id.clone());
    spec.env.insert("TOKEN".into(), EnvValue::secret(SECRET));
    spec.env.insert("PLAIN".into(), "visible".into());
    let sub = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let reply: SubmitReply = request(&client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();
    assert!(!reply.duplicate);
    let queued = info(&client, &swarm, &id).await.expect("the record");
    assert!(matches!(queued.state, TaskState::Queued));
    assert!(
        matches!(&queued.spec.env["TOKEN"], EnvValue::Sealed(_)),
        "the record shows the value sealed: {:?}",
        queued.spec.env
    );
    assert_eq!(queued.spec.env["PLAIN"], EnvValue::Plain("visible".into()));

    master.signal(libc::SIGKILL);
    master.wait_exit(WAIT).await.unwrap();
    let _master2 = swarm.master(&["--spec-retention", "1"]).unwrap();
    let _worker = swarm
        .worker_with_env("w1", 1, &[("RUST_LOG", "debug")])
        .unwrap();
    let done = collect(sub, WAIT * 2, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(done.finished_count(), 1, "{:?}", done.events);
    assert_eq!(done.outcome(), TaskOutcome::Exited { exit_code: 0 });
    let hash = hex::encode(Sha256::digest(SECRET.as_bytes()));
    assert_eq!(
        done.stdout,
        format!("{hash}  -\nplain=visible\n"),
        "the task saw the secret's value, opened after the restart"
    );

    // The spec is dropped once the retention (1 s) passes; the record still answers.
    let dropped = wait_for("the spec to be dropped", WAIT, || async {
        info(&client, &swarm, &id)
            .await
            .filter(|r| r.spec_dropped_ms.is_some())
    })
    .await
    .unwrap();
    assert!(dropped.spec.cmd.is_empty() && dropped.spec.env.is_empty());
    assert!(matches!(dropped.state, TaskState::Finished { .. }));
    // The same spec under the same id is still an idempotent resubmit; another is a conflict.
    let again: SubmitReply = request(&client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();
    assert!(again.duplicate);
    let mut other = spec.clone();
    other
        .env
        .insert("TOKEN".into(), EnvValue::secret("another"));
    let conflict = request::<_, SubmitReply>(&client, swarm.subjects.submit(), &other)
        .await
        .unwrap_err();
    let conflict = conflict.downcast_ref::<WireError>().expect("a wire error");
    assert_eq!(conflict.code, ErrorCode::Conflict, "{conflict}");

    // Nothing that was published, and no file under the swarm's folder (the server's
    // JetStream store, the state directory, every process's log), holds the secret.
    let needle = SECRET.as_bytes();
    let mut messages = 0;
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(200), seen.next()).await {
        messages += 1;
        // The two hops that carry it by design: the submit, and the assignment to the worker.
        let in_transit = m.subject.as_str() == swarm.subjects.submit()
            || m.subject.as_str() == swarm.subjects.worker_task(&"w1".parse().unwrap());
        if !in_transit {
            assert!(
                !m.payload.windows(needle.len()).any(|w| w == needle),
                "{} carried the secret",
                m.subject
            );
        }
    }
    assert!(
        messages > 5,
        "the snoop saw the task's traffic ({messages})"
    );
    assert_eq!(
        files_containing(swarm.dir.path(), needle),
        Vec::<String>::new()
    );
    // The control: the search does read the store and the logs, where the task id is.
    let with_id = files_containing(swarm.dir.path(), id.as_str().as_bytes());
    assert!(
        with_id.iter().any(|f| f.contains("jetstream"))
            && with_id.iter().any(|f| f.ends_with(".log")),
        "{with_id:?}"
    );
}

#[tokio::test]
async fn a_sealed_value_from_a_submitter_is_refused_and_nothing_recorded() {
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let id = TaskId::random();
    let mut spec = sh("env");
    spec.task_id = Some(id.clone());
    spec.env.insert(
        "TOKEN".into(),
        EnvValue::Sealed(SealedValue {
            sealed: "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into(),
        }),
    );
    let refused = request::<_, SubmitReply>(&client, swarm.subjects.submit(), &spec)
        .await
        .unwrap_err();
    let refused = refused.downcast_ref::<WireError>().expect("a wire error");
    assert_eq!(refused.code, ErrorCode::BadRequest, "{refused}");
    assert!(refused.message.contains("sealed"), "{refused}");
    assert!(
        info(&client, &swarm, &id).await.is_none(),
        "nothing recorded"
    );
}

#[tokio::test]
async fn with_no_retention_the_final_record_has_no_spec() {
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&["--spec-retention", "0"]).unwrap();
    let _worker = swarm.worker("w1", 1, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let id = TaskId::random();
    let mut spec = sh("echo private-output");
    spec.task_id = Some(id.clone());
    spec.stdin = "private-input".into();
    let sub = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let _: SubmitReply = request(&client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();
    let done = collect(sub, WAIT, Duration::from_millis(100))
        .await
        .unwrap();
    assert_eq!(done.stdout, "private-output\n");
    let rec = info(&client, &swarm, &id).await.expect("the record");
    assert!(matches!(rec.state, TaskState::Finished { .. }));
    assert!(rec.spec_dropped_ms.is_some(), "{rec:?}");
    assert!(
        rec.spec.cmd.is_empty() && rec.spec.stdin.is_empty(),
        "{rec:?}"
    );
}

#[tokio::test]
async fn a_large_payload_leaves_the_final_record_at_once_a_small_one_stays() {
    // The default retention (60 s) keeps a small spec; one over 16 KiB (a build segment's
    // source, large inline input) is not written a third time.
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let _worker = swarm.worker("w1", 1, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    for (stdin, kept) in [("small".to_string(), true), ("x".repeat(32 * 1024), false)] {
        let id = TaskId::random();
        let mut spec = sh("wc -c");
        spec.task_id = Some(id.clone());
        spec.stdin = stdin.clone();
        let done = vgas_tests::run_task(&client, &swarm.subjects, spec, Duration::ZERO)
            .await
            .unwrap();
        assert_eq!(done.stdout.trim(), stdin.len().to_string());
        let rec = info(&client, &swarm, &id).await.expect("the record");
        assert!(matches!(rec.state, TaskState::Finished { .. }));
        assert_eq!(
            rec.spec_dropped_ms.is_none(),
            kept,
            "{:?}",
            rec.spec_dropped_ms
        );
        assert_eq!(rec.spec.stdin.len(), if kept { stdin.len() } else { 0 });
    }
}
