//! Durable state in JetStream: the tasks bucket (one record per accepted task, written before
//! the submitter hears "accepted") and the results stream (worker outcomes, kept until the
//! master has recorded them). Both outlive a master restart.

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use async_nats::jetstream::{self, consumer, kv, stream};
use bytes::Bytes;
use futures::TryStreamExt;
use vgas_shared::codec::{decode_as, encode};
use vgas_shared::config::Replicas;
use vgas_shared::vault::RecordKey;
use vgas_shared::wire::{EnvValue, SealedValue, TaskRecord, TaskSpec};
use vgas_shared::{Encoding, Subjects, TaskId};

/// How long a finished task's record stays queryable with `vgas.task.info`.
pub const RECORD_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// How long a worker result may wait in the stream for a master to take it.
pub const RESULT_MAX_AGE: Duration = Duration::from_secs(24 * 3600);

/// How long the master has to record a result before JetStream hands it out again: also how
/// long a restarted master waits for the results its killed predecessor had taken but not
/// recorded. Short, because a result handed out twice is harmless (the second finds its task
/// finished and is dropped), while a long wait holds the worker's slot that long. Applies to
/// a results consumer when it is created.
pub const RESULT_ACK_WAIT: Duration = Duration::from_secs(5);

/// How long a submit's record write is tried while the tasks stream cannot take it: a
/// cluster elects a new stream leader within a few seconds of losing one.
pub const CREATE_RETRY_FOR: Duration = Duration::from_secs(8);

/// Durable consumer name of the master on the results stream.
pub const RESULTS_CONSUMER: &str = "master";

/// The tasks bucket. Secret env values go in sealed under the master's record key and come
/// out open: no record at rest holds one in clear.
#[derive(Clone, Debug)]
pub struct TaskStore {
    kv: kv::Store,
    key: Arc<RecordKey>,
}

/// What `create` found.
#[derive(Debug)]
pub enum Created {
    New,
    Exists(Box<TaskRecord>),
}

impl TaskStore {
    pub async fn open(
        js: &jetstream::Context,
        subjects: &Subjects,
        key: RecordKey,
        replicas: Replicas,
    ) -> Result<Self> {
        let bucket = subjects.tasks_bucket();
        let kv = js
            .create_key_value(kv::Config {
                bucket: bucket.clone(),
                description: "vgas task records".into(),
                history: 1,
                max_age: RECORD_MAX_AGE,
                storage: jetstream::stream::StorageType::File,
                num_replicas: replicas.get(),
                ..Default::default()
            })
            .await
            .with_context(|| {
                format!("open JetStream KV bucket {bucket} (is JetStream enabled?)")
            })?;
        Ok(TaskStore {
            kv,
            key: Arc::new(key),
        })
    }

    /// The keyed digest of `spec` that its record keeps (see [`TaskRecord::submitted_as`]).
    pub fn digest(&self, spec: &TaskSpec) -> Result<String> {
        Ok(self.key.digest(&encode(Encoding::MsgPack, spec)?))
    }

    /// `rec` as it is stored: its secret env values sealed for its task.
    fn at_rest<'a>(&self, rec: &'a TaskRecord) -> Result<Cow<'a, TaskRecord>> {
        if !rec
            .spec
            .env
            .values()
            .any(|v| v.is_secret() && v.clear().is_some())
        {
            return Ok(Cow::Borrowed(rec));
        }
        let mut sealed = rec.clone();
        for v in sealed.spec.env.values_mut() {
            if let (true, Some(clear)) = (v.is_secret(), v.clear()) {
                let s = self
                    .key
                    .seal(clear, rec.task_id.as_str())
                    .context("seal a secret env value")?;
                *v = EnvValue::Sealed(SealedValue { sealed: s });
            }
        }
        Ok(Cow::Owned(sealed))
    }

    /// A stored record made usable: its sealed values opened. One that does not open (the
    /// record key was changed) stays sealed, and the worker fails the task saying so.
    fn in_use(&self, mut rec: TaskRecord) -> TaskRecord {
        for (name, v) in rec.spec.env.iter_mut() {
            if let EnvValue::Sealed(s) = v {
                match self.key.open(&s.sealed, rec.task_id.as_str()) {
                    Some(clear) => *v = EnvValue::secret(clear),
                    None => tracing::warn!(
                        task_id = %rec.task_id,
                        env = %name,
                        "a secret env value does not open with this master's record key"
                    ),
                }
            }
        }
        rec
    }

    fn encode_at_rest(&self, rec: &TaskRecord) -> Result<Bytes> {
        Ok(Bytes::from(encode(
            Encoding::MsgPack,
            &*self.at_rest(rec)?,
        )?))
    }

    /// Writes a new record; if the id is taken, returns the record already there. A write
    /// the stream cannot take yet (a cluster electing the tasks stream's new leader) is tried
    /// again for up to [`CREATE_RETRY_FOR`] before the submit is refused.
    pub async fn create(&self, rec: &TaskRecord) -> Result<Created> {
        let bytes = self.encode_at_rest(rec)?;
        let started = std::time::Instant::now();
        loop {
            match self.kv.create(rec.task_id.as_str(), bytes.clone()).await {
                Ok(_) => return Ok(Created::New),
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    let existing = self
                        .get(&rec.task_id)
                        .await?
                        .context("task record vanished while being read")?;
                    return Ok(Created::Exists(Box::new(existing)));
                }
                Err(e) if started.elapsed() < CREATE_RETRY_FOR => {
                    tracing::debug!(task_id = %rec.task_id, "task record not written yet: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e).context("write task record"),
            }
        }
    }

    pub async fn put(&self, rec: &TaskRecord) -> Result<()> {
        let bytes = self.encode_at_rest(rec)?;
        self.kv
            .put(rec.task_id.as_str(), bytes)
            .await
            .with_context(|| format!("update task record {}", rec.task_id))?;
        Ok(())
    }

    /// Writes many records at once: the writes are sent together and their acknowledgements
    /// awaited together, one round trip for all instead of one each. One result per record,
    /// in order.
    pub async fn put_all(&self, recs: &[&TaskRecord]) -> Vec<Result<()>> {
        futures::future::join_all(recs.iter().map(|r| self.put(r))).await
    }

    /// The record as it is stored, secret values sealed: what `vgas.task.info` answers.
    pub async fn get(&self, id: &TaskId) -> Result<Option<TaskRecord>> {
        let Some(bytes) = self.kv.get(id.as_str()).await.context("read task record")? else {
            return Ok(None);
        };
        Ok(Some(decode_as(Encoding::MsgPack, &bytes)?))
    }

    /// Every record in the bucket, secret values opened to run (used once, when the master
    /// starts).
    pub async fn all(&self) -> Result<Vec<TaskRecord>> {
        let keys: Vec<String> = match self.kv.keys().await {
            Ok(keys) => keys.try_collect().await.context("list task records")?,
            Err(e) => return Err(e).context("list task records"),
        };
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            let Ok(id) = TaskId::parse(&key) else {
                continue;
            };
            match self.get(&id).await {
                Ok(Some(rec)) => out.push(self.in_use(rec)),
                Ok(None) => {}
                Err(e) => tracing::warn!(task_id = %key, "skipping unreadable task record: {e:#}"),
            }
        }
        Ok(out)
    }
}

/// Creates (or binds to) the results stream and the master's durable consumer on it.
pub async fn results_consumer(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: Replicas,
) -> Result<consumer::PullConsumer> {
    let name = subjects.results_stream();
    let config = stream::Config {
        name: name.clone(),
        // Workers' events too: in order with their results, and kept while no master runs.
        subjects: vec![subjects.all_results(), subjects.all_worker_events()],
        retention: stream::RetentionPolicy::WorkQueue,
        storage: stream::StorageType::File,
        max_age: RESULT_MAX_AGE,
        num_replicas: replicas.get(),
        ..Default::default()
    };
    let mut stream = js
        .get_or_create_stream(config.clone())
        .await
        .with_context(|| format!("open JetStream stream {name}"))?;
    // A stream made by an older master captures the subjects results had then: results on
    // today's would reach no stream. Its subjects are brought up to date.
    if stream.cached_info().config.subjects != config.subjects {
        let mut updated = stream.cached_info().config.clone();
        updated.subjects = config.subjects.clone();
        js.update_stream(updated)
            .await
            .with_context(|| format!("update the subjects of JetStream stream {name}"))?;
        stream = js
            .get_stream(&name)
            .await
            .context("reopen the results stream")?;
    }
    // A fresh consumer each start. The one a killed master left keeps its pull requests, and
    // the server goes on delivering to them while anything still matches their inbox (any
    // wildcard subscriber does): a worker's event could vanish there and come back after
    // `RESULT_ACK_WAIT`, behind the events and result that followed it. Every message not
    // acknowledged stays in the work-queue stream, so the new consumer delivers them all at
    // once, in stream order.
    match stream.delete_consumer(RESULTS_CONSUMER).await {
        Ok(_) => tracing::debug!("replaced the previous master's results consumer"),
        Err(e) => tracing::debug!("no previous results consumer to replace: {e}"),
    }
    stream
        .create_consumer(consumer::pull::Config {
            durable_name: Some(RESULTS_CONSUMER.into()),
            ack_policy: consumer::AckPolicy::Explicit,
            ack_wait: RESULT_ACK_WAIT,
            ..Default::default()
        })
        .await
        .context("create the master's results consumer")
}

/// Results in the results stream not yet delivered to the master's consumer.
pub async fn results_not_delivered(js: &jetstream::Context, subjects: &Subjects) -> Result<u64> {
    let mut consumer: consumer::PullConsumer = js
        .get_consumer_from_stream(RESULTS_CONSUMER, subjects.results_stream())
        .await
        .context("open the results consumer")?;
    let info = consumer.info().await.context("read the results consumer")?;
    Ok(info.num_pending)
}

/// Opens the wasm modules Object Store bucket, creating it (file storage, bounded by
/// `MODULES_BUCKET_MAX_BYTES`) if it does not exist yet. Clients put modules into it by hash;
/// workers read them.
pub async fn open_modules_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: Replicas,
) -> Result<()> {
    let bucket = subjects.modules_bucket();
    if js.get_object_store(&bucket).await.is_ok() {
        return Ok(());
    }
    js.create_object_store(jetstream::object_store::Config {
        bucket: bucket.clone(),
        description: Some("vgas wasm modules, named sha256:<hex> of their bytes".into()),
        max_bytes: vgas_shared::limits::MODULES_BUCKET_MAX_BYTES,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.get(),
        ..Default::default()
    })
    .await
    .with_context(|| format!("create the Object Store bucket {bucket}"))?;
    Ok(())
}

/// Opens the wasm artifacts Object Store bucket, creating it (file storage, bounded by
/// `ARTIFACTS_BUCKET_MAX_BYTES`, objects kept `ARTIFACT_MAX_AGE`) if it does not exist yet.
/// Workers put artifacts too large to send inline into it; clients read them.
pub async fn open_artifacts_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: Replicas,
) -> Result<()> {
    let bucket = subjects.artifacts_bucket();
    if js.get_object_store(&bucket).await.is_ok() {
        return Ok(());
    }
    js.create_object_store(jetstream::object_store::Config {
        bucket: bucket.clone(),
        description: Some("vgas wasm artifacts, named <task id>/<attempt>/<path>".into()),
        max_bytes: vgas_shared::limits::ARTIFACTS_BUCKET_MAX_BYTES,
        max_age: vgas_shared::limits::ARTIFACT_MAX_AGE,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.get(),
        ..Default::default()
    })
    .await
    .with_context(|| format!("create the Object Store bucket {bucket}"))?;
    Ok(())
}

/// Most bytes the PTX cache keeps: PTX is text of a few KiB to a few MiB per kernel; the
/// oldest entries go first past this.
pub const PTX_BUCKET_MAX_BYTES: i64 = 256 * 1024 * 1024;

/// How long a PTX cache entry lives: rebuilt in seconds when gone, so a week is plenty.
pub const PTX_MAX_AGE: Duration = Duration::from_secs(7 * 24 * 3600);

/// Opens the PTX cache KV bucket (`cuda` tasks' compiled kernels), creating it if needed.
pub async fn open_ptx_bucket(
    js: &jetstream::Context,
    subjects: &Subjects,
    replicas: Replicas,
) -> Result<()> {
    let bucket = subjects.ptx_bucket();
    if js.get_key_value(&bucket).await.is_ok() {
        return Ok(());
    }
    js.create_key_value(kv::Config {
        bucket: bucket.clone(),
        description: "vgas PTX cache: NVRTC output by source, options, arch and version".into(),
        history: 1,
        max_age: PTX_MAX_AGE,
        max_bytes: PTX_BUCKET_MAX_BYTES,
        max_value_size: vgas_shared::limits::MAX_PTX_CACHE_ENTRY_BYTES as i32,
        storage: jetstream::stream::StorageType::File,
        num_replicas: replicas.get(),
        ..Default::default()
    })
    .await
    .with_context(|| format!("create the KV bucket {bucket}"))?;
    Ok(())
}
