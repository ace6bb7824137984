//! The worker's toolchains as a build sees them (seed: `EnvironmentManager`): the compilers
//! on `PATH` with their exact identities, probed once at start, and isolated per-spec
//! environment directories. Why identities: a segment must be compiled by a compiler
//! identical to the submitter's, byte for byte, or the linked program mixes objects of two
//! compilers; the identity (driver and compiler proper hashed, see
//! `vgas_client::toolchain`) is what heartbeats advertise and compile tasks name.
//!
//! An environment is a directory `<work_dir>/envs/<spec key>/` holding `bin/<toolchain>` (a
//! link to the chosen compiler) and `spec.json`, written last so a directory without it is
//! known to be half made; conda environments (`conda`) are created by `micromamba` or `conda`
//! in `conda/` there. A lock file per key serialises set-ups of the same spec, also across
//! workers sharing the work directory.

mod conda;
mod lock;

#[cfg(test)]
mod tests;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};

use vgas_client::toolchain::identify_cached;
use vgas_shared::farm::{CompilerIdentity, EnvSpec, VersionReq};
use vgas_shared::wire::Toolchain;

/// The compilers probed at start, in the order they are looked for (and preferred).
pub const COMPILERS: &[&str] = &["gcc", "g++", "cc", "c++", "clang", "clang++", "rustc"];

/// The directory under the work directory where compiler identities are cached.
const IDENTITY_CACHE_DIR: &str = "toolchains";

/// The directory under the work directory holding the environments.
const ENVS_DIR: &str = "envs";

/// The file in an environment recording its spec; written last, so its presence says the
/// environment is complete.
const SPEC_FILE: &str = "spec.json";

/// A compiler found on this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalCompiler {
    /// The name it was found under on `PATH` (`cc`, `gcc`...).
    pub invoked_as: String,
    /// Where it was found (not resolved: `cc` stays `cc`, which is what its identity covers).
    pub path: PathBuf,
    pub identity: CompilerIdentity,
}

/// A prepared environment (seed: `EnvPath`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvPath {
    /// `<work_dir>/envs/<spec key>`.
    pub root: PathBuf,
    /// The directory to put first on a task's `PATH` (`root/bin`, or `root/conda/bin`).
    pub bin: PathBuf,
    /// The compiler the environment links to; `None` for conda environments.
    pub identity: Option<CompilerIdentity>,
}

/// Why an environment could not be set up. Each message names the worker and what is
/// missing where.
#[derive(Debug, thiserror::Error)]
pub enum EnvError {
    #[error("environment spec is not valid: {0}")]
    InvalidSpec(String),
    #[error("no {toolchain}{wanted} on worker {worker} ({found})")]
    NoMatch {
        toolchain: String,
        /// ` matching ">=13"`, ` with identity sha256:...`, or empty.
        wanted: String,
        worker: String,
        /// `found gcc 12.2.0 at /usr/bin/gcc, ...` or `none found on PATH`.
        found: String,
    },
    #[error(
        "a conda environment needs micromamba or conda, and neither is on the PATH of worker \
         {worker} (searched {searched})"
    )]
    NoCondaTool { worker: String, searched: String },
    #[error("{tool} create failed on worker {worker} ({status}): {stderr_tail}")]
    CondaFailed {
        tool: String,
        worker: String,
        status: String,
        stderr_tail: String,
    },
    #[error("{what} {} on worker {worker}: {source}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        worker: String,
        #[source]
        source: std::io::Error,
    },
}

/// The compilers of this worker and its environments directory (seed: `EnvironmentManager`).
#[derive(Debug)]
pub struct EnvironmentManager {
    worker: String,
    work_dir: PathBuf,
    /// Absolute directories searched for compilers and conda tools, in order.
    search: Vec<PathBuf>,
    compilers: Vec<LocalCompiler>,
}

impl EnvironmentManager {
    /// Probes the compilers on the worker's own `PATH`. Blocking: it runs each compiler's
    /// `--version` and hashes its binaries (cached under `<work_dir>/toolchains`).
    pub fn probe(worker: &str, work_dir: &Path) -> EnvironmentManager {
        let path = std::env::var_os("PATH").unwrap_or_default();
        EnvironmentManager::with_search_path(worker, work_dir, &path)
    }

    /// Probes the compilers in the directories of `search_path` (a `PATH` string; relative
    /// and empty entries are ignored). Blocking, like [`EnvironmentManager::probe`].
    pub fn with_search_path(
        worker: &str,
        work_dir: &Path,
        search_path: &OsStr,
    ) -> EnvironmentManager {
        let search: Vec<PathBuf> = std::env::split_paths(search_path)
            .filter(|d| d.is_absolute())
            .collect();
        let cache = work_dir.join(IDENTITY_CACHE_DIR);
        let mut compilers = Vec::new();
        for name in COMPILERS {
            let Some(path) = find_executable(&search, name) else {
                continue;
            };
            match identify_cached(&path, name, Some(&cache)) {
                Ok(identity) => compilers.push(LocalCompiler {
                    invoked_as: name.to_string(),
                    path,
                    identity,
                }),
                Err(e) => tracing::warn!(compiler = %path.display(), "not offered: {e}"),
            }
        }
        EnvironmentManager {
            worker: worker.to_owned(),
            work_dir: work_dir.to_owned(),
            search,
            compilers,
        }
    }

    /// The worker these compilers belong to, for messages.
    pub fn worker(&self) -> &str {
        &self.worker
    }

    /// The compilers found, in [`COMPILERS`] order.
    pub fn compilers(&self) -> &[LocalCompiler] {
        &self.compilers
    }

    /// The local compiler with exactly this identity (`sha256:<hex>`).
    pub fn compiler_by_identity(&self, hash: &str) -> Option<&LocalCompiler> {
        self.compilers.iter().find(|c| c.identity.hash == hash)
    }

    /// Checks that `compiler` is still what it was at start (through the identity cache, a
    /// `stat` when nothing changed): an upgraded compiler must not compile under its old
    /// identity. The error is a sentence for the task's outcome.
    pub fn verify(&self, compiler: &LocalCompiler) -> Result<(), String> {
        let cache = self.work_dir.join(IDENTITY_CACHE_DIR);
        let now = identify_cached(&compiler.path, &compiler.invoked_as, Some(&cache))
            .map_err(|e| e.to_string())?;
        if now.hash == compiler.identity.hash {
            Ok(())
        } else {
            Err(format!(
                "the compiler at {} changed since worker {} started (was {}, now {}); \
                 restart the worker to offer the new one",
                compiler.path.display(),
                self.worker,
                compiler.identity.hash,
                now.hash
            ))
        }
    }

    /// The capability tag of each compiler identity (`compiler:<32 hex>`), once each.
    pub fn capability_tags(&self) -> Vec<String> {
        let mut seen = HashSet::new();
        self.compilers
            .iter()
            .map(|c| c.identity.tag())
            .filter(|t| seen.insert(t.clone()))
            .collect()
    }

    /// Fills in the identity of the compilers in `toolchains` (matched by the name they were
    /// found under) and adds the compilers the list lacks.
    pub fn annotate(&self, toolchains: &mut Vec<Toolchain>) {
        for c in &self.compilers {
            match toolchains.iter_mut().find(|t| t.name == c.invoked_as) {
                Some(t) => t.identity = Some(c.identity.clone()),
                None => toolchains.push(Toolchain {
                    name: c.invoked_as.clone(),
                    version: c.identity.version_line.clone(),
                    path: c.path.display().to_string(),
                    identity: Some(c.identity.clone()),
                }),
            }
        }
    }

    /// What a heartbeat offers: the compilers' identities in `toolchains` (see
    /// [`EnvironmentManager::annotate`]), then every toolchain's name and every compiler's
    /// identity tag added to `capabilities`, once each.
    pub fn offer(&self, toolchains: &mut Vec<Toolchain>, capabilities: &mut Vec<String>) {
        self.annotate(toolchains);
        let names = toolchains.iter().map(|t| t.name.clone());
        for tag in names.chain(self.capability_tags()) {
            if !capabilities.contains(&tag) {
                capabilities.push(tag);
            }
        }
    }

    /// Finds a toolchain matching `spec` and prepares (or reuses) its isolated directory
    /// `<work_dir>/envs/<spec.key()>/`. Blocking: a conda environment may take minutes.
    pub fn setup_sandboxed_environment(&self, spec: &EnvSpec) -> Result<EnvPath, EnvError> {
        spec.validate()
            .map_err(|e| EnvError::InvalidSpec(e.to_string()))?;
        let root = self.work_dir.join(ENVS_DIR).join(spec.key());
        if spec.toolchain == "conda" {
            let tool = conda::find_tool(&self.search).ok_or_else(|| EnvError::NoCondaTool {
                worker: self.worker.clone(),
                searched: self.searched(),
            })?;
            let _lock = lock::EnvLock::acquire(&root).map_err(|e| self.io("lock", &root, e))?;
            return conda::setup(self, &tool, spec, &root);
        }
        let compiler = self.choose(spec)?;
        let _lock = lock::EnvLock::acquire(&root).map_err(|e| self.io("lock", &root, e))?;
        let bin = root.join("bin");
        let link = bin.join(&spec.toolchain);
        let env = EnvPath {
            root: root.clone(),
            bin: bin.clone(),
            identity: Some(compiler.identity.clone()),
        };
        if spec_matches(&root, spec)
            && std::fs::read_link(&link).ok() == Some(compiler.path.clone())
        {
            return Ok(env);
        }
        self.fresh_dir(&root)?;
        std::fs::create_dir_all(&bin).map_err(|e| self.io("create", &bin, e))?;
        std::os::unix::fs::symlink(&compiler.path, &link).map_err(|e| self.io("link", &link, e))?;
        self.write_spec(&root, spec)?;
        Ok(env)
    }

    /// The compiler for a (non-conda) spec: its family, version and identity must match;
    /// among several, the one found under the toolchain's own name comes first.
    fn choose(&self, spec: &EnvSpec) -> Result<&LocalCompiler, EnvError> {
        let req = match &spec.version {
            Some(v) => {
                Some(VersionReq::parse(v).map_err(|e| EnvError::InvalidSpec(e.to_string()))?)
            }
            None => None,
        };
        let family: Vec<&LocalCompiler> = self
            .compilers
            .iter()
            .filter(|c| c.identity.name == spec.toolchain)
            .collect();
        let fits = |c: &&&LocalCompiler| {
            req.as_ref().is_none_or(|r| r.matches(&c.identity.version))
                && spec.identity.as_ref().is_none_or(|h| *h == c.identity.hash)
        };
        let best = family
            .iter()
            .filter(fits)
            .find(|c| c.invoked_as == spec.toolchain)
            .or_else(|| family.iter().find(fits));
        if let Some(c) = best {
            return Ok(c);
        }
        let mut wanted = String::new();
        if let Some(v) = &spec.version {
            wanted.push_str(&format!(" matching {v:?}"));
        }
        if let Some(h) = &spec.identity {
            wanted.push_str(&format!(" with identity {h}"));
        }
        let found = if family.is_empty() {
            format!("none found in {}", self.searched())
        } else {
            let each: Vec<String> = family
                .iter()
                .map(|c| {
                    let id = match &spec.identity {
                        Some(_) => format!(" {}", c.identity.hash),
                        None => String::new(),
                    };
                    let v = &c.identity.version;
                    format!("{} {v}{id} at {}", c.identity.name, c.path.display())
                })
                .collect();
            format!("found {}", each.join(", "))
        };
        Err(EnvError::NoMatch {
            toolchain: spec.toolchain.clone(),
            wanted,
            worker: self.worker.clone(),
            found,
        })
    }

    /// The searched directories, for messages.
    fn searched(&self) -> String {
        if self.search.is_empty() {
            return "an empty PATH".into();
        }
        let dirs: Vec<String> = self
            .search
            .iter()
            .map(|d| d.display().to_string())
            .collect();
        dirs.join(":")
    }

    /// Removes whatever is at `root` (a half-made or stale environment) and creates it empty.
    fn fresh_dir(&self, root: &Path) -> Result<(), EnvError> {
        match std::fs::remove_dir_all(root) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(self.io("remove stale environment", root, e)),
        }
        std::fs::create_dir_all(root).map_err(|e| self.io("create", root, e))
    }

    /// Writes `spec.json` whole, then renames it into place: the mark of a complete
    /// environment.
    fn write_spec(&self, root: &Path, spec: &EnvSpec) -> Result<(), EnvError> {
        let bytes = serde_json::to_vec_pretty(spec).map_err(|e| {
            self.io(
                "encode spec for",
                root,
                std::io::Error::other(e.to_string()),
            )
        })?;
        let tmp = root.join(format!("{SPEC_FILE}.tmp"));
        std::fs::write(&tmp, bytes).map_err(|e| self.io("write", &tmp, e))?;
        let file = root.join(SPEC_FILE);
        std::fs::rename(&tmp, &file).map_err(|e| self.io("write", &file, e))
    }

    fn io(&self, what: &'static str, path: &Path, source: std::io::Error) -> EnvError {
        EnvError::Io {
            what,
            path: path.to_owned(),
            worker: self.worker.clone(),
            source,
        }
    }
}

/// Whether `root` holds a complete environment made for exactly `spec`.
fn spec_matches(root: &Path, spec: &EnvSpec) -> bool {
    std::fs::read(root.join(SPEC_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice::<EnvSpec>(&b).ok())
        .is_some_and(|s| s == *spec)
}

/// The first executable regular file called `name` in `dirs`.
fn find_executable(dirs: &[PathBuf], name: &str) -> Option<PathBuf> {
    dirs.iter().map(|d| d.join(name)).find(|p| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    })
}
