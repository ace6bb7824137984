//! Unit and property tests of the vault format and operations.

use proptest::prelude::*;
use secrecy::{ExposeSecret, SecretString};

use super::crypto::Kdf;
use super::format::{entry_aad, parse};
use super::*;

fn pass(p: &str) -> KeySource {
    KeySource::Passphrase(SecretString::from(p.to_owned()))
}

fn store(v: &mut Vault, provider: &str, key: &str) {
    v.apply(VaultOp::Store {
        provider: provider.into(),
        key: SecretString::from(key.to_owned()),
    })
    .unwrap();
}

/// A sealed vault with two providers, and its passphrase.
fn sample() -> (Vec<u8>, KeySource) {
    let src = pass("correct horse");
    let mut v = Vault::create(&src, KdfParams::INSECURE_FAST).unwrap();
    store(&mut v, "openai", "sk-test-openai-0123456789");
    store(&mut v, "anthropic", "sk-ant-test-abcdef");
    (v.to_bytes().unwrap(), src)
}

/// Opens `bytes` and reads every key: the whole read path a caller would take.
fn read_all(bytes: &[u8], src: &KeySource) -> Result<Vec<String>, VaultError> {
    let v = Vault::open(bytes, src)?;
    v.list()
        .iter()
        .map(|i| {
            v.retrieve(&i.provider)
                .map(|(_, k)| k.expose_secret().to_owned())
        })
        .collect()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Store, write, read back, retrieve: the same key comes back for every provider.
    #[test]
    fn store_then_retrieve_round_trips(
        keys in proptest::collection::btree_map("[a-z0-9_-]{1,20}", "[ -~]{1,200}", 1..6)
    ) {
        let src = pass("pp");
        let mut v = Vault::create(&src, KdfParams::INSECURE_FAST).unwrap();
        for (p, k) in &keys {
            store(&mut v, p, k);
        }
        let back = Vault::open(&v.to_bytes().unwrap(), &src).unwrap();
        for (p, k) in &keys {
            let (version, got) = back.retrieve(p).unwrap();
            prop_assert_eq!(version, 1);
            prop_assert_eq!(got.expose_secret(), k.as_str());
        }
        prop_assert_eq!(back.list().len(), keys.len());
    }

    /// Any single flipped bit anywhere in the file makes reading it an error.
    #[test]
    fn any_flipped_bit_is_an_error(pos in any::<prop::sample::Index>(), bit in 0u8..8) {
        let (mut bytes, src) = sample();
        let i = pos.index(bytes.len());
        bytes[i] ^= 1 << bit;
        prop_assert!(read_all(&bytes, &src).is_err(), "flipping bit {} of byte {} went unnoticed", bit, i);
    }

    /// The parser never panics on arbitrary bytes, with or without the magic in front.
    #[test]
    fn arbitrary_bytes_never_panic(tail in proptest::collection::vec(any::<u8>(), 0..512), magic in any::<bool>()) {
        let mut bytes = if magic { b"VGASVLT\0\0\x01".to_vec() } else { Vec::new() };
        bytes.extend_from_slice(&tail);
        prop_assert!(read_all(&bytes, &pass("x")).is_err());
    }
}

#[test]
fn every_truncation_is_an_error() {
    let (bytes, src) = sample();
    for len in 0..bytes.len() {
        let e = read_all(&bytes[..len], &src).unwrap_err();
        assert_eq!(e.kind(), VaultErrorKind::Damaged, "len {len}: {e}");
    }
    assert_eq!(read_all(&bytes, &src).unwrap().len(), 2);
}

#[test]
fn wrong_passphrase_and_wrong_kind_are_told_apart_from_damage() {
    let (bytes, _) = sample();
    assert!(matches!(
        Vault::open(&bytes, &pass("wrong")),
        Err(VaultError::WrongKey)
    ));
    let e = Vault::open(&bytes, &KeySource::KeyFile("/nonexistent".into())).unwrap_err();
    assert!(matches!(e, VaultError::WrongKeyKind { .. }), "{e}");
    assert!(matches!(
        Vault::open(b"hello world, not a vault", &pass("x")),
        Err(VaultError::NotAVault)
    ));
}

#[test]
fn swapped_entries_fail_their_integrity_check() {
    let (bytes, src) = sample();
    let mut v = Vault::open(&bytes, &src).unwrap();
    // Swap the ciphertexts of the two providers, then reseal the file with the right key, as
    // someone holding the master key but not understanding the format might.
    let (a, b) = (v.entries[0].clone(), v.entries[1].clone());
    v.entries[0].nonce = b.nonce;
    v.entries[0].ciphertext = b.ciphertext;
    v.entries[1].nonce = a.nonce;
    v.entries[1].ciphertext = a.ciphertext;
    let reopened = Vault::open(&v.to_bytes().unwrap(), &src).unwrap();
    for p in ["openai", "anthropic"] {
        assert!(matches!(
            reopened.retrieve(p),
            Err(VaultError::EntryTampered { .. })
        ));
    }
    // A version bump is caught the same way: the AAD binds the version.
    let mut v = Vault::open(&bytes, &src).unwrap();
    v.entries[0].version = 7;
    assert!(v.retrieve(&v.entries[0].provider.clone()).is_err());
    assert_ne!(entry_aad("a", 1), entry_aad("a", 2));
}

#[test]
fn rotate_keeps_old_versions_until_purged_and_rolls_back() {
    let src = pass("p");
    let mut v = Vault::create(&src, KdfParams::INSECURE_FAST).unwrap();
    store(&mut v, "openai", "k1");
    let r = v
        .apply(VaultOp::Rotate {
            provider: "openai".into(),
            new_key: SecretString::from("k2".to_owned()),
        })
        .unwrap();
    assert!(matches!(r, VaultResult::Rotated { version: 2, ref kept, .. } if kept == &[1]));
    v.apply(VaultOp::Rotate {
        provider: "openai".into(),
        new_key: SecretString::from("k3".to_owned()),
    })
    .unwrap();
    let v2 = Vault::open(&v.to_bytes().unwrap(), &src).unwrap();
    assert_eq!(v2.retrieve("openai").unwrap().1.expose_secret(), "k3");
    assert_eq!(v2.list()[0].older_versions, vec![1, 2]);
    let r = v.apply(VaultOp::Rollback {
        provider: "openai".into(),
    });
    assert!(matches!(r, Ok(VaultResult::RolledBack { version: 2, .. })));
    assert_eq!(v.retrieve("openai").unwrap().1.expose_secret(), "k2");
    let r = v.apply(VaultOp::Purge {
        provider: "openai".into(),
    });
    assert!(matches!(r, Ok(VaultResult::Purged { removed: 1, .. })));
    assert!(matches!(
        v.apply(VaultOp::Rollback {
            provider: "openai".into()
        }),
        Err(VaultError::NoPreviousVersion { .. })
    ));
    assert!(matches!(
        v.apply(VaultOp::Store {
            provider: "openai".into(),
            key: SecretString::from("again".to_owned())
        }),
        Err(VaultError::AlreadyStored { .. })
    ));
    let r = v.apply(VaultOp::Delete {
        provider: "openai".into(),
    });
    assert!(matches!(r, Ok(VaultResult::Deleted { versions: 1, .. })));
    assert!(matches!(
        v.retrieve("openai"),
        Err(VaultError::NoSuchProvider { .. })
    ));
}

#[test]
fn refused_operations_change_nothing() {
    let (bytes, src) = sample();
    let mut v = Vault::open(&bytes, &src).unwrap();
    let before = v.list();
    for op in [
        VaultOp::Store {
            provider: "bad name".into(),
            key: SecretString::from("k".to_owned()),
        },
        VaultOp::Store {
            provider: "new".into(),
            key: SecretString::from("two\nlines".to_owned()),
        },
        VaultOp::Store {
            provider: "new".into(),
            key: SecretString::from(String::new()),
        },
        VaultOp::Rotate {
            provider: "missing".into(),
            new_key: SecretString::from("k".to_owned()),
        },
        VaultOp::Delete {
            provider: "missing".into(),
        },
    ] {
        assert!(v.apply(op).is_err());
    }
    assert_eq!(v.list(), before);
}

#[test]
fn master_key_rotation_reencrypts_everything() {
    let (bytes, src) = sample();
    let mut v = Vault::open(&bytes, &src).unwrap();
    let r = v
        .apply(VaultOp::RotateMasterKey {
            new_source: pass("new passphrase"),
            params: KdfParams::INSECURE_FAST,
        })
        .unwrap();
    assert!(matches!(r, VaultResult::MasterKeyRotated { entries: 2 }));
    let rotated = v.to_bytes().unwrap();
    assert!(matches!(
        Vault::open(&rotated, &src),
        Err(VaultError::WrongKey)
    ));
    let mut keys = read_all(&rotated, &pass("new passphrase")).unwrap();
    keys.sort();
    assert_eq!(keys, ["sk-ant-test-abcdef", "sk-test-openai-0123456789"]);
    let Kdf::Argon2id { salt: s1, .. } = parse(&bytes).unwrap().kdf().clone() else {
        panic!("argon2 expected")
    };
    let Kdf::Argon2id { salt: s2, .. } = parse(&rotated).unwrap().kdf().clone() else {
        panic!("argon2 expected")
    };
    assert_ne!(s1, s2, "a new master key gets a new salt");
}

#[test]
fn key_files_work_and_must_be_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let kf = dir.path().join("master.key");
    std::fs::write(&kf, "ab".repeat(32)).unwrap();
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o644)).unwrap();
    let src = KeySource::KeyFile(kf.clone());
    let e = Vault::create(&src, KdfParams::INSECURE_FAST).unwrap_err();
    assert!(e.to_string().contains("chmod 600"), "{e}");
    std::fs::set_permissions(&kf, std::fs::Permissions::from_mode(0o600)).unwrap();
    let mut v = Vault::create(&src, KdfParams::INSECURE_FAST).unwrap();
    store(&mut v, "ollama", "local-token");
    let bytes = v.to_bytes().unwrap();
    assert_eq!(read_all(&bytes, &src).unwrap(), ["local-token"]);
    std::fs::write(&kf, "cd".repeat(32)).unwrap();
    assert!(matches!(
        Vault::open(&bytes, &src),
        Err(VaultError::WrongKey)
    ));
}

#[test]
fn no_key_in_debug_or_errors() {
    let secret_key = "sk-live-very-secret-123";
    let op = VaultOp::Store {
        provider: "openai".into(),
        key: SecretString::from(secret_key.to_owned()),
    };
    let src = pass("my passphrase");
    let mut v = Vault::create(&src, KdfParams::INSECURE_FAST).unwrap();
    let printed = format!("{op:?} {src:?} {v:?}");
    v.apply(op).unwrap();
    let r = v
        .apply(VaultOp::Retrieve {
            provider: "openai".into(),
        })
        .unwrap();
    let printed = format!("{printed} {r:?} {v:?}");
    assert!(!printed.contains(secret_key), "{printed}");
    assert!(!printed.contains("my passphrase"), "{printed}");
    let bytes = v.to_bytes().unwrap();
    assert!(!bytes
        .windows(secret_key.len())
        .any(|w| w == secret_key.as_bytes()));
}

#[test]
fn atomic_writes_are_private_and_replace_whole_files() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("sub/vault");
    assert!(file::read(&path).unwrap().is_none());
    file::write_atomic(&path, b"first").unwrap();
    file::write_atomic(&path, b"second").unwrap();
    assert_eq!(file::read(&path).unwrap().unwrap(), b"second");
    let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let _guard = file::lock(&path).unwrap();
    let leftovers: Vec<_> = std::fs::read_dir(path.parent().unwrap())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(".tmp."))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
}
