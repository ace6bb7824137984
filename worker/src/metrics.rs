//! The worker's Prometheus metrics (`vgas-worker --metrics ADDR`): attempts run by kind and
//! outcome with their run time, its slots and GPUs (set with each heartbeat), and where wasm
//! modules came from (the in-memory and on-disk compile caches, or a fresh compile). They
//! live as long as the process, across the sessions with masters that `join` runs.

use std::net::SocketAddr;
use std::sync::Arc;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use vgas_client::http::{self, Token};
use vgas_shared::wire::{TaskKind, TaskOutcome};

use crate::wasm::LoadedFrom;

/// Where `--metrics` alone serves (the master's is 9470).
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9471";

type Labels = Vec<(&'static str, String)>;
type Histograms = Family<Labels, Histogram, fn() -> Histogram>;

/// Run-time buckets: 1 ms to about 65 s, doubling.
fn run_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 17))
}

/// The worker's metrics, shared by its sessions.
#[derive(Debug)]
pub struct WorkerMetrics {
    registry: Registry,
    tasks: Family<Labels, Counter>,
    run: Histograms,
    wasm_modules: Family<Labels, Counter>,
    slots: Family<Labels, Gauge>,
    gpus: Gauge,
    draining: Gauge,
}

impl Default for WorkerMetrics {
    fn default() -> Self {
        let m = WorkerMetrics {
            registry: Registry::default(),
            tasks: Family::default(),
            run: Family::new_with_constructor(run_histogram as fn() -> Histogram),
            wasm_modules: Family::default(),
            slots: Family::default(),
            gpus: Gauge::default(),
            draining: Gauge::default(),
        };
        let mut r = Registry::with_prefix("vgas_worker");
        r.register(
            "tasks",
            "Attempts this worker ran, by kind and outcome",
            m.tasks.clone(),
        );
        r.register_with_unit(
            "task_run",
            "Assignment to result of each attempt, by kind",
            Unit::Seconds,
            m.run.clone(),
        );
        r.register(
            "wasm_modules",
            "Wasm modules loaded for tasks, by where from (memory, disk: compile cache hits; compiled: a miss)",
            m.wasm_modules.clone(),
        );
        r.register("slots", "Task slots by state (busy, free)", m.slots.clone());
        r.register("gpus", "GPUs this worker offers", m.gpus.clone());
        r.register("draining", "1 while the worker drains", m.draining.clone());
        WorkerMetrics { registry: r, ..m }
    }
}

impl WorkerMetrics {
    /// One attempt ended.
    pub fn finished(&self, kind: TaskKind, outcome: &TaskOutcome, run_ms: u64) {
        self.tasks
            .get_or_create(&vec![
                ("kind", kind.as_str().to_owned()),
                ("outcome", outcome.label().to_owned()),
            ])
            .inc();
        self.run
            .get_or_create(&vec![("kind", kind.as_str().to_owned())])
            .observe(run_ms as f64 / 1e3);
    }

    pub fn wasm_loaded(&self, from: LoadedFrom) {
        let from = match from {
            LoadedFrom::Memory => "memory",
            LoadedFrom::CompiledCache => "disk",
            LoadedFrom::Compiled => "compiled",
        };
        self.wasm_modules
            .get_or_create(&vec![("from", from.to_owned())])
            .inc();
    }

    /// What each heartbeat says about slots and devices.
    pub fn beat(&self, slots: usize, free: usize, gpus: usize, draining: bool) {
        let state = |s: &str| vec![("state", s.to_owned())];
        let free = free.min(slots);
        self.slots
            .get_or_create(&state("busy"))
            .set((slots - free) as i64);
        self.slots.get_or_create(&state("free")).set(free as i64);
        self.gpus.set(gpus as i64);
        self.draining.set(i64::from(draining));
    }
}

/// Serves `/metrics` at `addr` until `shutdown`: loopback callers, or holders of `token`.
pub async fn serve(
    addr: SocketAddr,
    token: Option<Token>,
    metrics: Arc<WorkerMetrics>,
    tracker: &TaskTracker,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    use axum::extract::ConnectInfo;
    use axum::http::HeaderMap;
    use axum::response::IntoResponse;

    let bound = http::bind(addr, "metrics").await?;
    let at = bound.addr;
    let router = axum::Router::new().route(
        "/metrics",
        axum::routing::get(
            move |ConnectInfo(peer): ConnectInfo<SocketAddr>, headers: HeaderMap| async move {
                if http::caller(peer, &headers, token.as_ref()) == http::Caller::Stranger {
                    return http::unauthorized();
                }
                http::metrics_response(&metrics.registry).into_response()
            },
        ),
    );
    http::serve(bound, router, tracker, shutdown);
    tracing::info!(addr = %at, "metrics endpoint ready");
    Ok(at)
}
