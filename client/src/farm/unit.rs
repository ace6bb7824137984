//! One compile-only translation unit from a wrapper, start to end: direct-mode lookup,
//! preprocessing, cache, swarm, local fallback, manifest. The standalone wrapper (`vgas cc`
//! with no `vgas build` around it) runs it with a context of its own; the helper inside
//! `vgas build` runs it for every wrapper of the build with one shared context, so a unit
//! pays for no connection and no cache handles of its own.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use crate::toolchain::identify_cached;
use anyhow::Result;
use vgas_shared::farm::{side_outputs_of, CompilerIdentity};

use super::args::CompileJob;
use super::direct::{Direct, FileHashes};
use super::in_place::InPlace;
use super::local::{CompilerEnv, LocalCompile};
use super::prepare::{prepare, Prepared};
use super::segment::{compile_segment, serve_hit, BuildContext};

/// What a unit needs besides its command line.
#[derive(Debug)]
pub struct UnitEnv<'a> {
    pub ctx: &'a BuildContext,
    pub hashes: &'a FileHashes,
    pub identities: &'a Identities,
}

/// Compiler identities by path and name, computed once per process.
#[derive(Debug, Default)]
pub struct Identities {
    memo: Mutex<HashMap<(PathBuf, String), CompilerIdentity>>,
}

impl Identities {
    /// The identity of `compiler` run as `invoked_as` (cached on disk under `cache_dir` too).
    pub async fn get(
        &self,
        compiler: &Path,
        invoked_as: &str,
        cache_dir: &Path,
    ) -> Result<CompilerIdentity> {
        let k = (compiler.to_owned(), invoked_as.to_owned());
        if let Some(id) = self.memo.lock().ok().and_then(|m| m.get(&k).cloned()) {
            return Ok(id);
        }
        let (c, n, d) = (
            compiler.to_owned(),
            invoked_as.to_owned(),
            cache_dir.to_owned(),
        );
        let id = tokio::task::spawn_blocking(move || identify_cached(&c, &n, Some(&d))).await??;
        if let Ok(mut m) = self.memo.lock() {
            m.insert(k, id.clone());
        }
        Ok(id)
    }
}

/// How a unit ended: the compiler's exit code and what it printed on stderr.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct UnitResult {
    pub exit_code: i32,
    pub diagnostics: String,
}

/// Compiles one unit (`job`, from `args` run as `invoked_as` by `compiler` in `cwd`).
pub async fn compile_unit(
    u: &UnitEnv<'_>,
    invoked_as: &str,
    compiler: &Path,
    cwd: &Path,
    args: &[String],
    job: CompileJob,
    env: CompilerEnv,
) -> Result<UnitResult> {
    let t0 = std::time::Instant::now();
    let ms = |t: std::time::Instant| t.elapsed().as_millis() as u64;
    let cache_dir = u.ctx.conn.state_dir.join("toolchains");
    let identity = u.identities.get(compiler, invoked_as, &cache_dir).await?;
    let identity_ms = ms(t0);
    // Direct mode: a hit without preprocessing.
    let direct = Direct::new(&identity.hash, &job, cwd, &env, u.hashes);
    if let (Some(d), Some(cache)) = (&direct, &u.ctx.cache) {
        if let Some(key) = d.lookup(cache, u.hashes).await {
            if let Ok(Some(hit)) = cache.lookup(&key).await {
                let output = cwd.join(&job.output);
                let sides = side_outputs_of(&job.compile_args);
                if let Some(out) = serve_hit(u.ctx, &job.source, &output, &sides, hit, true).await?
                {
                    return Ok(UnitResult {
                        exit_code: 0,
                        diagnostics: out.diagnostics,
                    });
                }
            }
        }
    }
    // In place only where compiling here is allowed at all (not with --no-local-fallback).
    let tag = vgas_shared::farm::compiler_tag(&identity.hash);
    let here = match u.ctx.local_fallback {
        true => u.ctx.placement.here(&u.ctx.swarm, &tag).await,
        false => None,
    };
    if let Some(here) = here {
        let in_place = InPlace {
            compiler,
            cwd,
            args,
            env: &env,
            reason: here.reason,
        };
        let done = in_place
            .compile(u.ctx, u.hashes, &job, direct.as_ref())
            .await?;
        drop(here.slot);
        if let Some(done) = done {
            return Ok(UnitResult {
                exit_code: done.exit_code,
                diagnostics: done.stderr,
            });
        }
    }
    let _remote = u.ctx.placement.going_remote();
    let local = LocalCompile::Command {
        program: compiler.to_owned(),
        args: args.to_vec(),
        cwd: cwd.to_owned(),
        env: env.clone(),
    };
    let direct_ms = ms(t0) - identity_ms;
    let started = std::time::SystemTime::now();
    let t1 = std::time::Instant::now();
    let (seg, pp) = match prepare(&job, compiler, &identity, cwd, local, &env).await? {
        Prepared::Segment(seg, pp) => (seg, pp),
        Prepared::Failed { exit_code, stderr } => {
            return Ok(UnitResult {
                exit_code,
                diagnostics: stderr,
            })
        }
    };
    let prepare_ms = ms(t1);
    // The dependency file the preprocessing wrote, read now: the build tool may delete it
    // as soon as this unit answers (ninja does), before the manifest is recorded.
    let deps = match &direct {
        Some(d) => d.deps_now().await,
        None => None,
    };
    let t2 = std::time::Instant::now();
    let out = compile_segment(u.ctx, &seg).await;
    let segment_ms = ms(t2);
    let t3 = std::time::Instant::now();
    if out.exit_code == 0 {
        if let (Some(d), Some(cache), Some(deps)) = (direct, u.ctx.cache.clone(), deps) {
            let (key, hashes) = (seg.key.clone(), u.hashes.clone());
            u.ctx
                .later(async move { d.record(&cache, &key, &pp, started, &hashes, deps).await })
                .await;
        }
    }
    tracing::debug!(
        unit = %job.source,
        identity_ms,
        direct_ms,
        prepare_ms,
        segment_ms,
        record_ms = ms(t3),
        "unit compiled"
    );
    Ok(UnitResult {
        exit_code: out.exit_code,
        diagnostics: out.diagnostics,
    })
}
