//! Everything two vgas processes must agree on: ids, subject names, the codec, the wire types,
//! named limits, configuration files, typed errors and the key vault's file format.
//!
//! This crate never opens a socket, so it can be linked by every binary, test and benchmark
//! without dragging a runtime along; the one process it runs is a compiler's own version probe
//! (`toolchain`), which the submitting and the compiling side must compute alike.

pub mod agent;
pub mod build;
pub mod codec;
pub mod config;
pub mod discovery;
pub mod error;
pub mod ids;
pub mod kb;
pub mod limits;
pub mod llm;
pub mod logging;
#[cfg(feature = "mdns")]
pub mod mdns;
pub mod subjects;
pub mod toolchain;
pub mod vault;
pub mod wire;

pub use codec::Encoding;
pub use error::{CodecError, ErrorCode, VgaError};
pub use ids::{TaskId, WorkerId};
pub use subjects::Subjects;

/// Milliseconds since the Unix epoch, the one clock every wire type uses.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
