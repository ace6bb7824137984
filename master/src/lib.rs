//! The vgas master: admission, the Gatling scheduler (`AgentScheduler`), the task lifecycle,
//! the NATS micro service people and tools talk to, the LLM gateway and key vault, and the
//! build plan runner. What runs on a submitter's machine (the `vgas` CLI, the compiler
//! wrapper) is `vgas-client`.
//!
//! `run` is the whole master; `main` only parses arguments, sets up tracing and hands over a
//! cancellation token, so tests and benchmarks start the same master in-process.

pub mod dashboard;
pub mod discovery;
pub mod dispatch;
pub mod durable;
pub mod farm;
pub mod gateway;
pub mod keys;
pub mod leader;
pub mod metrics;
pub mod observe;
pub mod retention;
pub mod scheduler;
pub mod service;
pub mod store;
pub mod vault_cli;
pub mod view;

use std::sync::Arc;

use anyhow::{Context, Result};
use async_nats::service::ServiceExt;
use tokio::sync::{mpsc, Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::info;
use vgas_client::http::Reserved;
use vgas_shared::config::Resolved;
use vgas_shared::limits::{DEFAULT_QUEUE_CAPACITY, SHUTDOWN_TIMEOUT};
use vgas_shared::now_ms;

use crate::dispatch::Dispatcher;
use crate::scheduler::AgentScheduler;
use crate::service::{EndpointKind, Handlers};

/// How long a starting master keeps asking a JetStream that is not ready (a cluster electing
/// its leaders) before it gives up.
const JETSTREAM_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// Commands in flight to the dispatcher: bounded, so a flood of results or submits waits.
const COMMAND_CHANNEL_CAPACITY: usize = 1024;

/// Master settings after flags, environment and file are merged.
#[derive(Debug, Clone)]
pub struct MasterConfig {
    pub conn: Resolved,
    pub queue_capacity: usize,
    /// The nats-server monitoring port to put in the mDNS advert, when the operator gives it.
    pub advertise_http_port: Option<u16>,
    /// The build cache's size bound.
    pub build_cache_bytes: u64,
    /// The web dashboard (with `/metrics`), when it is on.
    pub dashboard: Option<dashboard::DashboardConfig>,
    /// A metrics-only endpoint, when asked for.
    pub metrics_addr: Option<std::net::SocketAddr>,
    /// The bearer token `/metrics` wants from elsewhere than loopback (the operator's
    /// dashboard token); without one only loopback may read it.
    pub metrics_token: Option<vgas_client::http::Token>,
    /// How long a finished task's record keeps its spec's payload.
    pub spec_retention: std::time::Duration,
}

impl MasterConfig {
    pub fn new(conn: Resolved) -> Self {
        let queue_capacity = conn
            .file
            .master
            .queue_capacity
            .unwrap_or(DEFAULT_QUEUE_CAPACITY);
        let build_cache_bytes = conn
            .file
            .master
            .build_cache_mb
            .map(|mb| mb * 1024 * 1024)
            .unwrap_or(vgas_client::farm::cache::DEFAULT_CACHE_BYTES);
        MasterConfig {
            conn,
            queue_capacity,
            advertise_http_port: None,
            build_cache_bytes,
            dashboard: None,
            metrics_addr: None,
            metrics_token: None,
            spec_retention: retention::DEFAULT_SPEC_RETENTION,
        }
    }
}

/// Runs the master until `shutdown` fires: as a standby while another master holds the
/// master lease, as the swarm's leader while it holds it (see [`leader`]), and back to
/// standby if it loses it.
pub async fn run(cfg: MasterConfig, shutdown: CancellationToken) -> Result<()> {
    // Bound before anything else, once: an address this master cannot have stops it here.
    let endpoints = Endpoints {
        dashboard: match &cfg.dashboard {
            Some(d) => Some(Reserved::bind(d.addr, "dashboard")?),
            None => None,
        },
        metrics: match cfg.metrics_addr {
            Some(addr) => Some(Reserved::bind(addr, "metrics")?),
            None => None,
        },
    };
    let client = vgas_client::connect::connect(&cfg.conn, "vgas-master").await?;
    let js = async_nats::jetstream::new(client.clone());
    // A cluster that has just formed (or lost a server) refuses JetStream requests for a few
    // seconds while it elects leaders: the first ones are tried again for a while.
    let started = std::time::Instant::now();
    let (replicas, lease_kv) = loop {
        let ready = async {
            let replicas =
                durable::replicas(&client, &js, &cfg.conn.subjects, cfg.conn.replicas).await?;
            let changed = durable::keep_replicas(&js, &cfg.conn.subjects, replicas).await?;
            if !changed.is_empty() {
                info!(%replicas, streams = ?changed, "brought the swarm's streams to the replica count");
            }
            keys::usage::UsageBook::create_bucket(&js, &cfg.conn.subjects, replicas).await?;
            let kv = leader::open(&js, &cfg.conn.subjects, replicas).await?;
            anyhow::Ok((replicas, kv))
        };
        match ready.await {
            Ok(ready) => break ready,
            Err(e) if started.elapsed() < JETSTREAM_WAIT => {
                tracing::warn!("JetStream not ready yet: {e:#}");
                tokio::select! {
                    _ = shutdown.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(std::time::Duration::from_millis(500)) => {}
                }
            }
            Err(e) => return Err(e),
        }
    };
    let node_id = format!(
        "master-{}",
        uuid::Uuid::new_v4().simple().to_string().split_at(8).0
    );
    let observe = Arc::new(observe::Observe::new(cfg.dashboard.is_some(), &node_id));
    let tracker = TaskTracker::new();
    // The LLM gateway runs on every master, leading or standing by: calls are served
    // through a failover and on both sides of a partition, budgets held across masters by
    // the usage CRDT (`keys::usage::sync`).
    let llm_service = client
        .service_builder()
        .description("vgas LLM gateway: completions and usage, on every master")
        .start(
            cfg.conn.subjects.llm_service_name(),
            env!("CARGO_PKG_VERSION"),
        )
        .await
        .map_err(|e| anyhow::anyhow!("register the micro service: {e}"))?;
    let gateway = gateway::start(
        &cfg.conn,
        &js,
        &llm_service,
        client.clone(),
        &tracker,
        shutdown.clone(),
        observe.clone(),
    )
    .await?;
    // The node and lease view, on every master too (`sync_distributed_state`).
    let leading: view::Leading = Arc::default();
    let view_service = view::start(
        &cfg.conn.subjects,
        client.clone(),
        Arc::new(view::ViewBook::new(&node_id)),
        leading.clone(),
        &tracker,
        shutdown.clone(),
    )
    .await?;
    let base = Base {
        client: client.clone(),
        js,
        replicas,
        observe,
        gateway,
        leading,
        endpoints,
        announced: dispatch::Announced::default(),
    };
    let outcome = loop {
        let me = vgas_shared::wire::MasterLease {
            id: node_id.clone(),
            host: vgas_shared::host::hostname(),
            since_ms: now_ms(),
        };
        // While it waits for the lease, this master hears what the leader announces.
        let standby = shutdown.child_token();
        let hearing = match client.subscribe(cfg.conn.subjects.all_task_events()).await {
            Ok(sub) => Some(tracker.spawn({
                let (announced, stop) = (base.announced.clone(), standby.clone());
                async move { announced.hear(sub, stop).await }
            })),
            Err(e) => {
                tracing::warn!("cannot hear the leader's announcements: {e}");
                None
            }
        };
        let acquired = leader::acquire(&lease_kv, &me, &shutdown).await;
        standby.cancel();
        if let Some(hearing) = hearing {
            let _ = hearing.await;
        }
        let Some(lease) = acquired? else {
            break Ok(());
        };
        info!(id = %node_id, %replicas, "leading the swarm");
        let term = shutdown.child_token();
        let keeper = tracker.spawn(lease.keep(term.clone(), shutdown.clone()));
        let served = lead(&cfg, &base, me, term.clone()).await;
        term.cancel();
        *base.leading.lock().unwrap_or_else(|p| p.into_inner()) = None;
        let ended = keeper.await.unwrap_or(leader::Ended::Lost);
        if shutdown.is_cancelled() || ended == leader::Ended::Stopped {
            break served;
        }
        // A term that failed (JetStream between leaders, say) ends like a lost lease: this
        // master stands by again, and the next one to take the lease retries.
        if let Err(e) = served {
            tracing::error!(id = %node_id, "leading the swarm failed: {e:#}");
        }
        tracing::warn!(id = %node_id, "no longer the leader: standing by");
        tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            _ = tokio::time::sleep(leader::LEASE_RENEW) => {}
        }
    };
    shutdown.cancel();
    wind_down(&tracker, "the LLM gateway and the view").await;
    let _ = llm_service.stop().await;
    let _ = view_service.stop().await;
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, client.drain()).await;
    info!("master stopped");
    outcome
}

/// Closes `tracker` and waits for its tasks (their token already cancelled), at most
/// [`SHUTDOWN_TIMEOUT`].
async fn wind_down(tracker: &TaskTracker, what: &str) {
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_TIMEOUT, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("{what} did not stop within {SHUTDOWN_TIMEOUT:?}");
    }
}

/// What a master keeps from one term as leader to the next.
struct Base {
    client: async_nats::Client,
    js: async_nats::jetstream::Context,
    replicas: vgas_shared::config::Replicas,
    observe: Arc<observe::Observe>,
    gateway: gateway::Gateway,
    /// The lease table the view follows while this master leads.
    leading: view::Leading,
    endpoints: Endpoints,
    /// The tasks announced lately, by any term: a result that comes again in the next one
    /// (its acknowledgement lost with the server that ended the last) announces nothing.
    announced: dispatch::Announced,
}

/// The HTTP addresses, bound at start and served while this master leads.
struct Endpoints {
    dashboard: Option<Reserved>,
    metrics: Option<Reserved>,
}

/// The swarm's master while this process holds the lease: everything below runs until
/// `shutdown` (the lease's term) fires.
async fn lead(
    cfg: &MasterConfig,
    base: &Base,
    me: vgas_shared::wire::MasterLease,
    shutdown: CancellationToken,
) -> Result<()> {
    let (client, js, replicas) = (base.client.clone(), base.js.clone(), base.replicas);
    let subjects = cfg.conn.subjects.clone();
    let key_path = cfg.conn.state_dir.join(vgas_shared::vault::RECORD_KEY_FILE);
    let record_key = vgas_shared::vault::RecordKey::load_or_create(&key_path)
        .with_context(|| format!("the record key {}", key_path.display()))?;
    let store = store::TaskStore::open(&js, &subjects, record_key, replicas).await?;
    let consumer = store::results_consumer(&js, &subjects, replicas).await?;
    store::open_modules_bucket(&js, &subjects, replicas).await?;
    store::open_artifacts_bucket(&js, &subjects, replicas).await?;
    store::open_ptx_bucket(&js, &subjects, replicas).await?;
    vgas_client::farm::cache::open_buckets(&js, &subjects, cfg.build_cache_bytes, replicas).await?;
    vgas_client::agents::open_bucket(&js, &subjects, replicas).await?;

    let sched = Arc::new(AgentScheduler::new());
    let tracker = TaskTracker::new();
    let (tx, rx) = mpsc::channel(COMMAND_CHANNEL_CAPACITY.max(cfg.queue_capacity));
    let wake = Arc::new(Notify::new());
    let observe = base.observe.clone();
    let counters = observe.counters.clone();

    let mut dispatcher = Dispatcher::new(
        sched.clone(),
        store.clone(),
        client.clone(),
        subjects.clone(),
        tx.clone(),
        tracker.clone(),
        observe.clone(),
    );
    let leases = dispatcher.lease_table();
    let records = store.all().await?;
    let (retention, dropping) = retention::Retention::new(cfg.spec_retention);
    retention.recover(&store, &records).await;
    dispatcher.set_retention(retention.clone());
    dispatcher.set_announced(base.announced.clone());
    tracker.spawn(retention::run(
        store.clone(),
        retention,
        dropping,
        shutdown.clone(),
    ));
    dispatcher.recover(records);
    *base.leading.lock().unwrap_or_else(|p| p.into_inner()) = Some(leases.clone());

    let heartbeats = client
        .subscribe(subjects.all_heartbeats())
        .await
        .context("subscribe to heartbeats")?;
    let mdns = discovery::start(
        &cfg.conn,
        &me.id,
        cfg.advertise_http_port,
        &tracker,
        shutdown.clone(),
    );
    let handlers = Handlers {
        sched: sched.clone(),
        store,
        counters,
        tx: tx.clone(),
        subjects: subjects.clone(),
        admission: Arc::new(Semaphore::new(cfg.queue_capacity)),
        queue_capacity: cfg.queue_capacity,
        started_ms: now_ms(),
        seen: mdns.as_ref().map(|(_, seen)| seen.clone()),
        cluster: cfg.conn.cluster.clone(),
        leases,
        master: me,
        replicas,
        client: client.clone(),
        tracker: tracker.clone(),
    };
    let service = client
        .service_builder()
        .description("vgas master: task admission, Gatling dispatch, swarm status")
        .start(subjects.service_name(), env!("CARGO_PKG_VERSION"))
        .await
        .map_err(|e| anyhow::anyhow!("register the micro service: {e}"))?;
    let endpoints = [
        (EndpointKind::Submit, "submit", subjects.submit()),
        (EndpointKind::Run, "run", subjects.task_run()),
        (EndpointKind::Status, "status", subjects.status()),
        (EndpointKind::Info, "info", subjects.task_info()),
        (EndpointKind::Cancel, "cancel", subjects.task_cancel()),
    ];
    for (kind, name, subject) in endpoints {
        let ep = service
            .endpoint_builder()
            .name(name)
            .add(subject.clone())
            .await
            .map_err(|e| anyhow::anyhow!("add endpoint {subject}: {e}"))?;
        let h = handlers.clone();
        let stop = shutdown.clone();
        tracker.spawn(async move {
            tokio::select! {
                _ = h.serve(kind, ep) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
    let gateway = &base.gateway;

    // Every build's updates, for the metrics and the dashboard; then the HTTP endpoints.
    let (stop, c2, s2, o2) = (
        shutdown.clone(),
        client.clone(),
        subjects.clone(),
        observe.clone(),
    );
    tracker.spawn(observe::follow_builds(c2, s2, o2, stop));
    let shared = dashboard::Shared {
        handlers: handlers.clone(),
        observe: observe.clone(),
        keys: gateway.keys.clone(),
        client: client.clone(),
        token: None,
        stop: shutdown.clone(),
    };
    let dashboard_url = match (&cfg.dashboard, &base.endpoints.dashboard) {
        (Some(d), Some(reserved)) => Some(dashboard::start(
            d,
            reserved,
            shared.clone(),
            &tracker,
            shutdown.clone(),
        )?),
        _ => None,
    };
    if let Some(reserved) = &base.endpoints.metrics {
        let shared = dashboard::Shared {
            token: cfg.metrics_token.clone(),
            ..shared
        };
        dashboard::start_metrics(reserved, shared, &tracker, shutdown.clone())?;
    }
    let info_ep = service
        .endpoint_builder()
        .name("dashboard")
        .add(subjects.dashboard())
        .await
        .map_err(|e| anyhow::anyhow!("add endpoint {}: {e}", subjects.dashboard()))?;
    tracker.spawn(dashboard::answer_info(
        info_ep,
        dashboard_url,
        shutdown.clone(),
    ));

    // Build plans from any NATS client, and the build cache's size bound.
    farm::service::start(
        &cfg.conn,
        &service,
        client.clone(),
        sched.clone(),
        &tracker,
        shutdown.clone(),
    )
    .await?;
    let (stop, js2, s3, bound) = (
        shutdown.clone(),
        js.clone(),
        subjects.clone(),
        cfg.build_cache_bytes,
    );
    tracker.spawn(async move {
        let mut tick = tokio::time::interval(vgas_client::farm::cache::SWEEP_INTERVAL);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = tick.tick() => {
                    if let Err(e) = vgas_client::farm::cache::sweep(&js2, &s3, bound).await {
                        tracing::warn!("build cache sweep: {e:#}");
                    }
                }
            }
        }
    });

    let stop = shutdown.clone();
    let (s2, w2) = (sched.clone(), wake.clone());
    tracker.spawn(async move {
        tokio::select! {
            _ = service::heartbeats(heartbeats, s2, w2) => {}
            _ = stop.cancelled() => {}
        }
    });
    // Results offered straight by their workers, outside the stream (dispatch::direct).
    let direct = client
        .subscribe(subjects.all_results_direct())
        .await
        .context("subscribe to the workers' direct results")?;
    let stop = shutdown.clone();
    let (tx2, s2, c2) = (tx.clone(), subjects.clone(), client.clone());
    tracker.spawn(async move {
        tokio::select! {
            () = dispatch::direct::read(direct, c2, s2, tx2) => {}
            _ = stop.cancelled() => {}
        }
    });
    let stop = shutdown.clone();
    let (tx2, s2) = (tx.clone(), subjects.clone());
    tracker.spawn(async move {
        tokio::select! {
            r = service::results(consumer, s2, tx2) => {
                if let Err(e) = r { tracing::error!("results consumer ended: {e:#}"); }
            }
            _ = stop.cancelled() => {}
        }
    });
    drop(tx);
    info!(prefix = subjects.prefix(), url = %cfg.conn.nats_url, "master ready");
    dispatcher.run(rx, wake, shutdown.clone()).await;

    shutdown.cancel();
    wind_down(&tracker, "the leader's tasks").await;
    let _ = service.stop().await;
    if let Some((d, _)) = mdns {
        tokio::task::spawn_blocking(move || d.stop()).await.ok();
    }
    // Everything sent as leader is on its way before a standby may take over.
    let _ = tokio::time::timeout(SHUTDOWN_TIMEOUT, client.flush()).await;
    Ok(())
}

/// Sets up `tracing` with `RUST_LOG` (default `info`), logging to stderr.
pub fn init_tracing() {
    vgas_shared::logging::init("info");
}

/// Cancels `token` on SIGINT or SIGTERM.
pub async fn shutdown_on_signal(token: CancellationToken) {
    use tokio::signal::unix::{signal, SignalKind};
    let Ok(mut term) = signal(SignalKind::terminate()) else {
        return;
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    info!("shutdown requested");
    token.cancel();
}
