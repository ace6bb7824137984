//! A process killed (SIGKILL) in the middle of vault writes leaves a vault that opens, with
//! a key that was fully written: atomic replacement means old or new, never torn.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use secrecy::{ExposeSecret, SecretString};
use vgas_shared::vault::{file, KdfParams, KeySource, Vault, VaultOp};

const CHILD_ENV: &str = "VGAS_VAULT_CRASH_CHILD";

fn source() -> KeySource {
    KeySource::Passphrase(SecretString::from("crash test".to_owned()))
}

/// One write cycle, the way `ApiKeyManager` does it: lock, read, rotate, atomic write.
fn rotate_once(path: &Path, i: u64) {
    let _lock = file::lock(path).unwrap();
    let bytes = file::read(path).unwrap().unwrap();
    let mut v = Vault::open(&bytes, &source()).unwrap();
    // A long key makes each write big enough to be caught mid-way.
    let key = format!("key-{i}-{}", "x".repeat(12 * 1024));
    v.apply(VaultOp::Rotate {
        provider: "openai".into(),
        new_key: SecretString::from(key),
    })
    .unwrap();
    v.apply(VaultOp::Purge {
        provider: "openai".into(),
    })
    .unwrap();
    file::write_atomic(path, &v.to_bytes().unwrap()).unwrap();
}

/// The child: rotate forever until killed. It does nothing unless started by the test below.
#[test]
fn crash_child_writer() {
    let Some(path) = std::env::var_os(CHILD_ENV) else {
        return;
    };
    let path = Path::new(&path);
    for i in 1.. {
        rotate_once(path, i);
    }
}

#[test]
fn killing_a_writer_mid_write_leaves_a_readable_vault() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("vault");
    let mut v = Vault::create(&source(), KdfParams::INSECURE_FAST).unwrap();
    v.apply(VaultOp::Store {
        provider: "openai".into(),
        key: SecretString::from("key-0".to_owned()),
    })
    .unwrap();
    file::write_atomic(&path, &v.to_bytes().unwrap()).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut last_version = 1;
    for round in 0..12u64 {
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, &path)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
        // Let it get going, then kill it at a different moment each round.
        let start = Instant::now();
        while start.elapsed() < Duration::from_millis(40 + round * 17) {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        let status = child.wait().unwrap();
        assert!(!status.success(), "the writer ended by itself");
        let bytes = file::read(&path).unwrap().unwrap();
        let v = Vault::open(&bytes, &source()).expect("the vault opens after a kill");
        let (version, key) = v.retrieve("openai").unwrap();
        let key = key.expose_secret();
        assert!(key.starts_with("key-"), "a whole key, not a torn one");
        assert!(version >= last_version, "versions never go back");
        last_version = version;
    }
    assert!(
        last_version > 1,
        "the writer never completed a write; the test proved nothing"
    );
}
