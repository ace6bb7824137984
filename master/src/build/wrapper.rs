//! `vgas cc` / `vgas c++` and the masquerade links `vgas build` puts on `PATH` (`cc`, `gcc`,
//! `c++`, `g++`): the distcc-style compiler wrapper. A compile-only invocation of one source
//! becomes a segment; everything else runs the real compiler here, unchanged, with the same
//! exit code and output. The wrapper never makes a build fail that a local compile would
//! pass: if the swarm cannot be reached the unit compiles here.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::Parser;
use vgas_shared::config::{CommonArgs, Role};
use vgas_shared::toolchain::{identify_cached, which};

use super::args::{classify, Invocation};
use super::direct::Direct;
use super::local::LocalCompile;
use super::prepare::{prepare, Prepared};
use super::segment::{compile_segment, serve_hit, BuildContext, Updates, DEFAULT_SEGMENT_DEADLINE};

/// Set by `vgas build` for the commands it runs.
pub const ENV_BUILD_ID: &str = "VGAS_BUILD_ID";
/// The directory of masquerade links, skipped when the real compiler is looked up.
pub const ENV_WRAPPER_DIR: &str = "VGAS_WRAPPER_DIR";
/// The real C and C++ compilers (what `CC` and `CXX` were before `vgas build`).
pub const ENV_REAL_CC: &str = "VGAS_REAL_CC";
pub const ENV_REAL_CXX: &str = "VGAS_REAL_CXX";
/// `0` turns the local fallback off (`vgas build --no-local-fallback`).
pub const ENV_LOCAL_FALLBACK: &str = "VGAS_LOCAL_FALLBACK";
/// Seconds a segment may take on a worker.
pub const ENV_SEGMENT_DEADLINE: &str = "VGAS_SEGMENT_DEADLINE";

/// Names under which the `vgas` binary acts as a compiler.
pub const MASQUERADE_NAMES: &[&str] = &["cc", "gcc", "c++", "g++", "clang", "clang++"];

/// The connection settings a wrapper takes: the environment only (`vgas build` exports them),
/// since the compiler's own arguments are not ours to parse.
#[derive(Debug, Parser)]
struct EnvOnly {
    #[command(flatten)]
    common: CommonArgs,
}

/// `PATH` without the masquerade links, for every compiler this host runs itself: a compiler
/// that is a script calling `gcc` (ccache, a cross wrapper) must reach the real `gcc`, not
/// come back into the wrapper and compile the unit twice.
pub fn local_path() -> Option<std::ffi::OsString> {
    let path = std::env::var_os("PATH")?;
    let Some(skip) = std::env::var_os(ENV_WRAPPER_DIR).map(PathBuf::from) else {
        return Some(path);
    };
    std::env::join_paths(std::env::split_paths(&path).filter(|d| *d != skip)).ok()
}

/// A command for a compiler run on this host: `PATH` without the masquerade links.
pub fn local_command(program: &Path) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    if let Some(path) = local_path() {
        cmd.env("PATH", path);
    }
    cmd
}

/// Whether `name` is a C++ driver.
fn is_cxx(name: &str) -> bool {
    name.ends_with("++")
}

/// The real compiler for `invoked_as`.
fn real_compiler(invoked_as: &str) -> Option<PathBuf> {
    let var = if is_cxx(invoked_as) {
        ENV_REAL_CXX
    } else {
        ENV_REAL_CC
    };
    let skip = std::env::var_os(ENV_WRAPPER_DIR).map(PathBuf::from);
    // `vgas cc` names a family; the real one is the user's CC when `vgas build` saved it.
    if matches!(invoked_as, "cc" | "c++") {
        if let Some(p) =
            std::env::var_os(var).and_then(|v| which(&v.to_string_lossy(), skip.as_deref()))
        {
            return Some(p);
        }
    }
    which(invoked_as, skip.as_deref())
}

/// Runs the wrapper; returns the exit code.
pub async fn run(invoked_as: &str, args: Vec<String>) -> i32 {
    let Some(compiler) = real_compiler(invoked_as) else {
        eprintln!("vgas: no {invoked_as} on PATH");
        return 127;
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let local = LocalCompile::Command {
        program: compiler.clone(),
        args: args.clone(),
        cwd: cwd.clone(),
    };
    let job = match classify(&args, is_cxx(invoked_as)) {
        Invocation::Distribute(job) => job,
        Invocation::Local(why) => {
            tracing::debug!("compiling here: {why}");
            return exec_here(&compiler, &args, &cwd).await;
        }
    };
    match distribute(invoked_as, &compiler, &cwd, job, local).await {
        Ok(code) => code,
        Err(e) => {
            tracing::warn!("swarm unusable ({e:#}); compiling here");
            exec_here(&compiler, &args, &cwd).await
        }
    }
}

async fn exec_here(compiler: &Path, args: &[String], cwd: &Path) -> i32 {
    match local_command(compiler)
        .args(args)
        .current_dir(cwd)
        .status()
        .await
    {
        Ok(s) => s.code().unwrap_or(1),
        Err(e) => {
            eprintln!("vgas: run {}: {e}", compiler.display());
            127
        }
    }
}

async fn distribute(
    invoked_as: &str,
    compiler: &Path,
    cwd: &Path,
    job: super::args::CompileJob,
    local: LocalCompile,
) -> Result<i32> {
    let conn = EnvOnly::try_parse_from(["vgas"])
        .context("settings from the environment")?
        .common
        .resolve(Role::Client)?;
    let cache_dir = conn.state_dir.join("toolchains");
    let compiler_owned = compiler.to_owned();
    let name = invoked_as.to_owned();
    // The connection and the compiler's identity (a cached file read) at once.
    let (client, identity) = tokio::join!(
        crate::connect::connect(&conn, "vgas-cc"),
        tokio::task::spawn_blocking(move || {
            identify_cached(&compiler_owned, &name, Some(&cache_dir))
        })
    );
    let (client, identity) = (client?, identity??);
    let js = async_nats::jetstream::new(client.clone());
    let cache = super::cache::BuildCache::open(&js, &conn.subjects)
        .await
        .ok();
    let subject = std::env::var(ENV_BUILD_ID)
        .ok()
        .filter(|id| vgas_shared::TaskId::parse(id).is_ok())
        .map(|id| conn.subjects.build_updates(&id));
    let ctx = BuildContext {
        updates: Updates::new(client.clone(), subject, None),
        client: client.clone(),
        js,
        cache,
        local_fallback: std::env::var(ENV_LOCAL_FALLBACK).as_deref() != Ok("0"),
        segment_deadline: std::env::var(ENV_SEGMENT_DEADLINE)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(std::time::Duration::from_secs)
            .unwrap_or(DEFAULT_SEGMENT_DEADLINE),
        conn,
    };
    // Direct mode: a hit without preprocessing.
    let direct = Direct::new(&identity.hash, &job, cwd);
    if let (Some(d), Some(cache)) = (&direct, &ctx.cache) {
        if let Some(key) = d.lookup(cache).await {
            if let Ok(Some(hit)) = cache.lookup(&key).await {
                let out = serve_hit(&ctx, &job.source, &cwd.join(&job.output), hit, true).await?;
                let _ = client.flush().await;
                eprint!("{}", out.diagnostics);
                return Ok(0);
            }
        }
    }
    let started = std::time::SystemTime::now();
    let (seg, pp) = match prepare(&job, compiler, &identity, cwd, local).await? {
        Prepared::Segment(seg, pp) => (seg, pp),
        Prepared::Failed { exit_code, stderr } => {
            eprint!("{stderr}");
            return Ok(exit_code);
        }
    };
    let out = compile_segment(&ctx, &seg).await;
    if out.exit_code == 0 {
        if let (Some(d), Some(cache)) = (&direct, &ctx.cache) {
            d.record(cache, &seg.key, &pp, started).await;
        }
    }
    let _ = client.flush().await;
    // A local run already printed nothing (its stderr was captured): print what any origin gave.
    eprint!("{}", out.diagnostics);
    Ok(out.exit_code)
}
