//! `vgas`: the user CLI. All logic lives in `vgas_master::cli`. Called as `cc`, `gcc`, `c++`,
//! `g++`, `clang` or `clang++` (the links `vgas build` puts on `PATH`), or as `vgas cc ...` /
//! `vgas c++ ...`, it is the distcc-style compiler wrapper instead.

use clap::Parser;

#[tokio::main]
async fn main() {
    vgas_master::init_tracing_quiet();
    let mut argv: Vec<String> = std::env::args().collect();
    let invoked = argv
        .first()
        .and_then(|a| a.rsplit('/').next())
        .unwrap_or("vgas")
        .to_owned();
    let wrapper = vgas_master::build::wrapper::MASQUERADE_NAMES;
    if wrapper.contains(&invoked.as_str()) {
        std::process::exit(vgas_master::build::wrapper::run(&invoked, argv.split_off(1)).await);
    }
    if argv.len() > 1 && matches!(argv[1].as_str(), "cc" | "c++") {
        let name = argv[1].clone();
        std::process::exit(vgas_master::build::wrapper::run(&name, argv.split_off(2)).await);
    }
    let cli = vgas_master::cli::Cli::parse();
    match vgas_master::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vgas: {e:#}");
            std::process::exit(2);
        }
    }
}
