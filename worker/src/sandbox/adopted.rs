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

use std::sync::OnceLock;

/// Passes over the worker's children lists before giving up on a consistent view (threads
/// started or ended, or children reaped, between two passes). Each pass is a few reads; the
/// caller falls back to the scan of `/proc` after these.
const CONSISTENT_READ_TRIES: usize = 4;

/// Makes the worker the reaper of whatever its tasks leave behind, once, before its first
/// task under a uid of its own. Whether it worked: it needs Linux 3.4 and the children lists
/// of `/proc/<pid>/task/<tid>/children` (`CONFIG_PROC_CHILDREN`); without either, callers scan
/// `/proc` as before.
pub(crate) fn enable() -> bool {
    *ADOPTING.get_or_init(|| {
        // SAFETY: a prctl with integer arguments; it changes only this process's attribute.
        let set = unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } == 0;
        let listed = set && children_once().is_some();
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

/// One pass over every thread's children list (a child is listed under the thread that
/// started it, an adopted one under whichever thread the kernel picked), with the thread
/// list it read. A list missing (a thread that ended meanwhile) gives `None`.
fn children_once() -> Option<(Vec<u32>, Vec<i32>)> {
    let tids = threads()?;
    let mut pids = Vec::new();
    for tid in &tids {
        let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/children")).ok()?;
        pids.extend(
            text.split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok()),
        );
    }
    pids.sort_unstable();
    Some((tids, pids))
}

/// The worker's children, from two passes that agree. A list read while a child is reaped
/// can skip another child (the kernel walks it by position), so one pass alone could miss
/// one; a reaped pid does not come back, so two equal passes saw a list that held still.
pub(super) fn children() -> Option<Vec<i32>> {
    let mut last = children_once()?;
    for _ in 0..CONSISTENT_READ_TRIES {
        let next = children_once()?;
        if next == last {
            return Some(next.1);
        }
        last = next;
    }
    None
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
                let (real, state, _) = status_of(std::path::Path::new(&format!("/proc/{pid}")))?;
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
