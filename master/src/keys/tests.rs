//! `ApiKeyManager` against real files: concurrency, reloads, refusals that change nothing.

use std::sync::Arc;

use secrecy::ExposeSecret;

use super::*;

fn cfg(dir: &Path, pass: &str) -> KeyConfig {
    KeyConfig {
        vault_path: dir.join("vault"),
        source: Some(KeySource::Passphrase(SecretString::from(pass.to_owned()))),
        params: KdfParams::INSECURE_FAST,
        llm_config_path: dir.join("llm.toml"),
        audit_path: Some(dir.join("audit.log")),
    }
}

fn manager(dir: &Path, pass: &str) -> ApiKeyManager {
    ApiKeyManager::new(cfg(dir, pass), UsageBook::in_memory()).unwrap()
}

fn store(m: &ApiKeyManager, provider: &str, key: &str) -> Result<VaultResult, VaultError> {
    m.vault_operation(VaultOp::Store {
        provider: provider.into(),
        key: SecretString::from(key.to_owned()),
    })
}

#[test]
fn thirty_two_concurrent_writers_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let m = Arc::new(manager(dir.path(), "pw"));
    store(&m, "seed", "seed-key").unwrap();
    // Two managers on one file, as the master and a CLI would be: the file lock serializes
    // them, the mutex serializes threads within each.
    let other = Arc::new(manager(dir.path(), "pw"));
    let threads: Vec<_> = (0..32)
        .map(|i| {
            let m = if i % 2 == 0 { m.clone() } else { other.clone() };
            std::thread::spawn(move || {
                store(&m, &format!("p{i}"), &format!("key-{i}")).unwrap();
                m.vault_operation(VaultOp::Rotate {
                    provider: format!("p{i}"),
                    new_key: SecretString::from(format!("key-{i}-v2")),
                })
                .unwrap();
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let fresh = manager(dir.path(), "pw");
    let VaultResult::Listed(list) = fresh.vault_operation(VaultOp::List).unwrap() else {
        panic!("list")
    };
    assert_eq!(list.len(), 33);
    for i in 0..32 {
        let k = fresh.get_decrypted_key(&format!("p{i}")).unwrap();
        assert_eq!(k.expose_secret(), format!("key-{i}-v2"));
    }
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert_eq!(
        audit.lines().filter(|l| l.contains("\"rotate\"")).count(),
        32
    );
    assert!(!audit.contains("key-1"), "the audit log holds no key");
}

#[test]
fn a_change_by_another_process_is_seen() {
    let dir = tempfile::tempdir().unwrap();
    let master = manager(dir.path(), "pw");
    let e = master.get_decrypted_key("openai").unwrap_err();
    assert!(e.to_string().contains("vgas vault store"), "{e}");
    let cli = manager(dir.path(), "pw");
    store(&cli, "openai", "sk-one").unwrap();
    // A missing provider forces a reread at once.
    assert_eq!(
        master.get_decrypted_key("openai").unwrap().expose_secret(),
        "sk-one"
    );
    cli.vault_operation(VaultOp::Rotate {
        provider: "openai".into(),
        new_key: SecretString::from("sk-two".to_owned()),
    })
    .unwrap();
    // A rotated key is seen after the next metadata check.
    master.last_check_ms.store(1, Ordering::Relaxed);
    assert_eq!(
        master.get_decrypted_key("openai").unwrap().expose_secret(),
        "sk-two"
    );
}

#[test]
fn wrong_passphrase_or_damage_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let good = manager(dir.path(), "right");
    store(&good, "openai", "sk-keep").unwrap();
    let before = std::fs::read(dir.path().join("vault")).unwrap();
    let bad = manager(dir.path(), "wrong");
    let e = store(&bad, "anthropic", "x").unwrap_err();
    assert!(matches!(e, VaultError::WrongKey), "{e}");
    assert!(matches!(
        bad.get_decrypted_key("openai"),
        Err(VaultError::Unusable { .. })
    ));
    assert_eq!(std::fs::read(dir.path().join("vault")).unwrap(), before);

    let mut damaged = before.clone();
    // A byte of the last entry's ciphertext, just before the 28-byte seal (nonce + tag).
    let at = damaged.len() - 28 - 3;
    damaged[at] ^= 0x10;
    std::fs::write(dir.path().join("vault"), &damaged).unwrap();
    let e = store(&good, "anthropic", "x").unwrap_err();
    assert_eq!(e.kind(), vgas_shared::vault::VaultErrorKind::Damaged, "{e}");
    assert_eq!(std::fs::read(dir.path().join("vault")).unwrap(), damaged);
    let audit = std::fs::read_to_string(dir.path().join("audit.log")).unwrap();
    assert!(
        audit.contains("\"outcome\":\"error: wrong passphrase"),
        "{audit}"
    );
}

#[test]
fn no_passphrase_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut c = cfg(dir.path(), "x");
    c.source = None;
    let m = ApiKeyManager::new(c, UsageBook::in_memory()).unwrap();
    let e = store(&m, "openai", "k").unwrap_err();
    assert!(e.to_string().contains("VGAS_VAULT_PASSPHRASE"), "{e}");
    assert!(!dir.path().join("vault").exists());
}

#[tokio::test]
async fn quota_uses_recorded_spend() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("llm.toml"),
        "[providers.openai]\nkind = 'openai'\nbase_url = 'http://127.0.0.1:1/v1'\n\
         [providers.openai.limits]\ndaily_budget_usd = 0.001\n\
         [prices.openai.m]\ninput = 1.0\noutput = 1.0\n",
    )
    .unwrap();
    let m = manager(dir.path(), "pw");
    let p = m.check_quota_availability("openai", "m", 100, 100).unwrap();
    let used = TokenUsage {
        input_tokens: 600,
        output_tokens: 300,
        cached_tokens: 0,
    };
    assert_eq!(
        m.update_usage_stats("openai", "m", &used, true, Some(&p))
            .await
            .unwrap(),
        900
    );
    drop(p);
    let r = m
        .check_quota_availability("openai", "m", 100, 100)
        .unwrap_err();
    assert_eq!(r.limit, quota::QuotaLimit::DailyBudget);
    let report = m.usage_report();
    assert_eq!(report.rows[0].cost_usd, 0.0009);
    assert_eq!(report.providers[0].daily_budget_usd, Some(0.001));
}
