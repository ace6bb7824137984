//! `vgas node add|revoke|list`: one NATS identity per host. `add` makes an nkey for a worker
//! or master node, writes its credentials file (to copy to that host; a worker with it runs
//! under the node's name, the only worker subjects its grants name) and lists its public key
//! in `auth.conf`; `revoke` takes it out. Either asks nats-server to reload its configuration
//! (SIGHUP to the pid in `<state dir>/nats.pid`, which `nats.conf` has it write): a revoked
//! node's connections are closed at once and it cannot connect again; nothing else restarts.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use vgas_shared::identity::{NodeEntry, NodeRegistry, NodeRole};
use vgas_shared::{now_ms, Subjects, WorkerId};

use crate::files::write_private;
use crate::init::{new_nkey, write_auth, write_creds};

/// Where nats-server writes its pid (`pid_file` in `nats.conf`), under the state directory.
pub const SERVER_PID_FILE: &str = "nats.pid";

/// What became of the request to reload nats-server's configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reload {
    /// SIGHUP sent to this pid.
    Signalled(i32),
    /// No live server pid at this path: reload it by hand (`nats-server --signal reload`).
    NotFound(PathBuf),
}

impl std::fmt::Display for Reload {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Reload::Signalled(pid) => write!(f, "nats-server (pid {pid}) reloads auth.conf"),
            Reload::NotFound(p) => write!(
                f,
                "no running nats-server found through {}: reload it yourself \
                 (`nats-server --signal reload`) for the change to take effect",
                p.display()
            ),
        }
    }
}

/// Issues a node identity; returns its credentials file and the reload.
pub fn add(
    state_dir: &Path,
    subjects: &Subjects,
    role: NodeRole,
    name: &WorkerId,
) -> Result<(PathBuf, Reload)> {
    let mut reg = NodeRegistry::load(state_dir)?;
    if let Some(old) = reg.get(name) {
        let state = if old.revoked_ms.is_some() {
            "was revoked; a name is never reused"
        } else {
            "exists"
        };
        bail!("node {name} {state}: pick another name");
    }
    let mut creds = new_nkey(Some(name.to_string()), crate::tls::current_ca(state_dir)?);
    crate::tls::give_client_cert(state_dir, &mut creds)?;
    let path = NodeRegistry::creds_path(state_dir, name);
    write_creds(&path, &creds)?;
    reg.nodes.push(NodeEntry {
        name: name.clone(),
        role,
        public_key: creds.user.clone(),
        added_ms: now_ms(),
        revoked_ms: None,
    });
    save(state_dir, &reg)?;
    write_auth(state_dir, subjects)?;
    Ok((path, reload_server(state_dir)))
}

/// Revokes a node identity: out of `auth.conf`, its credentials file here deleted.
pub fn revoke(state_dir: &Path, subjects: &Subjects, name: &WorkerId) -> Result<Reload> {
    let mut reg = NodeRegistry::load(state_dir)?;
    let Some(entry) = reg.nodes.iter_mut().find(|n| &n.name == name) else {
        bail!("no node {name} (see `vgas node list`)");
    };
    if entry.revoked_ms.is_some() {
        bail!("node {name} is already revoked");
    }
    entry.revoked_ms = Some(now_ms());
    save(state_dir, &reg)?;
    write_auth(state_dir, subjects)?;
    let creds = NodeRegistry::creds_path(state_dir, name);
    match fs::remove_file(&creds) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(e).with_context(|| format!("delete {}", creds.display()))
        }
        _ => {}
    }
    Ok(reload_server(state_dir))
}

/// The registry as a table.
pub fn list(state_dir: &Path) -> Result<String> {
    let reg = NodeRegistry::load(state_dir)?;
    let mut out = format!("{:<24} {:<7} {:<8} PUBLIC KEY\n", "NAME", "ROLE", "STATE");
    for n in &reg.nodes {
        let role = match n.role {
            NodeRole::Worker => "worker",
            NodeRole::Master => "master",
        };
        let state = if n.revoked_ms.is_some() {
            "revoked"
        } else {
            "active"
        };
        out.push_str(&format!(
            "{:<24} {role:<7} {state:<8} {}\n",
            n.name, n.public_key
        ));
    }
    Ok(out)
}

fn save(state_dir: &Path, reg: &NodeRegistry) -> Result<()> {
    let text = toml::to_string(reg).context("encode the node registry")?;
    write_private(&NodeRegistry::path(state_dir), text.as_bytes())
}

/// Asks the nats-server whose pid is in `<state dir>/nats.pid` to reload its configuration.
pub fn reload_server(state_dir: &Path) -> Reload {
    let path = state_dir.join(SERVER_PID_FILE);
    let pid = fs::read_to_string(&path)
        .ok()
        .and_then(|t| t.trim().parse::<i32>().ok())
        .filter(|p| *p > 1);
    match pid {
        // SAFETY: kill(2) with a pid read from the server's own pid file; no memory involved.
        Some(pid) if unsafe { libc::kill(pid, libc::SIGHUP) } == 0 => Reload::Signalled(pid),
        _ => Reload::NotFound(path),
    }
}
