//! `vgas vault ...`: the key vault is the master's (its file, its passphrase, its machine), so
//! its commands live in `vgas-master vault ...` and `vgas` hands the whole call over. The CLI
//! and compiler wrapper thus never link the cipher, the KDF or the gateway.

use std::os::unix::process::CommandExt as _;
use std::path::PathBuf;
use std::process::Command;

/// The master's binary: beside this one (an install or a cargo target directory), else on
/// `PATH`.
pub fn master_binary() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|me| Some(me.parent()?.join("vgas-master")))
        .filter(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from("vgas-master"))
}

/// Replaces this process with `vgas-master ARGS...` (the same arguments `vgas` got, so
/// `vgas --state-dir D vault list` is `vgas-master --state-dir D vault list`). Returns only
/// when that fails, with the reason.
pub fn exec_master(args: Vec<String>) -> anyhow::Error {
    let program = master_binary();
    let err = Command::new(&program).args(args).exec();
    anyhow::Error::new(err).context(format!(
        "run {} (the vault commands are the master's: install vgas-master beside vgas)",
        program.display()
    ))
}
