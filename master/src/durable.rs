//! How many copies JetStream keeps of what vgas stores. One server keeps one; a cluster
//! keeps up to three (Raft replicates each stream, so a server can die with its disk and
//! nothing accepted is lost). The master decides once at start, makes every stream, bucket
//! and object store with that count, and brings the ones an earlier start made to it: a
//! swarm that grew from one server into a cluster gets its copies at the next master start.

use anyhow::{Context, Result};
use async_nats::jetstream;
use vgas_shared::config::Replicas;
use vgas_shared::Subjects;

/// Copies on a cluster when no setting says: three survive any one server's loss, which is
/// what a cluster is for; more copies cost every write another round trip.
pub const CLUSTER_REPLICAS: u8 = 3;

/// The replica count for this swarm: the setting when there is one; otherwise one on a
/// single server, and on a cluster one per server up to [`CLUSTER_REPLICAS`]. The server's
/// INFO names its cluster and lists the client URLs of every server in it (itself included).
pub fn replicas(client: &async_nats::Client, configured: Option<Replicas>) -> Replicas {
    if let Some(r) = configured {
        return r;
    }
    let info = client.server_info();
    if info.cluster.is_none() {
        return Replicas::ONE;
    }
    let servers = info.connect_urls.len().clamp(1, CLUSTER_REPLICAS as usize);
    Replicas::try_from(servers as u64).unwrap_or(Replicas::ONE)
}

/// Every stream vgas makes (a KV bucket's and an object store's by their stream names).
pub fn streams(subjects: &Subjects) -> Vec<String> {
    let kv = [
        subjects.tasks_bucket(),
        subjects.ptx_bucket(),
        subjects.usage_bucket(),
        subjects.agents_bucket(),
        subjects.build_cache_bucket(),
        subjects.leader_bucket(),
    ];
    let objects = [
        subjects.modules_bucket(),
        subjects.artifacts_bucket(),
        subjects.build_objects_bucket(),
        subjects.build_sources_bucket(),
    ];
    std::iter::once(subjects.results_stream())
        .chain(kv.iter().map(|b| Subjects::kv_stream(b)))
        .chain(objects.iter().map(|b| Subjects::object_stream(b)))
        .collect()
}

/// Brings every stream of [`streams`] that exists to `want` copies (JetStream adds or drops
/// peers and catches them up in the background). Returns the streams it changed.
pub async fn keep_replicas(
    js: &jetstream::Context,
    subjects: &Subjects,
    want: Replicas,
) -> Result<Vec<String>> {
    let mut changed = Vec::new();
    for name in streams(subjects) {
        let Ok(mut stream) = js.get_stream(&name).await else {
            continue;
        };
        let info = stream
            .info()
            .await
            .with_context(|| format!("read stream {name}"))?;
        if info.config.num_replicas == want.get() {
            continue;
        }
        let mut config = info.config.clone();
        config.num_replicas = want.get();
        js.update_stream(config).await.with_context(|| {
            format!(
                "set stream {name} to {want} replicas (a cluster needs at least that many \
                 servers with JetStream; set `replicas` to fewer)"
            )
        })?;
        changed.push(name);
    }
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_bucket_of_the_swarm_is_listed_once() {
        let s = Subjects::default();
        let names = streams(&s);
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len());
        assert!(names.contains(&"KV_vgas_tasks".to_owned()));
        assert!(names.contains(&"OBJ_vgas_build_objects".to_owned()));
        assert!(names.contains(&"VGAS_RESULTS".to_owned()));
        assert!(names.contains(&"KV_vgas_leader".to_owned()));
    }
}
