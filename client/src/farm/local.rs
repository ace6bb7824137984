//! Compiling on this host: the last resort of a segment, the user's own command unchanged
//! (wrapper and compilation database); and a segment compiled as a worker would, in a
//! directory of its own (`compile_aside`, what an idle local slot races a queued unit with).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use vgas_shared::farm::command::{compile_argv, compile_input, input_file};
use vgas_shared::farm::{side_output_name, CompileSpec, SEGMENT_OBJECT};

/// The directory of masquerade links, skipped when the real compiler is looked up.
pub const ENV_WRAPPER_DIR: &str = "VGAS_WRAPPER_DIR";

/// `path` without the masquerade links in `skip`, for every compiler this host runs itself:
/// a compiler that is a script calling `gcc` (ccache, a cross wrapper) must reach the real
/// `gcc`, not come back into the wrapper and compile the unit twice.
pub fn without_links(path: &std::ffi::OsStr, skip: Option<&Path>) -> std::ffi::OsString {
    let dirs = std::env::split_paths(path).filter(|d| Some(d.as_path()) != skip);
    std::env::join_paths(dirs).unwrap_or_else(|_| path.to_owned())
}

/// A command for a compiler run on this host: the given environment (or this process's),
/// with `PATH` cleared of the masquerade links.
pub fn local_command(program: &Path, env: &CompilerEnv) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(program);
    match env {
        None => {
            let skip = std::env::var_os(ENV_WRAPPER_DIR).map(PathBuf::from);
            if let Some(path) = std::env::var_os("PATH") {
                cmd.env("PATH", without_links(&path, skip.as_deref()));
            }
        }
        Some(vars) => {
            let skip = vars
                .iter()
                .find(|(k, _)| k == ENV_WRAPPER_DIR)
                .map(|(_, v)| PathBuf::from(v));
            cmd.env_clear();
            for (k, v) in vars.iter() {
                if k == "PATH" {
                    cmd.env(k, without_links(v.as_ref(), skip.as_deref()));
                } else {
                    cmd.env(k, v);
                }
            }
        }
    }
    cmd
}

/// Largest source a segment compiled aside may have (64 MiB, as on workers).
const MAX_LOCAL_SOURCE: usize = 64 * 1024 * 1024;

/// The environment a compiler runs with: this process's (`None`), or the one a wrapper sent
/// to the helper of `vgas build` (a Makefile may export variables to its compilers).
pub type CompilerEnv = Option<Arc<Vec<(String, String)>>>;

/// How to compile a segment here.
#[derive(Debug, Clone)]
pub enum LocalCompile {
    /// The user's own command, exactly as the build ran it.
    Command {
        program: PathBuf,
        args: Vec<String>,
        cwd: PathBuf,
        env: CompilerEnv,
    },
    /// Nothing here can compile it; the text says why.
    Unavailable(String),
}

/// How a local compile ended.
#[derive(Debug, Clone)]
pub struct LocalResult {
    pub exit_code: i32,
    pub stderr: String,
}

/// Runs `program` with `args` in `cwd`, stdout passed through, stderr captured.
pub async fn run_captured(
    program: &Path,
    args: &[String],
    cwd: &Path,
    env: &CompilerEnv,
) -> Result<LocalResult> {
    let out = local_command(program, env)
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::inherit())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("run {}", program.display()))?;
    Ok(LocalResult {
        exit_code: out.status.code().unwrap_or(1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

impl LocalCompile {
    /// The compiler this host would run and its environment, when it can compile here.
    pub fn compiler(&self) -> Option<(&Path, &CompilerEnv)> {
        match self {
            LocalCompile::Command { program, env, .. } => Some((program, env)),
            LocalCompile::Unavailable(_) => None,
        }
    }

    pub async fn run(&self) -> Result<LocalResult> {
        match self {
            LocalCompile::Command {
                program,
                args,
                cwd,
                env,
            } => run_captured(program, args, cwd, env).await,
            LocalCompile::Unavailable(why) => bail!("cannot compile here: {why}"),
        }
    }
}

/// A segment compiled here the way a worker compiles it, in a directory of its own: the
/// object and side outputs in memory, nothing written beside the user's files yet.
#[derive(Debug)]
pub struct Aside {
    pub result: LocalResult,
    /// `None` when the compile failed.
    pub object: Option<Vec<u8>>,
    /// The side outputs by extension (`su` for `-fstack-usage`).
    pub side: std::collections::BTreeMap<String, Vec<u8>>,
}

/// Compiles `spec` with `compiler` as a worker would (`compile_argv`, the input named as on
/// a worker, so the object's bytes are the worker's) in a temporary directory. Dropping the
/// future kills the compiler: a race that lost stops at once.
pub async fn compile_aside(
    compiler: &Path,
    spec: &CompileSpec,
    env: &CompilerEnv,
) -> Result<Aside> {
    let Some(source) = spec.source.inline_bytes(MAX_LOCAL_SOURCE)? else {
        bail!("cannot compile here: the source is in the sources bucket");
    };
    let dir = tempfile::tempdir().context("temporary directory")?;
    let cwd = match spec.workdir.as_str() {
        "" => dir.path().to_path_buf(),
        w => dir.path().join(w),
    };
    let (text, primary) = compile_input(spec, source.into());
    let input = cwd.join(input_file(spec.language, primary.as_deref()));
    if let Some(parent) = input.parent() {
        tokio::fs::create_dir_all(parent)
            .await
            .context("the source's directory")?;
    }
    tokio::fs::write(&input, text)
        .await
        .context("write the source")?;
    let argv = compile_argv(compiler, spec, &cwd, primary.as_deref());
    let out = local_command(compiler, env)
        .args(&argv[1..])
        .current_dir(&cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .output()
        .await
        .with_context(|| format!("run {}", compiler.display()))?;
    let result = LocalResult {
        exit_code: out.status.code().unwrap_or(1),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let mut side = std::collections::BTreeMap::new();
    if result.exit_code != 0 {
        return Ok(Aside {
            result,
            object: None,
            side,
        });
    }
    for ext in &spec.side_outputs {
        let from = cwd.join(side_output_name(ext));
        let bytes = tokio::fs::read(&from)
            .await
            .with_context(|| format!("read {}", from.display()))?;
        side.insert(ext.clone(), bytes);
    }
    let object = tokio::fs::read(cwd.join(SEGMENT_OBJECT))
        .await
        .context("read the object")?;
    Ok(Aside {
        result,
        object: Some(object),
        side,
    })
}
