//! Finding NVRTC: the library `VGAS_NVRTC_LIB` names (what `scripts/ensure-tools.sh` installs
//! from PyPI's `nvidia-cuda-nvrtc`), else a system one by its usual names. A worker where it
//! loads offers the `nvrtc` capability and its version; `cuda` tasks compile there, with or
//! without a GPU.

use std::ffi::c_int;
use std::path::{Path, PathBuf};

/// The NVRTC library to use, as a path.
pub const NVRTC_LIB_VAR: &str = "VGAS_NVRTC_LIB";

/// Names tried on the loader's path when `VGAS_NVRTC_LIB` is not set, newest first.
const NAMES: &[&str] = &["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so"];

/// NVRTC as found here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Nvrtc {
    /// A path, or a name the loader finds.
    pub lib: PathBuf,
    /// `13.0`.
    pub version: String,
}

impl Nvrtc {
    /// The first NVRTC that loads and answers its version; `None` when none does.
    pub fn find() -> Option<Nvrtc> {
        match std::env::var_os(NVRTC_LIB_VAR).filter(|v| !v.is_empty()) {
            Some(path) => Self::at(Path::new(&path)),
            None => NAMES.iter().find_map(|n| Self::at(Path::new(n))),
        }
    }

    /// NVRTC at `lib`, if it loads and answers its version.
    pub fn at(lib: &Path) -> Option<Nvrtc> {
        type Version = unsafe extern "C" fn(*mut c_int, *mut c_int) -> c_int;
        // SAFETY: loading NVRTC runs no initialisers with preconditions; `nvrtcVersion` has
        // exactly this signature in every NVRTC and writes two ints.
        let version = unsafe {
            let l = libloading::Library::new(lib.as_os_str()).ok()?;
            let f: libloading::Symbol<Version> = l.get(b"nvrtcVersion\0").ok()?;
            let (mut major, mut minor) = (0, 0);
            (f(&mut major, &mut minor) == 0).then(|| format!("{major}.{minor}"))?
        };
        Some(Nvrtc {
            lib: lib.to_path_buf(),
            version,
        })
    }

    /// The environment a sandboxed process needs to load this NVRTC (and its builtins
    /// library beside it) by the names cudarc looks for. NVRTC under a directory the sandbox
    /// uids cannot enter (a virtual environment in a 0700 home) is copied, with its builtins,
    /// into `work_dir/nvrtc` first ([`super::reachable`]).
    pub fn sandbox_env(&self, work_dir: &Path) -> Result<Vec<(String, String)>, String> {
        let mut lib = self.lib.clone();
        if let Some(dir) = self.lib.parent().filter(|d| !d.as_os_str().is_empty()) {
            let into = work_dir.join("nvrtc");
            lib = super::reachable(&self.lib, &into)?;
            if lib != self.lib {
                for builtins in builtins_beside(dir) {
                    super::reachable(&builtins, &into)?;
                }
            }
        }
        let mut env = vec![(NVRTC_LIB_VAR.to_owned(), lib.display().to_string())];
        if let Some(dir) = lib.parent().filter(|d| !d.as_os_str().is_empty()) {
            env.push(("LD_LIBRARY_PATH".to_owned(), dir.display().to_string()));
        }
        Ok(env)
    }
}

/// NVRTC's builtins libraries in `dir` (`libnvrtc-builtins.so.13.0`), which it loads itself.
fn builtins_beside(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("libnvrtc-builtins.so"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_library_that_is_not_there_is_no_nvrtc() {
        assert_eq!(Nvrtc::at(Path::new("/nonexistent/libnvrtc.so.13")), None);
        // A library that loads but is not NVRTC.
        assert_eq!(Nvrtc::at(Path::new("libc.so.6")), None);
    }

    #[test]
    fn the_pinned_nvrtc_loads_when_installed() {
        // scripts/ensure-tools.sh installs it and exports its path (the test suite sources it).
        let Some(path) = std::env::var_os(NVRTC_LIB_VAR) else {
            eprintln!("{NVRTC_LIB_VAR} is not set: skipped");
            return;
        };
        let n = Nvrtc::at(Path::new(&path)).expect("the installed NVRTC loads");
        assert!(n.version.starts_with("13."), "{}", n.version);
        let work = tempfile::tempdir().unwrap();
        let env = n.sandbox_env(work.path()).unwrap();
        assert!(env.iter().any(|(k, _)| k == "LD_LIBRARY_PATH"), "{env:?}");
    }
}
