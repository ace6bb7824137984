//! Logging for every vgas binary: `tracing` to stderr, filtered by `RUST_LOG` or else a
//! default level, with colours only when stderr is a terminal, so a log file or a journal
//! holds plain `key=value` text that tools (and the benchmarks) can read.

use std::io::IsTerminal as _;

/// The target of each task's life in the logs (accepted, started, ended, finished): at
/// `debug` when it went well, so a swarm running thousands of tasks a second does not spend
/// a quarter of its rate writing four lines a task (`docs/benchmarks.md`); a task that
/// failed, timed out or was cancelled says so at `info`. `RUST_LOG=info,vgas_tasks=debug`
/// shows every task.
pub const TASKS_TARGET: &str = "vgas_tasks";

/// Sets up the global subscriber; a second call is a no-op.
pub fn init(default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(std::io::stderr)
        .try_init();
}
