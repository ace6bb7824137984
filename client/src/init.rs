//! `vgas init`: the swarm's NATS users. A swarm that runs submitted commands is remote code
//! execution for whoever can publish, so vgas never runs on an open server: this writes one
//! user per role with a random password (credentials files of mode 0600) and the
//! `auth.conf` that `nats.conf` includes, granting each role only the subjects it needs.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rand::distr::{Alphanumeric, SampleString};
use vgas_shared::config::{Credentials, Role};
use vgas_shared::Subjects;

/// Length of generated passwords: 32 alphanumerics is about 190 bits.
const PASSWORD_LEN: usize = 32;

/// What `init` did.
#[derive(Debug)]
pub struct InitReport {
    pub auth_conf: PathBuf,
    pub created: Vec<PathBuf>,
    pub kept: Vec<PathBuf>,
}

/// Creates missing credentials under `state_dir` and (re)writes `state_dir/auth.conf` from
/// them. Existing credentials are kept, so running it again changes nothing.
pub fn init(state_dir: &Path, subjects: &Subjects) -> Result<InitReport> {
    let creds_dir = state_dir.join("creds");
    fs::create_dir_all(&creds_dir).with_context(|| format!("create {}", creds_dir.display()))?;
    fs::set_permissions(&creds_dir, fs::Permissions::from_mode(0o700))
        .with_context(|| format!("restrict {}", creds_dir.display()))?;
    let mut report = InitReport {
        auth_conf: state_dir.join("auth.conf"),
        created: Vec::new(),
        kept: Vec::new(),
    };
    let mut users = Vec::new();
    for role in Role::ALL {
        let path = role.creds_path(state_dir);
        let creds = if path.exists() {
            report.kept.push(path.clone());
            Credentials::load(&path)?
        } else {
            let creds = Credentials {
                user: format!("{}-{}", subjects.prefix().replace('.', "-"), role.name()),
                password: Alphanumeric.sample_string(&mut rand::rng(), PASSWORD_LEN),
            };
            let text = toml::to_string(&creds).context("encode credentials")?;
            write_private(&path, text.as_bytes())?;
            report.created.push(path.clone());
            creds
        };
        users.push((role, creds));
    }
    write_private(&report.auth_conf, auth_conf(&users, subjects).as_bytes())?;
    Ok(report)
}

/// A list of subjects as nats-server's configuration writes it.
fn quoted(subjects: &[String]) -> String {
    let items: Vec<String> = subjects.iter().map(|s| format!("\"{s}\"")).collect();
    format!("[{}]", items.join(", "))
}

/// The `authorization` block for nats-server: each role with exactly the grants
/// `Subjects::permissions` gives it.
pub fn auth_conf(users: &[(Role, Credentials)], s: &Subjects) -> String {
    let mut out = String::from(
        "# Written by `vgas init`: one user per role, each with only the subjects it needs.\n\
         # Regenerate with `vgas init`; the credentials live in creds/ beside this file.\n\
         authorization {\n  users = [\n",
    );
    for (role, c) in users {
        let p = s.permissions(*role);
        let responses = if p.allow_responses {
            ", allow_responses: true"
        } else {
            ""
        };
        out.push_str(&format!(
            "    {{ user: \"{}\", password: \"{}\", permissions: {{ publish: {{ allow: {} }}, subscribe: {{ allow: {} }}{responses} }} }}\n",
            c.user,
            c.password,
            quoted(&p.publish),
            quoted(&p.subscribe)
        ));
    }
    out.push_str("  ]\n}\n");
    out
}

/// Writes `bytes` to `path` with mode 0600, atomically (temporary file, fsync, rename).
fn write_private(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("create {}", tmp.display()))?;
    f.write_all(bytes)
        .and_then(|_| f.sync_all())
        .with_context(|| format!("write {}", tmp.display()))?;
    fs::rename(&tmp, path)
        .with_context(|| format!("rename {} to {}", tmp.display(), path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn init_is_idempotent_and_private() {
        let dir = tempfile::tempdir().unwrap();
        let s = Subjects::default();
        let first = init(dir.path(), &s).unwrap();
        assert_eq!(first.created.len(), 3);
        let conf1 = fs::read_to_string(&first.auth_conf).unwrap();
        let second = init(dir.path(), &s).unwrap();
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
    }
}
