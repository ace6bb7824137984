//! Rust builds through `vgas build -- cargo build` (cargo's `RUSTC_WRAPPER` is the `vgas`
//! binary): a workspace of five crates (a library, one that uses it and a proc-macro, the
//! proc-macro, a library on serde's derive and serde_json, a binary) on a slice of crates.io
//! (`itoa`, `hex`, `serde` and so `syn`, `quote`, `proc-macro2` with their build scripts,
//! `serde_json`; pinned to this project's versions, from cargo's local registry cache, which
//! building this project filled). Checked: the binary equals a
//! plain `cargo build`'s byte for byte, cold and from the cache; after `cargo clean` every
//! cacheable crate is a hit; a change in one crate compiles it and its dependents only; the
//! proc-macro runs here with its reason counted; a compile error reads exactly as cargo's.
//! With workers, the library crates compile on them (the binary still equal to cargo's), and
//! a worker SIGKILLed in the middle of a crate costs the build nothing.

use std::path::Path;
use std::process::{Command, Output};

use vgas_shared::farm::{BuildUpdate, Origin};
use vgas_tests::build::{ok, origins, updates};
use vgas_tests::Swarm;

/// Crates of the workspace's own and of crates.io's the cache must take at least (alpha,
/// beta, gamma, app; itoa, hex, serde, serde_json, syn...; and build scripts).
const AT_LEAST_CACHEABLE: usize = 12;

fn write(dir: &Path, rel: &str, text: &str) {
    let p = dir.join(rel);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, text).unwrap();
}

fn member(name: &str, deps: &str, proc_macro: bool) -> String {
    let lib = if proc_macro {
        "[lib]\nproc-macro = true\n"
    } else {
        ""
    };
    format!(
        "[package]\nname = \"{name}\"\nversion = \"0.1.0\"\nedition = \"2021\"\n\n{lib}[dependencies]\n{deps}"
    )
}

fn workspace(dir: &Path) {
    write(
        dir,
        "Cargo.toml",
        "[workspace]\nmembers = [\"alpha\", \"beta\", \"gamma\", \"mac\", \"app\"]\nresolver = \"2\"\n",
    );
    write(
        dir,
        "alpha/Cargo.toml",
        &member("alpha", "itoa = \"=1.0.19\"\n", false),
    );
    write(
        dir,
        "alpha/src/lib.rs",
        "pub fn render(n: u64) -> String {\n    itoa::Buffer::new().format(n).to_owned()\n}\n",
    );
    write(dir, "mac/Cargo.toml", &member("mac", "", true));
    write(
        dir,
        "mac/src/lib.rs",
        "use proc_macro::TokenStream;\n\n#[proc_macro]\npub fn two(_: TokenStream) -> TokenStream {\n    \"2\".parse().unwrap()\n}\n",
    );
    write(
        dir,
        "beta/Cargo.toml",
        &member(
            "beta",
            "alpha = { path = \"../alpha\" }\nmac = { path = \"../mac\" }\nhex = \"=0.4.3\"\n",
            false,
        ),
    );
    write(dir, "beta/src/lib.rs", BETA);
    // A real slice of crates.io: serde with its derive (syn, quote, proc-macro2 and their
    // build scripts) and serde_json, the versions this project locks.
    write(
        dir,
        "gamma/Cargo.toml",
        &member(
            "gamma",
            "serde = { version = \"=1.0.229\", features = [\"derive\"] }\nserde_json = \"=1.0.154\"\n",
            false,
        ),
    );
    write(
        dir,
        "gamma/src/lib.rs",
        "#[derive(serde::Serialize, serde::Deserialize)]\npub struct Point {\n    pub x: i32,\n}\n\npub fn json() -> String {\n    serde_json::to_string(&Point { x: 7 }).unwrap()\n}\n",
    );
    write(
        dir,
        "app/Cargo.toml",
        &member(
            "app",
            "beta = { path = \"../beta\" }\ngamma = { path = \"../gamma\" }\n",
            false,
        ),
    );
    write(
        dir,
        "app/src/main.rs",
        "fn main() {\n    println!(\"{} {} {}\", beta::answer(), beta::NAME, gamma::json());\n}\n",
    );
}

const BETA: &str = "pub const NAME: &str = env!(\"CARGO_PKG_NAME\");\n\n\
pub fn answer() -> String {\n    let unused = 1;\n    format!(\"{} {}\", alpha::render(40 + mac::two!()), hex::encode([42u8]))\n}\n";

fn cargo(dir: &Path, args: &[&str]) -> Output {
    Command::new("cargo")
        .args(args)
        .current_dir(dir)
        .env_remove("RUSTC_WRAPPER")
        .env_remove("RUSTC_WORKSPACE_WRAPPER")
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_TERM_COLOR", "never")
        .output()
        .expect("run cargo")
}

const BUILD: &[&str] = &["build", "--release", "--offline"];

/// `vgas build --json -- cargo build --release --offline` in `dir`, not yet started.
fn vgas_build_cmd(swarm: &Swarm, dir: &Path) -> Command {
    let mut cmd = Command::new(vgas_tests::bin("vgas"));
    cmd.args(["build", "--json", "--", "cargo"])
        .args(BUILD)
        .current_dir(dir)
        .env("VGAS_NATS_URL", swarm.url())
        .env("VGAS_STATE_DIR", swarm.state_dir())
        .env("VGAS_NO_MDNS", "true")
        .env("CARGO_TARGET_DIR", dir.join("target"))
        .env("CARGO_TERM_COLOR", "never")
        .env_remove("RUSTC_WRAPPER")
        .stdin(std::process::Stdio::null());
    cmd
}

fn vgas_build(swarm: &Swarm, dir: &Path) -> Output {
    vgas_build_cmd(swarm, dir).output().expect("run vgas build")
}

fn binary(dir: &Path) -> Vec<u8> {
    std::fs::read(dir.join("target/release/app")).unwrap()
}

/// The diagnostics block of a failed cargo build: from the first `error`/`warning` line to
/// cargo's `could not compile` line.
fn diagnostics(out: &Output) -> String {
    let text = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = text
        .lines()
        .skip_while(|l| !l.starts_with("warning") && !l.starts_with("error"))
        .collect();
    let end = lines
        .iter()
        .position(|l| l.starts_with("error: could not compile"))
        .unwrap_or_else(|| panic!("no `could not compile` in {text}"));
    lines[..=end].join("\n")
}

fn here_reasons(u: &[BuildUpdate]) -> String {
    u.iter()
        .find_map(|x| match x {
            BuildUpdate::Finished { stats, .. } => Some(format!("{:?}", stats.here_reasons)),
            _ => None,
        })
        .unwrap_or_default()
}

#[tokio::test]
async fn cargo_builds_through_the_cache_byte_for_byte() {
    if Command::new("cargo").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no cargo on PATH");
        return;
    }
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let dir = swarm.dir.path().join("ws");
    workspace(&dir);

    // The reference: cargo alone.
    let plain = cargo(&dir, BUILD);
    ok(&plain);
    let reference = binary(&dir);
    ok(&cargo(&dir, &["clean"]));

    // Cold: every cacheable crate compiles here and is stored; the proc-macro runs as is.
    let cold = vgas_build(&swarm, &dir);
    let u = updates(ok(&cold));
    let (remote, cached, here) = origins(&u);
    assert_eq!((remote, cached), (0, 0), "{u:?}");
    assert!(here >= AT_LEAST_CACHEABLE, "{u:?}");
    assert!(
        here_reasons(&u).contains("proc-macro"),
        "{}",
        here_reasons(&u)
    );
    assert!(binary(&dir) == reference, "the cold build's binary differs");
    let run = Command::new(dir.join("target/release/app"))
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&run.stdout),
        "42 2a beta {\"x\":7}\n"
    );
    // Warnings come through as cargo shows them.
    let stderr = String::from_utf8_lossy(&cold.stderr);
    assert!(stderr.contains("unused variable: `unused`"), "{stderr}");

    // Warm, after `cargo clean`: every cacheable crate from the cache, the same bytes, and
    // the warning replayed.
    ok(&cargo(&dir, &["clean"]));
    let warm = vgas_build(&swarm, &dir);
    let u = updates(ok(&warm));
    assert_eq!(origins(&u), (0, here, 0), "{u:?}");
    assert!(
        binary(&dir) == reference,
        "the cached build's binary differs"
    );
    let stderr = String::from_utf8_lossy(&warm.stderr);
    assert!(
        stderr.contains("unused variable: `unused`"),
        "{stderr}\nCOLD {}\n{u:?}",
        String::from_utf8_lossy(&cold.stderr)
    );

    // One crate changed: it and its dependent compile, nothing else is even asked.
    write(&dir, "beta/src/lib.rs", &format!("{BETA}// changed\n"));
    let u = updates(ok(&vgas_build(&swarm, &dir)));
    assert_eq!(origins(&u), (0, 0, 2), "{u:?}");

    // A compile error reads as cargo's own.
    let broken = BETA.replace("40 + mac::two!()", "40 + \"x\"");
    write(&dir, "beta/src/lib.rs", &broken);
    let theirs = cargo(&dir, BUILD);
    assert!(!theirs.status.success());
    let ours = vgas_build(&swarm, &dir);
    assert!(!ours.status.success());
    assert_eq!(diagnostics(&ours), diagnostics(&theirs));

    // By hand: a probe passes straight through.
    let v = swarm.cli_in(&dir, &["rustc", "-vV"], &[]).unwrap();
    assert!(String::from_utf8_lossy(&ok(&v).stdout).starts_with("rustc "));
}

#[tokio::test]
async fn library_crates_compile_on_workers_and_the_binary_is_cargos() {
    if Command::new("cargo").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no cargo on PATH");
        return;
    }
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    // Each test worker is a host of its own (`VGAS_HOST_ID`): the crates are sent to it.
    let _w1 = swarm.worker("w1", 2, &[]).unwrap();
    let client = swarm
        .connect(vgas_shared::config::Role::Client)
        .await
        .unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let dir = swarm.dir.path().join("ws");
    workspace(&dir);
    ok(&cargo(&dir, BUILD));
    let reference = binary(&dir);
    ok(&cargo(&dir, &["clean"]));

    // Libraries that load no proc-macro go to the worker (alpha, itoa, hex, syn, serde_json
    // ...); beta and gamma load a proc-macro, app and the build scripts link: those compile
    // here, each with its reason, and nothing else does.
    let cold = vgas_build(&swarm, &dir);
    let u = updates(ok(&cold));
    let (remote, cached, here) = origins(&u);
    assert!(remote >= 6 && cached == 0 && here >= 3, "{u:?}");
    for x in &u {
        if let BuildUpdate::Done {
            origin: Origin::Local { reason },
            segment,
            ..
        } = x
        {
            assert!(
                reason.contains("loads a proc-macro") || reason.contains("links here"),
                "{segment}: {reason}"
            );
        }
    }
    assert!(
        binary(&dir) == reference,
        "the distributed build's binary differs"
    );
    // The crates compiled there are in the cache like any other.
    ok(&cargo(&dir, &["clean"]));
    let u = updates(ok(&vgas_build(&swarm, &dir)));
    assert_eq!(origins(&u), (0, remote + here, 0), "{u:?}");
    assert!(
        binary(&dir) == reference,
        "the cached build's binary differs"
    );
}

/// A library slow enough to compile that its worker can be killed in the middle.
fn slow_workspace(dir: &Path) {
    write(
        dir,
        "Cargo.toml",
        "[workspace]\nmembers = [\"slow\", \"tool\"]\nresolver = \"2\"\n",
    );
    write(dir, "slow/Cargo.toml", &member("slow", "", false));
    let mut lib = String::new();
    for i in 0..6000 {
        lib.push_str(&format!(
            "pub fn f{i}(x: u64) -> u64 {{ x.wrapping_mul({i}).rotate_left({}) ^ {i} }}\n",
            i % 63
        ));
    }
    lib.push_str("pub fn all(x: u64) -> u64 { f0(x) ^ f5999(x) }\n");
    write(dir, "slow/src/lib.rs", &lib);
    write(
        dir,
        "tool/Cargo.toml",
        &member("tool", "slow = { path = \"../slow\" }\n", false),
    );
    write(
        dir,
        "tool/src/main.rs",
        "fn main() {\n    println!(\"{}\", slow::all(7));\n}\n",
    );
}

#[tokio::test]
async fn a_worker_killed_mid_crate_costs_the_build_nothing() {
    if Command::new("cargo").arg("--version").output().is_err() {
        eprintln!("SKIPPED: no cargo on PATH");
        return;
    }
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let workers = [
        swarm.worker("w1", 1, &[]).unwrap(),
        swarm.worker("w2", 1, &[]).unwrap(),
    ];
    let client = swarm
        .connect(vgas_shared::config::Role::Client)
        .await
        .unwrap();
    swarm.wait_workers(&client, 2).await.unwrap();
    let dir = swarm.dir.path().join("slow-ws");
    slow_workspace(&dir);
    ok(&cargo(&dir, BUILD));
    let reference = std::fs::read(dir.join("target/release/tool")).unwrap();
    ok(&cargo(&dir, &["clean"]));

    // Follow the build's updates; kill the worker the slow crate starts on.
    let mut child = vgas_build_cmd(&swarm, &dir)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        use std::io::BufRead as _;
        let mut lines = Vec::new();
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            let _ = tx.send(line.clone());
            lines.push(line);
        }
        lines
    });
    let started_on = loop {
        let line = rx
            .recv_timeout(std::time::Duration::from_secs(120))
            .expect("the slow crate started on a worker");
        if let Ok(BuildUpdate::Compiling {
            segment, worker, ..
        }) = serde_json::from_str(&line)
        {
            if segment.starts_with("rust:slow") {
                break worker.to_string();
            }
        }
    };
    let victim = if started_on == "w1" { 0 } else { 1 };
    // Into the compile, then SIGKILL.
    std::thread::sleep(std::time::Duration::from_millis(300));
    workers[victim].signal(libc::SIGKILL);
    let out = child.wait_with_output().unwrap();
    let lines = reader.join().unwrap();
    assert!(
        out.status.success(),
        "{}\n{}",
        lines.join("\n"),
        String::from_utf8_lossy(&out.stderr)
    );
    let u: Vec<BuildUpdate> = lines
        .iter()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    // The slow crate ended once, on the other worker or here, after a retry or a fallback.
    let slow_done: Vec<_> = u
        .iter()
        .filter(
            |x| matches!(x, BuildUpdate::Done { segment, .. } if segment.starts_with("rust:slow")),
        )
        .collect();
    assert_eq!(slow_done.len(), 1, "{u:?}");
    // The kill landed in the compile: the crate was tried again, or compiled here.
    let moved = u.iter().any(
        |x| matches!(x, BuildUpdate::Retried { segment, .. } if segment.starts_with("rust:slow")),
    ) || matches!(
        slow_done[0],
        BuildUpdate::Done {
            origin: Origin::Local { .. },
            ..
        }
    );
    assert!(moved, "{u:?}");
    let run = Command::new(dir.join("target/release/tool"))
        .output()
        .unwrap();
    assert!(run.status.success());
    assert!(
        std::fs::read(dir.join("target/release/tool")).unwrap() == reference,
        "the binary differs from cargo's"
    );
}
