//! Helpers the build-farm tests share: skipping where there is no gcc, reading the
//! `BuildUpdate` lines of `vgas build --json`, and counting where segments came from.

use std::path::Path;
use std::process::{Command, Output};

use vgas_shared::build::{BuildUpdate, Origin};

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

/// `make -s clean` in `dir`, which must succeed.
pub fn make_clean(dir: &Path) {
    ok(&Command::new("make")
        .args(["-s", "clean"])
        .current_dir(dir)
        .output()
        .expect("run make"));
}
