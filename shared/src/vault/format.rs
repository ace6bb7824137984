//! The vault file's bytes: magic, format version, header, body and seal (see the module
//! documentation of `vault` for the layout). Parsing never panics on arbitrary input and checks
//! every length before it slices.

use serde::{Deserialize, Serialize};

use super::crypto::{Kdf, MasterKey, NONCE_BYTES, TAG_BYTES};
use super::{VaultError, FORMAT_VERSION, MAX_VAULT_BYTES};

/// The first eight bytes of every vault file.
pub const MAGIC: &[u8; 8] = b"VGASVLT\0";

/// Plaintext of the key check; its AES-GCM ciphertext in the header tells a wrong passphrase
/// from a damaged file.
const KEY_CHECK_PLAIN: &[u8] = b"vgas vault key check";
const KEY_CHECK_AAD: &[u8] = b"vgas-vault-key-check\0v1";
const ENTRY_AAD_PREFIX: &[u8] = b"vgas-vault-entry\0";

#[derive(Debug, Serialize, Deserialize)]
struct Header {
    kdf: Kdf,
    check_nonce: Vec<u8>,
    check: Vec<u8>,
}

/// One version of one provider's key, encrypted.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Entry {
    pub provider: String,
    pub version: u32,
    pub created_ms: u64,
    pub nonce: Vec<u8>,
    pub ciphertext: Vec<u8>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Body {
    written_ms: u64,
    entries: Vec<Entry>,
}

/// The associated data of an entry: binds its ciphertext to its provider and version.
pub(crate) fn entry_aad(provider: &str, version: u32) -> Vec<u8> {
    let mut aad = ENTRY_AAD_PREFIX.to_vec();
    aad.extend_from_slice(provider.as_bytes());
    aad.push(0);
    aad.extend_from_slice(&version.to_be_bytes());
    aad
}

/// A vault file whose structure has been read but whose key has not been checked yet.
#[derive(Debug)]
pub struct Parsed {
    kdf: Kdf,
    header: Header,
    /// Every byte the seal covers.
    sealed: Vec<u8>,
    body_at: usize,
    seal_nonce: Vec<u8>,
    seal_tag: Vec<u8>,
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], VaultError> {
        let end = self.at.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(VaultError::Truncated {
                needed: self.at.saturating_add(n),
                len: self.bytes.len(),
            });
        };
        let s = &self.bytes[self.at..end];
        self.at = end;
        Ok(s)
    }

    fn u32(&mut self) -> Result<usize, VaultError> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize)
    }
}

/// Reads the structure of a vault file.
pub fn parse(bytes: &[u8]) -> Result<Parsed, VaultError> {
    if bytes.len() > MAX_VAULT_BYTES {
        return Err(VaultError::Corrupt(format!(
            "{} bytes is past the {MAX_VAULT_BYTES}-byte limit",
            bytes.len()
        )));
    }
    if bytes.len() < MAGIC.len() {
        return Err(if MAGIC.starts_with(bytes) {
            VaultError::Truncated {
                needed: MAGIC.len(),
                len: bytes.len(),
            }
        } else {
            VaultError::NotAVault
        });
    }
    let mut r = Reader { bytes, at: 0 };
    if r.take(MAGIC.len())? != MAGIC {
        return Err(VaultError::NotAVault);
    }
    let v = r.take(2)?;
    let version = u16::from_be_bytes([v[0], v[1]]);
    if version != FORMAT_VERSION {
        return Err(VaultError::UnsupportedVersion(version));
    }
    let header_len = r.u32()?;
    let header_bytes = r.take(header_len)?;
    let body_len = r.u32()?;
    let body_at = r.at;
    r.take(body_len)?;
    let sealed_end = r.at;
    let seal_nonce = r.take(NONCE_BYTES)?.to_vec();
    let seal_tag = r.take(TAG_BYTES)?.to_vec();
    if r.at != bytes.len() {
        return Err(VaultError::Corrupt(format!(
            "{} unexpected bytes after the seal",
            bytes.len() - r.at
        )));
    }
    let header: Header = rmp_serde::from_slice(header_bytes)
        .map_err(|e| VaultError::Corrupt(format!("the header does not parse: {e}")))?;
    Ok(Parsed {
        kdf: header.kdf.clone(),
        header,
        sealed: bytes[..sealed_end].to_vec(),
        body_at,
        seal_nonce,
        seal_tag,
    })
}

impl Parsed {
    /// How the master key of this file is made.
    pub fn kdf(&self) -> &Kdf {
        &self.kdf
    }

    /// Checks `key` and the seal, then reads the entries.
    pub(crate) fn unlock(&self, key: &MasterKey) -> Result<Vec<Entry>, VaultError> {
        let check = key.decrypt(&self.header.check_nonce, &self.header.check, KEY_CHECK_AAD);
        if check.as_deref().map(Vec::as_slice) != Some(KEY_CHECK_PLAIN) {
            return Err(VaultError::WrongKey);
        }
        if !key.verify_seal(&self.sealed, &self.seal_nonce, &self.seal_tag) {
            return Err(VaultError::Tampered);
        }
        let body: Body = rmp_serde::from_slice(&self.sealed[self.body_at..])
            .map_err(|e| VaultError::Corrupt(format!("the body does not parse: {e}")))?;
        Ok(body.entries)
    }
}

/// Writes a whole vault file: a fresh key check, the entries, a fresh seal.
pub(crate) fn encode(
    kdf: &Kdf,
    key: &MasterKey,
    entries: &[Entry],
    now_ms: u64,
) -> Result<Vec<u8>, VaultError> {
    let (check_nonce, check) = key.encrypt(KEY_CHECK_PLAIN, KEY_CHECK_AAD)?;
    let header = Header {
        kdf: kdf.clone(),
        check_nonce,
        check,
    };
    let header = rmp_serde::to_vec_named(&header)
        .map_err(|e| VaultError::Corrupt(format!("encode header: {e}")))?;
    let body = Body {
        written_ms: now_ms,
        entries: entries.to_vec(),
    };
    let body = rmp_serde::to_vec_named(&body)
        .map_err(|e| VaultError::Corrupt(format!("encode body: {e}")))?;
    let mut out = Vec::with_capacity(header.len() + body.len() + 64);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_be_bytes());
    out.extend_from_slice(&(header.len() as u32).to_be_bytes());
    out.extend_from_slice(&header);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(&body);
    let (nonce, tag) = key.seal(&out)?;
    out.extend_from_slice(&nonce);
    out.extend_from_slice(&tag);
    Ok(out)
}
