//! `vgas-master`: parses settings, sets up tracing and Ctrl-C/SIGTERM, then runs the master;
//! `vgas-master vault ...` works on the master's key vault instead (what `vgas vault` runs).

use anyhow::Result;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use vgas_shared::config::{CommonArgs, Role};

#[derive(Debug, Parser)]
#[command(
    name = "vgas-master",
    version,
    about = "The vgas master: admission, Gatling dispatch, swarm status"
)]
struct Args {
    #[command(flatten)]
    common: CommonArgs,
    /// Tasks that may wait for a worker before submit answers `busy`.
    #[arg(long, env = "VGAS_QUEUE_CAPACITY")]
    queue_capacity: Option<usize>,
    /// The nats-server monitoring (HTTP) port to announce over mDNS.
    #[arg(long, env = "VGAS_ADVERTISE_HTTP_PORT")]
    advertise_http_port: Option<u16>,
    /// Serve the web dashboard (and /metrics) at this address; loopback unless given another.
    /// Every page wants the token: `vgas dashboard` prints the URL with it.
    #[arg(long, env = "VGAS_DASHBOARD", value_name = "ADDR", num_args = 0..=1,
          default_missing_value = vgas_master::dashboard::DEFAULT_DASHBOARD_ADDR)]
    dashboard: Option<std::net::SocketAddr>,
    /// The dashboard's token (16+ characters) [default: a random one per start].
    #[arg(long, env = "VGAS_DASHBOARD_TOKEN", hide_env_values = true)]
    dashboard_token: Option<String>,
    /// The dashboard's URL as people reach it (behind a proxy), for `vgas dashboard`.
    #[arg(long, env = "VGAS_DASHBOARD_URL")]
    dashboard_url: Option<String>,
    /// Serve Prometheus metrics at this address (`/metrics`); from elsewhere than loopback
    /// only with the dashboard's token as a bearer token.
    #[arg(long, env = "VGAS_METRICS", value_name = "ADDR", num_args = 0..=1,
          default_missing_value = vgas_master::dashboard::DEFAULT_METRICS_ADDR)]
    metrics: Option<std::net::SocketAddr>,
    /// Seconds a finished task's record keeps its spec's payload (command, env, stdin, files)
    /// before it is dropped; 0 drops it with the final result [default: 60].
    #[arg(long, env = "VGAS_SPEC_RETENTION", value_name = "SECONDS")]
    spec_retention: Option<u64>,
    #[command(subcommand)]
    cmd: Option<Cmd>,
}

#[derive(Debug, clap::Subcommand)]
enum Cmd {
    /// Provider API keys in this master's vault (also `vgas vault ...`).
    #[command(subcommand)]
    Vault(vgas_master::vault_cli::VaultCmd),
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if let Some(Cmd::Vault(cmd)) = args.cmd {
        vgas_client::init_tracing_quiet();
        let conn = args.common.resolve(Role::Client)?;
        match vgas_master::vault_cli::run_vault(&conn, cmd) {
            Ok(code) => std::process::exit(code),
            Err(e) => {
                eprintln!("vgas: {e:#}");
                std::process::exit(2);
            }
        }
    }
    vgas_master::init_tracing();
    let conn = args.common.resolve(Role::Master)?;
    let mut cfg = vgas_master::MasterConfig::new(conn);
    cfg.advertise_http_port = args.advertise_http_port;
    let token = match &args.dashboard_token {
        Some(t) => vgas_client::http::Token::parse(t)?,
        None => vgas_client::http::Token::generate(),
    };
    cfg.dashboard = args
        .dashboard
        .map(|addr| vgas_master::dashboard::DashboardConfig {
            addr,
            token: token.clone(),
            public_url: args.dashboard_url.clone(),
        });
    cfg.metrics_addr = args.metrics;
    cfg.metrics_token = args.dashboard_token.is_some().then_some(token);
    if let Some(q) = args.queue_capacity {
        cfg.queue_capacity = q;
    }
    if let Some(s) = args.spec_retention {
        cfg.spec_retention = std::time::Duration::from_secs(s);
    }
    let shutdown = CancellationToken::new();
    // The signal watcher runs beside the master, not spawned: it ends with it.
    let signals = async {
        tokio::select! {
            _ = vgas_master::shutdown_on_signal(shutdown.clone()) => {}
            _ = shutdown.cancelled() => {}
        }
    };
    let master = async {
        let ran = vgas_master::run(cfg, shutdown.clone()).await;
        shutdown.cancel();
        ran
    };
    let (ran, ()) = tokio::join!(master, signals);
    ran
}
