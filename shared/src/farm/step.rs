//! Wasm build steps in a `BuildPlan`: a WASI module (a code generator, a lexer generator, a
//! whole compiler shipped once) run on a worker's wasmtime sandbox before the plan's compile
//! segments. Steps run in order; each sees its own `files` plus every file the steps before
//! it wrote, and the files it names in `sources` become compile segments of the plan.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::VgaError;
use crate::wire::{check_module_ref, InputFile};

/// Steps one plan may have (64: generators chain a handful at most).
pub const MAX_PLAN_STEPS: usize = 64;

/// Default wall-clock deadline of one step (120 s).
pub const DEFAULT_STEP_DEADLINE_S: u64 = 120;

/// One wasm step of a plan.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanStep {
    /// The step's name, for updates and errors (`gen`).
    pub name: String,
    /// The module, `sha256:<hex>` of its bytes, in the modules Object Store bucket.
    pub module: String,
    /// The module's argv.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Input files of this step (on top of what the earlier steps wrote).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<InputFile>,
    /// Files this step writes that the plan compiles (C by `.c`, C++ by `.cc`/`.cpp`/`.cxx`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sources: Vec<String>,
    /// Seconds the step may run (default [`DEFAULT_STEP_DEADLINE_S`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deadline_s: Option<u64>,
}

/// Whether `path` is relative, without `..`, and plain enough to be a file in a task
/// directory.
fn plain_relative(path: &str) -> bool {
    !path.is_empty()
        && !path.starts_with('/')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..")
}

/// The language of a step's source by its extension.
pub fn source_language(path: &str) -> Option<super::Language> {
    match path.rsplit_once('.').map(|(_, e)| e) {
        Some("c") => Some(super::Language::C),
        Some("cc" | "cpp" | "cxx") => Some(super::Language::Cxx),
        _ => None,
    }
}

/// Checks a plan's steps; `segment_names` are the plan's own segments.
pub fn validate_steps(steps: &[PlanStep], segment_names: &[&str]) -> Result<(), VgaError> {
    let bad = |m: String| Err(VgaError::InvalidTask(m));
    if steps.len() > MAX_PLAN_STEPS {
        return bad(format!("a plan has at most {MAX_PLAN_STEPS} steps"));
    }
    let mut names = std::collections::BTreeSet::new();
    let mut sources: std::collections::BTreeSet<&str> = segment_names.iter().copied().collect();
    for s in steps {
        if s.name.is_empty() || !names.insert(&s.name) {
            return bad(format!("step name {:?} is empty or repeated", s.name));
        }
        check_module_ref(&s.module)?;
        if s.files.len() > crate::limits::MAX_INPUT_FILES {
            return bad(format!("step {:?}: too many files", s.name));
        }
        for f in &s.files {
            if !plain_relative(&f.path) {
                return bad(format!(
                    "step {:?}: file path {:?} must be relative, without ..",
                    s.name, f.path
                ));
            }
            f.contents()?;
        }
        for src in &s.sources {
            if !plain_relative(src) || source_language(src).is_none() {
                return bad(format!(
                    "step {:?}: source {src:?} must be a relative .c, .cc, .cpp or .cxx path",
                    s.name
                ));
            }
            if !sources.insert(src) {
                return bad(format!("source {src:?} is named twice in the plan"));
            }
        }
        if s.deadline_s == Some(0) {
            return bad(format!("step {:?}: deadline_s must be at least 1", s.name));
        }
    }
    Ok(())
}
