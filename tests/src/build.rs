//! Helpers the build-farm tests share: skipping where there is no gcc, reading the
//! `BuildUpdate` lines of `vgas build --json`, and counting where segments came from.

use std::path::Path;
use std::process::{Command, Output};

use vgas_shared::farm::{BuildUpdate, Origin};

/// True (and says so) when there is no gcc to build with.
pub fn skip_without_gcc() -> bool {
    let missing = Command::new("gcc").arg("--version").output().is_err();
    if missing {
        eprintln!("SKIPPED: no gcc on PATH");
    }
    missing
}

/// `out`, after asserting that it succeeded (printing both streams if not).
pub fn ok(out: &Output) -> &Output {
    assert!(
        out.status.success(),
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// The `BuildUpdate`s of `vgas build --json` output.
pub fn updates(out: &Output) -> Vec<BuildUpdate> {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| l.starts_with('{'))
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// Segments finished (on a worker, from the cache, here).
pub fn origins(u: &[BuildUpdate]) -> (usize, usize, usize) {
    let mut n = (0, 0, 0);
    for x in u {
        if let BuildUpdate::Done { origin, .. } = x {
            match origin {
                Origin::Worker { .. } => n.0 += 1,
                Origin::Cache => n.1 += 1,
                Origin::Local { .. } => n.2 += 1,
            }
        }
    }
    n
}

/// `make ARGS...` in `dir`, which must succeed.
pub fn make(dir: &Path, args: &[&str]) {
    ok(&Command::new("make")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run make"));
}

/// `make -s clean` in `dir`, which must succeed.
pub fn make_clean(dir: &Path) {
    make(dir, &["-s", "clean"]);
}

/// Submits `plan` (JSON, as a plain client would) with build id `id`, checks it is accepted,
/// and returns its `finished` update and every update before it (90 s at most).
pub async fn run_plan(
    client: &async_nats::Client,
    id: &str,
    plan: &serde_json::Value,
) -> (serde_json::Value, Vec<serde_json::Value>) {
    use futures::StreamExt as _;
    let mut sub = client
        .subscribe(format!("vgas.build.{id}.updates"))
        .await
        .expect("subscribe to the updates");
    let reply = client
        .request(
            "vgas.build.submit",
            serde_json::to_vec(plan).expect("json").into(),
        )
        .await
        .expect("submit the plan");
    let accepted: serde_json::Value = serde_json::from_slice(&reply.payload).expect("a JSON reply");
    assert_eq!(accepted["build_id"], id, "{accepted}");
    tokio::time::timeout(std::time::Duration::from_secs(90), async {
        let mut seen = Vec::new();
        while let Some(m) = sub.next().await {
            let v: serde_json::Value = serde_json::from_slice(&m.payload).expect("a JSON update");
            if v["type"] == "finished" {
                return (v, seen);
            }
            seen.push(v);
        }
        panic!("updates ended before finished");
    })
    .await
    .expect("the plan finished in time")
}

/// Fetches the binary a plan linked (`object` in the artifacts bucket) to `path`, executable.
pub async fn fetch_binary(client: &async_nats::Client, object: &str, path: &Path) {
    use std::os::unix::fs::PermissionsExt as _;
    use tokio::io::AsyncReadExt as _;
    let js = async_nats::jetstream::new(client.clone());
    let store = js
        .get_object_store("vgas_artifacts")
        .await
        .expect("the artifacts bucket");
    let mut r = store.get(object).await.expect("the binary");
    let mut bytes = Vec::new();
    r.read_to_end(&mut bytes).await.expect("read the binary");
    std::fs::write(path, &bytes).expect("write the binary");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// A real third-party project, fetched unmodified and pinned (once per machine) by
/// `scripts/fetch-c-project.sh NAME`; its tree.
pub fn c_project(name: &str) -> std::path::PathBuf {
    let out = Command::new(crate::repo_root().join("scripts/fetch-c-project.sh"))
        .arg(name)
        .output()
        .expect("run scripts/fetch-c-project.sh");
    assert!(
        out.status.success(),
        "scripts/fetch-c-project.sh {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let path = String::from_utf8(out.stdout).expect("a path");
    std::path::PathBuf::from(path.lines().last().expect("a path").trim())
}

/// Every object and shared library under `dir`, by relative path, with its bytes.
pub fn outputs(dir: &Path) -> Vec<(std::path::PathBuf, Vec<u8>)> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().flatten() {
            let p = e.path();
            let name = p.file_name().unwrap().to_string_lossy().into_owned();
            if e.file_type().unwrap().is_dir() {
                stack.push(p);
            } else if (name.ends_with(".o") || name.contains(".so"))
                && e.file_type().unwrap().is_file()
            {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                found.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    found.sort();
    found
}

/// The stats of a build's `finished` update, which must be the last.
pub fn finished_stats(u: &[BuildUpdate]) -> vgas_shared::farm::BuildStats {
    match u.last() {
        Some(BuildUpdate::Finished { stats, .. }) => stats.clone(),
        other => panic!("no final update: {other:?}"),
    }
}

/// How many objects (`.o`) `outputs` lists.
pub fn object_count(outputs: &[(std::path::PathBuf, Vec<u8>)]) -> usize {
    outputs
        .iter()
        .filter(|(p, _)| p.extension().is_some_and(|e| e == "o"))
        .count()
}

/// A real project through `vgas build`: the cold build (`run`) puts all `units` on workers,
/// `clean` is the project's own clean, and the rebuild takes every unit from the cache; after
/// each, the objects and libraries under `dir` are `local`'s, byte for byte. The cold build's
/// updates, for more checks.
pub fn cold_then_cached(
    dir: &Path,
    local: &[(std::path::PathBuf, Vec<u8>)],
    units: usize,
    run: impl Fn() -> Vec<BuildUpdate>,
    clean: impl Fn(),
) -> Vec<BuildUpdate> {
    let cold = run();
    assert_eq!(
        origins(&cold),
        (units, 0, 0),
        "every unit on a worker: {cold:?}"
    );
    assert_eq!(outputs(dir), local, "objects differ from a local build");
    clean();
    let warm = run();
    assert_eq!(
        origins(&warm),
        (0, units, 0),
        "every unit from the cache: {warm:?}"
    );
    assert_eq!(outputs(dir), local, "a rebuild from the cache differs");
    cold
}
