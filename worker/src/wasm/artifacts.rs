//! The files a wasm run wrote into its directory, handed back as artifacts: small ones inline
//! in the event, larger ones (up to `MAX_ARTIFACT_BYTES`) by reference to an object the worker
//! puts into the artifacts Object Store bucket, so no event comes near the server's message
//! size limit. Past the hard cap, or past `MAX_ARTIFACTS` files, a successful run becomes
//! `limit_exceeded` `artifact`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use vgas_shared::limits::{MAX_ARTIFACTS, MAX_ARTIFACT_BYTES, MAX_INLINE_ARTIFACT_BYTES};
use vgas_shared::wire::{TaskFile, TaskOutcome};
use vgas_shared::TaskId;

/// The permission bits an artifact carries: read, write, execute for user, group, others.
const ARTIFACT_MODE_BITS: u32 = 0o777;

/// A file the module wrote into its directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Relative to the task directory.
    pub path: String,
    /// The file's permission bits (`0o755` for a binary), sent so the submitter's copy keeps
    /// them; `None` for what the worker made itself (a compile's object, `response.json`).
    pub mode: Option<u32>,
    pub body: ArtifactBody,
}

/// What an artifact carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ArtifactBody {
    /// Up to `MAX_INLINE_ARTIFACT_BYTES`: sent in the event.
    Inline(Vec<u8>),
    /// Larger: still in the task directory (`file`), to be uploaded by [`upload`].
    Large { file: PathBuf, size: u64 },
}

/// The regular files in `dir` that are not unchanged `inputs`, sorted by path. A file over
/// `MAX_ARTIFACT_BYTES`, or too many files, turn a success into `LimitExceeded`; a failed
/// run keeps its own outcome. (Also what an agent task hands back of its workspace.)
pub fn collect_artifacts(
    dir: &Path,
    inputs: &[TaskFile],
    outcome: TaskOutcome,
) -> (TaskOutcome, Vec<Artifact>) {
    let inputs: BTreeMap<&str, &[u8]> = inputs.iter().map(|f| (f.path(), f.bytes())).collect();
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                // Symlinks are not followed: a module may not hand back what it cannot read.
                Ok(t) if t.is_file() => found.push(e.path()),
                _ => {}
            }
        }
    }
    found.sort();
    let mut artifacts = Vec::new();
    let mut over = None;
    for path in found {
        let rel = path
            .strip_prefix(dir)
            .map(|p| p.to_string_lossy().into_owned())
            .unwrap_or_default();
        let meta = std::fs::symlink_metadata(&path).ok();
        let size = meta.as_ref().map_or(0, |m| m.len());
        let mode = meta.map(|m| m.permissions().mode() & ARTIFACT_MODE_BITS);
        if size > MAX_ARTIFACT_BYTES {
            over.get_or_insert(format!(
                "{rel} is {size} bytes; files over {} MiB are not sent back",
                MAX_ARTIFACT_BYTES >> 20
            ));
            continue;
        }
        if artifacts.len() == MAX_ARTIFACTS {
            over.get_or_insert(format!(
                "the module wrote more than {MAX_ARTIFACTS} files; only that many are sent back"
            ));
            break;
        }
        // Inputs are inline-sized, so a large file is never an unchanged input.
        if size > MAX_INLINE_ARTIFACT_BYTES {
            artifacts.push(Artifact {
                path: rel,
                mode,
                body: ArtifactBody::Large { file: path, size },
            });
            continue;
        }
        let Ok(bytes) = read_inline(&path) else {
            continue;
        };
        if inputs.get(rel.as_str()) == Some(&bytes.as_slice()) {
            continue;
        }
        artifacts.push(Artifact {
            path: rel,
            mode,
            body: ArtifactBody::Inline(bytes),
        });
    }
    match over {
        Some(message) if outcome.succeeded() => (
            TaskOutcome::LimitExceeded {
                limit: "artifact".into(),
                message,
            },
            artifacts,
        ),
        _ => (outcome, artifacts),
    }
}

/// The bytes of an artifact small enough to go inline: at most `MAX_INLINE_ARTIFACT_BYTES`,
/// and never through a symlink the task left (`O_NOFOLLOW`).
pub fn read_inline(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut bytes = Vec::new();
    std::fs::File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .take(MAX_INLINE_ARTIFACT_BYTES)
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// The name of an artifact in the artifacts bucket: unique per task, attempt and path.
pub fn object_name(task: &TaskId, attempt: u32, path: &str) -> String {
    format!("{task}/{attempt}/{path}")
}

/// Puts the large artifact at `file` into `bucket` as [`object_name`]; returns that name.
/// The error is a sentence for the task's outcome.
pub async fn upload(
    js: &async_nats::jetstream::Context,
    bucket: &str,
    task: &TaskId,
    attempt: u32,
    path: &str,
    file: &Path,
) -> Result<String, String> {
    let name = object_name(task, attempt, path);
    let store = js
        .get_object_store(bucket)
        .await
        .map_err(|e| format!("cannot open the artifacts bucket {bucket}: {e}"))?;
    let mut f = tokio::fs::File::open(file)
        .await
        .map_err(|e| format!("cannot read artifact {path}: {e}"))?;
    store
        .put(name.as_str(), &mut f)
        .await
        .map_err(|e| format!("cannot upload artifact {path} to {bucket}: {e}"))?;
    Ok(name)
}
