//! Everything that runs on the submitter's machine: the `vgas` CLI (`cli`), the build
//! farm's submitting side (`farm`: the compiler wrapper, `vgas build`, preprocessing, the
//! swarm-wide cache, segments), the rustc wrapper (`rustc`, cargo's `RUSTC_WRAPPER`) and the
//! one task API every caller uses (`api`), which the
//! master's plan runner and the worker's agent tools use too.
//!
//! This crate never links the master's gateway or key vault: the compiler wrapper, which a
//! build starts once per compiler call, stays small. `vgas vault` is the master's own command
//! (`vgas-master vault`), which `vgas` hands the call to.

pub mod agents;
pub mod api;
pub mod cli;
pub mod cluster;
pub mod connect;
pub mod farm;
pub mod files;
pub mod http;
pub mod init;
pub mod nodes;
pub mod rustc;
pub mod tls;
pub mod toolchain;

pub use api::Swarm;

/// Tracing for the user CLI: quiet by default (`warn`), `RUST_LOG` to see more.
pub fn init_tracing_quiet() {
    vgas_shared::logging::init("warn");
}
