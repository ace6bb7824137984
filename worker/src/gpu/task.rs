//! Running a `cuda` task: the PTX looked up in the swarm's PTX cache (keyed by source,
//! options, architecture and NVRTC version), the helper process run in the native
//! sandbox with the leased devices only (it compiles on a miss and launches unless the task
//! only compiles), the fresh PTX put into the cache, and the outputs handed back: the PTX
//! (`kernel.ptx`) for a compile-only task, the output buffers for a launch.

use std::collections::BTreeMap;
use std::path::Path;

use sha2::{Digest, Sha256};
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use vgas_shared::limits::MAX_PTX_CACHE_ENTRY_BYTES;
use vgas_shared::wire::{virtual_arch, CudaTask, TaskOutcome, PTX_ARTIFACT};

use super::helper::{self, Launch, Plan};
use super::Gpus;
use crate::compile::{collect_files, CompileRun};
use crate::sandbox::{
    self, Isolation, Job, KeptDir, NativeJob, OutputChunk, RunOptions, SandboxConfig,
};
use crate::wasm::{Artifact, ArtifactBody};

/// What a cuda task runs with.
#[derive(Debug)]
pub struct CudaRunner<'a> {
    pub sandbox: &'a SandboxConfig,
    pub isolation: &'a Isolation,
    pub gpus: &'a Gpus,
    /// The PTX cache, when the bucket could be opened.
    pub cache: Option<&'a async_nats::jetstream::kv::Store>,
}

/// The cache key of one compile: every input of NVRTC's output.
pub fn ptx_key(nvrtc: &str, arch: Option<&str>, options: &[String], source: &str) -> String {
    let mut h = Sha256::new();
    for part in [
        "vgas-ptx-1",
        nvrtc,
        arch.unwrap_or("default"),
        &options.join("\0"),
        source,
    ] {
        h.update(part.len().to_le_bytes());
        h.update(part.as_bytes());
    }
    hex::encode(h.finalize())
}

impl CudaRunner<'_> {
    /// Runs `job` in sandbox slot `slot` with the GPUs `leased` to this attempt.
    pub async fn run(
        &self,
        slot: usize,
        job: Job<'_, CudaTask>,
        leased: &[String],
        out: Sender<OutputChunk>,
        cancel: CancellationToken,
    ) -> CompileRun {
        let c = &job.task.cuda;
        let Some(nvrtc) = &self.gpus.nvrtc else {
            return CompileRun::error("NVRTC is not available on this worker".into());
        };
        if let Some(f) = job.task.files.iter().find(|f| {
            f.path() == helper::WORK_DIR || f.path().starts_with(&format!("{}/", helper::WORK_DIR))
        }) {
            return CompileRun::error(format!(
                "{} is where the kernel's own files go; ship {:?} under another name",
                helper::WORK_DIR,
                f.path()
            ));
        }
        let mut env: BTreeMap<String, String> = job.task.env.clone().into_inner();
        // The helper and NVRTC where the sandbox uids reach them: at most a copy each, once
        // per worker, off the runtime's threads.
        let (placing, work_dir) = (nvrtc.clone(), self.sandbox.work_dir.clone());
        let placed = tokio::task::spawn_blocking(move || {
            Ok::<_, String>((
                super::helper_program(&work_dir)?,
                placing.sandbox_env(&work_dir)?,
            ))
        })
        .await;
        let helper_program = match placed {
            Ok(Ok((program, vars))) => {
                env.extend(vars);
                program
            }
            Ok(Err(message)) => return CompileRun::error(message),
            Err(e) => return CompileRun::error(format!("placing the cuda helper failed: {e}")),
        };
        let mut arch = match c.arch.as_deref().map(virtual_arch).transpose() {
            Ok(a) => a,
            Err(e) => return CompileRun::error(e.to_string()),
        };
        let mut access = None;
        if !c.compile_only {
            let lease = match self.gpus.lease(leased) {
                Ok(l) if !leased.is_empty() => l,
                Ok(_) => return CompileRun::error("a kernel launch needs a leased GPU".into()),
                Err(message) => return CompileRun::error(message),
            };
            if let Some(d) = self
                .gpus
                .devices
                .iter()
                .find(|d| leased.contains(&d.uuid) && d.simulated)
            {
                return CompileRun::error(format!(
                    "GPU {} is simulated (declared for tests): no kernel runs on it",
                    d.uuid
                ));
            }
            let device = lease.compute.arch();
            match &arch {
                Some(a) if arch_number(a) > arch_number(&device) => {
                    return CompileRun::error(format!(
                        "the kernel is compiled for {a}; the leased GPU is {device}"
                    ))
                }
                Some(_) => {}
                None => arch = Some(device),
            }
            env.insert("CUDA_VISIBLE_DEVICES".into(), lease.visible.clone());
            access = Some(lease.access);
        }
        let key = ptx_key(&nvrtc.version, arch.as_deref(), &c.options, &c.source);
        let cached = self.cached(&key).await;
        // A compile-only task whose PTX is cached needs no process at all: the entry check is
        // the helper's own, done here.
        if let (true, Some(ptx)) = (c.compile_only, &cached) {
            info!(key = %key, "PTX from the swarm's cache");
            if !helper::has_entry(&String::from_utf8_lossy(ptx), &c.entry) {
                let _ = out
                    .send(OutputChunk::Stderr(helper::no_entry(&c.entry)))
                    .await;
                return CompileRun::ended(TaskOutcome::Exited {
                    exit_code: helper::EXIT_FAILED,
                });
            }
            return CompileRun {
                outcome: TaskOutcome::Exited { exit_code: 0 },
                artifacts: vec![Artifact {
                    path: PTX_ARTIFACT.into(),
                    mode: None,
                    body: ArtifactBody::Inline(ptx.clone()),
                }],
                dir: None,
                ran: None,
            };
        }
        if cached.is_some() {
            info!(key = %key, "PTX from the swarm's cache");
        } else {
            debug!(key = %key, "PTX not cached: compiling");
        }
        let plan = Plan {
            entry: c.entry.clone(),
            arch,
            options: c.options.clone(),
            launch: (!c.compile_only).then(|| Launch {
                grid: c.grid,
                block: c.block,
                shared_mem_bytes: c.shared_mem_bytes,
                args: c.args.clone(),
            }),
        };
        let plan_bytes = match serde_json::to_vec(&plan) {
            Ok(b) => b,
            Err(e) => return CompileRun::error(format!("cannot write the plan: {e}")),
        };
        let mut extra = vec![
            (helper::PLAN_FILE.to_owned(), plan_bytes),
            (
                helper::SOURCE_FILE.to_owned(),
                c.source.clone().into_bytes(),
            ),
        ];
        let hit = cached.is_some();
        if let Some(ptx) = cached {
            extra.push((helper::PTX_FILE.to_owned(), ptx));
        }
        let program = helper_program.display().to_string();
        let command = |_: &Path| {
            vec![
                program.clone(),
                helper::HELPER_ARG.to_owned(),
                helper::PLAN_FILE.to_owned(),
            ]
        };
        let native = NativeJob {
            command: &command,
            env: &env,
            stdin: "",
            files: &job.task.files,
            bounds: job.bounds,
        };
        let opts = RunOptions {
            workdir: "",
            extra_files: &extra,
            keep_dir: true,
            devices: access.as_ref(),
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
        )
        .await;
        let dir = match run.succeeded() {
            Ok(dir) => dir,
            Err(outcome) => return CompileRun::ended(outcome),
        };
        if !hit {
            self.remember(&key, &dir).await;
        }
        if c.compile_only {
            return collect_files(dir, &[(helper::PTX_FILE, PTX_ARTIFACT)], left_no);
        }
        let outputs: Vec<(&str, &str)> = c
            .args
            .iter()
            .filter_map(|a| a.output_path())
            .map(|p| (p, p))
            .collect();
        collect_files(dir, &outputs, left_no)
    }

    async fn cached(&self, key: &str) -> Option<Vec<u8>> {
        let kv = self.cache?;
        match kv.get(key).await {
            Ok(v) => v.map(|b| b.to_vec()),
            Err(e) => {
                warn!("PTX cache unreadable: {e}");
                None
            }
        }
    }

    /// Puts the PTX the helper wrote into the cache, when it fits an entry.
    async fn remember(&self, key: &str, dir: &KeptDir) {
        let Some(kv) = self.cache else { return };
        let Ok(Some((path, size))) = dir.regular_file(helper::PTX_FILE) else {
            return;
        };
        if size as usize > MAX_PTX_CACHE_ENTRY_BYTES {
            return;
        }
        match crate::wasm::read_inline(&path) {
            Ok(bytes) => {
                if let Err(e) = kv.put(key, bytes.into()).await {
                    warn!("could not cache PTX: {e}");
                }
            }
            Err(e) => warn!("could not read PTX: {e}"),
        }
    }
}

/// The number of `compute_90a` (90), to compare architectures.
fn arch_number(arch: &str) -> u32 {
    arch.trim_start_matches("compute_")
        .trim_end_matches(|c: char| c.is_ascii_alphabetic())
        .parse()
        .unwrap_or(0)
}

/// A file the kernel run was to leave and did not.
fn left_no(name: &str) -> String {
    format!("the kernel run left no {name}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_with_every_input_and_architectures_compare_by_number() {
        let base = ptx_key("13.0", Some("compute_90"), &[], "k");
        assert_ne!(base, ptx_key("13.1", Some("compute_90"), &[], "k"));
        assert_ne!(base, ptx_key("13.0", Some("compute_80"), &[], "k"));
        assert_ne!(base, ptx_key("13.0", None, &[], "k"));
        assert_ne!(
            base,
            ptx_key("13.0", Some("compute_90"), &["-DN=1".into()], "k")
        );
        assert_ne!(base, ptx_key("13.0", Some("compute_90"), &[], "k2"));
        assert_eq!(arch_number("compute_90a"), 90);
        assert!(arch_number("compute_100") > arch_number("compute_90"));
    }
}
