//! What the master's web dashboard sends its page: one JSON view per page (swarm, tasks,
//! builds, one build, LLM), pushed over server-sent events when it changes, and the rows of a
//! task's own page. Browser-facing: field names are the page's contract (`docs/dashboard.md`).
//! No view carries a key, a credential or a task's input (`stdin`, `env`, files).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::agent::PerformanceStats;
use crate::llm::{ProviderQuota, UsageRate, UsageRow};
use crate::wire::AbnormalNode;

/// Rows one page of a list shows: a page of 1,000 workers would be 300 KB each update.
pub const BOARD_PAGE_ROWS: usize = 50;

/// The swarm's figures, on top of every view.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Overview {
    pub workers_live: usize,
    pub workers_abnormal: usize,
    pub slots: usize,
    pub slots_busy: usize,
    pub queue_depth: usize,
    pub queue_capacity: usize,
    pub in_flight: usize,
    pub tasks_accepted: u64,
    pub tasks_finished: u64,
    pub gpus: usize,
    pub gpu_leases: usize,
    pub uptime_ms: u64,
}

/// Where a paged list stands.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Paging {
    /// From 0.
    pub page: usize,
    pub pages: usize,
    pub total: usize,
    pub per_page: usize,
}

impl Paging {
    /// The page `page` of `total` rows (clamped to the last page) and the rows it covers.
    pub fn of(total: usize, page: usize) -> (Paging, std::ops::Range<usize>) {
        let per_page = BOARD_PAGE_ROWS;
        let pages = total.div_ceil(per_page).max(1);
        let page = page.min(pages - 1);
        let start = page * per_page;
        let paging = Paging {
            page,
            pages,
            total,
            per_page,
        };
        (paging, start.min(total)..(start + per_page).min(total))
    }
}

/// One worker on the swarm page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct WorkerRow {
    pub id: String,
    pub hostname: String,
    /// `live` or `draining` (abnormal workers are listed apart).
    pub state: String,
    pub slots: usize,
    pub busy: usize,
    pub cpus: usize,
    pub memory_mb: u64,
    /// `name version` of each toolchain.
    pub toolchains: Vec<String>,
    pub capabilities: Vec<String>,
    /// `name (memory MiB)` of each GPU.
    pub gpus: Vec<String>,
    pub isolation: String,
    pub last_seen_ms_ago: u64,
    pub tasks_done: u64,
}

/// An mDNS node that did not join, and why.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnjoinedRow {
    pub node_id: String,
    pub role: String,
    pub addresses: Vec<String>,
    pub reason: String,
}

/// The swarm page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SwarmView {
    pub overview: Overview,
    pub paging: Paging,
    pub workers: Vec<WorkerRow>,
    pub abnormal: Vec<AbnormalNode>,
    pub unjoined: Vec<UnjoinedRow>,
}

/// One task as the dashboard shows it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskRow {
    pub id: String,
    /// `exec`, `wasm`, `compile`, `cuda`...
    pub kind: String,
    /// `queued`, `running` or `finished`.
    pub state: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    pub attempt: u32,
    pub accepted_ms: u64,
    /// When it entered its present state (queued, started on its worker, finished).
    pub since_ms: u64,
    /// For finished tasks: the outcome in words, and whether it succeeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<bool>,
    /// For finished tasks: accepted to finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_ms: Option<u64>,
}

/// The tasks page: the queue's head, the running tasks (paged), the latest finished.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TasksView {
    pub overview: Overview,
    pub queued: Vec<TaskRow>,
    pub paging: Paging,
    pub running: Vec<TaskRow>,
    pub finished: Vec<TaskRow>,
}

/// One compile unit of a build.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UnitRow {
    pub segment: String,
    /// `queued`, `compiling`, `done` or `failed`.
    pub state: String,
    /// Once done or failed: `worker`, `cache` or `here`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub origin: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker: Option<String>,
    /// Why it ran here, or why it was retried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub compile_ms: u64,
}

/// One build, summed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BuildRow {
    pub id: String,
    pub started_ms: u64,
    pub units: usize,
    pub queued: usize,
    pub compiling: usize,
    pub on_workers: usize,
    pub from_cache: usize,
    pub here: usize,
    pub failed: usize,
    /// Units compiled per worker.
    pub per_worker: BTreeMap<String, u64>,
    /// Why units ran here, with their counts (the build's own summary once it finished).
    pub here_reasons: BTreeMap<String, u64>,
    pub finished: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    pub wall_ms: u64,
}

/// The builds page.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildsView {
    pub overview: Overview,
    pub builds: Vec<BuildRow>,
}

/// One build's page: its units, paged, the ones in progress first.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct BuildView {
    pub overview: Overview,
    pub build: BuildRow,
    pub paging: Paging,
    pub units: Vec<UnitRow>,
}

/// The LLM page: spend against budgets, rates, agents.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LlmView {
    pub overview: Overview,
    pub providers: Vec<ProviderQuota>,
    pub rows: Vec<UsageRow>,
    pub rates: Vec<UsageRate>,
    pub agents: Vec<PerformanceStats>,
}

/// A task page's output: `stdout` or `stderr` text of the current attempt.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutputChunk {
    pub stream: String,
    pub attempt: u32,
    pub data: String,
}

/// `<prefix>.dashboard` answers this: where the master's dashboard is, token included, for
/// `vgas dashboard`. Only clients may ask (a worker's grants do not include it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DashboardInfo {
    /// `None` when the master runs without `--dashboard`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paging_clamps_to_the_last_page() {
        let (p, r) = Paging::of(120, 9);
        assert_eq!((p.page, p.pages, p.total), (2, 3, 120));
        assert_eq!(r, 100..120);
        let (p, r) = Paging::of(0, 0);
        assert_eq!((p.page, p.pages), (0, 1));
        assert_eq!(r, 0..0);
        let (_, r) = Paging::of(50, 0);
        assert_eq!(r, 0..50);
    }
}
