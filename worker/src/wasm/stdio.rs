//! The module's stdout and stderr: WASI output streams that send text chunks into the task's
//! bounded output channel while the module runs (so `runner` forwards them as events), counted
//! against the task's output cap. A character split across two writes is carried over, not
//! mangled; invalid UTF-8 is replaced.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::mpsc::Sender;
use vgas_shared::limits::OUTPUT_CHUNK_BYTES;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError, StreamResult};

use super::guard::Guard;
use crate::sandbox::OutputChunk;

/// Which of the two streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Stdout,
    Stderr,
}

/// A `StdoutStream` for the WASI context: every stream it hands out writes into `tx`.
#[derive(Debug, Clone)]
pub(crate) struct ChunkOut {
    pub(crate) which: Which,
    pub(crate) tx: Sender<OutputChunk>,
    pub(crate) guard: Arc<Guard>,
}

impl IsTerminal for ChunkOut {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for ChunkOut {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(ChunkStream {
            out: self.clone(),
            pending: Vec::new(),
        })
    }

    /// Only WASI 0.3 asks for this, and the worker links preview 1 and 2 only; a stream that
    /// refuses every write is the honest answer should that change without this file.
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(Refuse)
    }
}

/// See [`ChunkOut::async_stream`].
#[derive(Debug)]
struct Refuse;

impl tokio::io::AsyncWrite for Refuse {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        _: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        std::task::Poll::Ready(Err(std::io::Error::other(
            "vgas streams wasm output through WASI preview 1 and 2 only",
        )))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        std::task::Poll::Ready(Ok(()))
    }
}

/// One open stream. The instance is single-threaded, so between `check_write` seeing room in
/// the channel and `write` using it nobody else takes that room.
struct ChunkStream {
    out: ChunkOut,
    /// The start of a UTF-8 character whose rest has not been written yet.
    pending: Vec<u8>,
}

impl ChunkStream {
    fn send(&self, text: String) {
        let chunk = match self.out.which {
            Which::Stdout => OutputChunk::Stdout(text),
            Which::Stderr => OutputChunk::Stderr(text),
        };
        // Room was checked in `check_write`; a closed receiver means nobody listens any more.
        let _ = self.out.tx.try_send(chunk);
    }
}

impl Drop for ChunkStream {
    fn drop(&mut self) {
        if !self.pending.is_empty() {
            let text = String::from_utf8_lossy(&self.pending).into_owned();
            self.send(text);
        }
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for ChunkStream {
    async fn ready(&mut self) {
        // Wait for room in the channel; the permit is given back at once.
        let _ = self.out.tx.reserve().await;
    }
}

impl OutputStream for ChunkStream {
    fn write(&mut self, bytes: Bytes) -> StreamResult<()> {
        let used = self
            .out
            .guard
            .output_used
            .fetch_add(bytes.len() as u64, Ordering::Relaxed)
            + bytes.len() as u64;
        if used > self.out.guard.output_cap {
            self.out.guard.hit(super::guard::Stop::Output);
            return Err(StreamError::trap("output cap exceeded"));
        }
        self.pending.extend_from_slice(&bytes);
        let valid = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            // An incomplete character at the end waits for the next write.
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        if valid > 0 {
            let rest = self.pending.split_off(valid);
            let head = std::mem::replace(&mut self.pending, rest);
            self.send(String::from_utf8_lossy(&head).into_owned());
        }
        Ok(())
    }

    fn flush(&mut self) -> StreamResult<()> {
        Ok(())
    }

    fn check_write(&mut self) -> StreamResult<usize> {
        if self.out.tx.is_closed() {
            // Nobody listens: accept and drop, so the module is never stuck on its output.
            return Ok(OUTPUT_CHUNK_BYTES);
        }
        Ok(if self.out.tx.capacity() > 0 {
            OUTPUT_CHUNK_BYTES
        } else {
            0
        })
    }
}
