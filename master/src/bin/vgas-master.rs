//! `vgas-master`: parses settings, sets up tracing and Ctrl-C/SIGTERM, then runs the master.

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
}

#[tokio::main]
async fn main() -> Result<()> {
    vgas_master::init_tracing();
    let args = Args::parse();
    let conn = args.common.resolve(Role::Master)?;
    let mut cfg = vgas_master::MasterConfig::new(conn);
    cfg.advertise_http_port = args.advertise_http_port;
    if let Some(q) = args.queue_capacity {
        cfg.queue_capacity = q;
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(vgas_master::shutdown_on_signal(shutdown.clone()));
    vgas_master::run(cfg, shutdown).await
}
