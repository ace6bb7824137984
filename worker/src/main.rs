//! `vgas-worker`: parses settings, sets up tracing and SIGTERM, then runs the worker.

use anyhow::Result;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use vgas_shared::config::{CommonArgs, Role};
use vgas_shared::WorkerId;
use vgas_worker::runner::AheadPolicy;

#[derive(Debug, Parser)]
#[command(
    name = "vgas-worker",
    version,
    about = "A vgas worker: lends this machine's cores to the swarm"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Tasks run at once [default: number of CPUs]
    #[arg(long, env = "VGAS_SLOTS")]
    slots: Option<usize>,
    /// Tasks taken beyond the slots, each waiting here for the next free slot, so a slot
    /// starts its next task without a round trip to the master [default: as the recent
    /// tasks' length calls for, one to eight per slot; 0 for long tasks that another worker
    /// might start sooner]
    #[arg(long, env = "VGAS_QUEUE_AHEAD")]
    queue_ahead: Option<usize>,
    /// Milliseconds a task taken into the queue ahead of the slots runs in its slot before it
    /// says `started` itself; one that ends or prints sooner gets its `started` from its
    /// result, or says it then [default: 10; 0: at once; at most 60000]
    #[arg(long, env = "VGAS_STARTED_AFTER_MS", value_parser = started_after_ms)]
    started_after_ms: Option<u64>,
    /// Worker id [default: <hostname>-<random>]
    #[arg(long, env = "VGAS_WORKER_ID")]
    id: Option<WorkerId>,
    /// Capability tag to offer on top of the toolchains found (repeatable).
    #[arg(long = "capability", value_name = "TAG")]
    capabilities: Vec<String>,
    /// Seconds SIGTERM lets running tasks finish before handing them back.
    #[arg(long, env = "VGAS_DRAIN_TIMEOUT")]
    drain_timeout: Option<u64>,
    /// Serve Prometheus metrics at this address (`/metrics`); loopback unless given another.
    #[arg(long, env = "VGAS_METRICS", value_name = "ADDR", num_args = 0..=1,
          default_missing_value = vgas_worker::metrics::DEFAULT_METRICS_ADDR)]
    metrics: Option<std::net::SocketAddr>,
    /// The bearer token `/metrics` wants from elsewhere than loopback (16+ characters);
    /// without one only loopback may read it.
    #[arg(long, env = "VGAS_METRICS_TOKEN", hide_env_values = true)]
    metrics_token: Option<String>,
}

/// `--started-after-ms`: a number of milliseconds up to `MAX_STARTED_AFTER`, or a clear
/// error.
fn started_after_ms(text: &str) -> Result<u64, String> {
    let most = vgas_worker::runner::MAX_STARTED_AFTER.as_millis() as u64;
    match text.parse::<u64>() {
        Ok(ms) if ms <= most => Ok(ms),
        Ok(ms) => Err(format!("{ms} is over the most, {most} (a minute)")),
        Err(e) => Err(format!("not a number of milliseconds: {e}")),
    }
}

fn main() -> Result<()> {
    // A cuda task's helper: the worker runs its own binary in the sandbox for it.
    let argv: Vec<String> = std::env::args().collect();
    if let [_, arg, plan] = argv.as_slice() {
        if arg == vgas_worker::gpu::helper::HELPER_ARG {
            std::process::exit(vgas_worker::gpu::helper::main(plan));
        }
    }
    worker()
}

#[tokio::main]
async fn worker() -> Result<()> {
    vgas_shared::logging::init("info");
    let args = Args::parse();
    let mut cfg = vgas_worker::WorkerConfig::new(args.common.resolve(Role::Worker)?)?;
    if let Some(n) = args.slots {
        cfg.slots = n.clamp(1, vgas_worker::MAX_SLOTS);
    }
    cfg.queue_ahead = match args.queue_ahead {
        Some(n) => AheadPolicy::Fixed(n.min(vgas_worker::MAX_QUEUE_AHEAD)),
        None => AheadPolicy::Auto,
    };
    if let Some(ms) = args.started_after_ms {
        cfg.started_after = std::time::Duration::from_millis(ms);
    }
    if let Some(id) = args.id {
        let node = cfg.conn.creds.as_ref().and_then(|c| c.node.as_deref());
        if node.is_some_and(|n| n != id.as_str()) {
            anyhow::bail!(
                "--id {id}: these credentials are node {}'s, and a node runs under its own name",
                node.unwrap_or_default()
            );
        }
        cfg.id = id;
    }
    cfg.capabilities.extend(args.capabilities);
    cfg.metrics_addr = args.metrics;
    cfg.metrics_token = args
        .metrics_token
        .as_deref()
        .map(vgas_client::http::Token::parse)
        .transpose()?;
    if let Some(s) = args.drain_timeout {
        cfg.drain_timeout = std::time::Duration::from_secs(s);
    }
    let shutdown = CancellationToken::new();
    // The signal watcher runs beside the worker, not spawned: it ends with it.
    let signals = async {
        use tokio::signal::unix::{signal, SignalKind};
        let Ok(mut term) = signal(SignalKind::terminate()) else {
            return shutdown.cancelled().await;
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
            _ = shutdown.cancelled() => return,
        }
        tracing::info!("shutdown requested: draining");
        shutdown.cancel();
    };
    let worker = async {
        let ran = vgas_worker::run(cfg, shutdown.clone()).await;
        shutdown.cancel();
        ran
    };
    let (ran, ()) = tokio::join!(worker, signals);
    ran
}
