//! `ApiKeyManager`: the master's keeper of provider keys, usage and quotas. Keys live in the
//! vault file (`vgas_shared::vault`), encrypted; a key is decrypted only for the call that
//! needs it and dropped (zeroized) after. Every vault operation is serialized in-process by a
//! mutex and across processes by a file lock, and written atomically. The master notices a
//! vault changed by the `vgas` CLI within [`RELOAD_CHECK_MS`] (at once when a provider is
//! missing).

pub mod audit;
pub mod config;
pub mod quota;
pub mod usage;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, RwLock};

use secrecy::SecretString;
use vgas_shared::llm::{TokenUsage, UsageReport};
use vgas_shared::now_ms;
use vgas_shared::vault::{
    file, Kdf, KdfParams, KeySource, MasterKey, Vault, VaultError, VaultOp, VaultResult,
};

use self::audit::{AuditEvent, AuditLog};
use self::config::LlmConfig;
use self::quota::{CallEstimate, Limiter, QuotaPermit, QuotaRefusal};
use self::usage::UsageBook;

/// How often the master looks at the vault file's metadata for a change made by another
/// process. A missing provider forces a look at once.
pub const RELOAD_CHECK_MS: u64 = 1000;

/// Where the vault, its key, the LLM settings and the audit log are.
#[derive(Debug, Clone)]
pub struct KeyConfig {
    pub vault_path: PathBuf,
    pub source: Option<KeySource>,
    pub params: KdfParams,
    pub llm_config_path: PathBuf,
    pub audit_path: Option<PathBuf>,
}

impl KeyConfig {
    /// Defaults under the state folder, overridden by `VGAS_VAULT`, `VGAS_VAULT_PASSPHRASE`,
    /// `VGAS_VAULT_KEY_FILE` and `VGAS_LLM_CONFIG`.
    pub fn from_env(state_dir: &Path) -> KeyConfig {
        let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty());
        let source = match (
            env("VGAS_VAULT_KEY_FILE"),
            std::env::var("VGAS_VAULT_PASSPHRASE"),
        ) {
            (Some(f), _) => Some(KeySource::KeyFile(PathBuf::from(f))),
            (None, Ok(p)) if !p.is_empty() => Some(KeySource::Passphrase(SecretString::from(p))),
            _ => None,
        };
        KeyConfig {
            vault_path: env("VGAS_VAULT")
                .map(PathBuf::from)
                .unwrap_or_else(|| state_dir.join("vault")),
            source,
            params: KdfParams::RECOMMENDED,
            llm_config_path: env("VGAS_LLM_CONFIG")
                .map(PathBuf::from)
                .unwrap_or_else(|| state_dir.join("llm.toml")),
            audit_path: Some(state_dir.join("audit.log")),
        }
    }
}

/// Identity of one version of the vault file (an atomic write makes a new inode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    ino: u64,
    len: u64,
    mtime_ns: i64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    Some(Stamp {
        ino: m.ino(),
        len: m.len(),
        mtime_ns: m.mtime() * 1_000_000_000 + m.mtime_nsec(),
    })
}

#[derive(Debug)]
enum Cache {
    Empty,
    Loaded {
        vault: Box<Vault>,
        stamp: Stamp,
    },
    Failed {
        stamp: Stamp,
        kind: vgas_shared::vault::VaultErrorKind,
        message: String,
    },
}

/// The key vault, usage book and limiter of one master (or one CLI run).
#[derive(Debug)]
pub struct ApiKeyManager {
    path: PathBuf,
    source: Option<KeySource>,
    params: KdfParams,
    llm: LlmConfig,
    cache: RwLock<Cache>,
    /// The last master key derived, with the header it belongs to: rereading the file after
    /// a change costs no Argon2 run.
    derived: Mutex<Option<(Kdf, MasterKey)>>,
    /// One read-modify-write at a time in this process (the file lock covers other ones).
    writer: Mutex<()>,
    last_check_ms: AtomicU64,
    audit: Option<AuditLog>,
    usage: std::sync::Arc<UsageBook>,
    limiter: Limiter,
}

impl ApiKeyManager {
    /// A manager for `cfg`; reads llm.toml and opens the audit log.
    pub fn new(cfg: KeyConfig, usage: UsageBook) -> anyhow::Result<ApiKeyManager> {
        let llm = LlmConfig::load(&cfg.llm_config_path)?;
        let audit = match &cfg.audit_path {
            Some(p) => Some(
                AuditLog::open(p)
                    .map_err(|e| anyhow::anyhow!("open the audit log {}: {e}", p.display()))?,
            ),
            None => None,
        };
        Ok(ApiKeyManager {
            path: cfg.vault_path,
            source: cfg.source,
            params: cfg.params,
            llm,
            cache: RwLock::new(Cache::Empty),
            derived: Mutex::new(None),
            writer: Mutex::new(()),
            last_check_ms: AtomicU64::new(0),
            audit,
            usage: std::sync::Arc::new(usage),
            limiter: Limiter::default(),
        })
    }

    pub fn vault_path(&self) -> &Path {
        &self.path
    }

    pub fn llm_config(&self) -> &LlmConfig {
        &self.llm
    }

    pub fn audit_log(&self) -> Option<&AuditLog> {
        self.audit.as_ref()
    }

    fn key_for(&self, kdf: &Kdf) -> Result<MasterKey, VaultError> {
        let mut d = self.derived.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((k, key)) = d.as_ref() {
            if k == kdf {
                return Ok(key.clone());
            }
        }
        let source = self.source.as_ref().ok_or(VaultError::NoKeySource)?;
        let key = MasterKey::derive(source, kdf)?;
        *d = Some((kdf.clone(), key.clone()));
        Ok(key)
    }

    fn open_bytes(&self, bytes: &[u8]) -> Result<Vault, VaultError> {
        let parsed = Vault::parse(bytes)?;
        let key = self.key_for(parsed.kdf())?;
        Vault::unlock(&parsed, key)
    }

    /// Rereads the vault if its file changed (looking at most every [`RELOAD_CHECK_MS`]
    /// unless `force`).
    fn refresh(&self, force: bool) -> Result<(), VaultError> {
        let now = now_ms();
        let last = self.last_check_ms.load(Ordering::Relaxed);
        if !force && last != 0 && now < last + RELOAD_CHECK_MS {
            return Ok(());
        }
        self.last_check_ms.store(now.max(1), Ordering::Relaxed);
        let current = stamp(&self.path);
        {
            let c = self.cache.read().unwrap_or_else(|p| p.into_inner());
            match (&*c, current) {
                (Cache::Empty, None) => return Ok(()),
                (Cache::Loaded { stamp, .. } | Cache::Failed { stamp, .. }, Some(now))
                    if *stamp == now =>
                {
                    return Ok(())
                }
                _ => {}
            }
        }
        let Some(st) = current else {
            *self.cache.write().unwrap_or_else(|p| p.into_inner()) = Cache::Empty;
            return Ok(());
        };
        let loaded = match file::read(&self.path)? {
            Some(bytes) => self.open_bytes(&bytes),
            None => Err(VaultError::NoVault {
                path: self.path.display().to_string(),
            }),
        };
        let next = match loaded {
            Ok(vault) => Cache::Loaded {
                vault: Box::new(vault),
                stamp: st,
            },
            Err(e) => {
                tracing::warn!(path = %self.path.display(), "the vault cannot be used: {e}");
                Cache::Failed {
                    stamp: st,
                    kind: e.kind(),
                    message: e.to_string(),
                }
            }
        };
        *self.cache.write().unwrap_or_else(|p| p.into_inner()) = next;
        Ok(())
    }

    fn lookup(&self, provider: &str) -> Result<SecretString, VaultError> {
        match &*self.cache.read().unwrap_or_else(|p| p.into_inner()) {
            Cache::Empty => Err(VaultError::NoVault {
                path: self.path.display().to_string(),
            }),
            Cache::Failed { kind, message, .. } => Err(VaultError::Unusable {
                kind: *kind,
                message: message.clone(),
            }),
            Cache::Loaded { vault, .. } => vault.retrieve(provider).map(|(_, k)| k),
        }
    }

    /// Loads the vault now (the master calls this at start, off the async runtime, so the
    /// first call does not wait for Argon2id).
    pub fn preload(&self) -> Result<(), VaultError> {
        self.refresh(true)?;
        match &*self.cache.read().unwrap_or_else(|p| p.into_inner()) {
            Cache::Failed { kind, message, .. } => Err(VaultError::Unusable {
                kind: *kind,
                message: message.clone(),
            }),
            _ => Ok(()),
        }
    }

    /// The provider's current key, decrypted for one call. Drop it as soon as the call is
    /// made: it is zeroized on drop.
    pub fn get_decrypted_key(&self, provider: &str) -> Result<SecretString, VaultError> {
        self.refresh(false)?;
        match self.lookup(provider) {
            Err(VaultError::NoSuchProvider { .. } | VaultError::NoVault { .. }) => {
                self.refresh(true)?;
                self.lookup(provider)
            }
            r => r,
        }
    }

    /// Runs one vault operation and records it in the audit log as done by `caller`.
    pub fn vault_operation_as(&self, op: VaultOp, caller: &str) -> Result<VaultResult, VaultError> {
        let (name, provider) = (op.name(), op.provider().map(str::to_owned));
        let r = self.apply(op);
        if let Some(a) = &self.audit {
            a.record(&AuditEvent {
                time_ms: now_ms(),
                op: name,
                provider: provider.as_deref(),
                model: None,
                caller,
                outcome: match &r {
                    Ok(_) => "ok".into(),
                    Err(e) => format!("error: {e}"),
                },
            });
        }
        r
    }

    /// Runs one vault operation (the seed interface); audited with caller `local`.
    pub fn vault_operation(&self, op: VaultOp) -> Result<VaultResult, VaultError> {
        self.vault_operation_as(op, "local")
    }

    fn apply(&self, op: VaultOp) -> Result<VaultResult, VaultError> {
        let _serial = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let _lock = file::lock(&self.path)?;
        let mut vault = match file::read(&self.path)? {
            Some(bytes) => self.open_bytes(&bytes)?,
            None if matches!(op, VaultOp::Store { .. }) => {
                let source = self.source.as_ref().ok_or(VaultError::NoKeySource)?;
                let v = Vault::create(source, self.params)?;
                *self.derived.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((v.kdf().clone(), v.master_key().clone()));
                v
            }
            None => {
                return Err(VaultError::NoVault {
                    path: self.path.display().to_string(),
                })
            }
        };
        let writes = op.writes();
        let rekey = matches!(op, VaultOp::RotateMasterKey { .. });
        let result = vault.apply(op)?;
        if writes {
            file::write_atomic(&self.path, &vault.to_bytes()?)?;
            if rekey {
                *self.derived.lock().unwrap_or_else(|p| p.into_inner()) =
                    Some((vault.kdf().clone(), vault.master_key().clone()));
            }
            if let Some(st) = stamp(&self.path) {
                *self.cache.write().unwrap_or_else(|p| p.into_inner()) = Cache::Loaded {
                    vault: Box::new(vault),
                    stamp: st,
                };
            }
        }
        Ok(result)
    }

    /// Checks budgets, rate buckets, concurrency and the provider's last word before a call.
    /// `input_tokens` is an estimate; `max_output_tokens` bounds the worst-case cost.
    pub fn check_quota_availability(
        &self,
        provider: &str,
        model: &str,
        input_tokens: u64,
        max_output_tokens: u64,
    ) -> Result<QuotaPermit, QuotaRefusal> {
        let now = now_ms();
        let limits = self
            .llm
            .provider(provider)
            .map(|p| p.limits)
            .unwrap_or_default();
        let worst = TokenUsage {
            input_tokens,
            output_tokens: max_output_tokens,
            cached_tokens: 0,
        };
        let (today, month) = self.usage.spend(provider, now);
        let est = CallEstimate {
            tokens: input_tokens + max_output_tokens,
            cost_micro_usd: self
                .llm
                .price(provider, model)
                .map(|p| p.cost_micro_usd(&worst)),
            spent_today_micro_usd: today,
            spent_month_micro_usd: month,
            partition: self.usage.exposure(provider),
        };
        self.limiter.check(provider, &limits, est, now)
    }

    /// Records a finished call: counters, cost from the price table, the token bucket's
    /// true-up. Returns the cost in micro-USD.
    pub async fn update_usage_stats(
        &self,
        provider: &str,
        model: &str,
        usage: &TokenUsage,
        ok: bool,
        permit: Option<&QuotaPermit>,
    ) -> anyhow::Result<u64> {
        if let Some(p) = permit {
            self.limiter.settle(p, usage.total());
        }
        let cost = self
            .llm
            .price(provider, model)
            .map(|p| p.cost_micro_usd(usage));
        self.usage
            .record(provider, model, usage, cost, ok, now_ms())
            .await
    }

    /// The usage book, shared with the loop that keeps it in step with other masters.
    pub fn usage_book(&self) -> std::sync::Arc<UsageBook> {
        self.usage.clone()
    }

    /// Feeds a provider's response headers (lower-case names) to its limiter.
    pub fn observe_headers<'a>(
        &self,
        provider: &str,
        headers: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) {
        let limits = self
            .llm
            .provider(provider)
            .map(|p| p.limits)
            .unwrap_or_default();
        self.limiter
            .observe_headers(provider, &limits, headers, now_ms());
    }

    /// The report `vgas usage` prints.
    pub fn usage_report(&self) -> UsageReport {
        let now = now_ms();
        let rows = self.usage.rows();
        let mut names: Vec<String> = rows.iter().map(|r| r.provider.clone()).collect();
        names.extend(self.llm.providers.keys().cloned());
        // Providers with a stored key (listing decrypts nothing; a locked vault lists none).
        let keyed: Vec<String> = match self.vault_operation_as(VaultOp::List, "usage-report") {
            Ok(VaultResult::Listed(list)) => list.into_iter().map(|e| e.provider).collect(),
            _ => Vec::new(),
        };
        names.extend(keyed.iter().cloned());
        names.sort();
        names.dedup();
        let providers = names
            .into_iter()
            .map(|p| {
                let (today, month) = self.usage.spend(&p, now);
                let limits = self.llm.provider(&p).map(|c| c.limits).unwrap_or_default();
                let (in_flight, blocked_until_ms) = self.limiter.snapshot(&p, now);
                let ready = self
                    .llm
                    .provider(&p)
                    .is_some_and(|c| !c.needs_key || keyed.contains(&p));
                let exposure = self.usage.exposure(&p);
                vgas_shared::llm::ProviderQuota {
                    provider: p,
                    ready,
                    spent_today_usd: today as f64 / 1e6,
                    spent_month_usd: month as f64 / 1e6,
                    daily_budget_usd: limits.daily_budget_usd,
                    monthly_budget_usd: limits.monthly_budget_usd,
                    in_flight,
                    blocked_until_ms,
                    partition: exposure.map(|x| vgas_shared::llm::PartitionSpend {
                        silent_masters: x.silent,
                        for_ms: x.for_ms,
                        spent_usd: x.own_since_micro_usd as f64 / 1e6,
                        allowance_usd: limits
                            .partition_allowance_micro_usd()
                            .map(|a| a as f64 / 1e6),
                    }),
                }
            })
            .collect();
        UsageReport {
            rows,
            rates: self.usage.rates(now),
            providers,
            answered_by: self.usage.node().to_owned(),
            masters_heard: self.usage.peers(),
        }
    }
}

#[cfg(test)]
mod tests;
