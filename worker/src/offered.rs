//! A build segment's source asked from the submitter that offers it (`source.offered_by`):
//! a request on the build's source subject carrying the source's content name, answered
//! with the size-prefixed LZ4 block, which is unpacked (its size capped before it is) and
//! checked against the name before the compiler sees it. Every failure is a sentence for
//! the attempt's outcome: the build that offered it has ended, the submitter does not answer,
//! or the bytes are not what the name says.
//!
//! The request goes out as soon as the assignment is accepted ([`OfferedSources::prefetch`]),
//! so its round trip (0.5 to 0.9 ms for a Lua unit on one machine) overlaps the attempt's
//! start and the writing of its task directory (the source is written last), or its whole
//! wait in the queue ahead of the slots, instead of delaying the compile.

use std::sync::Arc;
use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use bytes::Bytes;
use tokio::sync::OnceCell;
use tokio_util::task::TaskTracker;
use vgas_shared::farm::{unpack_source, CompileSpec};
use vgas_shared::holds::{Hold, Holds};
use vgas_shared::names::ModuleRef;
use vgas_shared::subjects::Subjects;
use vgas_shared::BuildId;

/// How long a submitter may take to send a source. It answers from memory; a submitter this
/// slow is overloaded or gone, and the attempt is better failed (the submitter then
/// compiles the unit itself) than held for the task's whole deadline.
pub const OFFER_WAIT: Duration = Duration::from_secs(5);

/// A source asked for ahead of its compile, shared by the attempts that name it (each gets
/// the same bytes, not a copy).
type Fetched = Arc<OnceCell<Result<Bytes, String>>>;

/// Where offered sources are asked for: the worker's connection and the swarm's subjects,
/// and the sources asked for ahead, by name, held by the accepted attempts that name them
/// (bounded by the worker's places: every attempt holds one [`Prefetched`] at most).
#[derive(Debug, Clone)]
pub struct OfferedSources {
    client: Client,
    subjects: Subjects,
    max: usize,
    ahead: Holds<Fetched>,
}

/// An accepted attempt's hold on the source it asked for ahead: dropped when the attempt
/// ends, used or not.
pub type Prefetched = Hold<Fetched>;

impl OfferedSources {
    /// Sources of at most `max` bytes unpacked, asked on `client`.
    pub fn new(client: Client, subjects: Subjects, max: usize) -> OfferedSources {
        OfferedSources {
            client,
            subjects,
            max,
            ahead: Holds::default(),
        }
    }

    /// Asks for the source of `compile` now, on `tracker`, when a build offers it; the
    /// attempt keeps the guard until it ends. `None` for any other source.
    pub fn prefetch(&self, compile: &CompileSpec, tracker: &TaskTracker) -> Option<Prefetched> {
        let (Some(name), Some(build)) = (&compile.source.object, &compile.source.offered_by) else {
            return None;
        };
        let (cell, first, held) = self.ahead.hold(name, Fetched::default);
        if first {
            let (me, name, build) = (self.clone(), name.clone(), build.clone());
            tracker.spawn(async move {
                cell.get_or_init(|| me.ask(&name, &build)).await;
            });
        }
        Some(held)
    }

    /// The bytes named `name` (`sha256:<hex>`) that build `build`'s submitter offers,
    /// checked against the name: asked for ahead, or now.
    pub async fn fetch(&self, name: &str, build: &BuildId) -> Result<Bytes, String> {
        match self.ahead.get(name) {
            Some(cell) => cell.get_or_init(|| self.ask(name, build)).await.clone(),
            None => self.ask(name, build).await,
        }
    }

    async fn ask(&self, name: &str, build: &BuildId) -> Result<Bytes, String> {
        let want = ModuleRef::parse(name).map_err(|e| e.to_string())?;
        let subject = self.subjects.build_source(build);
        let asked = std::time::Instant::now();
        let request = self.client.request(subject, name.to_owned().into());
        let answer = match tokio::time::timeout(OFFER_WAIT, request).await {
            Ok(Ok(answer)) => answer.payload,
            Ok(Err(e)) if e.kind() == RequestErrorKind::NoResponders => {
                let why = "the build has ended";
                return Err(format!(
                    "no submitter offers the sources of build {build} ({why})"
                ));
            }
            Ok(Err(e)) => {
                return Err(format!(
                    "cannot ask for source {name} of build {build}: {e}"
                ))
            }
            Err(_) => {
                let wait = format!("{OFFER_WAIT:?}");
                return Err(format!(
                    "the submitter of build {build} did not send source {name} within {wait}"
                ));
            }
        };
        let answered = asked.elapsed();
        if answer.is_empty() {
            return Err(format!(
                "the submitter of build {build} no longer offers source {name} (its unit has ended)"
            ));
        }
        let bytes = unpack_source(&answer, self.max)
            .map_err(|e| format!("source {name} of build {build}: {e}"))?;
        if ModuleRef::of(&bytes) != want {
            return Err(format!(
                "the bytes sent as source {name} of build {build} have another hash; refusing them"
            ));
        }
        tracing::debug!(%build, packed = answer.len(), bytes = bytes.len(), ?answered, checked = ?asked.elapsed(), "offered source fetched");
        Ok(Bytes::from(bytes))
    }
}
