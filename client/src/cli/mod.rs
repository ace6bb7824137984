//! The `vgas` user CLI: `init`, `submit`, `status`, `watch`, `cancel`, `build`, `agent`,
//! `usage`, `discover`, and `vault` (handed to `vgas-master`). It speaks MessagePack to the
//! master like any of our processes, through the task API (`crate::api`); everything it does
//! can also be done with the `nats` CLI in JSON (see docs/protocol.md).

pub mod agent;
pub mod batch;
pub mod cuda;
pub mod dashboard;
pub mod discover;
pub mod status;
pub mod submit;
pub mod usage;
pub mod vault;
pub mod wasm;

use std::time::Duration;

use anyhow::{Context as _, Result};
use clap::{Parser, Subcommand};
use vgas_shared::config::{CommonArgs, Role};
use vgas_shared::TaskId;

use crate::api::Swarm;

pub use submit::SubmitArgs;

#[derive(Debug, Parser)]
#[command(name = "vgas", version, about = "Run work on the vgas swarm")]
pub struct Cli {
    #[command(flatten)]
    pub common: CommonArgs,
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// `vgas init`: keys, TLS, and this server's place among others.
#[derive(Debug, Clone, clap::Args)]
pub struct InitArgs {
    #[command(flatten)]
    pub tls: crate::tls::TlsArgs,
    #[command(flatten)]
    pub cluster: crate::cluster::ClusterArgs,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Create the swarm's NATS keys, CA and server certificate, and the server's auth.conf
    /// and tls.conf (idempotent).
    Init(InitArgs),
    /// Node identities: one NATS key per worker or master host (run where `vgas init` ran).
    #[command(subcommand)]
    Node(NodeCmd),
    /// Run a command on the swarm, streaming its output; exits with its exit code.
    Submit(Box<SubmitArgs>),
    /// Show the swarm: live and abnormal workers, queue, in-flight tasks.
    Status {
        /// Print the raw SwarmPulse (with --view, the ViewReport) as JSON.
        #[arg(long)]
        json: bool,
        /// Show the node and GPU-lease view that any master holds, leading or standing by
        /// (also where no master can lead, as on the minority side of a partition).
        #[arg(long)]
        view: bool,
    },
    /// Follow a task's output and result.
    Watch { task_id: TaskId },
    /// Cancel a task.
    Cancel { task_id: TaskId },
    /// List the vgas nodes on the LAN (mDNS): mode, cluster, addresses, joined or not.
    Discover {
        /// Seconds to listen.
        #[arg(long, default_value_t = 3)]
        wait: u64,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Provider API keys in the master's vault (run on the master's machine; this is
    /// `vgas-master vault ...`, see `vgas vault --help`).
    #[command(disable_help_flag = true)]
    Vault {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Build C/C++ on the swarm: `vgas build -- make -j8`, `--compdb`, or `--plan`.
    Build(crate::farm::cli::BuildArgs),
    /// AI agents: run an instruction through Architect, Programmer and Tester; knowledge
    /// base; stats.
    #[command(subcommand)]
    Agent(agent::AgentCmd),
    /// Print the master's web dashboard URL (with its token) and open it in a browser.
    Dashboard {
        /// Only print the URL.
        #[arg(long)]
        print: bool,
    },
    /// LLM usage by provider, model and day, with budgets and rates.
    Usage {
        /// Print the report as JSON.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum NodeCmd {
    /// Issue an identity for a host: prints the credentials file to copy there (a worker
    /// started with it runs under NAME).
    Add {
        #[arg(value_enum)]
        role: vgas_shared::identity::NodeRole,
        name: vgas_shared::WorkerId,
    },
    /// Cut a node off at once: out of auth.conf, nats-server reloaded, its connections closed.
    Revoke { name: vgas_shared::WorkerId },
    /// The node identities, active and revoked.
    List,
}

/// Writes `text` to standard output. A reader that has gone (`vgas status --json | grep -q
/// ...`) is not an error: there is no one left to tell.
pub fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write as _;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        r => r.context("write to standard output"),
    }
}

/// Runs the CLI; returns the process exit code.
pub async fn run(cli: Cli) -> Result<i32> {
    let conn = cli.common.resolve(Role::Client)?;
    let cmd = match cli.cmd {
        Cmd::Init(InitArgs { tls, cluster }) => {
            let report = crate::init::init(&conn.state_dir, &conn.subjects, &tls)?;
            let links = report.tls.then(|| {
                let files = crate::tls::TlsFiles::new(&conn.state_dir);
                let abs = |p: &std::path::Path| std::path::absolute(p).unwrap_or(p.to_path_buf());
                crate::cluster::LinkTls {
                    ca: abs(&files.ca_cert),
                    cert: abs(&files.server_cert),
                    key: abs(&files.server_key),
                }
            });
            let cluster_conf =
                crate::cluster::write(&conn.state_dir, &cluster, &conn.cluster, links.as_ref())?;
            for p in &report.created {
                println!("created {}", p.display());
            }
            for p in &report.kept {
                println!("kept    {}", p.display());
            }
            println!("wrote   {}", report.auth_conf.display());
            let tls = if report.tls { "on" } else { "off" };
            println!("wrote   {} (TLS {tls})", report.tls_conf.display());
            let role = match (&cluster.node, &cluster.leaf_remote) {
                (Some(n), _) => format!("cluster node {n}"),
                (None, Some(hub)) => format!("leaf node of {hub}"),
                (None, None) => "one server".to_owned(),
            };
            println!("wrote   {} ({role})", cluster_conf.display());
            return Ok(0);
        }
        Cmd::Node(cmd) => {
            let (state, subjects) = (&conn.state_dir, &conn.subjects);
            match cmd {
                NodeCmd::Add { role, name } => {
                    let (path, reload) = crate::nodes::add(state, subjects, role, &name)?;
                    println!("created {}", path.display());
                    println!(
                        "copy it to the node (mode 0600) and start it with --creds {}",
                        path.display()
                    );
                    println!("{reload}");
                }
                NodeCmd::Revoke { name } => {
                    let reload = crate::nodes::revoke(state, subjects, &name)?;
                    println!("revoked {name}");
                    println!("{reload}");
                }
                NodeCmd::List => print_stdout(&crate::nodes::list(state)?)?,
            }
            return Ok(0);
        }
        Cmd::Discover { wait, json } => {
            return discover::run(&conn, Duration::from_secs(wait), json).await;
        }
        Cmd::Vault { .. } => {
            let argv: Vec<String> = std::env::args().skip(1).collect();
            return Err(vault::exec_master(argv));
        }
        cmd => cmd,
    };
    let client = crate::connect::connect(&conn, "vgas-cli").await?;
    let swarm = Swarm::new(client, conn.subjects.clone());
    let code = match cmd {
        Cmd::Init(_) | Cmd::Node(_) | Cmd::Discover { .. } | Cmd::Vault { .. } => {
            unreachable!("handled above")
        }
        Cmd::Usage { json } => usage::run(&swarm, json).await?,
        Cmd::Dashboard { print } => dashboard::run(&swarm, print).await?,
        Cmd::Submit(args) => match &args.batch {
            Some(file) => batch::run(&swarm, file).await?,
            None => submit::submit(&swarm, *args).await?,
        },
        Cmd::Build(args) => crate::farm::cli::run(&swarm, &conn, args).await?,
        Cmd::Agent(cmd) => agent::run(&swarm, cmd).await?,
        Cmd::Status { json, view } => status::run(&swarm, json, view).await?,
        Cmd::Watch { task_id } => submit::watch(&swarm, &task_id).await?,
        Cmd::Cancel { task_id } => {
            swarm.cancel(&task_id).await?;
            println!("cancelling {task_id}");
            0
        }
    };
    swarm.client.flush().await.ok();
    Ok(code)
}
