//! What one build shares across its segments (`BuildContext`: the swarm, the cache, where
//! updates go, the build's own tasks) and one translation unit ready to go (`Segment`). Below
//! `segment`, `remote` and `prepare`, which all use them.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_nats::Client;
use tokio::sync::mpsc;
use tokio_util::task::TaskTracker;
use tracing::debug;
use vgas_shared::codec::encode;
use vgas_shared::config::Resolved;
use vgas_shared::farm::{BuildUpdate, CompileSpec};
use vgas_shared::names::ModuleRef;
use vgas_shared::Encoding;

use super::cache::BuildCache;
use super::local::LocalCompile;
use crate::api::Swarm;

/// A translation unit ready to go.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The source as the user named it.
    pub name: String,
    pub spec: CompileSpec,
    /// The user's files shipped so the worker's diagnostics can quote source lines.
    pub files: Vec<ShippedFile>,
    /// The cache key.
    pub key: String,
    /// The source's content name: the cache key hashes it, and a worker asks for an offered
    /// source by it (`offers`).
    pub source: ModuleRef,
    /// Where the object goes.
    pub output: PathBuf,
    /// How to compile it here if the swarm cannot.
    pub local: LocalCompile,
}

/// A user's file shipped for diagnostics: where it goes under the task directory, its bytes.
/// A header travels by content name through the build sources bucket, once a build however
/// many units name it (`remote::ship_files`); the unit's own source, which no other unit
/// names, rides inside the task instead of costing a write here and a fetch on the worker.
#[derive(Debug, Clone)]
pub struct ShippedFile {
    pub path: String,
    pub bytes: std::sync::Arc<[u8]>,
    /// The unit's own source (the preprocessed text's first line marker names it).
    pub own: bool,
}

/// The content names this build has put into the build sources bucket (or found there): each
/// of the build's files goes up once, however many units name it.
#[derive(Debug, Clone, Default)]
pub struct Uploaded(std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>>);

impl Uploaded {
    pub fn contains(&self, name: &str) -> bool {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains(name)
    }

    pub fn insert(&self, name: String) {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(name);
    }
}

/// Where a build's updates go: the build's NATS subject (JSON, so any client can follow)
/// and, in-process, a channel.
#[derive(Debug, Clone)]
pub struct Updates {
    client: Client,
    subject: Option<String>,
    local: Option<mpsc::Sender<BuildUpdate>>,
}

impl Updates {
    pub fn new(
        client: Client,
        subject: Option<String>,
        local: Option<mpsc::Sender<BuildUpdate>>,
    ) -> Self {
        Updates {
            client,
            subject,
            local,
        }
    }

    /// The same updates, also sent in-process to `tx`.
    pub fn with_channel(&self, tx: mpsc::Sender<BuildUpdate>) -> Updates {
        Updates {
            local: Some(tx),
            ..self.clone()
        }
    }

    pub async fn send(&self, u: BuildUpdate) {
        if let Some(subject) = &self.subject {
            if let Ok(bytes) = encode(Encoding::Json, &u) {
                let _ = self.client.publish(subject.clone(), bytes.into()).await;
            }
        }
        if let Some(tx) = &self.local {
            let _ = tx.send(u).await;
        }
    }
}

/// What a build shares across its segments.
#[derive(Debug, Clone)]
pub struct BuildContext {
    pub swarm: Swarm,
    /// The submitter's settings (the state directory holds the compiler identity cache).
    pub conn: Resolved,
    /// `None` when the cache cannot be opened: every segment compiles.
    pub cache: Option<BuildCache>,
    pub updates: Updates,
    /// Compile here when the swarm cannot (default on).
    pub local_fallback: bool,
    pub segment_deadline: Duration,
    /// Where the build's own tasks run (the segments of `dispatch_build_segments`, the
    /// helper's connections, cache writes behind): the caller closes and waits for it.
    pub tasks: TaskTracker,
    /// Cache writes run on `tasks` after the unit has answered (`vgas build`'s helper, which
    /// waits for them before it exits); false: awaited in line (a wrapper on its own).
    pub write_behind: bool,
    /// Whether a unit no other host could take compiles in place, here.
    pub placement: super::placement::Placement,
    /// What this build has put into the build sources bucket.
    pub uploaded: Uploaded,
    /// Where this process serves its segments' sources to workers; `None`: they ride inside
    /// the tasks (a wrapper on its own, the master's plans, grants from an older `vgas init`).
    pub offers: Option<super::offers::Offers>,
}

impl BuildContext {
    /// Runs `work` on the build's tasks when it writes behind, else now.
    pub async fn later<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        if self.write_behind {
            self.tasks.spawn(work);
        } else {
            work.await
        }
    }

    /// Stores a compiled object and its side outputs in the cache (in the background when it
    /// can). Side outputs that are not text are not cached, and then neither is the object.
    pub(super) async fn cache_object(
        &self,
        key: &str,
        object: Vec<u8>,
        side: BTreeMap<String, Vec<u8>>,
        stderr: String,
        compile_ms: u64,
    ) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        let Some(text) = side_text(side) else {
            return;
        };
        let key = key.to_owned();
        self.later(async move {
            if let Err(e) = cache.store(&key, &object, &text, &stderr, compile_ms).await {
                debug!("not cached: {e:#}");
            }
        })
        .await;
    }
}

/// Side outputs as the cache keeps them, text; `None` when one is not (nothing is cached).
pub(super) fn side_text(side: BTreeMap<String, Vec<u8>>) -> Option<BTreeMap<String, String>> {
    side.into_iter()
        .map(|(ext, bytes)| String::from_utf8(bytes).ok().map(|t| (ext, t)))
        .collect()
}
