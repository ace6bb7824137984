//! `vgas init`: the swarm's NATS users. A swarm that runs submitted commands is remote code
//! execution for whoever can publish, so vgas never runs on an open server: this writes one
//! nkey per role (the seed in a credentials file of mode 0600, only the public key in
//! `auth.conf`) and the `auth.conf` that `nats.conf` includes, granting each role only the
//! subjects it needs, plus each node identity of `vgas node add` (see [`crate::nodes`]).

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use vgas_shared::config::{Credentials, Role};
use vgas_shared::identity::NodeRegistry;
use vgas_shared::subjects::Permissions;
use vgas_shared::Subjects;

use crate::files::write_private;
use crate::tls::TlsArgs;

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    pub auth_conf: PathBuf,
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
    /// `tls.conf`, and whether it turns TLS on.
    pub tls_conf: PathBuf,
    pub tls: bool,
}

/// Creates missing credentials under `state_dir`, the swarm's CA and server certificate
/// (unless `--no-tls`), and (re)writes `auth.conf` and `tls.conf`. Existing credentials and
/// certificates are kept, so running it again changes nothing; the credentials get the CA.
pub fn init(state_dir: &Path, subjects: &Subjects, tls: &TlsArgs) -> Result<InitReport> {
    let creds_dir = state_dir.join("creds");
    fs::create_dir_all(&creds_dir).with_context(|| format!("create {}", creds_dir.display()))?;
    fs::set_permissions(&creds_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict {}", creds_dir.display()))?;
    let ca = crate::tls::ensure(state_dir, tls)?;
    let mut report = InitReport {
        auth_conf: state_dir.join("auth.conf"),
        created: Vec::new(),
        kept: Vec::new(),
        tls_conf: crate::tls::TlsFiles::new(state_dir).conf,
        tls: ca.is_some(),
    };
    for role in Role::ALL {
        let path = role.creds_path(state_dir);
        if path.exists() {
            let mut creds = Credentials::load(&path)?;
            let before = (creds.ca.clone(), creds.cert.is_some());
            creds.ca = ca.clone();
            crate::tls::give_client_cert(state_dir, &mut creds)?;
            if before != (creds.ca.clone(), creds.cert.is_some()) {
                write_creds(&path, &creds)?;
            }
            report.kept.push(path);
        } else {
            let mut creds = new_nkey(None, ca.clone());
            crate::tls::give_client_cert(state_dir, &mut creds)?;
            write_creds(&path, &creds)?;
            report.created.push(path);
        }
    }
    write_auth(state_dir, subjects)?;
    Ok(report)
}

/// A fresh nkey identity: the public key as its user, the seed to sign with.
pub(crate) fn new_nkey(node: Option<String>, ca: Option<String>) -> Credentials {
    let kp = nkeys::KeyPair::new_user();
    Credentials {
        user: kp.public_key(),
        password: String::new(),
        seed: Some(kp.seed().expect("a generated key pair has its seed")),
        node,
        ca,
        cert: None,
        key: None,
    }
}

/// Writes a credentials file (mode 0600).
pub(crate) fn write_creds(path: &Path, creds: &Credentials) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("restrict {}", dir.display()))?;
    }
    let text = toml::to_string(creds).context("encode credentials")?;
    write_private(path, text.as_bytes())
}

/// (Re)writes `state_dir/auth.conf` from the role credentials and the active node
/// identities of the registry.
pub fn write_auth(state_dir: &Path, subjects: &Subjects) -> Result<PathBuf> {
    let mut users = Vec::new();
    for role in Role::ALL {
        let creds = Credentials::load(&role.creds_path(state_dir))?;
        users.push((creds_auth(&creds), subjects.permissions(role)));
    }
    for node in NodeRegistry::load(state_dir)?.active() {
        users.push((
            UserAuth::Nkey(node.public_key.clone()),
            subjects.node_permissions(node.role, &node.name),
        ));
    }
    let path = state_dir.join("auth.conf");
    write_private(&path, auth_conf(&users).as_bytes())?;
    Ok(path)
}

/// How a user proves itself to nats-server, as `auth.conf` lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UserAuth {
    /// An nkey's public key: nothing secret in the file.
    Nkey(String),
    /// A user and password from a credentials file made before nkeys.
    Password { user: String, password: String },
}

fn creds_auth(c: &Credentials) -> UserAuth {
    match &c.seed {
        Some(_) => UserAuth::Nkey(c.user.clone()),
        None => UserAuth::Password {
            user: c.user.clone(),
            password: c.password.clone(),
        },
    }
}

/// A list of subjects as nats-server's configuration writes it.
fn quoted(subjects: &[String]) -> String {
    let items: Vec<String> = subjects.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// The `authorization` block for nats-server: each user with exactly its grants.
pub fn auth_conf(users: &[(UserAuth, Permissions)]) -> String {
    let mut out = String::from(
        "# Written by `vgas init` and `vgas node`: one nkey per role and per node, each with only\n\
         # the subjects it needs. Public keys only: the seeds live in creds/ beside this file and\n\
         # on the nodes. Regenerate with `vgas init`.\n\
         authorization {\n  users = [\n",
    );
    for (auth, p) in users {
        let responses = if p.allow_responses {
            ", allow_responses: true"
        } else {
            ""
        };
        let who = match auth {
            UserAuth::Nkey(public) => format!("nkey: \"{public}\""),
            UserAuth::Password { user, password } => {
                format!("user: \"{user}\", password: \"{password}\"")
            }
        };
        out.push_str(&format!(
            "    {{ {who}, permissions: {{ publish: {{ allow: {} }}, subscribe: {{ allow: {} }}{responses} }} }}\n",
            quoted(&p.publish),
            quoted(&p.subscribe)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        let first = init(dir.path(), &s, &TlsArgs::default()).unwrap();
        assert_eq!(first.created.len(), 3);
        let conf1 = fs::read_to_string(&first.auth_conf).unwrap();
        let second = init(dir.path(), &s, &TlsArgs::default()).unwrap();
        assert!(second.created.is_empty());
        assert_eq!(conf1, fs::read_to_string(&second.auth_conf).unwrap());
        for p in first.created.iter().chain([&first.auth_conf]) {
            let mode = fs::metadata(p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{}", p.display());
        }
        assert!(conf1.contains("\"vgas.task.submit\""));
        assert!(conf1.contains("\"vgas.llm.complete\""));
        assert!(conf1.contains("\"$O.vgas_modules.>\""));
        assert!(conf1.contains("\"$JS.API.STREAM.INFO.OBJ_vgas_modules\""));
        assert!(conf1.contains("\"$O.vgas_artifacts.>\""));
        assert!(conf1.contains("\"$JS.API.STREAM.INFO.OBJ_vgas_artifacts\""));
        // Public keys only: no seed and no password in the server's file.
        for role in Role::ALL {
            let c = Credentials::load(&role.creds_path(dir.path())).unwrap();
            assert!(c.user.starts_with('U') && conf1.contains(&c.user));
            assert!(!conf1.contains(c.seed.as_deref().unwrap()));
        }
        assert!(!conf1.contains("password"));
    }
}
