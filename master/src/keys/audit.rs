//! The audit log: one JSON line per vault operation and per gateway call, appended to a file
//! of mode 0600 (`<state-dir>/audit.log`). A line holds the time, the operation, the provider,
//! the caller and the outcome; never a key (outcomes are error messages, which carry none,
//! and upstream text is scrubbed before it gets here).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

/// One line of the log.
#[derive(Debug, Serialize)]
pub struct AuditEvent<'a> {
    pub time_ms: u64,
    pub op: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub provider: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<&'a str>,
    pub caller: &'a str,
    /// `ok`, or `error: <message>`.
    pub outcome: String,
}

/// An append-only log file.
#[derive(Debug)]
pub struct AuditLog {
    path: PathBuf,
    /// One writer at a time so lines never interleave.
    file: Mutex<File>,
}

impl AuditLog {
    /// Opens (creating) the log for appending.
    pub fn open(path: &Path) -> std::io::Result<AuditLog> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(path)?;
        Ok(AuditLog {
            path: path.to_path_buf(),
            file: Mutex::new(file),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line; a failure is logged, never fatal (the operation already happened).
    pub fn record(&self, ev: &AuditEvent<'_>) {
        let mut line = match serde_json::to_vec(ev) {
            Ok(l) => l,
            Err(e) => {
                tracing::warn!("audit: could not encode an event: {e}");
                return;
            }
        };
        line.push(b'\n');
        let mut f = self.file.lock().unwrap_or_else(|p| p.into_inner());
        if let Err(e) = f.write_all(&line) {
            tracing::warn!(path = %self.path.display(), "audit: could not append: {e}");
        }
    }
}

/// Removes anything that looks like a key from text that came from outside (a provider's
/// error message may echo a masked key): the key itself, and any word starting `sk-`.
pub fn scrub(text: &str, key: Option<&str>) -> String {
    let mut out = match key {
        Some(k) if !k.is_empty() => text.replace(k, "<key>"),
        _ => text.to_owned(),
    };
    while let Some(at) = out.find("sk-") {
        let end = out[at..]
            .find(|c: char| c.is_whitespace() || c == '"' || c == '\'' || c == ',' || c == '.')
            .map_or(out.len(), |e| at + e);
        out.replace_range(at..end, "<redacted>");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn appends_json_lines_privately() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("audit.log");
        let log = AuditLog::open(&path).unwrap();
        for op in ["store", "llm.complete"] {
            log.record(&AuditEvent {
                time_ms: 1,
                op,
                provider: Some("openai"),
                model: None,
                caller: "cli",
                outcome: "ok".into(),
            });
        }
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1]["op"], "llm.complete");
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    #[test]
    fn scrubs_keys_from_upstream_text() {
        let msg = "Incorrect API key provided: sk-proj-****abcd. You can find your key, sk-live-1";
        let s = scrub(msg, Some("secret-raw"));
        assert!(!s.contains("sk-"), "{s}");
        assert!(s.contains("Incorrect API key provided: <redacted>."));
        assert_eq!(
            scrub("the key secret-raw leaked", Some("secret-raw")),
            "the key <key> leaked"
        );
    }
}
