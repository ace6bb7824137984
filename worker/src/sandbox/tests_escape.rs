//! Tests that a process a task leaves behind, however it left the task (its own session, a
//! sibling of the task's main process), is found when the task ends, killed and reaped.
//! Skipped where no uid switch lets an escaped process be found.

use vgas_shared::wire::TaskOutcome;

use super::tests::{assert_nothing_left, harness, isolation, run, sh, unique_sleep};

/// Runs the script `script_for` makes from a unique `sleep` marker in `slot`, which must
/// print `started` and exit 0 leaving that `sleep` behind, and checks nothing of it survives.
async fn escape_is_killed(slot: usize, script_for: impl FnOnce(&str) -> String) {
    let h = harness();
    if !isolation().uid_switch {
        println!(
            "skipped: no uid switch here ({}), an escaped process cannot be found",
            isolation().describe()
        );
        return;
    }
    let marker = unique_sleep();
    let ran = run(&h, slot, sh(&script_for(&marker))).await;
    assert_eq!(
        ran.outcome,
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stdout, "started\n");
    assert_nothing_left(slot, &marker);
}

#[tokio::test]
async fn processes_that_leave_the_group_are_still_killed() {
    escape_is_killed(18, |marker| {
        format!("setsid sleep {marker} >/dev/null 2>&1 & echo started")
    })
    .await;
}

/// A process started with `CLONE_PARENT` (a sibling of the task's main process, so the
/// child of the worker's own thread that started the task) and out of the task's session
/// is still found when the task ends, killed and reaped.
#[cfg(target_arch = "x86_64")]
#[tokio::test]
async fn a_sibling_started_with_clone_parent_is_still_killed() {
    // clone(CLONE_PARENT | SIGCHLD) with no new stack: a fork whose child's parent is the
    // caller's parent. SYS_clone is 56 on x86_64.
    escape_is_killed(23, |marker| {
        format!(
            "exec /usr/bin/python3 -c '
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
pid = libc.syscall(56, 0x8000 | 17, 0, 0, 0, 0)
if pid == 0:
    os.setsid()
    os.execvp(\"sleep\", [\"sleep\", \"{marker}\"])
print(\"started\" if pid > 0 else \"clone failed\", flush=True)
'"
        )
    })
    .await;
}
