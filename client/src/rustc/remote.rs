//! A cache miss compiled on a worker (sccache-dist's part): a library crate whose inputs are
//! all files (no proc-macro of this host among the crates it loads) goes as a `rustc` task
//! to a worker with the identical rustc, with its sources and every crate it loads (small ones
//! inline, the rest through the build sources bucket, by content), and is followed through the
//! task API until its outputs come back. They are written into `--out-dir` as a compile here
//! writes them; rustc's output is printed afterwards (cargo reads the artifact notices in it
//! as "the file is there"), the worker's paths in it given back their local form.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use base64::Engine as _;
use vgas_shared::farm::compiler_tag;
use vgas_shared::farm::rustc::{RustcInput, RustcSpec, MAX_RUSTC_INPUTS, REMOTE_CRATE_TYPES};
use vgas_shared::wire::{Needs, TaskKind, TaskOutcome, TaskSpec};
use vgas_shared::{TaskId, WorkerId};

use super::args::{resolve, CrateCall};
use super::key::RustCompiler;
use super::outputs;
use crate::api::objects::content_name;
use crate::api::Swarm;
use crate::farm::context::Updates;
use crate::farm::remote::{submit_and_follow, SEGMENT_ATTEMPTS};

/// Largest file sent inside the task; larger ones go through the sources bucket.
const MAX_INLINE_INPUT: usize = 64 * 1024;

/// Most bytes of inline files in one task: the task stays well under the 1 MiB submit limit.
const MAX_INLINE_TOTAL: usize = 384 * 1024;

/// Why a crate compiles here rather than on a worker; `None`: it may go.
pub fn not_remote(c: &CrateCall, files: &[PathBuf]) -> Option<String> {
    if let Some(t) = c
        .crate_types
        .iter()
        .find(|t| !REMOTE_CRATE_TYPES.contains(&t.as_str()))
    {
        return Some(format!("rustc: a {t} crate links here"));
    }
    if let Some(lib) = c.libs.first() {
        // A static library is bundled into the rlib: it is this host's file, found by rustc
        // along `-L`, not among the inputs a worker gets.
        return Some(format!("rustc: it links the native library {lib}"));
    }
    if files.iter().any(|f| {
        f.extension()
            .is_some_and(|e| e == "so" || e == "dylib" || e == "dll")
    }) {
        return Some("rustc: it loads a proc-macro built for this host".into());
    }
    if files.len() > MAX_RUSTC_INPUTS {
        return Some(format!("rustc: more than {MAX_RUSTC_INPUTS} input files"));
    }
    None
}

/// How the swarm answered.
#[derive(Debug)]
pub enum Remote {
    /// The outputs are written into `--out-dir`; what rustc printed, with local paths.
    Compiled {
        stdout: String,
        stderr: String,
        worker: WorkerId,
        compile_ms: u64,
        overhead_ms: u64,
    },
    /// rustc failed there (compiled here again to be sure it is the crate, not the worker).
    Failed { worker: WorkerId, exit_code: i32 },
    /// The swarm could not compile it; the text says why.
    Unavailable(String),
}

/// What one remote compile needs.
#[derive(Debug)]
pub struct RemoteCrate<'a> {
    pub swarm: &'a Swarm,
    pub updates: &'a Updates,
    pub unit: &'a str,
    pub call: &'a CrateCall,
    pub cwd: &'a Path,
    pub compiler: &'a RustCompiler,
    pub files: &'a [PathBuf],
    pub env: std::collections::BTreeMap<String, String>,
    /// Names in `--out-dir` to bring back.
    pub outputs: Vec<String>,
    pub deadline: Duration,
}

impl RemoteCrate<'_> {
    /// The inputs, small ones inline and the rest uploaded by content (once each).
    async fn inputs(&self) -> Result<Vec<RustcInput>> {
        let bucket = self.swarm.subjects.build_sources_bucket();
        let mut inline_total = 0;
        let mut inputs = Vec::with_capacity(self.files.len());
        for f in self.files {
            let bytes = std::fs::read(f).with_context(|| format!("read {}", f.display()))?;
            let path = f
                .to_str()
                .with_context(|| format!("{} is not UTF-8", f.display()))?
                .to_owned();
            if bytes.len() <= MAX_INLINE_INPUT && inline_total + bytes.len() <= MAX_INLINE_TOTAL {
                inline_total += bytes.len();
                inputs.push(RustcInput {
                    path,
                    base64: Some(base64::engine::general_purpose::STANDARD.encode(&bytes)),
                    object: None,
                });
            } else {
                let name = content_name(&bytes);
                self.swarm
                    .upload_if_missing(&bucket, &name, &mut bytes.as_slice())
                    .await
                    .with_context(|| format!("upload {}", f.display()))?;
                inputs.push(RustcInput {
                    path,
                    base64: None,
                    object: Some(name),
                });
            }
        }
        Ok(inputs)
    }

    /// Submits the crate and follows it to its end.
    pub async fn compile(&self) -> Result<Remote> {
        let began = std::time::Instant::now();
        let out_dir = resolve(self.cwd, &self.call.out_dir);
        let spec = RustcSpec {
            compiler: self.compiler.identity.clone(),
            args: self.call.args.clone(),
            cwd: self.cwd.display().to_string(),
            env: self.env.clone(),
            out_dir: out_dir.display().to_string(),
            outputs: self.outputs.clone(),
            inputs: self.inputs().await?,
        };
        let task = TaskSpec {
            task_id: Some(TaskId::random()),
            kind: TaskKind::Rustc,
            needs: Needs {
                capabilities: vec![compiler_tag(&spec.compiler)],
                gpus: None,
            },
            rustc: Some(spec),
            deadline_s: Some(self.deadline.as_secs().max(1)),
            max_attempts: Some(SEGMENT_ATTEMPTS),
            wait_for_worker_s: Some(0),
            ..Default::default()
        };
        let wanted: std::collections::BTreeSet<String> = self.outputs.iter().cloned().collect();
        let followed = submit_and_follow(
            self.swarm,
            self.updates,
            self.unit,
            task,
            self.deadline,
            &wanted,
            || (),
        )
        .await?;
        let f = match followed {
            Ok(f) => f,
            Err(why) => return Ok(Remote::Unavailable(why)),
        };
        let (compile_ms, overhead_ms) = (f.compile_ms(), f.overhead_ms(began));
        match f.outcome {
            TaskOutcome::Exited { exit_code: 0 } if f.files.len() == self.outputs.len() => {
                for (name, bytes) in &f.files {
                    // rustc writes its outputs 0644.
                    outputs::write_output(&out_dir.join(name), bytes, 0o644)?;
                }
                Ok(Remote::Compiled {
                    stdout: f.stdout,
                    stderr: local_paths(&f.stderr, &out_dir),
                    compile_ms,
                    overhead_ms,
                    worker: f.worker,
                })
            }
            TaskOutcome::Exited { exit_code: 0 } => Ok(Remote::Unavailable(
                "the worker sent back fewer outputs than rustc writes".into(),
            )),
            TaskOutcome::Exited { exit_code } => Ok(Remote::Failed {
                worker: f.worker,
                exit_code,
            }),
            other => Ok(Remote::Unavailable(other.describe())),
        }
    }
}

/// rustc's output from a worker with the worker's folder taken out: the artifact notices
/// cargo reads name `<worker's root><out dir>/<file>`, which gives the root away; every
/// occurrence of it goes.
fn local_paths(stderr: &str, out_dir: &Path) -> String {
    let suffix = out_dir.display().to_string();
    let root = stderr.lines().find_map(|l| {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let artifact = v.get("artifact")?.as_str()?;
        let dir = Path::new(artifact).parent()?.to_str()?;
        dir.strip_suffix(suffix.as_str())
            .filter(|r| !r.is_empty())
            .map(str::to_owned)
    });
    match root {
        Some(root) => stderr.replace(&format!("{root}/"), "/"),
        None => stderr.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_workers_folder_leaves_rustcs_output() {
        let out = Path::new("/ws/target/release/deps");
        let remote = "{\"$message_type\":\"artifact\",\"artifact\":\"/w/task-x/root/ws/target/release/deps/libb-1.rmeta\",\"emit\":\"metadata\"}\n\
                      {\"$message_type\":\"artifact\",\"artifact\":\"/w/task-x/root/ws/target/release/deps/libb-1.rlib\",\"emit\":\"link\"}\n";
        let local = local_paths(remote, out);
        assert!(!local.contains("/w/task-x"), "{local}");
        assert!(local.contains("\"/ws/target/release/deps/libb-1.rlib\""));
        // Human-readable output has no notices: unchanged.
        assert_eq!(local_paths("warning: x\n", out), "warning: x\n");
    }

    #[test]
    fn only_library_crates_whose_inputs_are_files_go() {
        let mut c = match super::super::args::parse(
            &"--crate-name a src/lib.rs --crate-type lib --out-dir /t"
                .split(' ')
                .map(str::to_owned)
                .collect::<Vec<_>>(),
        ) {
            super::super::args::RustcArgs::Crate(c) => *c,
            other => panic!("{other:?}"),
        };
        assert_eq!(not_remote(&c, &[PathBuf::from("/t/liba.rmeta")]), None);
        assert!(not_remote(&c, &[PathBuf::from("/t/libm.so")])
            .unwrap()
            .contains("proc-macro"));
        c.libs = vec!["zstd".into()];
        assert!(not_remote(&c, &[]).unwrap().contains("native library zstd"));
        c.libs.clear();
        c.crate_types = vec!["bin".into()];
        assert!(not_remote(&c, &[]).unwrap().contains("links here"));
    }
}
