//! One set-up of an environment at a time: an exclusive `flock` on `<root>.lock`, held while
//! the directory is checked and (re)made. `flock` locks belong to an open file, so the lock
//! keeps out another slot of this worker and another worker sharing the work directory alike,
//! and the kernel drops it with the process, so a crashed set-up leaves no stale lock.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;
use std::path::Path;

/// A held lock; released on drop (when the file is closed).
#[derive(Debug)]
pub(super) struct EnvLock {
    _file: File,
}

impl EnvLock {
    /// Waits for and takes the lock of the environment at `root`, creating its parent.
    pub(super) fn acquire(root: &Path) -> io::Result<EnvLock> {
        if let Some(parent) = root.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let mut name = root.as_os_str().to_owned();
        name.push(".lock");
        let file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&name)?;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(EnvLock { _file: file });
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                return Err(e);
            }
        }
    }
}
