//! Mount namespaces kept per sandbox uid, as the network ones are (`netns`): a slot with a
//! uid of its own gets a directory `slot-<uid>` in the work directory and a namespace, made
//! once, in which that directory is the one writable place and every other mount is
//! read-only (as in a namespace of a task's own). Each task of the slot gets its directory
//! inside the slot's and enters the namespace (`setns`): no namespace is copied, no mount is
//! made and none torn down per task, which cost a no-op task a tenth of its throughput.
//!
//! Why reuse is safe: as for `netns`, a slot's next task starts only once no process of the
//! uid is alive (`procs::ensure_clean`; otherwise the task gets a namespace of its own and
//! the kept one is dropped), and a task cannot mount or unmount (no capabilities after the
//! uid switch, `no_new_privs`), so each finds the namespace as the first did. The slot's
//! directory holds only the running task's: a task's directory is removed, or moved out of
//! the slot's directory when the caller keeps it, before the slot takes its next task. A change
//! to the host's mount table (`mounts::current`) retires every kept namespace, so a task
//! sees the mounts that a namespace of its own would copy.

use std::collections::HashMap;
use std::ffi::CString;
use std::fs;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::fs::DirBuilderExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::child::private_mounts;
use super::mounts::{self, MountEntry};
use super::netns::held_by_thread;
use super::taskdir;

/// Prefix of a slot's directory in the work directory (task directories are `task-...`).
pub(crate) const SLOT_DIR_PREFIX: &str = "slot-";

/// Mode of a slot's directory: owned by the worker; the slot's uid passes through to its
/// task's directory but cannot list or create anything beside it.
const SLOT_DIR_MODE: u32 = 0o711;

/// A kept namespace, the slot directory writable in it and the generation of the mount
/// table it was copied from.
#[derive(Debug)]
struct Kept {
    fd: Arc<OwnedFd>,
    dir: PathBuf,
    generation: u64,
}

/// The kept namespaces, one per sandbox uid, for the life of the worker process.
static KEPT: Mutex<Option<HashMap<u32, Kept>>> = Mutex::new(None);

/// A slot's kept namespace and the directory its tasks' directories go in.
#[derive(Debug)]
pub(crate) struct SlotMounts {
    /// The namespace, entered by the task's process (close-on-exec).
    pub(crate) fd: Arc<OwnedFd>,
    /// `work_root/slot-<uid>`, writable in the namespace.
    pub(crate) dir: PathBuf,
}

/// The namespace kept for `uid` and its directory in `work_root` (the canonical work
/// directory), made on first use and again after the host's mount table changed. `None`
/// where one cannot be made or changes cannot be watched: the task then makes its own.
pub(crate) fn for_uid(work_root: &Path, uid: u32) -> Option<SlotMounts> {
    let snapshot = mounts::current().ok().filter(|s| s.watched)?;
    let dir = work_root.join(format!("{SLOT_DIR_PREFIX}{uid}"));
    let mut guard = KEPT.lock().unwrap_or_else(|e| e.into_inner());
    let kept = guard.get_or_insert_with(HashMap::new);
    // Namespaces copied from an older table pin mounts the host has let go of.
    kept.retain(|_, k| k.generation == snapshot.generation);
    // The same directory, still there (removing it took it out of the namespace too).
    let usable = |k: &&Kept| k.dir == dir && fs::symlink_metadata(&dir).is_ok_and(|m| m.is_dir());
    if let Some(k) = kept.get(&uid).filter(usable) {
        return Some(SlotMounts {
            fd: k.fd.clone(),
            dir,
        });
    }
    let made = prepare_slot_dir(&dir).and_then(|()| create(&dir, &snapshot.table));
    let fd = match made {
        Ok(fd) => Arc::new(fd),
        Err(e) => {
            tracing::debug!(uid, "no kept mount namespace, one per task instead: {e}");
            return None;
        }
    };
    kept.insert(
        uid,
        Kept {
            fd: fd.clone(),
            dir: dir.clone(),
            generation: snapshot.generation,
        },
    );
    Some(SlotMounts { fd, dir })
}

/// Drops the namespace kept for `uid` (a process of the uid survived its kill, and may still
/// be in it): the slot's tasks get namespaces of their own until a new one is made.
pub(crate) fn forget(uid: u32) {
    if let Some(kept) = KEPT.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
        kept.remove(&uid);
    }
}

/// Creates the slot's directory, or empties one a crashed worker left (nothing of the uid
/// runs now: the caller is the slot's next task, and the uid is clean).
fn prepare_slot_dir(dir: &Path) -> Result<(), String> {
    match fs::DirBuilder::new().mode(SLOT_DIR_MODE).create(dir) {
        Ok(()) => return Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(format!("cannot create {}: {e}", dir.display())),
    }
    let meta = fs::symlink_metadata(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    if !meta.is_dir() {
        return Err(format!("{} is not a directory", dir.display()));
    }
    let entries = fs::read_dir(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    for entry in entries.flatten() {
        taskdir::remove_path(&entry.path());
    }
    Ok(())
}

/// A new mount namespace in which `dir` is the one writable place, set up as a task's child
/// would, held by a descriptor (`netns::held_by_thread`).
fn create(dir: &Path, table: &[MountEntry]) -> Result<OwnedFd, String> {
    let (bind_flags, readonly) = mounts::writable_only(table, dir)?;
    let c_dir = CString::new(dir.as_os_str().as_bytes())
        .map_err(|_| "slot directory path contains NUL".to_owned())?;
    let made = held_by_thread("vgas-mntns", c"/proc/thread-self/ns/mnt", move || {
        private_mounts(&c_dir, bind_flags, &readonly)
    });
    made.map_err(
        |e| match e.raw_os_error().and_then(super::child::decode_failure) {
            Some((stage, _, errno)) => {
                format!("{stage:?}: {}", std::io::Error::from_raw_os_error(errno))
            }
            None => e.to_string(),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (CAP_SYS_ADMIN); elsewhere `for_uid` answers `None`, which is the fallback.
    #[test]
    fn a_slot_keeps_one_namespace_until_the_mount_table_changes() {
        let work = tempfile::tempdir().unwrap();
        let root = fs::canonicalize(work.path()).unwrap();
        let uid = 4_000_321;
        let Some(first) = for_uid(&root, uid) else {
            // SAFETY: geteuid cannot fail.
            assert_ne!(
                unsafe { libc::geteuid() },
                0,
                "root can keep a mount namespace"
            );
            return;
        };
        assert_eq!(first.dir, root.join(format!("slot-{uid}")));
        assert!(first.dir.is_dir());
        let again = for_uid(&root, uid).expect("the kept one");
        assert!(Arc::ptr_eq(&first.fd, &again.fd), "the same namespace");
        let ns = |fd: &OwnedFd| {
            use std::os::fd::AsRawFd as _;
            fs::read_link(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap()
        };
        assert_ne!(
            ns(&first.fd),
            fs::read_link("/proc/self/ns/mnt").unwrap(),
            "not the worker's own namespace"
        );
        // A mount on the host retires it: the next task gets a namespace that has the mount.
        let mnt = work.path().join("mnt");
        fs::create_dir(&mnt).unwrap();
        let target = CString::new(mnt.as_os_str().as_bytes()).unwrap();
        // SAFETY: C strings that outlive the calls.
        let mounted = unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        assert_eq!(mounted, 0, "{}", std::io::Error::last_os_error());
        let after = for_uid(&root, uid).expect("a new one");
        // SAFETY: as above.
        unsafe { libc::umount2(target.as_ptr(), libc::MNT_DETACH) };
        assert!(
            !Arc::ptr_eq(&first.fd, &after.fd),
            "made again after the mount"
        );
        forget(uid);
    }
}
