//! Whether a unit goes to the swarm or compiles in place, here: a unit that no worker on
//! another host could take gains nothing from the round trip (the preprocessed text to a
//! worker on these same CPUs, its sandbox, the object back), so it compiles here, in place,
//! with the user's own command line. The swarm's view (which compilers the live workers on
//! other hosts offer) comes from `vgas.status`, fetched when first needed and again when
//! older than [`VIEW_TTL`]; hosts are told apart by [`vgas_shared::host::host_id`].

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;
use vgas_shared::wire::SwarmPulse;

use crate::api::Swarm;

/// `0` turns compiling in place off: every unit goes to the swarm, even one only a worker
/// on this host could take.
pub const ENV_IN_PLACE: &str = "VGAS_IN_PLACE";

/// How long one view of the swarm is trusted: workers join and leave over seconds, and one
/// status request per unit would cost more than it tells.
pub const VIEW_TTL: Duration = Duration::from_secs(2);

/// How long the status request may take; past it the unit goes to the swarm as before.
const STATUS_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, Default)]
struct View {
    fetched: Option<Instant>,
    /// Capability tags offered by live, non-draining workers on other hosts; `None` when the
    /// swarm could not be asked.
    elsewhere: Option<HashSet<String>>,
    /// Capability tags offered by live workers on this host.
    here: HashSet<String>,
}

/// The build's view of where units can go (cheap to clone; one per build).
#[derive(Debug, Clone)]
pub struct Placement {
    host: Option<String>,
    view: Arc<Mutex<View>>,
}

impl Placement {
    /// Compiling in place unless `VGAS_IN_PLACE=0`.
    pub fn from_env() -> Placement {
        let on = std::env::var(ENV_IN_PLACE).map_or(true, |v| v != "0");
        Placement {
            host: on.then(vgas_shared::host::host_id),
            view: Arc::default(),
        }
    }

    /// Never in place (a plan run by the master: it has no "here" to compile in).
    pub fn off() -> Placement {
        Placement {
            host: None,
            view: Arc::default(),
        }
    }

    /// Why a unit needing capability `tag` compiles here, or `None` to send it to the swarm.
    pub async fn here_reason(&self, swarm: &Swarm, tag: &str) -> Option<String> {
        let host = self.host.as_deref()?;
        let mut view = self.view.lock().await;
        if view.fetched.is_none_or(|t| t.elapsed() > VIEW_TTL) {
            let pulse = swarm
                .request_within::<_, SwarmPulse>(
                    swarm.subjects.status(),
                    &std::collections::BTreeMap::<String, String>::new(),
                    STATUS_TIMEOUT,
                )
                .await;
            *view = match pulse {
                Ok(p) => view_of(&p, host),
                Err(e) => {
                    tracing::debug!("swarm status for placement: {e:#}");
                    View::default()
                }
            };
            view.fetched = Some(Instant::now());
        }
        reason(&view, tag)
    }
}

fn view_of(p: &SwarmPulse, host: &str) -> View {
    let mut v = View {
        elsewhere: Some(HashSet::new()),
        ..View::default()
    };
    for n in p.live.iter().filter(|n| !n.draining) {
        let tags = n.capabilities.iter().cloned();
        if n.host == host {
            v.here.extend(tags);
        } else if let Some(e) = v.elsewhere.as_mut() {
            e.extend(tags);
        }
    }
    v
}

fn reason(v: &View, tag: &str) -> Option<String> {
    let elsewhere = v.elsewhere.as_ref()?;
    if elsewhere.contains(tag) {
        None
    } else if v.here.contains(tag) {
        Some("in place: only this host's workers have this compiler".into())
    } else {
        Some("in place: no worker has this compiler".into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vgas_shared::wire::NodeStatus;

    fn node(id: &str, host: &str, tag: &str, draining: bool) -> NodeStatus {
        NodeStatus {
            id: vgas_shared::WorkerId::parse(id).unwrap(),
            hostname: "h".into(),
            host: host.into(),
            slots: 2,
            free_slots: 2,
            in_flight: 0,
            cpus: 2,
            memory_mb: 1,
            load1: 0.0,
            capabilities: vec![tag.into()],
            toolchains: Vec::new(),
            isolation: "full".into(),
            draining,
            last_seen_ms_ago: 0,
            tasks_done: 0,
        }
    }

    #[test]
    fn a_unit_stays_here_only_when_no_other_host_could_take_it() {
        let pulse = |nodes: Vec<NodeStatus>| SwarmPulse {
            live: nodes,
            ..SwarmPulse::default()
        };
        let here = view_of(&pulse(vec![node("w1", "me", "compiler:a", false)]), "me");
        assert!(reason(&here, "compiler:a")
            .unwrap()
            .contains("only this host"));
        assert!(reason(&here, "compiler:b").unwrap().contains("no worker"));
        let both = view_of(
            &pulse(vec![
                node("w1", "me", "compiler:a", false),
                node("w2", "other", "compiler:a", false),
            ]),
            "me",
        );
        assert_eq!(reason(&both, "compiler:a"), None);
        // A draining worker elsewhere takes nothing new.
        let draining = view_of(&pulse(vec![node("w2", "other", "compiler:a", true)]), "me");
        assert!(reason(&draining, "compiler:a").is_some());
        // When the swarm cannot be asked, units go to it as before.
        assert_eq!(reason(&View::default(), "compiler:a"), None);
    }
}
