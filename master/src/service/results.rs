//! The worker results and events that reach the master through the durable results stream:
//! read in order by one consumer, each event relayed and then acknowledged, each result handed
//! to the dispatcher, which acknowledges it once recorded; and the check every result passes,
//! on the stream or straight from its worker's subject (`dispatch::direct`).

use futures::StreamExt;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;
use vgas_shared::codec::decode;
use vgas_shared::limits::MAX_SUBMIT_BYTES;
use vgas_shared::Subjects;

use crate::dispatch::Command;

/// A worker's result from a message on `subject`. It counts only on the subject of the
/// worker it names: a node's key publishes on its own subjects only, so it cannot speak for
/// another worker.
pub fn result_of(
    subjects: &Subjects,
    subject: &str,
    payload: &[u8],
) -> Result<vgas_shared::wire::WorkerResult, String> {
    let (r, _) = decode::<vgas_shared::wire::WorkerResult>(payload, MAX_SUBMIT_BYTES)
        .map_err(|e| e.to_string())?;
    match subjects.worker_of_result(subject) {
        Some(w) if w == r.worker => Ok(r),
        _ => Err(format!("it claims worker {}", r.worker)),
    }
}

/// A stream message to acknowledge here once `done` fires (`None`: the actor acknowledges
/// it itself), with whether it fired (false: the actor is gone).
async fn once_done(
    msg: Option<async_nats::jetstream::Message>,
    done: oneshot::Receiver<()>,
) -> (Option<async_nats::jetstream::Message>, bool) {
    (msg, done.await.is_ok())
}

/// Results the consumer hands to the dispatcher before the first of them is recorded: enough
/// that a burst shares one round of writes, bounded so a flood waits in the stream.
const MAX_RESULTS_IN_FLIGHT: usize = 256;

/// Reads worker results, and the events workers send before them, from the durable stream,
/// in order. An event is acknowledged here once relayed; a result goes to the dispatcher
/// with its message, which acknowledges it right after the task's `finished` event
/// ([`crate::dispatch::ResultAck`]).
pub async fn results(
    consumer: async_nats::jetstream::consumer::PullConsumer,
    subjects: Subjects,
    tx: mpsc::Sender<Command>,
) -> anyhow::Result<()> {
    use futures::stream::FuturesUnordered;
    let mut messages = consumer.messages().await?;
    // Results handed to the dispatcher and not yet recorded: each is acknowledged once its
    // record is written, so one round of writes covers a burst; a master killed before that
    // gets them again.
    let mut recording = FuturesUnordered::new();
    loop {
        tokio::select! {
            Some((msg, recorded)) = recording.next(), if !recording.is_empty() => {
                // The futures pushed below are only seen further down: name their output.
                let (msg, recorded): (Option<async_nats::jetstream::Message>, bool) =
                    (msg, recorded);
                if !recorded {
                    break;
                }
                if let Some(msg) = msg {
                    if let Err(e) = msg.ack().await {
                        warn!("could not acknowledge an event: {e}");
                    }
                }
            }
            msg = messages.next(), if recording.len() < MAX_RESULTS_IN_FLIGHT => {
                let Some(msg) = msg else { break };
                let msg = match msg {
                    Ok(m) => m,
                    Err(e) => {
                        warn!("results stream: {e}");
                        continue;
                    }
                };
                // A worker's event, in order before its result: relayed, then acknowledged.
                if let Some((worker, task_id)) = subjects.parse_worker_events(&msg.subject) {
                    let (done, relayed) = oneshot::channel();
                    let payload = msg.payload.clone();
                    let seq = msg.info().map_or(0, |i| i.stream_sequence);
                    let event = Command::Event {
                        worker,
                        task_id,
                        payload,
                        seq,
                        done,
                    };
                    if tx.send(event).await.is_err() {
                        break;
                    }
                    recording.push(once_done(Some(msg), relayed));
                    continue;
                }
                match result_of(&subjects, &msg.subject, &msg.payload) {
                    Ok(result) => {
                        let (done, recorded) = oneshot::channel();
                        let ack = crate::dispatch::ResultAck::Stream {
                            msg: Some(Box::new(msg)),
                            done,
                        };
                        if tx.send(Command::Result { result, ack }).await.is_err() {
                            break;
                        }
                        recording.push(once_done(None, recorded));
                    }
                    Err(e) => {
                        warn!(subject = %msg.subject, "dropping a result: {e}");
                        if let Err(e) = msg.ack().await {
                            warn!("could not acknowledge a result: {e}");
                        }
                    }
                }
            }
        }
    }
    Ok(())
}
