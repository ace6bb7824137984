//! The JSON protocol as a plain NATS client speaks it: `tests/py/protocol_test.py` (nats-py,
//! installed by scripts/ensure-tools.sh) against a real swarm.

use vgas_shared::config::Role;
use vgas_tests::{repo_root, Swarm};

#[tokio::test]
async fn a_plain_nats_client_speaks_the_documented_json() {
    let python = std::env::var("VGAS_PYTHON").unwrap_or_else(|_| {
        repo_root()
            .join(".tools/venv/bin/python")
            .display()
            .to_string()
    });
    assert!(
        std::path::Path::new(&python).exists(),
        "{python} is missing: run scripts/ensure-tools.sh (it installs nats-py)"
    );
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let creds = swarm.creds(Role::Client);
    let mut py = tokio::process::Command::new(&python);
    if creds.ca.is_some() {
        py.env("VGAS_CA_FILE", swarm.state_dir().join("tls/ca.pem"));
    }
    let out = py
        .arg(repo_root().join("tests/py/protocol_test.py"))
        .env("VGAS_NATS_URL", swarm.url())
        .env(
            "VGAS_NKEY_SEED",
            creds.seed.as_deref().expect("an nkey seed"),
        )
        .output()
        .await
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    println!("{text}");
    assert!(out.status.success(), "{text}");
    assert!(text.contains("protocol: 9 passed, 0 failed"), "{text}");
}
