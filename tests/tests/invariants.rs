//! The invariants `ARCHITECTURE.md` promises, kept by reading the source: a subject name is
//! built only in `shared::subjects`; `vgas-shared` never spawns a process, opens a socket or
//! starts a runtime (except its `mdns` module); no async task escapes its owner's tracker (no
//! bare `tokio::spawn` in the product crates); and a type that crosses NATS is declared in
//! `vgas-shared`, so every serde type elsewhere is on a list that says why it is local.
//!
//! Test code (`#[cfg(test)]` modules, `*tests*.rs` files) is not scanned: tests speak the
//! documented subjects literally on purpose, as a plain NATS client would.

use std::path::{Path, PathBuf};

/// The product crates' sources.
const CRATES: &[&str] = &["shared", "client", "master", "worker"];

/// Serde types declared outside `vgas-shared`, each with the reason it is not a wire type.
const LOCAL_SERDE_TYPES: &[(&str, &str, &str)] = &[
    (
        "client/src/farm/helper.rs",
        "UnitRequest",
        "a frame from the wrapper to its build's helper: one binary, one host",
    ),
    (
        "client/src/farm/unit.rs",
        "UnitResult",
        "the helper's answer to its wrapper: one binary, one host",
    ),
    (
        "client/src/farm/direct.rs",
        "Manifest",
        "a direct-mode manifest, written and read only by vgas-client",
    ),
    (
        "client/src/farm/compdb.rs",
        "Entry",
        "compile_commands.json, CMake's file format",
    ),
    (
        "master/src/keys/usage.rs",
        "DayCounters",
        "the master's own usage record, read only by the master",
    ),
    (
        "master/src/keys/audit.rs",
        "AuditEvent",
        "a line of the master's audit log file",
    ),
    (
        "master/src/keys/config.rs",
        "ProviderKind",
        "llm.toml, the master's config file",
    ),
    (
        "master/src/keys/config.rs",
        "Limits",
        "llm.toml, the master's config file",
    ),
    (
        "master/src/keys/config.rs",
        "ProviderConfig",
        "llm.toml, the master's config file",
    ),
    (
        "master/src/keys/config.rs",
        "Price",
        "llm.toml, the master's config file",
    ),
    (
        "master/src/keys/config.rs",
        "LlmConfig",
        "llm.toml, the master's config file",
    ),
    (
        "worker/src/agent/context.rs",
        "Memory",
        "an agent's memory, written and read only by workers",
    ),
];

fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the repository root")
        .to_path_buf()
}

/// Every non-test Rust source of the product crates: (path relative to the root, the lines
/// before the file's first `#[cfg(test)]`).
fn product_sources() -> Vec<(String, Vec<String>)> {
    let root = repo_root();
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = CRATES.iter().map(|c| root.join(c).join("src")).collect();
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir)
            .expect("read a source directory")
            .flatten()
        {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            let name = p.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if !name.ends_with(".rs") || name.contains("tests") {
                continue;
            }
            let text = std::fs::read_to_string(&p).expect("read a source file");
            let lines: Vec<String> = text
                .lines()
                .take_while(|l| l.trim() != "#[cfg(test)]")
                .map(str::to_owned)
                .collect();
            let rel = p.strip_prefix(&root).expect("under the root");
            out.push((rel.to_string_lossy().into_owned(), lines));
        }
    }
    assert!(out.len() > 50, "found only {} source files", out.len());
    out
}

/// The string literals of a line of code (a comment line has none).
fn literals(line: &str) -> Vec<String> {
    let code = line.trim_start();
    if code.starts_with("//") {
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut chars = code.chars().peekable();
    let mut prev = ' ';
    while let Some(c) = chars.next() {
        // A char literal such as '"' is not the start of a string.
        if c == '"' && prev != '\'' {
            let mut s = String::new();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(n) = chars.next() {
                            s.push(n);
                        }
                    }
                    '"' => break,
                    c => s.push(c),
                }
            }
            out.push(s);
            prev = '"';
            continue;
        }
        prev = c;
    }
    out
}

/// Whether a literal is (a template of) a NATS subject of ours or of JetStream's API.
fn is_subject(lit: &str) -> bool {
    const NATS_OWN: &[&str] = &["$JS.", "$KV.", "$O.", "$SRV.", "_INBOX."];
    const OURS: &[&str] = &[
        ".task.",
        ".worker.",
        ".heartbeat.",
        ".result.",
        ".build.",
        ".llm.",
    ];
    NATS_OWN.iter().any(|p| lit.contains(p))
        || ((lit.starts_with('{') || lit.starts_with("vgas."))
            && (OURS.iter().any(|t| lit.contains(t)) || lit.ends_with(".status")))
}

#[test]
fn subject_names_are_built_only_in_shared_subjects() {
    let mut found = Vec::new();
    for (path, lines) in product_sources() {
        if path.starts_with("shared/src/subjects") {
            continue;
        }
        for (n, line) in lines.iter().enumerate() {
            for lit in literals(line) {
                if is_subject(&lit) {
                    found.push(format!("{path}:{}: {lit:?}", n + 1));
                }
            }
        }
    }
    assert!(
        found.is_empty(),
        "subject names built outside shared::subjects:\n{}",
        found.join("\n")
    );
}

#[test]
fn the_subject_scanner_sees_what_it_must() {
    assert!(is_subject("{}.task.{id}.events"));
    assert!(is_subject("vgas.build.submit"));
    assert!(is_subject("$JS.API.STREAM.INFO.{stream}"));
    assert!(is_subject("{p}.status"));
    assert!(!is_subject("no answer on {subject} within {timeout:?}"));
    assert!(!is_subject("step:{}"));
    assert_eq!(
        literals(r#"let s = format!("{}.task.{id}", p); // "x.task.y""#),
        ["{}.task.{id}", "x.task.y"]
    );
    assert!(literals("// \"vgas.task.submit\"").is_empty());
}

#[test]
fn shared_never_spawns_a_process_opens_a_socket_or_starts_a_runtime() {
    const FORBIDDEN: &[&str] = &[
        "process::Command",
        "Command::new",
        "tokio::process",
        "TcpStream",
        "TcpListener",
        "UdpSocket",
        "UnixStream",
        "tokio::runtime",
        "tokio::spawn",
        "thread::spawn",
    ];
    let mut found = Vec::new();
    for (path, lines) in product_sources() {
        // The mDNS glue is the one exception, behind its feature.
        if !path.starts_with("shared/src") || path == "shared/src/mdns.rs" {
            continue;
        }
        for (n, line) in lines.iter().enumerate() {
            if line.trim_start().starts_with("//") {
                continue;
            }
            if let Some(f) = FORBIDDEN.iter().find(|f| line.contains(*f)) {
                found.push(format!("{path}:{}: {f}", n + 1));
            }
        }
    }
    assert!(found.is_empty(), "vgas-shared does:\n{}", found.join("\n"));
}

#[test]
fn every_async_task_is_spawned_on_a_tracker() {
    let mut found = Vec::new();
    for (path, lines) in product_sources() {
        for (n, line) in lines.iter().enumerate() {
            if !line.trim_start().starts_with("//") && line.contains("tokio::spawn(") {
                found.push(format!("{path}:{}", n + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "bare tokio::spawn (use the owner's TaskTracker, or run it in line):\n{}",
        found.join("\n")
    );
}

#[test]
fn types_on_the_wire_are_declared_in_shared() {
    let mut found = Vec::new();
    for (path, lines) in product_sources() {
        if path.starts_with("shared/") {
            continue;
        }
        for (i, line) in lines.iter().enumerate() {
            let derives_serde = line.contains("#[derive(")
                && (line.contains("Serialize") || line.contains("Deserialize"));
            if !derives_serde {
                continue;
            }
            let name = lines[i + 1..]
                .iter()
                .take(8)
                .find_map(|l| {
                    let mut words = l.split_whitespace();
                    words
                        .find(|w| *w == "struct" || *w == "enum")
                        .and(words.next())
                })
                .map(|w| {
                    w.trim_end_matches(|c: char| !c.is_alphanumeric() && c != '_')
                        .split('<')
                        .next()
                        .unwrap_or(w)
                        .to_owned()
                })
                .unwrap_or_default();
            let allowed = LOCAL_SERDE_TYPES
                .iter()
                .any(|(p, t, _)| *p == path && *t == name);
            if !allowed {
                found.push(format!("{path}:{}: {name}", i + 1));
            }
        }
    }
    assert!(
        found.is_empty(),
        "serde types outside vgas-shared (move them to shared::wire, or list them in \
         LOCAL_SERDE_TYPES with the reason they never cross NATS):\n{}",
        found.join("\n")
    );
}
