//! A build segment's source asked from the submitter that offers it (`source.offered_by`):
//! a request on the build's source subject carrying the source's content name, answered
//! with the size-prefixed LZ4 block, which is unpacked (its size capped before it is) and
//! checked against the name before the compiler sees it. Every failure is a sentence for
//! the attempt's outcome: the build that offered it has ended, the submitter does not answer,
//! or the bytes are not what the name says.

use std::time::Duration;

use async_nats::{Client, RequestErrorKind};
use vgas_shared::farm::{packed::Base64Bytes, Source};
use vgas_shared::names::ModuleRef;
use vgas_shared::subjects::Subjects;
use vgas_shared::BuildId;

/// How long a submitter may take to send a source. It answers from memory; a submitter this
/// slow is overloaded or gone, and the attempt is better failed (the submitter then
/// compiles the unit itself) than held for the task's whole deadline.
pub const OFFER_WAIT: Duration = Duration::from_secs(5);

/// Where offered sources are asked for: the worker's connection and the swarm's subjects.
#[derive(Debug, Clone)]
pub struct OfferedSources {
    pub client: Client,
    pub subjects: Subjects,
}

impl OfferedSources {
    /// The bytes named `name` (`sha256:<hex>`) that build `build`'s submitter offers, at most
    /// `max` of them, checked against the name.
    pub async fn fetch(&self, name: &str, build: &BuildId, max: usize) -> Result<Vec<u8>, String> {
        let want = ModuleRef::parse(name).map_err(|e| e.to_string())?;
        let subject = self.subjects.build_source(build);
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
        if answer.is_empty() {
            return Err(format!(
                "the submitter of build {build} no longer offers source {name} (its unit has ended)"
            ));
        }
        let packed = Source {
            lz4: Some(Base64Bytes(answer.to_vec())),
            ..Default::default()
        };
        let bytes = packed
            .inline_bytes(max)
            .map_err(|e| format!("source {name} of build {build}: {e}"))?
            .unwrap_or_default();
        if ModuleRef::of(&bytes) != want {
            return Err(format!(
                "the bytes sent as source {name} of build {build} have another hash; refusing them"
            ));
        }
        Ok(bytes)
    }
}
