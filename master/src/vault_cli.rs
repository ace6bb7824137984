//! `vgas-master vault ...` (which `vgas vault ...` hands over to): the vault commands work on
//! the vault file directly, on the master's machine, so a key never travels over NATS; the
//! master sees the change within a second. The passphrase comes from `VGAS_VAULT_PASSPHRASE` or `VGAS_VAULT_KEY_FILE`, else
//! a no-echo prompt; a key comes from standard input when it is not a terminal (or with
//! `--stdin`), else a no-echo prompt.

use std::io::{BufRead, IsTerminal};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use secrecy::SecretString;
use vgas_shared::config::Resolved;
use vgas_shared::vault::{KdfParams, KeySource, VaultOp, VaultResult};

use crate::keys::usage::UsageBook;
use crate::keys::{ApiKeyManager, KeyConfig};

#[derive(Debug, Subcommand)]
pub enum VaultCmd {
    /// Store the first key of a provider (from stdin or a no-echo prompt).
    Store {
        provider: String,
        /// Read the key from standard input even on a terminal.
        #[arg(long)]
        stdin: bool,
    },
    /// Providers and key versions; never keys.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Store a new key version; the old one is kept for rollback until purged.
    Rotate {
        provider: String,
        #[arg(long)]
        stdin: bool,
    },
    /// Go back to the previous key version.
    Rollback { provider: String },
    /// Forget every version but the current one.
    Purge { provider: String },
    /// Remove every version of a provider's key.
    Delete { provider: String },
    /// Re-encrypt the whole vault under a new passphrase (VGAS_VAULT_NEW_PASSPHRASE or a prompt).
    RotateMasterKey,
}

fn passphrase_source(cfg: &mut KeyConfig) -> Result<()> {
    if cfg.source.is_none() {
        if !std::io::stdin().is_terminal() {
            bail!("no passphrase: set VGAS_VAULT_PASSPHRASE or VGAS_VAULT_KEY_FILE (stdin is not a terminal to prompt on)");
        }
        let p = rpassword::prompt_password("vault passphrase: ").context("read the passphrase")?;
        cfg.source = Some(KeySource::Passphrase(SecretString::from(p)));
    }
    Ok(())
}

fn read_key(provider: &str, force_stdin: bool) -> Result<SecretString> {
    let key = if force_stdin || !std::io::stdin().is_terminal() {
        let mut line = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut line)
            .context("read the key from standard input")?;
        let k = line.trim_end_matches(['\n', '\r']).to_owned();
        zeroize::Zeroize::zeroize(&mut line);
        k
    } else {
        rpassword::prompt_password(format!("API key for {provider}: ")).context("read the key")?
    };
    Ok(SecretString::from(key))
}

/// Runs a vault command; returns the exit code.
pub fn run_vault(conn: &Resolved, cmd: VaultCmd) -> Result<i32> {
    let mut cfg = KeyConfig::from_env(&conn.state_dir);
    passphrase_source(&mut cfg)?;
    let keys = ApiKeyManager::new(cfg, UsageBook::in_memory())?;
    let op = match cmd {
        VaultCmd::Store { provider, stdin } => {
            let key = read_key(&provider, stdin)?;
            VaultOp::Store { provider, key }
        }
        VaultCmd::Rotate { provider, stdin } => {
            let new_key = read_key(&provider, stdin)?;
            VaultOp::Rotate { provider, new_key }
        }
        VaultCmd::List { json } => {
            let VaultResult::Listed(list) = keys.vault_operation_as(VaultOp::List, "cli")? else {
                bail!("unexpected answer to list");
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&list)?);
            } else {
                println!(
                    "{:<24} {:>7} {:<24} OLDER",
                    "PROVIDER", "VERSION", "STORED (UTC day)"
                );
                for e in list {
                    let older: Vec<String> = e.older_versions.iter().map(u32::to_string).collect();
                    println!(
                        "{:<24} {:>7} {:<24} {}",
                        e.provider,
                        e.version,
                        crate::keys::usage::day_of(e.created_ms),
                        older.join(",")
                    );
                }
            }
            return Ok(0);
        }
        VaultCmd::Rollback { provider } => VaultOp::Rollback { provider },
        VaultCmd::Purge { provider } => VaultOp::Purge { provider },
        VaultCmd::Delete { provider } => VaultOp::Delete { provider },
        VaultCmd::RotateMasterKey => {
            let new = match std::env::var("VGAS_VAULT_NEW_PASSPHRASE") {
                Ok(p) if !p.is_empty() => p,
                _ => {
                    let a = rpassword::prompt_password("new vault passphrase: ")?;
                    let b = rpassword::prompt_password("again: ")?;
                    if a != b {
                        bail!("the two passphrases differ; nothing changed");
                    }
                    a
                }
            };
            VaultOp::RotateMasterKey {
                new_source: KeySource::Passphrase(SecretString::from(new)),
                params: KdfParams::RECOMMENDED,
            }
        }
    };
    let done = keys.vault_operation_as(op, "cli")?;
    match done {
        VaultResult::Stored { provider, version } => {
            println!("stored {provider} (version {version})")
        }
        VaultResult::Rotated {
            provider,
            version,
            kept,
        } => {
            println!("rotated {provider} to version {version}; kept {kept:?} for rollback (`vgas vault purge {provider}` forgets them)")
        }
        VaultResult::RolledBack { provider, version } => {
            println!("{provider} is back at version {version}")
        }
        VaultResult::Purged { provider, removed } => {
            println!("purged {removed} old version(s) of {provider}")
        }
        VaultResult::Deleted { provider, versions } => {
            println!("deleted {provider} ({versions} version(s))")
        }
        VaultResult::MasterKeyRotated { entries } => {
            println!("re-encrypted {entries} key(s) under the new passphrase; restart the master with it")
        }
        VaultResult::Retrieved { .. } | VaultResult::Listed(_) => {}
    }
    Ok(0)
}
