//! `vgas.build.submit`: the master runs a `BuildPlan` that any NATS client published (the
//! `CompilationScheduler` of the seeds). It picks the exact compiler from the live workers'
//! toolchains, answers at once with the build's id and updates subject, dispatches the
//! segments through its own task admission (so they are retried, recovered and visible like
//! any task), links here when it has the compiler, and puts the binary into the artifacts
//! bucket for the client to fetch.

use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::service::{Request, Service};
use async_nats::Client;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{info, warn};
use vgas_client::farm::placement::Placement;
use vgas_client::toolchain::which;
use vgas_shared::codec::{decode, encode, encode_error};
use vgas_shared::config::Resolved;
use vgas_shared::error::WireError;
use vgas_shared::farm::step::source_language;
use vgas_shared::farm::{
    cache_key, BuildAccepted, BuildOutput, BuildPlan, BuildUpdate, CompileSpec, CompilerIdentity,
    Diagnostic, DiagnosticReport, EnvSpec, PlanSegment, VersionReq,
};
use vgas_shared::names::ModuleRef;
use vgas_shared::wire::SwarmPulse;
use vgas_shared::{Encoding, ErrorCode, TaskId};

use vgas_client::farm::aggregate::{aggregate_artifacts, LinkStep};
use vgas_client::farm::cache::BuildCache;
use vgas_client::farm::local::LocalCompile;
use vgas_client::farm::progress::{Mode, Progress};
use vgas_client::farm::segment::{
    dispatch_build_segments, BuildContext, Segment, Updates, DEFAULT_SEGMENT_DEADLINE,
};
use vgas_client::Swarm;

use crate::scheduler::AgentScheduler;

/// Largest plan accepted (8 MiB, the server's message limit): bigger sources go by
/// Object Store reference.
const MAX_PLAN_BYTES: usize = 8 * 1024 * 1024;

/// Plans the master runs at once; past it a submit answers `busy`. Each holds its objects
/// on the master's disk until linked.
const MAX_CONCURRENT_PLANS: usize = 4;

/// Segments of one plan in flight at once.
const PLAN_PARALLEL: usize = 64;

/// Picks the identity a plan's `EnvSpec` asks for among the live workers' compilers.
pub fn resolve_identity(spec: &EnvSpec, pulse: &SwarmPulse) -> Result<CompilerIdentity, String> {
    let req = spec
        .version
        .as_deref()
        .map(VersionReq::parse)
        .transpose()
        .map_err(|e| e.to_string())?;
    let mut seen = Vec::new();
    for n in &pulse.live {
        for t in &n.toolchains {
            let Some(id) = &t.identity else { continue };
            if id.name != spec.toolchain {
                continue;
            }
            seen.push(format!("{} {} on {}", id.name, id.version, n.id));
            let version_ok = req.as_ref().is_none_or(|r| r.matches(&id.version));
            let id_ok = spec.identity.as_ref().is_none_or(|h| *h == id.hash);
            if version_ok && id_ok {
                return Ok(id.clone());
            }
        }
    }
    let want = match (&spec.version, &spec.identity) {
        (_, Some(h)) => format!("{} with identity {h}", spec.toolchain),
        (Some(v), None) => format!("{} matching {v:?}", spec.toolchain),
        (None, None) => spec.toolchain.clone(),
    };
    Err(if seen.is_empty() {
        format!(
            "no live worker has {want} (no worker reports any {})",
            spec.toolchain
        )
    } else {
        format!(
            "no live worker has {want}; live workers have: {}",
            seen.join(", ")
        )
    })
}

/// Registers the endpoint and serves it until `shutdown`.
pub async fn start(
    conn: &Resolved,
    service: &Service,
    client: Client,
    sched: Arc<AgentScheduler>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> Result<()> {
    let mut ep = service
        .endpoint_builder()
        .name("build")
        .add(conn.subjects.build_submit())
        .await
        .map_err(|e| anyhow::anyhow!("add endpoint {}: {e}", conn.subjects.build_submit()))?;
    let plans = Arc::new(Semaphore::new(MAX_CONCURRENT_PLANS));
    let (conn, t2) = (conn.clone(), tracker.clone());
    tracker.spawn(async move {
        loop {
            let req = tokio::select! {
                r = ep.next() => match r { Some(r) => r, None => break },
                _ = shutdown.cancelled() => break,
            };
            on_submit(&req, &conn, &client, &sched, &plans, &t2).await;
        }
    });
    Ok(())
}

async fn on_submit(
    req: &Request,
    conn: &Resolved,
    client: &Client,
    sched: &AgentScheduler,
    plans: &Arc<Semaphore>,
    tracker: &TaskTracker,
) {
    let payload = &req.message.payload;
    let enc = Encoding::detect(payload);
    let fail = |code: ErrorCode, message: String| encode_error(enc, &WireError { code, message });
    let answer = match decode::<BuildPlan>(payload, MAX_PLAN_BYTES) {
        Err(e) => {
            let e = vgas_shared::VgaError::from(e);
            fail(e.code(), e.to_string())
        }
        Ok((plan, _)) => match plan.validate() {
            Err(e) => fail(e.code(), e.to_string()),
            Ok(()) => match resolve_identity(&plan.compiler, &sched.get_swarm_status()) {
                Err(m) => fail(ErrorCode::Unavailable, m),
                Ok(identity) => match plans.clone().try_acquire_owned() {
                    Err(_) => fail(
                        ErrorCode::Busy,
                        format!("{MAX_CONCURRENT_PLANS} plans are running; retry later"),
                    ),
                    Ok(permit) => {
                        let build_id = plan
                            .build_id
                            .clone()
                            .unwrap_or_else(|| TaskId::random().to_string());
                        let accepted = BuildAccepted {
                            updates: conn.subjects.build_updates(&build_id),
                            build_id: build_id.clone(),
                        };
                        let (conn, client, tasks) = (conn.clone(), client.clone(), tracker.clone());
                        tracker.spawn(async move {
                            let _permit = permit;
                            run_plan(conn, client, build_id, plan, identity, tasks).await;
                        });
                        encode(enc, &accepted).unwrap_or_default()
                    }
                },
            },
        },
    };
    if let Err(e) = req.respond(Ok(answer.into())).await {
        tracing::debug!("could not answer a build submit: {e}");
    }
}

async fn run_plan(
    conn: Resolved,
    client: Client,
    build_id: String,
    plan: BuildPlan,
    identity: CompilerIdentity,
    tasks: TaskTracker,
) {
    let updates = Updates::new(
        client.clone(),
        Some(conn.subjects.build_updates(&build_id)),
        None,
    );
    let started = std::time::Instant::now();
    let swarm = Swarm::new(client.clone(), conn.subjects.clone());
    let ctx = BuildContext {
        cache: BuildCache::open(&swarm.js, &swarm.subjects).await.ok(),
        swarm,
        conn,
        updates: updates.clone(),
        local_fallback: true,
        segment_deadline: DEFAULT_SEGMENT_DEADLINE,
        tasks,
        write_behind: false,
        placement: Placement::off(),
        uploaded: Default::default(),
        offers: None,
    };
    let result = run_plan_inner(&ctx, &build_id, &plan, &identity).await;
    let finished = match result {
        Ok(u) => u,
        Err(e) => {
            warn!(build_id, "plan failed: {e:#}");
            let report = DiagnosticReport {
                errors: 1,
                items: vec![Diagnostic {
                    file: "<build>".into(),
                    severity: "error".into(),
                    message: format!("{e:#}"),
                    count: 1,
                    ..Default::default()
                }],
                ..Default::default()
            };
            BuildUpdate::Finished {
                exit_code: 1,
                stats: Default::default(),
                binary: None,
                report,
            }
        }
    };
    info!(
        build_id,
        ms = started.elapsed().as_millis() as u64,
        "plan finished"
    );
    updates.send(finished).await;
    let _ = client.flush().await;
}

async fn run_plan_inner(
    ctx: &BuildContext,
    build_id: &str,
    plan: &BuildPlan,
    identity: &CompilerIdentity,
) -> Result<BuildUpdate> {
    let updates = &ctx.updates;
    let dir = tempfile::Builder::new().prefix("vgas-plan-").tempdir()?;
    let generated: usize = plan.steps.iter().map(|s| s.sources.len()).sum();
    updates
        .send(BuildUpdate::Started {
            build_id: build_id.to_owned(),
            segments: plan.segments.len() + generated,
        })
        .await;
    // The wasm steps first: each sees what the earlier ones wrote; their sources join the
    // plan's own segments.
    let mut all = plan.segments.clone();
    let mut written = std::collections::BTreeMap::new();
    for step in &plan.steps {
        let out = super::steps::run_step(ctx, step, &written).await?;
        for src in &step.sources {
            all.push(PlanSegment {
                name: src.clone(),
                source: vgas_shared::farm::Source::packed(&out.files[src]),
                language: source_language(src).unwrap_or_default(),
                args: Vec::new(),
            });
        }
        written.extend(out.files);
    }
    let mut segments = Vec::with_capacity(all.len());
    for (i, s) in all.iter().enumerate() {
        let args: Vec<String> = plan.args.iter().chain(&s.args).cloned().collect();
        // An object's name is the content name of its bytes.
        let content = match (
            &s.source.object,
            s.source
                .inline_bytes(vgas_client::farm::prepare::MAX_PREPROCESSED)?,
        ) {
            (Some(o), _) => ModuleRef::parse(o)?,
            (None, Some(b)) => ModuleRef::of(&b),
            (None, None) => anyhow::bail!("segment {} has no source", s.name),
        };
        let spec = CompileSpec {
            compiler: identity.hash.clone(),
            language: s.language,
            args: args.clone(),
            source_name: s.name.clone(),
            source: s.source.clone(),
            preprocessed: plan.preprocessed,
            cwd: String::new(),
            workdir: String::new(),
            side_outputs: vgas_shared::farm::side_outputs_of(&args),
            files: Vec::new(),
        };
        segments.push(Segment {
            name: s.name.clone(),
            key: cache_key(&identity.hash, s.language, &args, &s.name, "", &content),
            source: content,
            spec,
            files: Vec::new(),
            output: dir.path().join(format!("{i}.o")),
            // The master never compiles a plan's source itself: a source can `#include` any
            // file of this host, and the compiler would quote it in its diagnostics.
            local: LocalCompile::Unavailable(
                "the master compiles no source itself, and no worker could".into(),
            ),
        });
    }
    let (stream, handle) = dispatch_build_segments(ctx.clone(), segments, PLAN_PARALLEL);
    // The updates already went to the subject; this only counts them.
    let mut tally = Progress::new(Mode::Silent);
    let mut stream = std::pin::pin!(stream);
    while let Some(u) = stream.next().await {
        tally.on(u);
    }
    let (stats, _) = tally.finish();
    let outputs: Vec<BuildOutput> = handle.await?;
    let link = match (&plan.link, which(&identity.name, None)) {
        (Some(l), Some(program)) => Some(LinkStep {
            program,
            args: Vec::new(),
            after: l.args.clone(),
            output: l.output.clone().into(),
            cwd: dir.path().to_owned(),
        }),
        (Some(_), None) => anyhow::bail!(
            "the plan asks for a link and the master's host has no {}",
            identity.name
        ),
        (None, _) => None,
    };
    let agg = aggregate_artifacts(outputs, link.as_ref()).await?;
    let mut binary = agg.binary;
    if let Some(b) = &mut binary {
        let object = format!(
            "build/{build_id}/{}",
            plan.link
                .as_ref()
                .map(|l| l.output.as_str())
                .unwrap_or("out")
        );
        let store = ctx
            .swarm
            .bucket(&ctx.swarm.subjects.artifacts_bucket())
            .await?;
        let mut file = tokio::fs::File::open(&b.path).await?;
        store
            .put(object.as_str(), &mut file)
            .await
            .context("upload the binary")?;
        b.path = plan
            .link
            .as_ref()
            .map(|l| l.output.clone())
            .unwrap_or_default();
        b.object = Some(object);
    }
    Ok(BuildUpdate::Finished {
        exit_code: agg.exit_code,
        stats,
        binary,
        report: agg.report,
    })
}
