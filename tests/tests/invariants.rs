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
        "worker/src/gpu/helper.rs",
        "Plan",
        "a file the worker writes for its own cuda helper process in the task directory",
    ),
    (
        "worker/src/gpu/helper.rs",
        "Launch",
        "part of that plan file: worker to its own helper, one binary, one host",
    ),
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
        "client/src/farm/cache.rs",
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
        "master/src/dashboard/routes.rs",
        "TokenQuery",
        "a dashboard URL's query string, read by the master's HTTP routes",
    ),
    (
        "master/src/dashboard/routes.rs",
        "StreamQuery",
        "a dashboard URL's query string, read by the master's HTTP routes",
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
/// before the file's first `#[cfg(test)]`), read once for all the tests of this file.
fn product_sources() -> Vec<(String, Vec<String>)> {
    static SOURCES: std::sync::OnceLock<Vec<(String, Vec<String>)>> = std::sync::OnceLock::new();
    SOURCES.get_or_init(read_product_sources).clone()
}

fn read_product_sources() -> Vec<(String, Vec<String>)> {
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

/// A crate's module files: module path (`["farm", "segment"]`) to the file's lines before its
/// tests. `lib.rs` is the root; binaries and test files are not modules of the library.
fn modules_of(krate: &str) -> std::collections::BTreeMap<Vec<String>, (String, Vec<String>)> {
    let prefix = format!("{krate}/src/");
    product_sources()
        .into_iter()
        .filter_map(|(path, lines)| {
            let rel = path.strip_prefix(&prefix)?.strip_suffix(".rs")?.to_owned();
            if rel == "main" || rel.starts_with("bin/") {
                return None;
            }
            let mut module: Vec<String> = rel.split('/').map(str::to_owned).collect();
            if matches!(module.last().map(String::as_str), Some("lib" | "mod")) {
                module.pop();
            }
            Some((module, (path, lines)))
        })
        .collect()
}

/// The module paths a file names (`use super::{a, b::C}`, `crate::x::y(...)`), resolved
/// against `me`, before being matched to files.
fn named_paths(me: &[String], lines: &[String]) -> Vec<Vec<String>> {
    let text: String = lines
        .iter()
        .filter(|l| !l.trim_start().starts_with("//"))
        .map(|l| format!("{l}\n"))
        .collect();
    let mut out = Vec::new();
    let bytes = text.as_bytes();
    for start in ["crate::", "super::", "self::"] {
        let mut from = 0;
        while let Some(i) = text[from..].find(start).map(|i| i + from) {
            from = i + start.len();
            // Part of a longer name (`vgas_shared::...` is another crate).
            if i > 0
                && (bytes[i - 1].is_ascii_alphanumeric()
                    || bytes[i - 1] == b'_'
                    || bytes[i - 1] == b':')
            {
                continue;
            }
            let base: Vec<String> = match start {
                "crate::" => Vec::new(),
                "super::" => me[..me.len().saturating_sub(1)].to_vec(),
                _ => me.to_vec(),
            };
            let rest = &text[from..];
            let groups: Vec<String> = if let Some(inner) = rest.strip_prefix('{') {
                let end = inner.find('}').unwrap_or(inner.len());
                inner[..end]
                    .split(',')
                    .map(|s| s.trim().to_owned())
                    .collect()
            } else {
                let end = rest
                    .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                    .unwrap_or(rest.len());
                vec![rest[..end].to_owned()]
            };
            for g in groups {
                let mut p = base.clone();
                p.extend(
                    g.split("::")
                        .map(str::trim)
                        .take_while(|s| {
                            !s.is_empty() && s.chars().all(|c| c.is_alphanumeric() || c == '_')
                        })
                        .map(str::to_owned),
                );
                out.push(p);
            }
        }
    }
    out
}

#[test]
fn no_import_circles_between_files() {
    for krate in CRATES {
        let modules = modules_of(krate);
        let is_ancestor = |a: &[String], b: &[String]| b.len() > a.len() && b.starts_with(a);
        let mut edges: std::collections::BTreeMap<
            &Vec<String>,
            std::collections::BTreeSet<&Vec<String>>,
        > = Default::default();
        for (me, (_, lines)) in &modules {
            for path in named_paths(me, lines) {
                // The longest prefix of the path that is a module file.
                let target = (0..=path.len())
                    .rev()
                    .find_map(|n| modules.get_key_value(&path[..n]).map(|(k, _)| k));
                if let Some(t) = target {
                    if t != me && !is_ancestor(t, me) && !is_ancestor(me, t) {
                        edges.entry(me).or_default().insert(t);
                    }
                }
            }
        }
        // A circle is a file that reaches itself.
        let mut circles = Vec::new();
        for start in modules.keys() {
            let mut seen = std::collections::BTreeSet::new();
            let mut stack: Vec<&Vec<String>> =
                edges.get(start).into_iter().flatten().copied().collect();
            while let Some(m) = stack.pop() {
                if m == start {
                    circles.push(modules[start].0.clone());
                    break;
                }
                if seen.insert(m) {
                    stack.extend(edges.get(m).into_iter().flatten().copied());
                }
            }
        }
        assert!(
            circles.is_empty(),
            "{krate}: files that import themselves through others:\n{}",
            circles.join("\n")
        );
    }
}

#[test]
fn the_circle_finder_reads_paths_as_rust_does() {
    let me = vec!["farm".to_owned(), "segment".to_owned()];
    let lines = vec![
        "use super::{cache::BuildCache, context::Segment};".to_owned(),
        "let x = crate::api::Swarm::new(c, s);".to_owned(),
        "use vgas_shared::farm::x;".to_owned(),
        "// use super::ignored;".to_owned(),
    ];
    let got = named_paths(&me, &lines);
    assert!(
        got.contains(&vec!["farm".into(), "cache".into(), "BuildCache".into()]),
        "{got:?}"
    );
    assert!(
        got.contains(&vec!["farm".into(), "context".into(), "Segment".into()]),
        "{got:?}"
    );
    assert!(
        got.contains(&vec!["api".into(), "Swarm".into(), "new".into()]),
        "{got:?}"
    );
    assert!(
        !got.iter()
            .any(|p| p.iter().any(|s| s == "ignored" || s == "x")),
        "{got:?}"
    );
}
