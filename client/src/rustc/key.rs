//! The cache key of one crate compile, sccache's recipe: the exact compiler (its `-vV` and its
//! sysroot's libraries), every argument, the directory it runs in, the environment rustc reads
//! (`CARGO_*`, and every variable the crate's `env!`/`option_env!` name), the content of every
//! source file the crate reads (from a `--emit=dep-info` run), of every `--extern` crate and
//! of every native library it may link, and for linked outputs the linker's identity.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use sha2::{Digest, Sha256};

use super::args::{resolve, CrateCall};

/// Bumped when what the key covers changes, so old entries stop matching.
const KEY_VERSION: &str = "vgas-rustc-key-4";

/// Environment variables that reach rustc from cargo but say nothing about the output
/// (the jobserver's descriptors change every run).
const IGNORED_ENV: &[&str] = &["CARGO_MAKEFLAGS"];

/// Variables rustc itself reads that change what it makes.
const RUSTC_ENV: &[&str] = &["RUSTC_BOOTSTRAP", "SOURCE_DATE_EPOCH"];

/// Writes one labelled field into the hash, length-prefixed so fields cannot run together.
fn field(h: &mut Sha256, label: &str, value: &[u8]) {
    h.update(label.as_bytes());
    h.update((value.len() as u64).to_le_bytes());
    h.update(value);
}

fn file_digest(path: &Path) -> Result<[u8; 32]> {
    let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
    Ok(Sha256::digest(&bytes).into())
}

/// Runs `rustc` with `args` and returns its stdout, failing with its stderr.
fn rustc_output(rustc: &str, args: &[&str]) -> Result<String> {
    let out = std::process::Command::new(rustc)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {rustc}"))?;
    if !out.status.success() {
        bail!(
            "{rustc} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// A rustc, identified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RustCompiler {
    /// 64 hex digits: its `-vV` (version, commit, host, LLVM) and the name and size of every
    /// file in its sysroot's library folders (the standard library a crate links against, and
    /// the compiler's own libraries, whose names carry their own hashes). Sizes, not times:
    /// the same toolchain installed on two hosts is one identity, so they share the cache and
    /// a worker can compile for the other.
    pub identity: String,
    pub sysroot: PathBuf,
}

/// Identifies the rustc that `rustc` runs (a rustup proxy picks its toolchain as it would).
pub fn identify(rustc: &str) -> Result<RustCompiler> {
    let version = rustc_output(rustc, &["-vV"])?;
    let sysroot = rustc_output(rustc, &["--print", "sysroot"])?;
    let sysroot = PathBuf::from(sysroot.trim());
    let host = version
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .unwrap_or("")
        .to_owned();
    let mut h = Sha256::new();
    field(&mut h, "version", version.as_bytes());
    let dirs = [
        sysroot.join("lib"),
        sysroot.join("lib/rustlib").join(&host).join("lib"),
    ];
    for dir in dirs {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        let mut files: Vec<(String, u64)> = entries
            .filter_map(|e| e.ok())
            .filter_map(|e| {
                let m = e.metadata().ok()?;
                m.is_file()
                    .then(|| (e.file_name().to_string_lossy().into_owned(), m.len()))
            })
            .collect();
        files.sort();
        for (name, len) in files {
            field(&mut h, "sysroot-file", name.as_bytes());
            h.update(len.to_le_bytes());
        }
    }
    Ok(RustCompiler {
        identity: hex::encode(h.finalize()),
        sysroot,
    })
}

/// [`identify`], worked out once per build: kept in `memo_dir` (the build's wrapper folder)
/// under a name derived from how the compiler is called (its path and the rustup toolchain
/// override, which pick the compiler).
pub fn identify_memo(rustc: &str, memo_dir: Option<&Path>) -> Result<RustCompiler> {
    let Some(dir) = memo_dir else {
        return identify(rustc);
    };
    let mut h = Sha256::new();
    field(&mut h, "rustc", rustc.as_bytes());
    let toolchain = std::env::var("RUSTUP_TOOLCHAIN").unwrap_or_default();
    field(&mut h, "toolchain", toolchain.as_bytes());
    let memo = dir.join(format!("rustc-id-{}", &hex::encode(h.finalize())[..16]));
    if let Ok(text) = std::fs::read_to_string(&memo) {
        if let Some((id, sysroot)) = text.split_once('\n') {
            if id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Ok(RustCompiler {
                    identity: id.to_owned(),
                    sysroot: PathBuf::from(sysroot),
                });
            }
        }
    }
    let c = identify(rustc)?;
    // Several wrappers may race here: each writes the same value through a rename.
    let tmp = dir.join(format!(".rustc-id-{}", std::process::id()));
    let text = format!("{}\n{}", c.identity, c.sysroot.display());
    if std::fs::write(&tmp, text).is_ok() {
        let _ = std::fs::rename(&tmp, &memo);
    }
    Ok(c)
}

/// What a `--emit=dep-info` run says a crate reads: its source files and the environment
/// variables it names.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct CrateInputs {
    pub files: Vec<PathBuf>,
    pub env: BTreeMap<String, String>,
}

/// Reads a Makefile-style dep-info: the first rule's prerequisites, and the `# env-dep:`
/// lines. Escaped spaces (`\ `) stay part of a path.
pub fn parse_dep_info(text: &str) -> CrateInputs {
    let mut inputs = CrateInputs::default();
    let mut first_rule = true;
    for line in text.lines() {
        if let Some(dep) = line.strip_prefix("# env-dep:") {
            let (k, v) = dep.split_once('=').unwrap_or((dep, ""));
            inputs.env.insert(k.to_owned(), v.to_owned());
            continue;
        }
        if line.starts_with('#') || line.trim().is_empty() {
            continue;
        }
        let Some((_, deps)) = line
            .split_once(": ")
            .or_else(|| line.strip_suffix(':').map(|t| (t, "")))
        else {
            continue;
        };
        if !first_rule {
            continue;
        }
        first_rule = false;
        let mut cur = String::new();
        let mut chars = deps.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '\\' if chars.peek() == Some(&' ') => {
                    cur.push(' ');
                    chars.next();
                }
                ' ' => {
                    if !cur.is_empty() {
                        inputs.files.push(PathBuf::from(std::mem::take(&mut cur)));
                    }
                }
                c => cur.push(c),
            }
        }
        if !cur.is_empty() {
            inputs.files.push(PathBuf::from(cur));
        }
    }
    inputs
}

/// Runs the crate's compile as `--emit=dep-info` only, into a temporary file, and reads it:
/// with `-Z binary-dep-depinfo` (`RUSTC_BOOTSTRAP=1` for this run only), so the files list
/// every crate the compile loads too, its dependencies' dependencies included.
pub fn crate_inputs(rustc: &str, call: &CrateCall, cwd: &Path) -> Result<CrateInputs> {
    let dir = tempfile::Builder::new()
        .prefix("vgas-rustc-deps-")
        .tempdir()
        .context("create a temporary folder")?;
    let out = dir.path().join("deps.d");
    let mut args: Vec<String> = Vec::with_capacity(call.args.len() + 2);
    let mut it = call.args.iter();
    while let Some(a) = it.next() {
        // Its own emit and output; diagnostics are the real compile's to print.
        if a == "--emit" || a == "--out-dir" {
            it.next();
            continue;
        }
        if a.starts_with("--emit=") || a.starts_with("--out-dir=") || a.starts_with("--json") {
            continue;
        }
        if a == "--json" {
            it.next();
            continue;
        }
        args.push(a.clone());
    }
    args.push("--emit=dep-info".into());
    args.push("-Zbinary-dep-depinfo".into());
    args.push("-o".into());
    args.push(out.display().to_string());
    let run = std::process::Command::new(rustc)
        .args(&args)
        .env("RUSTC_BOOTSTRAP", "1")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {rustc}"))?;
    if !run.status.success() {
        bail!("its dep-info run failed");
    }
    let text = std::fs::read_to_string(&out).context("read the dep-info")?;
    Ok(parse_dep_info(&text))
}

/// The linker a linked output is made with: `-C linker`, or `cc`; the file it resolves to and
/// its size (as for the sysroot, not its time, so hosts with the same packages share hits).
fn linker_identity(call: &CrateCall) -> String {
    let name = call.linker.clone().unwrap_or_else(|| "cc".into());
    // Past `vgas build`'s own `cc` link, to the real one.
    let skip = std::env::var_os(crate::farm::wrapper::ENV_WRAPPER_DIR).map(PathBuf::from);
    let found =
        crate::toolchain::which(&name, skip.as_deref()).and_then(|p| std::fs::canonicalize(p).ok());
    let len = found
        .as_deref()
        .and_then(|p| std::fs::metadata(p).ok())
        .map_or(0, |m| m.len());
    format!("{name} {found:?} {len}")
}

/// Everything the key covers, gathered; `key()` hashes it.
#[derive(Debug)]
pub struct KeyInputs<'a> {
    pub compiler: &'a RustCompiler,
    pub call: &'a CrateCall,
    pub cwd: &'a Path,
    pub env: &'a [(String, String)],
    pub inputs: &'a CrateInputs,
}

impl KeyInputs<'_> {
    /// Every file the compile reads but the compiler's own, absolute, sorted, once each: the
    /// sources and loaded crates of the dep-info run, and the `--extern` files.
    pub fn files(&self) -> Vec<PathBuf> {
        let mut files: Vec<PathBuf> = self
            .inputs
            .files
            .iter()
            .chain(self.call.externs.iter().map(|(_, p)| p))
            .map(|f| resolve(self.cwd, f))
            .filter(|f| !f.starts_with(&self.compiler.sysroot))
            .collect();
        files.sort();
        files.dedup();
        files
    }

    /// The environment rustc reads, as the key covers it and a worker gets it: `CARGO_*` but
    /// the jobserver's, the variables rustc itself reads, and every variable the crate's
    /// `env!`/`option_env!` name that is set.
    pub fn rustc_env(&self) -> BTreeMap<String, String> {
        self.env
            .iter()
            .filter(|(k, _)| {
                (k.starts_with("CARGO_") && !IGNORED_ENV.contains(&k.as_str()))
                    || RUSTC_ENV.contains(&k.as_str())
                    || self.inputs.env.contains_key(k)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// The cache key: `rust.` and 64 hex digits.
    pub fn key(&self) -> Result<String> {
        let mut h = Sha256::new();
        field(&mut h, "version", KEY_VERSION.as_bytes());
        field(&mut h, "compiler", self.compiler.identity.as_bytes());
        field(&mut h, "cwd", self.cwd.as_os_str().as_encoded_bytes());
        for a in &self.call.args {
            field(&mut h, "arg", a.as_bytes());
        }
        for (k, v) in self.rustc_env() {
            field(&mut h, "env", format!("{k}={v}").as_bytes());
        }
        // What the crate's env!/option_env! read, and whether it is set at all.
        for k in self.inputs.env.keys() {
            let set = self.env.iter().any(|(n, _)| n == k);
            field(&mut h, "env-dep", format!("{k} {set}").as_bytes());
        }
        for f in self.files() {
            field(&mut h, "input", f.as_os_str().as_encoded_bytes());
            h.update(file_digest(&f)?);
        }
        for lib in &self.call.libs {
            for dir in &self.call.search_dirs {
                let a = resolve(self.cwd, dir).join(format!("lib{lib}.a"));
                if a.is_file() {
                    field(&mut h, "native", a.as_os_str().as_encoded_bytes());
                    h.update(file_digest(&a)?);
                }
            }
        }
        if self.call.links() {
            field(&mut h, "linker", linker_identity(self.call).as_bytes());
        }
        Ok(format!("rust.{}", hex::encode(h.finalize())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_dep_info_files_and_env_deps() {
        let text = "/t/deps/beta-1.d: src/lib.rs src/a\\ b.rs /abs/gen.rs\n\
                    \n\
                    /t/deps/libbeta-1.rmeta: src/lib.rs src/a\\ b.rs /abs/gen.rs\n\
                    \n\
                    src/lib.rs:\n\
                    src/a\\ b.rs:\n\
                    \n\
                    # env-dep:CARGO_PKG_NAME=beta\n\
                    # env-dep:GREETING\n";
        let got = parse_dep_info(text);
        assert_eq!(
            got.files,
            ["src/lib.rs", "src/a b.rs", "/abs/gen.rs"].map(PathBuf::from)
        );
        assert_eq!(
            got.env.get("CARGO_PKG_NAME").map(String::as_str),
            Some("beta")
        );
        assert!(got.env.contains_key("GREETING"));
    }
}
