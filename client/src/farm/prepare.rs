//! Turning one compile job into a segment on the submitting side: preprocess it here with
//! `-fdirectives-only` (so workers need no project headers, and macros stay for exact
//! diagnostics), compute its cache key, and pick the user's own files named by the line
//! markers so the worker can quote their lines in diagnostics as a local compile does.

use std::collections::BTreeSet;
use std::path::{Component, Path, PathBuf};
use std::process::Stdio;

use anyhow::{Context, Result};
use vgas_shared::farm::{cache_key, side_outputs_of, CompileSpec, CompilerIdentity, Source};
use vgas_shared::names::ModuleRef;

use super::args::CompileJob;
use super::context::{Segment, ShippedFile};
use super::local::{CompilerEnv, LocalCompile};

/// Largest preprocessed unit sent to the swarm (64 MiB); bigger ones compile here.
pub const MAX_PREPROCESSED: usize = 64 * 1024 * 1024;

/// Compressed source that rides inside the task (700 KiB); past it the source goes through
/// the sources bucket, so the task stays under the 1 MiB submit limit.
pub const MAX_INLINE_SOURCE: usize = 700 * 1024;

/// The user's files shipped for diagnostics, in all (200 KiB) and each (64 KiB, what a
/// worker accepts): enough for a unit's own source and headers; past it diagnostics lose only
/// their quoted lines.
const MAX_SHIPPED_FILES_BYTES: usize = 200 * 1024;
const MAX_SHIPPED_FILE_BYTES: u64 = vgas_shared::limits::MAX_SEGMENT_FILE_BYTES;

/// The directory under the task directory the worker's compiler runs in.
const WORKDIR_ROOT: &str = "src";

/// What preprocessing gave.
#[derive(Debug)]
pub enum Prepared {
    Segment(Box<Segment>, Vec<u8>),
    /// Preprocessing failed (a missing header...): a result, printed as is.
    Failed {
        exit_code: i32,
        stderr: String,
    },
}

/// Preprocesses `job` with `compiler` in `cwd`.
pub async fn prepare(
    job: &CompileJob,
    compiler: &Path,
    identity: &CompilerIdentity,
    cwd: &Path,
    local: LocalCompile,
    env: &CompilerEnv,
) -> Result<Prepared> {
    let out = super::local::local_command(compiler, env)
        .args(job.preprocess_args())
        .current_dir(cwd)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("preprocess {} with {}", job.source, compiler.display()))?;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    if !out.status.success() {
        return Ok(Prepared::Failed {
            exit_code: out.status.code().unwrap_or(1),
            stderr,
        });
    }
    let pp = out.stdout;
    let cwd_s = cwd.display().to_string();
    let source = ModuleRef::of(&pp);
    let key = cache_key(
        &identity.hash,
        job.language,
        &job.compile_args,
        &job.source,
        &cwd_s,
        &source,
    );
    let (workdir, files) = ship_user_files(&pp, cwd);
    let spec = CompileSpec {
        compiler: identity.hash.clone(),
        language: job.language,
        args: job.compile_args.clone(),
        source_name: job.source.clone(),
        source: Source::packed(&pp),
        preprocessed: true,
        cwd: cwd_s,
        workdir,
        side_outputs: side_outputs_of(&job.compile_args),
        // Named once the files are in the build sources bucket (`remote::ship_files`).
        files: Vec::new(),
    };
    let seg = Segment {
        name: job.source.clone(),
        spec,
        files,
        key,
        source,
        output: cwd.join(&job.output),
        local,
    };
    Ok(Prepared::Segment(Box::new(seg), pp))
}

/// Every file named by line markers (`# 12 "src/a.h" 1`), once each, in order of first
/// mention, with whether it is a system header (flag 3). Pseudo-files (`<built-in>`) and
/// names with escapes are left out.
pub fn line_marker_files(pp: &[u8]) -> Vec<(String, bool)> {
    let mut seen = BTreeSet::new();
    markers(pp)
        .filter(|(name, _)| seen.insert(*name))
        .map(|(name, system)| (name.to_owned(), system))
        .collect()
}

/// The file the preprocessed text's first line marker names: the unit's own source.
fn main_file(pp: &[u8]) -> Option<&str> {
    markers(pp).next().map(|(name, _)| name)
}

/// The lines that start with `# ` (the line markers, and whatever else does), in order,
/// found by a vectorised search for `\n# ` rather than line by line: a unit's text is hundreds
/// of kilobytes and its markers a few hundred lines (the line-by-line scan was a tenth of
/// `vgas build`'s CPU in a Lua build).
fn hash_lines(pp: &[u8]) -> impl Iterator<Item = &[u8]> {
    let first = pp.starts_with(b"# ").then_some(0);
    let rest = memchr::memmem::find_iter(pp, b"\n# ").map(|i| i + 1);
    first.into_iter().chain(rest).map(move |start| {
        let end = memchr::memchr(b'\n', &pp[start..]).map_or(pp.len(), |n| start + n);
        &pp[start..end]
    })
}

/// Each line marker's file and whether it is a system header, in order, repeats included.
fn markers(pp: &[u8]) -> impl Iterator<Item = (&str, bool)> {
    hash_lines(pp).filter_map(|line| {
        let rest = std::str::from_utf8(line.strip_prefix(b"# ")?).ok()?;
        let (num, rest) = rest.split_once(' ')?;
        if num.parse::<u64>().is_err() || !rest.starts_with('"') {
            return None;
        }
        let end = rest[1..].find('"')?;
        let name = &rest[1..1 + end];
        if name.starts_with('<') || name.contains('\\') {
            return None;
        }
        let system = rest[2 + end..].split_whitespace().any(|f| f == "3");
        Some((name, system))
    })
}

/// The user's files named by line markers: not system headers, given by relative path.
pub fn user_files(pp: &[u8]) -> BTreeSet<String> {
    line_marker_files(pp)
        .into_iter()
        .filter(|(name, system)| !system && !name.starts_with('/'))
        .map(|(name, _)| name)
        .collect()
}

/// Where a relative file sits under a workdir `depth` levels below [`WORKDIR_ROOT`], or
/// `None` if it climbs out.
fn placed(rel: &str, depth: usize) -> Option<String> {
    let mut parts: Vec<String> = std::iter::once(WORKDIR_ROOT.to_owned())
        .chain((0..depth).map(|_| "_".to_owned()))
        .collect();
    for c in Path::new(rel).components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str()?.to_owned()),
            Component::CurDir => {}
            Component::ParentDir if parts.len() > 1 => {
                parts.pop();
            }
            _ => return None,
        }
    }
    Some(parts.join("/"))
}

/// The workdir and the files to ship, within the size caps.
fn ship_user_files(pp: &[u8], cwd: &Path) -> (String, Vec<ShippedFile>) {
    let names = user_files(pp);
    let own = main_file(pp);
    let depth = names
        .iter()
        .map(|n| {
            Path::new(n)
                .components()
                .take_while(|c| matches!(c, Component::ParentDir | Component::CurDir))
                .filter(|c| matches!(c, Component::ParentDir))
                .count()
        })
        .max()
        .unwrap_or(0)
        .min(8);
    let workdir = placed(".", depth).unwrap_or_else(|| WORKDIR_ROOT.to_owned());
    let mut files = Vec::new();
    let mut total = 0;
    for n in names {
        let path: PathBuf = cwd.join(&n);
        let Ok(meta) = std::fs::metadata(&path) else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_SHIPPED_FILE_BYTES {
            continue;
        }
        let Some(at) = placed(&n, depth) else {
            continue;
        };
        let Ok(bytes) = std::fs::read(&path) else {
            continue;
        };
        total += bytes.len();
        if total > MAX_SHIPPED_FILES_BYTES || files.len() == vgas_shared::limits::MAX_INPUT_FILES {
            break;
        }
        files.push(ShippedFile {
            path: at,
            bytes: bytes.into(),
            own: own == Some(n.as_str()),
        });
    }
    (workdir, files)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_markers_name_user_files_only() {
        let pp = b"# 0 \"src/a.c\"\n# 0 \"<built-in>\"\n# 1 \"/usr/include/stdio.h\" 1 3 4\n\
                   int x;\n# 3 \"../inc/b.h\" 1\n# 4 \"src/a.c\" 2\n# 9 \"weird\\\\name.h\"\n";
        let names: Vec<String> = user_files(pp).into_iter().collect();
        assert_eq!(names, ["../inc/b.h", "src/a.c"]);
    }

    #[test]
    fn the_search_finds_the_lines_a_line_by_line_scan_finds() {
        let texts: [&[u8]; 5] = [
            b"# 1 \"a.c\"\nint x; # 2 \"no\"\n#define A 1\n# 3 \"b.h\" 1\r\n\n# 4 \"end.h\"",
            b"int y;\n# 5 \"c.h\"\n",
            b"",
            b"# ",
            b"\n\n# 1 \"x\"\n\n",
        ];
        for pp in texts {
            let by_line: Vec<&[u8]> = pp
                .split(|&b| b == b'\n')
                .filter(|l| l.starts_with(b"# "))
                .collect();
            assert_eq!(
                hash_lines(pp).collect::<Vec<_>>(),
                by_line,
                "{:?}",
                String::from_utf8_lossy(pp)
            );
        }
        let names: Vec<String> = line_marker_files(texts[0])
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["a.c", "b.h", "end.h"]);
    }

    #[test]
    fn files_are_placed_under_a_deep_enough_workdir() {
        assert_eq!(placed(".", 0).unwrap(), "src");
        assert_eq!(placed(".", 2).unwrap(), "src/_/_");
        assert_eq!(placed("a.c", 1).unwrap(), "src/_/a.c");
        assert_eq!(placed("../inc/b.h", 1).unwrap(), "src/inc/b.h");
        assert_eq!(placed("../../x.h", 1), None, "climbing out is refused");
        assert_eq!(placed("/etc/passwd", 3), None);
    }

    #[test]
    fn the_files_shipped_stay_within_what_a_segment_may_name() {
        let dir = tempfile::tempdir().unwrap();
        let mut pp = String::new();
        for i in 0..vgas_shared::limits::MAX_INPUT_FILES + 40 {
            std::fs::write(dir.path().join(format!("h{i}.h")), "int x;\n").unwrap();
            pp.push_str(&format!("# 1 \"h{i}.h\"\nint x;\n"));
        }
        let (_, files) = ship_user_files(pp.as_bytes(), dir.path());
        assert_eq!(files.len(), vgas_shared::limits::MAX_INPUT_FILES);
    }

    #[test]
    fn the_units_own_source_is_told_from_its_headers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("inc")).unwrap();
        std::fs::write(dir.path().join("main.c"), "#include \"inc/a.h\"\n").unwrap();
        std::fs::write(dir.path().join("inc/a.h"), "int a;\n").unwrap();
        // The header sorts first and is named again after the source's own marker.
        let pp = b"# 0 \"main.c\"\n# 0 \"<built-in>\"\n# 1 \"inc/a.h\" 1\nint a;\n\
                   # 2 \"main.c\" 2\n";
        let (_, files) = ship_user_files(pp, dir.path());
        let own: Vec<(&str, bool)> = files.iter().map(|f| (f.path.as_str(), f.own)).collect();
        assert_eq!(own, [("src/inc/a.h", false), ("src/main.c", true)]);
        assert_eq!(main_file(b"int x;\n"), None, "no marker, no own source");
    }
}
