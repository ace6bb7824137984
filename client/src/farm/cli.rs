//! `vgas build`: the three ways in. `vgas build -- make -j8` runs the user's command with
//! `CC`, `CXX` and `PATH` pointing at the wrapper; `--compdb` builds a compilation database
//! and links it here; `--plan` hands a JSON `BuildPlan` to the master. All three show the same
//! progress, summary and `--json` updates and end with the build's exit code.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vgas_shared::codec::decode_as;
use vgas_shared::config::{Resolved, Role};
use vgas_shared::farm::{BuildPlan, BuildUpdate};
use vgas_shared::{BuildId, Encoding};

use super::aggregate::{aggregate_artifacts, LinkStep};
use super::cache::BuildCache;
use super::compdb::{self, Unit};
use super::offers::Offers;
use super::progress::{self, Mode, Progress};
use super::segment::{dispatch_build_segments, BuildContext, Updates, DEFAULT_SEGMENT_DEADLINE};
use super::wrapper::{
    ENV_BUILD_ID, ENV_LOCAL_FALLBACK, ENV_LOCAL_LOG, ENV_REAL_CC, ENV_REAL_CXX,
    ENV_SEGMENT_DEADLINE, ENV_WRAPPER_DIR, MASQUERADE_NAMES,
};
use crate::api::{Swarm, REQUEST_TIMEOUT};

/// How long the build keeps reading updates after its command ended when the server did not
/// answer its round trip (`Swarm::sync`); after that round trip every update is already
/// read (a wrapper that compiled alone made the same round trip before it exited), and the
/// build ends without waiting.
const UPDATE_DRAIN: Duration = Duration::from_millis(20);

/// How long the build waits for its own tasks (cache writes) after its command ended (30 s: a
/// write is a few round trips; only a stalled server takes longer, and then the build still
/// ends).
const BACKGROUND_WAIT: Duration = Duration::from_secs(30);

/// How often the progress looks for slow segments.
const TICK: Duration = Duration::from_secs(1);

#[derive(Debug, clap::Args)]
pub struct BuildArgs {
    /// Print every BuildUpdate as a JSON line on stdout.
    #[arg(long)]
    pub json: bool,
    /// Print cache hits, misses and time saved at the end (alone: the cache's size).
    #[arg(long)]
    pub stats: bool,
    /// Segments in flight at once (--compdb; default: 2 per CPU here).
    #[arg(short = 'j', long)]
    pub jobs: Option<usize>,
    /// Build the entries of this compilation database.
    #[arg(long, value_name = "compile_commands.json")]
    pub compdb: Option<PathBuf>,
    /// With --compdb: the link command; `{objects}` marks where the objects go (default: after it).
    #[arg(long, value_name = "COMMAND")]
    pub link: Option<String>,
    /// With --compdb or --plan: the binary to write.
    #[arg(short = 'o', long)]
    pub output: Option<PathBuf>,
    /// Submit this BuildPlan (JSON) to the master and follow it.
    #[arg(long, value_name = "PLAN.json")]
    pub plan: Option<PathBuf>,
    /// Fail a segment the swarm cannot compile instead of compiling it here.
    #[arg(long)]
    pub no_local_fallback: bool,
    /// Seconds one segment may take on a worker.
    #[arg(long, default_value_t = DEFAULT_SEGMENT_DEADLINE.as_secs())]
    pub segment_deadline: u64,
    /// Empty the swarm's build cache, then run the rest (if anything).
    #[arg(long)]
    pub purge_cache: bool,
    /// The build command (`make -j8`, `ninja`, `cmake --build .`).
    #[arg(last = true)]
    pub cmd: Vec<String>,
}

fn absolute(p: &Path) -> PathBuf {
    std::path::absolute(p).unwrap_or_else(|_| p.to_owned())
}

/// Runs `vgas build`; returns the exit code.
pub async fn run(swarm: &Swarm, conn: &Resolved, args: BuildArgs) -> Result<i32> {
    let js = &swarm.js;
    if args.purge_cache {
        let cache = BuildCache::open(js, &conn.subjects)
            .await?
            .on_host(&conn.state_dir);
        let n = cache.purge().await?;
        eprintln!("vgas: build cache emptied ({n} objects)");
    }
    let mode = if args.json { Mode::Json } else { Mode::Human };
    let code = if let Some(plan) = &args.plan {
        run_plan(swarm, &args, plan, mode).await?
    } else if let Some(db) = &args.compdb {
        run_compdb(swarm, conn, &args, db, mode).await?
    } else if !args.cmd.is_empty() {
        run_command(swarm, conn, &args, mode).await?
    } else if args.stats {
        let bytes = super::cache::stored_bytes(js, &conn.subjects).await?;
        println!(
            "build cache: {:.1} MiB of objects",
            bytes as f64 / (1 << 20) as f64
        );
        if let Some(host) = super::host_cache::HostCache::under(&conn.state_dir) {
            println!(
                "on this host: {:.1} MiB",
                host.stored_bytes() as f64 / (1 << 20) as f64
            );
        }
        0
    } else if args.purge_cache {
        0
    } else {
        bail!("give a command after --, or --compdb, or --plan");
    };
    Ok(code)
}

/// The summary (or the final JSON update), and, with `announce`, the build's `finished`
/// update on its subject, so whoever follows the build (the dashboard) sees it end.
async fn finish(progress: Progress, args: &BuildArgs, code: i32, announce: Option<(&Swarm, &str)>) {
    let (stats, report) = progress.finish();
    let u = BuildUpdate::Finished {
        exit_code: code,
        stats: stats.clone(),
        binary: None,
        report: report.clone(),
    };
    if let Some((swarm, build_id)) = announce {
        announce_update(swarm, build_id, &u).await;
    }
    if args.json {
        if let Ok(line) = serde_json::to_string(&u) {
            println!("{line}");
        }
    } else {
        eprintln!("{}", progress::summary(&stats, &report));
    }
    if args.stats {
        eprint!("{}", progress::stats_table(&stats));
    }
}

/// Publishes one update of `build_id` on its subject (JSON, as `vgas build --json` prints
/// it); a failure only costs the followers that update.
async fn announce_update(swarm: &Swarm, build_id: &str, u: &BuildUpdate) {
    let Ok(body) = serde_json::to_vec(u) else {
        return;
    };
    let subject = swarm.subjects.build_updates(build_id);
    if let Err(e) = swarm.client.publish(subject, body.into()).await {
        tracing::debug!("announce the build's {build_id} update: {e}");
    }
}

/// Turns offering a build's sources off (`0` or `false`): they ride inside the tasks, as a
/// wrapper on its own sends them. For comparisons, and for a server whose grants are older.
pub const ENV_OFFER_SOURCES: &str = "VGAS_OFFER_SOURCES";

/// What the segments of build `build_id` share: the connection, the cache (when it opens),
/// the build's updates subject, the sources it offers workers and the user's settings.
async fn context(
    swarm: &Swarm,
    conn: &Resolved,
    args: &BuildArgs,
    build_id: &BuildId,
    tasks: &TaskTracker,
    write_behind: bool,
) -> BuildContext {
    let offer = !matches!(
        std::env::var(ENV_OFFER_SOURCES).as_deref(),
        Ok("0" | "false")
    );
    let offers = async {
        match offer {
            true => Offers::start(swarm, build_id.clone(), tasks).await,
            false => None,
        }
    };
    let (cache, offers) = tokio::join!(BuildCache::open(&swarm.js, &swarm.subjects), offers);
    BuildContext {
        swarm: swarm.clone(),
        conn: conn.clone(),
        cache: cache.ok().map(|c| c.on_host(&conn.state_dir)),
        updates: Updates::new(
            swarm.client.clone(),
            Some(swarm.subjects.build_updates(build_id.as_str())),
            None,
        ),
        local_fallback: !args.no_local_fallback,
        segment_deadline: Duration::from_secs(args.segment_deadline),
        tasks: tasks.clone(),
        write_behind,
        placement: super::placement::Placement::from_env(),
        uploaded: Default::default(),
        offers,
    }
}

/// Waits (bounded) for the build's own tasks: cache writes the next build should find.
async fn wait_for(tasks: TaskTracker) {
    tasks.close();
    if tokio::time::timeout(BACKGROUND_WAIT, tasks.wait())
        .await
        .is_err()
    {
        tracing::warn!("some cache writes did not finish in {BACKGROUND_WAIT:?}");
    }
}

/// The wrapper way: the user's command with the compiler pointed at `vgas`.
async fn run_command(swarm: &Swarm, conn: &Resolved, args: &BuildArgs, mode: Mode) -> Result<i32> {
    let build_id = BuildId::random();
    let mut updates = swarm
        .client
        .subscribe(swarm.subjects.build_updates(build_id.as_str()))
        .await?;
    // The number of units is not known before the command has run them all.
    let started = BuildUpdate::Started {
        build_id: build_id.to_string(),
        segments: 0,
    };
    announce_update(swarm, build_id.as_str(), &started).await;
    let links = tempfile::Builder::new()
        .prefix("vgas-wrap-")
        .tempdir()
        .context("create the wrapper directory")?;
    let me = std::env::current_exe().context("find the vgas binary")?;
    let wrapper = super::wrapper::link_target(&me);
    for name in MASQUERADE_NAMES {
        std::os::unix::fs::symlink(&wrapper, links.path().join(name))
            .with_context(|| format!("link {name}"))?;
    }
    // The helper: every wrapper of this build hands its unit to this process, which holds
    // the build's one connection, cache handles and file hashes.
    // Wrappers that run their call here append why; an empty file the build owns.
    let local_log = links.path().join("local.log");
    std::fs::write(&local_log, b"").context("create the wrappers' log")?;
    let tasks = TaskTracker::new();
    let ctx = context(swarm, conn, args, &build_id, &tasks, true).await;
    let stop_helper = CancellationToken::new();
    let stop_on_exit = stop_helper.clone().drop_guard();
    let socket = super::helper::start(links.path(), ctx, stop_helper)?;
    let path = std::env::var_os("PATH").unwrap_or_default();
    let mut dirs = vec![links.path().to_owned()];
    dirs.extend(std::env::split_paths(&path));
    let mut cmd = tokio::process::Command::new(&args.cmd[0]);
    cmd.args(&args.cmd[1..])
        .env("PATH", std::env::join_paths(dirs)?)
        .env("CC", links.path().join("cc"))
        .env("CXX", links.path().join("c++"))
        // Cargo runs every rustc call through the rustc wrapper (`crate::rustc`).
        .env("RUSTC_WRAPPER", &me)
        .env(ENV_WRAPPER_DIR, links.path())
        .env(super::wrapper::ENV_FULL_BINARY, &me)
        .env(ENV_BUILD_ID, build_id.as_str())
        .env(super::helper::ENV_HELPER_SOCKET, &socket)
        .env(ENV_LOCAL_LOG, &local_log)
        .env(ENV_SEGMENT_DEADLINE, args.segment_deadline.to_string())
        .env(
            ENV_LOCAL_FALLBACK,
            if args.no_local_fallback { "0" } else { "1" },
        )
        .env("VGAS_NATS_URL", &conn.nats_url)
        .env("VGAS_PREFIX", conn.subjects.prefix())
        .env("VGAS_STATE_DIR", absolute(&conn.state_dir));
    if let Ok(cc) = std::env::var("CC") {
        cmd.env(ENV_REAL_CC, cc);
    }
    if let Ok(cxx) = std::env::var("CXX") {
        cmd.env(ENV_REAL_CXX, cxx);
    }
    if let Some(c) = std::env::var_os("VGAS_CREDS") {
        cmd.env("VGAS_CREDS", absolute(Path::new(&c)));
    } else if conn.creds.is_some() {
        let p = Role::Client.creds_path(&conn.state_dir);
        if p.exists() {
            cmd.env("VGAS_CREDS", absolute(&p));
        }
    }
    let mut child = cmd
        .spawn()
        .with_context(|| format!("run {}", args.cmd[0]))?;
    let mut progress = Progress::new(mode);
    let mut tick = tokio::time::interval(TICK);
    let status = loop {
        tokio::select! {
            s = child.wait() => break s?,
            Some(msg) = updates.next() => {
                if let Ok(u) = decode_as::<BuildUpdate>(Encoding::detect(&msg.payload), &msg.payload) {
                    progress.on(u);
                }
            }
            _ = tick.tick() => progress.tick(),
        }
    };
    // Every wrapper has had its answer: stop the helper, then let the cache writes it left
    // running finish, so the next build finds them.
    drop(stop_on_exit);
    wait_for(tasks).await;
    let drain = match swarm.sync(REQUEST_TIMEOUT).await {
        true => Duration::ZERO,
        false => UPDATE_DRAIN,
    };
    // A zero timeout still takes every update already read.
    while let Ok(Some(msg)) = tokio::time::timeout(drain, updates.next()).await {
        if let Ok(u) = decode_as::<BuildUpdate>(Encoding::detect(&msg.payload), &msg.payload) {
            progress.on(u);
        }
    }
    // Every call the wrappers ran here without offering it to the swarm, with its reason.
    if let Ok(log) = std::fs::read_to_string(&local_log) {
        progress.not_distributed(log.lines());
    }
    let code = status.code().unwrap_or(1);
    finish(progress, args, code, Some((swarm, build_id.as_str()))).await;
    Ok(code)
}

/// The compilation-database way.
async fn run_compdb(
    swarm: &Swarm,
    conn: &Resolved,
    args: &BuildArgs,
    db: &Path,
    mode: Mode,
) -> Result<i32> {
    let Some(output) = &args.output else {
        bail!("--compdb needs -o <binary> (and --link <command>)");
    };
    let link_cmd = args.link.as_deref().unwrap_or("cc");
    let words =
        shlex::split(link_cmd).with_context(|| format!("cannot split --link {link_cmd:?}"))?;
    let Some((program, rest)) = words.split_first() else {
        bail!("--link is empty");
    };
    let (before, after) = match rest.iter().position(|w| w == "{objects}") {
        Some(i) => (rest[..i].to_vec(), rest[i + 1..].to_vec()),
        None => (rest.to_vec(), Vec::new()),
    };
    let link = LinkStep {
        program: crate::toolchain::which(program, None)
            .with_context(|| format!("linker {program} not found"))?,
        args: before,
        after,
        output: output.clone(),
        cwd: std::env::current_dir()?,
    };
    let jobs = args.jobs.unwrap_or_else(|| {
        2 * std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    });
    let entries = compdb::read(db)?;
    let units = compdb::prepare_all(entries, &absolute(&conn.state_dir), jobs).await?;
    let build_id = BuildId::random();
    let tasks = TaskTracker::new();
    let ctx = context(swarm, conn, args, &build_id, &tasks, false).await;
    let mut progress = Progress::new(mode);
    // Order is kept: the link takes objects in the database's order.
    let mut slots: Vec<Option<vgas_shared::farm::BuildOutput>> = Vec::new();
    let mut segments = Vec::new();
    let mut seg_slots = Vec::new();
    for u in units {
        match u {
            Unit::Segment(s) => {
                seg_slots.push(slots.len());
                slots.push(None);
                segments.push(*s);
            }
            Unit::Failed(o) => slots.push(Some(o)),
            Unit::Local {
                local,
                output,
                name,
                reason,
            } => {
                progress.not_distributed([reason.as_str()]);
                let r = local.run().await?;
                slots.push(Some(vgas_shared::farm::BuildOutput {
                    segment: name,
                    object: (r.exit_code == 0).then_some(output),
                    exit_code: r.exit_code,
                    diagnostics: r.stderr,
                    origin: vgas_shared::farm::Origin::Local { reason },
                }));
            }
        }
    }
    let (stream, handle) = dispatch_build_segments(ctx, segments, jobs);
    let mut stream = std::pin::pin!(stream);
    let mut tick = tokio::time::interval(TICK);
    loop {
        tokio::select! {
            u = stream.next() => match u {
                Some(u) => progress.on(u),
                None => break,
            },
            _ = tick.tick() => progress.tick(),
        }
    }
    let outs = handle.await.context("the dispatching task failed")?;
    wait_for(tasks).await;
    for (slot, out) in seg_slots.into_iter().zip(outs) {
        slots[slot] = Some(out);
    }
    let outputs: Vec<_> = slots.into_iter().flatten().collect();
    for o in &outputs {
        eprint!("{}", o.diagnostics);
    }
    let agg = aggregate_artifacts(outputs, Some(&link)).await?;
    eprint!("{}", agg.link_stderr);
    if let Some(b) = &agg.binary {
        if !args.json {
            eprintln!("vgas: linked {} ({} bytes, {})", b.path, b.size, b.sha256);
        } else if let Ok(line) = serde_json::to_string(b) {
            println!("{line}");
        }
    }
    finish(
        progress,
        args,
        agg.exit_code,
        Some((swarm, build_id.as_str())),
    )
    .await;
    Ok(agg.exit_code)
}

/// The plan way: the master runs it; this follows its updates and fetches the binary.
async fn run_plan(swarm: &Swarm, args: &BuildArgs, path: &Path, mode: Mode) -> Result<i32> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    let plan: BuildPlan = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a BuildPlan", path.display()))?;
    plan.validate()?;
    let mut following = swarm.submit_plan(plan, REQUEST_TIMEOUT).await?;
    let accepted = following.accepted.clone();
    let mut progress = Progress::new(mode);
    let mut tick = tokio::time::interval(TICK);
    let finished = loop {
        tokio::select! {
            u = following.next() => match u? {
                u @ BuildUpdate::Finished { .. } => break u,
                u => progress.on(u),
            },
            _ = tick.tick() => progress.tick(),
        }
    };
    let BuildUpdate::Finished {
        exit_code,
        binary,
        report,
        ..
    } = &finished
    else {
        unreachable!("loop breaks on Finished")
    };
    for d in &report.items {
        eprintln!(
            "{}:{}:{}: {}: {}",
            d.file, d.line, d.column, d.severity, d.message
        );
        eprint!("{}", d.context);
    }
    if let Some(b) = binary {
        if b.object.is_some() {
            let out = args
                .output
                .clone()
                .unwrap_or_else(|| PathBuf::from(&b.path));
            swarm.fetch_binary(b, &out).await?;
            if !args.json {
                eprintln!(
                    "vgas: wrote {} ({} bytes, {}) from build {}",
                    out.display(),
                    b.size,
                    b.sha256,
                    accepted.build_id
                );
            }
        }
    }
    let code = *exit_code;
    if args.json {
        println!("{}", serde_json::to_string(&finished)?);
        let _ = progress.finish();
    } else {
        finish(progress, args, code, None).await;
    }
    Ok(code)
}
