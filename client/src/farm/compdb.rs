//! `vgas build --compdb compile_commands.json --link '...' -o app`: every entry of a
//! compilation database (as CMake, Bear or meson write it) becomes a segment, preprocessed
//! here `parallel` at a time, dispatched to the swarm, then linked here.

use std::path::{Path, PathBuf};

use crate::toolchain::{identify_cached, which};
use anyhow::{bail, Context, Result};
use futures::StreamExt;
use serde::Deserialize;
use vgas_shared::farm::BuildOutput;

use super::args::{classify, Invocation};
use super::context::Segment;
use super::local::LocalCompile;
use super::prepare::{prepare, Prepared};

/// Entries one database may have (100,000: the largest C++ code bases have about that many
/// units); past it the file is refused rather than read into memory without bound.
const MAX_ENTRIES: usize = 100_000;

/// One entry of `compile_commands.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Entry {
    pub directory: PathBuf,
    pub file: String,
    #[serde(default)]
    pub arguments: Option<Vec<String>>,
    #[serde(default)]
    pub command: Option<String>,
}

impl Entry {
    /// The command as arguments: `arguments`, or `command` split as a shell would.
    pub fn argv(&self) -> Result<Vec<String>> {
        let argv = match (&self.arguments, &self.command) {
            (Some(a), _) => a.clone(),
            (None, Some(c)) => shlex::split(c)
                .with_context(|| format!("entry for {}: cannot split {c:?}", self.file))?,
            (None, None) => bail!("entry for {} has neither arguments nor command", self.file),
        };
        if argv.is_empty() {
            bail!("entry for {} has an empty command", self.file);
        }
        Ok(argv)
    }
}

/// Reads a compilation database.
pub fn read(path: &Path) -> Result<Vec<Entry>> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let entries: Vec<Entry> = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a compilation database", path.display()))?;
    if entries.is_empty() || entries.len() > MAX_ENTRIES {
        bail!(
            "{}: {} entries; expected 1 to {MAX_ENTRIES}",
            path.display(),
            entries.len()
        );
    }
    Ok(entries)
}

/// One entry, ready: a segment, a local command, or a preprocessing failure.
#[derive(Debug)]
pub enum Unit {
    Segment(Box<Segment>),
    Local {
        local: LocalCompile,
        output: PathBuf,
        name: String,
        /// Why it is not distributed.
        reason: String,
    },
    Failed(BuildOutput),
}

/// Prepares every entry, `parallel` preprocessors at a time.
pub async fn prepare_all(
    entries: Vec<Entry>,
    state_dir: &Path,
    parallel: usize,
) -> Result<Vec<Unit>> {
    let cache_dir = state_dir.join("toolchains");
    let mut work = Vec::with_capacity(entries.len());
    for e in entries {
        let argv = e.argv()?;
        let name = argv[0].rsplit('/').next().unwrap_or(&argv[0]).to_owned();
        let compiler = which(&argv[0], None)
            .with_context(|| format!("{}: compiler {} not found", e.file, argv[0]))?;
        let cwd = e.directory.clone();
        let args: Vec<String> = argv[1..].to_vec();
        let local = LocalCompile::Command {
            program: compiler.clone(),
            args: args.clone(),
            cwd: cwd.clone(),
            env: None,
        };
        let cache_dir = cache_dir.clone();
        work.push(async move {
            let job = match classify(&args, name.ends_with("++")) {
                Invocation::Distribute(job) => job,
                Invocation::Local(reason) => {
                    return Ok(Unit::Local {
                        local,
                        output: cwd.join(output_of(&args).unwrap_or_default()),
                        name: e.file,
                        reason,
                    })
                }
            };
            let c2 = compiler.clone();
            let identity =
                tokio::task::spawn_blocking(move || identify_cached(&c2, &name, Some(&cache_dir)))
                    .await??;
            Ok::<Unit, anyhow::Error>(
                match prepare(&job, &compiler, &identity, &cwd, local, &None).await? {
                    Prepared::Segment(seg, _) => Unit::Segment(seg),
                    Prepared::Failed { exit_code, stderr } => Unit::Failed(BuildOutput {
                        segment: job.source.clone(),
                        object: None,
                        exit_code,
                        diagnostics: stderr,
                        origin: vgas_shared::farm::Origin::Local {
                            reason: "preprocessing failed".into(),
                        },
                    }),
                },
            )
        });
    }
    // `parallel` at a time, in the database's order; each mostly waits on a preprocessor
    // process, so one task drives them all.
    futures::stream::iter(work)
        .buffered(parallel.max(1))
        .collect::<Vec<Result<Unit>>>()
        .await
        .into_iter()
        .collect()
}

fn output_of(args: &[String]) -> Option<String> {
    let i = args.iter().position(|a| a == "-o")?;
    args.get(i + 1).cloned()
}
