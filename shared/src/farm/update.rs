//! A build's stream and results (seed names kept): `BuildUpdate`, one event of a build, on
//! `vgas.build.<id>.updates` and in `vgas build --json`; `Origin`, where a segment's object
//! came from; `BuildStats`, the summary's counts; `BuildOutput`, one compiled segment;
//! `TargetBinary`, the linked result.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::DiagnosticReport;
use crate::ids::{TaskId, WorkerId};

/// Where a segment's object came from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "from", rename_all = "snake_case")]
pub enum Origin {
    Worker { worker: WorkerId },
    Cache,
    Local { reason: String },
}

/// One event of a build (seed: `BuildUpdate`), on `vgas.build.<id>.updates` and in
/// `vgas build --json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum BuildUpdate {
    Started {
        build_id: String,
        segments: usize,
    },
    Queued {
        segment: String,
        task_id: TaskId,
    },
    Compiling {
        segment: String,
        worker: WorkerId,
        attempt: u32,
    },
    Retried {
        segment: String,
        attempt: u32,
        reason: String,
    },
    Cached {
        segment: String,
        saved_ms: u64,
        /// True when found by its direct-mode manifest, without preprocessing.
        #[serde(default)]
        direct: bool,
    },
    Done {
        segment: String,
        origin: Origin,
        compile_ms: u64,
        /// Submit to result, minus the compile itself (0 for cache hits and local compiles).
        overhead_ms: u64,
        /// What the compiler printed (warnings), cut at `MAX_UPDATE_DIAGNOSTICS`.
        #[serde(default, skip_serializing_if = "String::is_empty")]
        diagnostics: String,
    },
    Failed {
        segment: String,
        origin: Origin,
        exit_code: i32,
        #[serde(default, skip_serializing_if = "String::is_empty")]
        diagnostics: String,
    },
    /// A segment has waited past the slow-segment threshold: which worker it waits on.
    Waiting {
        segment: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        worker: Option<WorkerId>,
        waited_ms: u64,
    },
    Finished {
        exit_code: i32,
        stats: BuildStats,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        binary: Option<TargetBinary>,
        #[serde(default)]
        report: DiagnosticReport,
    },
}

/// Diagnostics text one update carries at most (64 KiB): the whole text goes to the user's
/// terminal anyway; the update only feeds the merged report.
pub const MAX_UPDATE_DIAGNOSTICS: usize = 64 * 1024;

/// Counts of a build, for the summary and `--stats`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct BuildStats {
    pub segments: u64,
    pub remote: u64,
    pub cache_hits: u64,
    /// Of the hits, those found without preprocessing (direct mode).
    pub direct_hits: u64,
    pub cache_misses: u64,
    pub local: u64,
    pub failed: u64,
    pub retried: u64,
    /// Compile time the cache hits did not spend.
    pub saved_ms: u64,
    pub wall_ms: u64,
    /// Segments compiled per worker (`local` for this host).
    pub per_worker: BTreeMap<String, u64>,
    /// Compiler calls the wrapper ran here without offering them to the swarm (links, and
    /// compiles with a flag it does not distribute); not among `segments`.
    pub not_distributed: u64,
    /// Why calls ran here, by reason, with their counts: the `not_distributed` ones and the
    /// segments compiled here (`local`) after the swarm could not.
    pub here_reasons: BTreeMap<String, u64>,
}

/// One compiled segment (seed: `BuildOutput`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuildOutput {
    pub segment: String,
    /// Where the object was written; `None` when the compile failed.
    pub object: Option<std::path::PathBuf>,
    pub exit_code: i32,
    /// What the compiler printed.
    pub diagnostics: String,
    pub origin: Origin,
}

/// The linked result (seed: `TargetBinary`).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct TargetBinary {
    pub path: String,
    pub size: u64,
    /// `sha256:<hex>` of the binary.
    pub sha256: String,
    /// Where a plan's binary was put in the artifacts bucket, for clients that cannot read
    /// the master's disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}
