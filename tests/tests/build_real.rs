//! The build farm on real code: a third-party C project with its own Makefile (Lua 5.4.4, 34
//! translation units, fetched from Debian's source packages by `scripts/fetch-c-project.sh`)
//! built through `vgas build -- make` and its binary run; and a `-Werror` build whose local
//! compile passes only because of what full preprocessing loses (a fall-through comment, a
//! system header's exemptions): distributed, it must pass too, with the same object.

use std::path::{Path, PathBuf};
use std::process::Command;

use vgas_shared::farm::BuildUpdate;
use vgas_tests::build::{c_project, ok, origins, skip_without_gcc, updates};
use vgas_tests::Swarm;

/// Copies the tree at `from` into `to` (`cp -a`, so the Makefile's timestamps stay).
fn copy_tree(from: &Path, to: &Path) {
    let st = Command::new("cp")
        .arg("-a")
        .arg(from)
        .arg(to)
        .status()
        .unwrap();
    assert!(st.success(), "cp -a {} {}", from.display(), to.display());
}

/// The unmodified Lua tree, fetched (once per machine) by the project's own script.
fn lua_tree() -> PathBuf {
    c_project("lua")
}

#[tokio::test]
async fn lua_builds_through_vgas_build_make_and_runs() {
    if skip_without_gcc() {
        return;
    }
    let tree = lua_tree();
    let units = std::fs::read_dir(tree.join("src"))
        .unwrap()
        .filter_map(Result::ok)
        .filter(|e| e.path().extension().is_some_and(|x| x == "c"))
        .count();
    assert!(units >= 30, "Lua has {units} translation units");
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 2), ("w2", 2)]).await.unwrap();

    // The reference: the project's own Makefile, run here as its users do.
    let local = swarm.dir.path().join("lua-local");
    copy_tree(&tree, &local);
    ok(&Command::new("make")
        .args(["-s", "-j2", "linux"])
        .current_dir(local.join("src"))
        .output()
        .unwrap());

    let dir = swarm.dir.path().join("lua-vgas");
    copy_tree(&tree, &dir);
    let src = dir.join("src");
    let out = swarm
        .cli_in(
            &src,
            &["build", "--json", "--", "make", "-j4", "linux"],
            &[],
        )
        .unwrap();
    let u = updates(ok(&out));
    let (remote, cached, here) = origins(&u);
    assert_eq!(
        (remote, cached, here),
        (units, 0, 0),
        "every unit compiles on a worker: {u:?}"
    );
    let lua = src.join("lua");
    let run = Command::new(&lua)
        .args([
            "-e",
            "local t = {} for i = 1, 10 do t[i] = i * i end print(#t, t[10], 2^10)",
        ])
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&run.stdout), "10\t100\t1024.0\n");
    for bin in ["lua", "luac"] {
        assert_eq!(
            std::fs::read(src.join(bin)).unwrap(),
            std::fs::read(local.join("src").join(bin)).unwrap(),
            "{bin} differs from the local build"
        );
    }

    // `make clean` and again: every unit from the cache, the same binary.
    ok(&Command::new("make")
        .arg("clean")
        .current_dir(&src)
        .output()
        .unwrap());
    let out = swarm
        .cli_in(
            &src,
            &["build", "--json", "--", "make", "-j4", "linux"],
            &[],
        )
        .unwrap();
    let u = updates(ok(&out));
    assert_eq!(origins(&u), (0, units, 0), "{u:?}");
    assert_eq!(
        std::fs::read(&lua).unwrap(),
        std::fs::read(local.join("src/lua")).unwrap()
    );
}

/// A system header with what `-Wall -Wextra` flags outside one, and a unit whose
/// `-Wimplicit-fallthrough` is silenced only by a comment (gone after a full `-E`).
const SYS_HEADER: &str = "#define DISCARD(x) (x)\n\
static int sys_helper(void) { return 0; }\n\
static inline int sys_cmp(unsigned a, int b) { return a < b; }\n";
const FALLTHROUGH: &str = "#include <sysdemo.h>\n\
int g(int v) {\n\
  int r = 0;\n\
  switch (v) {\n\
  case 1:\n\
    r += 1;\n\
    /* fall through */\n\
  case 2:\n\
    r += 2;\n\
    break;\n\
  }\n\
  return r + DISCARD(0);\n\
}\n\
int main(void) { return g(1) - 3; }\n";
const WARNS: &str = "int h(int x) {\n  int unused;\n  return x;\n}\n";

#[tokio::test]
async fn a_werror_build_passes_distributed_as_it_does_here_with_the_same_warnings() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let dir = swarm.dir.path().join("werror");
    std::fs::create_dir_all(dir.join("sys")).unwrap();
    std::fs::write(dir.join("sys/sysdemo.h"), SYS_HEADER).unwrap();
    std::fs::write(dir.join("ft.c"), FALLTHROUGH).unwrap();
    std::fs::write(dir.join("warns.c"), WARNS).unwrap();
    std::fs::write(
        dir.join("Makefile"),
        "ft: ft.o\n\t$(CC) -o $@ ft.o\nft.o: ft.c\n\t$(CC) -O2 -Wall -Wextra -Werror -isystem sys -c ft.c -o ft.o\n\
warns.o: warns.c\n\t$(CC) -O2 -Wall -Wextra -c warns.c -o warns.o\n",
    )
    .unwrap();

    // What full preprocessing (distcc's way) would do to this unit: fail.
    let full_e = Command::new("sh")
        .arg("-c")
        .arg("gcc -isystem sys -E ft.c -o ft.i && gcc -O2 -Wall -Wextra -Werror -c ft.i -o /dev/null")
        .current_dir(&dir)
        .output()
        .unwrap();
    assert!(
        !full_e.status.success(),
        "the case must be one a full -E breaks"
    );
    let local = |args: &[&str]| {
        Command::new("gcc")
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap()
    };
    ok(&local(&[
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-isystem",
        "sys",
        "-c",
        "ft.c",
        "-o",
        "ft-local.o",
    ]));
    let warns_local = local(&[
        "-O2",
        "-Wall",
        "-Wextra",
        "-c",
        "warns.c",
        "-o",
        "warns-local.o",
    ]);
    let warns_local = String::from_utf8_lossy(&warns_local.stderr).into_owned();
    assert!(warns_local.contains("unused variable"), "{warns_local}");

    let out = swarm
        .cli_in(
            &dir,
            &["build", "--json", "--", "make", "ft", "warns.o"],
            &[],
        )
        .unwrap();
    let u = updates(ok(&out));
    assert_eq!(origins(&u), (2, 0, 0), "both compile on the worker: {u:?}");
    assert_eq!(
        std::fs::read(dir.join("ft.o")).unwrap(),
        std::fs::read(dir.join("ft-local.o")).unwrap(),
        "the -Werror unit's object differs from a local compile"
    );
    assert_eq!(
        std::fs::read(dir.join("warns.o")).unwrap(),
        std::fs::read(dir.join("warns-local.o")).unwrap()
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&warns_local),
        "the warnings differ from the local compiler's:\nlocal:\n{warns_local}\nvgas:\n{stderr}"
    );
    assert!(
        !stderr.contains("sysdemo.h"),
        "a system header's warnings leaked: {stderr}"
    );
    assert_eq!(
        Command::new(dir.join("ft")).status().unwrap().code(),
        Some(0)
    );
    match u.last() {
        Some(BuildUpdate::Finished { report, .. }) => {
            assert_eq!((report.errors, report.warnings), (0, 1), "{report:?}")
        }
        other => panic!("no final update: {other:?}"),
    }
}
