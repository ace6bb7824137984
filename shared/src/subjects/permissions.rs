//! What each role may publish and subscribe to, derived from the same names the processes
//! use, so `auth.conf` (written by `vgas init`) can never drift from the subjects: a renamed
//! subject renames its grant. The JetStream API subjects a KV or Object Store client needs
//! are NATS's own naming (`$JS.API.*`, `$KV.<bucket>.*`, `$O.<bucket>.*`).

use super::Subjects;
use crate::config::Role;
use crate::identity::NodeRole;
use crate::ids::WorkerId;

/// One role's grants: subjects (with wildcards) it may publish to and subscribe to.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Permissions {
    pub publish: Vec<String>,
    pub subscribe: Vec<String>,
    /// It may answer requests sent to it (the worker answers its assignments, a client the
    /// requests for its build's sources).
    pub allow_responses: bool,
}

/// What reading an Object Store bucket backed by `stream` takes: stream info, the object's
/// meta, an ordered consumer over its chunks.
fn object_read(stream: &str) -> Vec<String> {
    vec![
        "$JS.API.INFO".to_owned(),
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.CONSUMER.CREATE.{stream}"),
        format!("$JS.API.CONSUMER.CREATE.{stream}.>"),
        format!("$JS.API.CONSUMER.DELETE.{stream}.>"),
        format!("$JS.API.CONSUMER.INFO.{stream}.>"),
        format!("$JS.FC.{stream}.>"),
    ]
}

/// What putting into bucket `bucket` (stream `stream`) takes beyond reading: its chunks and
/// meta, and the purge that replacing an object does.
fn object_write(bucket: &str, stream: &str) -> Vec<String> {
    vec![
        format!("$O.{bucket}.>"),
        format!("$JS.API.STREAM.PURGE.{stream}"),
    ]
}

/// What reading KV bucket `bucket` takes: its stream's info and direct or API gets.
fn kv_read(bucket: &str) -> Vec<String> {
    let stream = Subjects::kv_stream(bucket);
    vec![
        format!("$JS.API.STREAM.INFO.{stream}"),
        format!("$JS.API.DIRECT.GET.{stream}.>"),
        format!("$JS.API.STREAM.MSG.GET.{stream}"),
    ]
}

/// Writing KV bucket `bucket`'s keys.
fn kv_write(bucket: &str) -> String {
    format!("$KV.{bucket}.>")
}

/// Emptying KV bucket `bucket` in one request: a purge of its stream.
fn kv_purge(bucket: &str) -> String {
    format!("$JS.API.STREAM.PURGE.{}", Subjects::kv_stream(bucket))
}

/// Puts `mine` where `grants` has `all`: a grant over every worker narrowed to one.
fn swap(grants: &mut [String], all: &str, mine: String) {
    for g in grants.iter_mut().filter(|g| g.as_str() == all) {
        *g = mine.clone();
    }
}

/// The inboxes request-reply answers arrive on.
const INBOXES: &str = "_INBOX.>";

/// The inbox prefix of a node identity's connections: its replies (JetStream API answers,
/// object and KV reads among them) arrive under it, where no other worker may subscribe.
pub fn node_inbox_prefix(node: &str) -> String {
    format!("_INBOX.{node}")
}

fn node_inboxes(node: &WorkerId) -> String {
    format!("{}.>", node_inbox_prefix(node.as_str()))
}

/// The NATS micro services' discovery subjects (`$SRV.PING`, `$SRV.INFO`, `$SRV.STATS`).
const SERVICE_DISCOVERY: &str = "$SRV.>";

impl Subjects {
    /// Wildcard over every worker's assignments.
    pub fn all_worker_tasks(&self) -> String {
        format!("{}.worker.*.task", self.prefix)
    }

    /// Wildcard over every worker's cancel subject.
    pub fn all_worker_cancels(&self) -> String {
        format!("{}.worker.*.cancel", self.prefix)
    }

    /// Wildcard over every build's updates.
    pub fn all_build_updates(&self) -> String {
        format!("{}.build.*.updates", self.prefix)
    }

    /// Wildcard over every build's offered sources.
    pub fn all_build_sources(&self) -> String {
        format!("{}.build.*.source", self.prefix)
    }

    /// Wildcard over everything under every task (its events).
    pub fn all_task_subjects(&self) -> String {
        format!("{}.task.*.>", self.prefix)
    }

    /// The grants of `role`. The master may do anything; a worker reads assignments and
    /// publishes heartbeats, events and results; a client submits, follows and reads.
    pub fn permissions(&self, role: Role) -> Permissions {
        let (modules, modules_stream) = (self.modules_bucket(), self.modules_stream());
        let (artifacts, artifacts_stream) = (self.artifacts_bucket(), self.artifacts_stream());
        let (cache, objects, sources) = (
            self.build_cache_bucket(),
            self.build_objects_bucket(),
            self.build_sources_bucket(),
        );
        let (objects_stream, sources_stream) =
            (Self::object_stream(&objects), Self::object_stream(&sources));
        // The agents bucket: workers running agents read and write memory and stats and read
        // the knowledge bases (listing keys takes an ordered consumer); clients add documents
        // and read stats.
        let agents = self.agents_bucket();
        let agents_rw: Vec<String> = std::iter::once(kv_write(&agents))
            .chain(object_read(&Self::kv_stream(&agents)))
            .collect();
        match role {
            Role::Master => Permissions {
                publish: vec![">".into()],
                subscribe: vec![">".into()],
                allow_responses: false,
            },
            // Workers read modules and build sources, put artifacts (and read the meta a put
            // looks up), submit an agent's builds and follow their updates.
            Role::Worker => Permissions {
                publish: [
                    self.all_heartbeats(),
                    self.all_worker_events(),
                    self.all_results(),
                    self.all_results_direct(),
                    self.llm_complete(),
                    self.build_submit(),
                    self.all_build_sources(),
                ]
                .into_iter()
                .chain(object_read(&modules_stream))
                .chain(object_read(&artifacts_stream))
                .chain(object_write(&artifacts, &artifacts_stream))
                .chain(object_read(&sources_stream))
                .chain(agents_rw)
                .chain(kv_read(&self.ptx_bucket()))
                .chain([kv_write(&self.ptx_bucket())])
                .collect(),
                subscribe: vec![
                    self.all_worker_tasks(),
                    self.all_worker_cancels(),
                    self.all_build_updates(),
                    INBOXES.into(),
                ],
                allow_responses: true,
            },
            // Clients put modules, read artifacts, read and write the build cache (a
            // submitter stores what it compiled; `--purge-cache` empties its index at once), put segment sources too large for a task
            // and offer the others to workers (answering requests on a build's source subject,
            // which `vgas build` first sends itself to see that the grants allow it).
            Role::Client => Permissions {
                publish: [
                    self.submit(),
                    self.task_run(),
                    self.task_info(),
                    self.task_cancel(),
                    self.status(),
                    self.llm_usage(),
                    self.swarm_view(),
                    self.dashboard(),
                    SERVICE_DISCOVERY.into(),
                ]
                .into_iter()
                .chain(object_read(&modules_stream))
                .chain(object_write(&modules, &modules_stream))
                .chain(object_read(&artifacts_stream))
                .chain([
                    self.build_submit(),
                    self.all_build_updates(),
                    self.all_build_sources(),
                ])
                .chain(kv_read(&cache))
                .chain([kv_write(&cache), kv_purge(&cache)])
                .chain(object_read(&objects_stream))
                .chain(object_write(&objects, &objects_stream))
                .chain(object_read(&sources_stream))
                .chain(object_write(&sources, &sources_stream))
                .chain(agents_rw)
                .collect(),
                // Workers' own event subjects: the same output a task's subject relays (a
                // client may read every task's), a relay hop sooner; a client believes only
                // the worker the master named (`client::api::direct`).
                subscribe: vec![
                    INBOXES.into(),
                    self.all_task_subjects(),
                    self.all_worker_events(),
                    self.all_build_updates(),
                    self.all_build_sources(),
                ],
                // To answer those requests for its build's sources, on their reply subjects.
                allow_responses: true,
            },
        }
    }
}

impl Subjects {
    /// The grants of a node identity: a master node has the master's; a worker node has the
    /// worker's with its own subjects only: it reads its own assignments and cancels, and
    /// heartbeats as itself.
    pub fn node_permissions(&self, role: NodeRole, node: &WorkerId) -> Permissions {
        let mut p = self.permissions(role.role());
        if role == NodeRole::Worker {
            swap(
                &mut p.subscribe,
                &self.all_worker_tasks(),
                self.worker_task(node),
            );
            swap(
                &mut p.subscribe,
                &self.all_worker_cancels(),
                self.worker_cancel(node),
            );
            swap(&mut p.publish, &self.all_heartbeats(), self.heartbeat(node));
            swap(&mut p.publish, &self.all_results(), self.results_of(node));
            swap(
                &mut p.publish,
                &self.all_results_direct(),
                self.results_direct_of(node),
            );
            swap(
                &mut p.publish,
                &self.all_worker_events(),
                self.worker_events_of(node),
            );
            swap(&mut p.subscribe, INBOXES, node_inboxes(node));
        }
        p
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_follow_the_prefix() {
        let s = Subjects::new("team.vgas").unwrap();
        let w = s.permissions(Role::Worker);
        assert!(w.subscribe.contains(&"team.vgas.worker.*.task".to_owned()));
        assert!(w.publish.contains(&"team.vgas.result.*.*".to_owned()));
        assert!(w.allow_responses);
        assert!(!w.publish.iter().any(|p| p == "team.vgas.task.submit"));
        let c = s.permissions(Role::Client);
        assert!(c.publish.contains(&"team.vgas.task.submit".to_owned()));
        assert!(c.publish.contains(&"$O.team_vgas_modules.>".to_owned()));
        // Of the workers' subjects a client reads only their events (the output task
        // subjects relay), never their assignments (a task's secrets) or cancels.
        let of_workers: Vec<&String> = c
            .subscribe
            .iter()
            .filter(|p| p.contains(".worker."))
            .collect();
        assert_eq!(of_workers, ["team.vgas.worker.*.events.*"]);
        // Offered sources: a client serves them (and asks itself once), a worker asks.
        let offered = "team.vgas.build.*.source".to_owned();
        assert!(c.subscribe.contains(&offered) && c.publish.contains(&offered));
        assert!(
            c.allow_responses,
            "a client answers requests for its build's sources"
        );
        assert!(w.publish.contains(&offered) && !w.subscribe.contains(&offered));
        assert_eq!(s.permissions(Role::Master).publish, [">"]);
    }

    #[test]
    fn a_worker_node_reaches_only_its_own_worker_subjects() {
        let s = Subjects::new("vgas").unwrap();
        let a = WorkerId::parse("a").unwrap();
        let p = s.node_permissions(NodeRole::Worker, &a);
        assert!(p.subscribe.contains(&"vgas.worker.a.task".to_owned()));
        assert!(p.subscribe.contains(&"vgas.worker.a.cancel".to_owned()));
        assert!(p.publish.contains(&"vgas.heartbeat.a".to_owned()));
        assert!(p.publish.contains(&"vgas.result.a.*".to_owned()));
        assert!(!p.publish.contains(&"vgas.result.*.*".to_owned()));
        assert!(p.publish.contains(&"vgas.result.a.*.direct".to_owned()));
        assert!(!p.publish.contains(&"vgas.result.*.*.direct".to_owned()));
        assert!(p.publish.contains(&"vgas.worker.a.events.*".to_owned()));
        assert!(p.subscribe.contains(&"_INBOX.a.>".to_owned()));
        assert!(!p.subscribe.contains(&"_INBOX.>".to_owned()));
        assert!(!p.publish.iter().any(|x| x.starts_with("vgas.task.")));
        assert!(!p
            .subscribe
            .iter()
            .chain(&p.publish)
            .any(|x| x.contains(".*.task")
                || x.contains(".*.cancel")
                || x.as_str() == "vgas.heartbeat.*"));
        assert_eq!(
            s.node_permissions(NodeRole::Master, &a),
            s.permissions(Role::Master)
        );
    }
}
