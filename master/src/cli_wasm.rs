//! `vgas submit --wasm`: names a module by the SHA-256 of its bytes, uploads it into the
//! modules Object Store bucket when the bucket does not have it yet (chunked, so modules far
//! past the NATS message size limit go through), and saves the artifacts a wasm task sends
//! back: inline ones from the event, larger ones fetched from the artifacts bucket.

use std::path::{Component, Path, PathBuf};

use anyhow::{bail, Context, Result};
use async_nats::jetstream::object_store::InfoErrorKind;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use vgas_shared::config::Resolved;
use vgas_shared::limits::{MAX_ARTIFACT_BYTES, MAX_MODULE_BYTES};
use vgas_shared::wire::{check_relative_path, TaskKind, TaskSpec, MODULE_REF_PREFIX};

/// The name of the module at `path`: `sha256:<hex>` of its bytes.
pub fn module_name(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    if bytes.len() as u64 > MAX_MODULE_BYTES {
        bail!(
            "{} is {} MiB; workers fetch modules up to {} MiB",
            path.display(),
            bytes.len() >> 20,
            MAX_MODULE_BYTES >> 20
        );
    }
    Ok(format!(
        "{MODULE_REF_PREFIX}{}",
        hex::encode(Sha256::digest(&bytes))
    ))
}

/// Turns `spec` into a wasm task running the module at `wasm`, if one is given.
pub fn wasm_spec(mut spec: TaskSpec, wasm: Option<&Path>) -> Result<TaskSpec> {
    if let Some(path) = wasm {
        spec.kind = TaskKind::Wasm;
        spec.module = Some(module_name(path)?);
    }
    Ok(spec)
}

/// Puts the module at `path` into the modules bucket under `name`, unless it is there already.
pub async fn upload_if_missing(
    client: &async_nats::Client,
    conn: &Resolved,
    path: &Path,
    name: &str,
) -> Result<()> {
    let bucket = conn.subjects.modules_bucket();
    let js = async_nats::jetstream::new(client.clone());
    let store = js
        .get_object_store(&bucket)
        .await
        .with_context(|| format!("open the modules bucket {bucket} (is vgas-master running?)"))?;
    match store.info(name).await {
        Ok(_) => return Ok(()),
        Err(e) if e.kind() == InfoErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("look up {name} in {bucket}")),
    }
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    store
        .put(name, &mut file)
        .await
        .with_context(|| format!("upload {} to {bucket}", path.display()))?;
    eprintln!("vgas: uploaded {} as {name}", path.display());
    Ok(())
}

/// Where `vgas submit` and `vgas watch` save artifacts, under the current directory: a
/// directory of its own, so a task can never overwrite the user's files.
pub const ARTIFACT_DIR: &str = "vgas-artifacts";

/// Where the artifact at relative `path` goes under [`ARTIFACT_DIR`], its directory created.
fn artifact_target(path: &str) -> Result<PathBuf> {
    check_relative_path(path)?;
    let rel = Path::new(ARTIFACT_DIR).join(path);
    if rel.components().any(|c| !matches!(c, Component::Normal(_))) {
        bail!("artifact path {path:?} is not a plain relative path");
    }
    if let Some(parent) = rel.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("create {}", parent.display()))?;
    }
    Ok(rel)
}

/// Writes an artifact sent inline under [`ARTIFACT_DIR`], at its relative path.
pub fn save_artifact(path: &str, base64: &str) -> Result<()> {
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(base64)
        .with_context(|| format!("artifact {path}: bad base64"))?;
    let rel = artifact_target(path)?;
    std::fs::write(&rel, bytes).with_context(|| format!("write artifact {path}"))?;
    eprintln!("vgas: wrote {}", rel.display());
    Ok(())
}

/// Downloads an artifact sent by reference (`object` in the artifacts bucket, `size` bytes)
/// to its relative path under [`ARTIFACT_DIR`], refusing one over `MAX_ARTIFACT_BYTES`.
pub async fn fetch_artifact(
    client: &async_nats::Client,
    conn: &Resolved,
    path: &str,
    object: &str,
    size: u64,
) -> Result<()> {
    if size > MAX_ARTIFACT_BYTES {
        bail!("artifact {path} is {size} bytes, over the {MAX_ARTIFACT_BYTES} byte limit");
    }
    let rel = artifact_target(path)?;
    let bucket = conn.subjects.artifacts_bucket();
    let js = async_nats::jetstream::new(client.clone());
    let store = js
        .get_object_store(&bucket)
        .await
        .with_context(|| format!("open the artifacts bucket {bucket}"))?;
    let mut reader = store
        .get(object)
        .await
        .with_context(|| format!("fetch artifact {path} ({object}) from {bucket}"))?;
    let mut file = tokio::fs::File::create(&rel)
        .await
        .with_context(|| format!("create {}", rel.display()))?;
    let copied = tokio::io::copy(&mut (&mut reader).take(MAX_ARTIFACT_BYTES), &mut file)
        .await
        .with_context(|| format!("download artifact {path}"))?;
    file.flush().await?;
    if copied != size {
        bail!("artifact {path}: got {copied} bytes, expected {size}");
    }
    eprintln!("vgas: wrote {} ({copied} bytes)", rel.display());
    Ok(())
}
