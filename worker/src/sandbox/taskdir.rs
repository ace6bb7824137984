//! The task's directory and environment: a fresh directory per task holding its input files
//! (owned by the sandbox uid when uids are switched), an environment built from an allow-list
//! so no worker secret leaks in, and removal afterwards even of what the task locked down.
//! A caller that reads back what the task wrote (a compile's object) gets the directory as a
//! [`KeptDir`], which finds files without following links and removes the directory on drop.

use std::collections::{BTreeMap, HashSet};
use std::ffi::OsString;
use std::fs;
use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use tempfile::TempDir;
use vgas_shared::wire::{check_relative_path, TaskFile};

use super::{RunOptions, SAFE_DEFAULT_PATH};

/// Mode of the work directory when the sandbox creates it: others may pass through (to reach
/// their own task directory) but not list it.
const WORK_DIR_MODE: u32 = 0o711;
/// Mode of an input file that does not say.
const DEFAULT_FILE_MODE: u32 = 0o644;
/// Mode bits an input file may ask for: no setuid, setgid or sticky bits.
const FILE_MODE_MASK: u32 = 0o777;
/// Prefix of per-task directory names.
const TASK_DIR_PREFIX: &str = "task-";
/// Worker variables passed through to tasks when set; everything else is dropped.
const PASSED_THROUGH: &[&str] = &["LANG", "LC_ALL"];

/// The work directory, created if missing, as a canonical path (so paths under it match the
/// mount table and bind mounts hit the right place), passable for a sandbox uid when `uid`.
pub(crate) fn work_root(work_dir: &Path, uid: Option<u32>) -> Result<PathBuf, String> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(WORK_DIR_MODE)
        .create(work_dir)
        .map_err(|e| format!("cannot create work directory {}: {e}", work_dir.display()))?;
    let work_dir = fs::canonicalize(work_dir)
        .map_err(|e| format!("cannot resolve work directory {}: {e}", work_dir.display()))?;
    if uid.is_some() {
        ensure_passable(&work_dir)?;
    }
    Ok(work_dir)
}

/// Creates the task directory in `parent` (the [`work_root`] or a slot's directory in it)
/// with `files`, then `opts.workdir` and `opts.extra_files` in it, handed to `uid` when set.
pub(crate) fn prepare(
    parent: &Path,
    files: &[TaskFile],
    opts: &RunOptions<'_>,
    uid: Option<u32>,
) -> Result<TempDir, String> {
    let dir = tempfile::Builder::new()
        .prefix(TASK_DIR_PREFIX)
        .tempdir_in(parent)
        .map_err(|e| {
            format!(
                "cannot create a task directory in {}: {e}",
                parent.display()
            )
        })?;
    let filled = Filler::new(dir.path(), uid).and_then(|mut fill| {
        for f in files {
            fill.file(f.path(), f.bytes(), f.mode())?;
        }
        if !opts.workdir.is_empty() {
            check_relative_path(opts.workdir).map_err(|e| e.to_string())?;
            fill.dirs(Path::new(opts.workdir))
                .map_err(|e| format!("cannot create working directory {:?}: {e}", opts.workdir))?;
        }
        for (path, contents) in opts.extra_files {
            fill.file(path, contents, None)?;
        }
        Ok(())
    });
    match filled {
        Ok(()) => Ok(dir),
        Err(e) => {
            remove(dir);
            Err(e)
        }
    }
}

/// Writes one more file at `rel` into a task directory [`prepare`] made (a late file:
/// [`RunOptions::late_file`]), owned by `uid` when set like the rest.
pub(crate) fn write_owned(
    dir: &Path,
    rel: &str,
    contents: &[u8],
    uid: Option<u32>,
) -> Result<(), String> {
    Filler::within(dir, uid).file(rel, contents, None)
}

/// The sandbox uid must be able to pass through the work directory to reach its own.
fn ensure_passable(work_dir: &Path) -> Result<(), String> {
    let meta = fs::metadata(work_dir).map_err(|e| format!("{}: {e}", work_dir.display()))?;
    let mode = meta.permissions().mode();
    if mode & 0o001 == 0 {
        fs::set_permissions(work_dir, fs::Permissions::from_mode(mode | 0o001)).map_err(|e| {
            format!(
                "cannot make {} passable for the sandbox uid: {e}",
                work_dir.display()
            )
        })?;
    }
    Ok(())
}

/// Fills a task directory: each directory made once, and every entry handed to the sandbox
/// uid as it is made (by its descriptor for a file), where a walk over the finished tree
/// and `create_dir_all`'s look-ups per file cost a compile's start a tenth of a millisecond
/// and more (a build unit brings its headers, dozens of files in a few directories).
struct Filler<'a> {
    dir: &'a Path,
    uid: Option<u32>,
    /// Directories made or found, relative to `dir`.
    made: HashSet<PathBuf>,
}

impl<'a> Filler<'a> {
    /// A filler for the fresh directory `dir`, handed to `uid` first.
    fn new(dir: &'a Path, uid: Option<u32>) -> Result<Filler<'a>, String> {
        if let Some(uid) = uid {
            own(dir, uid).map_err(|e| format!("cannot chown {}: {e}", dir.display()))?;
        }
        Ok(Filler::within(dir, uid))
    }

    /// A filler for `dir` as it is (already owned by `uid` when set).
    fn within(dir: &'a Path, uid: Option<u32>) -> Filler<'a> {
        Filler {
            dir,
            uid,
            made: HashSet::new(),
        }
    }

    /// Makes the directory `rel` and those above it that are missing, each owned by the uid.
    fn dirs(&mut self, rel: &Path) -> std::io::Result<()> {
        let mut at = PathBuf::new();
        for part in rel.components() {
            match part {
                std::path::Component::Normal(name) => at.push(name),
                // Checked paths hold no `..` and no root; `.` adds nothing.
                _ => continue,
            }
            if self.made.contains(&at) {
                continue;
            }
            let path = self.dir.join(&at);
            match fs::create_dir(&path) {
                Ok(()) => {
                    if let Some(uid) = self.uid {
                        own(&path, uid)?;
                    }
                }
                // Made by this task's own files, or (for a late file) by `prepare`.
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e),
            }
            self.made.insert(at.clone());
        }
        Ok(())
    }

    /// Writes one file at `rel`, with its parent directories, mode and owner.
    fn file(&mut self, rel: &str, contents: &[u8], mode: Option<u32>) -> Result<(), String> {
        check_relative_path(rel).map_err(|e| e.to_string())?;
        let what = |e: std::io::Error| format!("cannot write input file {rel:?}: {e}");
        if let Some(parent) = Path::new(rel).parent() {
            self.dirs(parent).map_err(what)?;
        }
        let mode = mode.unwrap_or(DEFAULT_FILE_MODE) & FILE_MODE_MASK;
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(self.dir.join(rel))
            .map_err(what)?;
        file.write_all(contents).map_err(what)?;
        // The umask may have cut bits off at creation.
        file.set_permissions(fs::Permissions::from_mode(mode))
            .map_err(what)?;
        if let Some(uid) = self.uid {
            std::os::unix::fs::fchown(&file, Some(uid), Some(uid)).map_err(what)?;
        }
        Ok(())
    }
}

/// Hands one entry to `uid` (and the group of the same number), the entry itself and not
/// what a link points at.
fn own(path: &Path, uid: u32) -> std::io::Result<()> {
    std::os::unix::fs::lchown(path, Some(uid), Some(uid))
}

/// The task's environment: `PATH` (the worker's or [`SAFE_DEFAULT_PATH`]), `LANG`/`LC_ALL` when
/// the worker has them, `HOME` and `TMPDIR` set to the task directory, then `spec_env` on top.
pub(crate) fn environment(
    dir: &Path,
    spec_env: &BTreeMap<String, String>,
) -> Result<Vec<(OsString, OsString)>, String> {
    let mut env: BTreeMap<OsString, OsString> = BTreeMap::new();
    let path = std::env::var_os("PATH").filter(|p| !p.is_empty());
    env.insert(
        "PATH".into(),
        path.unwrap_or_else(|| SAFE_DEFAULT_PATH.into()),
    );
    for name in PASSED_THROUGH {
        if let Some(v) = std::env::var_os(name) {
            env.insert(name.into(), v);
        }
    }
    env.insert("HOME".into(), dir.as_os_str().to_owned());
    env.insert("TMPDIR".into(), dir.as_os_str().to_owned());
    for (k, v) in spec_env {
        if k.is_empty() || k.contains('=') || k.contains('\0') || v.contains('\0') {
            return Err(format!("env name {k:?} or its value is not valid"));
        }
        env.insert(k.into(), v.into());
    }
    Ok(env.into_iter().collect())
}

/// Removes the task directory. Call only once every process of the task is dead. If the task
/// took permissions away from its own directories (which stops a non-root worker), they are
/// given back first.
pub(crate) fn remove(dir: TempDir) {
    let path = dir.path().to_owned();
    if dir.close().is_ok() {
        return;
    }
    remove_path(&path);
}

/// [`remove`] for a directory given by its path (a kept one, or one a crashed run left).
pub(crate) fn remove_path(path: &Path) {
    if fs::remove_dir_all(path).is_ok() {
        return;
    }
    restore_permissions(path);
    if let Err(e) = fs::remove_dir_all(path) {
        tracing::warn!(dir = %path.display(), error = %e, "cannot remove task directory");
    }
}

/// A task directory kept after its run for the caller to read what the task wrote. It exists
/// only once every process of the task is dead, so nothing changes it any more; it is removed
/// (as [`remove`] does) when dropped.
#[derive(Debug)]
pub struct KeptDir {
    path: PathBuf,
    /// Where the task ran, when the directory was moved since (out of its slot's).
    ran_at: PathBuf,
}

impl KeptDir {
    /// Keeps `dir`, moved to `to` first when given (which must not exist).
    pub(crate) fn new(dir: TempDir, to: Option<&Path>) -> Result<KeptDir, String> {
        let ran_at = dir.path().to_owned();
        let Some(to) = to else {
            return Ok(KeptDir {
                path: dir.keep(),
                ran_at,
            });
        };
        rename_noreplace(&ran_at, to).map_err(|e| {
            format!(
                "cannot move the task directory {} to {}: {e}",
                ran_at.display(),
                to.display()
            )
        })?;
        let _moved = dir.keep();
        Ok(KeptDir {
            path: to.to_owned(),
            ran_at,
        })
    }

    /// The task directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Where the directory was while the task ran: the path in what the task wrote (a
    /// dependency file's paths).
    pub fn ran_at(&self) -> &Path {
        &self.ran_at
    }

    /// The regular file at `rel` (relative, no `..`) and its size; `Ok(None)` when there is
    /// none. No link is followed, neither the file nor a directory on the way, so a task
    /// cannot make the worker read or send back a file outside its directory.
    pub fn regular_file(&self, rel: &str) -> Result<Option<(PathBuf, u64)>, String> {
        check_relative_path(rel).map_err(|e| e.to_string())?;
        let mut path = self.path().to_path_buf();
        let parts: Vec<&str> = rel.split('/').collect();
        for (i, part) in parts.iter().enumerate() {
            path.push(part);
            let meta = match fs::symlink_metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
                Err(e) => return Err(format!("cannot inspect {rel:?}: {e}")),
            };
            let last = i + 1 == parts.len();
            let kind = meta.file_type();
            if last && kind.is_file() {
                return Ok(Some((path, meta.len())));
            }
            if last || !kind.is_dir() {
                return Err(format!(
                    "{rel:?} is not a regular file inside the task directory"
                ));
            }
        }
        Ok(None)
    }
}

impl Drop for KeptDir {
    fn drop(&mut self) {
        remove_path(&self.path);
    }
}

/// Renames `from` to `to`, failing if `to` exists (a rename onto an empty directory would
/// replace it).
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt as _;
    let c = |p: &Path| {
        std::ffi::CString::new(p.as_os_str().as_bytes())
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let (from, to) = (c(from)?, c(to)?);
    // SAFETY: two C strings that outlive the call.
    let rc = unsafe {
        libc::renameat2(
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            libc::RENAME_NOREPLACE,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Makes every directory under `dir` (links not followed) readable, writable and passable.
fn restore_permissions(dir: &Path) {
    let _ = fs::set_permissions(dir, fs::Permissions::from_mode(0o700));
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        if entry.file_type().is_ok_and(|t| t.is_dir()) {
            restore_permissions(&entry.path());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_environment_is_an_allow_list() {
        let dir = Path::new("/w/task-1");
        let spec: BTreeMap<String, String> = [
            ("FOO".to_owned(), "bar".to_owned()),
            ("HOME".to_owned(), "/h".to_owned()),
        ]
        .into();
        let env = environment(dir, &spec).unwrap();
        let names: Vec<_> = env.iter().map(|(k, _)| k.to_str().unwrap()).collect();
        for want in ["PATH", "HOME", "TMPDIR", "FOO"] {
            assert!(names.contains(&want), "{want} missing from {names:?}");
        }
        let get = |n: &str| {
            env.iter()
                .find(|(k, _)| k == n)
                .map(|(_, v)| v.to_str().unwrap().to_owned())
        };
        assert_eq!(get("HOME").as_deref(), Some("/h"), "spec.env wins");
        assert_eq!(get("TMPDIR").as_deref(), Some("/w/task-1"));
        assert!(names
            .iter()
            .all(|n| ["PATH", "HOME", "TMPDIR", "FOO", "LANG", "LC_ALL"].contains(n)));
        let bad: BTreeMap<String, String> = [("A=B".to_owned(), String::new())].into();
        assert!(environment(dir, &bad).is_err());
    }

    #[test]
    fn inputs_land_with_their_modes_and_bad_paths_are_refused() {
        let work = tempfile::tempdir().unwrap();
        let input = |path: &str, mode| vgas_shared::wire::InputFile {
            path: path.into(),
            text: Some("x".into()),
            base64: None,
            mode,
        };
        let file = |path: &str, mode| TaskFile::parse(&input(path, mode)).unwrap();
        let opts = RunOptions::default();
        let dir = prepare(
            work.path(),
            &[file("a/b/c.sh", Some(0o4755)), file("d", None)],
            &opts,
            None,
        )
        .unwrap();
        let mode = |p: &str| {
            fs::metadata(dir.path().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o7777
        };
        assert_eq!(mode("a/b/c.sh"), 0o755, "setuid bit dropped");
        assert_eq!(mode("d"), DEFAULT_FILE_MODE);
        remove(dir);
        // A bad input path is refused when the task is parsed; one among the extras here.
        assert!(TaskFile::parse(&input("../x", None)).is_err());
        let extra = [("../x".to_owned(), Vec::new())];
        let escaping = RunOptions {
            extra_files: &extra,
            ..RunOptions::default()
        };
        assert!(prepare(work.path(), &[file("d", None)], &escaping, None).is_err());
        assert_eq!(
            fs::read_dir(work.path()).unwrap().count(),
            0,
            "failed setups leave nothing"
        );
    }

    #[test]
    fn extras_land_in_the_workdir_and_kept_files_are_found_without_links() {
        let work = tempfile::tempdir().unwrap();
        let extra = [("src/in.i".to_owned(), b"int x;".to_vec())];
        let opts = RunOptions {
            workdir: "src/deep",
            extra_files: &extra,
            ..RunOptions::default()
        };
        let dir = KeptDir::new(prepare(work.path(), &[], &opts, None).unwrap(), None).unwrap();
        assert!(dir.path().join("src/deep").is_dir());
        let (path, size) = dir.regular_file("src/in.i").unwrap().expect("found");
        assert_eq!((path, size), (dir.path().join("src/in.i"), 6));
        assert_eq!(dir.regular_file("src/none.o").unwrap(), None);
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("src/deep/l.o")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("src"), dir.path().join("up")).unwrap();
        assert!(
            dir.regular_file("src/deep/l.o").is_err(),
            "a link is not read"
        );
        assert!(
            dir.regular_file("up/in.i").is_err(),
            "nor a linked directory"
        );
        assert!(dir.regular_file("../x").is_err());
        let kept = dir.path().to_owned();
        drop(dir);
        assert!(!kept.exists(), "dropped, the directory goes");
        let bad = RunOptions {
            workdir: "../out",
            ..RunOptions::default()
        };
        assert!(prepare(work.path(), &[], &bad, None).is_err());
    }
}
