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

/// What reading an Object Store bucket backed by `stream` takes: stream info, the object's
/// meta, an ordered consumer over its chunks.
fn object_read(stream: &str) -> String {
    format!(
        "\"$JS.API.INFO\", \"$JS.API.STREAM.INFO.{stream}\", \"$JS.API.STREAM.MSG.GET.{stream}\", \
         \"$JS.API.DIRECT.GET.{stream}.>\", \"$JS.API.CONSUMER.CREATE.{stream}\", \
         \"$JS.API.CONSUMER.CREATE.{stream}.>\", \"$JS.API.CONSUMER.DELETE.{stream}.>\", \
         \"$JS.API.CONSUMER.INFO.{stream}.>\", \"$JS.FC.{stream}.>\""
    )
}

/// What putting into bucket `bucket` (stream `stream`) takes beyond reading: its chunks and
/// meta, and the purge that replacing an object does.
fn object_write(bucket: &str, stream: &str) -> String {
    format!("\"$O.{bucket}.>\", \"$JS.API.STREAM.PURGE.{stream}\"")
}

/// What reading KV bucket `bucket` takes: its stream's info and direct or API gets.
fn kv_read(bucket: &str) -> String {
    let stream = Subjects::kv_stream(bucket);
    format!(
        "\"$JS.API.STREAM.INFO.{stream}\", \"$JS.API.DIRECT.GET.{stream}.>\", \"$JS.API.STREAM.MSG.GET.{stream}\""
    )
}

/// The `authorization` block for nats-server.
pub fn auth_conf(users: &[(Role, Credentials)], s: &Subjects) -> String {
    let p = s.prefix();
    // The wasm modules bucket: workers read it (stream info, the object's meta, an ordered
    // consumer over its chunks); clients also put into it (chunks and meta, and the purge
    // that replacing an object does). The artifacts bucket the other way round: workers put
    // (and read the meta a put looks up), clients read.
    let (b, st) = (s.modules_bucket(), s.modules_stream());
    let modules_read = object_read(&st);
    let modules_write = object_write(&b, &st);
    let (ab, ast) = (s.artifacts_bucket(), s.artifacts_stream());
    let artifacts_read = object_read(&ast);
    let artifacts_write = object_write(&ab, &ast);
    // The build cache: clients read and write the index and the objects (a submitter stores
    // what it compiled); clients put segment sources too large for a task, workers read them.
    let (cb, ob, sb) = (
        s.build_cache_bucket(),
        s.build_objects_bucket(),
        s.build_sources_bucket(),
    );
    let (ost, sst) = (Subjects::object_stream(&ob), Subjects::object_stream(&sb));
    let build_client = format!(
        "\"{p}.build.submit\", \"{p}.build.*.updates\", {}, \"$KV.{cb}.>\", {}, {}, {}, {}",
        kv_read(&cb),
        object_read(&ost),
        object_write(&ob, &ost),
        object_read(&sst),
        object_write(&sb, &sst)
    );
    let sources_read = object_read(&sst);
    // The agents bucket: workers running agents read and write memory and stats and read
    // the knowledge bases (listing keys takes an ordered consumer); clients add documents and
    // read stats. Workers also submit an agent's builds and follow their updates.
    let agents = s.agents_bucket();
    let agents_rw = format!(
        "\"$KV.{agents}.>\", {}",
        object_read(&Subjects::kv_stream(&agents))
    );
    let mut out = String::from(
        "# Written by `vgas init`: one user per role, each with only the subjects it needs.\n\
         # Regenerate with `vgas init`; the credentials live in creds/ beside this file.\n\
         authorization {\n  users = [\n",
    );
    for (role, c) in users {
        let perms = match role {
            Role::Master => "publish: \">\", subscribe: \">\"".to_string(),
            Role::Worker => format!(
                "publish: {{ allow: [\"{p}.heartbeat.*\", \"{p}.task.*.events\", \"{p}.result.*\", \"{p}.llm.complete\", \"{p}.build.submit\", {modules_read}, {artifacts_read}, {artifacts_write}, {sources_read}, {agents_rw}] }}, \
                 subscribe: {{ allow: [\"{p}.worker.*.task\", \"{p}.worker.*.cancel\", \"{p}.build.*.updates\", \"_INBOX.>\"] }}, \
                 allow_responses: true"
            ),
            Role::Client => format!(
                "publish: {{ allow: [\"{p}.task.submit\", \"{p}.task.info\", \"{p}.task.cancel\", \"{p}.status\", \"{p}.llm.usage\", \"$SRV.>\", {modules_read}, {modules_write}, {artifacts_read}, {build_client}, {agents_rw}] }}, \
                 subscribe: {{ allow: [\"_INBOX.>\", \"{p}.task.*.>\", \"{p}.build.*.updates\"] }}"
            ),
        };
        out.push_str(&format!(
            "    {{ user: \"{}\", password: \"{}\", permissions: {{ {perms} }} }}\n",
            c.user, c.password
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
