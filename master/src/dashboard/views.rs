//! Each dashboard page's view, built from the master's state. Nothing here carries a key,
//! a credential or a task's input: the views are made of counts, names and outcomes.

use std::time::Instant;

use vgas_shared::agent::PerformanceStats;
use vgas_shared::discovery::SeenNode;
use vgas_shared::wire::board::{
    BuildView, BuildsView, LlmView, Overview, Paging, SwarmView, TasksView, UnjoinedRow, WorkerRow,
    BOARD_PAGE_ROWS,
};
use vgas_shared::wire::{NodeStatus, SwarmPulse};

use super::{Shared, AGENT_STATS_MAX_AGE};

/// Which page a stream feeds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Page {
    Swarm { page: usize },
    Tasks { page: usize },
    Builds,
    Build { id: String, page: usize },
    Llm,
}

impl Page {
    /// From the stream's query: `view`, `page`, `id`.
    pub fn parse(view: &str, page: usize, id: Option<&str>) -> Result<Page, String> {
        Ok(match view {
            "swarm" => Page::Swarm { page },
            "tasks" => Page::Tasks { page },
            "builds" => Page::Builds,
            "build" => {
                let id = id.ok_or("view=build needs id")?;
                if id.is_empty() || id.len() > 128 {
                    return Err("a build id is 1 to 128 characters".into());
                }
                Page::Build {
                    id: id.to_owned(),
                    page,
                }
            }
            "llm" => Page::Llm,
            other => {
                return Err(format!(
                    "unknown view {other:?}: swarm, tasks, builds, build or llm"
                ))
            }
        })
    }
}

/// A stream's own cache of what is slow to read (agent statistics from the bucket).
#[derive(Debug, Default)]
pub struct Cache {
    agents: Option<(Instant, Vec<PerformanceStats>)>,
}

/// The overview alone, uptime included (a task's page has no view of its own).
pub fn overview_now(s: &Shared) -> Overview {
    Overview {
        uptime_ms: vgas_shared::now_ms().saturating_sub(s.handlers.started_ms),
        ..overview(&s.handlers.status())
    }
}

fn overview(pulse: &SwarmPulse) -> Overview {
    let gpu_leases = pulse.live.iter().map(|n| n.leases.len()).sum();
    Overview {
        workers_live: pulse.live.len(),
        workers_abnormal: pulse.abnormal.len(),
        slots: pulse.live.iter().map(|n| n.slots).sum(),
        slots_busy: pulse
            .live
            .iter()
            .map(|n| n.slots.saturating_sub(n.free_slots))
            .sum(),
        queue_depth: pulse.queue_depth,
        queue_capacity: pulse.queue_capacity,
        in_flight: pulse.in_flight,
        tasks_accepted: pulse.tasks_accepted,
        tasks_finished: pulse.tasks_finished,
        gpus: pulse.live.iter().map(|n| n.gpus.len()).sum(),
        gpu_leases,
        // Left out of the comparison that decides whether a view changed (see `routes`).
        uptime_ms: 0,
    }
}

fn worker_row(n: &NodeStatus) -> WorkerRow {
    WorkerRow {
        id: n.id.to_string(),
        hostname: n.hostname.clone(),
        state: if n.draining { "draining" } else { "live" }.into(),
        slots: n.slots,
        busy: n.slots.saturating_sub(n.free_slots),
        cpus: n.cpus,
        memory_mb: n.memory_mb,
        toolchains: n
            .toolchains
            .iter()
            .map(|t| match short_version(&t.version) {
                Some(v) => format!("{} {v}", t.name),
                None => t.name.clone(),
            })
            .collect(),
        capabilities: capabilities(&n.capabilities),
        gpus: n
            .gpus
            .iter()
            .map(|g| format!("{} ({} MiB)", g.name, g.memory_total_mb))
            .collect(),
        isolation: n.isolation.clone(),
        last_seen_ms_ago: n.last_seen_ms_ago,
        tasks_done: n.tasks_done,
    }
}

/// The version number in a `--version` line (`gcc (Debian 12.2.0-14) 12.2.0` gives
/// `12.2.0-14`): its first word that starts with a digit.
fn short_version(line: &str) -> Option<&str> {
    line.split_whitespace()
        .map(|w| w.trim_matches(|c| c == '(' || c == ')' || c == ','))
        .find(|w| w.starts_with(|c: char| c.is_ascii_digit()))
}

/// Capability tags, the compiler identities (`compiler:<hash>`, one per compiler) counted
/// instead of listed.
fn capabilities(tags: &[String]) -> Vec<String> {
    let compilers = tags.iter().filter(|t| t.starts_with("compiler:")).count();
    let mut out: Vec<String> = tags
        .iter()
        .filter(|t| !t.starts_with("compiler:"))
        .cloned()
        .collect();
    if compilers > 0 {
        out.push(format!("{compilers} compiler identities"));
    }
    out
}

fn unjoined_row(n: &SeenNode) -> UnjoinedRow {
    UnjoinedRow {
        node_id: n.advert.node_id.clone(),
        role: match n.advert.mode {
            vgas_shared::discovery::ClientMode::Master => "master",
            vgas_shared::discovery::ClientMode::Slave => "worker",
        }
        .into(),
        addresses: n.addresses.iter().map(|a| a.to_string()).collect(),
        reason: n
            .not_joined
            .map(|r| r.describe().to_owned())
            .unwrap_or_default(),
    }
}

/// The page's view as JSON, with `uptime_ms` left at 0.
pub async fn build(s: &Shared, page: &Page, cache: &mut Cache) -> serde_json::Value {
    let mut pulse = s.handlers.status();
    let ov = overview(&pulse);
    let json = match page {
        Page::Swarm { page } => {
            pulse.live.sort_by(|a, b| a.id.as_str().cmp(b.id.as_str()));
            let (paging, range) = Paging::of(pulse.live.len(), *page);
            serde_json::to_value(SwarmView {
                overview: ov,
                paging,
                workers: pulse.live[range].iter().map(worker_row).collect(),
                abnormal: pulse.abnormal.clone(),
                unjoined: pulse.unjoined.iter().map(unjoined_row).collect(),
            })
        }
        Page::Tasks { page } => {
            let board = s.observe.board.as_ref();
            let (queued, running, finished) =
                board.map(|b| b.tasks(BOARD_PAGE_ROWS)).unwrap_or_default();
            let (paging, range) = Paging::of(running.len(), *page);
            serde_json::to_value(TasksView {
                overview: ov,
                queued,
                paging,
                running: running[range].to_vec(),
                finished,
            })
        }
        Page::Builds => serde_json::to_value(BuildsView {
            overview: ov,
            builds: s
                .observe
                .board
                .as_ref()
                .map(|b| b.builds())
                .unwrap_or_default(),
        }),
        Page::Build { id, page } => {
            let found = s.observe.board.as_ref().and_then(|b| b.build(id));
            let (build, units) = found.unwrap_or_default();
            let (paging, range) = Paging::of(units.len(), *page);
            serde_json::to_value(BuildView {
                overview: ov,
                build,
                paging,
                units: units[range].to_vec(),
            })
        }
        Page::Llm => {
            let keys = s.keys.clone();
            let report = tokio::task::spawn_blocking(move || keys.usage_report())
                .await
                .unwrap_or_default();
            serde_json::to_value(LlmView {
                overview: ov,
                providers: report.providers,
                rows: report.rows,
                rates: report.rates,
                agents: agents(s, cache).await,
            })
        }
    };
    json.unwrap_or_default()
}

/// The agents' statistics, read again at most every [`AGENT_STATS_MAX_AGE`].
async fn agents(s: &Shared, cache: &mut Cache) -> Vec<PerformanceStats> {
    if let Some((at, stats)) = &cache.agents {
        if at.elapsed() < AGENT_STATS_MAX_AGE {
            return stats.clone();
        }
    }
    let subjects = &s.handlers.subjects;
    let stats = match vgas_client::agents::bucket(&s.client, subjects).await {
        Ok(kv) => vgas_client::agents::all_stats(&kv)
            .await
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    cache.agents = Some((Instant::now(), stats.clone()));
    stats
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_and_capabilities_read_short() {
        assert_eq!(
            short_version("gcc (Debian 12.2.0-14+deb12u1) 12.2.0"),
            Some("12.2.0-14+deb12u1")
        );
        assert_eq!(
            short_version("rustc 1.95.0 (59807616e 2026-04-14)"),
            Some("1.95.0")
        );
        assert_eq!(short_version("GNU Make 4.3"), Some("4.3"));
        assert_eq!(short_version("no digits here"), None);
        let tags = ["wasm", "compiler:ab", "compiler:cd", "make"].map(String::from);
        assert_eq!(
            capabilities(&tags),
            ["wasm", "make", "2 compiler identities"]
        );
    }
}
