//! The vault in memory, unlocked: its entries stay encrypted and a key is decrypted only when
//! asked for. Every operation checks everything before it changes anything, so a refused
//! operation leaves the vault as it was.

use secrecy::{ExposeSecret, SecretString};

use super::crypto::{check_passphrase, random_salt, secret, Kdf, KdfParams, MasterKey};
use super::format::{encode, entry_aad, parse, Entry, Parsed};
use super::{
    validate_key, validate_provider, EntryInfo, KeySource, VaultError, VaultOp, VaultResult,
};

/// An unlocked vault.
#[derive(Debug, Clone)]
pub struct Vault {
    kdf: Kdf,
    key: MasterKey,
    /// Sorted by provider, then version.
    pub(super) entries: Vec<Entry>,
}

fn kdf_for(source: &KeySource, params: KdfParams) -> Kdf {
    match source {
        KeySource::Passphrase(_) => Kdf::Argon2id {
            m_cost_kib: params.m_cost_kib,
            t_cost: params.t_cost,
            p_cost: params.p_cost,
            salt: random_salt(),
        },
        KeySource::KeyFile(_) => Kdf::KeyFile,
    }
}

impl Vault {
    /// A new, empty vault whose master key comes from `source`.
    pub fn create(source: &KeySource, params: KdfParams) -> Result<Vault, VaultError> {
        check_passphrase(source)?;
        let kdf = kdf_for(source, params);
        let key = MasterKey::derive(source, &kdf)?;
        Ok(Vault {
            kdf,
            key,
            entries: Vec::new(),
        })
    }

    /// Reads and unlocks a vault file's bytes.
    pub fn open(bytes: &[u8], source: &KeySource) -> Result<Vault, VaultError> {
        let parsed = parse(bytes)?;
        let key = MasterKey::derive(source, parsed.kdf())?;
        Vault::unlock(&parsed, key)
    }

    /// Unlocks parsed bytes with a master key already derived (the master caches it so that
    /// rereading the file after a change costs no Argon2 run).
    pub fn unlock(parsed: &Parsed, key: MasterKey) -> Result<Vault, VaultError> {
        let mut entries = parsed.unlock(&key)?;
        entries.sort_by(|a, b| (&a.provider, a.version).cmp(&(&b.provider, b.version)));
        Ok(Vault {
            kdf: parsed.kdf().clone(),
            key,
            entries,
        })
    }

    /// Parses bytes without unlocking them.
    pub fn parse(bytes: &[u8]) -> Result<Parsed, VaultError> {
        parse(bytes)
    }

    pub fn kdf(&self) -> &Kdf {
        &self.kdf
    }

    pub fn master_key(&self) -> &MasterKey {
        &self.key
    }

    /// The whole file, sealed.
    pub fn to_bytes(&self) -> Result<Vec<u8>, VaultError> {
        encode(&self.kdf, &self.key, &self.entries, crate::now_ms())
    }

    fn versions<'a>(&'a self, provider: &'a str) -> impl Iterator<Item = &'a Entry> + 'a {
        self.entries.iter().filter(move |e| e.provider == provider)
    }

    fn current(&self, provider: &str) -> Option<&Entry> {
        self.entries
            .iter()
            .filter(|e| e.provider == provider)
            .max_by_key(|e| e.version)
    }

    fn seal_entry(
        &self,
        provider: &str,
        version: u32,
        key: &SecretString,
    ) -> Result<Entry, VaultError> {
        validate_key(key.expose_secret())?;
        let (nonce, ciphertext) = self.key.encrypt(
            key.expose_secret().as_bytes(),
            &entry_aad(provider, version),
        )?;
        Ok(Entry {
            provider: provider.to_owned(),
            version,
            created_ms: crate::now_ms(),
            nonce,
            ciphertext,
        })
    }

    fn open_entry(&self, key: &MasterKey, e: &Entry) -> Result<SecretString, VaultError> {
        let plain = key
            .decrypt(&e.nonce, &e.ciphertext, &entry_aad(&e.provider, e.version))
            .ok_or_else(|| VaultError::EntryTampered {
                provider: e.provider.clone(),
            })?;
        secret(plain)
    }

    /// The provider's current key and its version.
    pub fn retrieve(&self, provider: &str) -> Result<(u32, SecretString), VaultError> {
        let e = self
            .current(provider)
            .ok_or_else(|| VaultError::NoSuchProvider {
                provider: provider.to_owned(),
            })?;
        Ok((e.version, self.open_entry(&self.key, e)?))
    }

    /// Names and metadata of every provider, never keys.
    pub fn list(&self) -> Vec<EntryInfo> {
        let mut out: Vec<EntryInfo> = Vec::new();
        for e in &self.entries {
            match out.last_mut() {
                Some(info) if info.provider == e.provider => {
                    info.older_versions.push(info.version);
                    info.version = e.version;
                    info.created_ms = e.created_ms;
                }
                _ => out.push(EntryInfo {
                    provider: e.provider.clone(),
                    version: e.version,
                    created_ms: e.created_ms,
                    older_versions: Vec::new(),
                }),
            }
        }
        out
    }

    fn insert(&mut self, e: Entry) {
        let at = self
            .entries
            .partition_point(|x| (&x.provider, x.version) < (&e.provider, e.version));
        self.entries.insert(at, e);
    }

    /// Applies one operation in memory; the caller writes the file if `op.writes()`.
    pub fn apply(&mut self, op: VaultOp) -> Result<VaultResult, VaultError> {
        if let Some(p) = op.provider() {
            validate_provider(p)?;
        }
        let missing = |provider: &str| VaultError::NoSuchProvider {
            provider: provider.to_owned(),
        };
        match op {
            VaultOp::Store { provider, key } => {
                if self.current(&provider).is_some() {
                    return Err(VaultError::AlreadyStored { provider });
                }
                let e = self.seal_entry(&provider, 1, &key)?;
                self.insert(e);
                Ok(VaultResult::Stored {
                    provider,
                    version: 1,
                })
            }
            VaultOp::Retrieve { provider } => {
                let (version, key) = self.retrieve(&provider)?;
                Ok(VaultResult::Retrieved {
                    provider,
                    version,
                    key,
                })
            }
            VaultOp::Delete { provider } => {
                let before = self.entries.len();
                self.entries.retain(|e| e.provider != provider);
                let versions = (before - self.entries.len()) as u32;
                if versions == 0 {
                    return Err(missing(&provider));
                }
                Ok(VaultResult::Deleted { provider, versions })
            }
            VaultOp::List => Ok(VaultResult::Listed(self.list())),
            VaultOp::Rotate { provider, new_key } => {
                let cur = self.current(&provider).ok_or_else(|| missing(&provider))?;
                let version = cur.version + 1;
                let e = self.seal_entry(&provider, version, &new_key)?;
                self.insert(e);
                let kept = self
                    .versions(&provider)
                    .map(|e| e.version)
                    .filter(|v| *v != version)
                    .collect();
                Ok(VaultResult::Rotated {
                    provider,
                    version,
                    kept,
                })
            }
            VaultOp::Rollback { provider } => {
                let cur = self
                    .current(&provider)
                    .ok_or_else(|| missing(&provider))?
                    .version;
                let prev = self
                    .versions(&provider)
                    .map(|e| e.version)
                    .filter(|v| *v < cur)
                    .max()
                    .ok_or_else(|| VaultError::NoPreviousVersion {
                        provider: provider.clone(),
                    })?;
                self.entries
                    .retain(|e| !(e.provider == provider && e.version == cur));
                Ok(VaultResult::RolledBack {
                    provider,
                    version: prev,
                })
            }
            VaultOp::Purge { provider } => {
                let cur = self
                    .current(&provider)
                    .ok_or_else(|| missing(&provider))?
                    .version;
                let before = self.entries.len();
                self.entries
                    .retain(|e| e.provider != provider || e.version == cur);
                Ok(VaultResult::Purged {
                    provider,
                    removed: (before - self.entries.len()) as u32,
                })
            }
            VaultOp::RotateMasterKey { new_source, params } => {
                check_passphrase(&new_source)?;
                let kdf = kdf_for(&new_source, params);
                let new_key = MasterKey::derive(&new_source, &kdf)?;
                let mut entries = Vec::with_capacity(self.entries.len());
                for e in &self.entries {
                    let plain = self.open_entry(&self.key, e)?;
                    let aad = entry_aad(&e.provider, e.version);
                    let (nonce, ciphertext) =
                        new_key.encrypt(plain.expose_secret().as_bytes(), &aad)?;
                    entries.push(Entry {
                        nonce,
                        ciphertext,
                        ..e.clone()
                    });
                }
                let n = entries.len();
                *self = Vault {
                    kdf,
                    key: new_key,
                    entries,
                };
                Ok(VaultResult::MasterKeyRotated { entries: n })
            }
        }
    }
}
