//! `vgas-cc`: the compiler wrapper alone, what the links `vgas build` puts on `PATH` (`cc`,
//! `gcc`, `c++`, ...) point at when it is installed beside `vgas`. A build runs it once per
//! compiler call, so its start is a cost on the submitting machine's busiest core: it is the
//! wrapper's fast path ([`wrapper::fast_path`]: a call that is not distributed becomes the
//! real compiler, a distributable one goes to the build's helper) in a binary a few hundred
//! kilobytes large, where the whole `vgas` binary took 1.6 ms of CPU a call to load. Whatever
//! the fast path declines, it hands to the full `vgas` with the same arguments and name.
//! Also usable as a compiler launcher (`CMAKE_C_COMPILER_LAUNCHER=vgas-cc`), as `vgas` is.

use std::os::unix::process::CommandExt as _;

use vgas_client::farm::wrapper;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    let arg0 = argv.first().cloned().unwrap_or_default();
    if let Some(c) = wrapper::AsCompiler::from_argv(argv.clone()) {
        if let Some(code) = wrapper::fast_path(&c.name, c.explicit.as_deref(), &c.args) {
            std::process::exit(code);
        }
    }
    let Some(full) = wrapper::full_binary() else {
        eprintln!(
            "vgas-cc: cannot find the vgas binary (set {})",
            wrapper::ENV_FULL_BINARY
        );
        std::process::exit(127);
    };
    // Called by its own name, it is `vgas` for the rest (`vgas-cc /usr/bin/gcc ...`).
    let name = if arg0.rsplit('/').next() == Some(wrapper::SMALL_BINARY) {
        full.to_string_lossy().into_owned()
    } else {
        arg0
    };
    let e = std::process::Command::new(&full)
        .arg0(name)
        .args(&argv[1.min(argv.len())..])
        .exec();
    eprintln!("vgas-cc: run {}: {e}", full.display());
    std::process::exit(127);
}
