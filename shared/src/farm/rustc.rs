//! What the build cache keeps for one `rustc` call: every file it wrote (`.rlib`, `.rmeta`,
//! `.d`, a binary...) with its permission bits, and what it printed, packed into one object
//! so a hit is one read. The layout: the 8-byte magic, a 4-byte big-endian header length, the
//! header (MessagePack), then the files' bytes one after another in header order.

use serde::{Deserialize, Serialize};

use crate::codec::{decode_as, encode};
use crate::error::VgaError;
use crate::names::check_relative_path;
use crate::Encoding;

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
