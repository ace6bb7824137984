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
    pub cluster: Option<String>,
    /// mDNS announcements and browsing (default on).
    pub mdns: Option<bool>,
    pub mdns_interfaces: Option<Vec<String>>,
    /// Copies JetStream keeps of every stream, bucket and object store vgas makes (1 to 5)
    /// [default: 1 on one server, up to 3 on a cluster].
    pub replicas: Option<Replicas>,
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
    /// Size bound of the swarm-wide build cache, in MiB (default 1024).
    pub build_cache_mb: Option<u64>,
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

/// How many copies JetStream keeps of a stream: 1 to [`Replicas::MAX`], JetStream's own
/// bound. Parsed, so a value of this type is one JetStream takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct Replicas(u8);

impl Replicas {
    /// JetStream keeps at most five copies of a stream.
    pub const MAX: u8 = 5;
    /// One copy: a single server.
    pub const ONE: Replicas = Replicas(1);

    pub fn get(self) -> usize {
        self.0 as usize
    }
}

impl TryFrom<u64> for Replicas {
    type Error = VgaError;
    fn try_from(n: u64) -> Result<Self, VgaError> {
        match u8::try_from(n) {
            Ok(n @ 1..=Replicas::MAX) => Ok(Replicas(n)),
            _ => Err(VgaError::Config(format!(
                "replicas must be 1 to {} (JetStream's bound), not {n}",
                Replicas::MAX
            ))),
        }
    }
}

impl From<Replicas> for u64 {
    fn from(r: Replicas) -> u64 {
        r.0 as u64
    }
}

impl std::str::FromStr for Replicas {
    type Err = VgaError;
    fn from_str(s: &str) -> Result<Self, VgaError> {
        let n: u64 = s
            .trim()
            .parse()
            .map_err(|_| VgaError::Config(format!("replicas must be a number, not {s:?}")))?;
        Replicas::try_from(n)
    }
}

impl std::fmt::Display for Replicas {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
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

/// A NATS identity, as stored in a `.creds` file (TOML, mode 0600): an nkey seed (what `vgas
/// init` and `vgas node add` write: the server's `auth.conf` holds only the public key), or a
/// user and password (files from before nkeys, still accepted).
#[derive(Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    /// The user name, or for an nkey its public key (`U...`).
    pub user: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub password: String,
    /// The nkey seed (`SU...`): the private half, never sent anywhere.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    /// A node identity's name (`vgas node add`): a worker with it runs under this id, the one
    /// its grants name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The swarm's CA certificate (PEM, public) when its server takes TLS: the process then
    /// insists on TLS and trusts only this CA.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<String>,
    /// A client certificate from the swarm's CA and its key (PEM), presented when the server
    /// asks for one (`vgas init --mutual-tls`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cert: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("seed", &self.seed.as_ref().map(|_| "<redacted>"))
            .field("node", &self.node)
            .field("tls", &self.ca.is_some())
            .field("client_cert", &self.cert.is_some())
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
    fn flags_beat_the_file_and_the_file_beats_defaults() {
        let dir = std::env::temp_dir().join(format!("vgas-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("vgas.toml");
        std::fs::write(
            &file,
            "nats_url = 'nats://from-file:1'\nprefix = 'filepre'\n",
        )
        .unwrap();
        let args = |url: Option<&str>| CommonArgs {
            nats_url: url.map(String::from),
            config: Some(file.clone()),
            state_dir: Some(dir.join("state")),
            ..Default::default()
        };
        let from_file = args(None).resolve(Role::Client).unwrap();
        assert_eq!(from_file.nats_url, "nats://from-file:1");
        assert_eq!(from_file.subjects.prefix(), "filepre");
        assert!(from_file.creds.is_none(), "no default creds file exists");
        let from_flag = args(Some("nats://flag:2")).resolve(Role::Client).unwrap();
        assert_eq!(from_flag.nats_url, "nats://flag:2");
        let defaults = CommonArgs {
            config: Some(dir.join("missing.toml")),
            ..Default::default()
        };
        assert!(
            defaults.resolve(Role::Client).is_err(),
            "a named config file must exist"
        );
        let none = CommonArgs {
            state_dir: Some(dir.join("state")),
            ..Default::default()
        };
        let d = none.resolve(Role::Worker).unwrap();
        assert_eq!(d.nats_url, DEFAULT_NATS_URL);
        assert_eq!(d.subjects.prefix(), "vgas");
        let creds_missing = CommonArgs {
            creds: Some(dir.join("nope.creds")),
            ..Default::default()
        };
        assert!(
            creds_missing.resolve(Role::Client).is_err(),
            "a named creds file must exist"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials {
            user: "u".into(),
            password: "s3cret".into(),
            seed: Some("SUseed".into()),
            node: None,
            ca: None,
            cert: None,
            key: Some("-----BEGIN PRIVATE KEY-----".into()),
        };
        assert!(!format!("{c:?}").contains("s3cret"));
        assert!(!format!("{c:?}").contains("SUseed"));
        assert!(!format!("{c:?}").contains("PRIVATE"));
    }
}

/// Connection settings every vgas binary takes, as flags or environment variables; a value
/// left out comes from the config file, then from the default.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct CommonArgs {
    /// NATS server URL; several, comma-separated, for a cluster [default: nats://127.0.0.1:4222]
    #[arg(long, env = "VGAS_NATS_URL", global = true)]
    pub nats_url: Option<String>,
    /// Credentials file (TOML with `user` and `password`) [default: <state-dir>/creds/<role>.creds]
    #[arg(long, env = "VGAS_CREDS", global = true)]
    pub creds: Option<PathBuf>,
    /// Subject prefix of this swarm [default: vgas]
    #[arg(long, env = "VGAS_PREFIX", global = true)]
    pub prefix: Option<String>,
    /// Configuration file [default: ./vgas.toml when it exists]
    #[arg(long, env = "VGAS_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// State folder (credentials, server auth file) [default: .vgas]
    #[arg(long, env = "VGAS_STATE_DIR", global = true)]
    pub state_dir: Option<PathBuf>,
    /// Cluster name: a worker joins only a master of its own cluster [default: vgas]
    #[arg(long, env = "VGAS_CLUSTER", global = true)]
    pub cluster: Option<String>,
    /// Neither announce nor browse over mDNS.
    #[arg(long, env = "VGAS_NO_MDNS", global = true)]
    pub no_mdns: bool,
    /// Network interface to use for mDNS (repeatable) [default: every non-loopback interface]
    #[arg(
        long = "mdns-interface",
        env = "VGAS_MDNS_INTERFACES",
        value_delimiter = ',',
        global = true
    )]
    pub mdns_interfaces: Vec<String>,
    /// Copies JetStream keeps of each stream and bucket vgas makes (1 to 5) [default: 1 on
    /// one server, up to 3 on a cluster]
    #[arg(long, env = "VGAS_REPLICAS", global = true)]
    pub replicas: Option<Replicas>,
}

/// mDNS settings after resolution; `None` in [`Resolved::mdns`] means mDNS is off.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MdnsConfig {
    /// Interfaces to announce and browse on; empty means every non-loopback interface.
    pub interfaces: Vec<String>,
}

/// Default NATS URL when neither flag, env nor file names one.
pub const DEFAULT_NATS_URL: &str = "nats://127.0.0.1:4222";

/// Connection settings after flags, environment, file and defaults are applied.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub nats_url: String,
    /// Whether the URL came from a flag, the environment or the file (a worker without one
    /// finds its master by mDNS).
    pub nats_url_explicit: bool,
    pub cluster: String,
    pub mdns: Option<MdnsConfig>,
    pub creds: Option<Credentials>,
    pub subjects: crate::Subjects,
    pub state_dir: PathBuf,
    /// Copies of each stream, when a flag, the environment or the file says.
    pub replicas: Option<Replicas>,
    pub file: FileConfig,
}

impl Resolved {
    /// The fingerprint of the CA these credentials trust (`sha256:<hex>`); `None` without
    /// TLS. What a master's mDNS advert carries and a worker compares it with.
    pub fn trusted_ca(&self) -> Option<String> {
        let ca = self.creds.as_ref()?.ca.as_deref()?;
        crate::discovery::ca_fingerprint(ca)
    }
}

impl CommonArgs {
    /// Applies the precedence rule for `role`. A credentials file named explicitly must exist;
    /// the default one is used only when present.
    pub fn resolve(&self, role: Role) -> Result<Resolved, VgaError> {
        let default_file = Path::new("vgas.toml");
        let file_path = self
            .config
            .clone()
            .or_else(|| default_file.exists().then(|| default_file.to_path_buf()));
        let file = FileConfig::load(file_path.as_deref())?;
        let state_dir = self
            .state_dir
            .clone()
            .or_else(|| file.state_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let file_creds = match role {
            Role::Master => file.master.creds.clone(),
            Role::Worker => file.worker.creds.clone(),
            Role::Client => file.client.creds.clone(),
        };
        let creds = match self.creds.clone().or(file_creds) {
            Some(path) => Some(Credentials::load(&path)?),
            None => {
                let path = role.creds_path(&state_dir);
                if path.exists() {
                    Some(Credentials::load(&path)?)
                } else {
                    None
                }
            }
        };
        let prefix = self
            .prefix
            .clone()
            .or_else(|| file.prefix.clone())
            .unwrap_or_else(|| crate::subjects::DEFAULT_PREFIX.to_owned());
        let explicit_url = self.nats_url.clone().or_else(|| file.nats_url.clone());
        let mdns_on = !self.no_mdns && file.mdns.unwrap_or(true);
        let interfaces = if self.mdns_interfaces.is_empty() {
            file.mdns_interfaces.clone().unwrap_or_default()
        } else {
            self.mdns_interfaces.clone()
        };
        Ok(Resolved {
            nats_url_explicit: explicit_url.is_some(),
            nats_url: explicit_url.unwrap_or_else(|| DEFAULT_NATS_URL.to_owned()),
            cluster: self
                .cluster
                .clone()
                .or_else(|| file.cluster.clone())
                .unwrap_or_else(|| crate::discovery::DEFAULT_CLUSTER.to_owned()),
            mdns: mdns_on.then_some(MdnsConfig { interfaces }),
            creds,
            subjects: crate::Subjects::new(&prefix)?,
            state_dir,
            replicas: self.replicas.or(file.replicas),
            file,
        })
    }
}
