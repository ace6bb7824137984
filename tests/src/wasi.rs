//! WASI programs for the tests: Zig (from the pinned PyPI package `ziglang`) compiles a C
//! program to `wasm32-wasi` and `cc` compiles it natively, so a test can compare what the
//! two write.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::repo_root;

/// The Zig binary: `VGAS_ZIG` (written into `.tools/env` by scripts/ensure-tools.sh), else the
/// one the pinned PyPI package `ziglang` put into `.tools/venv`.
pub fn zig() -> Option<PathBuf> {
    if let Ok(z) = std::env::var("VGAS_ZIG") {
        return Some(PathBuf::from(z));
    }
    let lib = repo_root().join(".tools/venv/lib");
    std::fs::read_dir(lib).ok()?.flatten().find_map(|e| {
        let z = e.path().join("site-packages/ziglang/zig");
        z.exists().then_some(z)
    })
}

/// Runs `cmd`, returning why it failed, if it did.
pub fn run_ok(cmd: &mut Command) -> Result<(), String> {
    match cmd.output() {
        Ok(o) if o.status.success() => Ok(()),
        Ok(o) => Err(format!(
            "{cmd:?}: {}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("{cmd:?}: {e}")),
    }
}

/// Compiles `tests/c/textstat.c` to wasm32-wasi with Zig and natively with `cc` into `dir`.
pub fn build_textstat(dir: &Path) -> Result<(PathBuf, PathBuf), String> {
    let src = repo_root().join("tests/c/textstat.c");
    let zig = zig().ok_or("no Zig: run scripts/ensure-tools.sh (it installs ziglang)")?;
    let (wasm, native) = (dir.join("textstat.wasm"), dir.join("textstat"));
    run_ok(
        Command::new(&zig)
            .args(["cc", "-target", "wasm32-wasi", "-O2", "-s", "-o"])
            .arg(&wasm)
            .arg(&src),
    )?;
    run_ok(
        Command::new("cc")
            .arg("-O2")
            .arg("-o")
            .arg(&native)
            .arg(&src),
    )?;
    Ok((wasm, native))
}

/// Writes `input` to `dir/input.txt`, runs the `native` textstat on it and returns the input's
/// path and what the native build wrote: the expected output of the wasm build.
pub fn native_textstat(native: &Path, dir: &Path, input: &str) -> (PathBuf, Vec<u8>) {
    let input_path = dir.join("input.txt");
    std::fs::write(&input_path, input).expect("write the input");
    run_ok(
        Command::new(native)
            .arg(&input_path)
            .arg(dir.join("native.txt"))
            .current_dir(dir),
    )
    .expect("the native build runs");
    let expected = std::fs::read(dir.join("native.txt")).expect("the native output");
    assert!(
        expected.len() > input.len(),
        "the native build wrote too little"
    );
    (input_path, expected)
}

/// [`build_textstat`], or `None` after printing why the test is skipped (no Zig or no cc).
pub fn textstat_or_skip(dir: &Path) -> Option<(PathBuf, PathBuf)> {
    match build_textstat(dir) {
        Ok(built) => Some(built),
        Err(why) => {
            eprintln!("\n*** SKIPPED: cannot build the C test program: {why} ***\n");
            None
        }
    }
}
