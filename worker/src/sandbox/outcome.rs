//! How a task ended, in words a person can act on: exit codes pass through, signals the
//! sandbox did not send say which limit or crash is the likely cause, and a failure to start
//! names the program or the sandbox step that failed.

use std::ffi::OsStr;
use std::os::unix::process::ExitStatusExt as _;
use std::path::PathBuf;
use std::process::ExitStatus;

use vgas_shared::wire::TaskOutcome;

use super::child::{self, ChildPlan, CPU_HARD_LIMIT_GRACE_S};
use super::Limits;

/// `1536 MiB`-style sizes for messages.
fn size(bytes: u64) -> String {
    const MIB: u64 = 1024 * 1024;
    if bytes >= MIB && bytes.checked_rem(MIB) == Some(0) {
        format!("{} MiB", bytes / MIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// The outcome of a main process that ended on its own (or by a signal we did not send).
pub(crate) fn from_status(status: ExitStatus, limits: &Limits) -> TaskOutcome {
    match (status.code(), status.signal()) {
        (Some(exit_code), _) => TaskOutcome::Exited { exit_code },
        (None, Some(signal)) => TaskOutcome::Signaled {
            signal,
            message: signal_message(signal, limits),
        },
        (None, None) => TaskOutcome::Error {
            message: format!("the task ended in an unknown way ({status})"),
        },
    }
}

/// What a signal the sandbox did not send most likely means.
pub(crate) fn signal_message(signal: i32, limits: &Limits) -> String {
    let mem = size(limits.memory_bytes);
    match signal {
        libc::SIGXCPU => format!("CPU time limit of {} s exceeded", limits.cpu_seconds),
        libc::SIGXFSZ => format!(
            "file size limit of {} exceeded",
            size(limits.file_size_bytes)
        ),
        libc::SIGKILL => format!(
            "killed (SIGKILL) from outside: most likely out of memory (the kernel's OOM killer), \
             or the hard CPU time limit of {} s",
            limits.cpu_seconds.saturating_add(CPU_HARD_LIMIT_GRACE_S)
        ),
        libc::SIGSEGV => format!(
            "segmentation fault (invalid memory access); with a memory limit of {mem} this is \
             often an allocation that failed"
        ),
        libc::SIGABRT => format!(
            "aborted (SIGABRT), often after a failed assertion or an allocation that failed \
             under the memory limit of {mem}"
        ),
        libc::SIGBUS => {
            "bus error (SIGBUS): bad memory access, e.g. a truncated mapped file".into()
        }
        libc::SIGFPE => "arithmetic error (SIGFPE), e.g. integer division by zero".into(),
        libc::SIGILL => "illegal instruction (SIGILL)".into(),
        libc::SIGPIPE => "broken pipe (SIGPIPE): it wrote to a pipe nobody reads".into(),
        libc::SIGTERM => "terminated (SIGTERM)".into(),
        libc::SIGINT => "interrupted (SIGINT)".into(),
        libc::SIGHUP => "hung up (SIGHUP)".into(),
        libc::SIGSYS => "bad system call (SIGSYS)".into(),
        libc::SIGTRAP => "trace or breakpoint trap (SIGTRAP)".into(),
        other => format!("killed by signal {other}"),
    }
}

/// The first file called `program` in the directories of `path`.
fn find_on_path(program: &str, path: &OsStr) -> Option<PathBuf> {
    std::env::split_paths(path)
        .map(|dir| dir.join(program))
        .find(|candidate| candidate.is_file())
}

/// Why `program` could not be started: a sandbox step (decoded from the child's failure code)
/// or exec's own error. `path` is the task's `PATH`, to tell "not found" from "not allowed"
/// (exec reports both as EACCES when a directory on `PATH` is closed to the sandbox uid).
pub(crate) fn spawn_error(
    e: &std::io::Error,
    program: &str,
    plan: &ChildPlan,
    path: Option<&OsStr>,
) -> TaskOutcome {
    let code = e.raw_os_error();
    if let Some((stage, detail, errno)) = code.and_then(child::decode_failure) {
        return TaskOutcome::Error {
            message: plan.describe_failure(stage, detail, errno),
        };
    }
    let found = match (program.contains('/'), path) {
        (false, Some(path)) => find_on_path(program, path),
        _ => None,
    };
    let message = match (code, found) {
        (Some(libc::ENOENT), _) if program.contains('/') => {
            format!("program {program:?} not found (or its interpreter is missing)")
        }
        (Some(libc::ENOENT | libc::EACCES), None) if !program.contains('/') => {
            format!("program {program:?} not found on PATH")
        }
        (Some(libc::ENOENT), Some(at)) => {
            format!(
                "program {program:?} ({}) cannot run: its interpreter is missing",
                at.display()
            )
        }
        (Some(libc::EACCES), Some(at)) => {
            format!(
                "program {program:?} ({}) is not executable in the sandbox (permission denied)",
                at.display()
            )
        }
        (Some(libc::EACCES), None) => {
            format!("program {program:?} is not executable (permission denied)")
        }
        (Some(libc::ENOEXEC), _) => format!("program {program:?} is not in an executable format"),
        (Some(libc::ENOTDIR), _) => {
            format!("program {program:?}: a component of its path is not a directory")
        }
        (Some(libc::E2BIG), _) => {
            format!("cannot start {program:?}: arguments and environment are too long")
        }
        (Some(libc::EAGAIN), _) => {
            format!("cannot start {program:?}: the process limit is reached")
        }
        (Some(libc::ENOMEM), _) => {
            format!("cannot start {program:?}: not enough memory under the memory limit")
        }
        _ => format!("cannot start {program:?}: {e}"),
    };
    TaskOutcome::Error { message }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statuses_map_to_outcomes() {
        let limits = Limits {
            cpu_seconds: 7,
            memory_bytes: 256 << 20,
            ..Limits::default()
        };
        let cases: [(i32, TaskOutcome); 3] = [
            (3 << 8, TaskOutcome::Exited { exit_code: 3 }),
            (
                libc::SIGXCPU,
                TaskOutcome::Signaled {
                    signal: libc::SIGXCPU,
                    message: "CPU time limit of 7 s exceeded".into(),
                },
            ),
            (0, TaskOutcome::Exited { exit_code: 0 }),
        ];
        for (raw, want) in cases {
            assert_eq!(from_status(ExitStatus::from_raw(raw), &limits), want);
        }
        let TaskOutcome::Signaled { message, .. } =
            from_status(ExitStatus::from_raw(libc::SIGSEGV), &limits)
        else {
            panic!("a signal is Signaled");
        };
        assert!(message.contains("256 MiB"), "{message}");
    }
}
