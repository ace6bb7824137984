//! Compiling a unit in place, here, when no worker on another host could take it
//! ([`super::placement`]): the user's own command line, in the user's directory, with no
//! preprocessing step and no round trip. The cache still learns the object (ccache's depend
//! mode): the compile writes a dependency file (the unit's own `-MD` one, or one of ours in
//! a temporary directory), every file it names is hashed, and the object is stored under a
//! key over the unit's direct key and those hashes, with a manifest that lets the next
//! build's direct lookup find it without preprocessing.
//!
//! Not in place (the unit takes the usual path): units without a direct key (`VGAS_DIRECT=0`,
//! `__DATE__` in the source), and units whose dependency file leaves system headers out
//! (`-MMD`), since their manifest could not see a changed system header.

use std::path::Path;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use vgas_shared::farm::{side_outputs_of, BuildUpdate, Origin};

use super::args::CompileJob;
use super::context::BuildContext;
use super::direct::FileHashes;
use super::direct::{dependencies, Direct};
use super::local::{run_captured, CompilerEnv, LocalResult};
use super::segment::{cut, read_side_outputs};

/// A unit about to compile in place.
#[derive(Debug)]
pub struct InPlace<'a> {
    pub compiler: &'a Path,
    pub cwd: &'a Path,
    pub args: &'a [String],
    pub env: &'a CompilerEnv,
    /// Why it compiles here, as the summary counts it.
    pub reason: String,
}

impl InPlace<'_> {
    /// Compiles `job` here and caches it: the compiler's exit code and diagnostics; `None`
    /// when it cannot compile in place (see the module's notes), and the caller takes the
    /// usual path.
    pub async fn compile(
        self,
        ctx: &BuildContext,
        hashes: &FileHashes,
        job: &CompileJob,
        direct: Option<&Direct>,
    ) -> Result<Option<LocalResult>> {
        let Some(direct) = direct else {
            return Ok(None);
        };
        let mut args = self.args.to_vec();
        let ours = match direct.deps_file() {
            Some((_, false)) => return Ok(None),
            Some((_, true)) => None,
            None => {
                let dir = tempfile::tempdir().context("a temporary directory")?;
                let file = dir.path().join("unit.d");
                args.extend(["-MD".into(), "-MF".into(), file.display().to_string()]);
                Some((dir, file))
            }
        };
        let started = SystemTime::now();
        let t0 = Instant::now();
        let output = self.cwd.join(&job.output);
        let result = run_captured(self.compiler, &args, self.cwd, self.env).await?;
        let compile_ms = t0.elapsed().as_millis() as u64;
        let origin = Origin::Local {
            reason: self.reason,
        };
        let segment = job.source.clone();
        if result.exit_code != 0 {
            ctx.updates
                .send(BuildUpdate::Failed {
                    segment,
                    origin,
                    exit_code: result.exit_code,
                    diagnostics: cut(result.stderr.clone()),
                })
                .await;
            return Ok(Some(result));
        }
        ctx.updates
            .send(BuildUpdate::Done {
                segment,
                origin,
                compile_ms,
                overhead_ms: 0,
                diagnostics: cut(result.stderr.clone()),
            })
            .await;
        let deps_path = match &ours {
            Some((_, file)) => file.clone(),
            None => self
                .cwd
                .join(direct.deps_file().map(|(f, _)| f).unwrap_or_default()),
        };
        let deps_text = tokio::fs::read_to_string(&deps_path).await.ok();
        drop(ours);
        if let (Some(cache), Some(names)) =
            (ctx.cache.clone(), deps_text.and_then(|t| dependencies(&t)))
        {
            let Some(read) = direct.files_read(names, started, hashes).await else {
                return Ok(Some(result));
            };
            let sides = side_outputs_of(&job.compile_args);
            let object = tokio::fs::read(&output).await;
            let side = read_side_outputs(&output, &sides).await;
            if let (Ok(object), Some(side)) = (object, side) {
                let key = direct.depend_key(&read);
                ctx.cache_object(&key, object, side, result.stderr.clone(), compile_ms)
                    .await;
                let direct = direct.clone();
                ctx.later(async move { direct.put(&cache, &key, &read).await })
                    .await;
            }
        }
        Ok(Some(result))
    }
}
