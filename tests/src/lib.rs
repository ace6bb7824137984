//! The integration-test harness: a real `nats-server` started from the repository's
//! `nats.conf` (with users made by the real `vgas init`), real `vgas-master` and `vgas-worker`
//! processes, and NATS clients for each role. Every guard kills what it started on `Drop`, one
//! server per test so tests run in parallel, and every wait is bounded.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub mod bench;
pub mod browser;
pub mod build;
pub mod cluster;
pub mod gateway;
pub mod netns;
pub mod procs;
pub mod provider;
pub mod tasks;
pub mod wasi;

pub use procs::{bin, free_port, repo_root, simulated_host, wait_for, Proc};
pub use tasks::{
    collect, finished_worker, request, run_task, sh, submit_until_started, subscribe_events,
    Collected,
};

use anyhow::{bail, Context, Result};
use procs::nats_server_bin;
use vgas_shared::config::{Credentials, Role};
use vgas_shared::host::ENV_HOST_ID;
use vgas_shared::wire::SwarmPulse;
use vgas_shared::Subjects;

/// Attempts at starting nats-server on free ports before a test gives up.
const SERVER_START_TRIES: usize = 3;

/// How long any single wait in a test may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(30);

/// A nats-server with the repository's `nats.conf` and users from `vgas init`, on free ports,
/// with its state in a temporary directory.
#[derive(Debug)]
pub struct Swarm {
    pub dir: tempfile::TempDir,
    pub port: u16,
    /// The HTTP monitoring port (nats.conf binds it to loopback).
    pub monitor_port: u16,
    pub server: Proc,
    pub subjects: Subjects,
    procs_started: usize,
    /// The namespace host nats-server runs on, for multi-host tests; `None`: this machine.
    pub server_host: Option<netns::Host>,
    /// The servers' URLs when the swarm runs on a cluster ([`cluster::Cluster`]).
    pub urls: Option<String>,
}

/// Where a process runs and how it finds the swarm.
#[derive(Debug, Clone, Copy)]
pub enum Placement<'a> {
    /// This machine, told the server's URL; no mDNS.
    Local,
    /// A namespace host, told the server's URL; mDNS on.
    On(&'a netns::Host),
    /// A namespace host with no URL: it finds the master by mDNS.
    Discover(&'a netns::Host),
}

impl Swarm {
    /// Starts nats-server and waits until it accepts connections.
    pub async fn start() -> Result<Swarm> {
        Self::start_on(None).await
    }

    /// Starts nats-server on `host` (a namespace), or on this machine. TLS is off (`vgas
    /// init --no-tls`) unless `VGAS_TEST_TLS=1` runs the suite with it; the TLS tests ask for
    /// it with [`Swarm::start_tls_on`].
    pub async fn start_on(host: Option<netns::Host>) -> Result<Swarm> {
        let tls = std::env::var("VGAS_TEST_TLS").is_ok_and(|v| v == "1");
        Self::start_with(host, tls, &[]).await
    }

    /// Starts nats-server with TLS from `vgas init` (its certificate also names `host`'s
    /// address).
    pub async fn start_tls_on(host: Option<netns::Host>) -> Result<Swarm> {
        Self::start_with(host, true, &[]).await
    }

    /// Starts nats-server with TLS and these further `vgas init` arguments (`--mutual-tls`).
    pub async fn start_tls_with(host: Option<netns::Host>, init_args: &[&str]) -> Result<Swarm> {
        Self::start_with(host, true, init_args).await
    }

    async fn start_with(host: Option<netns::Host>, tls: bool, init_args: &[&str]) -> Result<Swarm> {
        let mut dir = tempfile::Builder::new().prefix("vgas-test-").tempdir()?;
        std::fs::copy(repo_root().join("nats.conf"), dir.path().join("nats.conf"))?;
        let mut init = Command::new(bin("vgas"));
        init.args(["init", "--state-dir"])
            .arg(dir.path().join(".vgas"))
            .args(init_args);
        match (&host, tls) {
            (_, false) => {
                init.arg("--no-tls");
            }
            (Some(h), true) => {
                init.args(["--tls-name", &h.addr.to_string()]);
            }
            (None, true) => {}
        }
        let out = init.output().context("run vgas init")?;
        if !out.status.success() {
            bail!("vgas init failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        // A port found free can be taken before nats-server binds it: then the server exits
        // and the start is retried on new ports.
        let mut tries = 0;
        loop {
            tries += 1;
            let (port, monitor_port) = (free_port(), free_port());
            let server = Self::spawn_server(dir.path(), port, monitor_port, host.as_ref())?;
            let mut swarm = Swarm {
                server_host: host.clone(),
                dir,
                port,
                monitor_port,
                server,
                subjects: Subjects::default(),
                procs_started: 0,
                urls: None,
            };
            match swarm.wait_server_up().await {
                Ok(()) => return Ok(swarm),
                Err(e) if tries < SERVER_START_TRIES => {
                    eprintln!(
                        "nats-server did not start (try {tries}), retrying on new ports: {e:#}"
                    );
                    swarm.server.kill();
                    dir = swarm.dir;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn spawn_server(
        dir: &Path,
        port: u16,
        monitor_port: u16,
        host: Option<&netns::Host>,
    ) -> Result<Proc> {
        // A fresh log per start, so "Server is ready" always speaks of this process.
        static STARTS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = STARTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let log = dir.join(format!("nats-server-{port}-{n}.log"));
        let file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)?;
        let child = in_host(host, &nats_server_bin())
            .args(["-c", "nats.conf", "-p"])
            .arg(port.to_string())
            .args(["-m", &monitor_port.to_string()])
            .current_dir(dir)
            .stdout(file.try_clone()?)
            .stderr(file)
            .spawn()
            .context("start nats-server (run scripts/ensure-tools.sh)")?;
        Ok(Proc::started("nats-server", child, log))
    }

    /// Waits until this swarm's own nats-server says it is ready and accepts a connection;
    /// fails at once if it exited (a port taken, say).
    async fn wait_server_up(&mut self) -> Result<()> {
        let addr = self.server_addr();
        let port = self.port;
        let end = Instant::now() + WAIT;
        loop {
            if let Some(st) = self.server.exited()? {
                bail!("nats-server exited ({st}):\n{}", self.server.log_text());
            }
            if self.server.log_text().contains("Server is ready")
                && TcpStream::connect((addr, port)).is_ok()
            {
                return Ok(());
            }
            if Instant::now() > end {
                bail!(
                    "nats-server not ready within {WAIT:?}:\n{}",
                    self.server.log_text()
                );
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The usual start of a test: nats-server, a master, workers `(id, slots)`, a client
    /// connection, and every worker live. The master is the first process returned.
    pub async fn with_workers(
        workers: &[(&str, usize)],
    ) -> Result<(Swarm, Vec<Proc>, async_nats::Client)> {
        Swarm::with_workers_args(workers, &[]).await
    }

    /// [`Swarm::with_workers`], each worker started with `extra` arguments too (`--queue-ahead
    /// 0` where a test needs the master's queue to hold what the slots cannot take).
    pub async fn with_workers_args(
        workers: &[(&str, usize)],
        extra: &[&str],
    ) -> Result<(Swarm, Vec<Proc>, async_nats::Client)> {
        let mut swarm = Swarm::start().await?;
        let mut procs = vec![swarm.master(&[])?];
        for (id, slots) in workers {
            procs.push(swarm.worker(id, *slots, extra)?);
        }
        let client = swarm.connect(Role::Client).await?;
        swarm.wait_workers(&client, workers.len()).await?;
        Ok((swarm, procs, client))
    }

    /// Kills nats-server (SIGKILL) and starts it again on the same port and store.
    pub async fn restart_server(&mut self) -> Result<()> {
        self.server.kill();
        self.server = Self::spawn_server(
            self.dir.path(),
            self.port,
            self.monitor_port,
            self.server_host.as_ref(),
        )?;
        self.wait_server_up().await
    }

    /// Kills nats-server and starts it on another host, same port and store: the server
    /// moved to a new address.
    pub async fn move_server(&mut self, host: netns::Host) -> Result<()> {
        self.server.kill();
        self.server_host = Some(host);
        self.restart_server().await
    }

    fn server_addr(&self) -> std::net::Ipv4Addr {
        self.server_host
            .as_ref()
            .map(|h| h.addr)
            .unwrap_or(std::net::Ipv4Addr::LOCALHOST)
    }

    /// The server's URL, or every cluster node's, comma-separated.
    pub fn url(&self) -> String {
        match &self.urls {
            Some(urls) => urls.clone(),
            None => format!("nats://{}:{}", self.server_addr(), self.port),
        }
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join(".vgas")
    }

    pub fn creds(&self, role: Role) -> Credentials {
        Credentials::load(&role.creds_path(&self.state_dir())).expect("creds")
    }

    fn spawn(
        &mut self,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        self.spawn_at(Placement::Local, name, program, args, env)
    }

    /// Starts a vgas binary at `place`; its output goes to a log file in the swarm's folder.
    pub fn spawn_at(
        &mut self,
        place: Placement<'_>,
        name: &str,
        program: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        self.procs_started += 1;
        let log = self
            .dir
            .path()
            .join(format!("{name}-{}.log", self.procs_started));
        let file = std::fs::File::create(&log)?;
        let host = match place {
            Placement::Local => None,
            Placement::On(h) | Placement::Discover(h) => Some(h),
        };
        let mut cmd = in_host(host, &bin(program));
        if !matches!(place, Placement::Discover(_)) {
            cmd.env("VGAS_NATS_URL", self.url());
        }
        // mDNS would announce on this machine's real network: only processes inside the
        // multi-host tests' own namespaces use it.
        cmd.env(
            "VGAS_NO_MDNS",
            if host.is_some() { "false" } else { "true" },
        );
        cmd.args(args)
            .env("VGAS_STATE_DIR", self.state_dir())
            .env(
                "RUST_LOG",
                // Every task's life too: what a failing test's logs are read for.
                std::env::var("VGAS_TEST_LOG").unwrap_or_else(|_| "info,vgas_tasks=debug".into()),
            )
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(file.try_clone()?)
            .stderr(file);
        for (k, v) in env {
            cmd.env(k, v);
        }
        let child = cmd.spawn().with_context(|| format!("start {program}"))?;
        Ok(Proc::started(name, child, log))
    }

    /// Starts `vgas-master`.
    pub fn master(&mut self, extra: &[&str]) -> Result<Proc> {
        self.spawn("master", "vgas-master", extra, &[])
    }

    /// Starts `vgas-worker` with this id and slot count, as a host of its own (its own
    /// `VGAS_HOST_ID`), as on a LAN: a build sends it units instead of compiling them in place.
    pub fn worker(&mut self, id: &str, slots: usize, extra: &[&str]) -> Result<Proc> {
        let slots = slots.to_string();
        let mut args = vec!["--id", id, "--slots", &slots];
        args.extend_from_slice(extra);
        let host = simulated_host(id);
        self.spawn(id, "vgas-worker", &args, &[(ENV_HOST_ID, &host)])
    }

    /// Starts `vgas-worker` as [`Swarm::worker`] does, with more environment (a declared GPU
    /// inventory, for example).
    pub fn worker_with_env(
        &mut self,
        id: &str,
        slots: usize,
        env: &[(&str, &str)],
    ) -> Result<Proc> {
        let slots = slots.to_string();
        let host = simulated_host(id);
        let mut all = vec![(ENV_HOST_ID, host.as_str())];
        all.extend_from_slice(env);
        self.spawn(id, "vgas-worker", &["--id", id, "--slots", &slots], &all)
    }

    /// Starts `vgas-worker` with this id and slot count as what it is: a worker on the
    /// submitter's own host (a build compiles in place what only it could take).
    pub fn worker_on_this_host(&mut self, id: &str, slots: usize) -> Result<Proc> {
        let slots = slots.to_string();
        self.spawn(id, "vgas-worker", &["--id", id, "--slots", &slots], &[])
    }

    /// Starts `vgas-worker --id ID EXTRA...` at `place`, a host of its own as in [`Swarm::worker`].
    pub fn worker_at(&mut self, place: Placement<'_>, id: &str, extra: &[&str]) -> Result<Proc> {
        let mut args = vec!["--id", id];
        args.extend_from_slice(extra);
        let host = simulated_host(id);
        self.spawn_at(place, id, "vgas-worker", &args, &[(ENV_HOST_ID, &host)])
    }

    /// Runs the `vgas` CLI to completion with the client's credentials.
    pub fn cli(&self, args: &[&str]) -> Result<std::process::Output> {
        Command::new(bin("vgas"))
            .args(args)
            .env("VGAS_NATS_URL", self.url())
            .env("VGAS_STATE_DIR", self.state_dir())
            .current_dir(self.dir.path())
            .stdin(Stdio::null())
            .output()
            .context("run vgas")
    }

    /// Runs the `vgas` CLI to completion in `cwd` with extra environment.
    pub fn cli_in(
        &self,
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<std::process::Output> {
        self.bin_in("vgas", cwd, args, env)
    }

    /// [`Swarm::cli_in`] for another of the workspace's binaries (`vgas-cc`).
    pub fn bin_in(
        &self,
        name: &str,
        cwd: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<std::process::Output> {
        let mut cmd = Command::new(bin(name));
        cmd.args(args)
            .env("VGAS_NATS_URL", self.url())
            .env("VGAS_STATE_DIR", self.state_dir())
            .env("VGAS_NO_MDNS", "true")
            .current_dir(cwd)
            .stdin(Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        cmd.output().with_context(|| format!("run {name}"))
    }

    /// Connects as `role`.
    pub async fn connect(&self, role: Role) -> Result<async_nats::Client> {
        let c = self.creds(role);
        Ok(vgas_client::connect::auth_options(Some(&c))?
            .connect(vgas_client::connect::server_urls(&self.url())?)
            .await?)
    }

    /// Waits until `vgas.status` lists `n` live workers (the master answering included).
    pub async fn wait_workers(&self, client: &async_nats::Client, n: usize) -> Result<SwarmPulse> {
        let subjects = self.subjects.clone();
        let last = std::sync::Arc::new(std::sync::Mutex::new(String::from("no answer")));
        let waited = wait_for(&format!("{n} live workers"), WAIT, || {
            let (client, subjects, last) = (client.clone(), subjects.clone(), last.clone());
            async move {
                let p =
                    request::<_, SwarmPulse>(&client, subjects.status(), &serde_json::json!({}))
                        .await;
                *last.lock().expect("last") = format!("{p:?}");
                let p = p.ok()?;
                (p.live.len() == n).then_some(p)
            }
        })
        .await;
        waited.with_context(|| format!("last status: {}", last.lock().expect("last")))
    }
}

/// A command for `program`, inside `host`'s namespace when given.
fn in_host(host: Option<&netns::Host>, program: &Path) -> Command {
    match host {
        Some(h) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", &h.ns]).arg(program);
            c
        }
        None => Command::new(program),
    }
}
