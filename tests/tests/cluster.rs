//! Past one machine: a swarm on a three-node NATS cluster, each server on a host of its own
//! (network namespaces, see `vgas_tests::netns`; TLS on routes and clients, every stream with
//! three copies), loses no task when the server leading the tasks stream is SIGKILLed under
//! load; several masters, each on a host of its own, serve one swarm, one leading at a time,
//! and either one SIGKILLed under load loses and doubles no task; a worker at a leaf site, on
//! a host of its own, keeps its result through a cut of the site's cable. The tests on namespaces are skipped, loudly,
//! where namespaces cannot be made.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures::StreamExt;
use vgas_shared::codec::decode_as;
use vgas_shared::config::Role;
use vgas_shared::host::ENV_HOST_ID;
use vgas_shared::wire::{SwarmPulse, TaskEvent, TaskOutcome, TaskQuery, TaskRecord, TaskState};
use vgas_shared::{Encoding, TaskId};
use vgas_tests::cluster::{Cluster, Site, ELECTION};
use vgas_tests::netns::{Host, Lan};
use vgas_tests::{request, sh, simulated_host, wait_for, Placement, Proc, Swarm, WAIT};

/// Counts `finished` events per task on every task's event subject, as `observer` sees them.
async fn count_finished(
    observer: &async_nats::Client,
    swarm: &Swarm,
) -> (
    std::sync::Arc<std::sync::Mutex<HashMap<String, usize>>>,
    tokio::task::JoinHandle<()>,
) {
    let mut sub = observer
        .subscribe(format!("{}.task.*.events", swarm.subjects.prefix()))
        .await
        .unwrap();
    let counts = std::sync::Arc::new(std::sync::Mutex::new(HashMap::new()));
    let c2 = counts.clone();
    let task = tokio::spawn(async move {
        while let Some(msg) = sub.next().await {
            let Ok(ev) = decode_as::<TaskEvent>(Encoding::detect(&msg.payload), &msg.payload)
            else {
                continue;
            };
            if let TaskEvent::Finished { .. } = ev {
                let id = msg.subject.split('.').nth(2).unwrap_or_default().to_owned();
                *c2.lock().unwrap().entry(id).or_insert(0) += 1;
            }
        }
    });
    (counts, task)
}

/// Submits `n` tasks printing their number, in batches; every one must be accepted.
async fn submit(client: &async_nats::Client, swarm: &Swarm, n: usize) -> Vec<TaskId> {
    let api = vgas_client::api::Swarm::new(client.clone(), swarm.subjects.clone());
    let specs: Vec<_> = (0..n).map(|i| sh(&format!("echo {i}"))).collect();
    let ids: Vec<TaskId> = specs.iter().map(|_| TaskId::random()).collect::<Vec<_>>();
    let specs = specs
        .into_iter()
        .zip(&ids)
        .map(|(mut s, id)| {
            s.task_id = Some(id.clone());
            s
        })
        .collect();
    let answers = api.submit_batch(specs).await.unwrap();
    for (i, a) in answers.iter().enumerate() {
        assert!(a.is_ok(), "task {i} refused: {a:?}");
    }
    ids
}

/// Waits until every task's record is final, then checks each: exit 0, one `finished`
/// event at most (the record is the truth; an event published while the observer was
/// reconnecting is not resent).
async fn all_finished_once(
    client: &async_nats::Client,
    swarm: &Swarm,
    ids: &[TaskId],
    finished: &std::sync::Mutex<HashMap<String, usize>>,
    within: Duration,
) {
    let mut open: HashSet<TaskId> = ids.iter().cloned().collect();
    let end = tokio::time::Instant::now() + within;
    while !open.is_empty() {
        if tokio::time::Instant::now() > end {
            panic!(
                "{} of {} tasks not finished within {within:?}; what the logs say of them:\n{}",
                open.len(),
                ids.len(),
                log_lines(swarm, &open)
            );
        }
        let asks = open.iter().take(200).cloned().collect::<Vec<_>>();
        let records = futures::future::join_all(asks.iter().map(|id| async move {
            let q = TaskQuery {
                task_id: id.clone(),
            };
            request::<_, TaskRecord>(client, swarm.subjects.task_info(), &q).await
        }))
        .await;
        for (id, rec) in asks.iter().zip(records) {
            let Ok(rec) = rec else { continue };
            if let TaskState::Finished { outcome, .. } = &rec.state {
                assert_eq!(*outcome, TaskOutcome::Exited { exit_code: 0 }, "{id}");
                open.remove(id);
            }
        }
        if !open.is_empty() {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    // A finished event sent twice would still be arriving: give it a moment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let counts = finished.lock().unwrap();
    for id in ids {
        let n = counts.get(id.as_str()).copied().unwrap_or(0);
        if n > 1 {
            let one = HashSet::from([id.clone()]);
            panic!(
                "task {id} finished {n} times; what the logs say of it:\n{}",
                log_lines(swarm, &one)
            );
        }
    }
}

/// The lines of the swarm's logs that name one of `ids`.
fn log_lines(swarm: &Swarm, ids: &HashSet<TaskId>) -> String {
    let mut out = String::new();
    for entry in std::fs::read_dir(swarm.dir.path()).unwrap().flatten() {
        let path = entry.path();
        if path.extension().is_some_and(|e| e == "log") {
            let text = std::fs::read_to_string(&path).unwrap_or_default();
            for line in text.lines() {
                if ids.iter().any(|id| line.contains(id.as_str())) {
                    out.push_str(&format!("{}: {line}\n", path.display()));
                }
            }
        }
    }
    out
}

async fn status(client: &async_nats::Client, swarm: &Swarm) -> SwarmPulse {
    request(client, swarm.subjects.status(), &serde_json::json!({}))
        .await
        .unwrap()
}

/// Tasks in flight when a server or master dies.
const LOAD: usize = 1000;

/// Starts `vgas-worker ID` with `slots` on `host`, told `url` (mDNS off: it has its URL).
fn worker_on(swarm: &mut Swarm, host: &Host, id: &str, slots: usize, url: &str) -> Proc {
    let slots = slots.to_string();
    let me = simulated_host(id);
    swarm
        .spawn_at(
            Placement::On(host),
            id,
            "vgas-worker",
            &["--id", id, "--slots", &slots],
            &[
                (ENV_HOST_ID, &me),
                ("VGAS_NATS_URL", url),
                ("VGAS_NO_MDNS", "true"),
            ],
        )
        .unwrap()
}

/// Starts `vgas-master` on `host`, told `url` (mDNS off).
fn master_on(swarm: &mut Swarm, host: &Host, url: &str, env: &[(&str, &str)]) -> Proc {
    let mut all = vec![("VGAS_NATS_URL", url), ("VGAS_NO_MDNS", "true")];
    all.extend_from_slice(env);
    swarm
        .spawn_at(Placement::On(host), "master", "vgas-master", &[], &all)
        .unwrap()
}

#[tokio::test]
async fn a_killed_stream_leader_loses_no_accepted_task() {
    let Some(lan) = Lan::new(3).unwrap() else {
        return;
    };
    let mut cluster = Cluster::start_on(lan.hosts(), true).await.unwrap();
    // The master on the first server's host, a worker on each of the others', each told
    // every server: whichever server dies, some of them lose theirs and move over the LAN.
    let swarm = &mut cluster.swarm;
    let urls = swarm.url();
    let _master = master_on(swarm, lan.host(0), &urls, &[]);
    let _w1 = worker_on(swarm, lan.host(1), "w1", 4, &urls);
    let _w2 = worker_on(swarm, lan.host(2), "w2", 4, &urls);
    let client = swarm.connect(Role::Client).await.unwrap();
    let pulse = swarm.wait_workers(&client, 2).await.unwrap();
    assert_eq!(pulse.replicas, 3, "three servers keep three copies");
    let observer = swarm.connect(Role::Master).await.unwrap();
    let (finished, _counting) = count_finished(&observer, swarm).await;
    let tasks = swarm.subjects.tasks_bucket();
    let (leader, copies) = cluster
        .stream_peers(&observer, &format!("KV_{tasks}"))
        .await
        .unwrap();
    assert_eq!(copies, 3);

    let ids = submit(&client, &cluster.swarm, LOAD).await;
    // Some tasks done, most in flight or queued, when the tasks stream's leader dies.
    wait_for("the first tasks finished", WAIT, || {
        let n = finished.lock().unwrap().len();
        async move { (n >= 50).then_some(()) }
    })
    .await
    .unwrap();
    cluster.node(&leader).server.kill();
    all_finished_once(&client, &cluster.swarm, &ids, &finished, WAIT * 4).await;
    // Another server leads the stream now, and the swarm takes new work.
    let (now, _) = cluster
        .stream_peers(&observer, &format!("KV_{tasks}"))
        .await
        .unwrap();
    assert_ne!(now, leader);
    let more = submit(&client, &cluster.swarm, 10).await;
    all_finished_once(&client, &cluster.swarm, &more, &finished, ELECTION).await;
    // The dead server comes back and catches up.
    cluster.restart(&leader).unwrap();
    cluster.wait_jetstream().await.unwrap();
}

/// The master process that leads now, by the id `vgas.status` reports and the id each
/// master logs when it takes the lease.
fn leading<'a>(masters: &'a mut [(Proc, usize)], id: &str) -> (&'a mut Proc, usize) {
    masters
        .iter_mut()
        .map(|(m, host)| (m, *host))
        .find(|(m, _)| {
            m.log_text()
                .lines()
                .any(|l| l.contains("leading the swarm") && l.contains(id))
        })
        .unwrap_or_else(|| panic!("no master logged that it leads as {id}"))
}

#[tokio::test]
async fn two_masters_either_one_killed_under_load_loses_and_doubles_nothing() {
    // The server on one host, a master on each of the two others (each with a worker
    // beside it): the masters reach the server, and each other's lease, over the LAN.
    let Some(lan) = Lan::new(3).unwrap() else {
        return;
    };
    let mut swarm = Swarm::start_tls_with(Some(lan.host(0).clone()), &[])
        .await
        .unwrap();
    let url = swarm.url();
    // Each master with the host it runs on, so a killed one comes back on its own host.
    let mut masters: Vec<(Proc, usize)> = vec![
        (master_on(&mut swarm, lan.host(1), &url, &[]), 1),
        (master_on(&mut swarm, lan.host(2), &url, &[]), 2),
    ];
    let _w1 = worker_on(&mut swarm, lan.host(1), "w1", 4, &url);
    let _w2 = worker_on(&mut swarm, lan.host(2), "w2", 4, &url);
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, 2).await.unwrap();
    let observer = swarm.connect(Role::Master).await.unwrap();
    let (finished, _counting) = count_finished(&observer, &swarm).await;
    // One leads, the other stands by serving nothing.
    let first = status(&client, &swarm).await.master.unwrap();
    wait_for("the other master standing by", WAIT, || {
        let standing = masters
            .iter()
            .any(|(m, _)| m.log_text().contains("another master leads: standing by"));
        async move { standing.then_some(()) }
    })
    .await
    .unwrap();

    for round in 0..2 {
        let leader = status(&client, &swarm).await.master.unwrap();
        if round == 0 {
            assert_eq!(leader, first);
        }
        let ids = submit(&client, &swarm, LOAD / 2).await;
        wait_for("some tasks finished", WAIT, || {
            let n = ids
                .iter()
                .filter(|id| finished.lock().unwrap().contains_key(id.as_str()))
                .count();
            async move { (n >= 20).then_some(()) }
        })
        .await
        .unwrap();
        let (dead, host) = leading(&mut masters, &leader.id);
        dead.signal(libc::SIGKILL);
        dead.wait_exit(WAIT).await.unwrap();
        // The standby takes over; submits keep being accepted through the failover.
        let during = submit(&client, &swarm, 20).await;
        all_finished_once(&client, &swarm, &ids, &finished, WAIT * 4).await;
        all_finished_once(&client, &swarm, &during, &finished, WAIT).await;
        let next = status(&client, &swarm).await.master.unwrap();
        assert_ne!(next.id, leader.id, "round {round}");
        // The killed master comes back, on its host, as the standby: the next round kills
        // the other one.
        masters.push((master_on(&mut swarm, lan.host(host), &url, &[]), host));
    }
}

#[tokio::test]
async fn a_site_worker_keeps_its_result_through_a_cut_of_the_leaf_link() {
    // The hub (its server and the master) on one host, the site (its server and its worker)
    // on another; the test talks to the hub over the LAN.
    let Some(lan) = Lan::new(2).unwrap() else {
        return;
    };
    let (hub_host, site_host) = (lan.host(0).clone(), lan.host(1).clone());
    let leaf = format!("{}:{}", hub_host.addr, vgas_tests::free_port());
    let mut hub = Swarm::start_tls_with(Some(hub_host.clone()), &["--leaf-listen", &leaf])
        .await
        .unwrap();
    let site = Site::start(&hub, &leaf, Some(&site_host)).await.unwrap();
    let hub_url = hub.url();
    let _master = master_on(&mut hub, &hub_host, &hub_url, &[]);
    let _worker = worker_on(&mut hub, &site_host, "site-w1", 2, &site.url());
    let client = hub.connect(Role::Client).await.unwrap();
    hub.wait_workers(&client, 1).await.unwrap();

    // Output before the cut crosses the link; the task ends while the link is down.
    let id = TaskId::random();
    let mut spec = sh("echo before; sleep 1.5; echo after");
    spec.task_id = Some(id.clone());
    let mut events = client
        .subscribe(hub.subjects.task_events(&id))
        .await
        .unwrap();
    let _: vgas_shared::wire::SubmitReply = request(&client, hub.subjects.submit(), &spec)
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !seen.iter().any(|e| matches!(e, TaskEvent::Stdout { .. })) {
        let msg = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("output before the cut")
            .unwrap();
        seen.push(decode_as::<TaskEvent>(Encoding::detect(&msg.payload), &msg.payload).unwrap());
    }
    let closed_before = site
        .server
        .log_text()
        .matches("Leafnode connection closed")
        .count();
    // The site's cable is pulled: the site and its worker still reach each other, nothing
    // crosses to the hub, and no connection is closed by a word from the other end.
    lan.link_down(1).unwrap();
    wait_for("the site to lose its hub", WAIT, || {
        let n = site
            .server
            .log_text()
            .matches("Leafnode connection closed")
            .count();
        async move { (n > closed_before).then_some(()) }
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    lan.link_up(1).unwrap();
    let rest = vgas_tests::collect(events, WAIT, Duration::from_secs(1))
        .await
        .unwrap();
    assert_eq!(rest.finished_count(), 1, "{:?}", rest.events);
    assert_eq!(rest.outcome(), TaskOutcome::Exited { exit_code: 0 });
    let rec: TaskRecord = request(
        &client,
        hub.subjects.task_info(),
        &TaskQuery {
            task_id: id.clone(),
        },
    )
    .await
    .unwrap();
    assert!(matches!(rec.state, TaskState::Finished { .. }), "{rec:?}");
}
