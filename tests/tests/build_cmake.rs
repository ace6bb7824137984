//! A real CMake project built with Ninja, the way CMake users plug in ccache or sccache: the
//! `vgas` binary as `CMAKE_C_COMPILER_LAUNCHER`, the build run by `vgas build -- ninja`.
//! json-c 0.16 (fetched from Debian's source packages by `scripts/fetch-c-project.sh`, a
//! Release build with the project's own `-Werror` and CMake's `-MD -MT -MF` dependency
//! files): every compile unit goes to a worker, the objects and the shared library are
//! byte-identical to a plain local build in the same directory, and after `ninja -t clean`
//! every unit comes from the cache, in direct mode (no preprocessing) although ninja deletes
//! each dependency file as soon as its compile returns.

use std::path::{Path, PathBuf};
use std::process::Command;

use vgas_shared::farm::BuildUpdate;
use vgas_tests::build::{
    c_project, cold_then_cached, finished_stats as stats, object_count, ok, outputs,
    skip_without_gcc, updates,
};
use vgas_tests::{bin, Swarm};

/// CMake and Ninja as `scripts/ensure-tools.sh` installs them (`.tools/env`).
fn tool(var: &str) -> Option<PathBuf> {
    let p = PathBuf::from(std::env::var_os(var)?);
    p.is_file().then_some(p)
}

/// Configures json-c in `build` (Release, no tests), with `launcher` as the compiler launcher.
fn configure(cmake: &Path, ninja: &Path, tree: &Path, build: &Path, launcher: Option<&Path>) {
    let mut cmd = Command::new(cmake);
    cmd.arg("-S")
        .arg(tree)
        .arg("-B")
        .arg(build)
        .args([
            "-G",
            "Ninja",
            "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_TESTING=OFF",
        ])
        .arg(format!("-DCMAKE_MAKE_PROGRAM={}", ninja.display()));
    if let Some(l) = launcher {
        cmd.arg(format!("-DCMAKE_C_COMPILER_LAUNCHER={}", l.display()));
    }
    ok(&cmd.output().unwrap());
}

#[tokio::test]
async fn a_cmake_ninja_project_distributes_every_unit_through_the_compiler_launcher() {
    if skip_without_gcc() {
        return;
    }
    let (Some(cmake), Some(ninja)) = (tool("VGAS_CMAKE"), tool("VGAS_NINJA")) else {
        eprintln!(
            "SKIPPED: no VGAS_CMAKE/VGAS_NINJA (run scripts/ensure-tools.sh, source .tools/env)"
        );
        return;
    };
    let tree = c_project("json-c");
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 2), ("w2", 2)]).await.unwrap();
    let build = swarm.dir.path().join("build");

    // The reference: a plain local build, in the directory the vgas build will use.
    configure(&cmake, &ninja, &tree, &build, None);
    ok(&Command::new(&ninja).current_dir(&build).output().unwrap());
    let local = outputs(&build);
    let units = object_count(&local);
    assert!(units >= 20, "json-c has {units} units");
    std::fs::remove_dir_all(&build).unwrap();

    configure(&cmake, &ninja, &tree, &build, Some(&bin("vgas")));
    let run = || {
        let out = swarm
            .cli_in(
                &build,
                &["build", "--json", "--", ninja.to_str().unwrap()],
                &[],
            )
            .unwrap();
        updates(ok(&out))
    };
    // After `ninja -t clean`, every unit comes from the cache.
    let clean = || {
        ok(&Command::new(&ninja)
            .args(["-t", "clean"])
            .current_dir(&build)
            .output()
            .unwrap());
    };
    let cold = cold_then_cached(&build, &local, units, run, clean);
    clean();
    let direct = run()
        .iter()
        .filter(|u| matches!(u, BuildUpdate::Cached { direct: true, .. }))
        .count();
    assert_eq!(direct, units, "every hit in direct mode");
    let s = stats(&cold);
    assert!(
        s.here_reasons
            .keys()
            .all(|r| r == "a link or another call without -c"),
        "only links ran here: {s:?}"
    );
}
