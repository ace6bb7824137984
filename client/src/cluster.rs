//! `vgas init --cluster-node`: past one server. Writes `<state dir>/cluster.conf`, which
//! `nats.conf` includes, with this server's part of a NATS cluster (its name, the route
//! listener, the routes to the other servers; JetStream runs on every node and replicates
//! with Raft) and of leaf nodes (a hub's leaf listener, or a remote site's link to its hub).
//!
//! Routes and leaf links are authenticated. With TLS (the default) both ends show a
//! certificate from the swarm's CA and verify the other's (the server certificate is made for
//! server and client use); routes without TLS, and leaf links always, carry a shared secret,
//! `cluster-secret` in the state directory (mode 0600), which travels with the state
//! directory to the other servers.

use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Result};

use crate::files::write_private;

/// The configuration fragment `nats.conf` includes, under the state directory.
pub const CLUSTER_CONF: &str = "cluster.conf";

/// The shared secret of leaf links, and of routes when TLS is off.
const SECRET_FILE: &str = "cluster-secret";

/// The port routes listen on by default (NATS' own default).
pub const DEFAULT_ROUTE_PORT: u16 = 6222;

/// Seconds a route or leaf link has to finish its TLS handshake (as for clients).
const HANDSHAKE_TIMEOUT_S: u32 = 2;

/// How `vgas init` places this server among others.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct ClusterArgs {
    /// Make this server a node of a NATS cluster, named NAME (unique per server; JetStream
    /// replicates the swarm's state across the nodes).
    #[arg(long = "cluster-node", value_name = "NAME")]
    pub node: Option<String>,
    /// Another node of the cluster, `HOST:PORT` of its route listener (repeatable; naming
    /// this node too is harmless, so every node can get the same list).
    #[arg(long = "route", value_name = "HOST:PORT", requires = "node")]
    pub routes: Vec<String>,
    /// Where this node listens for routes.
    #[arg(long = "cluster-listen", value_name = "ADDR:PORT", requires = "node",
          default_value_t = format!("0.0.0.0:{DEFAULT_ROUTE_PORT}"))]
    pub listen: String,
    /// The route address other nodes should dial to reach this one, when it differs from
    /// the listen address (behind NAT, a proxy or a port forward).
    #[arg(
        long = "cluster-advertise",
        value_name = "HOST:PORT",
        requires = "node"
    )]
    pub advertise: Option<String>,
    /// Take leaf-node links from remote sites on this address (the hub side).
    #[arg(long = "leaf-listen", value_name = "ADDR:PORT")]
    pub leaf_listen: Option<String>,
    /// Make this server a leaf node of the hub at URL (`HOST:PORT` of the hub's leaf
    /// listener): a remote site. It keeps no JetStream state of its own; the site's workers
    /// use the hub's.
    #[arg(
        long = "leaf-remote",
        value_name = "HOST:PORT",
        conflicts_with = "node"
    )]
    pub leaf_remote: Option<String>,
}

/// TLS files the links use, when TLS is on.
#[derive(Debug, Clone)]
pub struct LinkTls {
    pub ca: PathBuf,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Checks a `HOST:PORT`.
fn host_port(what: &str, s: &str) -> Result<()> {
    match s.rsplit_once(':') {
        Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0) => Ok(()),
        _ => bail!("{what} {s:?} is not HOST:PORT"),
    }
}

/// A server name nats-server takes in its configuration, unquoted inside quotes.
fn plain_name(what: &str, s: &str) -> Result<()> {
    let ok = !s.is_empty()
        && s.len() <= 64
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'));
    if !ok {
        bail!("{what} {s:?}: use 1 to 64 letters, digits, '-' or '_'");
    }
    Ok(())
}

/// Writes `cluster.conf` for `args` (a comment only for a lone server); `cluster` is the
/// swarm's cluster name, which the NATS cluster takes too.
pub fn write(
    state_dir: &Path,
    args: &ClusterArgs,
    cluster: &str,
    tls: Option<&LinkTls>,
) -> Result<PathBuf> {
    // Made with the keys, so every copy of this state directory carries the same one, even
    // one copied before this server joined a cluster.
    secret(state_dir)?;
    let path = state_dir.join(CLUSTER_CONF);
    let text = render(state_dir, args, cluster, tls)?;
    write_private(&path, text.as_bytes())?;
    Ok(path)
}

/// How often a clustered or linked server pings its routes, leaf links and clients when
/// they are quiet (nats-server's `ping_interval`).
pub const LINK_PING_INTERVAL: &str = "2s";

/// Pings left unanswered before a server drops the link (`ping_max`): a silent cut is noticed
/// within about 4 to 6 seconds.
pub const LINK_PINGS_MISSED: u32 = 2;

fn render(
    state_dir: &Path,
    args: &ClusterArgs,
    cluster: &str,
    tls: Option<&LinkTls>,
) -> Result<String> {
    let mut out = String::from(
        "# Written by `vgas init` (--cluster-node, --route, --leaf-listen, --leaf-remote).\n",
    );
    if args.node.is_none() && args.leaf_listen.is_none() && args.leaf_remote.is_none() {
        out.push_str("# One server: no cluster routes, no leaf nodes.\n");
        return Ok(out);
    }
    // Routes prove themselves by certificate when TLS is on; a leaf link always carries the
    // secret too (the hub takes a leaf connection as a user of its own).
    let secret = secret(state_dir)?;
    let route_secret = tls.is_none().then_some(secret.as_str());
    let tls_block = |indent: &str, verify: bool| -> String {
        let Some(t) = tls else { return String::new() };
        let verify = if verify { "verify: true, " } else { "" };
        format!(
            "{indent}tls {{ cert_file: \"{}\", key_file: \"{}\", ca_file: \"{}\", {verify}timeout: {HANDSHAKE_TIMEOUT_S} }}\n",
            t.cert.display(),
            t.key.display(),
            t.ca.display()
        )
    };
    // A secret-bearing URL: `scheme://user:secret@host:port`.
    let url = |scheme: &str, user: &str, secret: Option<&str>, hp: &str| match secret {
        Some(s) => format!("{scheme}://{user}:{s}@{hp}"),
        None => format!("{scheme}://{hp}"),
    };
    if let Some(node) = &args.node {
        plain_name("--cluster-node", node)?;
        plain_name("the cluster name", cluster)?;
        host_port("--cluster-listen", &args.listen)?;
        for r in &args.routes {
            host_port("--route", r)?;
        }
        let routes: Vec<String> = args
            .routes
            .iter()
            .map(|r| format!("\"{}\"", url("nats-route", "route", route_secret, r)))
            .collect();
        writeln!(out, "server_name: \"{node}\"")?;
        writeln!(out, "cluster {{")?;
        writeln!(out, "  name: \"{cluster}\"")?;
        writeln!(out, "  listen: \"{}\"", args.listen)?;
        if let Some(a) = &args.advertise {
            host_port("--cluster-advertise", a)?;
            writeln!(out, "  advertise: \"{a}\"")?;
        }
        writeln!(out, "  routes: [{}]", routes.join(", "))?;
        if let Some(s) = &route_secret {
            writeln!(
                out,
                "  authorization {{ user: \"route\", password: \"{s}\" }}"
            )?;
        }
        // Routes verify each other's certificate whatever this says (nats-server's rule).
        out.push_str(&tls_block("  ", true));
        out.push_str("}\n");
    }
    if args.leaf_listen.is_some() || args.leaf_remote.is_some() {
        out.push_str("leafnodes {\n");
        if let Some(listen) = &args.leaf_listen {
            host_port("--leaf-listen", listen)?;
            writeln!(out, "  listen: \"{listen}\"")?;
            writeln!(
                out,
                "  authorization {{ user: \"leaf\", password: \"{secret}\" }}"
            )?;
            out.push_str(&tls_block("  ", true));
        }
        if let Some(hub) = &args.leaf_remote {
            host_port("--leaf-remote", hub)?;
            let scheme = if tls.is_some() { "tls" } else { "nats-leaf" };
            writeln!(out, "  remotes: [ {{")?;
            writeln!(
                out,
                "    url: \"{}\"",
                url(scheme, "leaf", Some(&secret), hub)
            )?;
            out.push_str(&tls_block("    ", false));
            writeln!(out, "  }} ]")?;
        }
        out.push_str("}\n");
    }
    // A link cut without a word (a cable pulled, packets dropped) is noticed only by pings
    // left unanswered: at nats-server's default interval (2 min) a server keeps a dead route
    // or leaf link for minutes, and sends it the share of queue-group requests (the LLM
    // gateway's, the view's) that belongs to subscribers on the other side, where they are
    // lost. This applies to clients, routes and leaf links alike.
    writeln!(out, "ping_interval: \"{LINK_PING_INTERVAL}\"")?;
    writeln!(out, "ping_max: {LINK_PINGS_MISSED}")?;
    if args.leaf_remote.is_some() {
        // A site keeps no JetStream of its own: its clients' JetStream requests cross the
        // link to the hub, so the swarm has one set of task records and results.
        out.push_str("jetstream: disabled\n");
    }
    Ok(out)
}

/// The shared secret of routes and leaf links, made once.
fn secret(state_dir: &Path) -> Result<String> {
    let path = state_dir.join(SECRET_FILE);
    if let Ok(s) = fs::read_to_string(&path) {
        let s = s.trim().to_owned();
        if s.len() >= 32 && s.chars().all(|c| c.is_ascii_hexdigit()) {
            return Ok(s);
        }
        bail!("{} is not a vgas cluster secret", path.display());
    }
    let bytes: [u8; 24] = rand::random();
    let s = hex::encode(bytes);
    write_private(&path, s.as_bytes())?;
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(node: Option<&str>, routes: &[&str]) -> ClusterArgs {
        ClusterArgs {
            node: node.map(str::to_owned),
            routes: routes.iter().map(|r| r.to_string()).collect(),
            listen: "0.0.0.0:6222".into(),
            advertise: None,
            leaf_listen: None,
            leaf_remote: None,
        }
    }

    #[test]
    fn a_lone_server_gets_a_comment_only() {
        let dir = tempfile::tempdir().unwrap();
        let text = render(dir.path(), &args(None, &[]), "vgas", None).unwrap();
        assert!(text.lines().all(|l| l.starts_with('#')), "{text}");
    }

    #[test]
    fn routes_verify_certificates_or_carry_the_secret() {
        let dir = tempfile::tempdir().unwrap();
        let tls = LinkTls {
            ca: "/s/ca.pem".into(),
            cert: "/s/cert.pem".into(),
            key: "/s/key.pem".into(),
        };
        let a = args(Some("n1"), &["h2:6222", "h3:6222"]);
        let text = render(dir.path(), &a, "vgas", Some(&tls)).unwrap();
        assert!(text.contains("server_name: \"n1\""), "{text}");
        assert!(text.contains("\"nats-route://h2:6222\", \"nats-route://h3:6222\""));
        assert!(text.contains("verify: true"));
        assert!(!text.contains("password"));
        assert!(
            text.contains("ping_interval: \"2s\"\nping_max: 2\n"),
            "{text}"
        );
        let plain = render(dir.path(), &a, "vgas", None).unwrap();
        let secret = fs::read_to_string(dir.path().join(SECRET_FILE)).unwrap();
        assert!(plain.contains(&format!("nats-route://route:{secret}@h2:6222")));
        assert!(plain.contains(&format!("password: \"{secret}\"")));
        // The same secret the next time: every node gets one copy of the state directory.
        assert_eq!(plain, render(dir.path(), &a, "vgas", None).unwrap());
    }

    #[test]
    fn a_site_links_to_its_hub_without_jetstream_of_its_own() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args(None, &[]);
        a.leaf_remote = Some("hub.lan:7422".into());
        let text = render(dir.path(), &a, "vgas", None).unwrap();
        assert!(text.contains("url: \"nats-leaf://leaf:"), "{text}");
        assert!(text.contains("@hub.lan:7422\""), "{text}");
        assert!(text.contains("jetstream: disabled"));
    }

    #[test]
    fn bad_names_and_addresses_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        for (node, route) in [("n 1", "h:1"), ("n1", "h2"), ("n1", ":6222"), ("n1", "h:0")] {
            let e = render(dir.path(), &args(Some(node), &[route]), "vgas", None);
            assert!(e.is_err(), "{node} {route}");
        }
        let e = render(dir.path(), &args(Some("n1"), &[]), "bad name", None).unwrap_err();
        assert!(e.to_string().contains("cluster name"), "{e}");
    }
}
