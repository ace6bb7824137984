//! The build farm through real processes: `vgas build -- make` with the wrapper, a
//! compilation database, and a JSON `BuildPlan` from a plain NATS client each give a binary
//! that runs and is byte-identical to a local build; a compile error names its file and line
//! and quotes it like a local compile; the cache cases (no change, one change, a flag change,
//! a compiler change); a worker SIGKILLed mid-segment; no capable worker at all.

use std::path::{Path, PathBuf};
use std::process::Command;

use vgas_shared::farm::{BuildUpdate, Origin};
use vgas_tests::build::{
    fetch_binary, make_clean, ok, origins, run_plan, skip_without_gcc, updates,
};
use vgas_tests::{repo_root, Swarm};

/// A copy of the test project `tests/c/calc` in a fresh directory.
fn project(swarm: &Swarm, name: &str) -> PathBuf {
    let dir = swarm.dir.path().join(name);
    std::fs::create_dir_all(dir.join("inc")).unwrap();
    let src = repo_root().join("tests/c/calc");
    for f in ["Makefile", "main.c", "calc.c", "fmt.c", "inc/calc.h"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

/// The binary a plain local `make` builds from the same project.
fn local_build(swarm: &Swarm) -> Vec<u8> {
    let dir = project(swarm, "local");
    let out = Command::new("make")
        .arg("-s")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    std::fs::read(dir.join("app")).unwrap()
}

fn run_app(path: &Path) -> String {
    let out = Command::new(path).output().unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[tokio::test]
async fn wrapper_builds_on_workers_and_the_cache_serves_every_rebuild() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 2), ("w2", 2)]).await.unwrap();
    let local = local_build(&swarm);
    let dir = project(&swarm, "wrapped");
    let build = |extra: &[(&str, &str)]| {
        swarm
            .cli_in(&dir, &["build", "--json", "--", "make", "-j4"], extra)
            .unwrap()
    };

    // Clean build: every unit on a worker, a binary identical to the local one.
    let first = build(&[]);
    let u = updates(ok(&first));
    assert_eq!(origins(&u), (3, 0, 0), "{u:?}");
    assert_eq!(
        std::fs::read(dir.join("app")).unwrap(),
        local,
        "binary differs from a local build"
    );
    assert_eq!(run_app(&dir.join("app")), "norm 13.000 fib 12586269025\n");
    match u.last() {
        Some(BuildUpdate::Finished {
            exit_code: 0,
            stats,
            ..
        }) => {
            assert_eq!((stats.remote, stats.cache_misses), (3, 3), "{stats:?}")
        }
        other => panic!("no final update: {other:?}"),
    }

    // No change after `make clean`: nothing compiles.
    make_clean(&dir);
    let u = updates(ok(&build(&[])));
    assert_eq!(origins(&u), (0, 3, 0), "{u:?}");
    assert!(
        u.iter()
            .filter(|x| matches!(x, BuildUpdate::Cached { .. }))
            .all(|x| matches!(x, BuildUpdate::Cached { direct: true, .. })),
        "no-change hits come from the manifests, without preprocessing: {u:?}"
    );
    assert_eq!(std::fs::read(dir.join("app")).unwrap(), local);

    // A header every unit includes changes: its manifests no longer match; all compile.
    let header = dir.join("inc/calc.h");
    let text = std::fs::read_to_string(&header).unwrap();
    std::fs::write(
        &header,
        text.replace("#endif", "#define CALC_VERSION 2\n#endif"),
    )
    .unwrap();
    make_clean(&dir);
    let u = updates(ok(&build(&[])));
    assert_eq!(origins(&u), (3, 0, 0), "a changed header is a miss: {u:?}");
    // Back as it was: the first objects are still in the cache (found after preprocessing,
    // since the manifests now name the changed header's bytes).
    std::fs::write(&header, &text).unwrap();
    make_clean(&dir);
    let u = updates(ok(&build(&[])));
    assert_eq!(origins(&u), (0, 3, 0), "{u:?}");
    assert_eq!(std::fs::read(dir.join("app")).unwrap(), local);

    // One file changed: one segment compiles.
    let calc = dir.join("calc.c");
    let text = std::fs::read_to_string(&calc).unwrap();
    std::fs::write(
        &calc,
        text.replace("long a = 0, b = 1;", "long a = 0, b = 1; /* changed */\n"),
    )
    .unwrap();
    make_clean(&dir);
    let u = updates(ok(&build(&[])));
    assert_eq!(origins(&u), (1, 2, 0), "{u:?}");

    // A flag that shapes the object: every segment misses.
    make_clean(&dir);
    let u = updates(ok(&build(&[("CFLAGS", "-O1 -Wall")])));
    assert_eq!(origins(&u), (3, 0, 0), "{u:?}");

    // Another compiler (a wrapper script is another identity, and no worker has it): every
    // segment misses and, with no capable worker, compiles here, in place; the report says so.
    let alt = dir.join("othercc");
    std::fs::write(&alt, "#!/bin/sh\nexec gcc \"$@\"\n").unwrap();
    Command::new("chmod")
        .args(["755"])
        .arg(&alt)
        .status()
        .unwrap();
    make_clean(&dir);
    let out = build(&[("CC", alt.to_str().unwrap())]);
    let u = updates(ok(&out));
    assert_eq!(origins(&u), (0, 0, 3), "{u:?}");
    let reason = u.iter().find_map(|x| match x {
        BuildUpdate::Done {
            origin: Origin::Local { reason },
            ..
        } => Some(reason.clone()),
        _ => None,
    });
    assert!(
        reason.unwrap().contains("no worker has this compiler"),
        "{u:?}"
    );
    assert_eq!(run_app(&dir.join("app")), "norm 13.000 fib 12586269025\n");
}

#[tokio::test]
async fn compile_errors_name_file_and_line_like_a_local_compile() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let dir = project(&swarm, "broken");
    let fmt = dir.join("fmt.c");
    let text = std::fs::read_to_string(&fmt).unwrap();
    std::fs::write(&fmt, text.replace("return buf;", "return buf\n")).unwrap();
    let local = Command::new("gcc")
        .args(["-O2", "-Wall", "-Iinc", "-c", "fmt.c", "-o", "/dev/null"])
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(!local.status.success());
    let out = swarm
        .cli_in(&dir, &["build", "--json", "--", "make", "-k", "fmt.o"], &[])
        .unwrap();
    assert!(!out.status.success(), "a compile error fails the build");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&*String::from_utf8_lossy(&local.stderr)),
        "the swarm's diagnostics differ from the local compiler's:\nlocal:\n{}\nvgas:\n{stderr}",
        String::from_utf8_lossy(&local.stderr)
    );
    assert!(stderr.contains("fmt.c:7:"), "{stderr}");
    let u = updates(&out);
    assert!(
        u.iter().any(|x| matches!(x, BuildUpdate::Failed { origin: Origin::Worker { .. }, exit_code, .. } if *exit_code != 0)),
        "the error is a result from the worker, not a fallback: {u:?}"
    );
}

#[tokio::test]
async fn a_compilation_database_builds_and_links_here() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let local = local_build(&swarm);
    let dir = project(&swarm, "compdb");
    let entries: Vec<serde_json::Value> = ["main", "calc", "fmt"]
        .iter()
        .map(|u| {
            serde_json::json!({
                "directory": dir,
                "file": format!("{u}.c"),
                "command": format!("cc -O2 -Wall -Iinc -c {u}.c -o {u}.o"),
            })
        })
        .collect();
    std::fs::write(
        dir.join("compile_commands.json"),
        serde_json::to_vec(&entries).unwrap(),
    )
    .unwrap();
    let out = swarm
        .cli_in(
            &dir,
            &[
                "build",
                "--json",
                "--compdb",
                "compile_commands.json",
                "--link",
                "cc -O2 -Wall {objects} -lm",
                "-o",
                "app",
            ],
            &[],
        )
        .unwrap();
    let u = updates(ok(&out));
    assert_eq!(origins(&u).0, 3, "{u:?}");
    assert_eq!(std::fs::read(dir.join("app")).unwrap(), local);

    // A database that is not one is refused and changes nothing.
    std::fs::write(dir.join("bad.json"), "{\"not\": \"a list\"}").unwrap();
    let out = swarm
        .cli_in(&dir, &["build", "--compdb", "bad.json", "-o", "x"], &[])
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a compilation database"));
    assert!(!dir.join("x").exists());
}

#[tokio::test]
async fn a_json_plan_from_a_plain_client_builds_a_binary() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let plan = serde_json::json!({
        "build_id": "plan-1",
        "compiler": {"toolchain": "gcc", "version": ">=4"},
        "args": ["-O2"],
        "segments": [
            {"name": "main.c", "source": {"text": "int twice(int);\nint main(void){return twice(21) - 42;}\n"}},
            {"name": "twice.c", "source": {"text": "int twice(int x){return 2*x;}\n"}}
        ],
        "link": {"output": "app"}
    });
    let (finished, _) = run_plan(&client, "plan-1", &plan).await;
    assert_eq!(finished["exit_code"], 0, "{finished}");
    let path = swarm.dir.path().join("plan-app");
    fetch_binary(
        &client,
        finished["binary"]["object"].as_str().unwrap(),
        &path,
    )
    .await;
    assert_eq!(Command::new(&path).status().unwrap().code(), Some(0));

    // Bad plans are refused with a reason and start nothing.
    for bad in [
        serde_json::json!({"compiler": {"toolchain": "tcc"}, "segments": [{"name": "a.c", "source": {"text": "int x;"}}]}),
        serde_json::json!({"compiler": {"toolchain": "gcc"}, "segments": []}),
        serde_json::json!({"compiler": {"toolchain": "gcc", "version": ">=99"}, "segments": [{"name": "a.c", "source": {"text": "int x;"}}]}),
        serde_json::json!({"compiler": {"toolchain": "gcc"}, "segments": [{"name": "a.c", "source": {"text": "x"}}], "link": {"output": "../../x"}}),
    ] {
        let reply = client
            .request(
                "vgas.build.submit",
                serde_json::to_vec(&bad).unwrap().into(),
            )
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert!(v["error"]["message"].as_str().is_some(), "{bad} -> {v}");
    }
}

/// A unit that takes seconds to compile at -O2: many functions with loops to unroll.
fn slow_source() -> String {
    let mut s = String::from("#include <stdio.h>\n");
    for i in 0..1500 {
        s.push_str(&format!(
            "long f{i}(long x) {{ long s = 0; for (int j = 0; j < 64; j++) {{ s += (x ^ j) * {i} + (s >> 3); if (s & 1) s -= j; }} return s; }}\n"
        ));
    }
    s.push_str("int main(void) { long t = 0;\n");
    for i in (0..1500).step_by(100) {
        s.push_str(&format!("t += f{i}(t);\n"));
    }
    s.push_str("printf(\"%ld\\n\", t & 0xff); return 0; }\n");
    s
}

#[tokio::test]
async fn a_worker_killed_mid_segment_has_it_run_again_on_another() {
    lose_a_worker_mid_segment(libc::SIGKILL).await;
}

/// A stalled worker (stopped: no heartbeats, no result) is the same fault as a dead one.
#[tokio::test]
async fn a_worker_stalled_mid_segment_has_it_run_again_on_another() {
    lose_a_worker_mid_segment(libc::SIGSTOP).await;
}

async fn lose_a_worker_mid_segment(sig: i32) {
    if skip_without_gcc() {
        return;
    }
    use std::io::BufRead as _;
    let (swarm, procs, _client) = Swarm::with_workers(&[("w1", 1), ("w2", 1)]).await.unwrap();
    let dir = swarm.dir.path().join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("slow.c"), slow_source()).unwrap();
    std::fs::write(
        dir.join("Makefile"),
        "slow: slow.o\n\t$(CC) -o $@ slow.o\nslow.o: slow.c\n\t$(CC) -O2 -c slow.c -o slow.o\n",
    )
    .unwrap();
    let mut child = std::process::Command::new(vgas_tests::bin("vgas"))
        .args(["build", "--json", "--", "make"])
        .env("VGAS_NATS_URL", swarm.url())
        .env("VGAS_STATE_DIR", swarm.state_dir())
        .env("VGAS_NO_MDNS", "true")
        .current_dir(&dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let lines = std::thread::spawn(move || {
        let mut seen = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            seen.push(line);
        }
        seen
    });
    // Find who compiles it, then kill that worker.
    let victim = vgas_tests::wait_for(
        "a worker compiling",
        std::time::Duration::from_secs(60),
        || async {
            let text = std::fs::read_dir(swarm.dir.path())
                .ok()?
                .filter_map(Result::ok)
                .filter(|e| e.file_name().to_string_lossy().starts_with('w'))
                .map(|e| {
                    (
                        e.file_name().to_string_lossy().into_owned(),
                        std::fs::read_to_string(e.path()).unwrap_or_default(),
                    )
                })
                .find(|(_, t)| t.contains("started"))?;
            Some(text.0)
        },
    )
    .await
    .unwrap();
    let idx = if victim.starts_with("w1") { 1 } else { 2 };
    procs[idx].signal(sig);
    let status = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    let lines = lines.join().unwrap();
    let u: Vec<BuildUpdate> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        status.status.success(),
        "{}\n{u:?}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert!(
        u.iter().any(|x| matches!(x, BuildUpdate::Retried { .. })),
        "{u:?}"
    );
    let survivor = if idx == 1 { "w2" } else { "w1" };
    assert!(
        u.iter().any(|x| matches!(x, BuildUpdate::Done { origin: Origin::Worker { worker }, .. } if worker.as_str() == survivor)),
        "the segment should finish on {survivor}: {u:?}"
    );
    assert!(Command::new(dir.join("slow")).status().unwrap().success());
    if sig == libc::SIGSTOP {
        procs[idx].signal(libc::SIGCONT);
    }
}
