//! A real autotools project, built as its users build it: `./configure`, then
//! `vgas build -- make`. pkgconf 1.8.1 (fetched from Debian's source packages by
//! `scripts/fetch-c-project.sh`), whose compiles go through libtool (each unit twice, PIC and
//! not, with `-MD -MP -MF .deps/...`): every unit goes to a worker, every object is
//! byte-identical to a plain local build of the same tree, and after `make clean` every unit
//! comes from the cache. Configured with autotools' defaults (`-g -O2`), so the comparison
//! covers debug info, `DW_AT_producer` included.

use std::process::Command;

use vgas_tests::build::{
    c_project, cold_then_cached, make, object_count, ok, outputs, skip_without_gcc, updates,
};
use vgas_tests::Swarm;

#[tokio::test]
async fn an_autotools_project_distributes_every_unit_through_libtool() {
    if skip_without_gcc() {
        return;
    }
    let tree = c_project("pkgconf");
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 2), ("w2", 2)]).await.unwrap();
    let dir = swarm.dir.path().join("pkgconf");
    ok(&Command::new("cp")
        .arg("-a")
        .arg(&tree)
        .arg(&dir)
        .output()
        .unwrap());
    ok(&Command::new("./configure")
        .current_dir(&dir)
        .output()
        .unwrap());

    // The reference: the project's own make, here, in the same tree.
    make(&dir, &["-s", "-j2"]);
    let local = outputs(&dir);
    let units = object_count(&local);
    assert!(units >= 20, "pkgconf has {units} objects");
    make(&dir, &["-s", "clean"]);

    let run = || {
        let out = swarm
            .cli_in(&dir, &["build", "--json", "--", "make", "-j4"], &[])
            .unwrap();
        updates(ok(&out))
    };
    cold_then_cached(&dir, &local, units, run, || make(&dir, &["-s", "clean"]));
}
