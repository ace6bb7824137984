//! Network namespaces kept per sandbox uid: the first task of a slot creates one, every later
//! task of that slot enters it (`setns`) instead of creating its own. Creating a namespace
//! and tearing it down again (in a kernel worker, after the task) cost more than the rest of
//! a no-op task's set-up together.
//!
//! Why reuse is safe: a namespace is kept only for a slot with its own uid, and a slot's next
//! task starts only once every process of that uid is dead (`procs::ensure_clean`), so nothing of
//! the last task is left to talk to over loopback; and a task cannot change the namespace
//! (no capabilities after the uid switch, `no_new_privs`), so each task finds it as the first
//! did: only `lo`, down.

use std::collections::HashMap;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::sync::{Mutex, OnceLock};

/// The kept namespaces, one per sandbox uid, for the life of the worker process.
fn kept() -> &'static Mutex<HashMap<u32, OwnedFd>> {
    static KEPT: OnceLock<Mutex<HashMap<u32, OwnedFd>>> = OnceLock::new();
    KEPT.get_or_init(Mutex::default)
}

/// A descriptor of the network namespace kept for `uid` (close-on-exec, owned by the pool),
/// created on first use. `None` if one cannot be created here: the task then creates its own.
pub(crate) fn for_uid(uid: u32) -> Option<RawFd> {
    let mut kept = kept().lock().expect("netns lock");
    if let Some(fd) = kept.get(&uid) {
        return Some(fd.as_raw_fd());
    }
    let fd = match create() {
        Ok(fd) => fd,
        Err(e) => {
            tracing::debug!(uid, "no kept network namespace, one per task instead: {e}");
            return None;
        }
    };
    let raw = fd.as_raw_fd();
    kept.insert(uid, fd);
    Some(raw)
}

/// Drops the namespace kept for `uid` (a process of the uid survived its kill, and may still
/// be in it): the slot's next task gets a new one.
pub(crate) fn forget(uid: u32) {
    kept().lock().expect("netns lock").remove(&uid);
}

/// A new, empty network namespace, held by a descriptor (see [`held_by_thread`]).
fn create() -> std::io::Result<OwnedFd> {
    held_by_thread("vgas-netns", c"/proc/thread-self/ns/net", || {
        // SAFETY: unshare affects only this thread, which ends right after.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    })
}

/// A namespace made by `make` in a short-lived thread of its own (namespaces belong to a
/// thread, so the worker's other threads keep theirs), then held by a close-on-exec
/// descriptor of `ns` (the thread's `/proc/thread-self/ns/...` entry) once the thread ends.
pub(super) fn held_by_thread(
    name: &str,
    ns: &'static std::ffi::CStr,
    make: impl FnOnce() -> std::io::Result<()> + Send + 'static,
) -> std::io::Result<OwnedFd> {
    std::thread::Builder::new()
        .name(name.into())
        .spawn(move || {
            make()?;
            // SAFETY: a static C string; the descriptor is owned right below.
            let fd = unsafe { libc::open(ns.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
            if fd < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // SAFETY: `fd` was just opened and is owned by nothing else.
            Ok(unsafe { OwnedFd::from_raw_fd(fd) })
        })?
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CAP_SYS_ADMIN); elsewhere `for_uid` answers `None`, which is the fallback.
    #[test]
    fn a_slot_keeps_one_namespace_other_than_the_workers() {
        let uid = 4_000_123;
        let Some(fd) = for_uid(uid) else {
            // SAFETY: geteuid cannot fail.
            assert_ne!(
                unsafe { libc::geteuid() },
                0,
                "root can create a network namespace"
            );
            return;
        };
        assert_eq!(
            for_uid(uid),
            Some(fd),
            "the same namespace for the same slot"
        );
        let other = for_uid(uid + 1).expect("a second slot");
        assert_ne!(other, fd);
        let ns = |path: &str| std::fs::read_link(path).unwrap();
        let kept = ns(&format!("/proc/self/fd/{fd}"));
        assert_ne!(
            kept,
            ns("/proc/self/ns/net"),
            "not the worker's own namespace"
        );
        assert_ne!(kept, ns(&format!("/proc/self/fd/{other}")));
    }
}
