//! A worker's result reaches the master twice: straight from its subject and through the
//! results stream. When the stream cannot store it for a while (here its subjects are
//! changed under it, as a stream being recreated would be), the task still finishes from
//! the direct copy and is announced once the master's hold for the stream's copy runs out;
//! when the worker's retried publish is stored at last, that copy is acknowledged and
//! announces nothing again.

use std::time::Duration;

use futures::StreamExt;
use vgas_shared::codec::decode_as;
use vgas_shared::config::Role;
use vgas_shared::wire::{SubmitReply, TaskEvent, TaskOutcome};
use vgas_shared::{Encoding, TaskId};
use vgas_tests::{request, sh, wait_for, Swarm, WAIT};

#[tokio::test]
async fn a_result_the_stream_cannot_store_yet_is_announced_once_from_its_direct_copy() {
    let (swarm, procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let master = swarm.connect(Role::Master).await.unwrap();
    let js = async_nats::jetstream::new(master.clone());
    let name = swarm.subjects.results_stream();
    let mut stream = js.get_stream(&name).await.unwrap();
    let info = stream.info().await.unwrap().clone();
    let (config, stored_before) = (info.config.clone(), info.state.last_sequence);
    let mut without = config.clone();
    without
        .subjects
        .retain(|s| *s != swarm.subjects.all_results());
    assert_ne!(
        without.subjects, config.subjects,
        "the stream takes results"
    );
    js.update_stream(&without).await.unwrap();

    let id = TaskId::random();
    let mut events = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let mut spec = sh("true");
    spec.task_id = Some(id.clone());
    let _: SubmitReply = request(&client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();
    // Finished while the stream still cannot store the result: from the direct copy alone.
    loop {
        let msg = tokio::time::timeout(WAIT, events.next())
            .await
            .expect("the task announced without the stream's copy")
            .unwrap();
        let ev: TaskEvent = decode_as(Encoding::detect(&msg.payload), &msg.payload).unwrap();
        if let TaskEvent::Finished { outcome, .. } = ev {
            assert_eq!(outcome, TaskOutcome::Exited { exit_code: 0 });
            break;
        }
    }
    assert!(
        procs[1].log_text().contains("result not stored yet"),
        "the worker's publish was refused meanwhile"
    );

    // The stream takes results again: the worker's next try is stored, the master takes it
    // (an acknowledged result leaves the work queue) and announces nothing.
    js.update_stream(&config).await.unwrap();
    wait_for("the result stored and taken", WAIT * 2, || async {
        let mut stream = js.get_stream(&name).await.ok()?;
        let state = stream.info().await.ok()?.state.clone();
        (state.last_sequence > stored_before && state.messages == 0).then_some(())
    })
    .await
    .unwrap();
    let again = tokio::time::timeout(Duration::from_secs(1), events.next()).await;
    assert!(again.is_err(), "announced again: {again:?}");
}
