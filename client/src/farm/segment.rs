//! One segment from cache lookup to object on disk (`compile_segment`), and many at once
//! (`dispatch_build_segments`, seed name). Order of resort: the swarm-wide cache; a worker
//! with the identical compiler (re-run on another worker by the master when one is lost or
//! stalls); then, and only then, this host, with the reason in the update. A compile error is
//! a result: it comes back with its diagnostics and is never retried or compiled again here.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures::{Stream, StreamExt};
use tokio::sync::mpsc;
use tracing::debug;
use vgas_shared::farm::{BuildOutput, BuildUpdate, Origin, MAX_UPDATE_DIAGNOSTICS};

pub use super::context::{BuildContext, Segment, Updates};
use super::local::LocalResult;
use super::remote::{remote, Remote};

/// Default wall-clock deadline of one segment (5 minutes): a large C++ unit at -O3 takes a
/// minute; past this the worker kills it and the segment is tried again elsewhere.
pub const DEFAULT_SEGMENT_DEADLINE: Duration = Duration::from_secs(300);

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

/// Where side output `ext` of the object at `output` goes, as the compiler names it
/// (`dir/x.o` -> `dir/x.su`).
pub fn side_output_path(output: &Path, ext: &str) -> PathBuf {
    output.with_extension(ext)
}

/// Writes a compile's outputs: the side outputs first, then the object, so make never sees
/// an object newer than a side file it depends on, nor half of any.
async fn write_outputs(
    output: &PathBuf,
    object: &[u8],
    side: &BTreeMap<String, Vec<u8>>,
) -> Result<()> {
    for (ext, bytes) in side {
        write_object(&side_output_path(output, ext), bytes).await?;
    }
    write_object(output, object).await
}

/// A compile's object and its side outputs, read from where it wrote them: the build tool may
/// move or remove them once the unit answers, so a unit reads them before it does.
pub(super) async fn read_written(
    output: &Path,
    sides: &[String],
) -> Option<(Vec<u8>, BTreeMap<String, Vec<u8>>)> {
    let object = tokio::fs::read(output).await.ok()?;
    let side = read_side_outputs(output, sides).await?;
    Some((object, side))
}

/// The side outputs a local compile wrote beside `output`; `None` when one is missing.
async fn read_side_outputs(output: &Path, exts: &[String]) -> Option<BTreeMap<String, Vec<u8>>> {
    let mut side = BTreeMap::new();
    for ext in exts {
        let bytes = tokio::fs::read(side_output_path(output, ext)).await.ok()?;
        side.insert(ext.clone(), bytes);
    }
    Some(side)
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

/// Finishes a segment from a cache hit: the object and its side outputs written beside
/// `output`, the warnings the compile printed replayed, `cached` and `done` sent. `None`: the
/// entry lacks a side output this compile writes (`side_outputs`), so it is not a hit.
pub async fn serve_hit(
    ctx: &BuildContext,
    name: &str,
    output: &PathBuf,
    side_outputs: &[String],
    hit: super::cache::Hit,
    direct: bool,
) -> Result<Option<BuildOutput>> {
    let side: Option<BTreeMap<String, Vec<u8>>> = side_outputs
        .iter()
        .map(|e| Some((e.clone(), hit.entry.side.get(e)?.clone().into_bytes())))
        .collect();
    let Some(side) = side else {
        return Ok(None);
    };
    write_outputs(output, &hit.object, &side).await?;
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
    Ok(Some(BuildOutput {
        segment: name.to_owned(),
        object: Some(output.clone()),
        exit_code: 0,
        diagnostics: hit.entry.stderr,
        origin: Origin::Cache,
    }))
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
            Ok(Some(hit)) => {
                let sides = &seg.spec.side_outputs;
                if let Some(out) = serve_hit(ctx, &seg.name, &seg.output, sides, hit, false).await?
                {
                    return Ok(out);
                }
            }
            Ok(None) => {}
            Err(e) => debug!("cache lookup failed, compiling: {e:#}"),
        }
    }
    let task_id = vgas_shared::TaskId::random();
    let answer = {
        let out = ctx.placement.out_on_swarm();
        let on_swarm = remote(ctx, seg, task_id.clone(), &out);
        tokio::select! {
            r = on_swarm => Ok(r),
            Some(won) = race_here(ctx, seg, &out) => Err(won),
        }
    };
    let answer = match answer {
        Ok(answer) => answer,
        Err((aside, compile_ms)) => {
            let swarm = ctx.swarm.clone();
            ctx.later(async move {
                if let Err(e) = swarm.cancel(&task_id).await {
                    debug!("cancel {task_id} after the race here won: {e:#}");
                }
            })
            .await;
            return won_here(ctx, seg, aside, compile_ms).await;
        }
    };
    let reason = match answer {
        Ok(Remote::Compiled {
            object,
            side,
            stderr,
            worker,
            compile_ms,
            overhead_ms,
        }) => {
            write_outputs(&seg.output, &object, &side).await?;
            ctx.cache_object(&seg.key, object, side, stderr.clone(), compile_ms)
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
    let local = seg.local.run().await?;
    let compile_ms = started.elapsed().as_millis() as u64;
    let origin = Origin::Local { reason };
    if local.exit_code == 0 {
        let sides = &seg.spec.side_outputs;
        cache_written(ctx, &seg.key, &seg.output, sides, &local.stderr, compile_ms).await;
    }
    report_here(ctx, &seg.name, origin.clone(), &local, compile_ms).await;
    Ok(done(
        origin,
        local.exit_code,
        local.stderr,
        local.exit_code == 0,
    ))
}

/// Why a unit that a race here won compiled here.
pub const RACED_HERE: &str = "raced here: a local slot was idle (VGAS_LOCAL_SLOTS)";

/// The segment compiled here as a worker would, once a local slot is idle and `out` is the
/// newest unit waiting on the swarm that no worker has started (`Placement::idle_slot`: a
/// race costs the swarm nothing then, and the unit is cancelled there if it wins), with its
/// compile time; `None` when it could not (no compiler here, or the compile failed: then
/// the swarm's answer, which says why, is the one that counts).
async fn race_here(
    ctx: &BuildContext,
    seg: &Segment,
    out: &super::placement::OutOnSwarm,
) -> Option<(super::local::Aside, u64)> {
    let (compiler, env) = seg.local.compiler()?;
    let _slot = ctx.placement.idle_slot(out).await;
    let started = Instant::now();
    let aside = super::local::compile_aside(compiler, &seg.spec, env)
        .await
        .inspect_err(|e| debug!("{}: the race here failed: {e:#}", seg.name))
        .ok()?;
    aside
        .object
        .is_some()
        .then(|| (aside, started.elapsed().as_millis() as u64))
}

/// Finishes a segment that the race here won: its outputs written and cached, `done` sent.
async fn won_here(
    ctx: &BuildContext,
    seg: &Segment,
    aside: super::local::Aside,
    compile_ms: u64,
) -> Result<BuildOutput> {
    let object = aside.object.context("a won race has an object")?;
    write_outputs(&seg.output, &object, &aside.side).await?;
    let stderr = aside.result.stderr.clone();
    ctx.cache_object(&seg.key, object, aside.side, stderr.clone(), compile_ms)
        .await;
    let origin = Origin::Local {
        reason: RACED_HERE.into(),
    };
    report_here(ctx, &seg.name, origin.clone(), &aside.result, compile_ms).await;
    Ok(BuildOutput {
        segment: seg.name.clone(),
        object: Some(seg.output.clone()),
        exit_code: 0,
        diagnostics: stderr,
        origin,
    })
}

/// Publishes how a compile that ran here ended: `Done` or `Failed`, from `origin`.
pub(super) async fn report_here(
    ctx: &BuildContext,
    segment: &str,
    origin: Origin,
    local: &LocalResult,
    compile_ms: u64,
) {
    let diagnostics = cut(local.stderr.clone());
    let update = match local.exit_code {
        0 => BuildUpdate::Done {
            segment: segment.to_owned(),
            origin,
            compile_ms,
            overhead_ms: 0,
            diagnostics,
        },
        exit_code => BuildUpdate::Failed {
            segment: segment.to_owned(),
            origin,
            exit_code,
            diagnostics,
        },
    };
    ctx.updates.send(update).await;
}

/// Stores under `key` the object a compile here wrote at `output`, with its side outputs
/// (`sides`, by extension) and warnings; false (nothing stored) when there is no cache or a
/// file is missing.
pub(super) async fn cache_written(
    ctx: &BuildContext,
    key: &str,
    output: &Path,
    sides: &[String],
    stderr: &str,
    compile_ms: u64,
) -> bool {
    if ctx.cache.is_none() {
        return false;
    }
    let Some((object, side)) = read_written(output, sides).await else {
        return false;
    };
    ctx.cache_object(key, object, side, stderr.to_owned(), compile_ms)
        .await;
    true
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
        updates: ctx.updates.with_channel(tx),
        ..ctx
    };
    let tasks = ctx.tasks.clone();
    let handle = tasks.spawn(async move {
        let ctx = &ctx;
        // Concurrent on this one task: a segment mostly waits (on the swarm, a compiler
        // process, the cache), so nothing needs a thread of its own.
        futures::stream::iter(segments)
            .map(|seg| async move { compile_segment(ctx, &seg).await })
            .buffered(parallel.max(1))
            .collect::<Vec<BuildOutput>>()
            .await
    });
    (tokio_stream_from(rx), handle)
}

fn tokio_stream_from(mut rx: mpsc::Receiver<BuildUpdate>) -> impl Stream<Item = BuildUpdate> {
    futures::stream::poll_fn(move |cx| rx.poll_recv(cx))
}
