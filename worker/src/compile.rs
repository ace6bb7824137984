//! Running `compile` tasks: one build segment compiled to an object by the exact compiler its
//! `compile.compiler` identity names, inside the native sandbox, so a compile gets the same
//! limits, uid, lack of network, deadline, cancel and output streaming as an exec task. The
//! diagnostics stream out as stderr events; the object comes back as the artifact
//! `vgas-segment.o`. A compile error is a result (`exited` with the compiler's code), not a
//! fault.
//!
//! The compiler runs in `compile.workdir` inside the task directory, where the user's files
//! (the segment's `files`, the headers, fetched by content from the build sources bucket and
//! kept in memory for the next unit; the task's inline `files`, the unit's own source) sit
//! at their relative paths, so diagnostics quote source lines as a local compile would; the
//! input is `.vgas-input/<the main file's name>` there (`vgas-segment.i`/`.ii` in
//! preprocessed mode; see `input_file`), and debug info names the submitter's directory
//! (`-fdebug-prefix-map`) instead of the task directory. The input itself rides in the task,
//! sits in the build sources bucket, or is asked from the submitter that offers it
//! ([`crate::offered`]); it is the sandbox's late file ([`sandbox::RunOptions::late_file`]),
//! written after the headers, so an offered source's transfer overlaps the writing of the
//! rest of the directory instead of preceding it.
//! Preprocessed text is compiled as ordinary source where it can be
//! ([`vgas_shared::farm::reparse`]), so that even `DW_AT_producer` is a local compile's.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use vgas_shared::farm::command::{compile_argv, compile_input, input_file};
use vgas_shared::farm::{side_output_name, CompileSpec};
use vgas_shared::limits::{MAX_ARTIFACT_BYTES, MAX_INLINE_ARTIFACT_BYTES, MAX_SEGMENT_FILE_BYTES};
use vgas_shared::wire::{CompileTask, TaskOutcome};

use crate::env::EnvironmentManager;
use crate::offered::OfferedSources;
use crate::sandbox::{
    self, Isolation, Job, KeptDir, NativeJob, OutputChunk, RunOptions, SandboxConfig,
};
use crate::wasm::{Artifact, ArtifactBody, ModuleSource, ObjectStoreSource};

/// Largest source a segment may have, inline or fetched: preprocessed C++ translation units
/// of template-heavy code reach tens of MiB; past this it is a mistake, and each running
/// compile holds its source in memory.
pub const MAX_SOURCE_BYTES: usize = 64 * 1024 * 1024;

/// The object the compiler writes, and the artifact's path.
pub const OBJECT_FILE: &str = vgas_shared::farm::SEGMENT_OBJECT;

/// The build sources bucket, read for segments whose source is sent by reference.
pub fn sources_bucket(js: async_nats::jetstream::Context, bucket: String) -> ObjectStoreSource {
    ObjectStoreSource::new(js, bucket, "source", MAX_SOURCE_BYTES as u64)
}

/// Bytes of small objects (a segment's files) a worker keeps from the build sources bucket:
/// every unit of a build names the same headers, fetched once instead of once a unit. Past
/// it the memo starts over.
const MEMO_MAX_BYTES: usize = 32 * 1024 * 1024;

/// A segment's files fetched from the build sources bucket at once, in groups of this many: a
/// build's first unit on a worker names most of the build's headers, each a look-up and a
/// consumer of its own, which one after the other added up on that unit's path.
const FETCHES_IN_FLIGHT: usize = 8;

/// A source bucket that keeps what it fetched and checked of objects up to
/// [`vgas_shared::limits::MAX_SEGMENT_FILE_BYTES`] (content-addressed, so never stale);
/// larger ones (a unit's preprocessed text sent by reference, read once) pass through. What
/// it keeps passed the hash check when it was fetched, and is not hashed again: a build's
/// units name the same headers, and hashing them all again was most of a unit's look-ups.
#[derive(Debug)]
pub struct Memoized<S> {
    inner: S,
    kept: std::sync::Mutex<Kept>,
}

/// The objects kept, by name, and their bytes in all.
type Kept = (HashMap<String, Arc<[u8]>>, usize);

impl<S> Memoized<S> {
    pub fn new(inner: S) -> Memoized<S> {
        Memoized {
            inner,
            kept: std::sync::Mutex::default(),
        }
    }

    fn kept(&self, name: &str) -> Option<Vec<u8>> {
        let kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
        kept.0.get(name).map(|bytes| bytes.to_vec())
    }
}

impl<S: ModuleSource + Send + Sync> ModuleSource for Memoized<S> {
    /// Unchecked bytes are not kept: only [`ModuleSource::fetch_checked`] fills the memo.
    async fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        match self.kept(name) {
            Some(bytes) => Ok(Some(bytes)),
            None => self.inner.fetch(name).await,
        }
    }

    async fn fetch_checked(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        if let Some(bytes) = self.kept(name) {
            return Ok(Some(bytes));
        }
        let fetched = self.inner.fetch_checked(name).await?;
        if let Some(bytes) = fetched
            .as_ref()
            .filter(|b| b.len() as u64 <= MAX_SEGMENT_FILE_BYTES)
        {
            let mut kept = self.kept.lock().unwrap_or_else(|e| e.into_inner());
            if kept.1 + bytes.len() > MEMO_MAX_BYTES {
                *kept = Default::default();
            }
            kept.1 += bytes.len();
            kept.0.insert(name.to_owned(), Arc::from(bytes.as_slice()));
        }
        Ok(fetched)
    }
}

/// How a run in a kept task directory ended and what it left: a compile task (its object and
/// side outputs) or a cuda task (its PTX or output buffers).
#[derive(Debug)]
pub struct CompileRun {
    pub outcome: TaskOutcome,
    /// The files handed back, on success.
    pub artifacts: Vec<Artifact>,
    /// The task directory, kept until the files are sent (a large one is uploaded from
    /// it); removed on drop.
    pub dir: Option<KeptDir>,
    /// How long the compiler's own process ran ([`sandbox::NativeRun::ran`]).
    pub ran: Option<std::time::Duration>,
}

impl CompileRun {
    pub(crate) fn ended(outcome: TaskOutcome) -> CompileRun {
        CompileRun {
            outcome,
            artifacts: Vec::new(),
            dir: None,
            ran: None,
        }
    }

    pub(crate) fn error(message: String) -> CompileRun {
        CompileRun::ended(TaskOutcome::Error { message })
    }

    /// A finished native run as a compile's result: `collect` reads what a run that exited 0
    /// left in its directory; a failed run's directory goes at once (dropped in
    /// [`sandbox::NativeRun::succeeded`]). The compiler's own run time comes along.
    pub(crate) fn after(
        run: sandbox::NativeRun,
        collect: impl FnOnce(KeptDir) -> CompileRun,
    ) -> CompileRun {
        let ran = run.ran;
        let collected = match run.succeeded() {
            Ok(dir) => collect(dir),
            Err(outcome) => CompileRun::ended(outcome),
        };
        CompileRun { ran, ..collected }
    }
}

/// What a compile runs with: the sandbox, the compilers, the build sources bucket and where
/// offered sources are asked for.
#[derive(Debug)]
pub struct Compiler<'a, S> {
    pub sandbox: &'a SandboxConfig,
    pub isolation: &'a Isolation,
    pub envs: &'a EnvironmentManager,
    /// Where sources sent by reference (`source.object`) are fetched from.
    pub sources: &'a S,
    /// Where sources a submitter offers (`source.offered_by`) are asked for; `None` where
    /// there is no connection (such a task then fails with a reason).
    pub offered: Option<&'a OfferedSources>,
}

impl<S: ModuleSource> Compiler<'_, S> {
    /// Runs a compile task in sandbox slot `slot`, streaming the compiler's output into
    /// `out`. Never panics; every failure is a [`TaskOutcome`]. The segment was checked when
    /// the task was parsed, on this worker too, before its flags reach a compiler here.
    pub async fn run(
        &self,
        slot: usize,
        job: Job<'_, CompileTask>,
        out: Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> CompileRun {
        let task = job.task;
        let c = &task.segment;
        let Some(compiler) = self.envs.compiler_by_identity(&c.compiler) else {
            return CompileRun::error(format!(
                "no compiler with identity {} on this worker ({})",
                c.compiler,
                self.envs.worker()
            ));
        };
        if let Err(message) = self.envs.verify(compiler) {
            return CompileRun::error(message);
        }
        // The user's files first: a source asked from its submitter is on its way meanwhile
        // (asked when the assignment came), and the sandbox writes it last.
        let mut extra = Vec::with_capacity(c.files.len());
        let mut fetched = Vec::with_capacity(c.files.len());
        for some in c.files.chunks(FETCHES_IN_FLIGHT) {
            let fetches = some.iter().map(|f| self.sources.fetch_checked(&f.object));
            tokio::select! {
                bytes = futures::future::join_all(fetches) => fetched.extend(some.iter().zip(bytes)),
                _ = cancel.cancelled() => return CompileRun::ended(TaskOutcome::Cancelled),
            }
        }
        for (f, bytes) in fetched {
            match bytes {
                Ok(Some(b)) if b.len() as u64 <= MAX_SEGMENT_FILE_BYTES => {
                    extra.push((f.path.clone(), b))
                }
                Ok(Some(b)) => {
                    return CompileRun::error(format!(
                    "file {:?} is {} bytes; a segment's files are at most {MAX_SEGMENT_FILE_BYTES}",
                    f.path,
                    b.len()
                ))
                }
                Ok(None) => {
                    return CompileRun::error(format!(
                        "file {:?}: {} is not in the build sources bucket",
                        f.path, f.object
                    ))
                }
                Err(message) => return CompileRun::error(message),
            }
        }
        // The main file's name, known once the source has come; the command needs it.
        let primary = std::sync::OnceLock::<Option<String>>::new();
        let input = async {
            let source = self.source(c).await?;
            let (source, main) = compile_input(c, Cow::Borrowed(&source));
            let input = in_workdir(&c.workdir, &input_file(c.language, main.as_deref()));
            let object = in_workdir(&c.workdir, OBJECT_FILE);
            // The task's inline files and the segment's files by name land in the same place.
            let shipped = task.files.iter().map(|f| f.path());
            let mut shipped = shipped.chain(c.files.iter().map(|f| f.path.as_str()));
            if let Some(path) = shipped.find(|p| *p == input || *p == object) {
                return Err(format!(
                    "file {path:?} is where the segment's input or object goes; ship it under \
                     another name"
                ));
            }
            let _ = primary.set(main);
            Ok((input, source))
        };
        let command = |cwd: &Path| {
            if !c.cwd.is_empty() && cwd.to_string_lossy().contains('=') {
                // GCC splits a prefix map at its first '=': debug info names the task directory.
                tracing::warn!(dir = %cwd.display(), "cannot map a directory with '=' in debug info");
            }
            let main = primary.get().and_then(Option::as_deref);
            compile_argv(&compiler.path, c, cwd, main)
        };
        let native = NativeJob {
            command: &command,
            env: &task.env,
            stdin: "",
            files: &task.files,
            bounds: job.bounds,
        };
        let opts = RunOptions {
            workdir: &c.workdir,
            extra_files: &extra,
            keep_dir: true,
            devices: None,
            late_file: Some(Box::pin(input)),
        };
        let run = sandbox::run_native(
            self.sandbox,
            self.isolation,
            slot,
            &native,
            opts,
            out,
            cancel,
        );
        CompileRun::after(run.await, |dir| {
            collect_outputs(dir, &c.workdir, &c.side_outputs)
        })
    }

    /// The source's bytes: inline, or fetched from the build sources bucket or asked from the
    /// submitter that offers it, and checked against its name. A self-contained source gets a `#line` naming it, so diagnostics and
    /// `__FILE__` say `source_name` rather than the input file; preprocessed output carries
    /// its own line markers. An offered source's bytes are those its prefetch holds, not a
    /// copy.
    async fn source(&self, c: &CompileSpec) -> Result<Bytes, String> {
        let bytes = match c.source.inline_bytes(MAX_SOURCE_BYTES) {
            Ok(Some(b)) => Bytes::from(b),
            Ok(None) => {
                let Some(name) = &c.source.object else {
                    return Err("the segment's source is empty".into());
                };
                match (&c.source.offered_by, self.offered) {
                    (Some(build), Some(offered)) => offered.fetch(name, build).await?,
                    (Some(build), None) => {
                        return Err(format!(
                            "source {name} is offered by build {build}, which this run cannot ask"
                        ))
                    }
                    (None, _) => self
                        .sources
                        .fetch_checked(name)
                        .await?
                        .map(Bytes::from)
                        .ok_or_else(|| {
                            format!("source {name} is not in the build sources bucket")
                        })?,
                }
            }
            Err(e) => return Err(e.to_string()),
        };
        if bytes.len() > MAX_SOURCE_BYTES {
            return Err(format!(
                "the source is {} bytes; segments are limited to {} MiB",
                bytes.len(),
                MAX_SOURCE_BYTES >> 20
            ));
        }
        if c.preprocessed {
            return Ok(bytes);
        }
        let mut named = format!("#line 1 \"{}\"\n", c_string_body(&c.source_name)).into_bytes();
        named.extend_from_slice(&bytes);
        Ok(Bytes::from(named))
    }
}

/// `name` inside the working directory `workdir` (relative to the task directory).
fn in_workdir(workdir: &str, name: &str) -> String {
    if workdir.is_empty() {
        name.to_owned()
    } else {
        format!("{workdir}/{name}")
    }
}

/// `s` escaped for the inside of a C string literal.
fn c_string_body(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

/// The object and the side outputs (`vgas-segment.su`...) the compiler left in `workdir`, as
/// the run's artifacts. A side output the flags promise but the compiler did not write is an
/// error: the submitter would lose a file a local compile writes, so it compiles there.
fn collect_outputs(dir: KeptDir, workdir: &str, side: &[String]) -> CompileRun {
    let mut extras = Vec::with_capacity(side.len());
    for ext in side {
        let name = side_output_name(ext);
        match dir.regular_file(&in_workdir(workdir, &name)) {
            Ok(Some((path, size))) if size <= MAX_INLINE_ARTIFACT_BYTES => {
                match crate::wasm::read_inline(&path) {
                    Ok(bytes) => extras.push(Artifact {
                        path: name,
                        mode: None,
                        body: ArtifactBody::Inline(bytes),
                    }),
                    Err(e) => return CompileRun::error(format!("cannot read {name}: {e}")),
                }
            }
            Ok(Some((_, size))) => {
                return CompileRun::error(format!(
                    "{name} is {size} bytes; side outputs are sent back up to {MAX_INLINE_ARTIFACT_BYTES}"
                ))
            }
            Ok(None) => return CompileRun::error(format!("the compiler wrote no {name}")),
            Err(message) => return CompileRun::error(message),
        }
    }
    let mut run = collect_object(dir, &in_workdir(workdir, OBJECT_FILE));
    if run.outcome.succeeded() {
        run.artifacts.extend(extras);
    }
    run
}

/// The object the compiler left at `rel` in `dir`, as the run's artifact ([`collect_files`]).
fn collect_object(dir: KeptDir, rel: &str) -> CompileRun {
    collect_files(dir, &[(rel, OBJECT_FILE)], |_| {
        format!("the compiler exited with 0 but wrote no {OBJECT_FILE}")
    })
}

/// The files a successful run left at `(path in dir, artifact name)`, as its artifacts: inline
/// when small, by reference to the kept directory when large; the directory stays until
/// they are sent (and the large ones uploaded); `missing` words a file the run did not
/// leave. A file over `MAX_ARTIFACT_BYTES` ends the run `limit_exceeded` `artifact`. (A
/// compile's object, a cuda task's PTX or output buffers.)
pub(crate) fn collect_files(
    dir: KeptDir,
    files: &[(&str, &str)],
    missing: impl Fn(&str) -> String,
) -> CompileRun {
    let mut artifacts = Vec::with_capacity(files.len());
    for (rel, name) in files {
        let (path, size) = match dir.regular_file(rel) {
            Ok(Some(found)) => found,
            Ok(None) => return CompileRun::error(missing(name)),
            Err(message) => return CompileRun::error(message),
        };
        if size > MAX_ARTIFACT_BYTES {
            return CompileRun::ended(TaskOutcome::LimitExceeded {
                limit: "artifact".into(),
                message: format!(
                    "{name} is {size} bytes; files over {} MiB are not sent back",
                    MAX_ARTIFACT_BYTES >> 20
                ),
            });
        }
        let body = if size > MAX_INLINE_ARTIFACT_BYTES {
            ArtifactBody::Large { file: path, size }
        } else {
            match crate::wasm::read_inline(&path) {
                Ok(bytes) => ArtifactBody::Inline(bytes),
                Err(e) => return CompileRun::error(format!("cannot read {name}: {e}")),
            }
        };
        artifacts.push(Artifact {
            path: (*name).to_owned(),
            mode: None,
            body,
        });
    }
    CompileRun {
        outcome: TaskOutcome::Exited { exit_code: 0 },
        artifacts,
        // Removed once the files are sent, not before: off the path to the submitter.
        dir: Some(dir),
        ran: None,
    }
}

#[cfg(test)]
#[path = "compile_tests.rs"]
mod tests;
