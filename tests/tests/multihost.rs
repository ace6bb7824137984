//! Several hosts on one machine (network namespaces, see `vgas_tests::netns`): workers started
//! with no NATS URL find the master by mDNS; a worker of another cluster stays out and is
//! reported; a worker whose link goes down mid-task turns abnormal, its task completes
//! elsewhere, and it rejoins when the link returns; a master that restarts on a new address
//! is found again. Skipped, loudly, where namespaces cannot be made.

use std::time::Duration;

use vgas_shared::config::Role;
use vgas_shared::discovery::JoinRefusal;
use vgas_shared::wire::{SwarmPulse, TaskEvent, TaskOutcome};
use vgas_tests::netns::Lan;
use vgas_tests::{collect, request, run_task, sh, wait_for, Placement, Swarm, WAIT};

async fn status(client: &async_nats::Client, swarm: &Swarm) -> Option<SwarmPulse> {
    request(client, swarm.subjects.status(), &()).await.ok()
}

#[tokio::test]
async fn workers_find_the_master_by_mdns_and_strangers_stay_out() {
    let Some(lan) = Lan::new(5).unwrap() else {
        return;
    };
    let mut swarm = Swarm::start_on(Some(lan.host(0).clone())).await.unwrap();
    let h0 = lan.host(0).clone();
    let _m = swarm
        .spawn_at(
            Placement::On(&h0),
            "master",
            "vgas-master",
            &["--cluster", "lab", "--advertise-http-port", "8222"],
            &[],
        )
        .unwrap();
    let (h1, h2, h3) = (
        lan.host(1).clone(),
        lan.host(2).clone(),
        lan.host(3).clone(),
    );
    let _w1 = swarm
        .worker_at(
            Placement::Discover(&h1),
            "w1",
            &["--slots", "1", "--cluster", "lab"],
        )
        .unwrap();
    let _w2 = swarm
        .worker_at(
            Placement::Discover(&h2),
            "w2",
            &["--slots", "1", "--cluster", "lab"],
        )
        .unwrap();
    let stranger = swarm
        .worker_at(
            Placement::Discover(&h3),
            "stranger",
            &["--cluster", "elsewhere"],
        )
        .unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    let pulse = swarm.wait_workers(&client, 2).await.unwrap();
    let ids: Vec<&str> = pulse.live.iter().map(|n| n.id.as_str()).collect();
    assert_eq!(ids, ["w1", "w2"]);

    // Both take tasks.
    for _ in 0..4 {
        let c = run_task(
            &client,
            &swarm.subjects,
            sh("hostname -I 2>/dev/null || true; echo ok"),
            Duration::ZERO,
        )
        .await
        .unwrap();
        assert!(c.outcome().succeeded(), "{:?}", c.events);
    }
    let pulse = status(&client, &swarm).await.unwrap();
    assert!(pulse.live.iter().all(|n| n.tasks_done >= 1), "{pulse:?}");

    // The stranger is seen, not joined, and the reason is given.
    let pulse = wait_for("the stranger to be reported", WAIT, || {
        let (client, swarm) = (client.clone(), &swarm);
        async move {
            let p = status(&client, swarm).await?;
            p.unjoined
                .iter()
                .any(|u| u.advert.node_id == "stranger")
                .then_some(p)
        }
    })
    .await
    .unwrap();
    let s = pulse
        .unjoined
        .iter()
        .find(|u| u.advert.node_id == "stranger")
        .unwrap();
    assert_eq!(s.not_joined, Some(JoinRefusal::OtherCluster));
    assert_eq!(s.advert.cluster, "elsewhere");
    assert_eq!(pulse.live.len(), 2);

    // `vgas discover` on a host of the LAN lists everyone, with who joined.
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &h0.ns])
        .arg(vgas_tests::bin("vgas"))
        .args(["discover", "--wait", "4", "--json", "--cluster", "lab"])
        .env("VGAS_NATS_URL", swarm.url())
        .env("VGAS_STATE_DIR", swarm.state_dir())
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let nodes: Vec<vgas_shared::discovery::SeenNode> = serde_json::from_slice(&out.stdout).unwrap();
    let state = |id: &str| {
        nodes
            .iter()
            .find(|n| n.advert.node_id == id)
            .map(|n| n.not_joined)
    };
    assert_eq!(state("w1"), Some(None), "{nodes:?}");
    assert_eq!(state("w2"), Some(None), "{nodes:?}");
    assert_eq!(
        state("stranger"),
        Some(Some(JoinRefusal::OtherCluster)),
        "{nodes:?}"
    );
    let master = nodes
        .iter()
        .find(|n| n.advert.mode == vgas_shared::discovery::ClientMode::Master)
        .expect("the master");
    assert_eq!(master.advert.cluster, "lab");
    assert_eq!(master.advert.http_port, Some(8222));
    assert_eq!(
        master.advert.proto,
        vgas_shared::discovery::PROTOCOL_VERSION
    );
    assert!(
        master
            .advert
            .urls_from(&master.addresses)
            .contains(&swarm.url()),
        "{master:?}"
    );
    assert!(
        master.addresses.contains(&std::net::IpAddr::V4(h0.addr)),
        "{master:?}"
    );

    // A node that stops says goodbye: it leaves the list at once, not when its record expires.
    stranger.signal(libc::SIGTERM);
    wait_for("the stranger's goodbye", Duration::from_secs(10), || {
        let (client, swarm) = (client.clone(), &swarm);
        async move {
            let p = status(&client, swarm).await?;
            (!p.unjoined.iter().any(|u| u.advert.node_id == "stranger")).then_some(())
        }
    })
    .await
    .unwrap();

    // A worker whose only interface comes up after it started still finds the master.
    let h4 = lan.host(4).clone();
    lan.set_host_interface(4, false).unwrap();
    let _late = swarm
        .worker_at(Placement::Discover(&h4), "late", &["--cluster", "lab"])
        .unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    lan.set_host_interface(4, true).unwrap();
    let pulse = swarm.wait_workers(&client, 3).await.unwrap();
    assert!(
        pulse.live.iter().any(|n| n.id.as_str() == "late"),
        "{pulse:?}"
    );
}

#[tokio::test]
async fn a_cut_link_fails_over_and_the_worker_rejoins_then_a_moved_master_is_found() {
    let Some(mut lan) = Lan::new(3).unwrap() else {
        return;
    };
    let h0 = lan.host(0).clone();
    let mut swarm = Swarm::start_on(Some(h0.clone())).await.unwrap();
    let mut master = swarm
        .spawn_at(Placement::On(&h0), "master", "vgas-master", &[], &[])
        .unwrap();
    let (h1, h2) = (lan.host(1).clone(), lan.host(2).clone());
    let _w1 = swarm
        .worker_at(Placement::Discover(&h1), "w1", &["--slots", "1"])
        .unwrap();
    let _w2 = swarm
        .worker_at(Placement::Discover(&h2), "w2", &["--slots", "1"])
        .unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 2).await.unwrap();

    // Start a task, then cut the link of whichever worker runs it.
    let id = vgas_shared::TaskId::random();
    let mut spec = sh("sleep 3; echo done");
    spec.task_id = Some(id.clone());
    let mut sub = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let _: vgas_shared::wire::SubmitReply = request(&client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();
    let first = loop {
        let msg = tokio::time::timeout(WAIT, futures::StreamExt::next(&mut sub))
            .await
            .unwrap()
            .unwrap();
        let ev: TaskEvent =
            vgas_shared::codec::decode_as(vgas_shared::Encoding::MsgPack, &msg.payload).unwrap();
        if let TaskEvent::Started { worker, .. } = ev {
            break worker.to_string();
        }
    };
    let cut = if first == "w1" { 1 } else { 2 };
    lan.link_down(cut).unwrap();
    let c = collect(sub, WAIT * 2, Duration::from_millis(500))
        .await
        .unwrap();
    assert_eq!(c.finished_count(), 1);
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });
    let Some(TaskEvent::Finished {
        worker: Some(w), ..
    }) = c.finished()
    else {
        panic!()
    };
    assert_ne!(w.as_str(), first, "the task must complete elsewhere");
    let p = status(&client, &swarm).await.unwrap();
    assert!(p.abnormal.iter().any(|a| a.id.as_str() == first), "{p:?}");

    lan.link_up(cut).unwrap();
    let p = swarm.wait_workers(&client, 2).await.unwrap();
    assert!(p.abnormal.is_empty(), "{p:?}");

    // The master and its server move to a new address; workers find them with no restart.
    master.kill();
    let h3 = lan.add_host().unwrap();
    swarm.move_server(h3.clone()).await.unwrap();
    let _master2 = swarm
        .spawn_at(Placement::On(&h3), "master2", "vgas-master", &[], &[])
        .unwrap();
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 2).await.unwrap();
    let c = run_task(
        &client,
        &swarm.subjects,
        sh("echo after the move"),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(c.stdout, "after the move\n");
}
