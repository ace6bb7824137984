//! The files one crate compile writes, gathered into a packed object after a compile here,
//! and written back from one on a hit: same names, same bytes, same permission bits.

use std::os::unix::fs::PermissionsExt as _;
use std::path::Path;
use std::process::Stdio;

use anyhow::{bail, Context, Result};
use vgas_shared::farm::rustc::{pack, unpack, PackedFile, RustcOutputs};

use super::args::{resolve, CrateCall};

/// The names (relative to `--out-dir`) of what the call's `link` emit writes, as rustc
/// itself says (`--print=file-names`: `.rlib`, a binary, `.so`, `.a`, `.wasm`...).
fn link_outputs(rustc: &str, call: &CrateCall, cwd: &Path) -> Result<Vec<String>> {
    let args: Vec<&String> = call
        .args
        .iter()
        .filter(|a| !a.starts_with("--emit") && !a.starts_with("--json"))
        .collect();
    let out = std::process::Command::new(rustc)
        .args(args)
        .arg("--print=file-names")
        .current_dir(cwd)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("run {rustc} --print=file-names"))?;
    if !out.status.success() {
        bail!("{rustc} --print=file-names failed");
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect())
}

/// Every file the call wrote.
pub fn names(rustc: &str, call: &CrateCall, cwd: &Path) -> Result<Vec<String>> {
    let mut names = call.side_outputs();
    if call.emits.iter().any(|e| e == "link") {
        names.extend(link_outputs(rustc, call, cwd)?);
    }
    Ok(names)
}

/// Packs the files `names` in the call's out dir, with what rustc printed.
pub fn gather(
    call: &CrateCall,
    cwd: &Path,
    names: &[String],
    stdout: String,
    stderr: String,
    compile_ms: u64,
) -> Result<Vec<u8>> {
    let dir = resolve(cwd, &call.out_dir);
    let mut outputs = RustcOutputs {
        stdout,
        stderr,
        compile_ms,
        ..Default::default()
    };
    let mut bodies = Vec::with_capacity(names.len());
    for name in names {
        let path = dir.join(name);
        let bytes = std::fs::read(&path).with_context(|| format!("read {}", path.display()))?;
        let mode = std::fs::metadata(&path)?.permissions().mode() & 0o777;
        outputs.files.push(PackedFile {
            name: name.clone(),
            mode,
            len: bytes.len() as u64,
        });
        bodies.push(bytes);
    }
    Ok(pack(&outputs, &bodies)?)
}

/// Writes a packed call's files into the call's out dir ([`write_output`]) and returns what
/// rustc printed.
pub fn restore(call: &CrateCall, cwd: &Path, packed: &[u8]) -> Result<RustcOutputs> {
    let (outputs, bodies) = unpack(packed)?;
    let dir = resolve(cwd, &call.out_dir);
    std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
    for (f, body) in outputs.files.iter().zip(bodies) {
        write_output(&dir.join(&f.name), body, f.mode)?;
    }
    Ok(outputs)
}

/// Writes one output through a temporary file beside it and a rename (so a reader never sees
/// half a file), with permission bits `mode`.
pub fn write_output(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    let name = path
        .file_name()
        .context("an output name")?
        .to_string_lossy();
    let tmp = path.with_file_name(format!(".{name}.vgas-{}", std::process::id()));
    std::fs::write(&tmp, bytes).with_context(|| format!("write {}", tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode & 0o777))?;
    std::fs::rename(&tmp, path).with_context(|| format!("write {}", path.display()))
}
