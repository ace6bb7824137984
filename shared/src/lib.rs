//! Everything two vgas processes must agree on: ids, subject names, the codec, the wire types,
//! named limits, configuration files, typed errors and the key vault's file format.
//!
//! This crate never opens a socket, spawns a process or starts a runtime (except `mdns`,
//! behind its feature), so it can be linked by every binary, test and benchmark without
//! dragging a runtime along. The key vault's file format is behind the `vault` feature, which
//! only the master enables: the `vgas` CLI and compiler wrapper never link it.

pub mod agent;
pub mod codec;
pub mod config;
pub mod crdt;
pub mod discovery;
pub mod error;
pub mod farm;
pub mod gpu;
pub mod holds;
pub mod host;
pub mod identity;
pub mod ids;
pub mod kb;
pub mod limits;
pub mod llm;
pub mod logging;
#[cfg(feature = "mdns")]
pub mod mdns;
pub mod names;
pub mod subjects;
#[cfg(feature = "vault")]
pub mod vault;
pub mod wire;

pub use codec::Encoding;
pub use error::{CodecError, ErrorCode, VgaError};
pub use ids::{BuildId, TaskId, WorkerId};
pub use subjects::Subjects;

/// Milliseconds since the Unix epoch, the one clock every wire type uses.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
