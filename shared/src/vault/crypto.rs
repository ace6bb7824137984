//! The vault's cryptography: the master key (Argon2id from a passphrase, or a key file),
//! AES-256-GCM for entries with a fresh random 96-bit nonce each, and the seal over the file.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::{Aead, AeadInPlace, KeyInit, OsRng, Payload};
use aes_gcm::{Aes256Gcm, Nonce, Tag};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::{KeySource, VaultError};

/// Bytes of a nonce (96 bits, the size AES-GCM is specified for).
pub const NONCE_BYTES: usize = 12;
/// Bytes of a GCM tag.
pub const TAG_BYTES: usize = 16;
/// Bytes of an Argon2 salt.
pub const SALT_BYTES: usize = 16;
/// The most memory a vault header may ask Argon2id for (1 GiB): a damaged or hostile header
/// must not make the master allocate without bound.
pub const MAX_KDF_MEMORY_KIB: u32 = 1024 * 1024;
/// The most passes a vault header may ask Argon2id for, for the same reason.
pub const MAX_KDF_PASSES: u32 = 64;

/// How the master key is made.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Kdf {
    /// Argon2id over a passphrase.
    Argon2id {
        m_cost_kib: u32,
        t_cost: u32,
        p_cost: u32,
        salt: Vec<u8>,
    },
    /// 32 bytes read from a key file.
    KeyFile,
}

/// Argon2id cost parameters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct KdfParams {
    /// Memory in KiB.
    pub m_cost_kib: u32,
    /// Passes over memory.
    pub t_cost: u32,
    /// Lanes.
    pub p_cost: u32,
}

impl KdfParams {
    /// RFC 9106's second recommended setting (64 MiB, 3 passes, 4 lanes): a few hundred
    /// milliseconds once per process start, which is what makes guessing passphrases slow.
    pub const RECOMMENDED: KdfParams = KdfParams {
        m_cost_kib: 64 * 1024,
        t_cost: 3,
        p_cost: 4,
    };

    /// The cheapest parameters Argon2 accepts: for tests only, never for a real vault.
    pub const INSECURE_FAST: KdfParams = KdfParams {
        m_cost_kib: 8,
        t_cost: 1,
        p_cost: 1,
    };
}

/// The key that encrypts every entry. The AES key schedule is zeroized on drop; `Debug` never
/// shows it.
#[derive(Clone)]
pub struct MasterKey {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

impl MasterKey {
    pub(crate) fn from_bytes(bytes: &[u8; 32]) -> MasterKey {
        MasterKey {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// Makes the master key that `kdf` describes from `source`.
    pub fn derive(source: &KeySource, kdf: &Kdf) -> Result<MasterKey, VaultError> {
        match (source, kdf) {
            (
                KeySource::Passphrase(pass),
                Kdf::Argon2id {
                    m_cost_kib,
                    t_cost,
                    p_cost,
                    salt,
                },
            ) => {
                if *m_cost_kib > MAX_KDF_MEMORY_KIB || *t_cost > MAX_KDF_PASSES {
                    return Err(VaultError::Corrupt(format!(
                        "Argon2id parameters past the limits (m={m_cost_kib} KiB, t={t_cost})"
                    )));
                }
                let params = argon2::Params::new(*m_cost_kib, *t_cost, *p_cost, Some(32))
                    .map_err(|e| VaultError::Kdf(e.to_string()))?;
                let argon = argon2::Argon2::new(
                    argon2::Algorithm::Argon2id,
                    argon2::Version::V0x13,
                    params,
                );
                let mut out = Zeroizing::new([0u8; 32]);
                argon
                    .hash_password_into(pass.expose_secret().as_bytes(), salt, &mut *out)
                    .map_err(|e| VaultError::Kdf(e.to_string()))?;
                Ok(MasterKey::from_bytes(&out))
            }
            (KeySource::KeyFile(path), Kdf::KeyFile) => {
                Ok(MasterKey::from_bytes(&read_key_file(path)?))
            }
            (_, Kdf::Argon2id { .. }) => Err(VaultError::WrongKeyKind {
                expected: "passphrase (VGAS_VAULT_PASSPHRASE)",
            }),
            (_, Kdf::KeyFile) => Err(VaultError::WrongKeyKind {
                expected: "key file (VGAS_VAULT_KEY_FILE)",
            }),
        }
    }

    /// Encrypts `plain` under a fresh random nonce; returns (nonce, ciphertext with tag).
    pub(crate) fn encrypt(
        &self,
        plain: &[u8],
        aad: &[u8],
    ) -> Result<(Vec<u8>, Vec<u8>), VaultError> {
        let nonce = random_nonce();
        let ct = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), Payload { msg: plain, aad })
            .map_err(|_| VaultError::Crypto)?;
        Ok((nonce.to_vec(), ct))
    }

    /// Decrypts; `None` if the tag does not verify (wrong key, altered bytes or AAD).
    pub(crate) fn decrypt(
        &self,
        nonce: &[u8],
        ct: &[u8],
        aad: &[u8],
    ) -> Option<Zeroizing<Vec<u8>>> {
        if nonce.len() != NONCE_BYTES {
            return None;
        }
        self.cipher
            .decrypt(Nonce::from_slice(nonce), Payload { msg: ct, aad })
            .ok()
            .map(Zeroizing::new)
    }

    /// A tag over `data` (GCM with an empty message, i.e. GMAC) under a fresh nonce.
    pub(crate) fn seal(
        &self,
        data: &[u8],
    ) -> Result<([u8; NONCE_BYTES], [u8; TAG_BYTES]), VaultError> {
        let nonce = random_nonce();
        let tag = self
            .cipher
            .encrypt_in_place_detached(Nonce::from_slice(&nonce), data, &mut [])
            .map_err(|_| VaultError::Crypto)?;
        Ok((nonce, tag.into()))
    }

    /// Whether `tag` is the seal of `data` under `nonce`.
    pub(crate) fn verify_seal(&self, data: &[u8], nonce: &[u8], tag: &[u8]) -> bool {
        nonce.len() == NONCE_BYTES
            && tag.len() == TAG_BYTES
            && self
                .cipher
                .decrypt_in_place_detached(
                    Nonce::from_slice(nonce),
                    data,
                    &mut [],
                    Tag::from_slice(tag),
                )
                .is_ok()
    }
}

fn random_nonce() -> [u8; NONCE_BYTES] {
    let mut n = [0u8; NONCE_BYTES];
    OsRng.fill_bytes(&mut n);
    n
}

/// A fresh random Argon2 salt.
pub(crate) fn random_salt() -> Vec<u8> {
    let mut s = vec![0u8; SALT_BYTES];
    OsRng.fill_bytes(&mut s);
    s
}

/// Reads a key file: 32 raw bytes or 64 hex digits, readable by its owner only.
pub(crate) fn read_key_file(path: &Path) -> Result<[u8; 32], VaultError> {
    let err = |reason: String| VaultError::KeyFile {
        path: path.display().to_string(),
        reason,
    };
    let meta = std::fs::metadata(path).map_err(|e| err(e.to_string()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(err(
            "readable by group or others; run `chmod 600` on it".into()
        ));
    }
    let bytes = Zeroizing::new(std::fs::read(path).map_err(|e| err(e.to_string()))?);
    let mut key = [0u8; 32];
    let text = std::str::from_utf8(&bytes).map(str::trim).unwrap_or("");
    if text.len() == 64 && text.bytes().all(|b| b.is_ascii_hexdigit()) {
        for (i, k) in key.iter_mut().enumerate() {
            *k = u8::from_str_radix(&text[2 * i..2 * i + 2], 16).map_err(|e| err(e.to_string()))?;
        }
    } else if bytes.len() == 32 {
        key.copy_from_slice(&bytes);
    } else {
        return Err(err("expected 32 raw bytes or 64 hex digits".into()));
    }
    Ok(key)
}

/// The passphrase, checked for the one rule worth enforcing: not empty.
pub(crate) fn check_passphrase(source: &KeySource) -> Result<(), VaultError> {
    if let KeySource::Passphrase(p) = source {
        if p.expose_secret().is_empty() {
            return Err(VaultError::Kdf("the passphrase is empty".into()));
        }
    }
    Ok(())
}

/// Wraps a plain string as a secret.
pub(crate) fn secret(bytes: Zeroizing<Vec<u8>>) -> Result<SecretString, VaultError> {
    let s = String::from_utf8(bytes.to_vec()).map_err(|e| {
        let mut v = e.into_bytes();
        zeroize::Zeroize::zeroize(&mut v);
        VaultError::Corrupt("a stored key is not UTF-8".into())
    })?;
    Ok(SecretString::from(s))
}
