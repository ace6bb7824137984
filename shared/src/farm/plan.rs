//! A whole build as one JSON document (`BuildPlan`, seed name) that any NATS client can
//! publish on `vgas.build.submit`, its validation, and the accept reply. The master links a
//! plan's objects on its own host, so the link flags it accepts are a short, safe list.

use serde::{Deserialize, Serialize};

use super::{is_forbidden_compile_arg, step, EnvSpec, Language, PlanStep, Source};
use crate::error::VgaError;
use crate::ids::TaskId;

/// One segment of a [`BuildPlan`].
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PlanSegment {
    /// The source's name, for diagnostics (`src/main.c`).
    pub name: String,
    pub source: Source,
    #[serde(default)]
    pub language: Language,
    /// Flags for this segment on top of the plan's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// How a plan's objects are linked.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkSpec {
    /// The binary's name (`app`).
    pub output: String,
    /// Flags after the objects (`-lm`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
}

/// A whole build as JSON any NATS client can publish on `vgas.build.submit` (seed:
/// `BuildPlan`). Sources are self-contained (system headers only) or preprocessed.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildPlan {
    /// Optional id chosen by the submitter, so it can subscribe to the updates before it
    /// submits (1 to 64 letters, digits, '-' or '_').
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_id: Option<String>,
    /// The compiler to use: a toolchain name with an optional version, or an exact identity.
    pub compiler: EnvSpec,
    /// Flags for every segment (`-O2`, `-Wall`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    pub segments: Vec<PlanSegment>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkSpec>,
    /// Wasm steps run before the segments; the sources they write are compiled too.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<PlanStep>,
    /// Whether the sources are `-fdirectives-only` preprocessed output (default false).
    #[serde(default)]
    pub preprocessed: bool,
}

/// Segments one plan may have.
pub const MAX_PLAN_SEGMENTS: usize = 10_000;

impl BuildPlan {
    pub fn validate(&self) -> Result<(), VgaError> {
        let bad = |m: String| Err(VgaError::InvalidTask(m));
        if let Some(id) = &self.build_id {
            TaskId::parse(id)?;
        }
        self.compiler.validate()?;
        if self.compiler.toolchain == "conda" || self.compiler.toolchain == "rustc" {
            return bad("a build plan compiles C or C++: use gcc, g++, clang or clang++".into());
        }
        let generated: usize = self.steps.iter().map(|s| s.sources.len()).sum();
        let total = self.segments.len() + generated;
        if total == 0 || total > MAX_PLAN_SEGMENTS {
            return bad(format!(
                "a plan has 1 to {MAX_PLAN_SEGMENTS} segments (its own and its steps' sources)"
            ));
        }
        let names: Vec<&str> = self.segments.iter().map(|s| s.name.as_str()).collect();
        step::validate_steps(&self.steps, &names)?;
        if self.preprocessed && generated > 0 {
            return bad(
                "steps write plain sources: a plan with steps cannot be \"preprocessed\"".into(),
            );
        }
        let mut names = std::collections::BTreeSet::new();
        for s in &self.segments {
            s.source.validate()?;
            if s.name.is_empty() || !names.insert(&s.name) {
                return bad(format!("segment name {:?} is empty or repeated", s.name));
            }
            for a in self.args.iter().chain(&s.args) {
                if is_forbidden_compile_arg(a) {
                    return bad(format!("segment {:?}: flag {a:?} is not allowed", s.name));
                }
            }
        }
        if let Some(l) = &self.link {
            if l.output.is_empty() || l.output.contains('/') || l.output.starts_with('.') {
                return bad("\"link.output\" must be a plain file name".into());
            }
            if let Some(a) = l.args.iter().find(|a| !is_allowed_link_arg(a)) {
                return bad(format!(
                    "\"link.args\" may hold -l<name>, -static, -pthread, -rdynamic and \
                     -Wl, with {} only, not {a:?}",
                    SAFE_LINKER_OPTIONS.join(" ")
                ));
            }
        }
        Ok(())
    }
}

/// Linker options a plan's link may pass with `-Wl,`: the master links on its own host, so
/// nothing that reads a file (scripts, `@file`, plugins, version scripts) or writes one (maps).
pub const SAFE_LINKER_OPTIONS: &[&str] = &[
    "--as-needed",
    "--no-as-needed",
    "--gc-sections",
    "--no-gc-sections",
    "-O1",
    "-O2",
    "-E",
    "--export-dynamic",
    "--build-id",
    "-s",
    "--strip-all",
    "-z",
    "now",
    "relro",
    "noexecstack",
];

/// Whether a plan's link may carry `a`.
fn is_allowed_link_arg(a: &str) -> bool {
    if let Some(lib) = a.strip_prefix("-l") {
        return !lib.is_empty()
            && lib
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '+' | '-' | '.'));
    }
    if let Some(opts) = a.strip_prefix("-Wl,") {
        return opts.split(',').all(|o| SAFE_LINKER_OPTIONS.contains(&o));
    }
    matches!(a, "-static" | "-pthread" | "-rdynamic")
}

/// The accept reply to `vgas.build.submit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildAccepted {
    pub build_id: String,
    /// The subject the build's [`BuildUpdate`]s are published on.
    pub updates: String,
}
