//! The helper inside `vgas build -- CMD`: a Unix socket in the build's private wrapper
//! directory, on which every compiler wrapper of the build hands over its unit. The helper
//! compiles it (`unit::compile_unit`) with the build's one NATS connection, cache handles,
//! compiler identities and file hashes, and answers with the exit code and diagnostics, which
//! the wrapper prints. A wrapper started outside `vgas build`, or whose helper cannot be
//! reached, does the same work itself (sccache's server, without a daemon outliving the
//! build).
//!
//! Frames are a 4-byte big-endian length and JSON, one request and one answer a connection.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use super::args::{classify, Invocation};
use super::context::BuildContext;
use super::direct::FileHashes;
use super::unit::{compile_unit, Identities, UnitEnv, UnitResult};

/// Where a wrapper finds the helper: set by `vgas build` for the commands it runs.
pub const ENV_HELPER_SOCKET: &str = "VGAS_BUILD_HELPER";

/// Largest frame either side reads (4 MiB): a request carries the wrapper's environment and
/// arguments, an answer the compiler's diagnostics.
const MAX_FRAME_BYTES: u32 = 4 * 1024 * 1024;

/// Units the helper works on at once; more wait for a permit (the build's own `-j` is the
/// usual bound; this one only keeps a runaway `-j` from opening unbounded work).
const MAX_CONCURRENT_UNITS: usize = 256;

/// One unit, as a wrapper hands it over.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRequest {
    pub invoked_as: String,
    /// The real compiler the wrapper resolved.
    pub compiler: PathBuf,
    pub cwd: PathBuf,
    pub args: Vec<String>,
    /// The wrapper's whole environment (what a Makefile exported reaches the compiler).
    pub env: Vec<(String, String)>,
}

async fn read_frame(s: &mut UnixStream) -> Result<Vec<u8>> {
    let len = s.read_u32().await.context("read a frame length")?;
    if len > MAX_FRAME_BYTES {
        bail!("frame of {len} bytes is over {MAX_FRAME_BYTES}");
    }
    let mut buf = vec![0; len as usize];
    s.read_exact(&mut buf).await.context("read a frame")?;
    Ok(buf)
}

async fn write_frame(s: &mut UnixStream, body: &[u8]) -> Result<()> {
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_FRAME_BYTES)
        .context("frame too large")?;
    s.write_u32(len).await?;
    s.write_all(body).await?;
    s.flush().await?;
    Ok(())
}

/// Hands a unit to the helper at `socket` and waits for its answer (blocking: the wrapper's
/// fast path runs no async runtime).
pub fn ask_blocking(socket: &Path, req: &UnitRequest) -> Result<UnitResult> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket)
        .with_context(|| format!("connect to the build helper at {}", socket.display()))?;
    let body = serde_json::to_vec(req)?;
    let len = u32::try_from(body.len())
        .ok()
        .filter(|n| *n <= MAX_FRAME_BYTES)
        .context("request too large")?;
    s.write_all(&len.to_be_bytes())?;
    s.write_all(&body)?;
    let mut len = [0u8; 4];
    s.read_exact(&mut len).context("read the answer's length")?;
    let len = u32::from_be_bytes(len);
    if len > MAX_FRAME_BYTES {
        bail!("answer of {len} bytes is over {MAX_FRAME_BYTES}");
    }
    let mut answer = vec![0; len as usize];
    s.read_exact(&mut answer).context("read the answer")?;
    serde_json::from_slice(&answer).context("the build helper's answer")
}

/// Serves units on a socket in `dir` until `stop`, on the build's tasks (`ctx.tasks`); returns
/// the socket's path.
pub fn start(dir: &Path, ctx: BuildContext, stop: CancellationToken) -> Result<PathBuf> {
    let path = dir.join("helper.sock");
    let listener =
        UnixListener::bind(&path).with_context(|| format!("listen on {}", path.display()))?;
    let tasks = ctx.tasks.clone();
    let shared = Arc::new((ctx, FileHashes::memoized(), Identities::default()));
    let permits = Arc::new(Semaphore::new(MAX_CONCURRENT_UNITS));
    let connections = tasks.clone();
    tasks.spawn(async move {
        loop {
            let (mut stream, _) = tokio::select! {
                _ = stop.cancelled() => break,
                a = listener.accept() => match a {
                    Ok(a) => a,
                    Err(e) => {
                        tracing::warn!("build helper: accept: {e}");
                        continue;
                    }
                },
            };
            let (shared, permits) = (shared.clone(), permits.clone());
            connections.spawn(async move {
                let Ok(_permit) = permits.acquire_owned().await else {
                    return;
                };
                let answer = match serve_one(&mut stream, &shared).await {
                    Ok(r) => r,
                    Err(e) => {
                        // The wrapper compiles the unit itself when it gets no answer.
                        tracing::debug!("build helper: {e:#}");
                        return;
                    }
                };
                if let Ok(body) = serde_json::to_vec(&answer) {
                    let _ = write_frame(&mut stream, &body).await;
                }
            });
        }
    });
    Ok(path)
}

async fn serve_one(
    stream: &mut UnixStream,
    shared: &(BuildContext, FileHashes, Identities),
) -> Result<UnitResult> {
    let req: UnitRequest =
        serde_json::from_slice(&read_frame(stream).await?).context("a unit request")?;
    let Invocation::Distribute(job) = classify(&req.args, req.invoked_as.ends_with("++")) else {
        bail!("not a unit to distribute");
    };
    let u = UnitEnv {
        ctx: &shared.0,
        hashes: &shared.1,
        identities: &shared.2,
    };
    compile_unit(
        &u,
        &req.invoked_as,
        &req.compiler,
        &req.cwd,
        &req.args,
        job,
        Some(Arc::new(req.env)),
    )
    .await
}
