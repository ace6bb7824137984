//! The master's key for what it keeps at rest outside the vault: secret env values in task
//! records are sealed with it (AES-256-GCM, a fresh random nonce each, bound to the task id so
//! a sealed value cannot be moved to another task), and specs are digested with it (a keyed
//! SHA-256, so a digest kept after the spec is dropped reveals nothing a guess could check).
//! The key is 32 random bytes in a file of mode 0600 under the state directory, made on the
//! master's first start; every master of one swarm needs the same file.

use std::fs;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use aes_gcm::aead::rand_core::RngCore;
use aes_gcm::aead::OsRng;
use base64::Engine as _;
use sha2::{Digest, Sha256};
use zeroize::Zeroizing;

use super::crypto::{read_key_file, MasterKey, NONCE_BYTES};
use super::VaultError;

/// The key file's name under the master's state directory.
pub const RECORD_KEY_FILE: &str = "record.key";

/// Seals and digests task records' confidential parts. `Debug` never shows the key.
#[derive(Clone)]
pub struct RecordKey {
    cipher: MasterKey,
    digest_key: Zeroizing<[u8; 32]>,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RecordKey(<redacted>)")
    }
}

impl RecordKey {
    /// Reads the key at `path`, or makes one there (mode 0600, never over an existing file:
    /// two masters starting at once end with the same key).
    pub fn load_or_create(path: &Path) -> Result<RecordKey, VaultError> {
        if !path.exists() {
            let mut key = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(&mut *key);
            let text = Zeroizing::new(hex::encode(*key));
            let err = |e: std::io::Error| VaultError::KeyFile {
                path: path.display().to_string(),
                reason: e.to_string(),
            };
            if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                fs::create_dir_all(dir).map_err(err)?;
            }
            let tmp = path.with_extension(format!("tmp.{}", std::process::id()));
            let written = (|| {
                let mut f = fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .open(&tmp)?;
                f.write_all(text.as_bytes())?;
                f.sync_all()?;
                match fs::hard_link(&tmp, path) {
                    Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => Err(e),
                    _ => Ok(()),
                }
            })();
            let _ = fs::remove_file(&tmp);
            written.map_err(err)?;
        }
        Ok(RecordKey::from_bytes(&read_key_file(path)?))
    }

    fn from_bytes(key: &[u8; 32]) -> RecordKey {
        let derive = |label: &[u8]| -> Zeroizing<[u8; 32]> {
            let mut h = Sha256::new();
            h.update(label);
            h.update(key);
            Zeroizing::new(h.finalize().into())
        };
        RecordKey {
            cipher: MasterKey::from_bytes(&derive(b"vgas record key: seal\0")),
            digest_key: derive(b"vgas record key: digest\0"),
        }
    }

    /// `value` sealed for the task `bound_to`: base64 of nonce and ciphertext.
    pub fn seal(&self, value: &str, bound_to: &str) -> Result<String, VaultError> {
        let (nonce, ct) = self.cipher.encrypt(value.as_bytes(), bound_to.as_bytes())?;
        let mut out = nonce;
        out.extend_from_slice(&ct);
        Ok(base64::engine::general_purpose::STANDARD.encode(out))
    }

    /// The value [`RecordKey::seal`] sealed for `bound_to`; `None` for another key, another
    /// task or altered bytes.
    pub fn open(&self, sealed: &str, bound_to: &str) -> Option<String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(sealed)
            .ok()?;
        if bytes.len() < NONCE_BYTES {
            return None;
        }
        let (nonce, ct) = bytes.split_at(NONCE_BYTES);
        let plain = self.cipher.decrypt(nonce, ct, bound_to.as_bytes())?;
        String::from_utf8(plain.to_vec()).ok()
    }

    /// A keyed digest of `bytes`, as 64 hex digits.
    pub fn digest(&self, bytes: &[u8]) -> String {
        let mut h = Sha256::new();
        h.update(*self.digest_key);
        h.update(bytes);
        hex::encode(h.finalize())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_for_their_task_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join(RECORD_KEY_FILE);
        let key = RecordKey::load_or_create(&path).unwrap();
        let mode =
            std::os::unix::fs::PermissionsExt::mode(&fs::metadata(&path).unwrap().permissions());
        assert_eq!(mode & 0o777, 0o600);
        let sealed = key.seal("s3cr3t", "t1").unwrap();
        assert!(!sealed.contains("s3cr3t"));
        assert_ne!(
            sealed,
            key.seal("s3cr3t", "t1").unwrap(),
            "a fresh nonce each"
        );
        assert_eq!(key.open(&sealed, "t1").as_deref(), Some("s3cr3t"));
        assert_eq!(key.open(&sealed, "t2"), None, "bound to its task");
        let again = RecordKey::load_or_create(&path).unwrap();
        assert_eq!(again.open(&sealed, "t1").as_deref(), Some("s3cr3t"), "kept");
        assert_eq!(key.digest(b"spec"), again.digest(b"spec"));
        let other = RecordKey::load_or_create(&dir.path().join("other.key")).unwrap();
        assert_eq!(other.open(&sealed, "t1"), None);
        assert_ne!(other.digest(b"spec"), key.digest(b"spec"));
        assert_eq!(key.open("not base64!", "t1"), None);
    }
}
