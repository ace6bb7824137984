//! `vgas submit --wasm`: names a module by the SHA-256 of its bytes and uploads it into the
//! modules Object Store bucket when the bucket does not have it yet (chunked, so modules far
//! past the NATS message size limit go through). The files a wasm task writes come back as
//! artifacts, saved by `submit` like any task's.

use std::path::Path;

use anyhow::{bail, Context, Result};
use vgas_shared::limits::MAX_MODULE_BYTES;
use vgas_shared::wire::{TaskKind, TaskSpec};

use crate::api::objects::content_name;
use crate::api::Swarm;

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
    Ok(content_name(&bytes))
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
pub async fn upload_module(swarm: &Swarm, path: &Path, name: &str) -> Result<()> {
    let mut file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("open {}", path.display()))?;
    let bucket = swarm.subjects.modules_bucket();
    if swarm.upload_if_missing(&bucket, name, &mut file).await? {
        eprintln!("vgas: uploaded {} as {name}", path.display());
    }
    Ok(())
}
