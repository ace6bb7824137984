//! Reading a `rustc` command line the way sccache does: whether the call compiles one crate
//! into files the cache can keep and restore byte for byte, and if not, why. A call the
//! cache cannot take runs unchanged (the reason is counted in the build's summary).

use std::path::{Path, PathBuf};

/// What `--emit` may ask for in a call the cache takes: each kind's file name follows from the
/// crate's name and `-C extra-filename` (`link`'s from `--print=file-names`).
const CACHEABLE_EMITS: &[&str] = &["link", "metadata", "dep-info", "obj"];

/// Crate types whose outputs the cache keeps: rlibs, and linked outputs whose only inputs are
/// in the key (sources, externs, native static libraries, the linker's identity). A
/// proc-macro is loaded into the compiler of every crate that uses it; it is not kept.
const CACHEABLE_CRATE_TYPES: &[&str] = &["lib", "rlib", "bin", "staticlib", "dylib", "cdylib"];

/// One `rustc` call the cache can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrateCall {
    /// Every argument as given, in order (the key covers them all).
    pub args: Vec<String>,
    pub crate_name: String,
    /// `-C extra-filename`, or empty.
    pub extra_filename: String,
    pub crate_types: Vec<String>,
    pub emits: Vec<String>,
    pub out_dir: PathBuf,
    /// The root source file.
    pub input: PathBuf,
    /// `--extern NAME=PATH`: the files whose content the key covers.
    pub externs: Vec<(String, PathBuf)>,
    /// `-L` search directories (any kind), where `-l` libraries are found.
    pub search_dirs: Vec<PathBuf>,
    /// `-l` library names.
    pub libs: Vec<String>,
    /// `-C linker`, if given.
    pub linker: Option<String>,
}

impl CrateCall {
    /// Whether this call links (a binary or a library other than an rlib).
    pub fn links(&self) -> bool {
        self.emits.iter().any(|e| e == "link")
            && self
                .crate_types
                .iter()
                .any(|t| !matches!(t.as_str(), "lib" | "rlib"))
    }

    /// A short name for summaries: the crate and its extra filename.
    pub fn unit_name(&self) -> String {
        format!("{}{}", self.crate_name, self.extra_filename)
    }

    /// The files the emit kinds other than `link` write, relative to `out_dir`.
    pub fn side_outputs(&self) -> Vec<String> {
        let stem = self.unit_name();
        self.emits
            .iter()
            .filter_map(|e| match e.as_str() {
                "metadata" => Some(format!("lib{stem}.rmeta")),
                "dep-info" => Some(format!("{stem}.d")),
                "obj" => Some(format!("{stem}.o")),
                _ => None,
            })
            .collect()
    }
}

/// How a `rustc` command line reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RustcArgs {
    /// One crate compiled into files the cache can keep.
    Crate(Box<CrateCall>),
    /// Cargo asking the compiler about itself (`-vV`, `--print`, a crate from stdin): runs
    /// as is, not counted.
    Probe,
    /// A compile the cache does not take (a proc-macro, incremental...): runs as is, for the
    /// reason given.
    Uncacheable(String),
}

/// Whether the call only asks the compiler about itself.
fn is_probe(args: &[String]) -> bool {
    args.iter().any(|a| {
        a == "-"
            || a.starts_with("--print")
            || matches!(
                a.as_str(),
                "-V" | "-vV" | "--version" | "-h" | "--help" | "-vh" | "--explain"
            )
    })
}

/// Splits `--flag=value` and `--flag value` alike; `-Cx=y` and `-C x=y` alike.
fn take_value<'a>(
    arg: &'a str,
    it: &mut std::slice::Iter<'a, String>,
    long: &str,
    short: Option<&str>,
) -> Option<Result<&'a str, String>> {
    let forms = [Some(long), short];
    for f in forms.into_iter().flatten() {
        if arg == f {
            return Some(
                it.next()
                    .map(String::as_str)
                    .ok_or(format!("{f} without a value")),
            );
        }
        if let Some(v) = arg.strip_prefix(f) {
            if f.starts_with("--") {
                if let Some(v) = v.strip_prefix('=') {
                    return Some(Ok(v));
                }
            } else if !v.is_empty() {
                return Some(Ok(v));
            }
        }
    }
    None
}

/// Reads `args` (without the compiler itself).
pub fn parse(args: &[String]) -> RustcArgs {
    if is_probe(args) {
        return RustcArgs::Probe;
    }
    match parse_crate(args) {
        Ok(c) => RustcArgs::Crate(Box::new(c)),
        Err(why) => RustcArgs::Uncacheable(why),
    }
}

fn parse_crate(args: &[String]) -> Result<CrateCall, String> {
    let mut crate_name = None;
    let mut extra_filename = String::new();
    let mut crate_types = Vec::new();
    let mut emits = Vec::new();
    let mut out_dir = None;
    let mut inputs = Vec::new();
    let mut externs = Vec::new();
    let mut search_dirs = Vec::new();
    let mut libs = Vec::new();
    let mut linker = None;
    let mut it = args.iter();
    while let Some(arg) = it.next() {
        let a = arg.as_str();
        if a.starts_with('@') {
            return Err("arguments from a file (@file)".into());
        }
        if a == "-o" || (a.starts_with("-o") && !a.starts_with("--")) {
            return Err("-o (only --out-dir is cached)".into());
        }
        if let Some(v) = take_value(a, &mut it, "--crate-name", None) {
            crate_name = Some(v?.to_owned());
        } else if let Some(v) = take_value(a, &mut it, "--crate-type", None) {
            crate_types.extend(v?.split(',').map(str::to_owned));
        } else if let Some(v) = take_value(a, &mut it, "--emit", None) {
            for e in v?.split(',') {
                if e.contains('=') {
                    return Err(format!("--emit with a path ({e})"));
                }
                emits.push(e.to_owned());
            }
        } else if let Some(v) = take_value(a, &mut it, "--out-dir", None) {
            out_dir = Some(PathBuf::from(v?));
        } else if let Some(v) = take_value(a, &mut it, "--extern", None) {
            let v = v?;
            // `--extern name` alone names a crate found in the search path: nothing to hash
            // by path, but its search directory is in the arguments.
            if let Some((name, path)) = v.split_once('=') {
                let name = name.rsplit(':').next().unwrap_or(name);
                externs.push((name.to_owned(), PathBuf::from(path)));
            }
        } else if let Some(v) = take_value(a, &mut it, "--codegen", Some("-C")) {
            let v = v?;
            let (opt, val) = v.split_once('=').unwrap_or((v, ""));
            match opt.replace('_', "-").as_str() {
                "incremental" => return Err("incremental compilation".into()),
                "target-cpu" if val == "native" => return Err("-C target-cpu=native".into()),
                "split-debuginfo" if val != "off" => {
                    return Err(format!("-C split-debuginfo={val}"))
                }
                "save-temps" => return Err("-C save-temps".into()),
                "extra-filename" => extra_filename = val.to_owned(),
                "linker" => linker = Some(val.to_owned()),
                "profile-generate" | "profile-use" => return Err(format!("-C {opt}")),
                _ => {}
            }
        } else if let Some(v) = take_value(a, &mut it, "-L", None) {
            let v = v?;
            let dir = v.split_once('=').map_or(v, |(_, d)| d);
            search_dirs.push(PathBuf::from(dir));
        } else if let Some(v) = take_value(a, &mut it, "-l", None) {
            let v = v?;
            let name = v.rsplit_once('=').map_or(v, |(_, n)| n);
            let name = name.split_once(':').map_or(name, |(n, _)| n);
            libs.push(name.to_owned());
        } else if let Some(v) = take_value(a, &mut it, "-Z", None) {
            // Unstable options that write or read outside what the key covers.
            let v = v?;
            if v.starts_with("profile") || v.starts_with("self-profile") {
                return Err(format!("-Z {v}"));
            }
        } else if matches!(
            a,
            "--cfg"
                | "--check-cfg"
                | "--edition"
                | "--error-format"
                | "--json"
                | "--target"
                | "--cap-lints"
                | "-A"
                | "-W"
                | "-D"
                | "-F"
                | "--force-warn"
                | "--remap-path-prefix"
                | "--diagnostic-width"
                | "--color"
                | "--sysroot"
        ) {
            // Flags that take their value as the next argument.
            it.next();
        } else if !a.starts_with('-') {
            inputs.push(PathBuf::from(a));
        }
    }
    let crate_name = crate_name.ok_or("no --crate-name")?;
    let out_dir = out_dir.ok_or("no --out-dir")?;
    let input = match inputs.as_slice() {
        [one] => one.clone(),
        [] => return Err("no source file".into()),
        _ => return Err("more than one source file".into()),
    };
    if crate_types.is_empty() {
        // rustc's default is an executable unless the source says otherwise.
        return Err("no --crate-type".into());
    }
    if let Some(t) = crate_types
        .iter()
        .find(|t| !CACHEABLE_CRATE_TYPES.contains(&t.as_str()))
    {
        return Err(format!("{t} crate"));
    }
    if emits.is_empty() {
        emits.push("link".into());
    }
    if let Some(e) = emits
        .iter()
        .find(|e| !CACHEABLE_EMITS.contains(&e.as_str()))
    {
        return Err(format!("--emit={e}"));
    }
    Ok(CrateCall {
        args: args.to_vec(),
        crate_name,
        extra_filename,
        crate_types,
        emits,
        out_dir,
        input,
        externs,
        search_dirs,
        libs,
        linker,
    })
}

/// `path` against `cwd` when relative.
pub fn resolve(cwd: &Path, path: &Path) -> PathBuf {
    if path.is_absolute() {
        path.to_owned()
    } else {
        cwd.join(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn reads_a_cargo_library_call() {
        let args = v(
            "--crate-name beta --edition=2021 src/lib.rs --error-format=json \
             --json=diagnostic-rendered-ansi,artifacts,future-incompat \
             --crate-type lib --emit=dep-info,metadata,link -C opt-level=3 \
             -C metadata=ab12 -C extra-filename=-ab12 --out-dir /t/release/deps \
             -L dependency=/t/release/deps --extern alpha=/t/release/deps/libalpha-99.rmeta \
             -L native=/t/out -l static=zstd --cfg feature=\"x\"",
        );
        let RustcArgs::Crate(c) = parse(&args) else {
            panic!("not cacheable: {:?}", parse(&args))
        };
        assert_eq!(c.crate_name, "beta");
        assert_eq!(c.extra_filename, "-ab12");
        assert_eq!(c.crate_types, ["lib"]);
        assert_eq!(c.emits, ["dep-info", "metadata", "link"]);
        assert_eq!(c.out_dir, PathBuf::from("/t/release/deps"));
        assert_eq!(c.input, PathBuf::from("src/lib.rs"));
        assert_eq!(
            c.externs,
            [(
                "alpha".to_owned(),
                PathBuf::from("/t/release/deps/libalpha-99.rmeta")
            )]
        );
        assert_eq!(c.libs, ["zstd"]);
        assert_eq!(
            c.search_dirs,
            [PathBuf::from("/t/release/deps"), PathBuf::from("/t/out")]
        );
        assert!(!c.links());
        assert_eq!(
            c.side_outputs(),
            ["beta-ab12.d", "libbeta-ab12.rmeta"].map(str::to_owned)
        );
    }

    #[test]
    fn a_binary_links() {
        let args = v(
            "--crate-name app src/main.rs --crate-type bin --emit=dep-info,link \
             -C extra-filename=-1 --out-dir /t/deps -C linker=clang",
        );
        let RustcArgs::Crate(c) = parse(&args) else {
            panic!()
        };
        assert!(c.links());
        assert_eq!(c.linker.as_deref(), Some("clang"));
    }

    #[test]
    fn says_why_a_call_is_not_cached() {
        for probe in [
            "-vV",
            "- --crate-name ___ --print=file-names",
            "--print sysroot",
        ] {
            assert_eq!(parse(&v(probe)), RustcArgs::Probe, "{probe}");
        }
        for (args, why) in [
            (
                "--crate-name m src/lib.rs --crate-type proc-macro --out-dir d",
                "proc-macro crate",
            ),
            (
                "--crate-name a src/lib.rs --crate-type lib --out-dir d -C incremental=/i",
                "incremental",
            ),
            (
                "--crate-name a src/lib.rs --crate-type lib --out-dir d -Ctarget-cpu=native",
                "target-cpu=native",
            ),
            ("--crate-name a src/lib.rs --crate-type lib", "no --out-dir"),
            (
                "--crate-name a a.rs b.rs --crate-type lib --out-dir d",
                "more than one",
            ),
            (
                "--crate-name a src/lib.rs --crate-type lib --out-dir d --emit=mir",
                "--emit=mir",
            ),
            ("@args.txt", "@file"),
        ] {
            match parse(&v(args)) {
                RustcArgs::Uncacheable(r) => assert!(r.contains(why), "{args}: {r}"),
                c => panic!("{args}: {c:?}"),
            }
        }
    }
}
