//! Rust builds through `vgas build -- cargo build` (cargo's `RUSTC_WRAPPER` is the `vgas`
//! binary): a workspace of four crates (a library, one that uses it and a proc-macro, the
//! proc-macro, a binary) and two crates from crates.io (`itoa`, `hex`, pinned, from cargo's
//! local registry cache, which building this project filled). Checked: the binary equals a
//! plain `cargo build`'s byte for byte, cold and from the cache; after `cargo clean` every
//! cacheable crate is a hit; a change in one crate compiles it and its dependents only; the
//! proc-macro runs here with its reason counted; a compile error reads exactly as cargo's.

use std::path::Path;
use std::process::{Command, Output};

use vgas_shared::farm::BuildUpdate;
use vgas_tests::build::{ok, origins, updates};
use vgas_tests::Swarm;

/// Crates the cache takes: alpha, beta, app, itoa, hex (not the proc-macro).
const CACHEABLE: usize = 5;

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
        "[workspace]\nmembers = [\"alpha\", \"beta\", \"mac\", \"app\"]\nresolver = \"2\"\n",
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
    write(
        dir,
        "app/Cargo.toml",
        &member("app", "beta = { path = \"../beta\" }\n", false),
    );
    write(
        dir,
        "app/src/main.rs",
        "fn main() {\n    println!(\"{} {}\", beta::answer(), beta::NAME);\n}\n",
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

fn vgas_build(swarm: &Swarm, dir: &Path) -> Output {
    let mut args = vec!["build", "--json", "--", "cargo"];
    args.extend(BUILD);
    let target = dir.join("target");
    swarm
        .cli_in(
            dir,
            &args,
            &[
                ("CARGO_TARGET_DIR", target.to_str().unwrap()),
                ("CARGO_TERM_COLOR", "never"),
            ],
        )
        .unwrap()
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
    assert_eq!(origins(&u), (0, 0, CACHEABLE), "{u:?}");
    assert!(
        here_reasons(&u).contains("proc-macro"),
        "{}",
        here_reasons(&u)
    );
    assert!(binary(&dir) == reference, "the cold build's binary differs");
    let run = Command::new(dir.join("target/release/app"))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "42 2a beta\n");
    // Warnings come through as cargo shows them.
    let stderr = String::from_utf8_lossy(&cold.stderr);
    assert!(stderr.contains("unused variable: `unused`"), "{stderr}");

    // Warm, after `cargo clean`: every cacheable crate from the cache, the same bytes, and
    // the warning replayed.
    ok(&cargo(&dir, &["clean"]));
    let warm = vgas_build(&swarm, &dir);
    let u = updates(ok(&warm));
    assert_eq!(origins(&u), (0, CACHEABLE, 0), "{u:?}");
    assert!(
        binary(&dir) == reference,
        "the cached build's binary differs"
    );
    let stderr = String::from_utf8_lossy(&warm.stderr);
    assert!(stderr.contains("unused variable: `unused`"), "{stderr}");

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
