//! One segment on the swarm: submitted as a `compile` task (its source put into the sources
//! bucket when it is too large to travel inline) and followed through the task API, which
//! drops a lost attempt's diagnostics and object, until the worker's result or the give-up
//! time, past which the segment compiles here. [`submit_and_follow`] is that submit and
//! follow for every build unit's task, a Rust crate's (`crate::rustc::remote`) too.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use base64::{engine::general_purpose::STANDARD as BASE64, Engine as _};
use vgas_shared::farm::{side_output_name, BuildUpdate, SegmentFile, Source, SEGMENT_OBJECT};
use vgas_shared::limits::DEADLINE_GRACE;
use vgas_shared::wire::{InputFile, Needs, TaskKind, TaskOutcome, TaskSpec};
use vgas_shared::{TaskId, WorkerId};

use super::context::{BuildContext, Segment, ShippedFile};
use super::placement::OutOnSwarm;
use crate::api::objects::content_name;
use crate::api::Step;

/// How long a submit may wait for the master's answer before the segment compiles here.
const SUBMIT_TIMEOUT: Duration = Duration::from_secs(10);

/// Attempts a segment gets on the swarm before it compiles here.
pub const SEGMENT_ATTEMPTS: u32 = 3;

/// How the swarm answered.
#[derive(Debug)]
pub enum Remote {
    Compiled {
        object: Vec<u8>,
        /// The side outputs by extension (`su` for `-fstack-usage`).
        side: BTreeMap<String, Vec<u8>>,
        stderr: String,
        worker: WorkerId,
        compile_ms: u64,
        overhead_ms: u64,
    },
    Failed {
        exit_code: i32,
        stderr: String,
        worker: WorkerId,
    },
    /// The swarm could not compile it; the text says why.
    Unavailable(String),
}

/// The id a result names when no event said which worker ran it.
pub fn unknown_worker() -> WorkerId {
    WorkerId::parse("unknown").expect("a valid worker id")
}

fn source_too_large(source: &Source) -> bool {
    let inline = source.lz4.as_ref().map(|b| b.len());
    inline
        .or(source.text.as_ref().map(String::len))
        .is_some_and(|n| n > super::prepare::MAX_INLINE_SOURCE)
}

/// Puts a source too large for the task into the sources bucket, by content hash.
async fn upload_source(ctx: &BuildContext, source: &Source) -> Result<Source> {
    let bytes = source
        .inline_bytes(super::prepare::MAX_PREPROCESSED)?
        .context("an inline source")?;
    let name = content_name(&bytes);
    let bucket = ctx.swarm.subjects.build_sources_bucket();
    ctx.swarm
        .upload_if_missing(&bucket, &name, &mut bytes.as_slice())
        .await
        .context("upload the source")?;
    Ok(Source {
        object: Some(name),
        ..Default::default()
    })
}

/// Offers an inline LZ4 source from this process ([`super::offers`]) and names it in the
/// task instead; `None` (the source left as it is) for plain text.
fn offer_source(
    offers: &super::offers::Offers,
    seg: &Segment,
    source: &mut Source,
) -> Option<super::offers::Offered> {
    let packed = source.lz4.take()?;
    *source = Source::offered(seg.source.clone(), offers.build().clone());
    Some(offers.offer(&seg.source, bytes::Bytes::from(packed.0)))
}

/// Uploads of a segment's files in flight at once: the first unit of a build names most of
/// its headers, each a look-up and two acknowledged writes; one after the other they took
/// Lua's first unit (20 headers) 11 to 12 ms, eight at a time 5 to 7 ms.
const UPLOADS_IN_FLIGHT: usize = 8;

/// The segment's headers put into the build sources bucket (each once a build:
/// `ctx.uploaded`; several at once) and named by content, as the worker fetches them.
async fn ship_files(ctx: &BuildContext, seg: &Segment) -> Result<Vec<SegmentFile>> {
    let bucket = ctx.swarm.subjects.build_sources_bucket();
    let shared: Vec<&ShippedFile> = seg.files.iter().filter(|f| !f.own).collect();
    let mut named = Vec::with_capacity(shared.len());
    for some in shared.chunks(UPLOADS_IN_FLIGHT) {
        let uploads = some.iter().map(|f| ship_one(ctx, &bucket, f));
        named.extend(futures::future::try_join_all(uploads).await?);
    }
    Ok(named)
}

/// One of a segment's files in the build sources bucket, uploaded unless this build (or the
/// bucket) has it already.
async fn ship_one(ctx: &BuildContext, bucket: &str, f: &ShippedFile) -> Result<SegmentFile> {
    let object = content_name(&f.bytes);
    if !ctx.uploaded.contains(&object) {
        ctx.swarm
            .upload_if_missing(bucket, &object, &mut &f.bytes[..])
            .await
            .with_context(|| format!("upload {}", f.path))?;
        ctx.uploaded.insert(object.clone());
    }
    Ok(SegmentFile {
        path: f.path.clone(),
        object,
    })
}

/// The unit's own source, inside the task: no other unit names it, so a trip through the
/// bucket (a look-up and two acknowledged writes here, a look-up and a consumer on the
/// worker, about a millisecond on each side for a small unit) would buy nothing. It is at
/// most [`vgas_shared::limits::MAX_SEGMENT_FILE_BYTES`], which the task's room past
/// [`super::prepare::MAX_INLINE_SOURCE`] holds even in base64.
fn own_files(seg: &Segment) -> Vec<InputFile> {
    seg.files
        .iter()
        .filter(|f| f.own)
        .map(|f| {
            let (text, base64) = match std::str::from_utf8(&f.bytes) {
                Ok(text) => (Some(text.to_owned()), None),
                Err(_) => (None, Some(BASE64.encode(&f.bytes))),
            };
            InputFile {
                path: f.path.clone(),
                text,
                base64,
                mode: None,
            }
        })
        .collect()
}

/// A build unit's task followed to its end: what it printed, the files it sent back that the
/// caller wanted (by artifact name), which worker ran it, and how long the compile itself
/// took there.
#[derive(Debug)]
pub struct Followed {
    pub outcome: TaskOutcome,
    pub stdout: String,
    pub stderr: String,
    pub files: BTreeMap<String, Vec<u8>>,
    pub worker: WorkerId,
    /// The compiler's own process on the worker, spawn to exit, as the worker measured it
    /// (from a worker that does not say: its `started` to its first file, as seen here).
    pub compile: Duration,
}

impl Followed {
    pub fn compile_ms(&self) -> u64 {
        self.compile.as_millis() as u64
    }

    /// What the swarm added around the compile itself for a unit whose submission (its
    /// files shipped, its task submitted) began at `began`: the segment overhead.
    pub fn overhead_ms(&self, began: Instant) -> u64 {
        began.elapsed().saturating_sub(self.compile).as_millis() as u64
    }
}

/// Submits a build unit's task (a `compile` or `rustc` task that needs its compiler) as unit
/// `unit` of a build, announces it (`queued`, `compiling`, `retried`) on `updates`, and
/// follows it until its result, a lost attempt's output and files dropped, or until every
/// file in `wanted` has come with all the output sent before them: a worker sends a unit's
/// files only after the compiler exited 0, and after all of its output, so the unit is done
/// then, `Exited 0`, without waiting for the result to be stored and the master's `finished`
/// (a millisecond or two of every unit). The files are read from the worker's own subject as
/// well as through the master's relay ([`crate::api::Swarm::submit_direct`]). `Ok(Err(why))`:
/// the swarm could not (not accepted, or gone past every attempt's deadline and the grace),
/// and the unit compiles here.
pub async fn submit_and_follow(
    swarm: &crate::api::Swarm,
    updates: &super::context::Updates,
    unit: &str,
    spec: TaskSpec,
    deadline: Duration,
    wanted: &BTreeSet<String>,
    on_started: impl Fn(),
) -> Result<Result<Followed, String>> {
    spec.validate()?;
    let submitted_at = Instant::now();
    let submitted = match swarm.submit_direct(spec, SUBMIT_TIMEOUT).await {
        Ok(s) => s,
        Err(e) => return Ok(Err(format!("not accepted: {e:#}"))),
    };
    let accepted_at = Instant::now();
    updates
        .send(BuildUpdate::Queued {
            segment: unit.to_owned(),
            task_id: submitted.reply.task_id.clone(),
        })
        .await;
    // Every attempt may take its deadline; past all of them and the grace, the master is
    // gone and the unit compiles here.
    let limit = (deadline + DEADLINE_GRACE) * SEGMENT_ATTEMPTS + Duration::from_secs(5);
    let mut following = submitted.following.give_up_after(limit);
    let (mut stdout, mut stderr) = (String::new(), String::new());
    let mut files = BTreeMap::new();
    let (mut started_at, mut compiled_at, mut worker) = (None, None, None);
    let (mut ran, mut output_before) = (None, None);
    // Every wanted file has come, and all the output sent before them (a file read straight
    // from the worker can pass output still on its way through the relay).
    let complete =
        |files: &BTreeMap<String, Vec<u8>>, out: &str, err: &str, before: Option<(u64, u64)>| {
            !wanted.is_empty()
                && files.len() == wanted.len()
                && before.is_none_or(|(o, e)| out.len() as u64 >= o && err.len() as u64 >= e)
        };
    let outcome = loop {
        let step = match following.next().await {
            Ok(step) => step,
            Err(e) => return Ok(Err(format!("{e:#}"))),
        };
        match step {
            Step::Started { worker: w, attempt } => {
                started_at = Some(Instant::now());
                on_started();
                updates
                    .send(BuildUpdate::Compiling {
                        segment: unit.to_owned(),
                        worker: w.clone(),
                        attempt,
                    })
                    .await;
                worker = Some(w);
            }
            Step::Retrying { attempt, reason } => {
                (stdout, stderr) = (String::new(), String::new());
                files.clear();
                (ran, output_before, compiled_at) = (None, None, None);
                updates
                    .send(BuildUpdate::Retried {
                        segment: unit.to_owned(),
                        attempt,
                        reason,
                    })
                    .await;
            }
            Step::Stdout(d) => stdout.push_str(&d),
            Step::Stderr(d) => stderr.push_str(&d),
            Step::Artifact(art) if wanted.contains(&art.path) => {
                compiled_at.get_or_insert_with(Instant::now);
                ran = ran.or(art.ran);
                output_before = output_before.max(art.output_before);
                files.insert(art.path.clone(), swarm.artifact_bytes(&art).await?);
            }
            Step::Artifact(_) => {}
            Step::Finished { outcome, worker: w } => {
                worker = w.or(worker);
                break outcome;
            }
        }
        if complete(&files, &stdout, &stderr, output_before) {
            break TaskOutcome::Exited { exit_code: 0 };
        }
    };
    let since = |at: Option<Instant>| at.map(|t| t.saturating_duration_since(submitted_at));
    tracing::debug!(
        unit,
        accepted = ?accepted_at.saturating_duration_since(submitted_at),
        started = ?since(started_at),
        first_file = ?since(compiled_at),
        total = ?submitted_at.elapsed(),
        ?ran,
        "unit followed"
    );
    let seen = match (started_at, compiled_at) {
        (Some(s), Some(c)) => c.saturating_duration_since(s),
        _ => Duration::ZERO,
    };
    Ok(Ok(Followed {
        outcome,
        stdout,
        stderr,
        files,
        worker: worker.unwrap_or_else(unknown_worker),
        compile: ran.unwrap_or(seen),
    }))
}

/// The segment as a `compile` task with id `task_id`, submitted and followed to its end;
/// `out` is told when a worker starts it (it can no longer be raced here).
pub async fn remote(
    ctx: &BuildContext,
    seg: &Segment,
    task_id: TaskId,
    out: &OutOnSwarm,
) -> Result<Remote> {
    let began = Instant::now();
    let mut compile = seg.spec.clone();
    // Held until the unit ends: every attempt's worker may ask for the source.
    let mut _offered = None;
    if source_too_large(&compile.source) {
        compile.source = upload_source(ctx, &compile.source).await?;
    } else if let Some(offers) = &ctx.offers {
        _offered = offer_source(offers, seg, &mut compile.source);
    }
    compile.files = ship_files(ctx, seg).await?;
    let sides: BTreeMap<String, String> = seg
        .spec
        .side_outputs
        .iter()
        .map(|e| (side_output_name(e), e.clone()))
        .collect();
    let spec = TaskSpec {
        task_id: Some(task_id),
        kind: TaskKind::Compile,
        needs: Needs {
            capabilities: vec![vgas_shared::farm::compiler_tag(&compile.compiler)],
            gpus: None,
        },
        compile: Some(compile),
        files: own_files(seg),
        deadline_s: Some(ctx.segment_deadline.as_secs().max(1)),
        max_attempts: Some(SEGMENT_ATTEMPTS),
        wait_for_worker_s: Some(0),
        ..Default::default()
    };
    let wanted: BTreeSet<String> = sides
        .keys()
        .cloned()
        .chain([SEGMENT_OBJECT.to_owned()])
        .collect();
    let followed = submit_and_follow(
        &ctx.swarm,
        &ctx.updates,
        &seg.name,
        spec,
        ctx.segment_deadline,
        &wanted,
        || out.started(),
    )
    .await?;
    let mut f = match followed {
        Ok(f) => f,
        Err(why) => return Ok(Remote::Unavailable(why)),
    };
    let (compile_ms, overhead_ms) = (f.compile_ms(), f.overhead_ms(began));
    let object = f.files.remove(SEGMENT_OBJECT);
    let side: BTreeMap<String, Vec<u8>> = f
        .files
        .into_iter()
        .filter_map(|(name, bytes)| Some((sides.get(&name)?.clone(), bytes)))
        .collect();
    Ok(match f.outcome {
        TaskOutcome::Exited { exit_code: 0 } if side.len() < seg.spec.side_outputs.len() => {
            Remote::Unavailable("the worker sent no side outputs".into())
        }
        TaskOutcome::Exited { exit_code: 0 } => match object {
            Some(object) => Remote::Compiled {
                object,
                side,
                stderr: f.stderr,
                compile_ms,
                overhead_ms,
                worker: f.worker,
            },
            None => Remote::Unavailable("the worker sent no object".into()),
        },
        TaskOutcome::Exited { exit_code } => Remote::Failed {
            exit_code,
            stderr: f.stderr,
            worker: f.worker,
        },
        other => Remote::Unavailable(other.describe()),
    })
}
