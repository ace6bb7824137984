//! The worker's wasm caches, all keyed by the module's SHA-256: module bytes on disk (so a
//! module is fetched from the Object Store once per worker), compiled modules on disk
//! (wasmtime's serialized form, keyed also by the engine's configuration, so a second run
//! skips compilation), and a few compiled modules in memory.
//!
//! Entries are core modules or components ([`Program`]); the magic at the start of a compiled
//! entry says which. A compiled entry is native code the worker will map and run, so it is
//! never trusted as found: it carries a header (magic, module hash, engine key, payload length
//! and SHA-256)
//! that is checked before wasmtime sees the payload; a stale or damaged entry is removed and
//! rebuilt. Module bytes are checked against their hash the same way. The disk use of both
//! together is bounded; the least recently used entries go first.

use std::collections::VecDeque;
use std::fs;
use std::hash::{Hash, Hasher};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

use sha2::{Digest, Sha256};
use wasmtime::component::Component;
use wasmtime::{Engine, Module};

/// Magic and format version at the start of every compiled core module entry.
const MAGIC: &[u8; 12] = b"VGASCWASM\0v1";

/// The same for a compiled component (WASI 0.2): same header, other payload.
const MAGIC_COMPONENT: &[u8; 12] = b"VGASCCOMP\0v1";

/// Header bytes: magic, module hash, engine key, payload length, payload hash.
const HEADER_LEN: usize = MAGIC.len() + 32 + 8 + 8 + 32;

/// Compiled modules kept in memory: a warm task skips even the read and check of its entry.
/// Bounded by count; each is the size of its code.
pub(crate) const MEMORY_ENTRIES: usize = 32;

/// A compiled program: a WASI preview 1 core module or a WASI 0.2 component. Both are
/// cheap to clone (shared code).
#[derive(Debug, Clone)]
pub enum Program {
    Core(Module),
    Component(Component),
}

impl Program {
    fn magic(&self) -> &'static [u8; 12] {
        match self {
            Program::Core(_) => MAGIC,
            Program::Component(_) => MAGIC_COMPONENT,
        }
    }

    fn serialize(&self) -> wasmtime::Result<Vec<u8>> {
        match self {
            Program::Core(m) => m.serialize(),
            Program::Component(c) => c.serialize(),
        }
    }
}

/// The disk and memory caches of one worker.
#[derive(Debug)]
pub struct ModuleCache {
    dir: PathBuf,
    bound: u64,
    engine_key: u64,
    memory: RecentlyUsed<Program>,
}

/// A few values by module hash, most recently used kept, bounded by count: the compiled
/// modules here, and the modules pre-linked against WASI (`start::Linkers`).
#[derive(Debug)]
pub(crate) struct RecentlyUsed<V> {
    /// Most recently used last.
    entries: Mutex<VecDeque<(String, V)>>,
    bound: usize,
}

impl<V: Clone> RecentlyUsed<V> {
    pub(crate) fn new(bound: usize) -> RecentlyUsed<V> {
        RecentlyUsed {
            entries: Mutex::default(),
            bound,
        }
    }

    pub(crate) fn get(&self, hex: &str) -> Option<V> {
        let mut entries = self.entries.lock().expect("recently used lock");
        let i = entries.iter().position(|(h, _)| h == hex)?;
        let entry = entries.remove(i)?;
        let value = entry.1.clone();
        entries.push_back(entry);
        Some(value)
    }

    pub(crate) fn put(&self, hex: &str, value: V) {
        let mut entries = self.entries.lock().expect("recently used lock");
        entries.retain(|(h, _)| h != hex);
        if entries.len() >= self.bound {
            entries.pop_front();
        }
        entries.push_back((hex.to_owned(), value));
    }

    pub(crate) fn clear(&self) {
        self.entries.lock().expect("recently used lock").clear();
    }
}

/// SHA-256 of `bytes` as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

impl ModuleCache {
    /// A cache under `dir` (created, mode 0700: only the worker reads compiled code) holding
    /// at most `bound` bytes on disk.
    pub fn open(dir: &Path, bound: u64, engine: &Engine) -> std::io::Result<ModuleCache> {
        use std::os::unix::fs::PermissionsExt;
        for sub in ["modules", "compiled"] {
            fs::create_dir_all(dir.join(sub))?;
        }
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        MAGIC.hash(&mut h);
        Ok(ModuleCache {
            dir: dir.to_path_buf(),
            bound,
            engine_key: h.finish(),
            memory: RecentlyUsed::new(MEMORY_ENTRIES),
        })
    }

    fn module_path(&self, hex: &str) -> PathBuf {
        self.dir.join("modules").join(format!("{hex}.wasm"))
    }

    /// Where the compiled form of module `hex` lives for this engine configuration.
    pub fn compiled_path(&self, hex: &str) -> PathBuf {
        self.dir
            .join("compiled")
            .join(format!("{hex}-{:016x}.cwasm", self.engine_key))
    }

    /// A compiled module from memory.
    pub fn memory_get(&self, hex: &str) -> Option<Program> {
        self.memory.get(hex)
    }

    pub fn memory_put(&self, hex: &str, module: &Program) {
        self.memory.put(hex, module.clone());
    }

    /// Forgets the in-memory entries (benchmarks and tests measure the disk path with it).
    pub fn memory_clear(&self) {
        self.memory.clear();
    }

    /// Module bytes from disk, if present and matching their hash; a mismatch is removed.
    pub fn bytes_get(&self, hex: &str) -> Option<Vec<u8>> {
        let path = self.module_path(hex);
        let bytes = fs::read(&path).ok()?;
        if sha256_hex(&bytes) != hex {
            tracing::warn!(path = %path.display(), "cached module does not match its hash; removed");
            let _ = fs::remove_file(&path);
            return None;
        }
        touch(&path);
        Some(bytes)
    }

    pub fn bytes_put(&self, hex: &str, bytes: &[u8]) -> std::io::Result<()> {
        write_atomic(&self.module_path(hex), &[bytes])?;
        self.evict();
        Ok(())
    }

    /// The compiled module `hex` from disk. A missing entry is `None`; a stale or damaged one
    /// is removed and also `None`, so the caller compiles again.
    pub fn compiled_get(&self, engine: &Engine, hex: &str) -> Option<Program> {
        let path = self.compiled_path(hex);
        let data = fs::read(&path).ok()?;
        match self.check_header(hex, &data) {
            Ok((component, payload)) => {
                // SAFETY: the payload is exactly what `Module::serialize` (or
                // `Component::serialize`, as the magic says) wrote for this module hash and
                // engine configuration: the header's SHA-256 over it matched, and the
                // directory is private to the worker.
                let loaded = if component {
                    unsafe { Component::deserialize(engine, payload) }.map(Program::Component)
                } else {
                    unsafe { Module::deserialize(engine, payload) }.map(Program::Core)
                };
                match loaded {
                    Ok(m) => {
                        touch(&path);
                        Some(m)
                    }
                    Err(e) => {
                        tracing::warn!(path = %path.display(), "compiled module refused by wasmtime ({e}); rebuilding");
                        let _ = fs::remove_file(&path);
                        None
                    }
                }
            }
            Err(why) => {
                tracing::warn!(path = %path.display(), "compiled module entry is {why}; rebuilding");
                let _ = fs::remove_file(&path);
                None
            }
        }
    }

    /// The payload of a compiled entry whose header checks out, and whether it is a component.
    fn check_header<'a>(
        &self,
        hex: &str,
        data: &'a [u8],
    ) -> Result<(bool, &'a [u8]), &'static str> {
        if data.len() < HEADER_LEN {
            return Err("not in the expected format");
        }
        let component = match &data[..MAGIC.len()] {
            m if m == MAGIC => false,
            m if m == MAGIC_COMPONENT => true,
            _ => return Err("not in the expected format"),
        };
        let mut at = MAGIC.len();
        let mut take = |n: usize| {
            let s = &data[at..at + n];
            at += n;
            s
        };
        if hex::encode(take(32)) != hex {
            return Err("for another module");
        }
        let engine_key = u64::from_le_bytes(take(8).try_into().expect("8 bytes"));
        let len = u64::from_le_bytes(take(8).try_into().expect("8 bytes"));
        let sum = take(32).to_vec();
        if engine_key != self.engine_key {
            return Err("for another engine configuration");
        }
        let payload = &data[HEADER_LEN..];
        if payload.len() as u64 != len {
            return Err("truncated");
        }
        if Sha256::digest(payload).as_slice() != sum.as_slice() {
            return Err("damaged (checksum mismatch)");
        }
        Ok((component, payload))
    }

    /// Stores a compiled module; failures only cost a recompile later, so they are logged.
    pub fn compiled_put(&self, hex: &str, module: &Program) {
        let stored = (|| -> Result<(), String> {
            let payload = module.serialize().map_err(|e| e.to_string())?;
            let key = hex::decode(hex).map_err(|e| e.to_string())?;
            let len = (payload.len() as u64).to_le_bytes();
            let sum = Sha256::digest(&payload);
            write_atomic(
                &self.compiled_path(hex),
                &[
                    module.magic(),
                    &key,
                    &self.engine_key.to_le_bytes(),
                    &len,
                    &sum,
                    &payload,
                ],
            )
            .map_err(|e| e.to_string())
        })();
        if let Err(e) = stored {
            tracing::warn!("could not cache the compiled module {hex}: {e}");
        }
        self.evict();
    }

    /// Removes the least recently used files until the disk use is within the bound.
    fn evict(&self) {
        let mut files: Vec<(SystemTime, u64, PathBuf)> = ["modules", "compiled"]
            .iter()
            .filter_map(|sub| fs::read_dir(self.dir.join(sub)).ok())
            .flat_map(|rd| rd.flatten())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                let name = e.file_name();
                // Temporary files of a write in progress are not ours to remove.
                if !m.is_file() || name.to_string_lossy().starts_with('.') {
                    return None;
                }
                Some((m.modified().ok()?, m.len(), e.path()))
            })
            .collect();
        let mut total: u64 = files.iter().map(|f| f.1).sum();
        files.sort();
        for (_, len, path) in files {
            if total <= self.bound {
                break;
            }
            if fs::remove_file(&path).is_ok() {
                total -= len;
            }
        }
    }
}

/// Marks a cache file as just used, for the eviction order.
fn touch(path: &Path) {
    if let Ok(f) = fs::File::options().append(true).open(path) {
        let _ = f.set_modified(SystemTime::now());
    }
}

/// Writes the parts to a temporary file beside `path` and renames it into place, so a reader
/// never sees half an entry.
fn write_atomic(path: &Path, parts: &[&[u8]]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new().prefix(".tmp-").tempfile_in(dir)?;
    for p in parts {
        tmp.write_all(p)?;
    }
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}
