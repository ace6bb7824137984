//! Local headers for an agent's build. The build farm compiles each plan source on its own
//! with system headers only, so before a workspace source goes into a `BuildPlan` its
//! `#include "..."` of workspace files are inlined, each between `#line` markers, so the
//! compiler's diagnostics still name the header and the line the model wrote. Include guards
//! work as written; a header with `#pragma once` is inlined once per source. A quoted include
//! the workspace does not have is left for the compiler (a system header, or its error).

use std::path::Path;

/// Nesting of local includes followed: deeper is a cycle or a mistake, and the compiler's
/// own limit is about 200.
pub const MAX_INCLUDE_DEPTH: usize = 32;

/// The text of workspace file `rel` with its local includes inlined. `read` gives a file's
/// text by workspace path (or why not); the error is for the model.
pub fn inline_local_includes(
    rel: &str,
    read: &dyn Fn(&str) -> Result<String, String>,
) -> Result<String, String> {
    let mut once = Vec::new();
    let mut out = String::new();
    inline(rel, read, 0, &mut once, &mut out)?;
    Ok(out)
}

fn inline(
    rel: &str,
    read: &dyn Fn(&str) -> Result<String, String>,
    depth: usize,
    once: &mut Vec<String>,
    out: &mut String,
) -> Result<(), String> {
    if depth > MAX_INCLUDE_DEPTH {
        return Err(format!(
            "{rel}: local includes nest deeper than {MAX_INCLUDE_DEPTH} (a cycle?)"
        ));
    }
    let text = read(rel)?;
    if text.lines().any(|l| l.trim() == "#pragma once") {
        if once.iter().any(|o| o == rel) {
            return Ok(());
        }
        once.push(rel.to_owned());
    }
    let dir = Path::new(rel).parent().unwrap_or(Path::new(""));
    for (n, line) in text.lines().enumerate() {
        let target = quoted_include(line).map(|name| dir.join(name));
        let local = target
            .as_ref()
            .and_then(|p| normalize(p))
            .filter(|p| read(p).is_ok());
        match local {
            Some(header) => {
                out.push_str(&format!("#line 1 \"{header}\"\n"));
                inline(&header, read, depth + 1, once, out)?;
                out.push_str(&format!("#line {} \"{rel}\"\n", n + 2));
            }
            None if line.trim() == "#pragma once" => out.push('\n'),
            None => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    Ok(())
}

/// `x.h` of a line `#include "x.h"` (spaces allowed around `#` and `include`).
fn quoted_include(line: &str) -> Option<&str> {
    let rest = line.trim_start().strip_prefix('#')?.trim_start();
    let rest = rest.strip_prefix("include")?.trim_start();
    let rest = rest.strip_prefix('"')?;
    let end = rest.find('"')?;
    Some(&rest[..end])
}

/// `p` as a plain relative path inside the workspace (`a/../b.h` is `b.h`), or `None` when
/// it would leave it.
fn normalize(p: &Path) -> Option<String> {
    let mut parts: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            std::path::Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            std::path::Component::CurDir => {}
            std::path::Component::ParentDir => {
                parts.pop()?;
            }
            _ => return None,
        }
    }
    (!parts.is_empty()).then(|| parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn files(list: &[(&str, &str)]) -> impl Fn(&str) -> Result<String, String> {
        let map: HashMap<String, String> = list
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        move |p: &str| map.get(p).cloned().ok_or_else(|| format!("no {p}"))
    }

    #[test]
    fn a_local_header_is_inlined_between_line_markers() {
        let read = files(&[
            ("main.c", "#include <stdio.h>\n#include \"util.h\"\nint main(void) { return twice(21) - 42; }\n"),
            ("util.h", "#pragma once\nstatic int twice(int x) { return 2 * x; }\n"),
        ]);
        let out = inline_local_includes("main.c", &read).unwrap();
        assert_eq!(
            out,
            "#include <stdio.h>\n#line 1 \"util.h\"\n\nstatic int twice(int x) { return 2 * x; }\n#line 3 \"main.c\"\nint main(void) { return twice(21) - 42; }\n"
        );
    }

    #[test]
    fn pragma_once_headers_go_in_once_and_cycles_and_escapes_are_handled() {
        let read = files(&[
            (
                "src/a.c",
                "#include \"../inc/b.h\"\n#include \"../inc/b.h\"\n#include \"missing.h\"\n",
            ),
            ("inc/b.h", "#pragma once\nint b;\n"),
            ("loop.h", "#include \"loop.h\"\n"),
            ("up.c", "#include \"../../etc/passwd\"\n"),
        ]);
        let out = inline_local_includes("src/a.c", &read).unwrap();
        assert_eq!(out.matches("int b;").count(), 1, "{out}");
        assert!(out.contains("#include \"missing.h\""), "{out}");
        let e = inline_local_includes("loop.h", &read).unwrap_err();
        assert!(e.contains("deeper than"), "{e}");
        let out = inline_local_includes("up.c", &read).unwrap();
        assert_eq!(out, "#include \"../../etc/passwd\"\n");
    }
}
