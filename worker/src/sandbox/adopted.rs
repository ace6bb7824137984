//! The worker as its tasks' reaper of last resort (`PR_SET_CHILD_SUBREAPER`): a process a
//! task leaves behind, however it left the task's process group (`setsid`, a double fork),
//! becomes a child of the worker when its parent dies, instead of init's. Every process a
//! slot's uid has is then the worker's child or a descendant of one, so whether the uid has
//! any left after a task is answered by the worker's few children, where a scan of `/proc`
//! costs one `stat` per process on the host (0.1 ms a task on an idle machine, 2.5 ms with a
//! thousand processes: see docs/benchmarks.md).
//!
//! What the worker adopts it must also reap: a zombie counts against its uid's process limit
//! until someone waits for it. [`reap`] does, for a sandbox uid's children only; any other
//! child of the worker is waited for by whoever started it.

use std::sync::{Mutex, OnceLock};

/// Tries at a consistent view of the worker's children before giving up (threads started or
/// ended, or children reaped, while the lists were read). Each is a few reads; the caller
/// falls back to the scan of `/proc` after these.
const CONSISTENT_READ_TRIES: usize = 4;

/// Makes the worker the reaper of whatever its tasks leave behind, once, before its first
/// task under a uid of its own. Whether it worked: it needs Linux 3.4 and the children lists
/// of `/proc/<pid>/task/<tid>/children` (`CONFIG_PROC_CHILDREN`); without either, callers scan
/// `/proc` as before.
pub(crate) fn enable() -> bool {
    *ADOPTING.get_or_init(|| {
        // SAFETY: a prctl with integer arguments; it changes only this process's attribute.
        let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0;
        let listed = set && children().is_some();
        if !listed {
            tracing::info!(
                "cannot adopt what tasks leave behind (no child subreaper or no /proc children lists): each task ends with a scan of /proc"
            );
        }
        listed
    })
}

/// Whether [`enable`] made the worker the reaper (read, never set, by the checks: a process
/// started before it went to init).
static ADOPTING: OnceLock<bool> = OnceLock::new();

fn enabled() -> bool {
    ADOPTING.get() == Some(&true)
}

/// This process's threads, sorted.
fn threads() -> Option<Vec<u32>> {
    let mut tids: Vec<u32> = std::fs::read_dir("/proc/self/task")
        .ok()?
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    tids.sort_unstable();
    Some(tids)
}

/// One thread's children list (`/proc/self/task/<tid>/children`); `None` when it cannot be
/// read (the thread ended meanwhile). Read with one buffer, without the size probe of
/// `read_to_string`: this runs at the end of every task.
fn children_of_thread(tid: u32) -> Option<Vec<i32>> {
    use std::io::Read as _;
    let mut file = std::fs::File::open(format!("/proc/self/task/{tid}/children")).ok()?;
    let mut text = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = file.read(&mut buf).ok()?;
        text.extend_from_slice(&buf[..n]);
        // A seq_file read fills the buffer unless the list ended.
        if n < buf.len() {
            break;
        }
    }
    Some(
        text.split(|b| b.is_ascii_whitespace())
            .filter_map(|p| std::str::from_utf8(p).ok()?.parse().ok())
            .collect(),
    )
}

/// Threads that started a sandbox process ([`note_spawner`]): a task's main process is
/// listed under one of them, and so is anything it starts with `CLONE_PARENT` (a sibling,
/// not a child, of the caller). Runtime threads, a handful; one that ended is dropped when
/// its list cannot be read.
static SPAWNERS: Mutex<Vec<u32>> = Mutex::new(Vec::new());

/// Records the calling thread as one that starts sandbox processes: called before every
/// such start, so the check at a task's end reads its children list.
pub(super) fn note_spawner() {
    // SAFETY: gettid has no arguments and cannot fail.
    let tid = unsafe { libc::syscall(libc::SYS_gettid) } as u32;
    let mut spawners = SPAWNERS.lock().unwrap_or_else(|e| e.into_inner());
    if !spawners.contains(&tid) {
        spawners.push(tid);
    }
}

/// Whether this kernel hands an orphan, and the children of a thread that ends, to the
/// first live thread of the process that takes them: the main one, for a worker (Linux
/// 3.19 and later, `find_alive_thread` in `kernel/exit.c`). Older kernels hand them to the
/// next thread of the group, and there every thread's list is read.
fn reparents_to_main_thread() -> bool {
    static FIRST_LIVE: OnceLock<bool> = OnceLock::new();
    *FIRST_LIVE.get_or_init(|| {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        let mut parts = release
            .trim()
            .split(|c: char| !c.is_ascii_digit())
            .map(|n| n.parse::<u32>().unwrap_or(0));
        let version = (parts.next().unwrap_or(0), parts.next().unwrap_or(0));
        version >= FIRST_LIVE_THREAD_KERNEL
    })
}

/// The first Linux release that hands orphans to the reaper's first live thread.
const FIRST_LIVE_THREAD_KERNEL: (u32, u32) = (3, 19);

/// The worker's children (a child is listed under the thread that started it, an adopted
/// one under the first live thread, the main one), when a consistent view can be had.
///
/// The kernel walks a list from the entry it showed last, or by position when that entry
/// was reaped meanwhile, which can skip the next one: only a list that showed an entry can
/// have skipped one. So the lists that were not empty are read again and must come out the
/// same (a reaped pid does not come back). An idle worker's end of task reads each list
/// once.
///
/// Which lists: where the kernel hands what a thread or a process leaves to the main
/// thread ([`reparents_to_main_thread`]), those of the threads that start sandbox processes
/// and then the main thread's, last, so a child handed over from a thread that ended while
/// they were read is still seen; a sandbox uid has no other way to be a child of the worker
/// (the worker's helpers that run as one, the sweep's, are waited for before any check).
/// Elsewhere every thread's, and the thread list must not have changed meanwhile.
pub(super) fn children() -> Option<Vec<i32>> {
    if reparents_to_main_thread() {
        return children_of_spawners();
    }
    children_of_every_thread()
}

/// [`children`] from the spawners' lists and the main thread's.
fn children_of_spawners() -> Option<Vec<i32>> {
    let main = std::process::id();
    for _ in 0..CONSISTENT_READ_TRIES {
        let spawners = SPAWNERS.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let mut lists = Vec::with_capacity(spawners.len() + 1);
        for tid in spawners.into_iter().filter(|&t| t != main) {
            match children_of_thread(tid) {
                Some(list) => lists.push((tid, list)),
                // Ended: what it started went to the main thread, read below.
                None => SPAWNERS
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .retain(|&t| t != tid),
            }
        }
        lists.push((main, children_of_thread(main)?));
        if let Some(pids) = held_still(lists) {
            return Some(pids);
        }
    }
    None
}

/// [`children`] from every thread's list.
fn children_of_every_thread() -> Option<Vec<i32>> {
    'tries: for _ in 0..CONSISTENT_READ_TRIES {
        let tids = threads()?;
        let mut lists = Vec::with_capacity(tids.len());
        for &tid in &tids {
            match children_of_thread(tid) {
                Some(list) => lists.push((tid, list)),
                None => continue 'tries,
            }
        }
        let Some(pids) = held_still(lists) else {
            continue;
        };
        if threads()? != tids {
            continue;
        }
        return Some(pids);
    }
    None
}

/// The children in `lists` (each thread's, as just read), sorted and each once, when every
/// list that showed a child reads the same again; `None` when one changed (see
/// [`children`]: a list read while an entry is reaped can skip the next).
fn held_still(lists: Vec<(u32, Vec<i32>)>) -> Option<Vec<i32>> {
    for (tid, list) in lists.iter().filter(|(_, l)| !l.is_empty()) {
        if children_of_thread(*tid).as_ref() != Some(list) {
            return None;
        }
    }
    let mut pids: Vec<i32> = lists.into_iter().flat_map(|(_, l)| l).collect();
    pids.sort_unstable();
    pids.dedup();
    Some(pids)
}

/// What /proc/<pid>/status says about a process: real uid, state letter, thread count.
pub(super) fn status_of(pid_dir: &std::path::Path) -> Option<(u32, char, u64)> {
    let text = std::fs::read_to_string(pid_dir.join("status")).ok()?;
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|rest| rest.trim().to_owned())
    };
    let uid = field("Uid:")?.split_whitespace().next()?.parse().ok()?;
    let state = field("State:")?.chars().next()?;
    let threads = field("Threads:").and_then(|t| t.parse().ok()).unwrap_or(1);
    Some((uid, state, threads))
}

/// The worker's children that run (or ran: zombies) as `uid`, with their state letters.
fn children_of(uid: u32) -> Option<Vec<(i32, char)>> {
    let pids = children()?;
    Some(
        pids.into_iter()
            .filter_map(|pid| {
                use std::os::unix::fs::MetadataExt as _;
                // The directory's owner (the effective uid) first: one `stat` passes over
                // the other slots' tasks without reading their status.
                let dir = std::path::PathBuf::from(format!("/proc/{pid}"));
                if std::fs::metadata(&dir).ok()?.uid() != uid {
                    return None;
                }
                let (real, state, _) = status_of(&dir)?;
                (real == uid).then_some((pid, state))
            })
            .collect(),
    )
}

/// After a task whose main process has been reaped: `Some(true)` when `uid` has no process
/// left anywhere (no child of the worker runs or ran as it, and so no descendant of one),
/// `Some(false)` when it has one, `None` when the worker cannot tell this way.
pub(crate) fn none_left(uid: u32) -> Option<bool> {
    if !enabled() {
        return None;
    }
    children_of(uid).map(|left| left.is_empty())
}

/// Reaps the worker's zombie children of `uid`: what its tasks left behind and the sweep
/// killed. Only zombies, and only of a sandbox uid, so no one else's child is waited for.
pub(crate) fn reap(uid: u32) {
    if !enabled() {
        return;
    }
    let Some(left) = children_of(uid) else {
        return;
    };
    for (pid, state) in left {
        if state == 'Z' {
            let mut status = 0;
            // SAFETY: a non-blocking wait for one zombie child of ours; `status` outlives it.
            unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) };
        }
    }
}
