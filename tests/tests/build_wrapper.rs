//! The compiler wrapper on its own, without `vgas build` around it: `vgas cc` by hand compiles
//! on a worker (its updates on the build subject it is given), finds the unit in the cache
//! the second time without preprocessing, keeps the compiler's exit code and diagnostics, and
//! compiles alone when the helper socket it is told of does not answer.

use std::process::{Command, Output};
use std::time::Duration;

use futures::StreamExt;
use vgas_tests::build::skip_without_gcc;
use vgas_tests::Swarm;

/// The `type` and `origin` of every update received within a short while.
async fn drain(sub: &mut async_nats::Subscriber) -> Vec<serde_json::Value> {
    let mut out = Vec::new();
    while let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(500), sub.next()).await {
        out.push(serde_json::from_slice(&m.payload).unwrap());
    }
    out
}

fn done_origins(u: &[serde_json::Value]) -> Vec<String> {
    u.iter()
        .filter(|v| v["type"] == "done")
        .map(|v| v["origin"]["from"].as_str().unwrap().to_owned())
        .collect()
}

#[tokio::test]
async fn vgas_cc_by_hand_compiles_on_the_swarm_and_hits_the_cache() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let dir = swarm.dir.path().join("byhand");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("u.c"), "int u(int x) { return x * 3; }\n").unwrap();
    std::fs::write(dir.join("bad.c"), "int bad(void) { return nope; }\n").unwrap();
    let local = Command::new("gcc")
        .args(["-O2", "-c", "u.c", "-o", "u-local.o"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(local.success());
    let mut sub = client.subscribe("vgas.build.byhand.updates").await.unwrap();
    client.flush().await.unwrap();
    let cc = |args: &[&str], env: &[(&str, &str)]| -> Output {
        let mut all = vec!["cc"];
        all.extend_from_slice(args);
        let mut env = env.to_vec();
        env.push(("VGAS_BUILD_ID", "byhand"));
        swarm.cli_in(&dir, &all, &env).unwrap()
    };

    let first = cc(&["-O2", "-c", "u.c", "-o", "u.o"], &[]);
    assert!(first.status.success(), "{first:?}");
    assert_eq!(done_origins(&drain(&mut sub).await), ["worker"]);
    assert_eq!(
        std::fs::read(dir.join("u.o")).unwrap(),
        std::fs::read(dir.join("u-local.o")).unwrap()
    );

    // Again, told of a helper that is not there: it compiles alone, from the cache, directly.
    std::fs::remove_file(dir.join("u.o")).unwrap();
    let again = cc(
        &["-O2", "-c", "u.c", "-o", "u.o"],
        &[("VGAS_BUILD_HELPER", "/nonexistent/helper.sock")],
    );
    assert!(again.status.success(), "{again:?}");
    let u = drain(&mut sub).await;
    assert_eq!(done_origins(&u), ["cache"], "{u:?}");
    assert!(
        u.iter()
            .any(|v| v["type"] == "cached" && v["direct"] == true),
        "{u:?}"
    );
    assert!(dir.join("u.o").exists());

    // A compile error keeps the compiler's exit code and message, and writes no object.
    let bad = cc(&["-c", "bad.c", "-o", "bad.o"], &[]);
    assert_eq!(bad.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&bad.stderr);
    assert!(
        stderr.contains("bad.c:1:") && stderr.contains("nope"),
        "{stderr}"
    );
    assert!(!dir.join("bad.o").exists());
}

/// `vgas-cc`, the small wrapper binary the links of `vgas build` point at: what its fast path
/// declines (here: no helper to hand the unit to) goes to the full `vgas` beside it, which
/// compiles on the worker; a call that is not a compile runs the real compiler; and pointed at
/// itself as the full binary it stops with a clear error instead of executing itself in a loop.
#[tokio::test]
async fn the_small_wrapper_hands_what_it_declines_to_vgas() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let dir = swarm.dir.path().join("small");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("s.c"), "int s(int x) { return x + 7; }\n").unwrap();
    let local = Command::new("gcc")
        .args(["-O2", "-c", "s.c", "-o", "s-local.o"])
        .current_dir(&dir)
        .status()
        .unwrap();
    assert!(local.success());
    let mut sub = client.subscribe("vgas.build.small.updates").await.unwrap();
    client.flush().await.unwrap();

    let env = [("VGAS_BUILD_ID", "small")];
    let out = swarm
        .bin_in(
            "vgas-cc",
            &dir,
            &["cc", "-O2", "-c", "s.c", "-o", "s.o"],
            &env,
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(done_origins(&drain(&mut sub).await), ["worker"]);
    assert_eq!(
        std::fs::read(dir.join("s.o")).unwrap(),
        std::fs::read(dir.join("s-local.o")).unwrap()
    );

    // As a masquerade link, a call that is not a compile is the real compiler's.
    let link = dir.join("gcc");
    std::os::unix::fs::symlink(vgas_tests::bin("vgas-cc"), &link).unwrap();
    let version = Command::new(&link).arg("--version").output().unwrap();
    let real = Command::new("gcc").arg("--version").output().unwrap();
    assert!(version.status.success(), "{version:?}");
    assert_eq!(version.stdout, real.stdout);

    let me = vgas_tests::bin("vgas-cc");
    let looped = swarm
        .bin_in(
            "vgas-cc",
            &dir,
            &["cc", "-c", "s.c", "-o", "s2.o"],
            &[("VGAS_BIN", me.to_str().unwrap())],
        )
        .unwrap();
    assert_eq!(looped.status.code(), Some(127), "{looped:?}");
    assert!(
        String::from_utf8_lossy(&looped.stderr).contains("cannot find the vgas binary"),
        "{looped:?}"
    );
}
