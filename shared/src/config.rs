//! The TOML configuration file and the credentials files. Precedence is flags, then
//! environment variables, then this file, then built-in defaults; the binaries apply it.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::VgaError;

/// Default state folder: credentials, generated server config, JetStream store.
pub const DEFAULT_STATE_DIR: &str = ".vgas";

/// The whole `vgas.toml`. Every field is optional; unknown keys are an error so that a typo
/// does not silently fall back to a default.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    pub nats_url: Option<String>,
    pub prefix: Option<String>,
    pub state_dir: Option<PathBuf>,
    #[serde(default)]
    pub master: MasterFileConfig,
    #[serde(default)]
    pub worker: WorkerFileConfig,
    #[serde(default)]
    pub client: ClientFileConfig,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MasterFileConfig {
    pub creds: Option<PathBuf>,
    pub queue_capacity: Option<usize>,
    pub max_attempts: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFileConfig {
    pub creds: Option<PathBuf>,
    pub slots: Option<usize>,
    pub work_dir: Option<PathBuf>,
    pub capabilities: Option<Vec<String>>,
    pub memory_mb: Option<u64>,
    pub cpu_seconds: Option<u64>,
    pub max_processes: Option<u64>,
    pub output_cap_mb: Option<u64>,
    pub sandbox_uid_base: Option<u32>,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ClientFileConfig {
    pub creds: Option<PathBuf>,
}

impl FileConfig {
    /// Reads `path`. A missing file named explicitly is an error; `None` means "no file".
    pub fn load(path: Option<&Path>) -> Result<FileConfig, VgaError> {
        let Some(path) = path else {
            return Ok(FileConfig::default());
        };
        let text = std::fs::read_to_string(path).map_err(|source| VgaError::Io {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text)
            .map_err(|e| VgaError::Config(format!("{}: {}", path.display(), e.message())))
    }
}

/// The roles that get their own NATS user, each with only the permissions it needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    Master,
    Worker,
    Client,
}

impl Role {
    pub const ALL: [Role; 3] = [Role::Master, Role::Worker, Role::Client];

    pub fn name(self) -> &'static str {
        match self {
            Role::Master => "master",
            Role::Worker => "worker",
            Role::Client => "client",
        }
    }

    /// Where `vgas init` writes this role's credentials under the state folder.
    pub fn creds_path(self, state_dir: &Path) -> PathBuf {
        state_dir
            .join("creds")
            .join(format!("{}.creds", self.name()))
    }
}

/// A NATS user and password, as stored in a `.creds` file (TOML, mode 0600).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    pub fn load(path: &Path) -> Result<Credentials, VgaError> {
        let text = std::fs::read_to_string(path).map_err(|source| VgaError::Io {
            path: path.display().to_string(),
            source,
        })?;
        toml::from_str(&text)
            .map_err(|e| VgaError::Config(format!("{}: {}", path.display(), e.message())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_errors() {
        assert!(toml::from_str::<FileConfig>("nats_urll = 'x'").is_err());
        let c: FileConfig = toml::from_str("nats_url = 'nats://h:1'\n[worker]\nslots = 3").unwrap();
        assert_eq!(c.worker.slots, Some(3));
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            user: "u".into(),
            password: "s3cret".into(),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
    }
}
