//! The build farm's submitting side. A compile job is read like distcc reads it (`args`),
//! preprocessed here (`prepare`), looked up in the swarm-wide cache (`cache`, and before
//! preprocessing by its direct-mode manifest, `direct`), compiled on a worker with the
//! identical compiler (`remote`, through the task API, its source served from here by
//! `offers`) or, failing that, here (`segment`,
//! `local`), and linked here with one merged diagnostics report (`aggregate`). The ways in:
//! the compiler wrapper (`wrapper`, one `unit` each, handed to `vgas build`'s `helper`),
//! `vgas build` with a command, a compilation database (`compdb`) or a plan (`cli`).
//! `progress` is what the user sees. The master's plan runner (`vgas_master::farm`) uses the
//! same segments, cache and link.

pub mod aggregate;
pub mod args;
pub mod cache;
pub mod cli;
pub mod compdb;
pub mod context;
pub mod direct;
pub mod helper;
pub mod host_cache;
pub mod in_place;
pub mod local;
pub mod offers;
pub mod placement;
pub mod prepare;
pub mod progress;
pub mod remote;
pub mod segment;
pub mod unit;
pub mod wrapper;

pub use aggregate::aggregate_artifacts;
pub use segment::{compile_segment, dispatch_build_segments};
