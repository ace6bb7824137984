//! Compiler identity: what a worker reports and a build asks for, so a segment is compiled
//! only by a compiler identical to the submitter's. It runs the compiler's own `--version`,
//! `-dumpmachine` and `-print-prog-name`, short probes with no input; the submitter and the
//! worker (`vgas_worker::env`) call this same code, so both compute an identity alike. Hashing 30 MB of `cc1` costs tens of milliseconds, so identities are kept in
//! a small cache file keyed by each binary's path, size and modification time.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use vgas_shared::farm::CompilerIdentity;
use vgas_shared::VgaError;

/// The cache file's name inside the cache directory.
const CACHE_FILE: &str = "compilers.json";

/// Entries the cache file keeps: a host has a handful of compilers; past this it starts over.
const MAX_CACHE_ENTRIES: usize = 256;

/// The compiler proper that a driver runs, for the families that have one.
fn proper_name(name: &str) -> Option<&'static str> {
    match name {
        "gcc" | "cc" => Some("cc1"),
        "g++" | "c++" => Some("cc1plus"),
        _ => None,
    }
}

/// The family a binary belongs to, from its `--version` line: `gcc`, `g++`, `clang`,
/// `clang++` or `rustc`. `cc` and `c++` are named after what they really are.
fn family(invoked_as: &str, version_line: &str) -> String {
    let cxx = invoked_as.ends_with("++");
    if version_line.starts_with("rustc") {
        "rustc".into()
    } else if version_line.contains("clang") {
        if cxx { "clang++" } else { "clang" }.into()
    } else if cxx {
        "g++".into()
    } else {
        "gcc".into()
    }
}

fn run(path: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(path).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    Some(String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn hash_file(h: &mut Sha256, path: &Path) -> Result<(), VgaError> {
    let bytes = std::fs::read(path)
        .map_err(|e| VgaError::Toolchain(format!("read compiler {}: {e}", path.display())))?;
    h.update((bytes.len() as u64).to_le_bytes());
    h.update(&bytes);
    Ok(())
}

/// Works out the identity of the compiler at `path`, invoked as `invoked_as` (`cc`, `gcc`,
/// `g++`, `clang`, `rustc`...).
pub fn identify(path: &Path, invoked_as: &str) -> Result<CompilerIdentity, VgaError> {
    let missing = || VgaError::Toolchain(format!("{} does not answer --version", path.display()));
    let version_line = run(path, &["--version"])
        .and_then(|s| s.lines().next().map(str::to_owned))
        .ok_or_else(missing)?;
    let name = family(invoked_as, &version_line);
    let (version, target) = if name == "rustc" {
        let v = version_line
            .split_whitespace()
            .nth(1)
            .unwrap_or("")
            .to_owned();
        let vv = run(path, &["-vV"]).unwrap_or_default();
        let host = vv
            .lines()
            .find_map(|l| l.strip_prefix("host: "))
            .unwrap_or("")
            .to_owned();
        (v, host)
    } else {
        let v = run(path, &["-dumpfullversion"])
            .or_else(|| run(path, &["-dumpversion"]))
            .unwrap_or_default();
        (v, run(path, &["-dumpmachine"]).unwrap_or_default())
    };
    let mut h = Sha256::new();
    for s in [&version_line, &target] {
        h.update((s.len() as u64).to_le_bytes());
        h.update(s.as_bytes());
    }
    hash_file(&mut h, path)?;
    if let Some(proper) = proper_name(&name) {
        if let Some(p) = run(path, &[&format!("-print-prog-name={proper}")]) {
            let p = PathBuf::from(p);
            if p.is_absolute() && p.is_file() {
                hash_file(&mut h, &p)?;
            }
        }
    }
    Ok(CompilerIdentity {
        name,
        version_line,
        version,
        target,
        hash: format!("sha256:{}", hex::encode(h.finalize())),
    })
}

/// `identify`, through a cache file in `cache_dir` keyed by the binary's path, size and
/// modification time (and those of nothing else: replacing `cc1` alone under the same driver
/// is caught only when the driver changes too, as with ccache's default `mtime` check).
pub fn identify_cached(
    path: &Path,
    invoked_as: &str,
    cache_dir: Option<&Path>,
) -> Result<CompilerIdentity, VgaError> {
    let Some(dir) = cache_dir else {
        return identify(path, invoked_as);
    };
    let stamp = std::fs::metadata(path)
        .and_then(|m| Ok((m.len(), m.modified()?)))
        .map(|(len, t)| {
            let t = t
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0);
            format!("{}|{invoked_as}|{len}|{t}", path.display())
        })
        .map_err(|e| VgaError::Toolchain(format!("stat {}: {e}", path.display())))?;
    let file = dir.join(CACHE_FILE);
    let mut cache: BTreeMap<String, CompilerIdentity> = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default();
    if let Some(id) = cache.get(&stamp) {
        return Ok(id.clone());
    }
    let id = identify(path, invoked_as)?;
    if cache.len() >= MAX_CACHE_ENTRIES {
        cache.clear();
    }
    cache.insert(stamp, id.clone());
    // Best effort, written whole then renamed: a reader sees the old file or the new one.
    if std::fs::create_dir_all(dir).is_ok() {
        let tmp = dir.join(format!("{CACHE_FILE}.{}", std::process::id()));
        if let Ok(bytes) = serde_json::to_vec(&cache) {
            if std::fs::write(&tmp, bytes).is_ok() {
                let _ = std::fs::rename(&tmp, &file);
            }
        }
    }
    Ok(id)
}

/// Finds `name` on `PATH`, skipping `skip_dir` (the build wrapper's own directory of links).
pub fn which(name: &str, skip_dir: Option<&Path>) -> Option<PathBuf> {
    if name.contains('/') {
        let p = PathBuf::from(name);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .filter(|d| Some(d.as_path()) != skip_dir)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifies_the_system_gcc_and_caches_it() {
        let Some(gcc) = which("gcc", None) else {
            eprintln!("SKIPPED: no gcc on PATH");
            return;
        };
        let id = identify(&gcc, "gcc").unwrap();
        assert_eq!(id.name, "gcc");
        assert!(id.version.split('.').count() >= 2, "{id:?}");
        assert!(id.hash.starts_with("sha256:") && id.hash.len() == 71);
        assert!(id.tag().starts_with("compiler:"));
        // g++ runs cc1plus, not cc1: another identity.
        if let Some(gxx) = which("g++", None) {
            let idx = identify(&gxx, "g++").unwrap();
            assert_eq!(idx.name, "g++");
            assert_ne!(idx.hash, id.hash);
        }
        let dir = tempfile::tempdir().unwrap();
        let a = identify_cached(&gcc, "gcc", Some(dir.path())).unwrap();
        assert!(dir.path().join(CACHE_FILE).is_file());
        let b = identify_cached(&gcc, "gcc", Some(dir.path())).unwrap();
        assert_eq!(a, id);
        assert_eq!(b, id);
    }

    #[test]
    fn a_missing_compiler_is_an_error() {
        assert!(identify(Path::new("/nonexistent/gcc"), "gcc").is_err());
    }
}
