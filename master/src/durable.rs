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

/// The replica count for this swarm: the setting when there is one; one on a single server;
/// on a cluster as many as JetStream can place, up to [`CLUSTER_REPLICAS`]. The server's INFO
/// says whether it is clustered, not how many servers run JetStream (its URL list names every
/// address of every server), so a stream of three copies is tried, then two: the first that
/// JetStream places is the count. A cluster still forming may take fewer; the next master
/// start raises every stream to what it places then.
pub async fn replicas(
    client: &async_nats::Client,
    js: &jetstream::Context,
    subjects: &Subjects,
    configured: Option<Replicas>,
) -> Result<Replicas> {
    if let Some(r) = configured {
        return Ok(r);
    }
    if client.server_info().cluster.is_none() {
        return Ok(Replicas::ONE);
    }
    for n in (2..=CLUSTER_REPLICAS).rev() {
        let Ok(want) = Replicas::try_from(n as u64) else {
            continue;
        };
        if placed(js, subjects, want).await? {
            return Ok(want);
        }
        tracing::debug!(replicas = n, "JetStream cannot place this many copies");
    }
    Ok(Replicas::ONE)
}

/// Whether JetStream places a stream of `want` copies (a throw-away one of this master's):
/// `false` when it says it cannot, an error when it did not answer (a cluster electing).
async fn placed(js: &jetstream::Context, subjects: &Subjects, want: Replicas) -> Result<bool> {
    use jetstream::context::CreateStreamErrorKind;
    use jetstream::ErrorCode;
    /// JetStream's "no suitable peers for placement".
    const NO_SUITABLE_PEERS: ErrorCode = ErrorCode(10005);
    let tag = uuid::Uuid::new_v4().simple().to_string();
    let name = format!(
        "{}_PROBE_{}",
        subjects.token_prefix().to_uppercase(),
        &tag[..8]
    );
    let created = js
        .create_stream(jetstream::stream::Config {
            name: name.clone(),
            subjects: vec![format!("{}.probe.{}", subjects.prefix(), &tag[..8])],
            num_replicas: want.get(),
            storage: jetstream::stream::StorageType::Memory,
            max_messages: 1,
            ..Default::default()
        })
        .await;
    match created {
        Ok(_) => {
            js.delete_stream(&name)
                .await
                .context("delete the probe stream")?;
            Ok(true)
        }
        Err(e) => match e.kind() {
            CreateStreamErrorKind::JetStream(j)
                if [NO_SUITABLE_PEERS, ErrorCode::INSUFFICIENT_RESOURCES]
                    .contains(&j.error_code()) =>
            {
                Ok(false)
            }
            _ => Err(e).context("create a probe stream"),
        },
    }
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
