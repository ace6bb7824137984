//! Compiling on this host, the last resort of a segment: the user's own command unchanged
//! (wrapper and compilation database), or the segment's spec with this host's identical
//! compiler (plans run by the master).

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

/// Largest source a plan segment may hand to a local compile (64 MiB, as on workers).
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
    /// The segment's spec, compiled by this host's compiler (the same identity).
    Spec { compiler: PathBuf },
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
    pub async fn run(&self, spec: &CompileSpec, output: &Path) -> Result<LocalResult> {
        match self {
            LocalCompile::Command {
                program,
                args,
                cwd,
                env,
            } => run_captured(program, args, cwd, env).await,
            LocalCompile::Unavailable(why) => bail!("cannot compile here: {why}"),
            LocalCompile::Spec { compiler } => {
                let Some(source) = spec.source.inline_bytes(MAX_LOCAL_SOURCE)? else {
                    bail!("cannot compile here: the source is in the sources bucket");
                };
                let dir = tempfile::tempdir().context("temporary directory")?;
                let (text, primary) = compile_input(spec, source);
                let input = dir
                    .path()
                    .join(input_file(spec.language, primary.as_deref()));
                if let Some(parent) = input.parent() {
                    std::fs::create_dir_all(parent).context("the source's directory")?;
                }
                std::fs::write(&input, text).context("write the source")?;
                let argv = compile_argv(compiler, spec, dir.path(), primary.as_deref());
                let result = run_captured(compiler, &argv[1..], dir.path(), &None).await?;
                if result.exit_code == 0 {
                    let mut written = vec![(SEGMENT_OBJECT.to_owned(), output.to_path_buf())];
                    for ext in &spec.side_outputs {
                        written.push((side_output_name(ext), output.with_extension(ext)));
                    }
                    for (from, to) in written {
                        std::fs::copy(dir.path().join(from), &to)
                            .with_context(|| format!("write {}", to.display()))?;
                    }
                }
                Ok(result)
            }
        }
    }
}
