//! `vgas`: the user CLI. All logic lives in `vgas_client::cli`. Called as `cc`, `gcc`, `c++`,
//! `g++`, `clang` or `clang++` (the links `vgas build` puts on `PATH`), as `vgas cc ...` /
//! `vgas c++ ...`, or as a compiler launcher (`vgas /usr/bin/gcc ...`, CMake's
//! `CMAKE_C_COMPILER_LAUNCHER`), it is the distcc-style compiler wrapper instead, which starts no async
//! runtime at all when it can: a build runs it once per compiler call. As cargo's
//! `RUSTC_WRAPPER` (`vgas /path/to/rustc ...`) or `vgas rustc ...` it is the rustc wrapper.

use clap::Parser;
use vgas_client::farm::wrapper;

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    // Cargo's `RUSTC_WRAPPER=vgas` (`vgas /path/to/rustc ...`) and `vgas rustc ...`.
    if let Some(call) = vgas_client::rustc::AsRustc::from_argv(&argv) {
        vgas_client::init_tracing_quiet();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        std::process::exit(rt.block_on(vgas_client::rustc::run(call)));
    }
    if let Some(c) = wrapper::AsCompiler::from_argv(argv) {
        let explicit = c.explicit.as_deref();
        if let Some(code) = wrapper::fast_path(&c.name, explicit, &c.args) {
            std::process::exit(code);
        }
        vgas_client::init_tracing_quiet();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        std::process::exit(rt.block_on(wrapper::run(&c.name, explicit, c.args)));
    }
    let cli = vgas_client::cli::Cli::parse();
    vgas_client::init_tracing_quiet();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match rt.block_on(vgas_client::cli::run(cli)) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vgas: {e:#}");
            std::process::exit(2);
        }
    }
}
