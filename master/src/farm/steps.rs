//! A plan's wasm steps, run by the master before the compile segments: each step is a `wasm`
//! task (so it is queued, retried and visible like any task) whose input files are its own
//! plus everything the steps before it wrote, and whose written files come back as
//! artifacts. The files a step names in `sources` become segments of the plan.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use vgas_client::api::{Step, REQUEST_TIMEOUT};
use vgas_client::farm::remote::unknown_worker;
use vgas_client::farm::segment::BuildContext;
use vgas_shared::farm::step::DEFAULT_STEP_DEADLINE_S;
use vgas_shared::farm::{BuildUpdate, Origin, PlanStep};
use vgas_shared::limits::DEADLINE_GRACE;
use vgas_shared::wire::{InputFile, TaskKind, TaskOutcome, TaskSpec};
use vgas_shared::TaskId;

/// Attempts a step gets (as any task).
const STEP_ATTEMPTS: u32 = 3;

/// What a step wrote, by path, and what it printed on stderr.
#[derive(Debug, Default)]
pub struct StepOutput {
    pub files: BTreeMap<String, Vec<u8>>,
    pub stderr: String,
}

/// The name a step has in the build's updates.
pub fn update_name(step: &PlanStep) -> String {
    format!("step:{}", step.name)
}

/// Runs `step` with the files `earlier` steps wrote; `Err` is an infrastructure fault or a
/// step that did not exit 0 (the message says which, with its stderr).
pub async fn run_step(
    ctx: &BuildContext,
    step: &PlanStep,
    earlier: &BTreeMap<String, Vec<u8>>,
) -> Result<StepOutput> {
    let id = TaskId::random();
    let name = update_name(step);
    let mut files: BTreeMap<String, InputFile> = earlier
        .iter()
        .map(|(path, bytes)| {
            let f = InputFile {
                path: path.clone(),
                base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                ..Default::default()
            };
            (path.clone(), f)
        })
        .collect();
    for f in &step.files {
        files.insert(f.path.clone(), f.clone());
    }
    let deadline = step.deadline_s.unwrap_or(DEFAULT_STEP_DEADLINE_S);
    let spec = TaskSpec {
        task_id: Some(id.clone()),
        kind: TaskKind::Wasm,
        module: Some(step.module.clone()),
        cmd: step.args.clone(),
        env: step
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().into()))
            .collect(),
        files: files.into_values().collect(),
        deadline_s: Some(deadline),
        max_attempts: Some(STEP_ATTEMPTS),
        ..Default::default()
    };
    spec.validate()
        .with_context(|| format!("step {:?}", step.name))?;
    let submitted = ctx
        .swarm
        .submit(spec, REQUEST_TIMEOUT)
        .await
        .with_context(|| format!("step {:?} was not accepted", step.name))?;
    ctx.updates
        .send(BuildUpdate::Queued {
            segment: name.clone(),
            task_id: id.clone(),
        })
        .await;
    let limit =
        (Duration::from_secs(deadline) + DEADLINE_GRACE) * STEP_ATTEMPTS + Duration::from_secs(10);
    let mut following = submitted.following.give_up_after(limit);
    let mut out = StepOutput::default();
    let mut worker = None;
    let outcome = loop {
        match following
            .next()
            .await
            .with_context(|| format!("step {:?}", step.name))?
        {
            Step::Started { worker: w, attempt } => {
                ctx.updates
                    .send(BuildUpdate::Compiling {
                        segment: name.clone(),
                        worker: w.clone(),
                        attempt,
                    })
                    .await;
                worker = Some(w);
            }
            Step::Retrying { attempt, reason } => {
                out = StepOutput::default();
                ctx.updates
                    .send(BuildUpdate::Retried {
                        segment: name.clone(),
                        attempt,
                        reason,
                    })
                    .await;
            }
            Step::Stderr(data) => out.stderr.push_str(&data),
            Step::Stdout(_) => {}
            Step::Artifact(art) => {
                let bytes = ctx.swarm.artifact_bytes(&art).await?;
                out.files.insert(art.path, bytes);
            }
            Step::Finished { outcome, worker: w } => {
                worker = w.or(worker);
                break outcome;
            }
        }
    };
    let failed = |why: String| BuildUpdate::Failed {
        segment: name.clone(),
        origin: Origin::Worker {
            worker: worker.clone().unwrap_or_else(unknown_worker),
        },
        exit_code: 1,
        diagnostics: why,
    };
    match outcome {
        TaskOutcome::Exited { exit_code: 0 } => {}
        other => {
            let why = format!("step {:?} ended {other:?}\n{}", step.name, out.stderr);
            ctx.updates.send(failed(why.clone())).await;
            bail!("{why}");
        }
    }
    if let Some(missing) = step.sources.iter().find(|s| !out.files.contains_key(*s)) {
        let why = format!("step {:?} did not write its source {missing:?}", step.name);
        ctx.updates.send(failed(why.clone())).await;
        bail!("{why}");
    }
    ctx.updates
        .send(BuildUpdate::Done {
            segment: name,
            origin: Origin::Worker {
                worker: worker.unwrap_or_else(unknown_worker),
            },
            compile_ms: 0,
            overhead_ms: 0,
            diagnostics: out.stderr.clone(),
        })
        .await;
    Ok(out)
}
