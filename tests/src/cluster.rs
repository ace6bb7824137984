//! A swarm on a NATS cluster: several nats-servers, each started from the repository's
//! `nats.conf` in its own folder with a copy of one `vgas init`'s state and its own
//! `vgas init --cluster-node`, as `docs/cluster.md` tells people to do. The tests put each
//! server on a host of its own ([`Cluster::start_on`]: a network namespace of a
//! [`crate::netns::Lan`], routes over the LAN, a certificate that names the host's address);
//! the benchmark puts them all on this machine ([`Cluster::start`]: routes on loopback). The
//! processes of the swarm get every server's URL.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use vgas_shared::config::Role;
use vgas_shared::Subjects;

use crate::netns::Host;
use crate::{bin, free_port, wait_for, Proc, Swarm, WAIT};

/// One server of the cluster.
#[derive(Debug)]
pub struct Node {
    pub name: String,
    pub dir: PathBuf,
    pub port: u16,
    pub route_port: u16,
    pub monitor_port: u16,
    /// The host it runs on; `None`: this machine, on loopback.
    pub host: Option<Host>,
    pub server: Proc,
}

impl Node {
    /// The address its clients and routes reach it at.
    pub fn addr(&self) -> Ipv4Addr {
        host_addr(self.host.as_ref())
    }

    /// This server's client URL alone.
    pub fn url(&self) -> String {
        format!("nats://{}:{}", self.addr(), self.port)
    }

    /// How many route connections this server (this start of it) has closed so far.
    pub fn routes_closed(&self) -> usize {
        self.server
            .log_text()
            .matches("Router connection closed")
            .count()
    }
}

fn host_addr(host: Option<&Host>) -> Ipv4Addr {
    host.map(|h| h.addr).unwrap_or(Ipv4Addr::LOCALHOST)
}

/// The servers and the swarm that runs on them (its `server` is a stand-in: each node's
/// process is in `nodes`). Fields drop in order: the servers are killed before the swarm's
/// folder, which holds their stores, is removed (a running server wrote into it while it
/// was removed, and left it behind).
#[derive(Debug)]
pub struct Cluster {
    pub nodes: Vec<Node>,
    pub swarm: Swarm,
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

/// Copies `state` (a state directory) and the repository's `nats.conf` into `dir`, as a
/// person does for each further server.
fn copy_state(state: &Path, dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir)?;
    let copied = Command::new("cp")
        .arg("-a")
        .arg(state)
        .arg(dir.join(".vgas"))
        .status()?;
    anyhow::ensure!(copied.success(), "copy the state directory");
    std::fs::copy(crate::repo_root().join("nats.conf"), dir.join("nats.conf"))?;
    Ok(())
}

impl Cluster {
    /// Starts `n` clustered servers on this machine, routes on loopback (TLS on routes and
    /// clients when `tls`), and waits until JetStream answers through them. The benchmark's
    /// cluster; the tests use [`Cluster::start_on`].
    pub async fn start(n: usize, tls: bool) -> Result<Cluster> {
        Self::start_placed(vec![None; n], tls).await
    }

    /// Starts one clustered server on each of `hosts` (namespaces of one LAN: each listens
    /// on its host's address, with routes to the others' addresses over the LAN and, with
    /// `tls`, a certificate that names its address), and waits until JetStream answers
    /// through them. The test reaches them over the LAN from its own namespace. As every
    /// clustered server `vgas init` configures, they ping each other over their routes every
    /// 2 s, so each drops a silently cut route within seconds ([`Node::routes_closed`] counts
    /// them).
    pub async fn start_on(hosts: &[Host], tls: bool) -> Result<Cluster> {
        Self::start_placed(hosts.iter().cloned().map(Some).collect(), tls).await
    }

    /// Starts one server per entry of `hosts`, on that host or on this machine.
    async fn start_placed(hosts: Vec<Option<Host>>, tls: bool) -> Result<Cluster> {
        let n = hosts.len();
        let ports: Vec<(u16, u16, u16)> = (0..n)
            .map(|_| (free_port(), free_port(), free_port()))
            .collect();
        // Every node gets the same list of routes (its own is ignored).
        let routes: Vec<String> = hosts
            .iter()
            .zip(&ports)
            .flat_map(|(h, (_, r, _))| {
                [
                    "--route".to_owned(),
                    format!("{}:{r}", host_addr(h.as_ref())),
                ]
            })
            .collect();
        let root = tempfile::Builder::new().prefix("vgas-cluster-").tempdir()?;
        let first_state = root.path().join(".vgas");
        let first: Vec<String> = if tls { vec![] } else { vec!["--no-tls".into()] };
        init(&first_state, &first)?;
        let mut nodes = Vec::with_capacity(n);
        for (i, (host, &(port, route_port, monitor_port))) in
            hosts.into_iter().zip(&ports).enumerate()
        {
            let name = format!("n{}", i + 1);
            let dir = root.path().join(&name);
            // The state directory travels to each server; each then makes its own part.
            copy_state(&first_state, &dir)?;
            let addr = host_addr(host.as_ref());
            let mut args = vec![
                "--cluster-node".to_owned(),
                name.clone(),
                "--cluster-listen".into(),
                format!("{addr}:{route_port}"),
            ];
            if tls {
                // Its own certificate, for its host's address too: clients and the other
                // servers' routes dial that address and check it.
                args.extend([
                    "--renew-tls".to_owned(),
                    "--tls-name".into(),
                    addr.to_string(),
                ]);
            } else {
                args.push("--no-tls".into());
            }
            args.extend(routes.iter().cloned());
            init(&dir.join(".vgas"), &args)?;
            let server = Swarm::spawn_server(&dir, port, monitor_port, host.as_ref())?;
            nodes.push(Node {
                name,
                dir,
                port,
                route_port,
                monitor_port,
                host,
                server,
            });
        }
        let urls: Vec<String> = nodes.iter().map(Node::url).collect();
        let stand_in = Proc::stand_in("cluster", nodes[0].server.log.clone());
        let cluster = Cluster {
            swarm: Swarm {
                dir: root,
                port: nodes[0].port,
                monitor_port: nodes[0].monitor_port,
                server: stand_in,
                subjects: Subjects::default(),
                procs_started: 0,
                server_host: nodes[0].host.clone(),
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
        node.server =
            Swarm::spawn_server(&node.dir, node.port, node.monitor_port, node.host.as_ref())?;
        Ok(())
    }
}

/// How long the cluster's servers take to agree on a new stream leader after one dies,
/// bounded for the tests' waits.
pub const ELECTION: Duration = Duration::from_secs(20);

/// A leaf site: a nats-server with a copy of the hub's state directory, linked to the hub's
/// leaf listener at `remote` (`vgas init --leaf-remote`), as `docs/cluster.md` tells, on a
/// host of its own or on this machine. Like every linked server `vgas init` configures, it
/// pings its hub every 2 s, so it notices a silently cut link within seconds.
#[derive(Debug)]
pub struct Site {
    pub dir: PathBuf,
    pub port: u16,
    /// The host it runs on; `None`: this machine.
    pub host: Option<Host>,
    pub server: Proc,
}

impl Site {
    /// Starts the site's server in a folder under the hub's, on `host` (its certificate
    /// names the host's address) or on this machine, and waits until it is ready.
    pub async fn start(hub: &Swarm, remote: &str, host: Option<&Host>) -> Result<Site> {
        let dir = hub.dir.path().join("site");
        copy_state(&hub.state_dir(), &dir)?;
        let mut args = vec![
            "--renew-tls".to_owned(),
            "--leaf-remote".into(),
            remote.into(),
        ];
        if let Some(h) = host {
            args.extend(["--tls-name".to_owned(), h.addr.to_string()]);
        }
        init(&dir.join(".vgas"), &args)?;
        let port = free_port();
        let server = Swarm::spawn_server(&dir, port, free_port(), host)?;
        wait_for("the site's server ready", WAIT, || async {
            server.log_text().contains("Server is ready").then_some(())
        })
        .await?;
        Ok(Site {
            dir,
            port,
            host: host.cloned(),
            server,
        })
    }

    pub fn url(&self) -> String {
        format!("nats://{}:{}", host_addr(self.host.as_ref()), self.port)
    }
}
