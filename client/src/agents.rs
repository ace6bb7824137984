//! The master's side of AI agents: the agents KV bucket (memory, stats and knowledge base of
//! every agent; see `vgas_shared::agent`), created at start with a bound, and the reads and
//! writes the CLI makes on it: a directory added to an agent's knowledge base (chunked, a
//! batch of chunks per key, a re-added document replacing its old chunks), and the stats.

use std::path::Path;

use anyhow::{bail, Context, Result};
use async_nats::jetstream::{self, kv};
use futures::StreamExt as _;
use sha2::{Digest, Sha256};
use vgas_shared::agent::PerformanceStats;
use vgas_shared::kb::{chunk_document, Chunk, MAX_KB_CHUNKS};
use vgas_shared::Subjects;

/// Disk the agents bucket may use (256 MiB): memory and stats are small; the knowledge bases
/// are the bulk, at most `MAX_KB_CHUNKS` chunks of about 1 KiB each per agent.
pub const AGENTS_BUCKET_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// Chunks stored under one key: about 200 KiB, well under the 1 MiB message limit.
pub const CHUNKS_PER_KEY: usize = 160;

/// Largest file `kb add` reads: bigger ones are data, not documents.
pub const MAX_KB_FILE_BYTES: u64 = 4 * 1024 * 1024;

/// Creates (or opens) the agents bucket.
pub async fn open_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: vgas_shared::config::Replicas,
) -> Result<kv::Store> {
    let bucket = subjects.agents_bucket();
    js.create_key_value(kv::Config {
        bucket: bucket.clone(),
        description: "vgas agents: memory, stats, knowledge bases".into(),
        history: 1,
        max_bytes: AGENTS_BUCKET_MAX_BYTES,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.get(),
        ..Default::default()
    })
    .await
    .with_context(|| format!("open JetStream KV bucket {bucket}"))
}

/// The agents bucket, as a client opens it.
pub async fn bucket(client: &async_nats::Client, subjects: &Subjects) -> Result<kv::Store> {
    let js = jetstream::new(client.clone());
    let name = subjects.agents_bucket();
    js.get_key_value(&name)
        .await
        .with_context(|| format!("open the agents bucket {name} (is vgas-master running?)"))
}

/// Text documents under `dir`, relative paths, sorted; binary and oversized files skipped.
fn documents(dir: &Path) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).with_context(|| format!("read {}", d.display()))? {
            let e = e?;
            let ft = e.file_type()?;
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') {
                continue;
            }
            if ft.is_dir() {
                stack.push(e.path());
            } else if ft.is_file() && e.metadata()?.len() <= MAX_KB_FILE_BYTES {
                let Ok(text) = std::fs::read_to_string(e.path()) else {
                    continue;
                };
                let rel = e.path().strip_prefix(dir)?.to_string_lossy().into_owned();
                out.push((rel, text));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// Adds every text document under `dir` to `agent`'s knowledge base; returns (documents,
/// chunks) added.
pub async fn kb_add(kv: &kv::Store, agent: &str, dir: &Path) -> Result<(usize, usize)> {
    vgas_shared::agent::validate_agent_name(agent)?;
    let docs = documents(dir)?;
    if docs.is_empty() {
        bail!("{} holds no text document", dir.display());
    }
    let prefix = format!("kb.{agent}.");
    let mut existing: Vec<String> = Vec::new();
    let mut keys = kv.keys().await.context("list the knowledge base")?;
    while let Some(k) = keys.next().await {
        let k = k.context("list the knowledge base")?;
        if k.starts_with(&prefix) {
            existing.push(k);
        }
    }
    let mut had = 0usize;
    for k in &existing {
        if let Some(v) = kv.get(k).await? {
            had += serde_json::from_slice::<Vec<Chunk>>(&v).map_or(0, |c| c.len());
        }
    }
    let mut added = 0;
    for (source, text) in &docs {
        let doc = hex::encode(&Sha256::digest(source.as_bytes())[..8]);
        // A document added again replaces its chunks.
        for k in existing
            .iter()
            .filter(|k| k.starts_with(&format!("{prefix}{doc}-")))
        {
            kv.purge(k).await.with_context(|| format!("replace {k}"))?;
        }
        let chunks = chunk_document(source, text);
        if had + added + chunks.len() > MAX_KB_CHUNKS {
            bail!(
                "{source}: the knowledge base of {agent} would pass {MAX_KB_CHUNKS} chunks; \
                 {added} chunks were added before it"
            );
        }
        for (n, batch) in chunks.chunks(CHUNKS_PER_KEY).enumerate() {
            let key = format!("{prefix}{doc}-{n:04}");
            kv.put(&key, serde_json::to_vec(batch)?.into())
                .await
                .with_context(|| format!("write {key}"))?;
        }
        added += chunks.len();
    }
    Ok((docs.len(), added))
}

/// Every agent's stats.
pub async fn all_stats(kv: &kv::Store) -> Result<Vec<PerformanceStats>> {
    let mut names = Vec::new();
    let mut keys = kv.keys().await.context("list the agents")?;
    while let Some(k) = keys.next().await {
        let k = k?;
        if let Some(name) = k.strip_prefix("stats.") {
            names.push(name.to_owned());
        }
    }
    names.sort();
    let mut out = Vec::new();
    for n in names {
        if let Some(v) = kv.get(format!("stats.{n}")).await? {
            if let Ok(s) = serde_json::from_slice::<PerformanceStats>(&v) {
                out.push(s);
            }
        }
    }
    Ok(out)
}

/// The stats table of `vgas agent stats` and `vgas status`.
pub fn render_stats(stats: &[PerformanceStats]) -> String {
    let mut s = String::from(
        "agent            runs calls in-flight  p50 ms  p90 ms  p99 ms  tok/s in  tok/s out   cpu ms    cost $\n",
    );
    for a in stats {
        s.push_str(&format!(
            "{:<16} {:>4} {:>5} {:>9} {:>7} {:>7} {:>7} {:>9.1} {:>10.1} {:>8} {:>9.6}\n",
            a.agent,
            a.runs,
            a.calls,
            a.in_flight,
            a.p50_ms,
            a.p90_ms,
            a.p99_ms,
            a.tokens_in_per_s,
            a.tokens_out_per_s,
            a.cpu_ms,
            a.cost_usd
        ));
    }
    s
}
