//! The worker's wasmtime sandbox: runs one `wasm` task, a WASI command named by the SHA-256
//! of its bytes (a preview 1 core module exporting `_start`, or a WASI 0.2 component
//! exporting `wasi:cli/run`), in a fresh directory that is its only preopened path, with no
//! network, only the task's own environment, a memory limit (`ResourceLimiter`), CPU and
//! wall-clock limits (epoch interruption), caps on output and on the files it writes, its
//! output streamed as it runs and the files it wrote handed back as artifacts.
//!
//! Why wasm beside the native sandbox: a WASI module runs the same on every worker, whatever
//! its OS and installed tools, and cannot reach anything it was not given, so a team ships a
//! generator or a compiler once and runs it anywhere in the swarm.
//!
//! Layout: [`WasmRuntime`] here owns the engine, the epoch ticker and the caches and loads
//! modules (memory, then compiled on disk, then bytes on disk, then the Object Store);
//! `cache` is the disk and memory caches; `exec` runs one task; `guard` holds the limits and
//! the reason a run was stopped; `stdio` streams stdout and stderr; `artifacts` collects the
//! files a run wrote and uploads the large ones to the artifacts Object Store bucket.

mod artifacts;
mod cache;
mod dirs;
mod exec;
mod guard;
mod start;
mod stdio;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod tests_component;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::AsyncReadExt as _;
use vgas_shared::limits::{DEFAULT_WASM_CACHE_BYTES, MAX_MODULE_BYTES};
use vgas_shared::wire::ModuleRef;
use wasmtime::component::Component;
use wasmtime::{Config, Engine, Module, OptLevel};

pub use artifacts::{collect_artifacts, read_inline, upload, Artifact, ArtifactBody};
pub use cache::{sha256_hex, ModuleCache, Program};
pub use dirs::TaskDir;
pub use exec::WasmRun;

/// How often the engine's epoch advances: the granularity of the deadline, CPU and cancel
/// checks of a running module (and what a check costs it: one callback per tick).
pub const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Worker-wide wasm settings.
#[derive(Debug, Clone)]
pub struct WasmConfig {
    /// Where module bytes and compiled modules are cached.
    pub cache_dir: PathBuf,
    /// Disk bound of that cache.
    pub cache_bytes: u64,
    /// Where each module came from is counted here.
    pub metrics: Arc<crate::metrics::WorkerMetrics>,
}

impl WasmConfig {
    pub fn new(cache_dir: PathBuf) -> WasmConfig {
        WasmConfig {
            cache_dir,
            cache_bytes: DEFAULT_WASM_CACHE_BYTES,
            metrics: Arc::default(),
        }
    }
}

/// Where content-addressed bytes come from: wasm modules when no cache has them, and build
/// segment sources too large to ride in their task (the Object Store buckets on a worker).
pub trait ModuleSource: Sync {
    /// The bytes stored under `name` (`sha256:<hex>`); `Ok(None)` if there is no such object.
    fn fetch(&self, name: &str) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + Send;

    /// [`ModuleSource::fetch`], then a check that the bytes hash to their name: bytes stored
    /// under the wrong name are refused, never used. The error is a sentence for the
    /// outcome. A source that keeps bytes it checked before may hand them out unhashed.
    fn fetch_checked(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Vec<u8>>, String>> + Send {
        async move {
            let checked = ModuleRef::parse(name).map_err(|e| e.to_string())?;
            let Some(bytes) = self.fetch(name).await? else {
                return Ok(None);
            };
            let got = sha256_hex(&bytes);
            if got != checked.hex() {
                return Err(format!(
                    "the bytes stored as {name} have hash sha256:{got}; refusing to use them"
                ));
            }
            Ok(Some(bytes))
        }
    }
}

/// An Object Store bucket of the swarm holding objects named by the SHA-256 of their bytes,
/// read with the worker's connection.
#[derive(Debug, Clone)]
pub struct ObjectStoreSource {
    pub js: async_nats::jetstream::Context,
    pub bucket: String,
    /// What the bucket holds, for messages (`module`, `source`).
    pub what: &'static str,
    /// Largest object read; a larger one is an error before any byte is read.
    pub max_bytes: u64,
    /// The bucket, once opened (a `STREAM.INFO` round trip, made once, not per fetch).
    store: OpenedStore,
}

/// An Object Store bucket opened at most once, shared by the clones of its source.
#[derive(Clone, Default)]
struct OpenedStore(Arc<tokio::sync::OnceCell<async_nats::jetstream::object_store::ObjectStore>>);

impl std::fmt::Debug for OpenedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.initialized() {
            "open"
        } else {
            "not open"
        })
    }
}

impl ObjectStoreSource {
    pub fn new(
        js: async_nats::jetstream::Context,
        bucket: String,
        what: &'static str,
        max_bytes: u64,
    ) -> ObjectStoreSource {
        ObjectStoreSource {
            js,
            bucket,
            what,
            max_bytes,
            store: Default::default(),
        }
    }

    /// The wasm modules bucket.
    pub fn modules(js: async_nats::jetstream::Context, bucket: String) -> ObjectStoreSource {
        ObjectStoreSource::new(js, bucket, "module", MAX_MODULE_BYTES)
    }
}

impl ModuleSource for ObjectStoreSource {
    async fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        use async_nats::jetstream::object_store::GetErrorKind;
        let store = self
            .store
            .0
            .get_or_try_init(|| self.js.get_object_store(&self.bucket))
            .await
            .map_err(|e| format!("cannot open the bucket {}: {e}", self.bucket))?;
        let mut object = match store.get(name).await {
            Ok(o) => o,
            Err(e) if e.kind() == GetErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(format!("cannot read {name} from {}: {e}", self.bucket)),
        };
        if object.info.size as u64 > self.max_bytes {
            return Err(format!(
                "{} {name} is {} MiB; the limit is {} MiB",
                self.what,
                object.info.size >> 20,
                self.max_bytes >> 20
            ));
        }
        let mut bytes = Vec::with_capacity(object.info.size);
        (&mut object)
            .take(self.max_bytes + 1)
            .read_to_end(&mut bytes)
            .await
            .map_err(|e| format!("reading {name} from {}: {e}", self.bucket))?;
        if bytes.len() as u64 > self.max_bytes {
            return Err(format!(
                "{} {name} is over the limit of {} MiB",
                self.what,
                self.max_bytes >> 20
            ));
        }
        Ok(Some(bytes))
    }
}

/// The engine, its epoch ticker, the module caches, the WASI linkers and the warm task
/// directories of one worker.
#[derive(Debug)]
pub struct WasmRuntime {
    engine: Engine,
    /// Shared with the blocking threads that instantiate.
    linkers: Arc<start::Linkers>,
    dirs: Arc<dirs::DirPool>,
    /// Shared with the blocking threads that read, check and write entries.
    cache: Arc<ModuleCache>,
    /// Stops the ticker thread when the runtime is dropped.
    ticker_stop: Arc<AtomicBool>,
    metrics: Arc<crate::metrics::WorkerMetrics>,
}

impl Drop for WasmRuntime {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Release);
    }
}

/// How a module was loaded, for logs and benchmarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoadedFrom {
    Memory,
    CompiledCache,
    Compiled,
}

impl WasmRuntime {
    /// The engine (Cranelift, epoch interruption) and the caches under `cfg.cache_dir`.
    pub fn new(cfg: &WasmConfig) -> anyhow::Result<WasmRuntime> {
        let mut config = Config::new();
        config.epoch_interruption(true);
        config.cranelift_opt_level(OptLevel::Speed);
        let engine = Engine::new(&config).map_err(|e| anyhow::anyhow!("wasm engine: {e}"))?;
        let cache = ModuleCache::open(&cfg.cache_dir, cfg.cache_bytes, &engine)
            .map_err(|e| anyhow::anyhow!("wasm cache {}: {e}", cfg.cache_dir.display()))?;
        let linkers =
            start::Linkers::new(&engine).map_err(|e| anyhow::anyhow!("WASI linkers: {e}"))?;
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (stop, ticking) = (ticker_stop.clone(), engine.clone());
        std::thread::Builder::new()
            .name("vgas-wasm-epoch".into())
            .spawn(move || {
                while !stop.load(Ordering::Acquire) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })?;
        Ok(WasmRuntime {
            engine,
            linkers: Arc::new(linkers),
            dirs: Arc::default(),
            cache: Arc::new(cache),
            ticker_stop,
            metrics: cfg.metrics.clone(),
        })
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn cache(&self) -> &ModuleCache {
        &self.cache
    }

    /// Forgets what is warm in memory, compiled modules and their pre-linked forms alike, so
    /// the next load starts from the disk cache as after a restart (benchmarks and tests
    /// measure that path with it).
    pub fn forget_memory(&self) {
        self.cache.memory_clear();
        self.linkers.forget();
    }

    /// The compiled module `name`: from memory, the compiled cache, or compiled from bytes
    /// found on disk or fetched from `source` (checked against the hash first). The error is
    /// a sentence for the task's outcome.
    pub async fn load(
        &self,
        name: &ModuleRef,
        source: &impl ModuleSource,
    ) -> Result<(Program, LoadedFrom), String> {
        let hex = name.hex();
        if let Some(m) = self.cache.memory_get(hex) {
            return Ok((m, LoadedFrom::Memory));
        }
        // Reading and checking entries (hashing up to hundreds of MB) is blocking work.
        let (cache, engine, key) = (self.cache.clone(), self.engine.clone(), hex.to_owned());
        let on_disk =
            tokio::task::spawn_blocking(move || match cache.compiled_get(&engine, &key) {
                Some(m) => Ok(m),
                None => Err(cache.bytes_get(&key)),
            })
            .await
            .map_err(|e| format!("reading the module cache: {e}"))?;
        let cached_bytes = match on_disk {
            Ok(m) => {
                self.cache.memory_put(hex, &m);
                return Ok((m, LoadedFrom::CompiledCache));
            }
            Err(bytes) => bytes,
        };
        let bytes = match cached_bytes {
            Some(b) => b,
            None => source.fetch_checked(name.as_str()).await?.ok_or_else(|| {
                format!(
                    "module {name} is not in the modules bucket; upload it first \
                     (`vgas submit --wasm FILE` does, or `nats object put`)"
                )
            })?,
        };
        let module = self.compile(name, bytes).await?;
        self.cache.memory_put(hex, &module);
        Ok((module, LoadedFrom::Compiled))
    }

    /// Compiles `bytes` (a core module or a component, as their header says) off the async
    /// threads and stores them and the result in the caches.
    async fn compile(&self, name: &ModuleRef, bytes: Vec<u8>) -> Result<Program, String> {
        let component = is_component(&bytes);
        let len = bytes.len();
        let hex = name.hex().to_owned();
        let (engine, cache) = (self.engine.clone(), self.cache.clone());
        let started = Instant::now();
        let module = tokio::task::spawn_blocking(move || {
            let module = if component {
                Program::Component(Component::new(&engine, &bytes)?)
            } else {
                Program::Core(Module::new(&engine, &bytes)?)
            };
            if let Err(e) = cache.bytes_put(&hex, &bytes) {
                tracing::warn!("could not cache module {hex}: {e}");
            }
            cache.compiled_put(&hex, &module);
            Ok::<_, wasmtime::Error>(module)
        })
        .await
        .map_err(|e| format!("compiling {name}: {e}"))?
        .map_err(|e| {
            let what = if component { "component" } else { "module" };
            format!("{name} is not a valid WebAssembly {what}: {e:#}")
        })?;
        tracing::info!(
            module = name.as_str(),
            component,
            bytes = len,
            ms = started.elapsed().as_millis() as u64,
            "compiled"
        );
        Ok(module)
    }
}

/// Whether `bytes` are a component: the preamble's version and layer fields (`0d 00 01 00`;
/// a core module has `01 00 00 00`).
pub fn is_component(bytes: &[u8]) -> bool {
    bytes.get(4..8) == Some(&[0x0d, 0x00, 0x01, 0x00])
}
