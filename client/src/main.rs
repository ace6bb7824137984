//! `vgas`: the user CLI. All logic lives in `vgas_client::cli`. Called as `cc`, `gcc`, `c++`,
//! `g++`, `clang` or `clang++` (the links `vgas build` puts on `PATH`), or as `vgas cc ...` /
//! `vgas c++ ...`, it is the distcc-style compiler wrapper instead, which starts no async
//! runtime at all when it can: a build runs it once per compiler call.

use clap::Parser;
use vgas_client::farm::wrapper;

fn main() {
    let mut argv: Vec<String> = std::env::args().collect();
    let invoked = argv
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("vgas")
        .to_owned();
    let as_wrapper = if wrapper::MASQUERADE_NAMES.contains(&invoked.as_str()) {
        Some((invoked, argv.split_off(1)))
    } else if argv.len() > 1 && matches!(argv[1].as_str(), "cc" | "c++") {
        let name = argv[1].clone();
        Some((name, argv.split_off(2)))
    } else {
        None
    };
    if let Some((name, args)) = as_wrapper {
        if let Some(code) = wrapper::fast_path(&name, &args) {
            std::process::exit(code);
        }
        vgas_client::init_tracing_quiet();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a tokio runtime");
        std::process::exit(rt.block_on(wrapper::run(&name, args)));
    }
    let cli = vgas_client::cli::Cli::parse();
    if let vgas_client::cli::Cmd::Vault { .. } = cli.cmd {
        // The vault lives with the master: hand the whole call to `vgas-master vault`.
        let err = vgas_client::cli::vault::exec_master(argv.split_off(1));
        eprintln!("vgas: {err:#}");
        std::process::exit(2);
    }
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
