//! Starting a task's process without copying the worker: `clone(CLONE_VM | CLONE_VFORK)`, as
//! `posix_spawn` does, then [`ChildPlan::apply`] and `execve` in the child. A plain `fork`
//! (what a `Command` with a pre-exec hook does) copies the worker's page tables, and the
//! copy-on-write faults and the tear-down at exec that follow were a third of the worker's
//! CPU time per no-op exec task.
//!
//! The child shares the worker's memory until it execs or exits, while the thread that
//! spawned it waits (`CLONE_VFORK`). So the child runs only code that allocates nothing,
//! takes no lock and touches no other thread: raw syscalls on data prepared here (the uid
//! switch in `ChildPlan::apply` is a raw syscall for that reason: glibc's `setuid` would ask
//! every thread of the worker to switch too). All signals are blocked around the clone, and
//! the child resets every handler to its default before it unblocks them, so no handler of
//! the worker ever runs in it. The child's errors come back through a word in the spawning
//! thread's frame, written before the child exits.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsRawFd as _, FromRawFd as _, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::sync::atomic::{AtomicI32, Ordering};
use std::time::Duration;

use tokio::io::unix::AsyncFd;
use tokio::net::unix::pipe;

use super::child::ChildPlan;

/// Stack of the cloned child until it execs: `ChildPlan::apply` and a few syscalls need
/// little, and the memory is only reserved, not touched, beyond what they use.
const CHILD_STACK_BYTES: usize = 256 * 1024;

/// Exit status of a child whose set-up or exec failed (the reason is in the shared word).
const SETUP_FAILED_EXIT: i32 = 127;

/// How often the exit of a child is polled for where `pidfd_open` is missing (before Linux
/// 5.3).
const EXIT_POLL: Duration = Duration::from_millis(2);

/// What the child needs, all prepared before the clone.
struct Prepared<'a> {
    /// Full paths to try in order (the program itself, or each `PATH` entry joined to it).
    candidates: &'a [CString],
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// (child's stdin read end, stdout write end, stderr write end).
    stdio: (RawFd, RawFd, RawFd),
    plan: &'a ChildPlan,
    /// The error the child failed with: 0 until it writes one.
    error: &'a AtomicI32,
}

/// A started task process.
#[derive(Debug)]
pub(crate) struct Spawned {
    pid: i32,
    /// Readable once the process has exited; `None` where pidfds are missing.
    pidfd: Option<AsyncFd<OwnedFd>>,
    status: Option<ExitStatus>,
    pub(crate) stdin: Option<pipe::Sender>,
    pub(crate) stdout: Option<pipe::Receiver>,
    pub(crate) stderr: Option<pipe::Receiver>,
}

impl Spawned {
    pub(crate) fn id(&self) -> u32 {
        self.pid as u32
    }

    /// Waits for the process to exit and reaps it (once; later calls give the same status).
    pub(crate) async fn wait(&mut self) -> io::Result<ExitStatus> {
        loop {
            if let Some(status) = self.status {
                return Ok(status);
            }
            if let Some(status) = self.try_reap()? {
                self.status = Some(status);
                continue;
            }
            match &self.pidfd {
                Some(fd) => fd.readable().await?.clear_ready(),
                None => tokio::time::sleep(EXIT_POLL).await,
            }
        }
    }

    fn try_reap(&self) -> io::Result<Option<ExitStatus>> {
        let mut status = 0;
        loop {
            // SAFETY: waits for our own child without blocking; `status` outlives the call.
            let rc = unsafe { libc::waitpid(self.pid, &mut status, libc::WNOHANG) };
            match rc {
                0 => return Ok(None),
                rc if rc == self.pid => return Ok(Some(ExitStatus::from_raw(status))),
                _ => {
                    let e = io::Error::last_os_error();
                    if e.raw_os_error() != Some(libc::EINTR) {
                        return Err(e);
                    }
                }
            }
        }
    }
}

impl Drop for Spawned {
    /// A process still running when its supervision is dropped is killed and reaped.
    fn drop(&mut self) {
        if self.status.is_some() {
            return;
        }
        // SAFETY: our own child, not yet reaped, so the pid cannot have been reused.
        unsafe { libc::kill(self.pid, libc::SIGKILL) };
        let pid = self.pid;
        // Reaped off the async threads: a SIGKILLed process goes in moments.
        std::thread::spawn(move || {
            let mut status = 0;
            // SAFETY: waits for our own child; `status` outlives the call.
            while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
                && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
            {}
        });
    }
}

/// Starts `argv[0]` (found through `candidates`) with `argv` and `env`, its stdio piped,
/// after `plan` in the child. The error is the child's, as `Command::spawn` gives it (a
/// plain errno, or one packed by `ChildPlan::apply`).
pub(crate) fn spawn(
    candidates: &[CString],
    argv: &[CString],
    env: &[CString],
    plan: &ChildPlan,
) -> io::Result<Spawned> {
    let argv_ptrs: Vec<*const libc::c_char> = argv
        .iter()
        .map(|a| a.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp_ptrs: Vec<*const libc::c_char> = env
        .iter()
        .map(|e| e.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let (stdin_r, stdin_w) = pipe_pair()?;
    let (stdout_r, stdout_w) = pipe_pair()?;
    let (stderr_r, stderr_w) = pipe_pair()?;
    let error = AtomicI32::new(0);
    let prepared = Prepared {
        candidates,
        argv: &argv_ptrs,
        envp: &envp_ptrs,
        stdio: (
            stdin_r.as_raw_fd(),
            stdout_w.as_raw_fd(),
            stderr_w.as_raw_fd(),
        ),
        plan,
        error: &error,
    };
    // Before the clone: the check at the task's end reads this thread's children.
    super::adopted::note_spawner();
    let mut stack = vec![0u8; CHILD_STACK_BYTES];
    // Stacks grow down on every architecture Linux runs this on; 16-byte aligned top.
    let top = (stack.as_mut_ptr() as usize + CHILD_STACK_BYTES) & !0xf;

    // SAFETY: sigfillset/pthread_sigmask on local sets; restored right after the clone.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: the child runs `child_main` on its own stack with `prepared`, which lives in
    // this frame until the clone returns: CLONE_VFORK holds this thread until the child has
    // exec'd or exited. `child_main` is async-signal-safe (see the module doc).
    let pid = unsafe {
        libc::clone(
            child_main,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::SIGCHLD,
            &prepared as *const Prepared<'_> as *mut libc::c_void,
        )
    };
    let clone_error = io::Error::last_os_error();
    // SAFETY: restores this thread's own mask.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    drop((stdin_r, stdout_w, stderr_w));
    if pid < 0 {
        return Err(clone_error);
    }
    let failed = error.load(Ordering::Acquire);
    if failed != 0 {
        let mut status = 0;
        // SAFETY: reaps our own child, which has exited already (it wrote the error first).
        while unsafe { libc::waitpid(pid, &mut status, 0) } < 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::EINTR)
        {}
        return Err(io::Error::from_raw_os_error(failed));
    }
    let pidfd = pidfd_of(pid);
    Ok(Spawned {
        pid,
        pidfd,
        status: None,
        stdin: Some(pipe::Sender::from_owned_fd(nonblocking(stdin_w)?)?),
        stdout: Some(pipe::Receiver::from_owned_fd(nonblocking(stdout_r)?)?),
        stderr: Some(pipe::Receiver::from_owned_fd(nonblocking(stderr_r)?)?),
    })
}

/// The child: runs on the clone's stack, shares the worker's memory, never returns.
extern "C" fn child_main(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points at the parent's `Prepared`, alive while we run.
    let p = unsafe { &*(arg as *const Prepared<'_>) };
    let fail = |code: i32| -> ! {
        p.error.store(code.max(1), Ordering::Release);
        // SAFETY: ends this child at once; nothing of the parent's is run or freed.
        unsafe { libc::_exit(SETUP_FAILED_EXIT) }
    };
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EINVAL)
    };
    // SAFETY (all blocks below): plain syscalls with valid pointers or null where allowed.
    // No handler of the worker may run here: each caught signal goes back to its default
    // (this child's own table: no CLONE_SIGHAND), then the mask is emptied as exec expects.
    unsafe {
        for sig in 1..=libc::SIGRTMAX() {
            let mut current: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut current) == 0
                && current.sa_sigaction != libc::SIG_DFL
                && current.sa_sigaction != libc::SIG_IGN
            {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                libc::sigaction(sig, &dfl, std::ptr::null_mut());
            }
        }
        // SIGPIPE is ignored by Rust programs; a task gets the default, as with `Command`.
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        let mut empty: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut empty);
        libc::pthread_sigmask(libc::SIG_SETMASK, &empty, std::ptr::null_mut());
        let (i, o, e) = p.stdio;
        if libc::dup2(i, 0) < 0 || libc::dup2(o, 1) < 0 || libc::dup2(e, 2) < 0 {
            fail(errno());
        }
    }
    if let Err(e) = p.plan.apply() {
        fail(e.raw_os_error().unwrap_or(libc::EINVAL));
    }
    // As execvp: the first candidate that exists and runs; EACCES is remembered but the
    // search goes on, and the error reported is the most telling one met.
    let mut last = libc::ENOENT;
    let mut denied = false;
    for path in p.candidates {
        // SAFETY: NUL-terminated path and null-terminated pointer arrays, all alive.
        unsafe { libc::execve(path.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr()) };
        match errno() {
            libc::ENOENT | libc::ENOTDIR => {}
            libc::EACCES => denied = true,
            other => {
                last = other;
                break;
            }
        }
    }
    fail(if denied && last == libc::ENOENT {
        libc::EACCES
    } else {
        last
    })
}

/// A pipe, both ends close-on-exec: (read, write).
fn pipe_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors, owned right below.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both were just opened and are owned by nothing else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

fn nonblocking(fd: OwnedFd) -> io::Result<OwnedFd> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(io::Error::last_os_error());
    }
    Ok(fd)
}

/// A descriptor that becomes readable when `pid` exits; `None` before Linux 5.3.
fn pidfd_of(pid: i32) -> Option<AsyncFd<OwnedFd>> {
    // SAFETY: pidfd_open on our own child; the descriptor is owned right below.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, libc::PIDFD_NONBLOCK) };
    if fd < 0 {
        return None;
    }
    // SAFETY: just opened, owned by nothing else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as RawFd) };
    // SAFETY: the descriptor is owned by the AsyncFd and stays open as long as it lives.
    unsafe { AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }.ok()
}

/// Where `program` may be: itself if it names a path, else each directory of `path` (the
/// task's `PATH`, or the safe default) joined to it, as execvp searches.
pub(crate) fn candidates(program: &str, path: Option<&OsStr>) -> Result<Vec<CString>, String> {
    let nul = |_| format!("program {program:?} contains NUL");
    if program.contains('/') {
        return Ok(vec![CString::new(program).map_err(nul)?]);
    }
    let path = path.map_or(super::SAFE_DEFAULT_PATH.as_bytes(), OsStr::as_bytes);
    path.split(|&b| b == b':')
        .map(|dir| {
            let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
            CString::new([dir, b"/", program.as_bytes()].concat()).map_err(nul)
        })
        .collect()
}

/// `KEY=value` strings for `execve`.
pub(crate) fn environ(env: Vec<(OsString, OsString)>) -> Result<Vec<CString>, String> {
    env.into_iter()
        .map(|(k, v)| {
            CString::new([k.as_bytes(), b"=", v.as_bytes()].concat())
                .map_err(|_| format!("environment variable {k:?} contains NUL"))
        })
        .collect()
}
