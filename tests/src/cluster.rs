//! A swarm on a NATS cluster: several nats-servers, each started from the repository's
//! `nats.conf` in its own folder with a copy of one `vgas init`'s state and its own
//! `vgas init --cluster-node` (routes on loopback), as `docs/cluster.md` tells people to do.
//! The processes of the swarm get every server's URL.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vgas_shared::config::Role;
use vgas_shared::Subjects;

use crate::{bin, free_port, wait_for, Proc, Swarm, WAIT};

/// One server of the cluster.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub route_port: u16,
    pub monitor_port: u16,
    pub server: Proc,
}

impl Node {
    /// This server's client URL alone.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// The servers and the swarm that runs on them (its `server` is a stand-in: each node's
/// process is in `nodes`).
#[derive(Debug)]
pub struct Cluster {
    pub swarm: Swarm,
    pub nodes: Vec<Node>,
}

/// Runs `vgas init` with `args` for the state directory `state`.
fn init(state: &Path, args: &[String]) -> Result<()> {
    let out = Command::new(bin("vgas"))
        .arg("init")
        .arg("--state-dir")
        .arg(state)
        .args(args)
        .env("VGAS_NO_MDNS", "true")
        .output()
        .context("run vgas init")?;
    if !out.status.success() {
        bail!("vgas init failed: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

impl Cluster {
    /// Starts `n` clustered servers (TLS on routes and clients when `tls`) and waits until
    /// JetStream answers through them.
    pub async fn start(n: usize, tls: bool) -> Result<Cluster> {
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let all: Vec<String> = ports
            .iter()
            .flat_map(|(_, r, _)| ["--route".to_owned(), format!("127.0.0.1:{r}")])
            .collect();
        Self::start_routed(ports, vec![all; n], tls).await
    }

    /// Two servers whose routes run only through [`Link`]s the test can cut: each dials the
    /// other through one, and advertises the one that leads to itself, so that no server
    /// learns the other's real route address and dials it around the links.
    pub async fn pair_over_links() -> Result<(Cluster, [Link; 2])> {
        let ports: Vec<(u16, u16, u16)> = (0..2)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        let to_second = Link::start(([127, 0, 0, 1], ports[1].1).into()).await?;
        let to_first = Link::start(([127, 0, 0, 1], ports[0].1).into()).await?;
        let (first, second) = (
            format!("127.0.0.1:{}", to_first.port),
            format!("127.0.0.1:{}", to_second.port),
        );
        let args = vec![
            vec![
                "--route".into(),
                second.clone(),
                "--cluster-advertise".into(),
                first.clone(),
            ],
            vec![
                "--route".into(),
                first,
                "--cluster-advertise".into(),
                second,
            ],
        ];
        let cluster = Self::start_routed(ports, args, false).await?;
        Ok((cluster, [to_second, to_first]))
    }

    /// Starts one server per `(client, route, monitor)` port triple, node `i` with the
    /// further `vgas init` arguments `extra[i]` (its routes).
    async fn start_routed(
        ports: Vec<(u16, u16, u16)>,
        extra: Vec<Vec<String>>,
        tls: bool,
    ) -> Result<Cluster> {
        let n = ports.len();
        let root = tempfile::Builder::new().prefix("vgas-cluster-").tempdir()?;
        let names: Vec<String> = (1..=n).map(|i| format!("n{i}")).collect();
        let first_state = root.path().join(".vgas");
        let first: Vec<String> = if tls { vec![] } else { vec!["--no-tls".into()] };
        init(&first_state, &first)?;
        let mut nodes = Vec::with_capacity(n);
        for ((name, &(port, route_port, monitor_port)), extra) in
            names.iter().zip(&ports).zip(&extra)
        {
            let dir = root.path().join(name);
            std::fs::create_dir_all(&dir)?;
            // The state directory travels to each server; each then makes its own part.
            let copied = Command::new("cp")
                .arg("-a")
                .arg(&first_state)
                .arg(dir.join(".vgas"))
                .status()?;
            anyhow::ensure!(copied.success(), "copy the state directory");
            std::fs::copy(crate::repo_root().join("nats.conf"), dir.join("nats.conf"))?;
            let mut args = vec![
                if tls { "--renew-tls" } else { "--no-tls" }.to_owned(),
                "--cluster-node".into(),
                name.clone(),
                "--cluster-listen".into(),
                format!("127.0.0.1:{route_port}"),
            ];
            args.extend(extra.iter().cloned());
            init(&dir.join(".vgas"), &args)?;
            let server = Swarm::spawn_server(&dir, port, monitor_port, None)?;
            nodes.push(Node {
                name: name.clone(),
                dir,
                port,
                route_port,
                monitor_port,
                server,
            });
        }
        let urls: Vec<String> = ports
            .iter()
            .map(|(p, _, _)| format!("nats://127.0.0.1:{p}"))
            .collect();
        let stand_in = Proc {
            name: "cluster".into(),
            child: None,
            log: nodes[0].server.log.clone(),
        };
        let cluster = Cluster {
            swarm: Swarm {
                dir: root,
                port: nodes[0].port,
                monitor_port: nodes[0].monitor_port,
                server: stand_in,
                subjects: Subjects::default(),
                procs_started: 0,
                server_host: None,
                urls: Some(urls.join(",")),
            },
            nodes,
        };
        for node in &cluster.nodes {
            wait_for(&format!("{} ready", node.name), WAIT, || async {
                node.server
                    .log_text()
                    .contains("Server is ready")
                    .then_some(())
            })
            .await?;
        }
        cluster.wait_jetstream().await?;
        Ok(cluster)
    }

    /// Waits until JetStream answers (the cluster elected its meta leader).
    pub async fn wait_jetstream(&self) -> Result<()> {
        let client = self.swarm.connect(Role::Master).await?;
        let js = async_nats::jetstream::new(client);
        let ready = wait_for("JetStream on the cluster", WAIT, || {
            let js = js.clone();
            async move { js.query_account().await.ok().map(|_| ()) }
        })
        .await;
        ready.with_context(|| {
            let tails: Vec<String> = self
                .nodes
                .iter()
                .map(|n| {
                    let log = n.server.log_text();
                    let tail: Vec<&str> = log.lines().rev().take(15).collect();
                    format!(
                        "{}:\n{}",
                        n.name,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )
                })
                .collect();
            tails.join("\n")
        })
    }

    /// The node by name.
    pub fn node(&mut self, name: &str) -> &mut Node {
        self.nodes
            .iter_mut()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no node {name}"))
    }

    /// The server that leads `stream` now, and the servers that keep its copies.
    pub async fn stream_peers(
        &self,
        client: &async_nats::Client,
        stream: &str,
    ) -> Result<(String, usize)> {
        let js = async_nats::jetstream::new(client.clone());
        let mut s = js.get_stream(stream).await?;
        let info = s.info().await?;
        let cluster = info
            .cluster
            .clone()
            .context("the stream has no cluster info")?;
        let leader = cluster.leader.context("the stream has no leader")?;
        Ok((leader, info.config.num_replicas))
    }

    /// Starts a killed node again on its ports and store.
    pub fn restart(&mut self, name: &str) -> Result<()> {
        let node = self.node(name);
        node.server.kill();
        node.server = Swarm::spawn_server(&node.dir, node.port, node.monitor_port, None)?;
        Ok(())
    }
}

/// How long the cluster's servers take to agree on a new stream leader after one dies,
/// bounded for the tests' waits.
pub const ELECTION: Duration = Duration::from_secs(20);

/// A leaf site: a nats-server with a copy of the hub's state directory, linked to the hub's
/// leaf listener at `remote` (`vgas init --leaf-remote`), as `docs/cluster.md` tells.
#[derive(Debug)]
pub struct Site {
    pub dir: PathBuf,
    pub port: u16,
    pub server: Proc,
}

impl Site {
    /// Starts the site's server in a folder under the hub's, and waits until it is ready.
    pub async fn start(hub: &Swarm, remote: &str) -> Result<Site> {
        let dir = hub.dir.path().join("site");
        std::fs::create_dir_all(&dir)?;
        let copied = Command::new("cp")
            .arg("-a")
            .arg(hub.state_dir())
            .arg(dir.join(".vgas"))
            .status()?;
        anyhow::ensure!(copied.success(), "copy the state directory");
        std::fs::copy(crate::repo_root().join("nats.conf"), dir.join("nats.conf"))?;
        init(
            &dir.join(".vgas"),
            &["--renew-tls".into(), "--leaf-remote".into(), remote.into()],
        )?;
        let port = free_port();
        let server = Swarm::spawn_server(&dir, port, free_port(), None)?;
        wait_for("the site's server ready", WAIT, || async {
            server.log_text().contains("Server is ready").then_some(())
        })
        .await?;
        Ok(Site { dir, port, server })
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

/// A TCP link that can be cut: forwards connections from a local port to `to`; `cut` drops
/// every connection and refuses new ones until `heal`.
#[derive(Debug)]
pub struct Link {
    pub port: u16,
    up: std::sync::Arc<std::sync::atomic::AtomicBool>,
    conns: std::sync::Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
    accept: tokio::task::JoinHandle<()>,
}

impl Link {
    pub async fn start(to: std::net::SocketAddr) -> Result<Link> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let up = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let conns = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (up2, conns2) = (up.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !up2.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let task = tokio::spawn(async move {
                    if let Ok(mut outbound) = tokio::net::TcpStream::connect(to).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
                    }
                });
                conns2.lock().unwrap().push(task.abort_handle());
            }
        });
        Ok(Link {
            port,
            up,
            conns,
            accept,
        })
    }

    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for c in self.conns.lock().unwrap().drain(..) {
            c.abort();
        }
    }

    pub fn heal(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}
