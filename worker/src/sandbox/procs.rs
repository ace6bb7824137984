//! Finding and killing a task's processes. The process group catches the ordinary tree; with
//! a uid of its own per slot, killing every process of that uid also catches whatever left the
//! group (`setsid`, double forks), which a process group alone cannot.

use std::time::Duration;

use super::adopted::{self, status_of};

/// Kill-and-check rounds before giving up on a uid that still has live processes.
const UID_KILL_ROUNDS: u32 = 100;
/// Pause between those rounds: SIGKILLed processes need a moment to become zombies.
const UID_KILL_RETRY: Duration = Duration::from_millis(10);

/// SIGKILLs the process group `pgid` (the task's session leader's pid).
pub(crate) fn kill_group(pgid: i32) {
    // SAFETY: getpgrp cannot fail.
    let own = unsafe { libc::getpgrp() };
    // Never 0, 1 or our own group: kill(-0) and kill(-1) mean something else entirely.
    if pgid > 1 && pgid != own {
        // SAFETY: kill has no memory effects; ESRCH (group already gone) is fine.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
}

/// True for uids it is safe to wipe out: never root and never the worker's own.
fn killable_uid(uid: u32) -> bool {
    // SAFETY: getuid/geteuid cannot fail.
    uid != 0 && uid != unsafe { libc::getuid() } && uid != unsafe { libc::geteuid() }
}

/// One sweep: a forked helper becomes `uid` and calls kill(-1, SIGKILL), which reaches every
/// process of that uid and no other. Needs root; without it the helper can do nothing. (Its
/// return value says nothing useful: Linux answers 0 when any process exists, even if every
/// one refused the signal, so the caller checks /proc instead.)
fn sweep_uid(uid: u32) {
    if !killable_uid(uid) {
        return;
    }
    // SAFETY: the child makes only async-signal-safe syscalls and _exits.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: raw syscalls in the single-threaded child; it never returns.
        unsafe {
            if libc::setuid(uid) == 0 && libc::getuid() == uid {
                libc::kill(-1, libc::SIGKILL);
            }
            libc::_exit(0);
        }
    }
    if pid < 0 {
        tracing::warn!(uid, error = %std::io::Error::last_os_error(), "cannot fork to kill the sandbox uid's processes");
        return;
    }
    let mut status = 0;
    // SAFETY: waits for our own child; `status` outlives the call.
    while unsafe { libc::waitpid(pid, &mut status, 0) } < 0 {
        if std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            break;
        }
    }
}

/// Sandbox uids found with no live process by the last [`kill_uid`], and not used since.
fn known_clean() -> &'static std::sync::Mutex<std::collections::HashSet<u32>> {
    static CLEAN: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<u32>>> =
        std::sync::OnceLock::new();
    CLEAN.get_or_init(Default::default)
}

/// Before a task of `uid` starts: true when no process of the uid is alive. A uid the last
/// task's [`kill_uid`] left clean is taken at its word (this process is the only one that
/// runs anything as a slot's uid); otherwise, after a crash or a failed kill, it is swept.
/// Either way the uid is no longer known clean: the task about to start will use it.
pub(crate) async fn ensure_clean(uid: u32) -> bool {
    if !killable_uid(uid) {
        return false;
    }
    adopted::enable();
    known_clean().lock().expect("clean uids lock").remove(&uid) || kill_uid_rounds(uid).await
}

/// After a task whose main process has been reaped: kills every process of `uid` and waits
/// (bounded) until none is alive, then reaps those the worker adopted. Returns whether none
/// is. When the worker adopts what tasks leave behind, a uid with no child of the worker is
/// known clean without a scan (see [`adopted`]); a scan of `/proc` decides otherwise.
pub(crate) async fn kill_uid(uid: u32) -> bool {
    if !killable_uid(uid) {
        return false;
    }
    let clean = adopted::none_left(uid) == Some(true) || kill_uid_rounds(uid).await;
    if clean {
        known_clean().lock().expect("clean uids lock").insert(uid);
    }
    clean
}

async fn kill_uid_rounds(uid: u32) -> bool {
    for _ in 0..UID_KILL_ROUNDS {
        // A scan first: with none alive (the usual case, before and after every task) no
        // helper is forked; a fork of the worker copies its page tables and was the largest
        // part of a no-op task's cost.
        let round = move || match live_processes_of_uid(uid) {
            0 => 0,
            _ => {
                sweep_uid(uid);
                live_processes_of_uid(uid)
            }
        };
        let left = match tokio::task::spawn_blocking(round).await {
            Ok(n) => n,
            Err(_) => round(),
        };
        if left == 0 {
            // Dead, but a zombie the worker adopted still counts against the uid's limit.
            adopted::reap(uid);
            return true;
        }
        tokio::time::sleep(UID_KILL_RETRY).await;
    }
    tracing::warn!(uid, "processes of the sandbox uid survived SIGKILL");
    false
}

/// The numeric entries of /proc: one per process.
fn proc_dirs() -> impl Iterator<Item = std::fs::DirEntry> {
    std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
}

type ProcInfo = (std::path::PathBuf, u32, char, u64);

fn with_status(e: std::fs::DirEntry) -> Option<ProcInfo> {
    let path = e.path();
    status_of(&path).map(|(uid, state, threads)| (path, uid, state, threads))
}

/// Processes of `uid` (a `/proc/<pid>` directory belongs to the process's effective uid, which
/// equals the real one for sandboxed tasks), with their status. One `stat` per process
/// filters first, so a scan costs little when the uid has none; each is asked relative to
/// the open `/proc` (the entry's own `metadata`), not by a path walked from the root.
fn processes_of(uid: u32) -> Vec<ProcInfo> {
    use std::os::unix::fs::MetadataExt;
    proc_dirs()
        .filter(|e| e.metadata().is_ok_and(|m| m.uid() == uid))
        .filter_map(with_status)
        .filter(|(_, u, _, _)| *u == uid)
        .collect()
}

/// Every process, with its status.
#[cfg(test)]
fn all_processes() -> Vec<ProcInfo> {
    proc_dirs().filter_map(with_status).collect()
}

/// Processes of real uid `uid` that are not zombies (or dead).
pub(crate) fn live_processes_of_uid(uid: u32) -> usize {
    processes_of(uid)
        .iter()
        .filter(|(_, _, state, _)| !matches!(state, 'Z' | 'X'))
        .count()
}

/// Threads of `uid`, zombies included: what RLIMIT_NPROC counts against, for a task that
/// shares the worker's uid. It runs before each such task, so it costs one `stat` a
/// process: `/proc/<pid>/task` belongs to the process's (effective) uid, and its link count
/// is two more than the process's threads. Reading each process's status instead cost 1.6 ms
/// a task on a host of 110 root processes, and 22 to 33 ms with 1,100.
pub(crate) fn tasks_of_uid(uid: u32) -> u64 {
    use std::os::unix::fs::MetadataExt;
    proc_dirs()
        .filter_map(|e| {
            let mut path = e.path();
            path.push("task");
            let m = std::fs::metadata(path).ok()?;
            (m.uid() == uid).then(|| m.nlink().saturating_sub(2).max(1))
        })
        .sum()
}

/// Live processes whose command line contains `marker` (tests use unique markers to find
/// what a task left behind, whatever uid it ran as).
#[cfg(test)]
pub(crate) fn live_processes_with(marker: &str) -> usize {
    all_processes()
        .iter()
        .filter(|(_, _, state, _)| !matches!(state, 'Z' | 'X'))
        .filter(|(path, _, _, _)| {
            std::fs::read(path.join("cmdline"))
                .map(|c| {
                    String::from_utf8_lossy(&c)
                        .replace('\0', " ")
                        .contains(marker)
                })
                .unwrap_or(false)
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_worker_itself_is_never_a_target() {
        // SAFETY: getuid cannot fail.
        let me = unsafe { libc::getuid() };
        assert!(!killable_uid(0));
        assert!(!killable_uid(me));
        assert!(tasks_of_uid(me) >= 1, "this test process runs as uid {me}");
        assert!(live_processes_of_uid(me) >= 1);
    }
}

#[cfg(test)]
mod clean_tests {
    use super::*;
    use std::io::Read as _;
    use std::os::unix::process::CommandExt as _;

    /// Starts `sleep 60` as `uid`, orphaned (its shell exits at once), as a task's straggler
    /// is; returns its pid.
    fn orphan_of(uid: u32) -> i32 {
        let mut sh = std::process::Command::new("sh")
            .args(["-c", "sleep 60 >/dev/null 2>&1 & echo $!"])
            .uid(uid)
            .gid(uid)
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("sh as the sandbox uid");
        let mut out = String::new();
        sh.stdout.take().unwrap().read_to_string(&mut out).unwrap();
        assert!(sh.wait().unwrap().success());
        out.trim().parse().expect("the orphan's pid")
    }

    /// Whether `pid` is a child of this process still to be reaped (a zombie or alive).
    fn unreaped_child(pid: i32) -> bool {
        let mut status = 0;
        // SAFETY: a non-blocking wait; `status` outlives the call. It reaps only a zombie,
        // which the callers assert there is none of.
        unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) >= 0 }
    }

    /// Needs root (to start a process as another uid); skipped elsewhere.
    #[tokio::test]
    async fn a_process_a_crashed_run_left_is_killed_before_the_next_task() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: needs root to start a process as a sandbox uid");
            return;
        }
        let uid = 4_000_311;
        let adopting = adopted::enable();
        let left = orphan_of(uid);
        assert_eq!(live_processes_of_uid(uid), 1);
        assert!(ensure_clean(uid).await, "not known clean: swept");
        assert_eq!(live_processes_of_uid(uid), 0);
        if adopting {
            assert!(!unreaped_child(left), "the adopted straggler was reaped");
        }
        assert!(kill_uid(uid).await);
        assert!(ensure_clean(uid).await, "left clean by the last kill");
        assert!(
            !known_clean().lock().unwrap().contains(&uid),
            "taken by the task about to start"
        );
    }

    /// Needs root (to start a process as another uid) and a kernel with children lists;
    /// skipped elsewhere.
    #[tokio::test]
    async fn a_straggler_is_found_among_the_workers_children_killed_and_reaped() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 || !adopted::enable() {
            println!("skipped: needs root and a child subreaper with children lists");
            return;
        }
        let uid = 4_000_312;
        assert_eq!(
            adopted::none_left(uid),
            Some(true),
            "nothing of the uid yet"
        );
        let left = orphan_of(uid);
        // Its shell has exited: the straggler is this process's child now, not init's.
        assert!(adopted::children().unwrap().contains(&left));
        assert_eq!(adopted::none_left(uid), Some(false));
        assert!(kill_uid(uid).await, "swept");
        assert!(!unreaped_child(left), "killed and reaped");
        assert_eq!(adopted::none_left(uid), Some(true));
        assert!(kill_uid(uid).await, "and clean without a sweep");
    }

    /// Needs root (to start a process as another uid); skipped elsewhere.
    #[test]
    fn a_uids_threads_are_counted_as_its_processes_status_says() {
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: needs root to start a process as a sandbox uid");
            return;
        }
        let uid = 4_000_313;
        // One process (the shell execs Python) with three threads besides its main one.
        let mut sh = std::process::Command::new("sh")
            .args([
                "-c",
                "exec python3 -c 'import threading, time\n\
                 for _ in range(3): threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n\
                 time.sleep(30)'",
            ])
            .uid(uid)
            .gid(uid)
            .spawn()
            .expect("python3 as the sandbox uid");
        let by_status = || -> u64 {
            processes_of(uid)
                .iter()
                .map(|(_, _, _, threads)| threads)
                .sum()
        };
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while by_status() < 4 && std::time::Instant::now() < deadline {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert_eq!(by_status(), 4, "python3 with its three threads");
        assert_eq!(tasks_of_uid(uid), 4);
        sh.kill().unwrap();
        sh.wait().unwrap();
        assert_eq!(tasks_of_uid(uid), 0);
    }
}
