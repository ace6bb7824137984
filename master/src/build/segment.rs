//! One segment from cache lookup to object on disk (`compile_segment`), and many at once
//! (`dispatch_build_segments`, seed name). Order of resort: the swarm-wide cache; a worker
//! with the identical compiler (re-run on another worker by the master when one is lost or
//! stalls); then, and only then, this host, with the reason in the update. A compile error is
//! a result: it comes back with its diagnostics and is never retried or compiled again here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use async_nats::{jetstream, Client};
use base64::Engine as _;
use futures::{Stream, StreamExt};
use tokio::io::AsyncReadExt as _;
use tokio::sync::{mpsc, Semaphore};
use tracing::debug;
use vgas_shared::build::{BuildOutput, BuildUpdate, CompileSpec, Origin, MAX_UPDATE_DIAGNOSTICS};
use vgas_shared::codec::{decode_as, encode};
use vgas_shared::config::Resolved;
use vgas_shared::limits::{DEADLINE_GRACE, MAX_ARTIFACT_BYTES};
use vgas_shared::wire::{
    InputFile, Needs, SubmitReply, TaskEvent, TaskKind, TaskOutcome, TaskQuery, TaskSpec,
};
use vgas_shared::{Encoding, TaskId};

use super::cache::BuildCache;
use super::local::LocalCompile;

/// Default wall-clock deadline of one segment (5 minutes): a large C++ unit at -O3 takes a
/// minute; past this the worker kills it and the segment is tried again elsewhere.
pub const DEFAULT_SEGMENT_DEADLINE: Duration = Duration::from_secs(300);

/// How often a waiting segment asks the master for its task's record, in case the final
/// event was missed (a master restart, a reconnect).
const POLL_INTERVAL: Duration = Duration::from_secs(2);

/// How long a submit may wait for the master's answer before the segment compiles here.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts a segment gets on the swarm before it compiles here.
const SEGMENT_ATTEMPTS: u32 = 3;

/// A translation unit ready to go.
#[derive(Debug, Clone)]
pub struct Segment {
    /// The source as the user named it.
    pub name: String,
    pub spec: CompileSpec,
    /// The user's files shipped so the worker's diagnostics can quote source lines.
    pub files: Vec<InputFile>,
    /// The cache key.
    pub key: String,
    /// Where the object goes.
    pub output: PathBuf,
    /// How to compile it here if the swarm cannot.
    pub local: LocalCompile,
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
    pub client: Client,
    pub js: jetstream::Context,
    pub conn: Resolved,
    /// `None` when the cache cannot be opened: every segment compiles.
    pub cache: Option<BuildCache>,
    pub updates: Updates,
    /// Compile here when the swarm cannot (default on).
    pub local_fallback: bool,
    pub segment_deadline: Duration,
    /// Where cache writes run after the unit has answered (`vgas build`'s helper, which waits
    /// for them before it exits); `None`: awaited in line (a wrapper process on its own).
    pub background: Option<tokio_util::task::TaskTracker>,
}

impl BuildContext {
    /// Runs `work` in the background when the context has a tracker, else now.
    pub async fn later<F>(&self, work: F)
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        match &self.background {
            Some(t) => {
                t.spawn(work);
            }
            None => work.await,
        }
    }

    /// Stores a compiled object in the cache (in the background when it can).
    async fn cache_object(&self, key: &str, object: Vec<u8>, stderr: String, compile_ms: u64) {
        let Some(cache) = self.cache.clone() else {
            return;
        };
        let key = key.to_owned();
        self.later(async move {
            if let Err(e) = cache.store(&key, &object, &stderr, compile_ms).await {
                debug!("not cached: {e:#}");
            }
        })
        .await;
    }
}

fn cut(mut s: String) -> String {
    if s.len() > MAX_UPDATE_DIAGNOSTICS {
        let mut n = MAX_UPDATE_DIAGNOSTICS;
        while !s.is_char_boundary(n) {
            n -= 1;
        }
        s.truncate(n);
    }
    s
}

/// How the swarm answered.
enum Remote {
    Compiled {
        object: Vec<u8>,
        stderr: String,
        worker: vgas_shared::WorkerId,
        compile_ms: u64,
        overhead_ms: u64,
    },
    Failed {
        exit_code: i32,
        stderr: String,
        worker: vgas_shared::WorkerId,
    },
    /// The swarm could not compile it; the text says why.
    Unavailable(String),
}

/// Compiles one segment: cache, swarm, then here.
pub async fn compile_segment(ctx: &BuildContext, seg: &Segment) -> BuildOutput {
    match compile_inner(ctx, seg).await {
        Ok(out) => out,
        Err(e) => {
            let diagnostics = format!("vgas: {}: {e:#}\n", seg.name);
            ctx.updates
                .send(BuildUpdate::Failed {
                    segment: seg.name.clone(),
                    origin: Origin::Local {
                        reason: format!("{e:#}"),
                    },
                    exit_code: 1,
                    diagnostics: diagnostics.clone(),
                })
                .await;
            BuildOutput {
                segment: seg.name.clone(),
                object: None,
                exit_code: 1,
                diagnostics,
                origin: Origin::Local {
                    reason: format!("{e:#}"),
                },
            }
        }
    }
}

async fn write_object(path: &PathBuf, bytes: &[u8]) -> Result<()> {
    if let Some(dir) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        tokio::fs::create_dir_all(dir).await.ok();
    }
    // Written aside and renamed, so make never sees half an object.
    let tmp = path.with_extension(format!("vgas-{}.tmp", std::process::id()));
    tokio::fs::write(&tmp, bytes)
        .await
        .with_context(|| format!("write {}", tmp.display()))?;
    tokio::fs::rename(&tmp, path)
        .await
        .with_context(|| format!("rename to {}", path.display()))
}

/// Finishes a segment from a cache hit: the object written to `output`, the warnings the
/// compile printed replayed, `cached` and `done` sent.
pub async fn serve_hit(
    ctx: &BuildContext,
    name: &str,
    output: &PathBuf,
    hit: super::cache::Hit,
    direct: bool,
) -> Result<BuildOutput> {
    write_object(output, &hit.object).await?;
    ctx.updates
        .send(BuildUpdate::Cached {
            segment: name.to_owned(),
            saved_ms: hit.entry.compile_ms,
            direct,
        })
        .await;
    ctx.updates
        .send(BuildUpdate::Done {
            segment: name.to_owned(),
            origin: Origin::Cache,
            compile_ms: 0,
            overhead_ms: 0,
            diagnostics: cut(hit.entry.stderr.clone()),
        })
        .await;
    Ok(BuildOutput {
        segment: name.to_owned(),
        object: Some(output.clone()),
        exit_code: 0,
        diagnostics: hit.entry.stderr,
        origin: Origin::Cache,
    })
}

async fn compile_inner(ctx: &BuildContext, seg: &Segment) -> Result<BuildOutput> {
    let done = |origin: Origin, exit_code: i32, diagnostics: String, object: bool| BuildOutput {
        segment: seg.name.clone(),
        object: object.then(|| seg.output.clone()),
        exit_code,
        diagnostics,
        origin,
    };
    if let Some(cache) = &ctx.cache {
        match cache.lookup(&seg.key).await {
            Ok(Some(hit)) => return serve_hit(ctx, &seg.name, &seg.output, hit, false).await,
            Ok(None) => {}
            Err(e) => debug!("cache lookup failed, compiling: {e:#}"),
        }
    }
    let reason = match remote(ctx, seg).await {
        Ok(Remote::Compiled {
            object,
            stderr,
            worker,
            compile_ms,
            overhead_ms,
        }) => {
            write_object(&seg.output, &object).await?;
            ctx.cache_object(&seg.key, object, stderr.clone(), compile_ms)
                .await;
            let origin = Origin::Worker { worker };
            ctx.updates
                .send(BuildUpdate::Done {
                    segment: seg.name.clone(),
                    origin: origin.clone(),
                    compile_ms,
                    overhead_ms,
                    diagnostics: cut(stderr.clone()),
                })
                .await;
            return Ok(done(origin, 0, stderr, true));
        }
        Ok(Remote::Failed {
            exit_code,
            stderr,
            worker,
        }) => {
            let origin = Origin::Worker { worker };
            ctx.updates
                .send(BuildUpdate::Failed {
                    segment: seg.name.clone(),
                    origin: origin.clone(),
                    exit_code,
                    diagnostics: cut(stderr.clone()),
                })
                .await;
            return Ok(done(origin, exit_code, stderr, false));
        }
        Ok(Remote::Unavailable(reason)) => reason,
        Err(e) => format!("{e:#}"),
    };
    if !ctx.local_fallback {
        bail!("not compiled on the swarm ({reason}) and local fallback is off");
    }
    let started = Instant::now();
    let local = seg.local.run(&seg.spec, &seg.output).await?;
    let compile_ms = started.elapsed().as_millis() as u64;
    let origin = Origin::Local { reason };
    if local.exit_code == 0 {
        if let (true, Ok(object)) = (ctx.cache.is_some(), tokio::fs::read(&seg.output).await) {
            ctx.cache_object(&seg.key, object, local.stderr.clone(), compile_ms)
                .await;
        }
        ctx.updates
            .send(BuildUpdate::Done {
                segment: seg.name.clone(),
                origin: origin.clone(),
                compile_ms,
                overhead_ms: 0,
                diagnostics: cut(local.stderr.clone()),
            })
            .await;
    } else {
        ctx.updates
            .send(BuildUpdate::Failed {
                segment: seg.name.clone(),
                origin: origin.clone(),
                exit_code: local.exit_code,
                diagnostics: cut(local.stderr.clone()),
            })
            .await;
    }
    Ok(done(
        origin,
        local.exit_code,
        local.stderr,
        local.exit_code == 0,
    ))
}

pub(super) async fn request<Q: serde::Serialize, A: serde::de::DeserializeOwned>(
    client: &Client,
    subject: String,
    body: &Q,
) -> Result<A> {
    crate::cli::request_within(client, subject, body, SUBMIT_TIMEOUT).await
}

/// Fetches an object the worker sent by reference from the artifacts bucket.
pub(super) async fn fetch(ctx: &BuildContext, object: &str, size: u64) -> Result<Vec<u8>> {
    if size > MAX_ARTIFACT_BYTES {
        bail!("object of {size} bytes is over the artifact limit");
    }
    let store = ctx
        .js
        .get_object_store(ctx.conn.subjects.artifacts_bucket())
        .await
        .context("open the artifacts bucket")?;
    let mut reader = store.get(object).await.context("fetch the object")?;
    let mut bytes = Vec::with_capacity(size as usize);
    (&mut reader)
        .take(MAX_ARTIFACT_BYTES)
        .read_to_end(&mut bytes)
        .await
        .context("read the object")?;
    if bytes.len() as u64 != size {
        bail!("object: got {} bytes, expected {size}", bytes.len());
    }
    Ok(bytes)
}

fn spec_source_too_large(spec: &TaskSpec) -> bool {
    let c = spec.compile.as_ref();
    let inline = c.and_then(|c| c.source.lz4.as_ref().or(c.source.text.as_ref()));
    inline.is_some_and(|s| s.len() > super::prepare::MAX_INLINE_SOURCE)
}

/// Puts a source too large for the task into the sources bucket, by content hash.
async fn upload_source(
    ctx: &BuildContext,
    source: &vgas_shared::build::Source,
) -> Result<vgas_shared::build::Source> {
    use sha2::Digest as _;
    let bytes = source
        .inline_bytes(super::prepare::MAX_PREPROCESSED)?
        .context("an inline source")?;
    let name = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&bytes)));
    let bucket = ctx.conn.subjects.build_sources_bucket();
    let store = ctx
        .js
        .get_object_store(&bucket)
        .await
        .with_context(|| format!("open the sources bucket {bucket}"))?;
    if store.info(&name).await.is_err() {
        store
            .put(name.as_str(), &mut bytes.as_slice())
            .await
            .context("upload the source")?;
    }
    Ok(vgas_shared::build::Source {
        object: Some(name),
        ..Default::default()
    })
}

/// The segment as a `compile` task, submitted and followed to its end.
async fn remote(ctx: &BuildContext, seg: &Segment) -> Result<Remote> {
    let id = TaskId::random();
    let subjects = &ctx.conn.subjects;
    let mut spec = TaskSpec {
        task_id: Some(id.clone()),
        kind: TaskKind::Compile,
        compile: Some(seg.spec.clone()),
        files: seg.files.clone(),
        needs: Needs {
            capabilities: vec![vgas_shared::build::compiler_tag(&seg.spec.compiler)],
        },
        deadline_s: Some(ctx.segment_deadline.as_secs().max(1)),
        max_attempts: Some(SEGMENT_ATTEMPTS),
        wait_for_worker_s: Some(0),
        ..Default::default()
    };
    if spec_source_too_large(&spec) {
        let compile = spec.compile.as_mut().expect("a compile task");
        compile.source = upload_source(ctx, &compile.source).await?;
    }
    spec.validate()?;
    let mut events = ctx.client.subscribe(subjects.task_events(&id)).await?;
    let submitted = Instant::now();
    let _: SubmitReply = match request(&ctx.client, subjects.submit(), &spec).await {
        Ok(r) => r,
        Err(e) => return Ok(Remote::Unavailable(format!("not accepted: {e:#}"))),
    };
    ctx.updates
        .send(BuildUpdate::Queued {
            segment: seg.name.clone(),
            task_id: id.clone(),
        })
        .await;
    // Every attempt may take its deadline; past all of them and the grace, the master is
    // gone and the segment compiles here.
    let give_up = submitted
        + (ctx.segment_deadline + DEADLINE_GRACE) * SEGMENT_ATTEMPTS
        + Duration::from_secs(5);
    let mut attempt = 0;
    let mut started_at = None;
    let mut compiled_at = None;
    let mut stderr = String::new();
    let mut object: Option<Vec<u8>> = None;
    let mut worker = None;
    let mut poll = tokio::time::interval(POLL_INTERVAL);
    poll.tick().await;
    let outcome = loop {
        tokio::select! {
            msg = events.next() => {
                let Some(msg) = msg else { bail!("event subscription closed") };
                let Ok(ev) = decode_as::<TaskEvent>(Encoding::detect(&msg.payload), &msg.payload) else { continue };
                match ev {
                    TaskEvent::Started { worker: w, attempt: a } if a >= attempt => {
                        attempt = a;
                        started_at = Some(Instant::now());
                        ctx.updates.send(BuildUpdate::Compiling { segment: seg.name.clone(), worker: w.clone(), attempt: a }).await;
                        worker = Some(w);
                    }
                    TaskEvent::Retrying { attempt: a, reason } => {
                        attempt = a;
                        stderr.clear();
                        object = None;
                        ctx.updates.send(BuildUpdate::Retried { segment: seg.name.clone(), attempt: a, reason }).await;
                    }
                    TaskEvent::Stderr { attempt: a, data } if a >= attempt => stderr.push_str(&data),
                    TaskEvent::Artifact { attempt: a, base64, object: by_ref, size, .. } if a >= attempt => {
                        compiled_at = Some(Instant::now());
                        object = Some(match by_ref {
                            Some(o) => fetch(ctx, &o, size.unwrap_or(0)).await?,
                            None => base64::engine::general_purpose::STANDARD.decode(base64).context("object: bad base64")?,
                        });
                    }
                    TaskEvent::Finished { outcome, worker: w, .. } => {
                        if w.is_some() { worker = w; }
                        break outcome;
                    }
                    _ => {}
                }
            }
            _ = poll.tick() => {
                if Instant::now() > give_up {
                    let _ = ctx.client.publish(subjects.task_cancel(), encode(Encoding::MsgPack, &TaskQuery { task_id: id.clone() })?.into()).await;
                    return Ok(Remote::Unavailable("no result by the segment's deadline".into()));
                }
                let rec: Result<vgas_shared::wire::TaskRecord> = request(&ctx.client, subjects.task_info(), &TaskQuery { task_id: id.clone() }).await;
                if let Ok(vgas_shared::wire::TaskRecord { state: vgas_shared::wire::TaskState::Finished { outcome, worker: w, .. }, .. }) = rec {
                    // Let events already on their way arrive.
                    while let Ok(Some(msg)) = tokio::time::timeout(Duration::from_millis(200), events.next()).await {
                        if let Ok(TaskEvent::Artifact { base64, object: None, .. }) = decode_as::<TaskEvent>(Encoding::detect(&msg.payload), &msg.payload) {
                            object = base64::engine::general_purpose::STANDARD.decode(base64).ok();
                        }
                    }
                    if w.is_some() { worker = w; }
                    break outcome;
                }
            }
        }
    };
    let total_ms = submitted.elapsed().as_millis() as u64;
    let worker =
        worker.unwrap_or_else(|| vgas_shared::WorkerId::parse("unknown").expect("valid id"));
    Ok(match outcome {
        TaskOutcome::Exited { exit_code: 0 } => match object {
            Some(object) => {
                let compile_ms = match (started_at, compiled_at) {
                    (Some(s), Some(c)) => c.saturating_duration_since(s).as_millis() as u64,
                    _ => 0,
                };
                Remote::Compiled {
                    object,
                    stderr,
                    worker,
                    compile_ms,
                    overhead_ms: total_ms.saturating_sub(compile_ms),
                }
            }
            None => Remote::Unavailable("the worker sent no object".into()),
        },
        TaskOutcome::Exited { exit_code } => Remote::Failed {
            exit_code,
            stderr,
            worker,
        },
        other => Remote::Unavailable(other.describe()),
    })
}

/// Compiles many segments, `parallel` at a time (seed: `dispatch_build_segments`). The
/// stream carries every update; the handle gives the outputs, in the segments' order.
pub fn dispatch_build_segments(
    ctx: BuildContext,
    segments: Vec<Segment>,
    parallel: usize,
) -> (
    impl Stream<Item = BuildUpdate>,
    tokio::task::JoinHandle<Vec<BuildOutput>>,
) {
    let (tx, rx) = mpsc::channel(vgas_shared::limits::EVENT_CHANNEL_CAPACITY);
    let ctx = BuildContext {
        updates: Updates {
            local: Some(tx),
            ..ctx.updates.clone()
        },
        ..ctx
    };
    let permits = Arc::new(Semaphore::new(parallel.max(1)));
    let handle = tokio::spawn(async move {
        let ctx = Arc::new(ctx);
        let mut running = Vec::with_capacity(segments.len());
        for seg in segments {
            let (ctx, permits) = (ctx.clone(), permits.clone());
            running.push(tokio::spawn(async move {
                let _permit = permits.acquire_owned().await;
                compile_segment(&ctx, &seg).await
            }));
        }
        let mut outputs = Vec::with_capacity(running.len());
        for r in running {
            match r.await {
                Ok(o) => outputs.push(o),
                Err(e) => outputs.push(BuildOutput {
                    segment: String::new(),
                    object: None,
                    exit_code: 1,
                    diagnostics: format!("vgas: a segment's task panicked: {e}\n"),
                    origin: Origin::Local {
                        reason: "internal error".into(),
                    },
                }),
            }
        }
        outputs
    });
    (tokio_stream_from(rx), handle)
}

fn tokio_stream_from(mut rx: mpsc::Receiver<BuildUpdate>) -> impl Stream<Item = BuildUpdate> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
