//! Objects in the swarm's Object Store buckets (modules, artifacts, build sources, the
//! build cache): fetched with a size cap and a length check, uploaded by content name only
//! when missing, and artifacts saved under a directory with their permission bits.

use std::collections::HashMap;
use std::path::{Component, Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};
use async_nats::jetstream::object_store::{InfoErrorKind, Object, ObjectStore};
use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWriteExt as _};
use vgas_shared::limits::MAX_ARTIFACT_BYTES;
use vgas_shared::wire::check_relative_path;

use super::follow::{Artifact, ArtifactBody};
use super::Swarm;

/// The permission bits an artifact may carry onto the submitter's disk: read, write and
/// execute for user, group and others. Set-id and sticky bits never cross from a worker.
pub const ARTIFACT_MODE_MASK: u32 = 0o777;

/// The content name of `bytes`: `sha256:` and its SHA-256 in lowercase hex (the name modules
/// and build sources have in their buckets).
pub fn content_name(bytes: &[u8]) -> String {
    vgas_shared::names::ModuleRef::of(bytes).as_str().to_owned()
}

/// The Object Store buckets a [`Swarm`] and its clones have opened, by name. A bucket's
/// handle is its stream's name and subjects, which stay valid while the swarm runs (the
/// master makes each bucket once and never deletes it).
#[derive(Clone, Default)]
pub(crate) struct OpenBuckets(Arc<Mutex<HashMap<String, ObjectStore>>>);

impl std::fmt::Debug for OpenBuckets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let open = self.0.lock().expect("buckets lock");
        f.debug_set().entries(open.keys()).finish()
    }
}

impl Swarm {
    /// Opens Object Store bucket `bucket` (once per swarm handle; later calls reuse it),
    /// saying which one failed.
    pub async fn bucket(&self, bucket: &str) -> Result<ObjectStore> {
        if let Some(store) = self.buckets.0.lock().expect("buckets lock").get(bucket) {
            return Ok(store.clone());
        }
        let store = self
            .js
            .get_object_store(bucket)
            .await
            .with_context(|| format!("open the bucket {bucket} (is vgas-master running?)"))?;
        self.buckets
            .0
            .lock()
            .expect("buckets lock")
            .insert(bucket.to_owned(), store.clone());
        Ok(store)
    }

    /// Opens object `name` of `bucket` for reading, refusing one announced over `cap`.
    async fn open_object(&self, bucket: &str, name: &str, size: u64, cap: u64) -> Result<Object> {
        if size > cap {
            bail!("{name} is {size} bytes, over the {cap} byte limit");
        }
        self.bucket(bucket)
            .await?
            .get(name)
            .await
            .with_context(|| format!("fetch {name} from {bucket}"))
    }

    /// Reads object `name` of `bucket`, which must be exactly `size` bytes and at most `cap`.
    pub async fn fetch(&self, bucket: &str, name: &str, size: u64, cap: u64) -> Result<Vec<u8>> {
        let mut reader = self.open_object(bucket, name, size, cap).await?;
        let mut bytes = Vec::with_capacity(size as usize);
        (&mut reader)
            .take(cap)
            .read_to_end(&mut bytes)
            .await
            .with_context(|| format!("read {name} from {bucket}"))?;
        if bytes.len() as u64 != size {
            bail!("{name}: got {} bytes, expected {size}", bytes.len());
        }
        Ok(bytes)
    }

    /// Streams object `name` of `bucket` into a new file at `to` (no more than `cap` bytes;
    /// it must be exactly `size`). A short or long object leaves no file behind.
    pub async fn fetch_to_file(
        &self,
        bucket: &str,
        name: &str,
        size: u64,
        cap: u64,
        to: &Path,
    ) -> Result<()> {
        let mut reader = self.open_object(bucket, name, size, cap).await?;
        let mut file = tokio::fs::File::create(to)
            .await
            .with_context(|| format!("create {}", to.display()))?;
        let copied = tokio::io::copy(&mut (&mut reader).take(cap), &mut file)
            .await
            .with_context(|| format!("download {name} from {bucket}"));
        let flushed = file.flush().await;
        let checked = match (copied, flushed) {
            (Ok(n), Ok(())) if n == size => Ok(()),
            (Ok(n), Ok(())) => Err(anyhow::anyhow!("{name}: got {n} bytes, expected {size}")),
            (Err(e), _) => Err(e),
            (_, Err(e)) => Err(e).with_context(|| format!("write {}", to.display())),
        };
        if checked.is_err() {
            let _ = tokio::fs::remove_file(to).await;
        }
        checked
    }

    /// Puts `reader` into `bucket` as `name` unless an object of that name is there already
    /// (names are content hashes, so the one there is the same). True when it uploaded.
    pub async fn upload_if_missing<R: AsyncRead + Unpin>(
        &self,
        bucket: &str,
        name: &str,
        reader: &mut R,
    ) -> Result<bool> {
        let store = self.bucket(bucket).await?;
        match store.info(name).await {
            Ok(_) => return Ok(false),
            Err(e) if e.kind() == InfoErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("look up {name} in {bucket}")),
        }
        store
            .put(name, reader)
            .await
            .with_context(|| format!("upload {name} to {bucket}"))?;
        Ok(true)
    }

    /// An artifact's bytes: inline, or fetched from the artifacts bucket (capped at
    /// `MAX_ARTIFACT_BYTES`).
    pub async fn artifact_bytes(&self, art: &Artifact) -> Result<Vec<u8>> {
        match &art.body {
            ArtifactBody::Inline(bytes) => Ok(bytes.clone()),
            ArtifactBody::Object { object, size } => self
                .fetch(
                    &self.subjects.artifacts_bucket(),
                    object,
                    *size,
                    MAX_ARTIFACT_BYTES,
                )
                .await
                .with_context(|| format!("artifact {}", art.path)),
        }
    }

    /// Writes an artifact under `dir` at its relative path, directories created, with its
    /// permission bits (masked by [`ARTIFACT_MODE_MASK`]); the path written.
    pub async fn save_artifact(&self, dir: &Path, art: &Artifact) -> Result<PathBuf> {
        let to = artifact_target(dir, &art.path)?;
        match &art.body {
            ArtifactBody::Inline(bytes) => tokio::fs::write(&to, bytes)
                .await
                .with_context(|| format!("write {}", to.display()))?,
            ArtifactBody::Object { object, size } => {
                self.fetch_to_file(
                    &self.subjects.artifacts_bucket(),
                    object,
                    *size,
                    MAX_ARTIFACT_BYTES,
                    &to,
                )
                .await
                .with_context(|| format!("artifact {}", art.path))?;
            }
        }
        if let Some(mode) = art.mode {
            set_mode(&to, mode)?;
        }
        Ok(to)
    }
}

/// Sets `path`'s permission bits to `mode` masked by [`ARTIFACT_MODE_MASK`].
pub fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(
        path,
        std::fs::Permissions::from_mode(mode & ARTIFACT_MODE_MASK),
    )
    .with_context(|| format!("set the mode of {}", path.display()))
}

/// Where the artifact at relative `path` goes under `dir`, its directory created.
fn artifact_target(dir: &Path, path: &str) -> Result<PathBuf> {
    check_relative_path(path)?;
    let rel = Path::new(path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        bail!("artifact path {path:?} is not a plain relative path");
    }
    let to = dir.join(rel);
    if let Some(parent) = to.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    Ok(to)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn artifact_targets_stay_under_their_directory() {
        let dir = tempfile::tempdir().unwrap();
        let to = artifact_target(dir.path(), "out/app").unwrap();
        assert_eq!(to, dir.path().join("out/app"));
        assert!(dir.path().join("out").is_dir());
        for evil in ["../x", "/etc/passwd", "a/../../x", "", "./x"] {
            assert!(artifact_target(dir.path(), evil).is_err(), "{evil}");
        }
    }

    #[test]
    fn modes_lose_set_id_bits() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("app");
        std::fs::write(&p, b"#!/bin/sh\n").unwrap();
        set_mode(&p, 0o4755).unwrap();
        let mode = std::fs::metadata(&p).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o755);
    }

    #[test]
    fn content_names_are_module_refs() {
        let n = content_name(b"");
        assert!(vgas_shared::wire::check_module_ref(&n).is_ok(), "{n}");
    }
}
