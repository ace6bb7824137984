//! Direct mode, as ccache calls it: a cache hit without running the preprocessor. Running
//! `gcc -E` costs tens of milliseconds a unit (two process starts), more than everything else
//! a hit does, so a rebuild after `make clean` would be bounded by it. The first time a unit
//! is compiled its *manifest* is stored in the cache index under a *direct key* (compiler
//! identity, every flag, directory, source name and source bytes): the cache key of its
//! preprocessed text, and every file its line markers named with the SHA-256 of its bytes
//! (plus the dependency file `-MD` wrote, if any). Next time, if every listed file still has
//! those bytes, the manifest's cache key is looked up directly.
//!
//! What this cannot see, as in ccache: a header created since, earlier on the include path
//! than the one the manifest lists (it would shadow it). Units whose files use `__DATE__`,
//! `__TIME__` or `__TIMESTAMP__` never get a manifest. `VGAS_DIRECT=0` turns it off.
//!
//! Inside one `vgas build`, a file's hash is computed once and reused while its size and
//! modification time stay the same (`FileHashes::memoized`): the system headers every unit
//! includes are read once per build, not once per unit.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use sha2::{Digest, Sha256};

use super::args::CompileJob;
use super::cache::{BuildCache, Manifest};
use super::local::CompilerEnv;
use super::prepare::line_marker_files;

/// `0` turns direct mode off.
pub const ENV_DIRECT: &str = "VGAS_DIRECT";

/// Environment variables that change what the preprocessor finds or expands.
const PREPROCESSOR_ENV: &[&str] = &[
    "CPATH",
    "C_INCLUDE_PATH",
    "CPLUS_INCLUDE_PATH",
    "OBJC_INCLUDE_PATH",
    "SOURCE_DATE_EPOCH",
    "GCC_EXEC_PREFIX",
    "COMPILER_PATH",
];

/// Files one manifest may list (a unit with more is not worth checking file by file).
const MAX_MANIFEST_FILES: usize = 4096;

/// Macros whose value changes from one compile to the next.
const VOLATILE_MACROS: &[&[u8]] = &[b"__DATE__", b"__TIME__", b"__TIMESTAMP__"];

/// What direct mode needs to know of one file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileFacts {
    pub sha256: String,
    pub modified: SystemTime,
    /// It uses `__DATE__`, `__TIME__` or `__TIMESTAMP__`.
    pub volatile: bool,
}

type Memo = HashMap<PathBuf, (u64, SystemTime, FileFacts)>;

/// Hashes files, remembering them by size and modification time when memoized.
#[derive(Debug, Clone, Default)]
pub struct FileHashes {
    memo: Option<Arc<Mutex<Memo>>>,
}

impl FileHashes {
    /// Every file read and hashed each time (a standalone wrapper: one unit per process).
    pub fn uncached() -> FileHashes {
        FileHashes { memo: None }
    }

    /// Files remembered for the life of this value (the helper of one `vgas build`).
    pub fn memoized() -> FileHashes {
        FileHashes {
            memo: Some(Arc::default()),
        }
    }

    /// The facts of the regular file at `path`, or `None` if it cannot be read.
    pub fn facts(&self, path: &Path) -> Option<FileFacts> {
        let meta = std::fs::metadata(path).ok()?;
        if !meta.is_file() {
            return None;
        }
        let (len, modified) = (meta.len(), meta.modified().ok()?);
        if let Some(memo) = &self.memo {
            if let Some((l, t, f)) = memo.lock().ok()?.get(path) {
                if *l == len && *t == modified {
                    return Some(f.clone());
                }
            }
        }
        let bytes = std::fs::read(path).ok()?;
        let facts = FileFacts {
            sha256: sha256_hex(&bytes),
            modified,
            volatile: volatile(&bytes),
        };
        if let Some(memo) = &self.memo {
            if let Ok(mut m) = memo.lock() {
                m.insert(path.to_owned(), (len, modified, facts.clone()));
            }
        }
        Some(facts)
    }
}

fn env_var(env: &CompilerEnv, name: &str) -> String {
    match env {
        Some(vars) => vars
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default(),
        None => std::env::var(name).unwrap_or_default(),
    }
}

/// One unit's direct-mode state, from before it is preprocessed to after it is compiled.
#[derive(Debug, Clone)]
pub struct Direct {
    key: String,
    cwd: PathBuf,
    deps_file: Option<String>,
    /// The dependency file lists every file read (`-MD`, not `-MMD`).
    deps_complete: bool,
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn volatile(bytes: &[u8]) -> bool {
    VOLATILE_MACROS
        .iter()
        .any(|m| bytes.windows(m.len()).any(|w| w == *m))
}

/// The dependency file the preprocessing step (`args`, a job's `preprocess_args`) writes, if
/// it writes one: the driver's `-MD` or `-MMD` with `-MF` (which `preprocess_args` always
/// names), or the preprocessor's own `-Wp,-MD,FILE` and `-Wp,-MMD,FILE` (Linux's Kbuild
/// writes `.x.o.d` this way). The last one named wins, as in GCC.
fn deps_file(args: &[String]) -> Option<String> {
    let driver_deps = args.iter().any(|a| a == "-MD" || a == "-MMD");
    let mut found = None;
    let mut it = args.iter();
    while let Some(a) = it.next() {
        if let Some(list) = a.strip_prefix("-Wp,") {
            let parts: Vec<&str> = list.split(',').collect();
            for w in parts.windows(2) {
                if matches!(w[0], "-MD" | "-MMD") && !w[1].is_empty() {
                    found = Some(w[1].to_owned());
                }
            }
        } else if driver_deps && a == "-MF" {
            found = it.next().cloned();
        } else if let Some(p) = a.strip_prefix("-MF").filter(|_| driver_deps) {
            found = Some(p.to_owned());
        }
    }
    found
}

impl Direct {
    /// The direct key of `job`, or `None` when direct mode is off or does not apply.
    pub fn new(
        identity_hash: &str,
        job: &CompileJob,
        cwd: &Path,
        env: &CompilerEnv,
        hashes: &FileHashes,
    ) -> Option<Direct> {
        if env_var(env, ENV_DIRECT) == "0" {
            return None;
        }
        let source = hashes.facts(&cwd.join(&job.source))?;
        if source.volatile {
            return None;
        }
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(b"vgas-direct-1");
        field(identity_hash.as_bytes());
        field(job.language.x_arg().as_bytes());
        let pp_args = job.preprocess_args();
        for a in pp_args.iter().chain(&job.compile_args) {
            field(a.as_bytes());
        }
        field(job.output.as_bytes());
        field(cwd.as_os_str().as_encoded_bytes());
        for v in PREPROCESSOR_ENV {
            field(env_var(env, v).as_bytes());
        }
        field(source.sha256.as_bytes());
        Some(Direct {
            key: format!("direct.{}", hex::encode(h.finalize())),
            cwd: cwd.to_owned(),
            deps_file: deps_file(&pp_args),
            deps_complete: !pp_args
                .iter()
                .any(|a| a == "-MMD" || (a.starts_with("-Wp,") && a.contains("-MMD"))),
        })
    }

    /// The cache key the manifest names, if there is one and every file it lists is
    /// unchanged; writes the dependency file back, as the preprocessor would have.
    pub async fn lookup(&self, cache: &BuildCache, hashes: &FileHashes) -> Option<String> {
        let manifest = cache.manifest(&self.key).await?;
        let (m, hashes) = (manifest.clone(), hashes.clone());
        let unchanged = tokio::task::spawn_blocking(move || {
            m.files.iter().all(|(path, hash)| {
                hashes
                    .facts(Path::new(path))
                    .is_some_and(|f| f.sha256 == *hash)
            })
        })
        .await
        .unwrap_or(false);
        if !unchanged {
            return None;
        }
        if let Some((path, text)) = &manifest.deps {
            if tokio::fs::write(self.cwd.join(path), text).await.is_err() {
                return None;
            }
        }
        Some(manifest.key)
    }

    /// The unit's dependency file as it is now, for its manifest; `None` when the unit has one
    /// that cannot be read (then it gets no manifest). Read before the unit answers its
    /// build tool, which may delete the file as soon as the compile returns: ninja reads a
    /// `deps = gcc` file (CMake's and Meson's rules) into its own log and removes it.
    pub async fn deps_now(&self) -> Option<DepsNow> {
        match &self.deps_file {
            None => Some(DepsNow(None)),
            Some(p) => {
                let text = tokio::fs::read_to_string(self.cwd.join(p)).await.ok()?;
                Some(DepsNow(Some((p.clone(), text))))
            }
        }
    }

    /// [`Direct::deps_now`] from a dependency file's text the caller has read already: the
    /// unit's own file's (`None` when the unit writes none, and the text was of a file of
    /// ours).
    pub fn deps_read(&self, text: String) -> DepsNow {
        DepsNow(self.deps_file.clone().map(|p| (p, text)))
    }

    /// Stores the manifest of a unit just compiled from preprocessed text `pp` with cache key
    /// `key`, preprocessed from `started` on, with its dependency file as read by
    /// [`Direct::deps_now`]. Quietly does nothing when a file cannot be read, uses a volatile
    /// macro, or was modified since `started` (its bytes now may not be the ones
    /// preprocessed).
    pub async fn record(
        &self,
        cache: &BuildCache,
        key: &str,
        pp: &[u8],
        started: SystemTime,
        hashes: &FileHashes,
        deps: DepsNow,
    ) {
        let names: Vec<String> = line_marker_files(pp)
            .into_iter()
            .map(|(name, _)| name)
            .collect();
        if let Some(read) = self.files_read(names, started, hashes, deps).await {
            cache.put_manifest(&self.key, &read.manifest(key)).await;
        }
    }

    /// The files a unit read (`names`, relative to its directory or absolute) with their
    /// hashes, and its dependency file (`deps`); `None` when one cannot be read, uses a
    /// volatile macro, or was modified since `started`.
    pub async fn files_read(
        &self,
        names: Vec<String>,
        started: SystemTime,
        hashes: &FileHashes,
        deps: DepsNow,
    ) -> Option<FilesRead> {
        let cwd = self.cwd.clone();
        let hashes = hashes.clone();
        tokio::task::spawn_blocking(move || {
            if names.len() > MAX_MANIFEST_FILES {
                return None;
            }
            let mut files = Vec::with_capacity(names.len());
            for n in names {
                let path = cwd.join(&n);
                let f = hashes.facts(&path)?;
                if f.modified >= started || f.volatile {
                    return None;
                }
                files.push((path.to_str()?.to_owned(), f.sha256));
            }
            Some(FilesRead {
                files,
                deps: deps.0,
            })
        })
        .await
        .ok()
        .flatten()
    }

    /// A cache key for a unit compiled without preprocessing (ccache's depend mode): this
    /// direct key and every file the unit read, with its hash. It names the same object
    /// whenever those bytes are the same, as the preprocessed text's key would.
    pub fn depend_key(&self, read: &FilesRead) -> String {
        let mut h = Sha256::new();
        let mut field = |b: &[u8]| {
            h.update((b.len() as u64).to_le_bytes());
            h.update(b);
        };
        field(b"vgas-depend-1");
        field(self.key.as_bytes());
        for (path, sha) in &read.files {
            field(path.as_bytes());
            field(sha.as_bytes());
        }
        hex::encode(h.finalize())
    }

    /// Stores the manifest naming `key` for what `read` lists.
    pub async fn put(&self, cache: &BuildCache, key: &str, read: &FilesRead) {
        cache.put_manifest(&self.key, &read.manifest(key)).await;
    }

    /// The dependency file the unit writes (relative to its directory), and whether it lists
    /// every file read (`-MD`; `-MMD` leaves system headers out).
    pub fn deps_file(&self) -> Option<(&str, bool)> {
        self.deps_file.as_deref().map(|f| (f, self.deps_complete))
    }
}

/// A unit's dependency file (its path relative to the unit's directory, and its text) as
/// [`Direct::deps_now`] read it, or `None` when the unit writes none.
#[derive(Debug, Clone)]
pub struct DepsNow(Option<(String, String)>);

/// What a unit read, for its manifest.
#[derive(Debug, Clone)]
pub struct FilesRead {
    /// Absolute path and SHA-256 of every file.
    files: Vec<(String, String)>,
    /// The unit's own dependency file and its text, written back on a hit.
    deps: Option<(String, String)>,
}

impl FilesRead {
    fn manifest(&self, key: &str) -> Manifest {
        Manifest {
            key: key.to_owned(),
            files: self.files.clone(),
            deps: self.deps.clone(),
        }
    }
}

/// The prerequisites of the first rule of a Makefile dependency file as GCC writes it
/// (`obj.o: a.c b.h \` continued over lines, `\ ` for a space, `$$` for `$`); later rules
/// (`-MP`'s empty ones) are ignored. `None` when the text has no rule.
pub fn dependencies(text: &str) -> Option<Vec<String>> {
    let mut rule = String::new();
    for line in text.lines() {
        match line.strip_suffix('\\') {
            Some(cont) => {
                rule.push_str(cont);
                rule.push(' ');
            }
            None => {
                rule.push_str(line);
                break;
            }
        }
    }
    // The targets end at the first ':' followed by a blank or the end.
    let bytes = rule.as_bytes();
    let colon = (0..bytes.len())
        .find(|&i| bytes[i] == b':' && bytes.get(i + 1).is_none_or(|b| b.is_ascii_whitespace()))?;
    let mut deps = Vec::new();
    let mut word = String::new();
    let mut chars = rule[colon + 1..].chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' if chars
                .peek()
                .is_some_and(|n| *n == ' ' || *n == '#' || *n == '\\') =>
            {
                word.push(chars.next().unwrap_or(' '));
            }
            '$' if chars.peek() == Some(&'$') => {
                chars.next();
                word.push('$');
            }
            c if c.is_whitespace() => {
                if !word.is_empty() {
                    deps.push(std::mem::take(&mut word));
                }
            }
            c => word.push(c),
        }
    }
    if !word.is_empty() {
        deps.push(word);
    }
    Some(deps)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::farm::args::{classify, Invocation};

    fn job(cmd: &str) -> CompileJob {
        let args: Vec<String> = cmd.split_whitespace().map(str::to_owned).collect();
        match classify(&args, false) {
            Invocation::Distribute(j) => j,
            Invocation::Local(why) => panic!("{why}"),
        }
    }

    #[test]
    fn the_key_follows_flags_source_and_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.c"), "int a;\n").unwrap();
        let h = FileHashes::uncached();
        let key = |cmd: &str, cwd: &Path| Direct::new("id", &job(cmd), cwd, &None, &h).unwrap().key;
        let base = key("-O2 -c a.c -o a.o", dir.path());
        assert_eq!(base, key("-O2 -c a.c -o a.o", dir.path()));
        assert_ne!(base, key("-O1 -c a.c -o a.o", dir.path()));
        assert_ne!(base, key("-O2 -DX -c a.c -o a.o", dir.path()));
        assert_ne!(base, key("-O2 -c a.c -o b.o", dir.path()));
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("a.c"), "int a;\n").unwrap();
        assert_ne!(base, key("-O2 -c a.c -o a.o", other.path()));
        std::fs::write(dir.path().join("a.c"), "int b;\n").unwrap();
        assert_ne!(base, key("-O2 -c a.c -o a.o", dir.path()));
    }

    #[test]
    fn volatile_macros_and_dependency_files_are_seen() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("t.c"), "const char *t = __TIME__;\n").unwrap();
        let h = FileHashes::memoized();
        assert!(Direct::new("id", &job("-c t.c -o t.o"), dir.path(), &None, &h).is_none());
        std::fs::write(dir.path().join("d.c"), "int d;\n").unwrap();
        let d = Direct::new("id", &job("-MMD -c d.c -o obj/d.o"), dir.path(), &None, &h).unwrap();
        assert_eq!(d.deps_file.as_deref(), Some("obj/d.d"));
        let d = Direct::new(
            "id",
            &job("-MD -MF x.dep -c d.c -o d.o"),
            dir.path(),
            &None,
            &h,
        )
        .unwrap();
        assert_eq!(d.deps_file.as_deref(), Some("x.dep"));
        // The preprocessor's own forms, as Linux's Kbuild writes them.
        let d = Direct::new(
            "id",
            &job("-Wp,-MMD,obj/.d.o.d -c d.c -o obj/d.o"),
            dir.path(),
            &None,
            &h,
        )
        .unwrap();
        assert_eq!(d.deps_file.as_deref(), Some("obj/.d.o.d"));
        let d = Direct::new("id", &job("-Wp,-MD,a.dep -c d.c"), dir.path(), &None, &h).unwrap();
        assert_eq!(d.deps_file.as_deref(), Some("a.dep"));
        let d = Direct::new("id", &job("-c d.c -o d.o"), dir.path(), &None, &h).unwrap();
        assert_eq!(d.deps_file, None);
    }

    #[test]
    fn dependency_files_are_read_as_make_reads_them() {
        let text = "obj/a.o: a.c /usr/include/stdio.h \\\n inc/my\\ file.h dir/$$x.h\n\ninc/my\\ file.h:\n";
        assert_eq!(
            dependencies(text).unwrap(),
            ["a.c", "/usr/include/stdio.h", "inc/my file.h", "dir/$x.h"]
        );
        // Several targets (-MT twice), and a target with a colon of its own.
        assert_eq!(dependencies("a.o b.o: a.c\n").unwrap(), ["a.c"]);
        assert_eq!(dependencies("c:/x.o: x.c\n").unwrap(), ["x.c"]);
        assert_eq!(dependencies("no rule here\n"), None);
    }
}
