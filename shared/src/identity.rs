//! Node identities: one NATS nkey per worker or master host, issued by `vgas node add` and cut
//! off by `vgas node revoke`. The registry (`<state dir>/nodes.toml`, mode 0600) holds each
//! node's name, role and public key; `auth.conf` is written from it and the role users, so a
//! revoked node is simply absent there. Its seed lives only in the node's credentials file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::config::Role;
use crate::error::VgaError;
use crate::ids::WorkerId;

/// The registry's file name under the state directory.
pub const NODES_FILE: &str = "nodes.toml";

/// Every node ever issued, revoked ones included (so a name is never reused by mistake).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeRegistry {
    #[serde(default, rename = "node")]
    pub nodes: Vec<NodeEntry>,
}

/// One node identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeEntry {
    /// The node's name: for a worker, the worker id it runs under (one subject token).
    pub name: WorkerId,
    /// `worker` or `master`.
    pub role: NodeRole,
    /// The nkey's public key (`U...`), what `auth.conf` lists.
    pub public_key: String,
    pub added_ms: u64,
    /// When it was revoked; a revoked node is left out of `auth.conf`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_ms: Option<u64>,
}

/// The roles a node identity can have (clients keep the shared client user).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum NodeRole {
    Worker,
    Master,
}

impl NodeRole {
    pub fn role(self) -> Role {
        match self {
            NodeRole::Worker => Role::Worker,
            NodeRole::Master => Role::Master,
        }
    }
}

impl NodeRegistry {
    pub fn path(state_dir: &Path) -> PathBuf {
        state_dir.join(NODES_FILE)
    }

    /// The registry under `state_dir`; empty when there is none yet.
    pub fn load(state_dir: &Path) -> Result<NodeRegistry, VgaError> {
        let path = Self::path(state_dir);
        match std::fs::read_to_string(&path) {
            Ok(text) => toml::from_str(&text)
                .map_err(|e| VgaError::Config(format!("{}: {}", path.display(), e.message()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(NodeRegistry::default()),
            Err(source) => Err(VgaError::Io {
                path: path.display().to_string(),
                source,
            }),
        }
    }

    /// The node named `name`, revoked or not.
    pub fn get(&self, name: &WorkerId) -> Option<&NodeEntry> {
        self.nodes.iter().find(|n| &n.name == name)
    }

    /// The nodes that may connect.
    pub fn active(&self) -> impl Iterator<Item = &NodeEntry> {
        self.nodes.iter().filter(|n| n.revoked_ms.is_none())
    }

    /// Where a node's credentials file is written under the state directory.
    pub fn creds_path(state_dir: &Path, name: &WorkerId) -> PathBuf {
        state_dir
            .join("creds")
            .join("nodes")
            .join(format!("{name}.creds"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_reads_back_what_it_wrote() {
        let reg = NodeRegistry {
            nodes: vec![NodeEntry {
                name: WorkerId::parse("gpu-box-1").unwrap(),
                role: NodeRole::Worker,
                public_key: "UABC".into(),
                added_ms: 1,
                revoked_ms: Some(2),
            }],
        };
        let text = toml::to_string(&reg).unwrap();
        assert!(text.contains("[[node]]"), "{text}");
        let back: NodeRegistry = toml::from_str(&text).unwrap();
        assert_eq!(back, reg);
        assert_eq!(back.active().count(), 0);
        assert!(toml::from_str::<NodeRegistry>(
            "[[node]]\nname = \"a b\"\nrole = \"worker\"\npublic_key = \"U\"\nadded_ms = 1\n"
        )
        .is_err());
    }
}
