//! Warm task directories: a wasm task's directory that the module left empty is kept for the
//! next task instead of removed, so a small task skips a `mkdir` and an `rmdir` (creating and
//! removing a directory was a fifth of a worker's CPU time per no-op task on ext4). Only an
//! empty directory is reused, so a task never sees another task's files; one that holds
//! anything is removed as before.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Empty directories kept per worker: a worker runs at most its slots of wasm tasks at once,
/// and each kept directory is one inode.
const MAX_WARM_DIRS: usize = 64;

/// Prefix of wasm task directory names.
const DIR_PREFIX: &str = "wasm-";

/// Empty task directories ready for the next task.
#[derive(Debug, Default)]
pub struct DirPool {
    empty: Mutex<Vec<PathBuf>>,
}

impl DirPool {
    /// An empty directory under `work_dir`: a warm one, or a new one.
    pub fn take(self: &Arc<Self>, work_dir: &Path) -> io::Result<TaskDir> {
        let warm = {
            let mut empty = self.empty.lock().expect("dir pool lock");
            let i = empty.iter().rposition(|d| d.parent() == Some(work_dir));
            i.map(|i| empty.swap_remove(i))
        };
        let path = match warm {
            Some(p) => p,
            None => {
                std::fs::create_dir_all(work_dir)?;
                tempfile::Builder::new()
                    .prefix(DIR_PREFIX)
                    .tempdir_in(work_dir)?
                    .keep()
            }
        };
        Ok(TaskDir {
            path,
            pool: Some(self.clone()),
        })
    }

    /// Takes `path` back if there is room; false when the caller must remove it.
    fn give_back(&self, path: &Path) -> bool {
        let mut empty = self.empty.lock().expect("dir pool lock");
        if empty.len() >= MAX_WARM_DIRS {
            return false;
        }
        empty.push(path.to_path_buf());
        true
    }
}

impl Drop for DirPool {
    fn drop(&mut self) {
        for d in self.empty.get_mut().expect("dir pool lock").drain(..) {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// One task's directory: back to its pool when dropped empty, removed otherwise.
#[derive(Debug)]
pub struct TaskDir {
    path: PathBuf,
    /// `None` once kept: left where it is.
    pool: Option<Arc<DirPool>>,
}

impl TaskDir {
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Leaves the directory in place (a thread may still use it); the work directory's
    /// clean-up removes it later.
    pub fn keep(mut self) {
        self.pool = None;
    }
}

impl Drop for TaskDir {
    fn drop(&mut self) {
        let Some(pool) = self.pool.take() else {
            return;
        };
        let empty = std::fs::read_dir(&self.path).is_ok_and(|mut d| d.next().is_none());
        if empty && pool.give_back(&self.path) {
            return;
        }
        if let Err(e) = std::fs::remove_dir_all(&self.path) {
            if e.kind() != io::ErrorKind::NotFound {
                tracing::warn!(dir = %self.path.display(), "could not remove a task directory: {e}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_directory_is_reused_and_one_with_files_is_removed() {
        let work = tempfile::tempdir().unwrap();
        let pool = Arc::new(DirPool::default());
        let first = pool.take(work.path()).unwrap();
        let kept = first.path().to_path_buf();
        drop(first);
        assert!(kept.is_dir(), "an empty directory stays for the next task");
        let second = pool.take(work.path()).unwrap();
        assert_eq!(second.path(), kept, "and is the next task's");
        std::fs::create_dir(second.path().join("sub")).unwrap();
        std::fs::write(second.path().join("sub/secret"), b"x").unwrap();
        drop(second);
        assert!(!kept.exists(), "a directory with anything in it is removed");
        let third = pool.take(work.path()).unwrap();
        assert_ne!(third.path(), kept);
        assert_eq!(std::fs::read_dir(third.path()).unwrap().count(), 0);
        let other = tempfile::tempdir().unwrap();
        let elsewhere = pool.take(other.path()).unwrap();
        assert!(
            elsewhere.path().starts_with(other.path()),
            "a warm directory stays under its own work directory"
        );
        drop((third, elsewhere));
        drop(pool);
        assert_eq!(
            std::fs::read_dir(work.path()).unwrap().count(),
            0,
            "the pool removes what it kept"
        );
    }

    #[test]
    fn the_pool_keeps_at_most_its_bound() {
        let work = tempfile::tempdir().unwrap();
        let pool = Arc::new(DirPool::default());
        let dirs: Vec<TaskDir> = (0..MAX_WARM_DIRS + 5)
            .map(|_| pool.take(work.path()).unwrap())
            .collect();
        drop(dirs);
        assert_eq!(
            std::fs::read_dir(work.path()).unwrap().count(),
            MAX_WARM_DIRS
        );
        assert_eq!(pool.empty.lock().unwrap().len(), MAX_WARM_DIRS);
    }
}
