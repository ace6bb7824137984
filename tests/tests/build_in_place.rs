//! One machine: with every worker on the submitter's own host, `vgas build` compiles each
//! unit in place with the user's own command line (no preprocessing, no round trip to a
//! worker on the same CPUs), still fills the swarm-wide cache (a dependency file names what
//! each unit read), and a rebuild after `make clean` takes every unit from the cache. The
//! objects, dependency files and stack-usage files are a local `make`'s, byte for byte. A unit
//! whose dependency file leaves system headers out (`-MMD`) goes to the worker instead, and a
//! changed header compiles again every unit that includes it.
//!
//! With `VGAS_LOCAL_SLOTS`, a local slot left idle races a unit out on another host's worker:
//! against a worker that takes units and never answers (stopped with SIGSTOP), every unit is
//! compiled here as that worker would have compiled it, and the files are still `make`'s.

use std::path::{Path, PathBuf};

use vgas_shared::farm::{BuildUpdate, Origin};
use vgas_tests::build::{make, ok, origins, skip_without_gcc, updates};
use vgas_tests::{repo_root, Swarm};

const UNITS: [&str; 3] = ["main", "calc", "fmt"];

/// The calc project with `deps` (the flags that write a dependency file, or none) on every
/// unit, debug info, and stack-usage files.
fn project(root: &Path, name: &str, deps: &str) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(dir.join("inc")).unwrap();
    let src = repo_root().join("tests/c/calc");
    for f in ["main.c", "calc.c", "fmt.c", "inc/calc.h"] {
        std::fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    let makefile = format!(
        "CFLAGS = -g -O2 -Wall -fstack-usage\n\
         OBJS = obj/main.o obj/calc.o obj/fmt.o\n\
         app: $(OBJS)\n\t$(CC) $(CFLAGS) -o $@ $(OBJS) -lm\n\
         obj/%.o: %.c inc/calc.h\n\t@mkdir -p obj\n\t$(CC) $(CFLAGS) {deps} -Iinc -c $< -o $@\n\
         clean:\n\trm -rf obj app\n"
    );
    std::fs::write(dir.join("Makefile"), makefile).unwrap();
    dir
}

/// Every file under `obj/` and the program, with its bytes.
fn written(dir: &Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(dir.join("obj"))
        .unwrap()
        .flatten()
        .map(|e| {
            let name = format!("obj/{}", e.file_name().to_string_lossy());
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    files.push(("app".into(), std::fs::read(dir.join("app")).unwrap()));
    files.sort();
    files
}

fn names(files: &[(String, Vec<u8>)]) -> Vec<&str> {
    files.iter().map(|(n, _)| n.as_str()).collect()
}

/// Units compiled here, each with a reason that says in place.
fn in_place(u: &[BuildUpdate]) -> usize {
    u.iter()
        .filter(|x| {
            matches!(x, BuildUpdate::Done { origin: Origin::Local { reason }, .. }
                if reason.starts_with("in place"))
        })
        .count()
}

#[tokio::test]
async fn one_machine_compiles_in_place_and_still_fills_the_cache() {
    if skip_without_gcc() {
        return;
    }
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let _worker = swarm.worker_on_this_host("here", 2).unwrap();
    let client = swarm
        .connect(vgas_shared::config::Role::Client)
        .await
        .unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let build = |dir: &Path| {
        let out = swarm
            .cli_in(dir, &["build", "--json", "--", "make", "-j2"], &[])
            .unwrap();
        updates(ok(&out))
    };

    // The unit's own -MD file, and none (vgas writes one of its own, elsewhere).
    for (name, deps, extra) in [("md", "-MD -MP", ".d"), ("plain", "", "")] {
        let dir = project(swarm.dir.path(), name, deps);
        make(&dir, &["-s"]);
        let local = written(&dir);
        let want_files = UNITS.len() * if extra.is_empty() { 2 } else { 3 } + 1;
        assert_eq!(local.len(), want_files, "{name}: {:?}", names(&local));
        make(&dir, &["-s", "clean"]);

        let cold = build(&dir);
        assert_eq!(origins(&cold), (0, 0, UNITS.len()), "{name}: {cold:?}");
        assert_eq!(in_place(&cold), UNITS.len(), "{name}: {cold:?}");
        assert!(
            written(&dir) == local,
            "{name}: cold build differs from make"
        );

        make(&dir, &["-s", "clean"]);
        let warm = build(&dir);
        assert_eq!(
            origins(&warm),
            (0, UNITS.len(), 0),
            "{name}: every unit from the cache: {warm:?}"
        );
        assert!(written(&dir) == local, "{name}: cached rebuild differs");

        // A changed header compiles every unit that includes it again.
        let header = dir.join("inc/calc.h");
        let mut text = std::fs::read_to_string(&header).unwrap();
        text.push_str("\n#define CALC_CHANGED 1\n");
        std::fs::write(&header, text).unwrap();
        make(&dir, &["-s", "clean"]);
        let changed = build(&dir);
        assert_eq!(
            origins(&changed),
            (0, 0, UNITS.len()),
            "{name}: a changed header is no hit: {changed:?}"
        );
    }

    // -MMD leaves system headers out of the dependency file: the usual path, to the worker.
    let dir = project(swarm.dir.path(), "mmd", "-MMD");
    make(&dir, &["-s"]);
    let local = written(&dir);
    make(&dir, &["-s", "clean"]);
    let cold = build(&dir);
    assert_eq!(origins(&cold), (UNITS.len(), 0, 0), "{cold:?}");
    assert!(written(&dir) == local, "-MMD build differs from make");
}

/// Units whose race here won.
fn raced_here(u: &[BuildUpdate]) -> usize {
    u.iter()
        .filter(|x| {
            matches!(x, BuildUpdate::Done { origin: Origin::Local { reason }, .. }
                if reason == vgas_client::farm::segment::RACED_HERE)
        })
        .count()
}

#[tokio::test]
async fn an_idle_local_slot_races_a_worker_that_does_not_answer() {
    if skip_without_gcc() {
        return;
    }
    let mut swarm = Swarm::start().await.unwrap();
    let _master = swarm.master(&[]).unwrap();
    let worker = swarm.worker("far", 1, &[]).unwrap();
    let client = swarm
        .connect(vgas_shared::config::Role::Client)
        .await
        .unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();
    let dir = project(swarm.dir.path(), "race", "-MD -MP");
    make(&dir, &["-s"]);
    let local = written(&dir);
    make(&dir, &["-s", "clean"]);

    // Alive to the master (its heartbeats stop only seconds later), deaf to its units.
    worker.signal(libc::SIGSTOP);
    let out = swarm.cli_in(
        &dir,
        &["build", "--json", "--", "make", "-j1"],
        &[("VGAS_LOCAL_SLOTS", "1")],
    );
    worker.signal(libc::SIGCONT);
    let raced = updates(ok(&out.unwrap()));
    assert_eq!(raced_here(&raced), UNITS.len(), "{raced:?}");
    assert!(
        written(&dir) == local,
        "the units raced here differ from make's"
    );
}
