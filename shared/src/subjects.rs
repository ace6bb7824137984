//! Every NATS subject, stream, bucket and service name vgas uses, built in one place under a
//! configurable prefix (default `vgas`) so several swarms can share one NATS account, and the
//! grants each role gets on them (`permissions`, rendered into `auth.conf` by `vgas init`).

use crate::ids::{TaskId, WorkerId};

mod permissions;
pub use permissions::{node_inbox_prefix, Permissions};

/// The default subject prefix.
pub const DEFAULT_PREFIX: &str = "vgas";

/// Subject builder for one swarm.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subjects {
    prefix: String,
}

impl Default for Subjects {
    fn default() -> Self {
        Subjects::new(DEFAULT_PREFIX).expect("default prefix is valid")
    }
}

impl Subjects {
    /// A prefix is one or more subject tokens (`vgas`, `team.vgas`), no wildcards.
    pub fn new(prefix: &str) -> Result<Self, crate::VgaError> {
        let ok = !prefix.is_empty()
            && prefix.split('.').all(|t| {
                !t.is_empty()
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
            });
        if !ok {
            return Err(crate::VgaError::Config(format!(
                "subject prefix {prefix:?} must be dot-separated tokens of letters, digits, '-' or '_'"
            )));
        }
        Ok(Subjects {
            prefix: prefix.to_owned(),
        })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// Request: submit a task. Person-facing (JSON).
    pub fn submit(&self) -> String {
        format!("{}.task.submit", self.prefix)
    }

    /// Request: submit a task and have its `finished` event as the reply. Person-facing
    /// (JSON).
    pub fn task_run(&self) -> String {
        format!("{}.task.run", self.prefix)
    }

    /// Request: the swarm's `SwarmPulse`. Person-facing (JSON).
    pub fn status(&self) -> String {
        format!("{}.status", self.prefix)
    }

    /// Request: one task's record and outcome. Person-facing (JSON).
    pub fn task_info(&self) -> String {
        format!("{}.task.info", self.prefix)
    }

    /// Request: cancel a task. Person-facing (JSON).
    pub fn task_cancel(&self) -> String {
        format!("{}.task.cancel", self.prefix)
    }

    /// Stream of one task's events (started, output chunks, finished).
    pub fn task_events(&self, id: &TaskId) -> String {
        format!("{}.task.{id}.events", self.prefix)
    }

    /// Wildcard over every task's events (a standby master hears `finished` on it).
    pub fn all_task_events(&self) -> String {
        format!("{}.task.*.events", self.prefix)
    }

    /// A worker's heartbeat.
    pub fn heartbeat(&self, id: &WorkerId) -> String {
        format!("{}.heartbeat.{id}", self.prefix)
    }

    /// Wildcard over every heartbeat (the master subscribes to this).
    pub fn all_heartbeats(&self) -> String {
        format!("{}.heartbeat.*", self.prefix)
    }

    /// Master to worker: one assignment, as a request the worker acknowledges.
    pub fn worker_task(&self, id: &WorkerId) -> String {
        format!("{}.worker.{id}.task", self.prefix)
    }

    /// Master to worker: stop a running attempt.
    pub fn worker_cancel(&self, id: &WorkerId) -> String {
        format!("{}.worker.{id}.cancel", self.prefix)
    }

    /// Worker to master: the events of one attempt the worker runs (started, output,
    /// artifacts). The master relays each to [`Subjects::task_events`] only while the task is
    /// assigned to that worker and attempt, so a worker cannot speak for another's task.
    pub fn worker_events(&self, worker: &WorkerId, task: &TaskId) -> String {
        format!("{}.worker.{worker}.events.{task}", self.prefix)
    }

    /// Wildcard over one worker's event subjects (its node grant).
    pub fn worker_events_of(&self, worker: &WorkerId) -> String {
        format!("{}.worker.{worker}.events.*", self.prefix)
    }

    /// Wildcard over one task's events on every worker's subject: a client reads its
    /// task's files from here too, believing only the worker the master named.
    pub fn any_worker_events(&self, task: &TaskId) -> String {
        format!("{}.worker.*.events.{task}", self.prefix)
    }

    /// Wildcard over every worker's event subjects (the master relays from this).
    pub fn all_worker_events(&self) -> String {
        format!("{}.worker.*.events.*", self.prefix)
    }

    /// The worker and task of a worker event subject.
    pub fn parse_worker_events(&self, subject: &str) -> Option<(WorkerId, TaskId)> {
        let rest = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".worker.")?;
        let (worker, task) = rest.split_once(".events.")?;
        Some((WorkerId::parse(worker).ok()?, TaskId::parse(task).ok()?))
    }

    /// Worker to master, through JetStream: the outcome of one attempt, on the subject of the
    /// worker that ran it (a node's grants name only its own, and the master drops a result
    /// whose body claims another worker).
    pub fn result(&self, worker: &WorkerId, task: &TaskId) -> String {
        format!("{}.result.{worker}.{task}", self.prefix)
    }

    /// Wildcard over one worker's result subjects.
    pub fn results_of(&self, worker: &WorkerId) -> String {
        format!("{}.result.{worker}.*", self.prefix)
    }

    /// Wildcard over every result subject (the results stream captures this).
    pub fn all_results(&self) -> String {
        format!("{}.result.*.*", self.prefix)
    }

    /// Worker to master, a request outside JetStream: the same result offered to the
    /// leading master first. Its answer [`crate::wire::RESULT_TAKEN`] means the task's final
    /// record is written and announced; any other answer, or none, and the worker stores the
    /// result on [`Subjects::result`] as before. One token more than a result subject, so
    /// the results stream's wildcard does not capture it.
    pub fn result_direct(&self, worker: &WorkerId, task: &TaskId) -> String {
        format!("{}.result.{worker}.{task}.direct", self.prefix)
    }

    /// Wildcard over one worker's direct result subjects.
    pub fn results_direct_of(&self, worker: &WorkerId) -> String {
        format!("{}.result.{worker}.*.direct", self.prefix)
    }

    /// Wildcard over every direct result subject (the leading master answers these).
    pub fn all_results_direct(&self) -> String {
        format!("{}.result.*.*.direct", self.prefix)
    }

    /// The worker whose result subject `subject` is, stored or direct.
    pub fn worker_of_result(&self, subject: &str) -> Option<WorkerId> {
        let rest = subject
            .strip_prefix(&self.prefix)?
            .strip_prefix(".result.")?;
        let rest = rest.strip_suffix(".direct").unwrap_or(rest);
        let (worker, task) = rest.split_once('.')?;
        TaskId::parse(task).ok()?;
        WorkerId::parse(worker).ok()
    }

    /// Request: an LLM completion through the master's gateway; tokens stream back on the
    /// reply subject. Worker to master.
    pub fn llm_complete(&self) -> String {
        format!("{}.llm.complete", self.prefix)
    }

    /// Request: the LLM usage report. Person-facing (JSON).
    pub fn llm_usage(&self) -> String {
        format!("{}.llm.usage", self.prefix)
    }

    /// Masters' LLM usage views, published and merged by every master
    /// (`sync_distributed_state`).
    pub fn llm_usage_sync(&self) -> String {
        format!("{}.llm.usage.sync", self.prefix)
    }

    /// Request: the answering master's node and GPU-lease view (`sync_distributed_state`);
    /// every master answers, leading or standing by. Person-facing (JSON).
    pub fn swarm_view(&self) -> String {
        format!("{}.swarm.view", self.prefix)
    }

    /// Masters' node and lease registers, published and merged by every master.
    pub fn swarm_view_sync(&self) -> String {
        format!("{}.swarm.view.sync", self.prefix)
    }

    /// JetStream KV bucket holding LLM usage counters (per provider, model and day).
    pub fn usage_bucket(&self) -> String {
        format!("{}_llm_usage", self.token_prefix())
    }

    /// JetStream stream holding worker results until the master has recorded them.
    pub fn results_stream(&self) -> String {
        format!("{}_RESULTS", self.token_prefix().to_uppercase())
    }

    /// JetStream KV bucket holding every accepted task's record.
    pub fn tasks_bucket(&self) -> String {
        format!("{}_tasks", self.token_prefix())
    }

    /// JetStream KV bucket holding the master lease: which of several masters leads the
    /// swarm (see the master's `leader` module).
    pub fn leader_bucket(&self) -> String {
        format!("{}_leader", self.token_prefix())
    }

    /// JetStream KV bucket of the AI agents: `memory.<agent>` (the `ContextManager`'s notes
    /// and last conversation), `stats.<agent>` (`PerformanceStats`) and `kb.<agent>.<id>`
    /// (knowledge-base chunks, a batch per key).
    pub fn agents_bucket(&self) -> String {
        format!("{}_agents", self.token_prefix())
    }

    /// JetStream Object Store bucket holding wasm modules, each named `sha256:<hex>` of its
    /// bytes. The master creates it; clients put into it; workers read it.
    pub fn modules_bucket(&self) -> String {
        format!("{}_modules", self.token_prefix())
    }

    /// JetStream Object Store bucket holding wasm tasks' artifacts too large to send inline,
    /// each named `<task id>/<attempt>/<path>`. The master creates it; workers put into it;
    /// clients read it.
    pub fn artifacts_bucket(&self) -> String {
        format!("{}_artifacts", self.token_prefix())
    }

    /// The stream behind the artifacts bucket, for permissions.
    pub fn artifacts_stream(&self) -> String {
        format!("OBJ_{}", self.artifacts_bucket())
    }

    /// The stream behind the modules bucket (Object Store's naming), for permissions.
    pub fn modules_stream(&self) -> String {
        format!("OBJ_{}", self.modules_bucket())
    }

    /// Where a `BuildPlan` is submitted (request-reply, the master answers).
    pub fn build_submit(&self) -> String {
        format!("{}.build.submit", self.prefix)
    }

    /// Where one build's `BuildUpdate`s are published (`vgas build` and the master's plan
    /// runner publish; anyone following the build subscribes).
    pub fn build_updates(&self, build_id: &str) -> String {
        format!("{}.build.{build_id}.updates", self.prefix)
    }

    /// Where the submitter of build `build_id` serves the build's sources to workers: a
    /// request carrying a source's name, answered with its LZ4 block (empty: not offered).
    pub fn build_source(&self, build_id: &crate::ids::BuildId) -> String {
        format!("{}.build.{build_id}.source", self.prefix)
    }

    /// The build id in a subject of [`Subjects::build_updates`], `None` for any other.
    pub fn build_of_updates<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.prefix.as_str())?
            .strip_prefix(".build.")?
            .strip_suffix(".updates")
            .filter(|id| !id.is_empty() && !id.contains('.'))
    }

    /// Request: where the master's dashboard is (`DashboardInfo`). Clients only.
    pub fn dashboard(&self) -> String {
        format!("{}.dashboard", self.prefix)
    }

    /// JetStream KV bucket: the build cache's index, cache key to `CacheEntry`.
    pub fn build_cache_bucket(&self) -> String {
        format!("{}_build_cache", self.token_prefix())
    }

    /// JetStream Object Store bucket: the build cache's objects, named by cache key.
    pub fn build_objects_bucket(&self) -> String {
        format!("{}_build_objects", self.token_prefix())
    }

    /// JetStream Object Store bucket: segment sources too large to ride in a task, named
    /// `sha256:<hex>` of their bytes. Clients put; workers read.
    pub fn build_sources_bucket(&self) -> String {
        format!("{}_build_sources", self.token_prefix())
    }

    /// JetStream KV bucket: PTX compiled by NVRTC for `cuda` tasks, keyed by a hash of the
    /// source, options, architecture and NVRTC version, shared by every worker.
    pub fn ptx_bucket(&self) -> String {
        format!("{}_ptx", self.token_prefix())
    }

    /// The stream behind an Object Store bucket (Object Store's naming), for permissions.
    pub fn object_stream(bucket: &str) -> String {
        format!("OBJ_{bucket}")
    }

    /// The stream behind a KV bucket (KV's naming), for permissions.
    pub fn kv_stream(bucket: &str) -> String {
        format!("KV_{bucket}")
    }

    /// Name of the NATS micro service the master registers.
    pub fn service_name(&self) -> String {
        format!("{}-master", self.token_prefix())
    }

    /// Name of the NATS micro service of the LLM gateway, which every master registers,
    /// leading or standing by (`llm_complete`, `llm_usage`).
    pub fn llm_service_name(&self) -> String {
        format!("{}-llm", self.token_prefix())
    }

    /// Name of the NATS micro service of the swarm view, which every master registers
    /// (`swarm_view`).
    pub fn view_service_name(&self) -> String {
        format!("{}-view", self.token_prefix())
    }

    /// The prefix as one token, for names that allow no dots.
    pub fn token_prefix(&self) -> String {
        self.prefix.replace('.', "_")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builds_subjects_under_prefix() {
        let s = Subjects::new("team.vgas").unwrap();
        let t = TaskId::parse("t1").unwrap();
        let w = WorkerId::parse("w1").unwrap();
        assert_eq!(s.submit(), "team.vgas.task.submit");
        assert_eq!(s.task_events(&t), "team.vgas.task.t1.events");
        let ev = s.worker_events(&w, &t);
        assert_eq!(ev, "team.vgas.worker.w1.events.t1");
        assert_eq!(s.parse_worker_events(&ev), Some((w.clone(), t.clone())));
        assert_eq!(s.parse_worker_events("team.vgas.worker.w1.task"), None);
        assert_eq!(s.parse_worker_events("vgas.worker.w1.events.t1"), None);
        assert_eq!(s.heartbeat(&w), "team.vgas.heartbeat.w1");
        assert_eq!(s.worker_task(&w), "team.vgas.worker.w1.task");
        assert_eq!(s.results_stream(), "TEAM_VGAS_RESULTS");
        let (stored, direct) = (s.result(&w, &t), s.result_direct(&w, &t));
        assert_eq!(direct, "team.vgas.result.w1.t1.direct");
        assert_eq!(s.worker_of_result(&stored), Some(w.clone()));
        assert_eq!(s.worker_of_result(&direct), Some(w.clone()));
        assert_eq!(s.worker_of_result("team.vgas.result.w1.t1.other"), None);
        assert_eq!(s.tasks_bucket(), "team_vgas_tasks");
        assert_eq!(Subjects::default().status(), "vgas.status");
        assert_eq!(s.llm_complete(), "team.vgas.llm.complete");
        assert_eq!(s.llm_usage(), "team.vgas.llm.usage");
        assert_eq!(s.swarm_view(), "team.vgas.swarm.view");
        assert_eq!(s.swarm_view_sync(), "team.vgas.swarm.view.sync");
        assert_eq!(s.usage_bucket(), "team_vgas_llm_usage");
        assert_eq!(s.modules_bucket(), "team_vgas_modules");
        assert_eq!(s.modules_stream(), "OBJ_team_vgas_modules");
        assert_eq!(s.artifacts_bucket(), "team_vgas_artifacts");
        assert_eq!(s.artifacts_stream(), "OBJ_team_vgas_artifacts");
        assert_eq!(s.build_submit(), "team.vgas.build.submit");
        assert_eq!(s.build_updates("b1"), "team.vgas.build.b1.updates");
        let b1 = crate::ids::BuildId::parse("b1").unwrap();
        assert_eq!(s.build_source(&b1), "team.vgas.build.b1.source");
        assert_eq!(s.build_of_updates("team.vgas.build.b1.updates"), Some("b1"));
        assert_eq!(s.build_of_updates("team.vgas.build.b.1.updates"), None);
        assert_eq!(s.build_of_updates("vgas.build.b1.updates"), None);
        assert_eq!(s.dashboard(), "team.vgas.dashboard");
        assert_eq!(s.build_cache_bucket(), "team_vgas_build_cache");
        assert_eq!(
            Subjects::object_stream(&s.build_objects_bucket()),
            "OBJ_team_vgas_build_objects"
        );
    }

    #[test]
    fn refuses_bad_prefixes() {
        for bad in ["", "a..b", "a.*", "a.>", "a b", ".a"] {
            assert!(Subjects::new(bad).is_err(), "{bad:?}");
        }
    }
}
