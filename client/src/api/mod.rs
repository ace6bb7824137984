//! The one task API every caller of the swarm uses: the `vgas` CLI, the compiler wrapper, the
//! master's plan runner and the worker's agent tools. A request decodes the master's answer
//! through `codec::Reply<T>` (a refusal is [`Refused`]); `follow` submits a task and follows
//! its events with lost attempts' output dropped in one place; `objects` fetches and uploads
//! Object Store objects with size caps; `plan` submits a build plan and follows its updates.
//!
//! One copy of each, so a fix (a missed final event, a lost attempt's output) lands once.

pub mod batch;
mod direct;
pub mod follow;
pub mod objects;
pub mod plan;

use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::{jetstream, Client};
use serde::de::DeserializeOwned;
use serde::Serialize;
use vgas_shared::codec::{decode_as, encode, Reply};
use vgas_shared::error::WireError;
use vgas_shared::wire::{CancelReply, TaskQuery};
use vgas_shared::{Encoding, Subjects, TaskId};

pub use follow::{Artifact, ArtifactBody, Following, RelayedSeen, Step, Submitted};

/// How long a request waits for the master's answer by default: long enough for a master
/// busy with a burst of submits, short enough that a dead master is reported, not waited on.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The shortest a try of a request waits for its answer before it is sent again (a fifth of
/// the request's time limit, so a batch gets longer): a master that died holding the
/// request never answers it; a busy one answers a submit in milliseconds.
const REQUEST_TRY_TIMEOUT: Duration = Duration::from_secs(2);

/// The pause between tries of a request nobody serves yet (a master starting or taking over).
const NO_MASTER_RETRY: Duration = Duration::from_millis(100);

/// The master's answer to a refused request (bad input, busy, unknown task...).
#[derive(Debug, thiserror::Error)]
#[error("the master refused: {0}")]
pub struct Refused(pub WireError);

/// One swarm, as its callers see it: the NATS connection, its JetStream context and the
/// subject names. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Swarm {
    pub client: Client,
    pub js: jetstream::Context,
    pub subjects: Subjects,
    /// Object Store buckets opened so far, shared by the clones: opening one is a
    /// `STREAM.INFO` round trip, which a build would otherwise make for every file it ships.
    buckets: objects::OpenBuckets,
}

impl Swarm {
    /// A round trip the server answers itself (`$JS.API.INFO`): when it returns, every
    /// message this connection published before has been processed by the server, and every
    /// message the server routed to this connection before has been read and handed to its
    /// subscription. (`Client::flush` only empties the socket's write buffer.) False when the
    /// server did not answer within `limit`.
    pub async fn sync(&self, limit: Duration) -> bool {
        matches!(
            tokio::time::timeout(limit, self.js.query_account()).await,
            Ok(Ok(_))
        )
    }

    pub fn new(client: Client, subjects: Subjects) -> Self {
        let js = jetstream::new(client.clone());
        Swarm {
            client,
            js,
            subjects,
            buckets: Default::default(),
        }
    }

    /// A MessagePack request with the default time limit; see [`Swarm::request_within`].
    pub async fn request<Q: Serialize, A: DeserializeOwned>(
        &self,
        subject: String,
        body: &Q,
    ) -> Result<A> {
        self.request_within(subject, body, REQUEST_TIMEOUT).await
    }

    /// A MessagePack request with its own time limit. The answer is a `Reply<A>`; a refusal is
    /// an error that downcasts to [`Refused`].
    pub async fn request_within<Q: Serialize, A: DeserializeOwned>(
        &self,
        subject: String,
        body: &Q,
        timeout: Duration,
    ) -> Result<A> {
        let bytes = bytes::Bytes::from(encode(Encoding::MsgPack, body)?);
        // While no master serves (one is starting, or a standby is taking over from a leader
        // that died) the server answers "no responders" at once, and a request the dying
        // master had taken gets no answer: either is asked again until `timeout`. Every
        // request to the master may be repeated: a submit carries its task id.
        let per_try = timeout.min((timeout / 5).max(REQUEST_TRY_TIMEOUT));
        let ask = async {
            loop {
                let request = async_nats::Request::new()
                    .payload(bytes.clone())
                    .timeout(Some(per_try));
                match self.client.send_request(subject.clone(), request).await {
                    Err(e) if e.kind() == async_nats::RequestErrorKind::NoResponders => {
                        tokio::time::sleep(NO_MASTER_RETRY).await;
                    }
                    Err(e) if e.kind() == async_nats::RequestErrorKind::TimedOut => {}
                    other => break other,
                }
            }
        };
        let msg = tokio::time::timeout(timeout, ask)
            .await
            .with_context(|| {
                format!("no answer on {subject} within {timeout:?} (is vgas-master running?)")
            })?
            .with_context(|| format!("request on {subject} (is vgas-master running?)"))?;
        let reply: Reply<A> =
            decode_as(Encoding::MsgPack, &msg.payload).context("decode the master's reply")?;
        reply.into_result().map_err(|e| Refused(e).into())
    }

    /// Asks the master to cancel a queued or running task.
    pub async fn cancel(&self, task_id: &TaskId) -> Result<()> {
        let _: CancelReply = self
            .request(
                self.subjects.task_cancel(),
                &TaskQuery {
                    task_id: task_id.clone(),
                },
            )
            .await?;
        Ok(())
    }
}

/// Whether `e` is the master's refusal with `code`.
pub fn refused_with(e: &anyhow::Error, code: vgas_shared::ErrorCode) -> Option<&WireError> {
    match e.downcast_ref::<Refused>() {
        Some(Refused(w)) if w.code == code => Some(w),
        _ => None,
    }
}
