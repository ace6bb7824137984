//! `vgas cc` / `vgas c++` and the masquerade links `vgas build` puts on `PATH` (`cc`, `gcc`,
//! `c++`, `g++`): the distcc-style compiler wrapper. A compile-only invocation of one source
//! becomes a segment; everything else runs the real compiler here, unchanged, with the same
//! exit code and output. The wrapper never makes a build fail that a local compile would
//! pass: if the swarm cannot be reached the unit compiles here.

use std::path::{Path, PathBuf};

use crate::toolchain::which;
use anyhow::{Context, Result};
use clap::Parser;
use vgas_shared::config::{CommonArgs, Role};

use super::args::{classify, CompileJob, Invocation};
use super::direct::FileHashes;
use super::helper::{self, UnitRequest, ENV_HELPER_SOCKET};
pub use super::local::ENV_WRAPPER_DIR;
use super::local::{local_command, without_links};
use super::segment::{BuildContext, Updates, DEFAULT_SEGMENT_DEADLINE};
use super::unit::{compile_unit, Identities, UnitEnv};

/// Set by `vgas build` for the commands it runs.
pub const ENV_BUILD_ID: &str = "VGAS_BUILD_ID";
/// The real C and C++ compilers (what `CC` and `CXX` were before `vgas build`).
pub const ENV_REAL_CC: &str = "VGAS_REAL_CC";
pub const ENV_REAL_CXX: &str = "VGAS_REAL_CXX";
/// `0` turns the local fallback off (`vgas build --no-local-fallback`).
pub const ENV_LOCAL_FALLBACK: &str = "VGAS_LOCAL_FALLBACK";
/// Seconds a segment may take on a worker.
pub const ENV_SEGMENT_DEADLINE: &str = "VGAS_SEGMENT_DEADLINE";
/// A file in the build's wrapper directory where each wrapper that runs its call here
/// without offering it to the swarm appends one line: why. `vgas build` counts them.
pub const ENV_LOCAL_LOG: &str = "VGAS_BUILD_LOCAL_LOG";

/// Longest line a wrapper appends to the local log: one `write` of at most this many bytes
/// to a file opened with `O_APPEND` is never interleaved with another wrapper's.
const MAX_LOG_LINE: usize = 512;

/// Notes in the build's local log (when there is one) that this call runs here, and why.
/// Best effort: a log that cannot be written loses the count, never the compile.
pub fn note_local(reason: &str) {
    use std::io::Write as _;
    let Some(path) = std::env::var_os(ENV_LOCAL_LOG) else {
        return;
    };
    let mut line: String = reason.lines().next().unwrap_or("").to_owned();
    if line.len() >= MAX_LOG_LINE {
        let mut n = MAX_LOG_LINE - 1;
        while !line.is_char_boundary(n) {
            n -= 1;
        }
        line.truncate(n);
    }
    line.push('\n');
    if let Ok(mut f) = std::fs::OpenOptions::new().append(true).open(path) {
        let _ = f.write_all(line.as_bytes());
    }
}

/// The small wrapper binary (`client/src/bin/vgas-cc.rs`): the links of `vgas build` point
/// at it when it is installed beside `vgas`.
pub const SMALL_BINARY: &str = "vgas-cc";

/// The full `vgas` binary, for what the small wrapper's fast path declines: set by `vgas
/// build` for the commands it runs.
pub const ENV_FULL_BINARY: &str = "VGAS_BIN";

/// What the masquerade links point at: the small wrapper beside the `vgas` binary `me` when
/// it is there, `me` itself otherwise.
pub fn link_target(me: &Path) -> PathBuf {
    let small = me.with_file_name(SMALL_BINARY);
    if small.is_file() {
        small
    } else {
        me.to_owned()
    }
}

/// The full `vgas` binary for the small wrapper: [`ENV_FULL_BINARY`], or `vgas` beside it.
pub fn full_binary() -> Option<PathBuf> {
    let me = std::env::current_exe().ok()?;
    let full = match std::env::var_os(ENV_FULL_BINARY).filter(|p| !p.is_empty()) {
        Some(p) => PathBuf::from(p),
        None => me.with_file_name("vgas"),
    };
    // Never itself: that would exec in a loop.
    let same = |a: &Path, b: &Path| std::fs::canonicalize(a).ok() == std::fs::canonicalize(b).ok();
    (full.is_file() && !same(&full, &me)).then_some(full)
}

/// Names under which the `vgas` binary acts as a compiler.
pub const MASQUERADE_NAMES: &[&str] = &["cc", "gcc", "c++", "g++", "clang", "clang++"];

/// How `vgas` was called as a compiler: the name it compiles as (`gcc`, `c++`: it decides the
/// language of a `.c` file and the compiler proper), and the exact compiler when a build
/// system's compiler launcher named it (`vgas /usr/bin/gcc -c x.c`, as CMake's
/// `CMAKE_C_COMPILER_LAUNCHER` and Meson's `CC="vgas gcc"` do with ccache and sccache).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AsCompiler {
    pub name: String,
    pub explicit: Option<PathBuf>,
    pub args: Vec<String>,
}

impl AsCompiler {
    /// How `argv` (the whole command line) calls `vgas` as a compiler, if it does: through
    /// a masquerade link (`cc ...`), by family (`vgas cc ...`, `vgas c++ ...`), or as a
    /// launcher with a compiler's path (`vgas /usr/bin/gcc-12 ...`). `None`: the CLI.
    pub fn from_argv(mut argv: Vec<String>) -> Option<AsCompiler> {
        let invoked = argv.first()?.rsplit('/').next()?.to_owned();
        if MASQUERADE_NAMES.contains(&invoked.as_str()) {
            return Some(AsCompiler {
                name: invoked,
                explicit: None,
                args: argv.split_off(1),
            });
        }
        let first = argv.get(1)?.clone();
        if matches!(first.as_str(), "cc" | "c++") {
            return Some(AsCompiler {
                name: first,
                explicit: None,
                args: argv.split_off(2),
            });
        }
        // A launcher: the compiler's path (no CLI command has a '/').
        if first.contains('/') {
            let name = first.rsplit('/').next().unwrap_or(&first).to_owned();
            return Some(AsCompiler {
                name,
                explicit: Some(PathBuf::from(first)),
                args: argv.split_off(2),
            });
        }
        None
    }
}

/// The connection settings a wrapper takes: the environment only (`vgas build` exports them),
/// since the compiler's own arguments are not ours to parse.
#[derive(Debug, Parser)]
struct EnvOnly {
    #[command(flatten)]
    common: CommonArgs,
}

/// Whether `name` is a C++ driver.
fn is_cxx(name: &str) -> bool {
    name.ends_with("++")
}

/// The real compiler for `invoked_as`: the one a compiler launcher was given (`explicit`), or
/// found by name.
fn real_compiler(invoked_as: &str, explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(path) = explicit {
        return which(&path.to_string_lossy(), None);
    }
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

/// The wrapper without an async runtime, for the two common cases: a call that is not
/// distributed is replaced by the real compiler (`exec`, so make waits on the compiler
/// itself), and a distributable one inside `vgas build` is handed to its helper. `None`: the
/// rest (no compiler found, no helper, a helper that did not answer) is for [`run`].
pub fn fast_path(invoked_as: &str, explicit: Option<&Path>, args: &[String]) -> Option<i32> {
    use std::os::unix::process::CommandExt as _;
    let compiler = real_compiler(invoked_as, explicit)?;
    let cwd = std::env::current_dir().ok()?;
    match classify(args, is_cxx(invoked_as)) {
        Invocation::Local(why) => {
            note_local(&why);
            let mut cmd = std::process::Command::new(&compiler);
            cmd.args(args);
            let skip = std::env::var_os(ENV_WRAPPER_DIR).map(PathBuf::from);
            if let Some(path) = std::env::var_os("PATH") {
                cmd.env("PATH", without_links(&path, skip.as_deref()));
            }
            let e = cmd.exec();
            eprintln!("vgas: run {}: {e}", compiler.display());
            Some(127)
        }
        Invocation::Distribute(_) => {
            let socket = std::env::var_os(ENV_HELPER_SOCKET)?;
            let req = UnitRequest {
                invoked_as: invoked_as.to_owned(),
                compiler,
                cwd,
                args: args.to_vec(),
                env: std::env::vars().collect(),
            };
            let r = helper::ask_blocking(Path::new(&socket), &req).ok()?;
            eprint!("{}", r.diagnostics);
            Some(r.exit_code)
        }
    }
}

/// Runs the wrapper after [`fast_path`] declined; returns the exit code.
pub async fn run(invoked_as: &str, explicit: Option<&Path>, args: Vec<String>) -> i32 {
    let Some(compiler) = real_compiler(invoked_as, explicit) else {
        eprintln!("vgas: no {invoked_as} on PATH");
        return 127;
    };
    let cwd = std::env::current_dir().unwrap_or_else(|_| PathBuf::from("."));
    let job = match classify(&args, is_cxx(invoked_as)) {
        Invocation::Distribute(job) => job,
        Invocation::Local(why) => {
            tracing::debug!("compiling here: {why}");
            note_local(&why);
            return exec_here(&compiler, &args, &cwd).await;
        }
    };
    // `fast_path` hands a unit to the helper of `vgas build`; here it did not answer.
    if std::env::var_os(ENV_HELPER_SOCKET).is_some() {
        tracing::warn!("the build helper did not answer; compiling this unit alone");
    }
    match distribute(invoked_as, &compiler, &cwd, &args, job).await {
        Ok(code) => code,
        Err(e) => {
            tracing::warn!("swarm unusable ({e:#}); compiling here");
            note_local("the swarm could not be reached");
            exec_here(&compiler, &args, &cwd).await
        }
    }
}

async fn exec_here(compiler: &Path, args: &[String], cwd: &Path) -> i32 {
    match local_command(compiler, &None)
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

/// The settings `vgas build` passes its commands, read back by a wrapper or its helper.
pub fn local_fallback_from_env() -> bool {
    std::env::var(ENV_LOCAL_FALLBACK).as_deref() != Ok("0")
}

/// The segment deadline `vgas build` passed, or the default.
pub fn segment_deadline_from_env() -> std::time::Duration {
    std::env::var(ENV_SEGMENT_DEADLINE)
        .ok()
        .and_then(|s| s.parse().ok())
        .map(std::time::Duration::from_secs)
        .unwrap_or(DEFAULT_SEGMENT_DEADLINE)
}

/// The connection settings a wrapper runs with: from the environment only, which `vgas
/// build` sets for the commands it runs.
pub fn settings_from_env() -> Result<vgas_shared::config::Resolved> {
    EnvOnly::try_parse_from(["vgas"])
        .context("settings from the environment")?
        .common
        .resolve(Role::Client)
        .context("resolve the connection settings")
}

/// The updates subject of the `vgas build` this wrapper runs under, if any.
pub fn build_updates_subject(conn: &vgas_shared::config::Resolved) -> Option<String> {
    std::env::var(ENV_BUILD_ID)
        .ok()
        .filter(|id| vgas_shared::TaskId::parse(id).is_ok())
        .map(|id| conn.subjects.build_updates(&id))
}

/// One unit with a connection of its own (no `vgas build` helper to hand it to).
async fn distribute(
    invoked_as: &str,
    compiler: &Path,
    cwd: &Path,
    args: &[String],
    job: CompileJob,
) -> Result<i32> {
    let conn = settings_from_env()?;
    let client = crate::connect::connect(&conn, "vgas-cc").await?;
    let swarm = crate::api::Swarm::new(client.clone(), conn.subjects.clone());
    let cache = super::cache::BuildCache::open(&swarm.js, &conn.subjects)
        .await
        .ok()
        .map(|c| c.on_host(&conn.state_dir));
    let subject = build_updates_subject(&conn);
    let ctx = BuildContext {
        updates: Updates::new(client.clone(), subject, None),
        swarm,
        cache,
        local_fallback: local_fallback_from_env(),
        segment_deadline: segment_deadline_from_env(),
        tasks: tokio_util::task::TaskTracker::new(),
        write_behind: false,
        placement: super::placement::Placement::from_env(),
        uploaded: Default::default(),
        offers: None,
        conn,
    };
    let (hashes, identities) = (FileHashes::uncached(), Identities::default());
    let u = UnitEnv {
        ctx: &ctx,
        hashes: &hashes,
        identities: &identities,
    };
    let out = compile_unit(&u, invoked_as, compiler, cwd, args, job, None).await?;
    // The build's updates reach the server before this process ends: `vgas build` counts
    // them once its command has ended.
    ctx.swarm.sync(crate::api::REQUEST_TIMEOUT).await;
    eprint!("{}", out.diagnostics);
    Ok(out.exit_code)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn argv(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_three_ways_vgas_is_called_as_a_compiler() {
        let link = AsCompiler::from_argv(argv("/tmp/vgas-wrap-x/g++ -c a.cc")).unwrap();
        assert_eq!((link.name.as_str(), link.explicit), ("g++", None));
        assert_eq!(link.args, argv("-c a.cc"));
        let family = AsCompiler::from_argv(argv("vgas cc -c a.c")).unwrap();
        assert_eq!((family.name.as_str(), family.explicit), ("cc", None));
        assert_eq!(family.args, argv("-c a.c"));
        let launcher = AsCompiler::from_argv(argv("/usr/bin/vgas /usr/bin/gcc-12 -c a.c")).unwrap();
        assert_eq!(launcher.name, "gcc-12");
        assert_eq!(launcher.explicit, Some(PathBuf::from("/usr/bin/gcc-12")));
        assert_eq!(launcher.args, argv("-c a.c"));
        for cli in [
            "vgas status",
            "vgas build -- make",
            "vgas",
            "vgas submit -- /bin/true",
        ] {
            assert_eq!(AsCompiler::from_argv(argv(cli)), None, "{cli}");
        }
    }
}
