//! `vgas submit --batch FILE`: task specs, one JSON object per line (`-` reads stdin; empty
//! lines and lines starting with `#` are skipped), submitted in batches. Prints each accepted
//! task's id, one per line in the file's order, and each refusal with its line number on
//! stderr; does not wait for the tasks (`vgas watch ID` follows one).

use std::io::Read;
use std::path::Path;

use anyhow::{Context, Result};
use vgas_shared::wire::TaskSpec;
use vgas_shared::ErrorCode;

use super::submit::EXIT_BUSY;
use crate::api::Swarm;

/// Reads the specs of `path` with their line numbers; a line that is not a spec stops
/// everything before anything is submitted.
pub fn read_specs(path: &Path) -> Result<Vec<(usize, TaskSpec)>> {
    let mut text = String::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_string(&mut text)
            .context("read standard input")?;
    } else {
        text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    }
    let mut specs = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let spec: TaskSpec = serde_json::from_str(line)
            .with_context(|| format!("{} line {}: not a task spec", path.display(), i + 1))?;
        specs.push((i + 1, spec));
    }
    Ok(specs)
}

/// Submits the file's tasks; the exit code: 0 when every one was accepted, 75 when some were
/// refused only because the queue was full, 1 otherwise.
pub async fn run(swarm: &Swarm, path: &Path) -> Result<i32> {
    let specs = read_specs(path)?;
    let (lines, specs): (Vec<usize>, Vec<TaskSpec>) = specs.into_iter().unzip();
    let answers = swarm.submit_batch(specs).await?;
    let (mut busy, mut refused) = (0, 0);
    let mut out = String::new();
    for (line, answer) in lines.iter().zip(answers) {
        match answer {
            Ok(r) => {
                out.push_str(r.task_id.as_str());
                out.push_str(if r.duplicate { " duplicate\n" } else { "\n" });
            }
            Err(e) => {
                if e.code == ErrorCode::Busy {
                    busy += 1;
                } else {
                    refused += 1;
                }
                eprintln!("vgas: line {line}: {e}");
            }
        }
    }
    super::print_stdout(&out)?;
    Ok(match (refused, busy) {
        (0, 0) => 0,
        (0, _) => EXIT_BUSY,
        _ => 1,
    })
}
