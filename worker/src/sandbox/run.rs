//! Supervising a started task: feed its stdin, stream its output, and end it on whichever
//! comes first of its own exit, the wall-clock deadline, the output cap or a cancel. Whatever
//! way it ends, the whole process group (and, with a uid of its own, every process of that
//! uid) is killed, so nothing the task started outlives it.

use std::process::ExitStatus;
use std::time::{Duration, Instant};

use tokio::io::AsyncWriteExt as _;
use tokio::net::unix::pipe;
use tokio::sync::mpsc::Sender;
use tokio_util::sync::CancellationToken;
use vgas_shared::wire::TaskOutcome;

use super::output::{pump, Budget, CapExceeded, Stream};
use super::spawn::Spawned;
use super::{outcome, procs, Limits, OutputChunk};

/// How long the output pipes may stay open after the main process exited and its stragglers
/// were killed. Only an escaped process (one that left the process group without a uid of its
/// own to find it by) can hold them longer; its output is then dropped.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(2);

/// How long to wait for the killed main process to be reaped.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

/// What a running task needs besides its process.
#[derive(Debug)]
pub(crate) struct Job {
    pub(crate) uid: Option<u32>,
    pub(crate) limits: Limits,
    pub(crate) deadline: Duration,
    pub(crate) stdin: String,
}

/// How supervision ended.
#[derive(Debug)]
enum Ended {
    /// The main process exited by itself, at that instant.
    Exited(ExitStatus, Instant),
    OutputCap,
    TimedOut,
    Cancelled,
    WaitFailed(String),
}

/// Kills everything the task started.
async fn kill_all(pgid: Option<i32>, uid: Option<u32>) {
    if let Some(pgid) = pgid {
        procs::kill_group(pgid);
    }
    if let Some(uid) = uid {
        procs::kill_uid(uid).await;
    }
}

/// How a supervised task ended.
#[derive(Debug)]
pub(crate) struct Supervised {
    pub(crate) outcome: TaskOutcome,
    /// When the main process exited by itself (not killed): the end of the task's own run.
    pub(crate) exited: Option<Instant>,
}

/// Supervises `child` until it ends one way or another; see the module doc.
pub(crate) async fn supervise(
    mut child: Spawned,
    job: Job,
    out: Sender<OutputChunk>,
    cancel: CancellationToken,
) -> Supervised {
    // The child called setsid, so its pid is its process group.
    let pgid = i32::try_from(child.id()).ok();
    // Stdin is fed beside the watch, on this task; what is left of it is dropped (the pipe
    // closed) when the task ends. A task that exits without reading its input is not an error.
    let stdin = child.stdin.take();
    let data = job.stdin.clone();
    let feed = async move {
        if let Some(mut stdin) = stdin {
            if !data.is_empty() {
                let _ = stdin.write_all(data.as_bytes()).await;
            }
            let _ = stdin.shutdown().await;
            // Dropped here: the task reads the end of its input.
        }
        std::future::pending::<()>().await
    };
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let budget = Budget::new(job.limits.output_cap);

    let ended = tokio::select! {
        biased;
        _ = cancel.cancelled() => Ended::Cancelled,
        _ = tokio::time::sleep(job.deadline) => Ended::TimedOut,
        e = watch(&mut child, stdout, stderr, &out, &budget, pgid, job.uid) => e,
        () = feed => unreachable!("the feed never ends on its own"),
    };

    // `watch` already killed the stragglers of a task whose main process exited. Otherwise
    // the group goes first and the main process is reaped before the uid's processes are
    // swept: the sweep reaps the uid's other zombies, the worker's adopted children.
    let by_itself = matches!(ended, Ended::Exited(..));
    if !by_itself {
        kill_all(pgid, None).await;
    }
    if tokio::time::timeout(REAP_TIMEOUT, child.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            ?pgid,
            "the task's main process was not reaped after SIGKILL"
        );
    }
    if !by_itself {
        kill_all(None, job.uid).await;
    }

    let exited = match ended {
        Ended::Exited(_, at) => Some(at),
        _ => None,
    };
    let outcome = match ended {
        Ended::Exited(status, _) => outcome::from_status(status, &job.limits),
        Ended::OutputCap => TaskOutcome::LimitExceeded {
            limit: "output".into(),
            message: format!(
                "stdout and stderr together passed the cap of {} bytes; the task was killed",
                job.limits.output_cap
            ),
        },
        Ended::TimedOut => TaskOutcome::TimedOut {
            deadline_s: job.deadline.as_secs(),
        },
        Ended::Cancelled => TaskOutcome::Cancelled,
        Ended::WaitFailed(message) => TaskOutcome::Error {
            message: format!("lost track of the task's process: {message}"),
        },
    };
    Supervised { outcome, exited }
}

/// Streams the output until the main process has exited and its pipes are drained, or the
/// output cap is passed. Stragglers are killed as soon as the main process exits, so a
/// background process holding a pipe open cannot keep the task alive.
async fn watch(
    child: &mut Spawned,
    stdout: Option<pipe::Receiver>,
    stderr: Option<pipe::Receiver>,
    out: &Sender<OutputChunk>,
    budget: &Budget,
    pgid: Option<i32>,
    uid: Option<u32>,
) -> Ended {
    let pumps = async {
        let stdout = async {
            match stdout {
                Some(pipe) => pump(pipe, Stream::Stdout, out, budget).await,
                None => Ok(()),
            }
        };
        let stderr = async {
            match stderr {
                Some(pipe) => pump(pipe, Stream::Stderr, out, budget).await,
                None => Ok(()),
            }
        };
        tokio::try_join!(stdout, stderr).map(|_| ())
    };
    tokio::pin!(pumps);
    let status = tokio::select! {
        drained = &mut pumps => {
            if drained == Err(CapExceeded) {
                return Ended::OutputCap;
            }
            // Both pipes closed; the main process may still be running.
            let status = child.wait().await;
            let exited = Instant::now();
            kill_all(pgid, uid).await;
            (status, exited)
        }
        status = child.wait() => {
            let exited = Instant::now();
            kill_all(pgid, uid).await;
            match tokio::time::timeout(DRAIN_TIMEOUT, &mut pumps).await {
                Ok(Err(CapExceeded)) => return Ended::OutputCap,
                Ok(Ok(())) => {}
                Err(_) => tracing::warn!(?pgid, "task output still open after its processes were killed; dropping the rest"),
            }
            (status, exited)
        }
    };
    match status {
        (Ok(status), at) => Ended::Exited(status, at),
        (Err(e), _) => Ended::WaitFailed(e.to_string()),
    }
}
