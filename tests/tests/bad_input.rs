//! Malformed input on every subject: random bytes, broken JSON, wrong types, unknown fields,
//! oversized payloads. Request subjects answer with an error and change nothing; subjects with
//! no reply log and drop; master and workers keep serving and a task in flight still finishes.

use std::time::Duration;

use vgas_shared::codec::{decode_as, Reply};
use vgas_shared::config::Role;
use vgas_shared::error::WireError;
use vgas_shared::wire::{SwarmPulse, TaskOutcome};
use vgas_shared::{Encoding, ErrorCode};
use vgas_tests::{collect, request, run_task, sh, Swarm, WAIT};

/// Sends raw bytes as a request and returns the error the master answered with.
async fn refused(client: &async_nats::Client, subject: &str, payload: Vec<u8>) -> WireError {
    let msg = tokio::time::timeout(
        Duration::from_secs(5),
        client.request(subject.to_owned(), payload.into()),
    )
    .await
    .expect("an answer")
    .expect("a reply");
    let enc = Encoding::detect(&msg.payload);
    match decode_as::<Reply<serde_json::Value>>(enc, &msg.payload).expect("a decodable reply") {
        Reply::Err { error } => error,
        Reply::Ok(v) => panic!("{subject} accepted bad input, answered {v}"),
    }
}

fn check(err: &WireError, code: ErrorCode, words: &str) {
    assert_eq!(err.code, code, "{err}");
    assert!(
        err.message.contains(words),
        "{err} should mention {words:?}"
    );
}

#[tokio::test]
async fn every_subject_refuses_bad_input_and_the_swarm_keeps_serving() {
    let mut swarm = Swarm::start().await.unwrap();
    let mut master = swarm.master(&[]).unwrap();
    let mut worker = swarm.worker("w1", 2, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    let admin = swarm.connect(Role::Master).await.unwrap();
    let worker_conn = swarm.connect(Role::Worker).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let s = swarm.subjects.clone();

    // A task in flight while the garbage arrives.
    let id = vgas_shared::TaskId::random();
    let mut slow = sh("sleep 2; echo survived");
    slow.task_id = Some(id.clone());
    let sub = client.subscribe(s.task_events(&id)).await.unwrap();
    let _: vgas_shared::wire::SubmitReply = request(&client, s.submit(), &slow).await.unwrap();

    let submit = s.submit();
    let cases: Vec<(Vec<u8>, ErrorCode, &str)> = vec![
        (
            vec![0xc1, 0xff, 0x00, 0x13],
            ErrorCode::BadRequest,
            "MessagePack",
        ),
        (b"{not json".to_vec(), ErrorCode::BadRequest, "JSON"),
        (
            br#"{"cmd":"ls"}"#.to_vec(),
            ErrorCode::BadRequest,
            "invalid type",
        ),
        (
            br#"{"cmd":["ls"],"surprise":1}"#.to_vec(),
            ErrorCode::BadRequest,
            "unknown field",
        ),
        (
            br#"{"cmd":[]}"#.to_vec(),
            ErrorCode::BadRequest,
            "must name a program",
        ),
        (
            br#"{"cmd":["ls"],"deadline_s":-1}"#.to_vec(),
            ErrorCode::BadRequest,
            "invalid value",
        ),
        (
            br#"{"cmd":["ls"],"files":[{"path":"/etc/passwd","text":""}]}"#.to_vec(),
            ErrorCode::BadRequest,
            "relative",
        ),
        (b"".to_vec(), ErrorCode::BadRequest, "cmd"),
        (vec![b' '; 2 * 1024 * 1024], ErrorCode::TooLarge, "exceeds"),
    ];
    for (payload, code, words) in cases {
        check(&refused(&client, &submit, payload).await, code, words);
    }
    for subject in [s.task_info(), s.task_cancel()] {
        check(
            &refused(&client, &subject, b"\x00\x01garbage".to_vec()).await,
            ErrorCode::BadRequest,
            "",
        );
        check(
            &refused(&client, &subject, br#"{"task_id":"a.b"}"#.to_vec()).await,
            ErrorCode::BadRequest,
            "task id",
        );
        check(
            &refused(&client, &subject, br#"{"task_id":"x","extra":1}"#.to_vec()).await,
            ErrorCode::BadRequest,
            "unknown field",
        );
        check(
            &refused(&client, &subject, br#"{"task_id":"nosuch"}"#.to_vec()).await,
            ErrorCode::NotFound,
            "nosuch",
        );
        check(
            &refused(&client, &subject, vec![b'{'; 8192]).await,
            ErrorCode::TooLarge,
            "exceeds",
        );
    }
    check(
        &refused(&client, &s.status(), vec![b' '; 8192]).await,
        ErrorCode::TooLarge,
        "empty",
    );

    // Subjects with no reply: garbage is logged and dropped.
    let w = vgas_shared::WorkerId::parse("w1").unwrap();
    for payload in [
        vec![0xc1u8, 0x00],
        b"{\"slots\":\"many\"}".to_vec(),
        vec![b'x'; 100_000],
    ] {
        worker_conn
            .publish(s.heartbeat(&w), payload.clone().into())
            .await
            .unwrap();
        admin
            .publish(s.worker_task(&w), payload.clone().into())
            .await
            .unwrap();
        admin
            .publish(s.worker_cancel(&w), payload.clone().into())
            .await
            .unwrap();
    }
    // A heartbeat claiming another worker's id on its own subject is dropped too.
    let forged = vgas_shared::wire::Heartbeat {
        worker: Some(vgas_shared::WorkerId::parse("ghost").unwrap()),
        slots: 9,
        ..Default::default()
    };
    let bytes = vgas_shared::codec::encode(Encoding::MsgPack, &forged).unwrap();
    worker_conn
        .publish(s.heartbeat(&w), bytes.into())
        .await
        .unwrap();
    // A malformed assignment sent as a request gets a refusal, not a crash.
    let msg = admin
        .request(s.worker_task(&w), b"\x93\x01".to_vec().into())
        .await
        .unwrap();
    let ack: vgas_shared::wire::AssignAck = decode_as(Encoding::MsgPack, &msg.payload).unwrap();
    assert!(!ack.accepted && ack.reason.contains("malformed"), "{ack:?}");
    // Garbage stored in the results stream is dropped by the master.
    let js = async_nats::jetstream::new(worker_conn.clone());
    js.publish(s.result(&w, &id), b"\xc1junk".to_vec().into())
        .await
        .unwrap()
        .await
        .unwrap();
    worker_conn.flush().await.unwrap();

    let c = collect(sub, WAIT, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(c.stdout, "survived\n");
    assert_eq!(c.finished_count(), 1);
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });

    let p: SwarmPulse = request(&client, s.status(), &()).await.unwrap();
    assert_eq!(p.live.len(), 1, "{p:?}");
    assert_eq!(
        p.tasks_accepted, 1,
        "bad submits must not be accepted: {p:?}"
    );
    let c = run_task(&client, &s, sh("echo still serving"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "still serving\n");
    assert!(
        master.wait_exit(Duration::from_millis(10)).await.is_err(),
        "master died"
    );
    assert!(
        worker.wait_exit(Duration::from_millis(10)).await.is_err(),
        "worker died"
    );
}

#[tokio::test]
async fn a_full_queue_answers_busy_and_drops_nothing() {
    let mut swarm = Swarm::start().await.unwrap();
    let _m = swarm.master(&["--queue-capacity", "2"]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 0).await.unwrap();
    // No worker yet: tasks wait in the queue.
    let s = swarm.subjects.clone();
    let mut subs = Vec::new();
    for _ in 0..2 {
        let id = vgas_shared::TaskId::random();
        let mut spec = sh("echo queued");
        spec.task_id = Some(id.clone());
        subs.push(client.subscribe(s.task_events(&id)).await.unwrap());
        let _: vgas_shared::wire::SubmitReply = request(&client, s.submit(), &spec).await.unwrap();
    }
    let body = serde_json::to_vec(&sh("echo one too many")).unwrap();
    check(
        &refused(&client, &s.submit(), body).await,
        ErrorCode::Busy,
        "queue is full",
    );
    let _w = swarm.worker("w1", 1, &[]).unwrap();
    for sub in subs {
        let c = collect(sub, WAIT, Duration::ZERO).await.unwrap();
        assert_eq!(c.stdout, "queued\n");
    }
}
