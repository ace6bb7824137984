//! What the child does between clone and exec (`spawn`): new session, private mount
//! namespace with everything but the task directory read-only, no network, resource limits,
//! then the switch to the sandbox uid (last, because the mounts need root).
//!
//! That code runs sharing the memory of a multi-threaded process, so it may only make
//! async-signal-safe calls: everything it needs ([`ChildPlan`]) is prepared in the parent,
//! and it allocates nothing. A failing step reports through the error word `spawn` passes
//! back from the child; the step (and which mount or limit) is packed above the errno bits
//! so the parent can say in words what went wrong ([`ChildPlan::describe_failure`]).

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd as _, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::Arc;

use super::isolation::Isolation;
use super::mounts::{self, MountPoint};
use super::netns;
use super::procs;
use super::Limits;

/// Extra CPU seconds between SIGXCPU (the soft limit, catchable) and SIGKILL (the hard one).
pub(crate) const CPU_HARD_LIMIT_GRACE_S: u64 = 2;

/// errno values fit below this many bits of a failure code; the step sits above them.
const ERRNO_BITS: u32 = 12;
/// Bits of the step number; the index of the mount or limit sits above them.
const STAGE_BITS: u32 = 5;
/// Largest index a failure code can carry (the remaining bits of a positive i32).
const MAX_DETAIL: usize = (1 << (31 - ERRNO_BITS - STAGE_BITS)) - 1;

/// errno values a non-essential read-only remount may fail with and be skipped.
const SKIPPABLE_REMOUNT_ERRORS: &[i32] = &[
    libc::EINVAL,
    libc::EACCES,
    libc::EPERM,
    libc::ENOENT,
    libc::ENOTDIR,
];

/// Names of the limits in the order [`ChildPlan::apply`] sets them.
const RLIMIT_NAMES: [&str; 5] = [
    "RLIMIT_AS",
    "RLIMIT_CPU",
    "RLIMIT_FSIZE",
    "RLIMIT_NPROC",
    "RLIMIT_CORE",
];

/// The steps of the child's setup, for failure reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    NewSession = 1,
    MountNamespace,
    PrivateRoot,
    BindTaskDir,
    SecureTaskDir,
    ReadOnly,
    HideDevice,
    NetNamespace,
    Chdir,
    Rlimit,
    NoNewPrivs,
    DropGroups,
    SetGid,
    SetUid,
}

/// Every step, in numbering order (`STAGES[n - 1]` is step `n`), for decoding.
const STAGES: [Stage; 14] = [
    Stage::NewSession,
    Stage::MountNamespace,
    Stage::PrivateRoot,
    Stage::BindTaskDir,
    Stage::SecureTaskDir,
    Stage::ReadOnly,
    Stage::HideDevice,
    Stage::NetNamespace,
    Stage::Chdir,
    Stage::Rlimit,
    Stage::NoNewPrivs,
    Stage::DropGroups,
    Stage::SetGid,
    Stage::SetUid,
];

/// A failed step as an io::Error whose raw code packs step, index and errno. No allocation.
fn fail(stage: Stage, detail: usize) -> io::Error {
    let errno = io::Error::last_os_error()
        .raw_os_error()
        .unwrap_or(libc::EINVAL);
    let errno = errno.clamp(1, (1 << ERRNO_BITS) - 1);
    let detail = detail.min(MAX_DETAIL) as i32;
    io::Error::from_raw_os_error(
        (detail << (ERRNO_BITS + STAGE_BITS)) | ((stage as i32) << ERRNO_BITS) | errno,
    )
}

/// Unpacks a code made by [`fail`]; `None` for a plain errno (from exec itself).
pub(crate) fn decode_failure(code: i32) -> Option<(Stage, usize, i32)> {
    if code < (1 << ERRNO_BITS) {
        return None;
    }
    let stage_no = ((code >> ERRNO_BITS) & ((1 << STAGE_BITS) - 1)) as usize;
    let stage = *STAGES.get(stage_no.checked_sub(1)?)?;
    let detail = (code >> (ERRNO_BITS + STAGE_BITS)) as usize;
    Some((stage, detail, code & ((1 << ERRNO_BITS) - 1)))
}

/// The mount namespace the task gets.
#[derive(Debug)]
pub(crate) enum MountSetup {
    /// The worker's own (no mount namespace on this host).
    Shared,
    /// A namespace of its own, made by the child: the task directory bound writable with
    /// `bind_flags`, every mount point in `readonly` made read-only.
    Fresh {
        bind_flags: libc::c_ulong,
        readonly: Vec<MountPoint>,
    },
    /// The namespace kept for its slot (`mntns`), entered through this descriptor: made the
    /// same way once, with the slot's directory (which holds the task's) as the writable one.
    Join(Arc<OwnedFd>),
}

/// Makes the calling thread's mount namespace a private copy of its current one in which
/// `dir` (bound onto itself, remounted with `bind_flags`) is the one writable place: every
/// mount point in `readonly` is remounted read-only. Async-signal-safe: the child runs it
/// for a namespace of its own, and `mntns` in a thread of its own for a slot's kept one.
pub(crate) fn private_mounts(
    dir: &CStr,
    bind_flags: libc::c_ulong,
    readonly: &[MountPoint],
) -> io::Result<()> {
    // SAFETY (all blocks below): plain syscall wrappers called with NUL-terminated C strings
    // or null where the call allows it; nothing is retained.
    let null = std::ptr::null::<libc::c_char>();
    let dir = dir.as_ptr();
    if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
        return Err(fail(Stage::MountNamespace, 0));
    }
    let private = libc::MS_REC | libc::MS_PRIVATE;
    if unsafe { libc::mount(null, c"/".as_ptr(), null, private, std::ptr::null()) } != 0 {
        return Err(fail(Stage::PrivateRoot, 0));
    }
    if unsafe { libc::mount(dir, dir, null, libc::MS_BIND, std::ptr::null()) } != 0 {
        return Err(fail(Stage::BindTaskDir, 0));
    }
    if unsafe { libc::mount(null, dir, null, bind_flags, std::ptr::null()) } != 0 {
        return Err(fail(Stage::SecureTaskDir, 0));
    }
    for (i, m) in readonly.iter().enumerate() {
        let rc = unsafe {
            libc::mount(
                null,
                m.path.as_ptr(),
                null,
                m.remount_flags,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
            if m.essential || !SKIPPABLE_REMOUNT_ERRORS.contains(&errno) {
                return Err(fail(Stage::ReadOnly, i));
            }
        }
    }
    Ok(())
}

/// The network the task gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NetSetup {
    /// The worker's own (no network namespace on this host).
    Shared,
    /// A namespace of its own, created by the child.
    New,
    /// The namespace kept for its slot (`netns`), entered through this descriptor.
    Join(std::os::fd::RawFd),
}

/// Everything the child needs, prepared in the parent.
#[derive(Debug)]
pub(crate) struct ChildPlan {
    task_dir: CString,
    task_dir_shown: String,
    /// The working directory: the task directory or a directory inside it.
    cwd: CString,
    cwd_shown: String,
    /// The mount namespace the task gets.
    mounts: MountSetup,
    /// Device nodes covered by `/dev/null` in the mount namespace (GPUs not leased to the
    /// task); empty without a mount namespace.
    hidden: Vec<CString>,
    net: NetSetup,
    /// (soft, hard) in [`RLIMIT_NAMES`] order.
    rlimits: [(libc::rlim_t, libc::rlim_t); 5],
    uid: Option<u32>,
}

impl ChildPlan {
    /// The plan for a task in `task_dir` whose command runs in `cwd` (inside `task_dir`).
    /// `kept_mounts`: the slot's kept mount namespace (`mntns`), in which `task_dir` is
    /// writable, to enter instead of making one (not for a task that hides devices).
    pub(crate) fn new(
        task_dir: &Path,
        cwd: &Path,
        isolation: &Isolation,
        limits: &Limits,
        uid: Option<u32>,
        hidden: &[std::path::PathBuf],
        kept_mounts: Option<Arc<OwnedFd>>,
    ) -> Result<ChildPlan, String> {
        let c_dir = CString::new(task_dir.as_os_str().as_bytes())
            .map_err(|_| "task directory path contains NUL".to_owned())?;
        if !cwd.starts_with(task_dir) {
            return Err(format!(
                "working directory {} is outside the task directory",
                cwd.display()
            ));
        }
        let c_cwd = CString::new(cwd.as_os_str().as_bytes())
            .map_err(|_| "working directory path contains NUL".to_owned())?;
        let mounts = match kept_mounts {
            Some(fd) if isolation.mount_ns && hidden.is_empty() => MountSetup::Join(fd),
            _ if isolation.mount_ns => {
                let table = mounts::current()?.table;
                let (bind_flags, readonly) = mounts::writable_only(&table, task_dir)?;
                MountSetup::Fresh {
                    bind_flags,
                    readonly,
                }
            }
            _ => MountSetup::Shared,
        };
        // RLIMIT_NPROC counts every process of the real uid. Without a uid of its own the task
        // shares the worker's, so it gets what the worker already runs on top (root ignores
        // the limit altogether, which is why the uid switch is what contains fork bombs).
        // SAFETY: getuid cannot fail.
        let real_uid = unsafe { libc::getuid() };
        let nproc = match uid {
            Some(_) => limits.max_processes,
            None if real_uid == 0 => limits.max_processes,
            None => limits
                .max_processes
                .saturating_add(procs::tasks_of_uid(real_uid)),
        };
        let cpu_hard = limits.cpu_seconds.saturating_add(CPU_HARD_LIMIT_GRACE_S);
        let wanted = [
            (limits.memory_bytes, limits.memory_bytes),
            (limits.cpu_seconds, cpu_hard),
            (limits.file_size_bytes, limits.file_size_bytes),
            (nproc, nproc),
            (0, 0),
        ];
        let hidden = if matches!(mounts, MountSetup::Fresh { .. }) {
            hidden
                .iter()
                .map(|p| CString::new(p.as_os_str().as_bytes()))
                .collect::<Result<Vec<_>, _>>()
                .map_err(|_| "device path contains NUL".to_owned())?
        } else {
            Vec::new()
        };
        Ok(ChildPlan {
            hidden,
            task_dir: c_dir,
            task_dir_shown: task_dir.display().to_string(),
            cwd: c_cwd,
            cwd_shown: cwd.display().to_string(),
            mounts,
            net: match (isolation.net_ns, uid.filter(|_| isolation.uid_switch)) {
                (false, _) => NetSetup::Shared,
                // Kept only for a slot with a uid of its own: see `netns`.
                (true, Some(uid)) => netns::for_uid(uid).map_or(NetSetup::New, NetSetup::Join),
                (true, None) => NetSetup::New,
            },
            rlimits: clamp_to_hard_limits(wanted),
            uid,
        })
    }

    /// Runs in the child, between fork and exec. Async-signal-safe: only syscalls on data in
    /// `self`, no allocation, no locks.
    pub(crate) fn apply(&self) -> io::Result<()> {
        // SAFETY (all blocks below): plain syscall wrappers called with pointers into `self`
        // (NUL-terminated C strings) or null where the call allows it; nothing is retained.
        if unsafe { libc::setsid() } < 0 {
            return Err(fail(Stage::NewSession, 0));
        }
        match &self.mounts {
            MountSetup::Shared => {}
            MountSetup::Fresh {
                bind_flags,
                readonly,
            } => {
                private_mounts(&self.task_dir, *bind_flags, readonly)?;
                let null = std::ptr::null::<libc::c_char>();
                for (i, node) in self.hidden.iter().enumerate() {
                    let (from, to) = (c"/dev/null".as_ptr(), node.as_ptr());
                    if unsafe { libc::mount(from, to, null, libc::MS_BIND, std::ptr::null()) } != 0
                    {
                        return Err(fail(Stage::HideDevice, i));
                    }
                }
            }
            MountSetup::Join(fd) => {
                if unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) } != 0 {
                    return Err(fail(Stage::MountNamespace, 0));
                }
            }
        }
        let net = match self.net {
            NetSetup::Shared => 0,
            NetSetup::New => unsafe { libc::unshare(libc::CLONE_NEWNET) },
            NetSetup::Join(fd) => unsafe { libc::setns(fd, libc::CLONE_NEWNET) },
        };
        if net != 0 {
            return Err(fail(Stage::NetNamespace, 0));
        }
        // After the bind mount, so the working directory is on the writable mount.
        if unsafe { libc::chdir(self.cwd.as_ptr()) } != 0 {
            return Err(fail(Stage::Chdir, 0));
        }
        for (i, (resource, &(soft, hard))) in
            RLIMITS.into_iter().zip(self.rlimits.iter()).enumerate()
        {
            let lim = libc::rlimit {
                rlim_cur: soft,
                rlim_max: hard,
            };
            if unsafe { libc::setrlimit(resource, &lim) } != 0 {
                return Err(fail(Stage::Rlimit, i));
            }
        }
        // No setuid binary inside the sandbox can give back what the switch below takes away.
        if unsafe {
            libc::prctl(
                libc::PR_SET_NO_NEW_PRIVS,
                1 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
                0 as libc::c_ulong,
            )
        } != 0
        {
            return Err(fail(Stage::NoNewPrivs, 0));
        }
        // Raw syscalls, not glibc's wrappers: those ask every thread of the process to switch
        // too, and this child shares the worker's memory and thread list (`spawn`). The
        // kernel's calls change only the calling task, which is all there is to change.
        if let Some(uid) = self.uid {
            if unsafe { libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) }
                != 0
            {
                return Err(fail(Stage::DropGroups, 0));
            }
            if unsafe { libc::syscall(libc::SYS_setgid, uid) } != 0
                || unsafe { libc::getegid() } != uid
            {
                return Err(fail(Stage::SetGid, 0));
            }
            if unsafe { libc::syscall(libc::SYS_setuid, uid) } != 0
                || unsafe { libc::geteuid() } != uid
                || unsafe { libc::getuid() } != uid
            {
                return Err(fail(Stage::SetUid, 0));
            }
        }
        Ok(())
    }

    /// Words for a failure reported by [`ChildPlan::apply`].
    pub(crate) fn describe_failure(&self, stage: Stage, detail: usize, errno: i32) -> String {
        let why = io::Error::from_raw_os_error(errno);
        let uid = self.uid.unwrap_or(0);
        let step = match stage {
            Stage::NewSession => "could not start a new session".to_owned(),
            Stage::MountNamespace => "could not create a mount namespace".to_owned(),
            Stage::PrivateRoot => "could not make / private in the mount namespace".to_owned(),
            Stage::BindTaskDir => format!("could not bind-mount {}", self.task_dir_shown),
            Stage::SecureTaskDir => {
                format!("could not remount {} nosuid,nodev", self.task_dir_shown)
            }
            Stage::ReadOnly => {
                let readonly = match &self.mounts {
                    MountSetup::Fresh { readonly, .. } => Some(readonly),
                    _ => None,
                };
                let shown = readonly.and_then(|r| r.get(detail)).map_or_else(
                    || format!("mount #{detail}"),
                    |m| m.path.to_string_lossy().into_owned(),
                );
                format!("could not remount {shown} read-only")
            }
            Stage::HideDevice => {
                let shown = self.hidden.get(detail).map_or_else(
                    || format!("device #{detail}"),
                    |d| d.to_string_lossy().into_owned(),
                );
                format!("could not hide {shown} (a GPU not leased to the task)")
            }
            Stage::NetNamespace => "could not create or enter a network namespace".to_owned(),
            Stage::Chdir => format!("could not enter {}", self.cwd_shown),
            Stage::Rlimit => format!(
                "could not set {}",
                RLIMIT_NAMES.get(detail).unwrap_or(&"a resource limit")
            ),
            Stage::NoNewPrivs => "could not set no_new_privs".to_owned(),
            Stage::DropGroups => "could not drop supplementary groups".to_owned(),
            Stage::SetGid => format!("could not switch to gid {uid}"),
            Stage::SetUid => format!("could not switch to uid {uid}"),
        };
        format!("sandbox setup failed: {step}: {why}")
    }
}

/// The type `setrlimit` takes for a resource: glibc has its own, other libcs use `c_int`.
#[cfg(target_env = "gnu")]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(target_env = "gnu"))]
type Resource = libc::c_int;

/// The rlimits a task gets, in the order of `ChildPlan::rlimits` and of the `wanted` pairs
/// built for it: address space, CPU seconds, file size, processes, core size.
const RLIMITS: [Resource; 5] = [
    libc::RLIMIT_AS,
    libc::RLIMIT_CPU,
    libc::RLIMIT_FSIZE,
    libc::RLIMIT_NPROC,
    libc::RLIMIT_CORE,
];

/// Lowers each wanted (soft, hard) pair to the worker's own hard limit, which a process
/// without CAP_SYS_RESOURCE cannot raise (asking for more would fail the task).
fn clamp_to_hard_limits(wanted: [(u64, u64); 5]) -> [(libc::rlim_t, libc::rlim_t); 5] {
    let mut out = wanted;
    for (slot, resource) in out.iter_mut().zip(RLIMITS) {
        let mut cur = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: getrlimit writes into `cur`, which outlives the call.
        if unsafe { libc::getrlimit(resource, &mut cur) } == 0 {
            #[allow(clippy::useless_conversion)]
            let max = u64::from(cur.rlim_max);
            *slot = (slot.0.min(max), slot.1.min(max));
        }
    }
    out.map(|(soft, hard)| (to_rlim(soft), to_rlim(hard)))
}

/// A limit as `rlim_t`, which is narrower than u64 on some 32-bit targets.
#[allow(clippy::useless_conversion, clippy::unnecessary_fallible_conversions)]
fn to_rlim(v: u64) -> libc::rlim_t {
    libc::rlim_t::try_from(v).unwrap_or(libc::RLIM_INFINITY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failure_codes_round_trip() {
        for (i, stage) in STAGES.iter().enumerate() {
            assert_eq!(*stage as usize, i + 1, "stage numbering");
        }
        let cases = [
            (Stage::NewSession, 0, libc::EPERM),
            (Stage::ReadOnly, 17, libc::EROFS),
            (Stage::SetUid, 0, libc::EAGAIN),
            (Stage::Rlimit, 3, libc::EPERM),
            (Stage::ReadOnly, MAX_DETAIL, 4095),
        ];
        for (stage, detail, errno) in cases {
            // SAFETY: writing errno of this thread.
            unsafe { *libc::__errno_location() = errno };
            let code = fail(stage, detail).raw_os_error().unwrap();
            assert!(code > 0);
            assert_eq!(decode_failure(code), Some((stage, detail, errno)));
        }
        assert_eq!(decode_failure(libc::ENOENT), None);
    }

    #[test]
    fn failures_are_described_with_the_mount_or_limit_involved() {
        let iso = Isolation {
            mount_ns: true,
            net_ns: true,
            uid_switch: false,
        };
        let plan = ChildPlan::new(
            Path::new("/nonexistent/task-1"),
            Path::new("/nonexistent/task-1/src"),
            &iso,
            &Limits::default(),
            Some(200_001),
            &[],
            None,
        )
        .unwrap();
        let MountSetup::Fresh { readonly, .. } = &plan.mounts else {
            panic!("a mount plan of its own");
        };
        let root = readonly
            .iter()
            .position(|m| m.path.as_bytes() == b"/")
            .expect("/ is mounted");
        let cases = [
            (
                Stage::ReadOnly,
                root,
                libc::EPERM,
                "could not remount / read-only: Operation not permitted",
            ),
            (Stage::Rlimit, 3, libc::EPERM, "could not set RLIMIT_NPROC"),
            (
                Stage::SetUid,
                0,
                libc::EAGAIN,
                "could not switch to uid 200001",
            ),
            (
                Stage::BindTaskDir,
                0,
                libc::ENOENT,
                "could not bind-mount /nonexistent/task-1",
            ),
            (
                Stage::Chdir,
                0,
                libc::ENOENT,
                "could not enter /nonexistent/task-1/src",
            ),
        ];
        for (stage, detail, errno, want) in cases {
            let got = plan.describe_failure(stage, detail, errno);
            assert!(
                got.starts_with("sandbox setup failed: ") && got.contains(want),
                "{got}"
            );
        }
    }
}
