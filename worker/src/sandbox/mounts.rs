//! The mount table, read from `/proc/self/mountinfo` in the parent: the child remounts every
//! mount point read-only between fork and exec, where it may not allocate or parse, so the list
//! (paths as C strings, each mount's own flags) is prepared here beforehand. The table is
//! read again only after it changed ([`current`]), not once per task.

use std::ffi::{CString, OsString};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

/// Mount points that must end up read-only or the sandbox is not set up at all: the places a
/// task could otherwise leave files behind or tamper with the host. Any other mount that
/// refuses a read-only remount (odd pseudo file systems) is left as it is.
pub(crate) const ESSENTIAL_READONLY: &[&str] = &[
    "/", "/tmp", "/var/tmp", "/dev/shm", "/root", "/home", "/work", "/var", "/run",
];

/// One line of the mount table: where it is mounted and its per-mount flags
/// (`nosuid`, `nodev`, `noexec` and the atime flags) as `MS_*` bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    pub(crate) path: PathBuf,
    pub(crate) flags: libc::c_ulong,
}

/// A mount point the child remounts read-only.
#[derive(Debug)]
pub(crate) struct MountPoint {
    pub(crate) path: CString,
    /// `MS_REMOUNT | MS_BIND | MS_RDONLY` plus the mount's own flags, kept as they were.
    pub(crate) remount_flags: libc::c_ulong,
    /// A failure to remount this one aborts the task (see [`ESSENTIAL_READONLY`]).
    pub(crate) essential: bool,
}

/// The mount table of this process.
pub(crate) fn read_mount_table() -> Result<Vec<MountEntry>, String> {
    std::fs::read("/proc/self/mountinfo")
        .map(|bytes| parse_mountinfo(&bytes))
        .map_err(|e| format!("cannot read /proc/self/mountinfo: {e}"))
}

/// The mount table as last read, and its generation: a number that grows each time the
/// table is read again after a change.
#[derive(Debug, Clone)]
pub(crate) struct Snapshot {
    pub(crate) generation: u64,
    pub(crate) table: Arc<Vec<MountEntry>>,
    /// Whether changes are watched; if not, every call reads the table again and a new
    /// generation says nothing about a change.
    pub(crate) watched: bool,
}

/// What [`current`] keeps: an open `/proc/self/mountinfo` to poll for changes (the kernel
/// reports `POLLPRI` on it after any mount or unmount in this namespace) and the last read.
#[derive(Debug)]
struct Watched {
    watcher: Option<std::fs::File>,
    last: Option<Snapshot>,
    reads: u64,
}

/// Whether the table changed since `watcher` was last polled. Unknown counts as changed.
fn changed(watcher: Option<&std::fs::File>) -> bool {
    use std::os::fd::AsRawFd as _;
    let Some(file) = watcher else {
        return true;
    };
    let mut fd = libc::pollfd {
        fd: file.as_raw_fd(),
        events: libc::POLLPRI,
        revents: 0,
    };
    // SAFETY: one pollfd on our own open descriptor, no wait.
    let rc = unsafe { libc::poll(&mut fd, 1, 0) };
    rc != 0 || fd.revents & (libc::POLLPRI | libc::POLLERR) != 0
}

/// The mount table of this process, read again only when it changed since the last call (a
/// poll on an open descriptor, where a read and parse per task cost a tenth of a no-op
/// task's set-up). The watcher is opened before the table is first read, so no change is
/// missed between the two.
pub(crate) fn current() -> Result<Snapshot, String> {
    static WATCHED: Mutex<Watched> = Mutex::new(Watched {
        watcher: None,
        last: None,
        reads: 0,
    });
    let mut w = WATCHED.lock().unwrap_or_else(|e| e.into_inner());
    if w.watcher.is_none() {
        w.watcher = std::fs::File::open("/proc/self/mountinfo").ok();
    }
    if let Some(last) = w.last.as_ref().filter(|_| !changed(w.watcher.as_ref())) {
        return Ok(last.clone());
    }
    let table = Arc::new(read_mount_table()?);
    w.reads += 1;
    let snapshot = Snapshot {
        generation: w.reads,
        table,
        watched: w.watcher.is_some(),
    };
    w.last = Some(snapshot.clone());
    Ok(snapshot)
}

/// Parses mountinfo: `ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER`.
/// Lines that do not have that shape are skipped.
pub(crate) fn parse_mountinfo(bytes: &[u8]) -> Vec<MountEntry> {
    bytes
        .split(|&b| b == b'\n')
        .filter_map(|line| {
            let mut fields = line.split(|&b| b == b' ');
            let path = fields.nth(4)?;
            let options = fields.next()?;
            if !path.starts_with(b"/") {
                return None;
            }
            Some(MountEntry {
                path: PathBuf::from(OsString::from_vec(unescape(path))),
                flags: per_mount_flags(options),
            })
        })
        .collect()
}

/// Undoes mountinfo's octal escapes (`\040` for a space, `\134` for a backslash, ...).
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (field[i], octal) {
            (b'\\', Some(d)) => {
                let v = d.iter().fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                out.push(u8::try_from(v).unwrap_or(b'?'));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The per-mount options that a bind remount must repeat to keep them.
fn per_mount_flags(options: &[u8]) -> libc::c_ulong {
    options
        .split(|&b| b == b',')
        .map(|o| match o {
            b"nosuid" => libc::MS_NOSUID,
            b"nodev" => libc::MS_NODEV,
            b"noexec" => libc::MS_NOEXEC,
            b"noatime" => libc::MS_NOATIME,
            b"nodiratime" => libc::MS_NODIRATIME,
            b"relatime" => libc::MS_RELATIME,
            _ => 0,
        })
        .fold(0, |acc, f| acc | f)
}

/// The flags of the mount that holds `path` (the entry with the longest matching mount point;
/// for stacked mounts the last one listed, which is the visible one).
pub(crate) fn flags_of_mount_holding(table: &[MountEntry], path: &Path) -> libc::c_ulong {
    table
        .iter()
        .filter(|m| path.starts_with(&m.path))
        .fold(None::<&MountEntry>, |best, m| match best {
            Some(b) if b.path.as_os_str().len() > m.path.as_os_str().len() => Some(b),
            _ => Some(m),
        })
        .map_or(0, |m| m.flags)
}

/// For a namespace in which `dir` is the one writable place: the flags of its own bind mount
/// (`nosuid`, `nodev` and the flags of the mount holding it) and the mount points to make
/// read-only ([`readonly_plan`]).
pub(crate) fn writable_only(
    table: &[MountEntry],
    dir: &Path,
) -> Result<(libc::c_ulong, Vec<MountPoint>), String> {
    let own = flags_of_mount_holding(table, dir);
    let bind_flags = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_NOSUID | libc::MS_NODEV | own;
    Ok((bind_flags, readonly_plan(table, dir)?))
}

/// What the child remounts read-only for a task in `task_dir`: every mount point except those
/// inside the task directory. The mounts holding the task directory are essential too, so
/// sibling task directories are never writable.
pub(crate) fn readonly_plan(
    table: &[MountEntry],
    task_dir: &Path,
) -> Result<Vec<MountPoint>, String> {
    table
        .iter()
        .filter(|m| !m.path.starts_with(task_dir))
        .map(|m| {
            let path = CString::new(m.path.as_os_str().as_bytes())
                .map_err(|_| format!("mount point {:?} contains NUL", m.path))?;
            let essential = task_dir.starts_with(&m.path)
                || ESSENTIAL_READONLY.iter().any(|e| m.path == Path::new(e));
            Ok(MountPoint {
                path,
                remount_flags: libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | m.flags,
                essential,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 27 0:21 / /proc rw,relatime - proc proc rw
25 24 0:23 / /dev/shm rw,nosuid,nodev - tmpfs tmpfs rw
27 1 254:0 / / rw,relatime - ext4 /dev/vda rw
28 27 0:25 / /mnt/with\\040space ro,nosuid,nodev,noexec,relatime shared:5 - tmpfs x ro
29 27 0:26 / /srv/data rw,noatime - ext4 /dev/vdb rw
garbage line
";

    #[test]
    fn mountinfo_lines_become_paths_and_flags() {
        let table = parse_mountinfo(SAMPLE.as_bytes());
        let want = [
            ("/proc", libc::MS_RELATIME),
            ("/dev/shm", libc::MS_NOSUID | libc::MS_NODEV),
            ("/", libc::MS_RELATIME),
            (
                "/mnt/with space",
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC | libc::MS_RELATIME,
            ),
            ("/srv/data", libc::MS_NOATIME),
        ];
        assert_eq!(table.len(), want.len(), "{table:?}");
        for (entry, (path, flags)) in table.iter().zip(want) {
            assert_eq!(entry.path, Path::new(path));
            assert_eq!(entry.flags, flags, "{path}");
        }
    }

    #[test]
    fn the_mounts_holding_the_task_dir_are_essential() {
        let table = parse_mountinfo(SAMPLE.as_bytes());
        let plan = readonly_plan(&table, Path::new("/srv/data/work/task-1")).unwrap();
        let essential: Vec<_> = plan
            .iter()
            .filter(|m| m.essential)
            .map(|m| m.path.to_str().unwrap().to_owned())
            .collect();
        assert_eq!(essential, ["/dev/shm", "/", "/srv/data"]);
        assert!(plan.iter().all(|m| m.remount_flags & libc::MS_RDONLY != 0));
        assert_eq!(
            flags_of_mount_holding(&table, Path::new("/srv/data/work")),
            libc::MS_NOATIME
        );
        assert_eq!(
            flags_of_mount_holding(&table, Path::new("/etc")),
            libc::MS_RELATIME
        );
    }
}
