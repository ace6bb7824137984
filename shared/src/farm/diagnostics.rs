//! The compiler diagnostics of a build: parsed from each segment's stderr
//! (`file:line:col: severity: message` and the lines that follow it) and merged into one
//! report, de-duplicated and ordered by file and line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// The merged diagnostics of a build.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct DiagnosticReport {
    pub errors: u64,
    pub warnings: u64,
    pub notes: u64,
    /// De-duplicated, ordered by file, line and column.
    pub items: Vec<Diagnostic>,
}

/// One compiler diagnostic line (`file:line:col: severity: message`) with what follows it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct Diagnostic {
    pub file: String,
    pub line: u64,
    pub column: u64,
    pub severity: String,
    pub message: String,
    /// The quoted source and caret lines and notes after it, as the compiler printed them.
    pub context: String,
    /// How many segments reported it (a header's warning repeats in every user).
    pub count: u64,
}

impl DiagnosticReport {
    /// Parses and merges the stderr of many segments: one item per distinct
    /// (file, line, column, severity, message), counted, ordered.
    pub fn merge<'a>(outputs: impl IntoIterator<Item = &'a str>) -> DiagnosticReport {
        let mut seen: BTreeMap<(String, u64, u64, String, String), Diagnostic> = BTreeMap::new();
        for text in outputs {
            for d in parse_diagnostics(text) {
                let k = (
                    d.file.clone(),
                    d.line,
                    d.column,
                    d.severity.clone(),
                    d.message.clone(),
                );
                seen.entry(k).or_insert(Diagnostic { count: 0, ..d }).count += 1;
            }
        }
        let mut r = DiagnosticReport::default();
        for d in seen.into_values() {
            match d.severity.as_str() {
                "error" | "fatal error" => r.errors += 1,
                "warning" => r.warnings += 1,
                _ => r.notes += 1,
            }
            r.items.push(d);
        }
        r
    }
}

/// The diagnostics in one compiler's stderr; lines that start no diagnostic (source quotes,
/// carets, "In file included from") are the context of the one before.
pub fn parse_diagnostics(text: &str) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    for line in text.lines() {
        match parse_diagnostic_line(line) {
            Some(d) => out.push(d),
            None => {
                if let Some(last) = out.last_mut() {
                    if line.starts_with(' ') {
                        last.context.push_str(line);
                        last.context.push('\n');
                    }
                }
            }
        }
    }
    out
}

fn parse_diagnostic_line(line: &str) -> Option<Diagnostic> {
    const SEVERITIES: &[&str] = &["fatal error", "error", "warning", "note"];
    let mut it = line.splitn(4, ':');
    let file = it.next()?;
    let line_no: u64 = it.next()?.trim().parse().ok()?;
    let third = it.next()?;
    let rest = it.next()?;
    let (column, rest) = match third.trim().parse::<u64>() {
        Ok(c) => (c, rest.to_owned()),
        Err(_) => (0, format!("{third}:{rest}")),
    };
    let rest = rest.trim_start();
    let severity = SEVERITIES.iter().find(|s| rest.starts_with(*s))?;
    let message = rest[severity.len()..]
        .trim_start_matches(':')
        .trim()
        .to_owned();
    Some(Diagnostic {
        file: file.to_owned(),
        line: line_no,
        column,
        severity: severity.to_string(),
        message,
        ..Default::default()
    })
}
