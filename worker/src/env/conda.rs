//! Conda environments: created by `micromamba` (preferred: one static binary, a fast solver)
//! or `conda` from the spec's packages and channels, in `<root>/conda`, and reused while
//! `spec.json` says they were made for the same spec. Conda environments are not relocatable
//! (the prefix is written into their files), so they are made in place under the lock and
//! removed whole when a create fails.

use std::io::Read as _;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use vgas_shared::farm::EnvSpec;

use super::{find_executable, spec_matches, EnvError, EnvPath, EnvironmentManager};

/// The tools that make conda environments, in order of preference.
const TOOLS: &[&str] = &["micromamba", "conda"];

/// The channel used when a spec names none.
const DEFAULT_CHANNEL: &str = "conda-forge";

/// How long one create may take: solving and downloading a scientific stack over a slow link
/// takes minutes; past this the solver or the network is stuck, and whatever waits for the
/// environment is better told so than left hanging.
pub(super) const CREATE_TIMEOUT: Duration = Duration::from_secs(20 * 60);

/// How often a running create is checked for its end or its timeout.
const POLL_INTERVAL: Duration = Duration::from_millis(100);

/// How long the end of the tool's stderr is waited for once it exited.
const STDERR_GRACE: Duration = Duration::from_secs(2);

/// Bytes of the tool's stderr kept for the error: the solver's complaint is at the end, and
/// an error message must stay readable.
const STDERR_TAIL_BYTES: usize = 4096;

/// The directory of the environment inside its root.
const PREFIX_DIR: &str = "conda";

/// The first conda tool in `search`.
pub(super) fn find_tool(search: &[PathBuf]) -> Option<PathBuf> {
    TOOLS.iter().find_map(|t| find_executable(search, t))
}

/// Reuses the environment at `root` when it is complete and made for `spec`; else makes it.
pub(super) fn setup(
    mgr: &EnvironmentManager,
    tool: &Path,
    spec: &EnvSpec,
    root: &Path,
) -> Result<EnvPath, EnvError> {
    let prefix = root.join(PREFIX_DIR);
    let env = EnvPath {
        root: root.to_owned(),
        bin: prefix.join("bin"),
        identity: None,
    };
    if spec_matches(root, spec) && prefix.join("conda-meta").is_dir() {
        return Ok(env);
    }
    mgr.fresh_dir(root)?;
    let made = create(tool, spec, &prefix).map_err(|(status, stderr_tail)| EnvError::CondaFailed {
        tool: tool.display().to_string(),
        worker: mgr.worker.clone(),
        status,
        stderr_tail,
    });
    let made = made.and_then(|()| mgr.write_spec(root, spec));
    if made.is_err() {
        if let Err(e) = std::fs::remove_dir_all(root) {
            tracing::warn!(dir = %root.display(), "cannot remove a half-made environment: {e}");
        }
    }
    made.map(|()| env)
}

/// Runs `<tool> create -y -p <prefix> --override-channels -c <channel>... <packages>`, within
/// [`CREATE_TIMEOUT`]. The error is (how it ended, the tail of its stderr).
fn create(tool: &Path, spec: &EnvSpec, prefix: &Path) -> Result<(), (String, String)> {
    let channels: Vec<&str> = if spec.channels.is_empty() {
        vec![DEFAULT_CHANNEL]
    } else {
        spec.channels.iter().map(String::as_str).collect()
    };
    let mut cmd = Command::new(tool);
    cmd.arg("create")
        .arg("-y")
        .arg("-p")
        .arg(prefix)
        .arg("--override-channels");
    for c in channels {
        cmd.arg("-c").arg(c);
    }
    cmd.args(&spec.packages)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        // Its own group, so a timeout kills the helpers it started too.
        .process_group(0);
    let mut child = cmd
        .spawn()
        .map_err(|e| (format!("could not start: {e}"), String::new()))?;
    let (tail_tx, tail_rx) = std::sync::mpsc::sync_channel(1);
    if let Some(mut pipe) = child.stderr.take() {
        std::thread::spawn(move || {
            let mut tail: Vec<u8> = Vec::new();
            let mut buf = [0u8; 8192];
            while let Ok(n) = pipe.read(&mut buf) {
                if n == 0 {
                    break;
                }
                tail.extend_from_slice(&buf[..n]);
                if tail.len() > 2 * STDERR_TAIL_BYTES {
                    tail.drain(..tail.len() - STDERR_TAIL_BYTES);
                }
            }
            let _ = tail_tx.send(tail);
        });
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break Ok(status),
            Ok(None) if started.elapsed() >= CREATE_TIMEOUT => {
                if let Ok(pgid) = i32::try_from(child.id()) {
                    // SAFETY: kill has no memory effects; the group is the child's own.
                    unsafe { libc::kill(-pgid, libc::SIGKILL) };
                }
                let _ = child.wait();
                break Err(format!("timed out after {} s", CREATE_TIMEOUT.as_secs()));
            }
            Ok(None) => std::thread::sleep(POLL_INTERVAL),
            Err(e) => break Err(format!("lost track of it: {e}")),
        }
    };
    // A helper that left the process group may hold the pipe open: wait only so long for it.
    let tail = tail_rx
        .recv_timeout(STDERR_GRACE)
        .ok()
        .map(|t| {
            let t = &t[t.len().saturating_sub(STDERR_TAIL_BYTES)..];
            String::from_utf8_lossy(t).trim().to_owned()
        })
        .unwrap_or_default();
    match status {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err((s.to_string(), tail)),
        Err(how) => Err((how, tail)),
    }
}
