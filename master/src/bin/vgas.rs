//! `vgas`: the user CLI. All logic lives in `vgas_master::cli`.

use clap::Parser;

#[tokio::main]
async fn main() {
    vgas_master::init_tracing_quiet();
    let cli = vgas_master::cli::Cli::parse();
    match vgas_master::cli::run(cli).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("vgas: {e:#}");
            std::process::exit(2);
        }
    }
}
