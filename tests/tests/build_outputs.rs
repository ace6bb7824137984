//! Every output of a compile, on every path, as a local compile writes it: a project built
//! the way real Makefiles build (Linux's `-Wp,-MMD,<dir>/.<name>.o.d`, a macro prefix map on
//! every unit, `-fstack-usage`, an assembler option, an explicit `-x c`) goes to workers
//! whole, and its objects, dependency files and stack-usage files are byte-identical to a
//! local `make`'s, cold and again after `make clean` when everything comes from the cache.
//! The summary counts every compiler call, the link with its reason.

use std::path::{Path, PathBuf};
use std::process::Command;

use vgas_tests::build::{finished_stats, ok, origins, skip_without_gcc, updates};
use vgas_tests::{repo_root, Swarm};

/// The flags real projects put on every unit, none of which may keep a unit from the swarm.
const MAKEFILE: &str = "\
CFLAGS = -O2 -Wall -fmacro-prefix-map=$(CURDIR)/= -fstack-usage -Wa,--noexecstack
OBJS = obj/main.o obj/calc.o obj/fmt.o

app: $(OBJS)
\t$(CC) $(CFLAGS) -o $@ $(OBJS) -lm

obj/%.o: %.c inc/calc.h
\t@mkdir -p obj
\t$(CC) $(CFLAGS) -Wp,-MMD,$(@D)/.$(@F).d -Iinc -x c -c $< -o $@

clean:
\trm -rf obj app
";

/// Every file a build writes, by path relative to the project.
const OUTPUTS: &[&str] = &[
    "app",
    "obj/main.o",
    "obj/calc.o",
    "obj/fmt.o",
    "obj/.main.o.d",
    "obj/.calc.o.d",
    "obj/.fmt.o.d",
    "obj/main.su",
    "obj/calc.su",
    "obj/fmt.su",
];

fn project(root: &Path, name: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("inc")).unwrap();
    let src = repo_root().join("tests/c/calc");
    for f in ["main.c", "calc.c", "fmt.c", "inc/calc.h"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    std::fs::write(dir.join("Makefile"), MAKEFILE).unwrap();
    dir
}

fn assert_same_outputs(local: &Path, built: &Path, when: &str) {
    for f in OUTPUTS {
        let want = std::fs::read(local.join(f)).unwrap_or_else(|e| panic!("local {f}: {e}"));
        let got = std::fs::read(built.join(f)).unwrap_or_else(|e| panic!("{when}: {f}: {e}"));
        assert!(
            want == got,
            "{when}: {f} differs from a local build's:\n--- local\n{}\n--- vgas\n{}",
            String::from_utf8_lossy(&want),
            String::from_utf8_lossy(&got)
        );
    }
}

#[tokio::test]
async fn real_world_flags_are_distributed_and_every_output_matches_a_local_build() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let local = project(swarm.dir.path(), "local");
    ok(&Command::new("make")
        .args(["-s", "-j2"])
        .current_dir(&local)
        .output()
        .unwrap());
    let dir = project(swarm.dir.path(), "wrapped");
    let build = || {
        swarm
            .cli_in(&dir, &["build", "--json", "--", "make", "-j4"], &[])
            .unwrap()
    };

    // Cold: every unit on a worker; only the link ran here, and the summary says why.
    let cold = updates(ok(&build()));
    assert_eq!(origins(&cold), (3, 0, 0), "{cold:?}");
    let stats = finished_stats(&cold);
    assert_eq!(stats.not_distributed, 1, "{stats:?}");
    assert_eq!(
        stats
            .here_reasons
            .get("a link or another call without -c")
            .copied(),
        Some(1),
        "{stats:?}"
    );
    assert_same_outputs(&local, &dir, "cold build");

    // After `make clean`, everything comes from the cache (without preprocessing), and
    // every file a local compile writes is back, byte for byte.
    ok(&Command::new("make")
        .args(["-s", "clean"])
        .current_dir(&dir)
        .output()
        .unwrap());
    assert!(!dir.join("obj").exists());
    let warm = updates(ok(&build()));
    assert_eq!(origins(&warm), (0, 3, 0), "{warm:?}");
    assert_eq!(finished_stats(&warm).direct_hits, 3);
    assert_same_outputs(&local, &dir, "rebuild from the cache");
}

/// A C++ unit with global constructors and no public definition (a registration unit, say,
/// as libzmq's `ctx.cpp` is to GCC), compiled with debug info: GCC names the function that
/// runs them after the input file (`_GLOBAL__sub_I_ctor.cc`; after the first public
/// definition when there is one), so a worker's object is a local one only if its input
/// carries the unit's own name.
const CXX_UNIT: &str = "\
#include <string>
namespace {
std::string greeting = std::string(\"hello \") + \"world\";
struct Init { Init() { greeting += \"!\"; } } init;
}
";

const CXX_MAKEFILE: &str = "\
obj/ctor.o: src/ctor.cc
\t@mkdir -p obj
\t$(CXX) -O2 -g -c $< -o $@
";

#[tokio::test]
async fn a_cxx_unit_with_global_constructors_is_a_local_compiles_object() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    // The same path for both builds, as debug info names it: built here, kept, built again.
    let dir = swarm.dir.path().join("cxx");
    std::fs::create_dir_all(dir.join("src")).unwrap();
    std::fs::write(dir.join("src/ctor.cc"), CXX_UNIT).unwrap();
    std::fs::write(dir.join("Makefile"), CXX_MAKEFILE).unwrap();
    ok(&Command::new("make")
        .arg("-s")
        .current_dir(&dir)
        .output()
        .unwrap());
    let local = std::fs::read(dir.join("obj/ctor.o")).unwrap();
    std::fs::remove_dir_all(dir.join("obj")).unwrap();
    let built = updates(ok(&swarm
        .cli_in(&dir, &["build", "--json", "--", "make", "-s"], &[])
        .unwrap()));
    assert_eq!(origins(&built), (1, 0, 0), "{built:?}");
    let remote = std::fs::read(dir.join("obj/ctor.o")).unwrap();
    assert!(
        local == remote,
        "the worker's ctor.o differs from a local compile's ({} and {} bytes)",
        local.len(),
        remote.len()
    );
}
