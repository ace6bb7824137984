//! The end of a build (seed: `aggregate_artifacts`): link the objects here into the target,
//! merge every segment's diagnostics into one report, and describe the binary by path, size
//! and hash.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};
use vgas_shared::farm::{BuildOutput, DiagnosticReport, TargetBinary};

use super::local::run_captured;

/// How the objects are linked: a linker command (`cc -O2`) to which the objects, the extra
/// arguments (`-lm`) and `-o output` are added, run in `cwd`.
#[derive(Debug, Clone)]
pub struct LinkStep {
    pub program: PathBuf,
    pub args: Vec<String>,
    pub after: Vec<String>,
    pub output: PathBuf,
    pub cwd: PathBuf,
}

/// What a build ends with.
#[derive(Debug, Clone)]
pub struct Aggregate {
    pub binary: Option<TargetBinary>,
    pub report: DiagnosticReport,
    /// 0 when every segment compiled and the link succeeded.
    pub exit_code: i32,
    /// What the linker printed.
    pub link_stderr: String,
}

/// Describes the file at `path`.
pub fn describe(path: &Path) -> Result<TargetBinary> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(TargetBinary {
        path: path.display().to_string(),
        size: bytes.len() as u64,
        sha256: format!("sha256:{}", hex::encode(Sha256::digest(&bytes))),
        object: None,
    })
}

/// Links `outputs` with `link` (if every segment compiled) and merges their diagnostics.
pub async fn aggregate_artifacts(
    outputs: Vec<BuildOutput>,
    link: Option<&LinkStep>,
) -> Result<Aggregate> {
    let mut report = DiagnosticReport::merge(outputs.iter().map(|o| o.diagnostics.as_str()));
    let failed: Vec<&BuildOutput> = outputs.iter().filter(|o| o.exit_code != 0).collect();
    if let Some(first) = failed.first() {
        return Ok(Aggregate {
            binary: None,
            report,
            exit_code: first.exit_code,
            link_stderr: String::new(),
        });
    }
    let Some(link) = link else {
        return Ok(Aggregate {
            binary: None,
            report,
            exit_code: 0,
            link_stderr: String::new(),
        });
    };
    let mut args = link.args.clone();
    for o in &outputs {
        match &o.object {
            Some(p) => args.push(p.display().to_string()),
            None => bail!("segment {} has no object", o.segment),
        }
    }
    args.extend(link.after.iter().cloned());
    args.extend(["-o".into(), link.output.display().to_string()]);
    let r = run_captured(&link.program, &args, &link.cwd, &None).await?;
    let link_report = DiagnosticReport::merge([r.stderr.as_str()]);
    report.errors += link_report.errors;
    report.warnings += link_report.warnings;
    report.notes += link_report.notes;
    report.items.extend(link_report.items);
    if r.exit_code != 0 {
        return Ok(Aggregate {
            binary: None,
            report,
            exit_code: r.exit_code,
            link_stderr: r.stderr,
        });
    }
    let path = link.cwd.join(&link.output);
    Ok(Aggregate {
        binary: Some(describe(&path)?),
        report,
        exit_code: 0,
        link_stderr: r.stderr,
    })
}
