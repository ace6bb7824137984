//! Secure by default: no anonymous access, and each role's credentials reach only the
//! subjects that role needs.

use std::io::{Read, Write};
use std::time::Duration;

use futures::StreamExt;
use vgas_shared::config::Role;
use vgas_shared::wire::SwarmPulse;
use vgas_tests::{request, run_task, sh, Swarm};

#[tokio::test]
async fn connections_without_valid_credentials_are_refused() {
    let swarm = Swarm::start().await.unwrap();
    let anon = async_nats::ConnectOptions::new().connect(swarm.url()).await;
    assert!(anon.is_err(), "anonymous connection accepted");
    let wrong =
        async_nats::ConnectOptions::with_user_and_password("vgas-client".into(), "guess".into())
            .connect(swarm.url())
            .await;
    assert!(wrong.is_err(), "wrong password accepted");
    // The CLI says what to do when it has no credentials.
    let out = std::process::Command::new(vgas_tests::bin("vgas"))
        .args([
            "status",
            "--state-dir",
            "/nonexistent",
            "--nats-url",
            &swarm.url(),
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("vgas init"), "{err}");
}

#[tokio::test]
async fn each_role_reaches_only_its_own_subjects() {
    let mut swarm = Swarm::start().await.unwrap();
    let _m = swarm.master(&[]).unwrap();
    let _w = swarm.worker("w1", 1, &[]).unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    let worker = swarm.connect(Role::Worker).await.unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let s = swarm.subjects.clone();

    // A worker's credentials cannot submit a task.
    let submitted = tokio::time::timeout(
        Duration::from_secs(3),
        worker.request(s.submit(), b"{\"cmd\":[\"id\"]}".to_vec().into()),
    )
    .await;
    assert!(!matches!(submitted, Ok(Ok(_))), "a worker submitted a task");

    // A client cannot forge a heartbeat nor read another worker's assignments.
    let ghost = vgas_shared::WorkerId::parse("ghost").unwrap();
    let hb = vgas_shared::wire::Heartbeat {
        worker: Some(ghost.clone()),
        slots: 8,
        ..Default::default()
    };
    client
        .publish(
            s.heartbeat(&ghost),
            vgas_shared::codec::encode(vgas_shared::Encoding::MsgPack, &hb)
                .unwrap()
                .into(),
        )
        .await
        .unwrap();
    let mut spy = client
        .subscribe(format!("{}.worker.>", s.prefix()))
        .await
        .unwrap();
    client.flush().await.unwrap();
    let c = run_task(&client, &s, sh("echo private"), Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(c.stdout, "private\n");
    assert!(
        tokio::time::timeout(Duration::from_millis(500), spy.next())
            .await
            .is_err(),
        "a client read an assignment"
    );

    let p: SwarmPulse = request(&client, s.status(), &()).await.unwrap();
    assert_eq!(p.live.len(), 1, "forged heartbeat joined: {p:?}");
    assert_eq!(
        p.tasks_accepted, 1,
        "only the client's task was accepted: {p:?}"
    );
}

#[tokio::test]
async fn monitoring_listens_on_loopback_only_and_auth_is_required() {
    let swarm = Swarm::start().await.unwrap();
    let mut conn = std::net::TcpStream::connect(("127.0.0.1", swarm.monitor_port)).unwrap();
    conn.write_all(b"GET /varz HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut body = String::new();
    conn.read_to_string(&mut body).unwrap();
    let json = &body[body.find('{').expect("json body")..];
    let varz: serde_json::Value = serde_json::from_str(json).unwrap();
    assert_eq!(varz["http_host"], "127.0.0.1", "{varz}");
    assert_eq!(varz["auth_required"], true);
    assert!(varz["jetstream"]["config"]["store_dir"].as_str().is_some());
    assert_eq!(varz["max_payload"], 8 * 1024 * 1024);
}
