//! `vgas status`: the swarm's `SwarmPulse` as a table (or JSON), with the agents' figures
//! when any agent has run; `--view` shows the node and GPU-lease view any master holds
//! (`swarm.view`), which is also what `vgas status` falls back to when no master leads.

use anyhow::Result;
use std::collections::BTreeMap;
use vgas_shared::crdt::view::ViewReport;
use vgas_shared::wire::SwarmPulse;

use crate::api::Swarm;

/// Prints the swarm's status; the exit code.
pub async fn run(swarm: &Swarm, json: bool, view: bool) -> Result<i32> {
    if view {
        return show_view(swarm, json).await;
    }
    let pulse: SwarmPulse = match swarm
        .request(swarm.subjects.status(), &BTreeMap::<String, String>::new())
        .await
    {
        Ok(p) => p,
        Err(e) => {
            // No master leads (none runs, or this side of a partition cannot elect one):
            // what a standing-by master knows is still worth showing.
            let Ok(report) = view_of(swarm).await else {
                return Err(e);
            };
            eprintln!("no master answers status ({e:#}); the view of one standing by:");
            super::print_stdout(&render_view(&report))?;
            return Ok(1);
        }
    };
    if json {
        super::print_stdout(&format!("{}\n", serde_json::to_string_pretty(&pulse)?))?;
        return Ok(0);
    }
    super::print_stdout(&render_status(&pulse))?;
    // Agents, when any has run (`vgas agent stats --json` for the figures).
    if let Ok(kv) = crate::agents::bucket(&swarm.client, &swarm.subjects).await {
        if let Ok(stats) = crate::agents::all_stats(&kv).await {
            if !stats.is_empty() {
                super::print_stdout(&format!("agents:\n{}", crate::agents::render_stats(&stats)))?;
            }
        }
    }
    Ok(0)
}

/// The view of whichever master answers first.
async fn view_of(swarm: &Swarm) -> Result<ViewReport> {
    swarm
        .request_within(
            swarm.subjects.swarm_view(),
            &BTreeMap::<String, String>::new(),
            std::time::Duration::from_secs(3),
        )
        .await
}

async fn show_view(swarm: &Swarm, json: bool) -> Result<i32> {
    let report = view_of(swarm).await?;
    match json {
        true => super::print_stdout(&format!("{}\n", serde_json::to_string_pretty(&report)?))?,
        false => super::print_stdout(&render_view(&report))?,
    }
    Ok(0)
}

/// The `vgas status --view` table.
pub fn render_view(v: &ViewReport) -> String {
    let role = if v.leading { "leading" } else { "standing by" };
    let others = match v.masters.is_empty() {
        true => "no other master heard".to_owned(),
        false => format!("other masters heard: {}", v.masters.join(", ")),
    };
    let mut s = format!(
        "view of {} ({role}; {others}): {} workers, {} GPU leases\n",
        v.answered_by,
        v.nodes.len(),
        v.leases.len()
    );
    s.push_str(&format!(
        "{:<28} {:<14} {:>5} {:>4} {:>6}  {}\n",
        "WORKER", "HOST", "SLOTS", "GPUS", "HEARD", "BY"
    ));
    let now = vgas_shared::now_ms();
    for n in &v.nodes {
        let state = if n.draining { " (draining)" } else { "" };
        s.push_str(&format!(
            "{:<28} {:<14} {:>5} {:>4} {:>5}s  {}{state}\n",
            n.id.as_str(),
            n.hostname,
            n.slots,
            n.gpus.len(),
            now.saturating_sub(n.heard_ms) / 1000,
            n.heard_by
        ));
    }
    for l in &v.leases {
        s.push_str(&format!(
            "  GPU {} {}: leased to {} (by {})\n",
            l.worker.as_str(),
            l.device,
            l.task,
            l.by
        ));
    }
    s
}

/// The `vgas status` table.
pub fn render_status(p: &SwarmPulse) -> String {
    let mut s = format!(
        "{} live, {} abnormal | queue {}/{} | in flight {} | accepted {} finished {}\n",
        p.live.len(),
        p.abnormal.len(),
        p.queue_depth,
        p.queue_capacity,
        p.in_flight,
        p.tasks_accepted,
        p.tasks_finished
    );
    if let Some(m) = &p.master {
        s.push_str(&format!(
            "master {} on {} (leading for {} s) | replicas {}\n",
            m.id,
            m.host,
            vgas_shared::now_ms().saturating_sub(m.since_ms) / 1000,
            p.replicas
        ));
    }
    if p.waiting_for_gpus > 0 {
        s.push_str(&format!(
            "{} queued tasks wait for a GPU\n",
            p.waiting_for_gpus
        ));
    }
    s.push_str(&format!(
        "{:<28} {:<14} {:>5} {:>4} {:>5} {:>4} {:>7} {:>5} {:>6} {:>5}  {:<10} {}\n",
        "WORKER",
        "HOST",
        "SLOTS",
        "BUSY",
        "LOAD",
        "CPUS",
        "MEM_MB",
        "DONE",
        "SEEN",
        "GPUS",
        "ISOLATION",
        "CAPABILITIES"
    ));
    for n in &p.live {
        let state = if n.draining { " (draining)" } else { "" };
        let gpus = if n.gpus.is_empty() {
            "-".to_owned()
        } else {
            format!(
                "{}/{}",
                n.gpus.len() - n.leases.len().min(n.gpus.len()),
                n.gpus.len()
            )
        };
        s.push_str(&format!(
            "{:<28} {:<14} {:>5} {:>4} {:>5.2} {:>4} {:>7} {:>5} {:>5}s {:>5}  {:<10} {}{}\n",
            n.id.as_str(),
            n.hostname,
            n.slots,
            n.in_flight,
            n.load1,
            n.cpus,
            n.memory_mb,
            n.tasks_done,
            n.last_seen_ms_ago / 1000,
            gpus,
            n.isolation,
            n.capabilities.join(","),
            state
        ));
    }
    // One line per GPU: what it is and who holds it.
    for n in &p.live {
        for d in &n.gpus {
            let holder = n
                .leases
                .iter()
                .find(|(u, _)| *u == d.uuid)
                .map_or_else(|| "free".to_owned(), |(_, t)| format!("leased to {t}"));
            let driver = n
                .cuda_driver
                .as_deref()
                .map_or(String::new(), |v| format!(", CUDA {v}"));
            s.push_str(&format!(
                "  GPU {}#{} {}{driver}: {holder}\n",
                n.id.as_str(),
                d.index,
                vgas_shared::gpu::describe(d)
            ));
        }
    }
    for u in &p.unjoined {
        let why = u.not_joined.map(|w| w.describe()).unwrap_or("");
        s.push_str(&format!(
            "SEEN     {:<28} cluster {} at {:?}: {}\n",
            u.advert.node_id, u.advert.cluster, u.addresses, why
        ));
    }
    for a in &p.abnormal {
        s.push_str(&format!(
            "ABNORMAL {:<28} {} (last seen {}s ago)\n",
            a.id.as_str(),
            a.reason,
            a.last_seen_ms_ago / 1000
        ));
    }
    s
}
