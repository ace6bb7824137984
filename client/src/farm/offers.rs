//! A build's sources served to workers from the submitting process. A segment compiled on the
//! swarm names its preprocessed text (`Source::offered`: the content name and this build)
//! instead of carrying it, and the worker asks for the bytes on the build's source subject
//! (`Subjects::build_source`). The text then crosses nats-server once, from here to the
//! worker, where inside the task it crossed three times (to the master, into the tasks
//! bucket, out to the worker): on the submitting host the largest share of the server's and
//! the master's work for a build. A source is offered while its unit is on the swarm (every
//! attempt may ask) and dropped when the unit ends; a worker asking later gets an empty
//! answer, and the attempt ends with that error. Grants from an older `vgas init` lack the
//! subject: a round trip to itself at the start finds that, and the build's sources then ride
//! inside the tasks as before.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{debug, warn};
use vgas_shared::holds::{Hold, Holds};
use vgas_shared::names::ModuleRef;
use vgas_shared::BuildId;

use crate::api::Swarm;

/// How long the first round trip to itself may take before the build keeps its sources in
/// its tasks. Answered by this process over the server the build uses anyway (well under a
/// millisecond on a LAN); when a grant is missing the server drops the request, and a build
/// of grants from an older `vgas init` loses this once at its start.
const PROBE_WAIT: Duration = Duration::from_secs(1);

/// The sources on offer, by content name: the LZ4 block, held while a unit with that text
/// (two units of one build can preprocess to the same text) is on the swarm.
type Held = Holds<Bytes>;

/// One unit's hold on its offered source: dropped, the source goes when no unit holds it.
pub type Offered = Hold<Bytes>;

/// Serves this build's sources while a clone lives; see the module doc.
#[derive(Debug, Clone)]
pub struct Offers {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    build: BuildId,
    held: Held,
    /// Ends the serving task: the last clone is gone, so no unit is left to ask for.
    stop: CancellationToken,
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl Offers {
    /// Starts serving build `build`'s sources on `tasks` (until the last clone drops), once a
    /// request to itself has come back answered; `None` (and the reason logged) when it did
    /// not.
    pub async fn start(swarm: &Swarm, build: BuildId, tasks: &TaskTracker) -> Option<Offers> {
        let subject = swarm.subjects.build_source(&build);
        let requests = match swarm.client.subscribe(subject.clone()).await {
            Ok(s) => s,
            Err(e) => {
                debug!("sources ride inside the tasks: cannot subscribe to {subject}: {e}");
                return None;
            }
        };
        let (held, stop) = (Held::default(), CancellationToken::new());
        let serving = serve(swarm.client.clone(), requests, held.clone(), stop.clone());
        tasks.spawn(serving);
        let offers = Offers {
            inner: Arc::new(Inner { build, held, stop }),
        };
        let probe = swarm.client.request(
            subject.clone(),
            ModuleRef::of(b"").as_str().to_owned().into(),
        );
        match tokio::time::timeout(PROBE_WAIT, probe).await {
            Ok(Ok(_)) => Some(offers),
            Ok(Err(e)) => {
                warn!("sources ride inside the tasks: a request to {subject} failed ({e}); run `vgas init` again to refresh the grants");
                None
            }
            Err(_) => {
                warn!("sources ride inside the tasks: no answer on {subject} in {PROBE_WAIT:?}; grants from an older `vgas init`? Run it again");
                None
            }
        }
    }

    pub fn build(&self) -> &BuildId {
        &self.inner.build
    }

    /// Offers `packed` (a size-prefixed LZ4 block of the text named `name`) until the guard
    /// drops.
    pub fn offer(&self, name: &ModuleRef, packed: Bytes) -> Offered {
        self.inner.held.hold(name.as_str(), || packed).2
    }

    /// How many sources are on offer.
    pub fn len(&self) -> usize {
        self.inner.held.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Answers each request with the named source's block, or an empty body when it is not on
/// offer (a unit that ended, a name never offered), until `stop`.
async fn serve(
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    held: Held,
    stop: CancellationToken,
) {
    loop {
        let msg = tokio::select! {
            _ = stop.cancelled() => break,
            m = requests.next() => match m {
                Some(m) => m,
                None => break,
            },
        };
        let Some(reply) = msg.reply else {
            continue;
        };
        let body = std::str::from_utf8(&msg.payload)
            .ok()
            .and_then(|name| held.get(name))
            .unwrap_or_default();
        if let Err(e) = client.publish(reply, body).await {
            debug!("answer a request for a source: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn offers() -> Offers {
        Offers {
            inner: Arc::new(Inner {
                build: BuildId::parse("b1").unwrap(),
                held: Held::default(),
                stop: CancellationToken::new(),
            }),
        }
    }

    #[test]
    fn a_source_stays_on_offer_while_any_unit_holds_it() {
        let o = offers();
        let (a, b) = (ModuleRef::of(b"int a;"), ModuleRef::of(b"int b;"));
        let first = o.offer(&a, Bytes::from_static(b"A"));
        let second = o.offer(&a, Bytes::from_static(b"A"));
        let other = o.offer(&b, Bytes::from_static(b"B"));
        assert_eq!(o.len(), 2);
        drop(first);
        assert_eq!(o.len(), 2, "the second unit still holds it");
        drop(second);
        assert_eq!(o.len(), 1);
        drop(other);
        assert!(o.is_empty());
    }

    #[test]
    fn the_serving_task_stops_with_the_last_clone() {
        let o = offers();
        let stop = o.inner.stop.clone();
        let clone = o.clone();
        drop(o);
        assert!(!stop.is_cancelled(), "a clone is left");
        drop(clone);
        assert!(stop.is_cancelled());
    }
}
