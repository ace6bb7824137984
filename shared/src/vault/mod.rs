//! The key vault's file format and its operations: provider API keys (OpenAI, Anthropic, any
//! OpenAI-compatible server) encrypted at rest in one file on the master.
//!
//! Layout (all integers big-endian):
//!
//! ```text
//! magic "VGASVLT\0" | format u16 | header_len u32 | header | body_len u32 | body | nonce[12] | seal[16]
//! ```
//!
//! The header (MessagePack) names how the master key is made (Argon2id with its parameters and
//! salt, or a key file) and carries a key check, so a wrong passphrase is told apart from a
//! damaged file. The body (MessagePack) lists the entries; each entry's key is AES-256-GCM
//! ciphertext under a fresh random 96-bit nonce, with associated data binding it to its
//! provider name and version, so entries cannot be swapped. The seal is an AES-GCM tag over
//! every byte before it, so a flipped bit anywhere, or a cut file, is an error before anything
//! is read. Writes are atomic (`file`), so a crash leaves the old or the new vault.
//!
//! Keys in memory are `SecretString`s (zeroized on drop, redacted in `Debug`); errors never
//! carry key material.

mod crypto;
pub mod file;
mod format;
mod ops;
mod record_key;

use std::path::PathBuf;

use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use crypto::{Kdf, KdfParams, MasterKey};
pub use format::Parsed;
pub use ops::Vault;
pub use record_key::{RecordKey, RECORD_KEY_FILE};

/// Current file format version.
pub const FORMAT_VERSION: u16 = 1;

/// The largest API key accepted (16 KiB): real keys are under 256 bytes; this only stops a
/// pasted file from landing in the vault.
pub const MAX_KEY_BYTES: usize = 16 * 1024;

/// The largest vault file read (64 MiB): far past any real number of keys, and it bounds what
/// a damaged length field can make the reader allocate.
pub const MAX_VAULT_BYTES: usize = 64 * 1024 * 1024;

/// Where the master key comes from.
#[derive(Debug, Clone)]
pub enum KeySource {
    /// A passphrase, stretched with Argon2id (parameters and salt in the header).
    Passphrase(SecretString),
    /// A file holding 32 random bytes, raw or as 64 hex digits.
    KeyFile(PathBuf),
}

/// Why a vault operation failed. No variant carries key material.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("no vault at {path}: store a key first with `vgas vault store PROVIDER`")]
    NoVault { path: String },
    #[error("not a vgas vault (bad magic bytes)")]
    NotAVault,
    #[error(
        "vault format version {0} is not supported (this build reads version {FORMAT_VERSION})"
    )]
    UnsupportedVersion(u16),
    #[error("the vault file is truncated: {len} bytes, at least {needed} expected")]
    Truncated { needed: usize, len: usize },
    #[error("the vault file is damaged: {0}")]
    Corrupt(String),
    #[error("wrong passphrase or key file (or the vault header was altered)")]
    WrongKey,
    #[error("this vault is locked with a {expected}; give that instead")]
    WrongKeyKind { expected: &'static str },
    #[error(
        "the vault file fails its integrity check: it was altered or damaged; nothing was read"
    )]
    Tampered,
    #[error("the stored key for {provider} fails its integrity check (altered or swapped)")]
    EntryTampered { provider: String },
    #[error("no key stored for provider {provider:?}")]
    NoSuchProvider { provider: String },
    #[error("a key for {provider:?} is already stored; use `vgas vault rotate {provider}` to replace it")]
    AlreadyStored { provider: String },
    #[error("invalid provider name {name:?}: use 1 to 64 ASCII letters, digits, '-' or '_'")]
    InvalidProvider { name: String },
    #[error("invalid key: {0}")]
    InvalidKey(&'static str),
    #[error("{provider} has no earlier key version to roll back to")]
    NoPreviousVersion { provider: String },
    #[error("no vault passphrase or key file was given: set VGAS_VAULT_PASSPHRASE or VGAS_VAULT_KEY_FILE")]
    NoKeySource,
    /// An earlier attempt to load the unchanged file failed; this repeats its message.
    #[error("{message}")]
    Unusable {
        kind: VaultErrorKind,
        message: String,
    },
    #[error("key derivation failed: {0}")]
    Kdf(String),
    #[error("key file {path}: {reason}")]
    KeyFile { path: String, reason: String },
    #[error("encryption failed")]
    Crypto,
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

/// A small `Copy` summary of [`VaultError`] for callers that branch on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VaultErrorKind {
    /// No vault file, or no key for that provider: the operator must store one.
    Missing,
    /// Wrong passphrase or key file.
    WrongKey,
    /// The file or an entry is damaged or altered.
    Damaged,
    /// The request itself is wrong (bad name, key, duplicate, nothing to roll back).
    Invalid,
    /// The file system failed.
    Io,
}

impl VaultError {
    pub fn kind(&self) -> VaultErrorKind {
        use VaultError::*;
        match self {
            NoVault { .. } | NoSuchProvider { .. } => VaultErrorKind::Missing,
            WrongKey | WrongKeyKind { .. } | KeyFile { .. } | NoKeySource => {
                VaultErrorKind::WrongKey
            }
            Unusable { kind, .. } => *kind,
            NotAVault
            | UnsupportedVersion(_)
            | Truncated { .. }
            | Corrupt(_)
            | Tampered
            | EntryTampered { .. } => VaultErrorKind::Damaged,
            AlreadyStored { .. }
            | InvalidProvider { .. }
            | InvalidKey(_)
            | NoPreviousVersion { .. } => VaultErrorKind::Invalid,
            Kdf(_) | Crypto | Io { .. } => VaultErrorKind::Io,
        }
    }
}

/// One request to the vault (`ApiKeyManager::vault_operation`). `Debug` shows no key:
/// `SecretString` prints as redacted.
#[derive(Debug, Clone)]
pub enum VaultOp {
    /// Store the first key of a provider (refused if one is stored: use `Rotate`).
    Store { provider: String, key: SecretString },
    /// The provider's current key.
    Retrieve { provider: String },
    /// Remove every version of the provider's key.
    Delete { provider: String },
    /// Names and metadata, never keys.
    List,
    /// Store a new version; the old ones are kept for rollback until purged.
    Rotate {
        provider: String,
        new_key: SecretString,
    },
    /// Drop the current version; the previous one becomes current.
    Rollback { provider: String },
    /// Forget every version but the current one.
    Purge { provider: String },
    /// Re-encrypt every entry under a new master key, in one atomic write.
    RotateMasterKey {
        new_source: KeySource,
        params: KdfParams,
    },
}

impl VaultOp {
    /// The operation's name, for the audit log.
    pub fn name(&self) -> &'static str {
        match self {
            VaultOp::Store { .. } => "store",
            VaultOp::Retrieve { .. } => "retrieve",
            VaultOp::Delete { .. } => "delete",
            VaultOp::List => "list",
            VaultOp::Rotate { .. } => "rotate",
            VaultOp::Rollback { .. } => "rollback",
            VaultOp::Purge { .. } => "purge",
            VaultOp::RotateMasterKey { .. } => "rotate_master_key",
        }
    }

    /// The provider the operation is about, if any.
    pub fn provider(&self) -> Option<&str> {
        match self {
            VaultOp::Store { provider, .. }
            | VaultOp::Retrieve { provider }
            | VaultOp::Delete { provider }
            | VaultOp::Rotate { provider, .. }
            | VaultOp::Rollback { provider }
            | VaultOp::Purge { provider } => Some(provider),
            VaultOp::List | VaultOp::RotateMasterKey { .. } => None,
        }
    }

    /// Whether the operation changes the file.
    pub fn writes(&self) -> bool {
        !matches!(self, VaultOp::Retrieve { .. } | VaultOp::List)
    }
}

/// What an operation did.
#[derive(Debug, Clone)]
pub enum VaultResult {
    Stored {
        provider: String,
        version: u32,
    },
    Retrieved {
        provider: String,
        version: u32,
        key: SecretString,
    },
    Deleted {
        provider: String,
        versions: u32,
    },
    Listed(Vec<EntryInfo>),
    Rotated {
        provider: String,
        version: u32,
        kept: Vec<u32>,
    },
    RolledBack {
        provider: String,
        version: u32,
    },
    Purged {
        provider: String,
        removed: u32,
    },
    MasterKeyRotated {
        entries: usize,
    },
}

/// What `List` shows about one provider: never the key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryInfo {
    pub provider: String,
    /// The version in use.
    pub version: u32,
    /// When the version in use was stored (ms since the epoch).
    pub created_ms: u64,
    /// Older versions kept for rollback, oldest first.
    pub older_versions: Vec<u32>,
}

/// Checks a provider name: one subject-safe token.
pub fn validate_provider(name: &str) -> Result<(), VaultError> {
    if crate::llm::is_provider_name(name) {
        Ok(())
    } else {
        Err(VaultError::InvalidProvider {
            name: name.chars().take(80).collect(),
        })
    }
}

/// Checks a key before it is stored: non-empty, bounded, one line.
pub fn validate_key(key: &str) -> Result<(), VaultError> {
    if key.is_empty() {
        return Err(VaultError::InvalidKey("it is empty"));
    }
    if key.len() > MAX_KEY_BYTES {
        return Err(VaultError::InvalidKey("it is longer than 16 KiB"));
    }
    if key.chars().any(char::is_control) {
        return Err(VaultError::InvalidKey(
            "it contains a control character (a line break?)",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;
