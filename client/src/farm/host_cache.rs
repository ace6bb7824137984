//! The build cache's tier on this host's disk, in front of the swarm's (`super::cache`): what
//! this host compiled, or fetched from the swarm's cache, is kept under the state folder
//! (`<state-dir>/cache`), so a rebuild here after `make clean` or a branch switch reads local
//! files (as ccache and sccache's disk cache do) instead of a KV lookup and an Object Store
//! fetch through nats-server for every unit. The swarm's cache stays the one other hosts see:
//! every write goes to both.
//!
//! Entries are named by the same keys as the swarm's (content hashes, so never stale), written
//! aside and renamed (so a reader never sees half of one), and checked on every read (an
//! object's size and SHA-256 against its entry; a damaged file is a miss and is removed).
//! The size bound (`VGAS_HOST_CACHE_MB`, 0 turns the tier off): a read touches a file's
//! modification time, and a sweep deletes the least recently used down to a low-water mark.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use tracing::debug;
use vgas_shared::codec::{decode_as, encode};
use vgas_shared::farm::CacheEntry;
use vgas_shared::Encoding;

/// Sets the tier's bound in MiB; 0 turns it off.
pub const ENV_HOST_CACHE_MB: &str = "VGAS_HOST_CACHE_MB";

/// Default bound (2 GiB): a few large C++ projects' objects, twice the swarm cache's default,
/// since a host's disk is usually roomier than its share of the server's store.
pub const DEFAULT_HOST_CACHE_BYTES: u64 = 2 * 1024 * 1024 * 1024;

/// A sweep deletes down to this share of the bound, so it does not run again at once.
const LOW_WATER_PERCENT: u64 = 80;

/// One write in this many (by key, which is a hash) sweeps: a sweep lists the folder, so it
/// runs rarely, and the bound is passed by at most this many entries between two.
const SWEEP_EVERY: u64 = 256;

/// Largest entry header read back: an entry holds stderr (capped at 64 KiB when written) and
/// side outputs (capped at 128 KiB).
const MAX_ENTRY_BYTES: usize = 512 * 1024;

/// Folders under the tier's root: objects with their entries, and direct-mode manifests.
const OBJECTS: &str = "o";
const MANIFESTS: &str = "m";

/// An object read back whole, with its entry.
#[derive(Debug)]
pub struct Kept {
    pub entry: CacheEntry,
    pub object: Vec<u8>,
}

/// The tier on this host.
#[derive(Debug)]
pub struct HostCache {
    root: PathBuf,
    max_bytes: u64,
}

/// Names for files written aside, unique within the process (the pid makes them unique
/// across processes).
static TMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// A key is used as a file name only when it is made of what cache keys are made of (hex,
/// and `direct.` before a direct-mode key); anything else skips the tier.
fn file_name(key: &str) -> Option<&str> {
    let ok = !key.is_empty()
        && key.len() <= 200
        && !key.starts_with('.')
        && key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'_' || b == b'-');
    ok.then_some(key)
}

fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl HostCache {
    /// The tier under `state_dir`, bounded by `VGAS_HOST_CACHE_MB` (default
    /// [`DEFAULT_HOST_CACHE_BYTES`]); `None` when that is 0, or not a number (said once, as a
    /// warning: the build goes on with the swarm's cache alone).
    pub fn under(state_dir: &Path) -> Option<HostCache> {
        let max_bytes = match std::env::var(ENV_HOST_CACHE_MB) {
            Ok(v) => {
                let bytes = v.trim().parse::<u64>().ok();
                let Some(b) = bytes.and_then(|mb| mb.checked_mul(1 << 20)) else {
                    tracing::warn!(
                        "{ENV_HOST_CACHE_MB}={v:?} is not a number of MiB; no host cache"
                    );
                    return None;
                };
                b
            }
            Err(_) => DEFAULT_HOST_CACHE_BYTES,
        };
        (max_bytes > 0).then(|| HostCache::at(state_dir.join("cache"), max_bytes))
    }

    pub fn at(root: PathBuf, max_bytes: u64) -> HostCache {
        HostCache { root, max_bytes }
    }

    fn path(&self, folder: &str, key: &str) -> Option<PathBuf> {
        let name = file_name(key)?;
        // Two characters of the hash (after `direct.`) spread the files over folders.
        let hash = name.rsplit('.').next().unwrap_or(name);
        let fan = hash.get(..2).unwrap_or("__");
        Some(self.root.join(folder).join(fan).join(name))
    }

    /// The object cached under `key`, checked against its entry; `None` on a miss, and on a
    /// damaged file (removed).
    pub async fn object(&self, key: &str) -> Option<Kept> {
        let path = self.path(OBJECTS, key)?;
        let bytes = tokio::fs::read(&path).await.ok()?;
        match parse_object(&bytes) {
            Some(hit) => {
                touch(&path);
                Some(hit)
            }
            None => {
                debug!(key, "damaged entry in the host cache; removing it");
                let _ = tokio::fs::remove_file(&path).await;
                None
            }
        }
    }

    /// Keeps `object` and its `entry` under `key` (best effort: a failure only costs a later
    /// build a fetch from the swarm).
    pub async fn put_object(&self, key: &str, entry: &CacheEntry, object: &[u8]) {
        let Some(path) = self.path(OBJECTS, key) else {
            return;
        };
        let Ok(head) = encode(Encoding::MsgPack, entry) else {
            return;
        };
        let Ok(len) = u32::try_from(head.len()) else {
            return;
        };
        let mut bytes = Vec::with_capacity(4 + head.len() + object.len());
        bytes.extend_from_slice(&len.to_be_bytes());
        bytes.extend_from_slice(&head);
        bytes.extend_from_slice(object);
        self.write(key, &path, &bytes).await;
    }

    /// The direct-mode manifest bytes kept under `direct_key`.
    pub async fn manifest(&self, direct_key: &str) -> Option<Vec<u8>> {
        let path = self.path(MANIFESTS, direct_key)?;
        let bytes = tokio::fs::read(&path).await.ok()?;
        touch(&path);
        Some(bytes)
    }

    pub async fn put_manifest(&self, direct_key: &str, bytes: &[u8]) {
        if let Some(path) = self.path(MANIFESTS, direct_key) {
            self.write(direct_key, &path, bytes).await;
        }
    }

    async fn write(&self, key: &str, path: &Path, bytes: &[u8]) {
        let Some(dir) = path.parent() else { return };
        if tokio::fs::create_dir_all(dir).await.is_err() {
            return;
        }
        let seq = TMP_SEQ.fetch_add(1, Ordering::Relaxed);
        let tmp = dir.join(format!(".tmp-{}-{seq}", std::process::id()));
        let written = match tokio::fs::write(&tmp, bytes).await {
            Ok(()) => tokio::fs::rename(&tmp, path).await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            debug!("host cache: not kept: {e}");
            let _ = tokio::fs::remove_file(&tmp).await;
            return;
        }
        // Keys are hashes: one write in SWEEP_EVERY, spread evenly, checks the bound.
        let tail = key.get(key.len().saturating_sub(2)..).unwrap_or("");
        if u64::from_str_radix(tail, 16).is_ok_and(|n| n % SWEEP_EVERY == 0) {
            let (root, max) = (self.root.clone(), self.max_bytes);
            let _ = tokio::task::spawn_blocking(move || sweep(&root, max)).await;
        }
    }

    /// Removes every entry (`vgas build --purge-cache`); the entries removed.
    pub fn purge(&self) -> u64 {
        let files = entries(&self.root);
        let n = files.len() as u64;
        for (path, ..) in files {
            let _ = std::fs::remove_file(path);
        }
        n
    }

    /// Bytes the tier holds.
    pub fn stored_bytes(&self) -> u64 {
        entries(&self.root).iter().map(|(_, size, _)| size).sum()
    }
}

/// An object file: a 4-byte big-endian length, the entry (MessagePack), the object's bytes.
fn parse_object(bytes: &[u8]) -> Option<Kept> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_ENTRY_BYTES {
        return None;
    }
    let head = bytes.get(4..4 + len)?;
    let object = bytes.get(4 + len..)?;
    let entry: CacheEntry = decode_as(Encoding::MsgPack, head).ok()?;
    (entry.size == object.len() as u64 && entry.sha256 == sha256(object)).then(|| Kept {
        entry,
        object: object.to_vec(),
    })
}

/// Marks a file used now, for the sweep's least-recently-used order.
fn touch(path: &Path) {
    if let Ok(f) = std::fs::File::options().write(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Every entry file under `root`: path, size, modification time (files being written aside
/// are left alone).
fn entries(root: &Path) -> Vec<(PathBuf, u64, SystemTime)> {
    let mut out = Vec::new();
    for folder in [OBJECTS, MANIFESTS] {
        let Ok(fans) = std::fs::read_dir(root.join(folder)) else {
            continue;
        };
        for fan in fans.flatten() {
            let Ok(files) = std::fs::read_dir(fan.path()) else {
                continue;
            };
            for f in files.flatten() {
                if f.file_name().to_string_lossy().starts_with(".tmp-") {
                    continue;
                }
                if let Ok(meta) = f.metadata() {
                    let used = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
                    out.push((f.path(), meta.len(), used));
                }
            }
        }
    }
    out
}

/// Past `max_bytes`, deletes the least recently used entries down to the low-water mark;
/// the number deleted.
pub fn sweep(root: &Path, max_bytes: u64) -> usize {
    let mut files = entries(root);
    let mut total: u64 = files.iter().map(|(_, size, _)| size).sum();
    if total <= max_bytes {
        return 0;
    }
    files.sort_by_key(|(_, _, used)| *used);
    let target = max_bytes / 100 * LOW_WATER_PERCENT;
    let mut deleted = 0;
    for (path, size, _) in files {
        if total <= target {
            break;
        }
        if std::fs::remove_file(&path).is_ok() {
            total = total.saturating_sub(size);
            deleted += 1;
        }
    }
    deleted
}

#[cfg(test)]
#[path = "host_cache_tests.rs"]
mod tests;
