//! The swarm-wide build cache: a KV bucket maps a segment's cache key (preprocessed source,
//! exact compiler identity, flags) to a `CacheEntry`, an Object Store bucket holds the objects
//! under the same key. Every submitter reads it before it dispatches and writes what it
//! compiled, so a rebuild after `make clean` compiles nothing, on any host of the swarm.
//!
//! The size bound: the objects bucket is created with room for the bound plus headroom, and
//! the master's sweeper (`sweep`) deletes the oldest objects once the bound is passed, down
//! to a low-water mark, with their index entries. An index entry whose object is gone is a
//! miss, and a hit whose bytes do not hash to the entry's digest is a miss and is removed.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, kv, object_store};
use bytes::Bytes;
use futures::TryStreamExt;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio::io::AsyncReadExt as _;
use tracing::{debug, info, warn};
use vgas_shared::codec::{decode_as, encode};
use vgas_shared::farm::CacheEntry;
use vgas_shared::{now_ms, Encoding, Subjects};

use super::host_cache::HostCache;

/// Default size bound of the cached objects (1 GiB): a large C++ project's objects fit,
/// and it stays well inside `max_file_store` in `nats.conf` beside the other buckets.
pub const DEFAULT_CACHE_BYTES: u64 = 1024 * 1024 * 1024;

/// Room the objects bucket has past the bound, so puts between two sweeps do not fail.
const BUCKET_HEADROOM_PERCENT: u64 = 25;

/// A sweep deletes down to this share of the bound, so it does not run again at once.
const LOW_WATER_PERCENT: u64 = 80;

/// The index bucket (its entries and direct mode's manifests) is cut back once it holds
/// more than this share of its room: it refuses every write when full (JetStream's
/// discard-new), and a sweep every [`SWEEP_INTERVAL`] leaves the rest for the writes between.
const INDEX_HIGH_WATER_PERCENT: u64 = 80;

/// A cut of the index goes down to this share of its room, its oldest writes first.
const INDEX_LOW_WATER_PERCENT: u64 = 60;

/// How often the master checks the cache's size.
pub const SWEEP_INTERVAL: Duration = Duration::from_secs(10);

/// Largest object the cache stores or hands out (256 MiB, the artifact limit).
pub const MAX_CACHED_OBJECT: u64 = vgas_shared::limits::MAX_ARTIFACT_BYTES;

/// Largest index entry read back (stderr is capped when written).
const MAX_ENTRY_BYTES: usize = 256 * 1024;

/// Warnings text kept with an entry (64 KiB): replayed on a hit.
const MAX_CACHED_STDERR: usize = 64 * 1024;

/// Largest side outputs (`.su` files...) kept in an index entry, all together: they are
/// a few lines a function; more would push the entry past `MAX_ENTRY_BYTES`.
const MAX_CACHED_SIDE_OUTPUTS: usize = 128 * 1024;

/// Creates the cache's buckets if missing (the master, at start).
pub async fn open_buckets(
    js: &jetstream::Context,
    subjects: &Subjects,
    bound: u64,
    replicas: vgas_shared::config::Replicas,
) -> Result<()> {
    let index = subjects.build_cache_bucket();
    if js.get_key_value(&index).await.is_err() {
        js.create_key_value(kv::Config {
            bucket: index.clone(),
            description: "vgas build cache index: cache key to entry".into(),
            history: 1,
            storage: jetstream::stream::StorageType::File,
            max_bytes: (bound / 8).max(16 * 1024 * 1024) as i64,
            num_replicas: replicas.get(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("create the KV bucket {index}"))?;
    }
    let objects = subjects.build_objects_bucket();
    if js.get_object_store(&objects).await.is_err() {
        js.create_object_store(object_store::Config {
            bucket: objects.clone(),
            description: Some("vgas build cache objects, named by cache key".into()),
            max_bytes: (bound + bound * BUCKET_HEADROOM_PERCENT / 100) as i64,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.get(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("create the Object Store bucket {objects}"))?;
    }
    let sources = subjects.build_sources_bucket();
    if js.get_object_store(&sources).await.is_err() {
        js.create_object_store(object_store::Config {
            bucket: sources.clone(),
            description: Some("vgas build sources too large to send inline, by sha256".into()),
            max_bytes: vgas_shared::limits::ARTIFACTS_BUCKET_MAX_BYTES,
            max_age: vgas_shared::limits::ARTIFACT_MAX_AGE,
            storage: jetstream::stream::StorageType::File,
            num_replicas: replicas.get(),
            ..Default::default()
        })
        .await
        .with_context(|| format!("create the Object Store bucket {sources}"))?;
    }
    Ok(())
}

/// A handle on the cache for one submitter: the swarm's buckets, and this host's tier in
/// front of them when [`BuildCache::on_host`] added it.
#[derive(Clone)]
pub struct BuildCache {
    js: jetstream::Context,
    index: kv::Store,
    objects: object_store::ObjectStore,
    host: Option<Arc<HostCache>>,
}

impl std::fmt::Debug for BuildCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BuildCache")
    }
}

/// What is stored under a direct key (direct mode, `super::direct`): the cache key of the
/// preprocessed unit and what must be unchanged for it to apply.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The cache key of the preprocessed unit.
    pub key: String,
    /// Absolute path and SHA-256 (hex) of every file the unit read.
    pub files: Vec<(String, String)>,
    /// The dependency file the preprocessing wrote, with its contents.
    pub deps: Option<(String, String)>,
}

/// A hit: the entry and the object's bytes, verified.
#[derive(Debug)]
pub struct Hit {
    pub entry: CacheEntry,
    pub object: Vec<u8>,
}

fn digest(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

impl BuildCache {
    pub async fn open(js: &jetstream::Context, subjects: &Subjects) -> Result<Self> {
        // Both at once: every compiler process opens the cache, one round trip is saved.
        let (index_name, objects_name) = (
            subjects.build_cache_bucket(),
            subjects.build_objects_bucket(),
        );
        let (index, objects) = tokio::join!(
            js.get_key_value(&index_name),
            js.get_object_store(&objects_name)
        );
        let index = index.with_context(|| {
            format!("open the build cache {index_name} (is vgas-master running?)")
        })?;
        let objects =
            objects.with_context(|| format!("open the build objects bucket {objects_name}"))?;
        Ok(BuildCache {
            js: js.clone(),
            index,
            objects,
            host: None,
        })
    }

    /// The same cache with this host's tier under `state_dir` in front (unless
    /// `VGAS_HOST_CACHE_MB=0`): read first, written with every write.
    pub fn on_host(self, state_dir: &Path) -> BuildCache {
        BuildCache {
            host: HostCache::under(state_dir).map(Arc::new),
            ..self
        }
    }

    /// This host's tier, if it has one.
    pub fn host(&self) -> Option<&HostCache> {
        self.host.as_deref()
    }

    /// The cached object for `key`, if the cache has it whole: from this host's tier, or
    /// from the swarm's (and then kept on this host too).
    pub async fn lookup(&self, key: &str) -> Result<Option<Hit>> {
        if let Some(hit) = self.host_object(key).await {
            return Ok(Some(hit));
        }
        let hit = self.swarm_lookup(key).await?;
        if let (Some(host), Some(hit)) = (&self.host, &hit) {
            host.put_object(key, &hit.entry, &hit.object).await;
        }
        Ok(hit)
    }

    async fn host_object(&self, key: &str) -> Option<Hit> {
        let kept = self.host.as_ref()?.object(key).await?;
        (kept.entry.size <= MAX_CACHED_OBJECT).then_some(Hit {
            entry: kept.entry,
            object: kept.object,
        })
    }

    async fn swarm_lookup(&self, key: &str) -> Result<Option<Hit>> {
        let Some(bytes) = self.index.get(key).await.context("read the build cache")? else {
            return Ok(None);
        };
        if bytes.len() > MAX_ENTRY_BYTES {
            return Ok(None);
        }
        let entry: CacheEntry = match decode_as(Encoding::MsgPack, &bytes) {
            Ok(e) => e,
            Err(_) => return self.forget(key).await,
        };
        if entry.size > MAX_CACHED_OBJECT {
            return self.forget(key).await;
        }
        let mut reader = match self.objects.get(&entry.object).await {
            Ok(r) => r,
            // Evicted (or never finished): a miss.
            Err(_) => return self.forget(key).await,
        };
        let mut object = Vec::with_capacity(entry.size as usize);
        if (&mut reader)
            .take(MAX_CACHED_OBJECT)
            .read_to_end(&mut object)
            .await
            .is_err()
            || object.len() as u64 != entry.size
            || digest(&object) != entry.sha256
        {
            warn!(key, "cached object is damaged or incomplete; dropping it");
            return self.forget(key).await;
        }
        Ok(Some(Hit { entry, object }))
    }

    async fn forget(&self, key: &str) -> Result<Option<Hit>> {
        let _ = self.index.delete(key).await;
        Ok(None)
    }

    /// Stores an object under `key`: on this host's tier, then in the swarm's, the object
    /// first and the index entry after, so an entry never points at nothing (short of
    /// eviction, which a lookup treats as a miss).
    pub async fn store(
        &self,
        key: &str,
        object: &[u8],
        side: &BTreeMap<String, String>,
        stderr: &str,
        compile_ms: u64,
    ) -> Result<()> {
        let side_bytes: usize = side.values().map(String::len).sum();
        if object.len() as u64 > MAX_CACHED_OBJECT || side_bytes > MAX_CACHED_SIDE_OUTPUTS {
            return Ok(());
        }
        let mut stderr = stderr.to_owned();
        if stderr.len() > MAX_CACHED_STDERR {
            let mut cut = MAX_CACHED_STDERR;
            while !stderr.is_char_boundary(cut) {
                cut -= 1;
            }
            stderr.truncate(cut);
        }
        let entry = CacheEntry {
            object: key.to_owned(),
            size: object.len() as u64,
            sha256: digest(object),
            stderr,
            compile_ms,
            created_ms: now_ms(),
            side: side.clone(),
        };
        if let Some(host) = &self.host {
            host.put_object(key, &entry, object).await;
        }
        let mut reader = object;
        self.objects
            .put(key, &mut reader)
            .await
            .context("put the object into the build cache")?;
        let bytes = Bytes::from(encode(Encoding::MsgPack, &entry)?);
        self.index
            .put(key, bytes)
            .await
            .context("write the build cache index")?;
        Ok(())
    }

    /// The direct-mode manifest stored under `direct_key`, if any
    /// (This host's tier first; one found in the swarm's is kept on this host too.)
    pub async fn manifest(&self, direct_key: &str) -> Option<Manifest> {
        if let Some(bytes) = match &self.host {
            Some(host) => host.manifest(direct_key).await,
            None => None,
        } {
            if let Some(m) = decode_manifest(&bytes) {
                return Some(m);
            }
        }
        let bytes = self.index.get(direct_key).await.ok()??;
        let m = decode_manifest(&bytes)?;
        if let Some(host) = &self.host {
            host.put_manifest(direct_key, &bytes).await;
        }
        Some(m)
    }

    /// Stores a direct-mode manifest; a failure only costs the next build a preprocessing run.
    pub async fn put_manifest(&self, direct_key: &str, m: &Manifest) {
        let Ok(bytes) = encode(Encoding::MsgPack, m) else {
            return;
        };
        if bytes.len() <= MAX_ENTRY_BYTES {
            if let Some(host) = &self.host {
                host.put_manifest(direct_key, &bytes).await;
            }
            if let Err(e) = self.index.put(direct_key, Bytes::from(bytes)).await {
                debug!("manifest not stored: {e}");
            }
        }
    }

    /// Empties the cache, the swarm's and this host's tier (`vgas build --purge-cache`);
    /// returns the objects removed from the swarm's. Other hosts' tiers keep theirs.
    pub async fn purge(&self) -> Result<u64> {
        if let Some(host) = &self.host {
            host.purge();
        }
        let names: Vec<String> = self
            .objects
            .list()
            .await
            .context("list cached objects")?
            .map_ok(|i| i.name)
            .try_collect()
            .await
            .context("list cached objects")?;
        // The whole index in one request: entries, manifests and the markers of earlier
        // deletes alike, so after a purge every unit is preprocessed and compiled again.
        let index = self.index.stream_name.clone();
        let emptied = match self.js.get_stream(&index).await {
            Ok(stream) => stream.purge().await.map(|_| ()).map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        for n in &names {
            let _ = self.objects.delete(n).await;
            if emptied.is_err() {
                let _ = self.index.purge(n).await;
            }
        }
        if let Err(e) = emptied {
            // Grants written by an older `vgas init` allow neither the index's purge nor
            // listing its keys: the entries of the objects just removed go one by one.
            warn!("the build cache index could not be emptied ({e}); its manifests stay until the master's sweep cuts them (`vgas init` again grants the purge)");
        }
        Ok(names.len() as u64)
    }
}

fn decode_manifest(bytes: &[u8]) -> Option<Manifest> {
    if bytes.len() > MAX_ENTRY_BYTES {
        return None;
    }
    decode_as(Encoding::MsgPack, bytes).ok()
}

/// Bytes the objects bucket holds now.
pub async fn stored_bytes(js: &jetstream::Context, subjects: &Subjects) -> Result<u64> {
    let name = Subjects::object_stream(&subjects.build_objects_bucket());
    // Opening a stream reads its info: the state is as of now.
    let stream = js
        .get_stream(&name)
        .await
        .context("open the objects stream")?;
    Ok(stream.cached_info().state.bytes)
}

/// One sweep: cuts the index back when it nears its room ([`trim_index`]); past `bound`,
/// deletes the oldest objects (and their index entries) until the objects are under the
/// low-water mark. Returns how many objects were evicted.
pub async fn sweep(js: &jetstream::Context, subjects: &Subjects, bound: u64) -> Result<u64> {
    if let Err(e) = trim_index(js, subjects).await {
        warn!("build cache index: {e:#}");
    }
    let bytes = stored_bytes(js, subjects).await?;
    if bytes <= bound {
        return Ok(0);
    }
    let cache = BuildCache::open(js, subjects).await?;
    let mut infos: Vec<object_store::ObjectInfo> = cache
        .objects
        .list()
        .await
        .context("list cached objects")?
        .try_collect()
        .await
        .context("list cached objects")?;
    infos.sort_by_key(|i| i.modified);
    let target = bound * LOW_WATER_PERCENT / 100;
    let mut left = bytes;
    let mut evicted = 0;
    for i in infos {
        if left <= target {
            break;
        }
        let _ = cache.index.purge(&i.name).await;
        if cache.objects.delete(&i.name).await.is_ok() {
            left = left.saturating_sub(i.size as u64);
            evicted += 1;
        }
    }
    info!(evicted, before = bytes, bound, "build cache swept");
    Ok(evicted)
}

/// Past [`INDEX_HIGH_WATER_PERCENT`] of its room, removes the index's oldest writes down to
/// about [`INDEX_LOW_WATER_PERCENT`]: nothing else ever removes a manifest (direct mode
/// writes one per distinct unit), nor the markers evictions leave, and a full index would
/// refuse every new entry, so the cache would stop recording for good. The cut is by
/// stream sequence (the oldest writes go first, whatever their key), sized by the share of
/// the bytes to shed; overwritten keys leave gaps, so a cut may shed less than that, and
/// the next sweep cuts again. An entry cut while its object stays is a miss; the object
/// goes with the objects' own sweep. Returns the messages removed.
pub async fn trim_index(js: &jetstream::Context, subjects: &Subjects) -> Result<u64> {
    let name = Subjects::kv_stream(&subjects.build_cache_bucket());
    // Opening a stream reads its info: the state is as of now.
    let stream = js
        .get_stream(&name)
        .await
        .context("open the index stream")?;
    let info = stream.cached_info();
    let room = u64::try_from(info.config.max_bytes).unwrap_or(0);
    let (bytes, first, last) = (
        info.state.bytes,
        info.state.first_sequence,
        info.state.last_sequence,
    );
    let Some(cut) = index_cut(room, bytes, first, last) else {
        return Ok(0);
    };
    let purged = stream
        .purge()
        .sequence(cut)
        .await
        .context("cut the index back")?
        .purged;
    info!(purged, before = bytes, room, "build cache index cut back");
    Ok(purged)
}

/// The first stream sequence to keep when an index of `bytes` in `room` spans sequences
/// `first..=last`; `None` while it is under the high-water mark (or unbounded).
fn index_cut(room: u64, bytes: u64, first: u64, last: u64) -> Option<u64> {
    if room == 0 || bytes * 100 <= room * INDEX_HIGH_WATER_PERCENT || last < first {
        return None;
    }
    let shed = bytes - room * INDEX_LOW_WATER_PERCENT / 100;
    let span = last - first + 1;
    let drop = (u128::from(span) * u128::from(shed)).div_ceil(u128::from(bytes)) as u64;
    Some(first + drop.clamp(1, span))
}

#[cfg(test)]
mod tests {
    use super::index_cut;

    #[test]
    fn the_index_is_cut_only_past_its_high_water_and_by_the_share_to_shed() {
        assert_eq!(index_cut(1000, 800, 1, 100), None);
        assert_eq!(index_cut(0, 800, 1, 100), None);
        // 900 of 1000 bytes: 300 to shed of 900, a third of sequences 1..=90.
        assert_eq!(index_cut(1000, 900, 1, 90), Some(31));
        // Full: down to 600 of 1000, two fifths of 11..=60.
        assert_eq!(index_cut(1000, 1000, 11, 60), Some(31));
        // One message left: it goes, never past the last.
        assert_eq!(index_cut(10, 10, 5, 5), Some(6));
    }
}
