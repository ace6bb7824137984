//! Rust crate compiles on the swarm. What the build cache keeps for one `rustc` call: every
//! file it wrote (`.rlib`, `.rmeta`, `.d`, a binary...) with its permission bits, and what it
//! printed, packed into one object so a hit is one read (the layout: the 8-byte magic, a
//! 4-byte big-endian header length, the header in MessagePack, then the files' bytes one after
//! another in header order). And what a `rustc` task carries to a worker ([`RustcSpec`]): the
//! submitter's command line, directory and environment as they are, and every file the
//! compile reads that is not the compiler's own, at its absolute path on the submitter's host.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::codec::{decode_as, encode};
use crate::error::VgaError;
use crate::names::{check_relative_path, ModuleRef};
use crate::Encoding;

/// Most files a `rustc` task may carry: a crate's sources and the metadata of every crate it
/// loads (a large dependency graph reaches hundreds).
pub const MAX_RUSTC_INPUTS: usize = 4096;

/// Most outputs a `rustc` task brings back (`.rlib`, `.rmeta`, `.d`, `.o`).
pub const MAX_RUSTC_OUTPUTS: usize = 8;

/// Crate types a worker compiles: libraries whose outputs link nothing. Binaries and shared
/// objects link with this host's C toolchain and libraries, so they compile where they link.
pub const REMOTE_CRATE_TYPES: &[&str] = &["lib", "rlib"];

/// One file a remote crate compile reads: inline, or by content in the build sources bucket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RustcInput {
    /// Absolute, as on the submitter's host.
    pub path: String,
    /// The bytes, when small.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub base64: Option<String>,
    /// `sha256:<hex>` of the bytes in the build sources bucket, when not inline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub object: Option<String>,
}

/// A crate compile a worker runs (a task of kind `rustc`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RustcSpec {
    /// The compiler's identity (64 hex digits): the worker compiles with a rustc of exactly
    /// this identity, and the task needs its capability ([`crate::farm::compiler_tag`]).
    pub compiler: String,
    /// rustc's arguments as the submitter's cargo gave them.
    pub args: Vec<String>,
    /// The directory rustc ran in there, absolute.
    pub cwd: String,
    /// The environment rustc reads (`CARGO_*` and what the crate's `env!` names).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// `--out-dir`, absolute.
    pub out_dir: String,
    /// The files rustc writes there that come back, by name.
    pub outputs: Vec<String>,
    pub inputs: Vec<RustcInput>,
}

fn check_absolute(what: &str, path: &str) -> Result<(), VgaError> {
    let ok = path.starts_with('/')
        && !path.contains('\0')
        && path.split('/').all(|c| c != ".." && c != ".");
    if ok {
        Ok(())
    } else {
        Err(VgaError::InvalidTask(format!(
            "rustc {what} {path:?} must be an absolute path without . or .."
        )))
    }
}

impl RustcSpec {
    /// Checks what a worker relies on: the identity's form, absolute clean paths, plain
    /// output names, exactly one of inline or by reference per input, library crate types,
    /// no NUL anywhere.
    pub fn validate(&self) -> Result<(), VgaError> {
        let bad = |m: String| Err(VgaError::InvalidTask(m));
        if self.compiler.len() != 64 || !self.compiler.bytes().all(|b| b.is_ascii_hexdigit()) {
            return bad("rustc \"compiler\" must be 64 hex digits".into());
        }
        check_absolute("cwd", &self.cwd)?;
        check_absolute("out_dir", &self.out_dir)?;
        if self
            .args
            .iter()
            .chain(self.env.keys())
            .chain(self.env.values())
            .any(|a| a.contains('\0'))
        {
            return bad("rustc arguments and env must not contain NUL".into());
        }
        if self.env.keys().any(|k| k.is_empty() || k.contains('=')) {
            return bad("rustc env names must be non-empty, without '='".into());
        }
        let mut types = Vec::new();
        let mut it = self.args.iter();
        while let Some(a) = it.next() {
            if a == "--crate-type" {
                types.extend(it.next().map(|t| t.split(',')).into_iter().flatten());
            } else if let Some(t) = a.strip_prefix("--crate-type=") {
                types.extend(t.split(','));
            } else if a.starts_with('@') || a == "--sysroot" || a.starts_with("--sysroot=") {
                return bad(format!("rustc argument {a:?} is not sent to workers"));
            }
        }
        if types.is_empty() || types.iter().any(|t| !REMOTE_CRATE_TYPES.contains(t)) {
            return bad(format!(
                "a rustc task compiles {REMOTE_CRATE_TYPES:?} crates only, not {types:?}"
            ));
        }
        if self.outputs.is_empty() || self.outputs.len() > MAX_RUSTC_OUTPUTS {
            return bad(format!(
                "a rustc task brings back 1 to {MAX_RUSTC_OUTPUTS} outputs"
            ));
        }
        for o in &self.outputs {
            if o.contains('/') {
                return bad(format!("rustc output {o:?} must be a file name"));
            }
            check_relative_path(o)?;
        }
        if self.inputs.len() > MAX_RUSTC_INPUTS {
            return bad(format!(
                "a rustc task carries at most {MAX_RUSTC_INPUTS} inputs"
            ));
        }
        for i in &self.inputs {
            check_absolute("input", &i.path)?;
            match (&i.base64, &i.object) {
                (Some(_), None) => {}
                (None, Some(o)) => {
                    ModuleRef::parse(o)?;
                }
                _ => {
                    return bad(format!(
                        "rustc input {:?}: give exactly one of \"base64\" or \"object\"",
                        i.path
                    ))
                }
            }
        }
        Ok(())
    }
}

const MAGIC: &[u8; 8] = b"vgasrs1\n";

/// Largest header read back (names, and up to the diagnostics cap twice).
const MAX_HEADER_BYTES: usize = 8 * 1024 * 1024;

/// One output file: its name relative to the call's `--out-dir`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PackedFile {
    pub name: String,
    pub mode: u32,
    pub len: u64,
}

/// The header of a packed rustc call.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RustcOutputs {
    pub files: Vec<PackedFile>,
    pub stdout: String,
    /// Diagnostics exactly as rustc wrote them (JSON lines under cargo, with the artifact
    /// notices cargo waits for).
    pub stderr: String,
    /// How long the compile took here: what a hit saves.
    pub compile_ms: u64,
}

/// Packs `outputs` and the files' bytes (in `outputs.files` order).
pub fn pack(outputs: &RustcOutputs, bodies: &[Vec<u8>]) -> Result<Vec<u8>, VgaError> {
    if bodies.len() != outputs.files.len()
        || bodies
            .iter()
            .zip(&outputs.files)
            .any(|(b, f)| b.len() as u64 != f.len)
    {
        return Err(VgaError::Damaged(
            "packed rustc outputs: files do not match their header".into(),
        ));
    }
    let header = encode(Encoding::MsgPack, outputs)?;
    let total = MAGIC.len() + 4 + header.len() + bodies.iter().map(Vec::len).sum::<usize>();
    let mut out = Vec::with_capacity(total);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    for b in bodies {
        out.extend_from_slice(b);
    }
    Ok(out)
}

/// Reads a packed call back: the header and each file's bytes. Names must be plain relative
/// paths and the lengths must add up exactly.
pub fn unpack(bytes: &[u8]) -> Result<(RustcOutputs, Vec<&[u8]>), VgaError> {
    let bad = |why: &str| VgaError::Damaged(format!("packed rustc outputs: {why}"));
    let rest = bytes
        .strip_prefix(MAGIC.as_slice())
        .ok_or_else(|| bad("no magic"))?;
    let (len, rest) = rest.split_at_checked(4).ok_or_else(|| bad("short"))?;
    let len = u32::from_be_bytes(len.try_into().expect("4 bytes")) as usize;
    if len > MAX_HEADER_BYTES {
        return Err(bad("header too large"));
    }
    let (header, mut rest) = rest
        .split_at_checked(len)
        .ok_or_else(|| bad("short header"))?;
    let outputs: RustcOutputs =
        decode_as(Encoding::MsgPack, header).map_err(|e| bad(&e.to_string()))?;
    let mut bodies = Vec::with_capacity(outputs.files.len());
    for f in &outputs.files {
        check_relative_path(&f.name).map_err(|e| bad(&e.to_string()))?;
        let n = usize::try_from(f.len).map_err(|_| bad("length"))?;
        let (body, tail) = rest.split_at_checked(n).ok_or_else(|| bad("short file"))?;
        bodies.push(body);
        rest = tail;
    }
    if !rest.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok((outputs, bodies))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packs_and_unpacks_byte_for_byte() {
        let outputs = RustcOutputs {
            files: vec![
                PackedFile {
                    name: "libbeta-1.rlib".into(),
                    mode: 0o644,
                    len: 3,
                },
                PackedFile {
                    name: "beta-1.d".into(),
                    mode: 0o644,
                    len: 0,
                },
            ],
            stdout: String::new(),
            stderr: "{\"artifact\":\"x\"}\n".into(),
            compile_ms: 12,
        };
        let bodies = vec![vec![1, 2, 3], vec![]];
        let packed = pack(&outputs, &bodies).unwrap();
        let (h, b) = unpack(&packed).unwrap();
        assert_eq!(h, outputs);
        assert_eq!(b, [&[1u8, 2, 3][..], &[][..]]);
        // Damaged: one byte short, one byte more, a path that climbs out.
        assert!(unpack(&packed[..packed.len() - 1]).is_err());
        let mut longer = packed.clone();
        longer.push(0);
        assert!(unpack(&longer).is_err());
        let mut evil = outputs.clone();
        evil.files[0].name = "../x".into();
        assert!(unpack(&pack(&evil, &bodies).unwrap()).is_err());
        assert!(pack(&outputs, &[vec![1]]).is_err());
    }
}
