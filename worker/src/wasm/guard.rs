//! What stops a running module, and why: the memory limiter, the epoch callback (wall-clock
//! deadline, CPU time, cancel, output files) and the output cap all record the first reason
//! here, and the outcome is worded from it, so a limit is reported as that limit and not as
//! the trap it caused.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use vgas_shared::wire::TaskOutcome;
use wasmtime::{ResourceLimiter, UpdateDeadline};

use crate::sandbox::Limits;

/// Epoch callbacks between two measurements of the task directory's size: a walk of the
/// directory every quarter second bounds both its cost and how far past the cap files grow.
const DIR_CHECK_EVERY_TICKS: u64 = 25;

/// Table elements one instance may have: a table grown without bound would be a memory bomb
/// that the linear-memory limit does not see.
const MAX_TABLE_ELEMENTS: usize = 10_000_000;

/// Why a module was stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Stop {
    None = 0,
    Cancelled,
    Deadline,
    Cpu,
    Memory,
    Output,
    Files,
}

impl Stop {
    fn from_u8(v: u8) -> Stop {
        [
            Stop::None,
            Stop::Cancelled,
            Stop::Deadline,
            Stop::Cpu,
            Stop::Memory,
            Stop::Output,
            Stop::Files,
        ]
        .get(usize::from(v))
        .copied()
        .unwrap_or(Stop::None)
    }
}

/// One run's limits and the reason it was stopped, shared by the store, the output streams
/// and the epoch callback.
#[derive(Debug)]
pub(crate) struct Guard {
    stop: AtomicU8,
    pub(crate) output_used: AtomicU64,
    pub(crate) output_cap: u64,
    pub(crate) limits: Limits,
    pub(crate) deadline: Duration,
    pub(crate) dir: PathBuf,
    cancel: CancellationToken,
}

impl Guard {
    pub(crate) fn new(
        limits: Limits,
        deadline: Duration,
        dir: PathBuf,
        cancel: CancellationToken,
    ) -> Arc<Guard> {
        Arc::new(Guard {
            stop: AtomicU8::new(Stop::None as u8),
            output_used: AtomicU64::new(0),
            output_cap: limits.output_cap,
            limits,
            deadline,
            dir,
            cancel,
        })
    }

    /// Records why the module is stopped; the first reason wins.
    pub(crate) fn hit(&self, why: Stop) {
        let _ = self.stop.compare_exchange(
            Stop::None as u8,
            why as u8,
            Ordering::AcqRel,
            Ordering::Acquire,
        );
    }

    pub(crate) fn stopped(&self) -> Stop {
        Stop::from_u8(self.stop.load(Ordering::Acquire))
    }

    /// The outcome of a module stopped for `why`, in plain words; `None` if it was not stopped.
    pub(crate) fn outcome(&self) -> Option<TaskOutcome> {
        let mib = |b: u64| b / (1024 * 1024);
        let limit = |limit: &str, message: String| {
            Some(TaskOutcome::LimitExceeded {
                limit: limit.into(),
                message,
            })
        };
        match self.stopped() {
            Stop::None => None,
            Stop::Cancelled => Some(TaskOutcome::Cancelled),
            Stop::Deadline => Some(TaskOutcome::TimedOut {
                deadline_s: self.deadline.as_secs(),
            }),
            Stop::Cpu => limit(
                "cpu",
                format!(
                    "the module used more than {} s of CPU time and was stopped",
                    self.limits.cpu_seconds
                ),
            ),
            Stop::Memory => limit(
                "memory",
                format!(
                    "the module tried to grow its memory past {} MiB and was stopped",
                    mib(self.limits.memory_bytes)
                ),
            ),
            Stop::Output => limit(
                "output",
                format!(
                    "the module wrote more than {} MiB to stdout and stderr and was stopped",
                    mib(self.output_cap)
                ),
            ),
            Stop::Files => limit(
                "files",
                format!(
                    "the module wrote more than {} MiB of files into its directory and was stopped",
                    mib(self.limits.file_size_bytes)
                ),
            ),
        }
    }

    /// The epoch callback of one run: called every tick on the thread running the module.
    pub(crate) fn ticker<T>(
        self: &Arc<Self>,
    ) -> impl FnMut(wasmtime::StoreContextMut<'_, T>) -> wasmtime::Result<UpdateDeadline>
           + Send
           + Sync
           + 'static {
        let me = self.clone();
        let started = Instant::now();
        let cpu_start = thread_cpu_time();
        let mut ticks = 0u64;
        move |_| {
            ticks += 1;
            let why = if me.stopped() != Stop::None {
                me.stopped()
            } else if me.cancel.is_cancelled() {
                Stop::Cancelled
            } else if started.elapsed() >= me.deadline {
                Stop::Deadline
            } else if thread_cpu_time().saturating_sub(cpu_start)
                >= Duration::from_secs(me.limits.cpu_seconds)
            {
                Stop::Cpu
            } else if ticks.is_multiple_of(DIR_CHECK_EVERY_TICKS)
                && dir_size(&me.dir) > me.limits.file_size_bytes
            {
                Stop::Files
            } else {
                return Ok(UpdateDeadline::Continue(1));
            };
            me.hit(why);
            Ok(UpdateDeadline::Interrupt)
        }
    }
}

/// The store's `ResourceLimiter`: linear memory up to the task's limit, then a trap that the
/// outcome reports as the memory limit.
#[derive(Debug)]
pub(crate) struct Limiter(pub(crate) Arc<Guard>);

impl ResourceLimiter for Limiter {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.0.limits.memory_bytes {
            self.0.hit(Stop::Memory);
            return Err(wasmtime::format_err!("memory limit exceeded"));
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired > MAX_TABLE_ELEMENTS {
            self.0.hit(Stop::Memory);
            return Err(wasmtime::format_err!("table limit exceeded"));
        }
        Ok(true)
    }
}

/// CPU time of the calling thread (the one running the module).
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec; the clock id is a constant the kernel knows.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Bytes of regular files under `dir` (symlinks not followed).
pub(crate) fn dir_size(dir: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries.flatten() {
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(e.path()),
                Ok(t) if t.is_file() => total += e.metadata().map(|m| m.len()).unwrap_or(0),
                _ => {}
            }
        }
    }
    total
}
