//! The master's Prometheus metrics: what it counts as it goes (tasks accepted, finished by
//! outcome, retried; dispatch and end-to-end latency; build units by origin; LLM calls,
//! tokens and cost) and what it reads at scrape time from the state `vgas status` shows
//! (queue, workers, slots, GPU leases, LLM budgets), so the two always agree. Names follow
//! Prometheus's conventions: a `vgas_` prefix, base units (seconds, USD), `_total` counters.

use std::sync::atomic::AtomicU64;

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use vgas_shared::farm::{BuildUpdate, Origin};
use vgas_shared::llm::UsageReport;
use vgas_shared::wire::{SwarmPulse, TaskOutcome};

/// Label pairs, as `prometheus-client` encodes them.
type Labels = Vec<(&'static str, String)>;
type FloatCounter = Counter<f64, AtomicU64>;
type FloatGauge = Gauge<f64, AtomicU64>;

/// Latency buckets: 0.5 ms to about 65 s, doubling; a no-op task's dispatch is under a
/// millisecond, a compile's end-to-end takes seconds.
fn latency_buckets() -> impl Iterator<Item = f64> {
    exponential_buckets(0.0005, 2.0, 18)
}

/// Everything the master exports, registered once.
#[derive(Debug)]
pub struct MasterMetrics {
    registry: Registry,
    accepted: Counter,
    finished: Family<Labels, Counter>,
    retried: Counter,
    results: Family<Labels, Counter>,
    dispatch: Histogram,
    end_to_end: Histogram,
    queue_depth: Gauge,
    queue_capacity: Gauge,
    in_flight: Gauge,
    workers: Family<Labels, Gauge>,
    slots: Family<Labels, Gauge>,
    gpus: Gauge,
    gpu_leases: Gauge,
    build_units: Family<Labels, Counter>,
    build_lookups: Family<Labels, Counter>,
    build_hit_ratio: FloatGauge,
    builds: Family<Labels, Counter>,
    llm_requests: Family<Labels, Counter>,
    llm_tokens: Family<Labels, Counter>,
    llm_cost: Family<Labels, FloatCounter>,
    llm_spent: Family<Labels, FloatGauge>,
    llm_budget_left: Family<Labels, FloatGauge>,
}

impl Default for MasterMetrics {
    fn default() -> Self {
        Self::new()
    }
}

/// A build unit's origin as a label value.
pub fn origin_label(o: &Origin) -> &'static str {
    match o {
        Origin::Worker { .. } => "worker",
        Origin::Cache => "cache",
        Origin::Local { .. } => "here",
    }
}

impl MasterMetrics {
    pub fn new() -> Self {
        let mut r = Registry::with_prefix("vgas");
        let m = MasterMetrics {
            accepted: Counter::default(),
            finished: Family::default(),
            retried: Counter::default(),
            results: Family::default(),
            dispatch: Histogram::new(latency_buckets()),
            end_to_end: Histogram::new(latency_buckets()),
            queue_depth: Gauge::default(),
            queue_capacity: Gauge::default(),
            in_flight: Gauge::default(),
            workers: Family::default(),
            slots: Family::default(),
            gpus: Gauge::default(),
            gpu_leases: Gauge::default(),
            build_units: Family::default(),
            build_lookups: Family::default(),
            build_hit_ratio: FloatGauge::default(),
            builds: Family::default(),
            llm_requests: Family::default(),
            llm_tokens: Family::default(),
            llm_cost: Family::default(),
            llm_spent: Family::default(),
            llm_budget_left: Family::default(),
            registry: Registry::default(),
        };
        r.register(
            "tasks_accepted",
            "Tasks accepted by submit",
            m.accepted.clone(),
        );
        r.register(
            "tasks_finished",
            "Tasks finished, by outcome (succeeded, failed, signaled, timed_out, limit_exceeded, error, cancelled, abandoned)",
            m.finished.clone(),
        );
        r.register(
            "tasks_retried",
            "Attempts lost and queued again",
            m.retried.clone(),
        );
        r.register(
            "results_used",
            "Worker results that ended an attempt, by how they came: direct (offered straight to the master and taken) or stream (the results stream)",
            m.results.clone(),
        );
        r.register_with_unit(
            "task_dispatch",
            "Queued to sent to a worker, per attempt",
            Unit::Seconds,
            m.dispatch.clone(),
        );
        r.register_with_unit(
            "task_end_to_end",
            "Accepted to finished, per task",
            Unit::Seconds,
            m.end_to_end.clone(),
        );
        r.register(
            "queue_depth",
            "Tasks waiting for a worker",
            m.queue_depth.clone(),
        );
        r.register(
            "queue_capacity",
            "Tasks that may wait before submit answers busy",
            m.queue_capacity.clone(),
        );
        r.register(
            "tasks_in_flight",
            "Tasks assigned to a worker, not finished",
            m.in_flight.clone(),
        );
        r.register(
            "workers",
            "Workers by state (live, draining, abnormal)",
            m.workers.clone(),
        );
        r.register(
            "slots",
            "Task slots of live workers, by state (busy, free)",
            m.slots.clone(),
        );
        r.register("gpus", "GPUs of live workers", m.gpus.clone());
        r.register(
            "gpu_leases",
            "GPUs leased to running tasks",
            m.gpu_leases.clone(),
        );
        r.register(
            "build_units",
            "Build units seen finished, by origin (worker, cache, here) and result (ok, failed)",
            m.build_units.clone(),
        );
        r.register(
            "build_cache_lookups",
            "Build cache lookups of finished builds, by result (hit, miss)",
            m.build_lookups.clone(),
        );
        r.register(
            "build_cache_hit_ratio",
            "Hits over lookups of the builds finished since the master started",
            m.build_hit_ratio.clone(),
        );
        r.register(
            "builds",
            "Builds finished, by result (ok, failed)",
            m.builds.clone(),
        );
        r.register(
            "llm_requests",
            "LLM calls through the gateway, by provider, model and result (ok, error)",
            m.llm_requests.clone(),
        );
        r.register(
            "llm_tokens",
            "LLM tokens, by provider, model and kind (input, output, cached)",
            m.llm_tokens.clone(),
        );
        r.register_with_unit(
            "llm_cost",
            "LLM spend by provider and model, from the price table",
            Unit::Other("usd".into()),
            m.llm_cost.clone(),
        );
        r.register_with_unit(
            "llm_spent",
            "LLM spend per provider over the budget periods (day, month), as vgas usage reports it",
            Unit::Other("usd".into()),
            m.llm_spent.clone(),
        );
        r.register_with_unit(
            "llm_budget_remaining",
            "Budget left per provider and period (day, month); absent without a budget",
            Unit::Other("usd".into()),
            m.llm_budget_left.clone(),
        );
        MasterMetrics { registry: r, ..m }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn accepted(&self) {
        self.accepted.inc();
    }

    pub fn retried(&self) {
        self.retried.inc();
    }

    /// A worker's result ended an attempt, read straight from the worker (`direct`) or from
    /// the results stream.
    pub fn result_used(&self, direct: bool) {
        let copy = if direct { "direct" } else { "stream" };
        self.results
            .get_or_create(&vec![("copy", copy.to_owned())])
            .inc();
    }

    /// An attempt sent to a worker after `waited_ms` in the queue.
    pub fn dispatched(&self, waited_ms: u64) {
        self.dispatch.observe(waited_ms as f64 / 1e3);
    }

    /// A task's one final result, `took_ms` after it was accepted.
    pub fn finished(&self, outcome: &TaskOutcome, took_ms: u64) {
        self.finished
            .get_or_create(&vec![("outcome", outcome.label().to_owned())])
            .inc();
        self.end_to_end.observe(took_ms as f64 / 1e3);
    }

    /// One update of a build followed on `vgas.build.*.updates`.
    pub fn build_update(&self, u: &BuildUpdate) {
        let unit = |origin: &str, result: &str| {
            self.build_units
                .get_or_create(&vec![
                    ("origin", origin.to_owned()),
                    ("result", result.to_owned()),
                ])
                .inc();
        };
        match u {
            BuildUpdate::Done { origin, .. } => unit(origin_label(origin), "ok"),
            BuildUpdate::Failed { origin, .. } => unit(origin_label(origin), "failed"),
            BuildUpdate::Finished {
                exit_code, stats, ..
            } => {
                // Calls the wrapper ran here without offering them are in the summary only.
                if stats.not_distributed > 0 {
                    self.build_units
                        .get_or_create(&vec![("origin", "here".into()), ("result", "ok".into())])
                        .inc_by(stats.not_distributed);
                }
                // One family lookup per statement: a guard held across a second lookup that
                // creates a label set would deadlock the family's lock.
                let lookup = |r: &str| vec![("result", r.to_owned())];
                let h = self
                    .build_lookups
                    .get_or_create(&lookup("hit"))
                    .inc_by(stats.cache_hits)
                    + stats.cache_hits;
                let m = self
                    .build_lookups
                    .get_or_create(&lookup("miss"))
                    .inc_by(stats.cache_misses)
                    + stats.cache_misses;
                if h + m > 0 {
                    self.build_hit_ratio.set(h as f64 / (h + m) as f64);
                }
                let result = if *exit_code == 0 { "ok" } else { "failed" };
                self.builds
                    .get_or_create(&vec![("result", result.to_owned())])
                    .inc();
            }
            _ => {}
        }
    }

    /// One LLM call the gateway finished.
    pub fn llm_call(
        &self,
        provider: &str,
        model: &str,
        usage: &vgas_shared::llm::TokenUsage,
        ok: bool,
        cost_micro_usd: u64,
    ) {
        let pm = |extra: (&'static str, &str)| {
            vec![
                ("provider", provider.to_owned()),
                ("model", model.to_owned()),
                (extra.0, extra.1.to_owned()),
            ]
        };
        let result = if ok { "ok" } else { "error" };
        self.llm_requests
            .get_or_create(&pm(("result", result)))
            .inc();
        for (kind, n) in [
            ("input", usage.input_tokens),
            ("output", usage.output_tokens),
            ("cached", usage.cached_tokens),
        ] {
            self.llm_tokens.get_or_create(&pm(("kind", kind))).inc_by(n);
        }
        self.llm_cost
            .get_or_create(&vec![
                ("provider", provider.to_owned()),
                ("model", model.to_owned()),
            ])
            .inc_by(cost_micro_usd as f64 / 1e6);
    }

    /// Sets the scrape-time gauges from what `vgas status` and `vgas usage` show.
    pub fn observe_state(
        &self,
        pulse: &SwarmPulse,
        gpu_leases: usize,
        usage: Option<&UsageReport>,
    ) {
        self.queue_depth.set(pulse.queue_depth as i64);
        self.queue_capacity.set(pulse.queue_capacity as i64);
        self.in_flight.set(pulse.in_flight as i64);
        let draining = pulse.live.iter().filter(|n| n.draining).count();
        let state = |s: &str| vec![("state", s.to_owned())];
        self.workers
            .get_or_create(&state("live"))
            .set((pulse.live.len() - draining) as i64);
        self.workers
            .get_or_create(&state("draining"))
            .set(draining as i64);
        self.workers
            .get_or_create(&state("abnormal"))
            .set(pulse.abnormal.len() as i64);
        let slots: usize = pulse.live.iter().map(|n| n.slots).sum();
        let free: usize = pulse.live.iter().map(|n| n.free_slots.min(n.slots)).sum();
        self.slots
            .get_or_create(&state("busy"))
            .set((slots - free) as i64);
        self.slots.get_or_create(&state("free")).set(free as i64);
        self.gpus
            .set(pulse.live.iter().map(|n| n.gpus.len()).sum::<usize>() as i64);
        self.gpu_leases.set(gpu_leases as i64);
        let Some(usage) = usage else { return };
        for p in &usage.providers {
            let period = |d: &str| vec![("provider", p.provider.clone()), ("period", d.to_owned())];
            self.llm_spent
                .get_or_create(&period("day"))
                .set(p.spent_today_usd);
            self.llm_spent
                .get_or_create(&period("month"))
                .set(p.spent_month_usd);
            if let Some(b) = p.daily_budget_usd {
                self.llm_budget_left
                    .get_or_create(&period("day"))
                    .set((b - p.spent_today_usd).max(0.0));
            }
            if let Some(b) = p.monthly_budget_usd {
                self.llm_budget_left
                    .get_or_create(&period("month"))
                    .set((b - p.spent_month_usd).max(0.0));
            }
        }
    }
}
