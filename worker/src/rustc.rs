//! Running `rustc` tasks: one Rust crate compiled by the rustc whose identity the task names
//! (`vgas_client::rustc::key::identify`: its `-vV` and its sysroot's libraries),
//! inside the native sandbox, so it gets the limits, uid, lack of network, deadline, cancel
//! and output streaming of any task. rustc's diagnostics stream out as stderr events; the
//! files it writes come back as artifacts.
//!
//! Paths: every input sits at its submitter's absolute path under `root/` in the task
//! directory, rustc runs in the submitter's directory there, absolute arguments are moved
//! under `root/`, and `--remap-path-prefix <root>=/` gives the outputs and diagnostics the
//! submitter's paths back. The dependency file, which names its outputs by their real paths,
//! is rewritten the same way before it goes back.
//!
//! The toolchain: rustup keeps it under the home directory, which the sandbox uid may not
//! enter; each toolchain a task asks for is linked (hard links, a copy across filesystems)
//! into `<work_dir>/rust-toolchains/<identity>/` once, where it can.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine as _;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use vgas_client::rustc::key::identify;
use vgas_shared::farm::compiler_tag;
use vgas_shared::farm::rustc::RustcSpec;
use vgas_shared::wire::RustcTask;

use crate::compile::{collect_files, CompileRun};
use crate::env::EnvironmentManager;
use crate::sandbox::{
    self, Isolation, Job, KeptDir, NativeJob, OutputChunk, RunOptions, SandboxConfig,
};
use crate::wasm::ModuleSource;

/// Where inputs sit in the task directory, at their absolute paths.
const ROOT: &str = "root";

/// The folder under the work directory holding linked toolchains.
const TOOLCHAINS_DIR: &str = "rust-toolchains";

/// A Rust toolchain found on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RustToolchain {
    /// 64 hex digits.
    pub identity: String,
    pub sysroot: PathBuf,
}

/// This worker's Rust toolchains, and the sandbox-readable copies made of them so far.
#[derive(Debug)]
pub struct RustToolchains {
    work_dir: PathBuf,
    found: Vec<RustToolchain>,
    linked: Mutex<HashMap<String, PathBuf>>,
}

impl RustToolchains {
    /// Identifies every `rustc` the compiler probe found. Blocking (runs each twice).
    pub fn probe(envs: &EnvironmentManager, work_dir: &Path) -> RustToolchains {
        let mut found: Vec<RustToolchain> = Vec::new();
        for c in envs.compilers().iter().filter(|c| c.invoked_as == "rustc") {
            let path = c.path.display().to_string();
            let identified = identify(&path).map(|r| RustToolchain {
                identity: r.identity,
                sysroot: r.sysroot,
            });
            match identified {
                Ok(t) if !found.contains(&t) => found.push(t),
                Ok(_) => {}
                Err(e) => tracing::warn!(rustc = %path, "cannot identify: {e:#}"),
            }
        }
        RustToolchains {
            work_dir: work_dir.to_owned(),
            found,
            linked: Mutex::default(),
        }
    }

    /// The capability tags a heartbeat offers for them.
    pub fn tags(&self) -> Vec<String> {
        self.found
            .iter()
            .map(|t| compiler_tag(&t.identity))
            .collect()
    }

    /// The sandbox-readable rustc of `identity`, linked on first use. Blocking.
    fn rustc(&self, identity: &str) -> Result<PathBuf, String> {
        let t = self
            .found
            .iter()
            .find(|t| t.identity == identity)
            .ok_or_else(|| format!("no rustc with identity {identity} on this worker"))?;
        let mut linked = self.linked.lock().expect("toolchains lock");
        if let Some(p) = linked.get(identity) {
            return Ok(p.clone());
        }
        let dest = self.work_dir.join(TOOLCHAINS_DIR).join(&identity[..16]);
        let rustc = dest.join("bin/rustc");
        let ready = dest.join(".ready");
        if !ready.exists() {
            let _ = std::fs::remove_dir_all(&dest);
            link_toolchain(&t.sysroot, &dest)
                .map_err(|e| format!("cannot link the toolchain {}: {e}", t.sysroot.display()))?;
            std::fs::write(&ready, identity).map_err(|e| e.to_string())?;
        }
        let seen = identify(&rustc.display().to_string())
            .map_err(|e| format!("{e:#}"))?
            .identity;
        if seen != identity {
            return Err(format!(
                "the linked toolchain at {} has identity {seen}, not {identity}",
                dest.display()
            ));
        }
        linked.insert(identity.to_owned(), rustc.clone());
        Ok(rustc)
    }
}

/// Links (or copies) what rustc needs of `sysroot` into `dest`: `bin/rustc`, the files of
/// `lib/` and the whole `lib/rustlib/<target>/lib` of each target, folders mode 0755.
fn link_toolchain(sysroot: &Path, dest: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    let mkdir = |p: &Path| {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(p)
    };
    let put = |from: &Path, to: &Path| -> std::io::Result<()> {
        if std::fs::hard_link(from, to).is_err() {
            std::fs::copy(from, to)?;
        }
        Ok(())
    };
    fn tree(
        from: &Path,
        to: &Path,
        mkdir: &dyn Fn(&Path) -> std::io::Result<()>,
        put: &dyn Fn(&Path, &Path) -> std::io::Result<()>,
    ) -> std::io::Result<()> {
        mkdir(to)?;
        for e in std::fs::read_dir(from)? {
            let e = e?;
            let kind = e.file_type()?;
            if kind.is_dir() {
                tree(&e.path(), &to.join(e.file_name()), mkdir, put)?;
            } else if kind.is_file() {
                put(&e.path(), &to.join(e.file_name()))?;
            }
        }
        Ok(())
    }
    mkdir(&dest.join("bin"))?;
    put(&sysroot.join("bin/rustc"), &dest.join("bin/rustc"))?;
    mkdir(&dest.join("lib"))?;
    for e in std::fs::read_dir(sysroot.join("lib"))? {
        let e = e?;
        if e.file_type()?.is_file() {
            put(&e.path(), &dest.join("lib").join(e.file_name()))?;
        }
    }
    for e in std::fs::read_dir(sysroot.join("lib/rustlib"))? {
        let e = e?;
        let lib = e.path().join("lib");
        if e.file_type()?.is_dir() && lib.is_dir() {
            tree(
                &lib,
                &dest.join("lib/rustlib").join(e.file_name()).join("lib"),
                &mkdir,
                &put,
            )?;
        }
    }
    Ok(())
}

/// `path` (absolute) under the task directory's `root/`, as a relative path.
fn under_root(path: &str) -> String {
    format!("{ROOT}{path}")
}

/// An argument with its absolute paths moved under `root`: the whole argument when it is
/// one (`/src/lib.rs`), or its value after the first `=` (`alpha=/t/liba.rmeta`,
/// `dependency=/t/deps`, `--out-dir=/t/deps`).
fn rerooted(arg: &str, root: &str) -> String {
    if arg.starts_with('/') {
        return format!("{root}{arg}");
    }
    match arg.split_once('=') {
        Some((k, v)) if v.starts_with('/') && !k.contains('/') => format!("{k}={root}{v}"),
        _ => arg.to_owned(),
    }
}

/// What a rustc task runs with.
#[derive(Debug)]
pub struct RustcRunner<'a, S> {
    pub sandbox: &'a SandboxConfig,
    pub isolation: &'a Isolation,
    pub toolchains: &'a RustToolchains,
    /// Where inputs sent by reference are fetched from (the build sources bucket).
    pub sources: &'a S,
}

impl<S: ModuleSource> RustcRunner<'_, S> {
    /// Runs a rustc task in sandbox slot `slot`. Never panics; every failure is a result.
    pub async fn run(
        &self,
        slot: usize,
        job: Job<'_, RustcTask>,
        out: Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> CompileRun {
        let spec = &job.task.rustc;
        let rustc = {
            let (toolchains, id) = (self.toolchains, spec.compiler.clone());
            tokio::task::block_in_place(|| toolchains.rustc(&id))
        };
        let rustc = match rustc {
            Ok(r) => r,
            Err(message) => return CompileRun::error(message),
        };
        let inputs = tokio::select! {
            i = self.inputs(spec) => i,
            _ = cancel.cancelled() => return CompileRun::ended(vgas_shared::wire::TaskOutcome::Cancelled),
        };
        let mut extra = match inputs {
            Ok(i) => i,
            Err(message) => return CompileRun::error(message),
        };
        // rustc writes into --out-dir but does not make it.
        extra.push((
            under_root(&format!("{}/.vgas-out-dir", spec.out_dir)),
            Vec::new(),
        ));
        let workdir = under_root(&spec.cwd);
        let cwd_depth = spec.cwd.split('/').filter(|c| !c.is_empty()).count();
        let command = |cwd: &Path| {
            let root = cwd
                .ancestors()
                .nth(cwd_depth)
                .unwrap_or(cwd)
                .display()
                .to_string();
            let mut argv = vec![rustc.display().to_string()];
            argv.extend(spec.args.iter().map(|a| rerooted(a, &root)));
            argv.push(format!("--remap-path-prefix={root}=/"));
            argv
        };
        let mut env: BTreeMap<String, String> = spec.env.clone();
        env.extend(job.task.env.iter().map(|(k, v)| (k.clone(), v.clone())));
        let native = NativeJob {
            command: &command,
            env: &env,
            stdin: "",
            files: &[],
            bounds: job.bounds,
        };
        let opts = RunOptions {
            workdir: &workdir,
            extra_files: &extra,
            keep_dir: true,
            devices: None,
            late_file: None,
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
        CompileRun::after(run.await, |dir| outputs(dir, spec))
    }

    /// Every input's bytes at its place under `root/`: inline, or fetched and checked.
    async fn inputs(&self, spec: &RustcSpec) -> Result<Vec<(String, Vec<u8>)>, String> {
        let mut files = Vec::with_capacity(spec.inputs.len() + 1);
        for i in &spec.inputs {
            let bytes = match (&i.base64, &i.object) {
                (Some(b), _) => base64::engine::general_purpose::STANDARD
                    .decode(b)
                    .map_err(|e| format!("input {}: {e}", i.path))?,
                (None, Some(name)) => self.sources.fetch_checked(name).await?.ok_or_else(|| {
                    format!("input {} ({name}) is not in the sources bucket", i.path)
                })?,
                (None, None) => return Err(format!("input {} has no bytes", i.path)),
            };
            files.push((under_root(&i.path), bytes));
        }
        Ok(files)
    }
}

/// The outputs the task asked for, from `--out-dir` under `root/`; the dependency file's
/// paths given back their submitter's form first.
fn outputs(dir: KeptDir, spec: &RustcSpec) -> CompileRun {
    let root = format!("{}/{ROOT}", dir.ran_at().display());
    let rels: Vec<String> = spec
        .outputs
        .iter()
        .map(|name| under_root(&format!("{}/{name}", spec.out_dir)))
        .collect();
    for (rel, name) in rels.iter().zip(&spec.outputs) {
        if !name.ends_with(".d") {
            continue;
        }
        match dir.regular_file(rel) {
            Ok(Some((path, _))) => {
                let Ok(text) = std::fs::read_to_string(&path) else {
                    return CompileRun::error(format!("cannot read {name}"));
                };
                if std::fs::write(&path, text.replace(&format!("{root}/"), "/")).is_err() {
                    return CompileRun::error(format!("cannot rewrite {name}"));
                }
            }
            Ok(None) => return CompileRun::error(format!("rustc wrote no {name}")),
            Err(message) => return CompileRun::error(message),
        }
    }
    let files: Vec<(&str, &str)> = rels
        .iter()
        .zip(&spec.outputs)
        .map(|(r, n)| (r.as_str(), n.as_str()))
        .collect();
    collect_files(dir, &files, |name| {
        format!("rustc exited with 0 but wrote no {name}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn absolute_arguments_move_under_the_root() {
        let r = "/w/task-1/root";
        assert_eq!(rerooted("/src/lib.rs", r), "/w/task-1/root/src/lib.rs");
        assert_eq!(
            rerooted("alpha=/t/deps/liba.rmeta", r),
            "alpha=/w/task-1/root/t/deps/liba.rmeta"
        );
        assert_eq!(
            rerooted("dependency=/t/deps", r),
            "dependency=/w/task-1/root/t/deps"
        );
        assert_eq!(
            rerooted("--out-dir=/t/deps", r),
            "--out-dir=/w/task-1/root/t/deps"
        );
        for kept in [
            "src/lib.rs",
            "--crate-type",
            "feature=\"x\"",
            "opt-level=3",
            "a/b=/c",
        ] {
            assert_eq!(rerooted(kept, r), kept);
        }
        assert_eq!(under_root("/t/x.rs"), "root/t/x.rs");
    }
}
