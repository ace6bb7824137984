//! Tests of `AgentScheduler`: rotation, capabilities, draining, membership, restored counts
//! and concurrent reservations.

use super::*;

fn beat(id: &str, slots: usize, caps: &[&str]) -> Heartbeat {
    Heartbeat {
        worker: Some(WorkerId::parse(id).unwrap()),
        slots,
        free_slots: slots,
        capabilities: caps.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

fn needs(caps: &[&str]) -> Needs {
    Needs {
        capabilities: caps.iter().map(|s| s.to_string()).collect(),
        gpus: None,
    }
}

#[test]
fn rotates_fairly_and_respects_slots() {
    let s = AgentScheduler::new();
    for id in ["a", "b", "c"] {
        assert_eq!(
            s.handle_agent_heartbeat(beat(id, 2, &[])),
            Some(BeatEffect::Joined)
        );
    }
    let picks: Vec<String> = (0..6)
        .map(|_| s.gatling_rotate_next(&needs(&[])).unwrap().id.to_string())
        .collect();
    for id in ["a", "b", "c"] {
        assert_eq!(picks.iter().filter(|p| *p == id).count(), 2, "{picks:?}");
    }
    assert_eq!(
        s.gatling_rotate_next(&needs(&[])).unwrap_err(),
        NoWorker::AllBusy
    );
    s.release(&WorkerId::parse("b").unwrap());
    assert_eq!(s.gatling_rotate_next(&needs(&[])).unwrap().id.as_str(), "b");
}

#[test]
fn skips_incapable_and_draining_workers() {
    let s = AgentScheduler::new();
    s.handle_agent_heartbeat(beat("cpu", 4, &[]));
    s.handle_agent_heartbeat(beat("gpu", 4, &["gpu"]));
    for _ in 0..4 {
        assert_eq!(
            s.gatling_rotate_next(&needs(&["gpu"])).unwrap().id.as_str(),
            "gpu"
        );
    }
    assert_eq!(
        s.gatling_rotate_next(&needs(&["gpu"])).unwrap_err(),
        NoWorker::AllBusy
    );
    assert_eq!(
        s.gatling_rotate_next(&needs(&["tpu"])).unwrap_err(),
        NoWorker::NoneCapable
    );
    let mut d = beat("cpu", 4, &[]);
    d.draining = true;
    s.handle_agent_heartbeat(d);
    assert_eq!(
        s.gatling_rotate_next(&needs(&[])).unwrap_err(),
        NoWorker::AllBusy
    );
}

#[test]
fn a_worker_that_did_not_answer_gets_nothing_until_it_beats_again() {
    let s = AgentScheduler::new();
    s.handle_agent_heartbeat(beat("a", 4, &[]));
    let a = WorkerId::parse("a").unwrap();
    s.unanswered(&a);
    assert_eq!(
        s.gatling_rotate_next(&needs(&[])).unwrap_err(),
        NoWorker::AllBusy
    );
    s.handle_agent_heartbeat(beat("a", 4, &[]));
    assert_eq!(s.gatling_rotate_next(&needs(&[])).unwrap().id, a);
}

#[test]
fn leaving_and_rejoining() {
    let s = AgentScheduler::new();
    s.handle_agent_heartbeat(beat("a", 1, &[]));
    let mut bye = beat("a", 1, &[]);
    bye.leaving = true;
    assert_eq!(s.handle_agent_heartbeat(bye), Some(BeatEffect::Left));
    assert!(s.get_swarm_status().live.is_empty());
    assert_eq!(
        s.handle_agent_heartbeat(beat("a", 1, &[])),
        Some(BeatEffect::Joined)
    );
    assert_eq!(s.get_swarm_status().live.len(), 1);
}

#[test]
fn restored_in_flight_counts_apply_on_join() {
    let s = AgentScheduler::new();
    let id = WorkerId::parse("a").unwrap();
    s.restore_in_flight(&id, 1);
    s.handle_agent_heartbeat(beat("a", 1, &[]));
    assert_eq!(
        s.gatling_rotate_next(&needs(&[])).unwrap_err(),
        NoWorker::AllBusy
    );
}

#[test]
fn concurrent_reservations_never_exceed_slots() {
    let workers: Vec<_> = (0..8)
        .map(|i| WorkerEntry::synthetic(&format!("w{i}"), 3, &[]))
        .collect();
    let s = Arc::new(AgentScheduler::with_pool(workers.clone()));
    let taken = Arc::new(AtomicUsize::new(0));
    let threads: Vec<_> = (0..4)
        .map(|_| {
            let (s, taken) = (s.clone(), taken.clone());
            std::thread::spawn(move || {
                for _ in 0..100 {
                    if s.gatling_rotate_next(&Needs::default()).is_ok() {
                        taken.fetch_add(1, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(taken.load(Ordering::Relaxed), 24);
    assert!(workers.iter().all(|w| w.in_flight() == 3));
}

#[test]
fn queues_ahead_only_once_every_slot_is_taken() {
    let s = AgentScheduler::new();
    s.handle_agent_heartbeat(Heartbeat {
        queue_ahead: 2,
        ..beat("a", 1, &[])
    });
    s.handle_agent_heartbeat(beat("b", 2, &[]));
    // Every slot first (a's one, b's two), whatever the rotation's order.
    let mut picks: Vec<String> = (0..3)
        .map(|_| s.gatling_rotate_next(&needs(&[])).unwrap().id.to_string())
        .collect();
    picks.sort();
    assert_eq!(picks, ["a", "b", "b"]);
    // Then a's queue, which b does not have, and no more.
    for _ in 0..2 {
        assert_eq!(s.gatling_rotate_next(&needs(&[])).unwrap().id.as_str(), "a");
    }
    assert_eq!(
        s.gatling_rotate_next(&needs(&[])).unwrap_err(),
        NoWorker::AllBusy
    );
    // A freed slot of b's goes before a's queue again.
    s.release(&WorkerId::parse("b").unwrap());
    s.release(&WorkerId::parse("a").unwrap());
    assert_eq!(s.gatling_rotate_next(&needs(&[])).unwrap().id.as_str(), "b");
    assert_eq!(s.gatling_rotate_next(&needs(&[])).unwrap().id.as_str(), "a");
    // A task holding devices never queues: slots only.
    assert_eq!(
        s.gatling_rotate_next_where(&needs(&[]), |_| Some(()))
            .unwrap_err(),
        NoWorker::AllBusy
    );
}
