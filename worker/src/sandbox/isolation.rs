//! What isolation this host gives, found once at worker start by trying it: a forked child
//! creates a mount namespace and remounts `/` read-only in it, creates a network namespace and
//! switches uid, and reports which of these worked in its exit status. Trying beats guessing
//! from capabilities, seccomp profiles and sysctls, which differ between kernels and
//! container runtimes.

use super::mounts;

/// Uid the probe switches to (nobody); any unprivileged uid would do.
const PROBE_UID: u32 = 65534;

/// Exit-status bit of the probe child: a mount namespace with `/` remounted read-only worked.
const PROBE_MOUNT_NS: i32 = 1;
/// Exit-status bit of the probe child: a network namespace worked.
const PROBE_NET_NS: i32 = 2;
/// Exit-status bit of the probe child: switching to [`PROBE_UID`] worked.
const PROBE_UID_SWITCH: i32 = 4;

/// What isolation this host gives, probed once at worker start (by actually trying it in a
/// child process).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Isolation {
    /// A private mount namespace with everything but the task directory read-only.
    pub mount_ns: bool,
    /// A network namespace of its own: no network at all.
    pub net_ns: bool,
    /// A uid of its own per slot (needs root), which makes the process limit effective.
    pub uid_switch: bool,
}

impl Isolation {
    /// No isolation beyond a process group and resource limits.
    pub fn none() -> Isolation {
        Isolation {
            mount_ns: false,
            net_ns: false,
            uid_switch: false,
        }
    }

    /// Tries each kind of isolation in a throw-away child process.
    pub fn probe() -> Isolation {
        let root_flags = mounts::read_mount_table()
            .map(|t| mounts::flags_of_mount_holding(&t, std::path::Path::new("/")))
            .unwrap_or(0);
        let remount = libc::MS_REMOUNT | libc::MS_BIND | libc::MS_RDONLY | root_flags;
        // SAFETY: fork in a possibly multi-threaded process; the child below makes only
        // async-signal-safe syscalls on data prepared before the fork, then _exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let null = std::ptr::null::<libc::c_char>();
            let mut bits = 0;
            // SAFETY: syscalls with static C strings or null pointers; the child then exits.
            unsafe {
                if libc::unshare(libc::CLONE_NEWNS) == 0
                    && libc::mount(
                        null,
                        c"/".as_ptr(),
                        null,
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null(),
                    ) == 0
                    && libc::mount(null, c"/".as_ptr(), null, remount, std::ptr::null()) == 0
                {
                    bits |= PROBE_MOUNT_NS;
                }
                if libc::unshare(libc::CLONE_NEWNET) == 0 {
                    bits |= PROBE_NET_NS;
                }
                if libc::geteuid() == 0
                    && libc::setgroups(0, std::ptr::null()) == 0
                    && libc::setgid(PROBE_UID) == 0
                    && libc::setuid(PROBE_UID) == 0
                    && libc::getuid() == PROBE_UID
                    && libc::geteuid() == PROBE_UID
                {
                    bits |= PROBE_UID_SWITCH;
                }
                libc::_exit(bits);
            }
        }
        if pid < 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot fork to probe the sandbox; assuming no isolation");
            return Isolation::none();
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child; `status` outlives the call.
            let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
            if rc == pid {
                break;
            }
            if rc < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
                tracing::warn!("lost the sandbox probe child; assuming no isolation");
                return Isolation::none();
            }
        }
        let bits = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            0
        };
        Isolation {
            mount_ns: bits & PROBE_MOUNT_NS != 0,
            net_ns: bits & PROBE_NET_NS != 0,
            uid_switch: bits & PROBE_UID_SWITCH != 0,
        }
    }

    /// True when nothing is missing.
    pub fn is_full(&self) -> bool {
        self.mount_ns && self.net_ns && self.uid_switch
    }

    /// `full`, or what is missing, for example `no network namespace, no uid switch (not root)`.
    pub fn describe(&self) -> String {
        if self.is_full() {
            return "full".into();
        }
        // SAFETY: geteuid cannot fail.
        let root = unsafe { libc::geteuid() } == 0;
        let why = if root { "" } else { " (not root)" };
        let missing: Vec<&str> = [
            (self.mount_ns, "no mount namespace"),
            (self.net_ns, "no network namespace"),
            (self.uid_switch, "no uid switch"),
        ]
        .into_iter()
        .filter(|(have, _)| !have)
        .map(|(_, what)| what)
        .collect();
        format!("{}{why}", missing.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descriptions_name_what_is_missing() {
        assert_eq!(
            Isolation {
                mount_ns: true,
                net_ns: true,
                uid_switch: true
            }
            .describe(),
            "full"
        );
        let d = Isolation {
            mount_ns: true,
            net_ns: false,
            uid_switch: false,
        }
        .describe();
        assert!(d.starts_with("no network namespace"), "{d}");
        assert!(d.contains(", no uid switch"), "{d}");
        assert!(!d.contains("mount"), "{d}");
    }

    #[test]
    fn probing_matches_privilege() {
        let iso = Isolation::probe();
        println!("isolation here: {}", iso.describe());
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            assert!(!iso.uid_switch, "only root can switch uids");
        }
    }
}
