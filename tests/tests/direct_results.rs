//! A worker offers each result straight to the leading master first (`Subjects::result_direct`)
//! and stores it in the results stream only when the master does not take it. Quiet tasks
//! end without their results ever entering the stream; a result nobody takes (no answer in
//! time, or an answer that declines it) is stored, and a master started later ends its task
//! from the stream, once; after an unanswered offer the worker stores results unoffered for
//! a while.

use std::time::Duration;

use futures::StreamExt;
use vgas_shared::config::Role;
use vgas_shared::wire::TaskOutcome;
use vgas_tests::{collect, run_task, sh, submit_until_started, wait_for, Swarm, WAIT};

/// Results ever stored in the results stream (its last sequence counts workers' events too).
async fn stored(js: &async_nats::jetstream::Context, swarm: &Swarm) -> u64 {
    let mut stream = js
        .get_stream(swarm.subjects.results_stream())
        .await
        .unwrap();
    stream.info().await.unwrap().state.last_sequence
}

/// Runs `true` to its end: one `finished`, exit code 0.
async fn run_true(client: &async_nats::Client, swarm: &Swarm) {
    let c = run_task(
        client,
        &swarm.subjects,
        sh("true"),
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    assert_eq!(c.finished_count(), 1, "{:?}", c.events);
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });
}

#[tokio::test]
async fn quiet_tasks_end_without_their_results_entering_the_stream() {
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let master = swarm.connect(Role::Master).await.unwrap();
    let js = async_nats::jetstream::new(master);
    let before = stored(&js, &swarm).await;
    for _ in 0..5 {
        run_true(&client, &swarm).await;
    }
    // Taken straight by the master, each one: nothing went into the stream.
    assert_eq!(stored(&js, &swarm).await, before);
}

#[tokio::test]
async fn results_no_master_takes_are_stored_and_end_their_tasks_once() {
    let (mut swarm, mut procs, client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let (a, ..) = submit_until_started(&client, &swarm.subjects, sh("sleep 2; echo a")).await;
    let (b, ..) = submit_until_started(&client, &swarm.subjects, sh("sleep 2; echo b")).await;
    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(WAIT).await.unwrap();

    // The test stands where the master was: it leaves the first offer unanswered and
    // declines the second, as a master does a result it cannot take.
    let master = swarm.connect(Role::Master).await.unwrap();
    let js = async_nats::jetstream::new(master.clone());
    let before = stored(&js, &swarm).await;
    let mut offers = master
        .subscribe(swarm.subjects.all_results_direct())
        .await
        .unwrap();
    let first = tokio::time::timeout(WAIT, offers.next())
        .await
        .expect("a result offered")
        .unwrap();
    assert!(first.reply.is_some(), "offered as a request");
    let second = tokio::time::timeout(WAIT, offers.next())
        .await
        .expect("a second result offered")
        .unwrap();
    master
        .publish(second.reply.unwrap(), "stream".into())
        .await
        .unwrap();
    wait_for("both results stored", WAIT, || async {
        // Each attempt's output event and its result.
        (stored(&js, &swarm).await >= before + 4).then_some(())
    })
    .await
    .unwrap();
    drop(offers);

    let _master2 = swarm.master(&[]).unwrap();
    for (sub, out) in [(a, "a\n"), (b, "b\n")] {
        let c = collect(sub, WAIT * 2, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(c.finished_count(), 1, "{:?}", c.events);
        assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 0 });
        assert_eq!(c.stdout, out);
    }

    // An offer went unanswered: for a while the worker stores its results without offering
    // them (the next master may take them from the stream alone, or old grants may refuse
    // every offer), and they end their tasks all the same.
    let before = stored(&js, &swarm).await;
    run_true(&client, &swarm).await;
    assert_eq!(stored(&js, &swarm).await, before + 1);
    assert!(procs[1].log_text().contains("no answer from the master"));
}
