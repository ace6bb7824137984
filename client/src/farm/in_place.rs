//! Compiling a unit in place, here, when no worker on another host could take it
//! ([`super::placement`]): the user's own command line, in the user's directory, with no
//! preprocessing step and no round trip. The cache still learns the object (ccache's depend
//! mode): the compile writes a dependency file (the unit's own `-MD` one, or one of ours in
//! a temporary directory), every file it names is hashed, and the object is stored under a
//! key over the unit's direct key and those hashes, with a manifest that lets the next
//! build's direct lookup find it without preprocessing. Only the dependency file and the
//! outputs are read before the unit answers its wrapper; the hashing and the stores come
//! after, off the build's path.
//!
//! Not in place (the unit takes the usual path): units without a direct key (`VGAS_DIRECT=0`,
//! `__DATE__` in the source), and units whose dependency file leaves system headers out
//! (`-MMD`), since their manifest could not see a changed system header.

use std::path::Path;
use std::time::{Instant, SystemTime};

use anyhow::{Context, Result};
use vgas_shared::farm::{side_outputs_of, Origin};

use super::args::CompileJob;
use super::context::{side_text, BuildContext};
use super::direct::{dependencies, Direct, FileHashes};
use super::local::{run_captured, CompilerEnv, LocalResult};
use super::segment::{read_written, report_here};

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
        // The dependency file to read afterwards: the unit's own, or one of ours (its
        // directory kept until then).
        let (deps_path, _ours) = match direct.deps_file() {
            Some((_, false)) => return Ok(None),
            Some((file, true)) => (self.cwd.join(file), None),
            None => {
                let dir = tempfile::tempdir().context("a temporary directory")?;
                let file = dir.path().join("unit.d");
                args.extend(["-MD".into(), "-MF".into(), file.display().to_string()]);
                (file, Some(dir))
            }
        };
        let started = SystemTime::now();
        let t0 = Instant::now();
        let result = run_captured(self.compiler, &args, self.cwd, self.env).await?;
        let compile_ms = t0.elapsed().as_millis() as u64;
        let origin = Origin::Local {
            reason: self.reason,
        };
        report_here(ctx, &job.source, origin, &result, compile_ms).await;
        if result.exit_code != 0 || ctx.cache.is_none() {
            return Ok(Some(result));
        }
        // Read before the unit answers (the build tool may remove the dependency file, ninja
        // does, or move the object); what is read is hashed and stored after the answer, off
        // the build's path. A file modified after the compile started is refused then too.
        let Ok(deps_text) = tokio::fs::read_to_string(&deps_path).await else {
            return Ok(Some(result));
        };
        let Some(names) = dependencies(&deps_text) else {
            return Ok(Some(result));
        };
        let deps = direct.deps_read(deps_text);
        let output = self.cwd.join(&job.output);
        let sides = side_outputs_of(&job.compile_args);
        let Some((object, side)) = read_written(&output, &sides).await else {
            return Ok(Some(result));
        };
        let (Some(cache), Some(side)) = (ctx.cache.clone(), side_text(side)) else {
            return Ok(Some(result));
        };
        let (direct, hashes, stderr) = (direct.clone(), hashes.clone(), result.stderr.clone());
        ctx.later(async move {
            let Some(read) = direct.files_read(names, started, &hashes, deps).await else {
                return;
            };
            let key = direct.depend_key(&read);
            match cache.store(&key, &object, &side, &stderr, compile_ms).await {
                Ok(_) => direct.put(&cache, &key, &read).await,
                Err(e) => tracing::debug!("not cached: {e:#}"),
            }
        })
        .await;
        Ok(Some(result))
    }
}
