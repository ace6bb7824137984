//! What a task's record keeps and for how long: the spec's payload (command, env, stdin,
//! files, a segment or a run) is needed until the task finishes; after that the record keeps
//! the spec's shape (kind, needs, limits) and a keyed digest, so `vgas.task.info` still
//! answers and an idempotent resubmit is still recognised, but nothing the submitter sent in
//! confidence stays at rest longer than the retention setting says.

use super::{TaskRecord, TaskSpec, TaskState};

impl TaskSpec {
    /// Whether any env value is marked secret.
    pub fn has_secrets(&self) -> bool {
        self.env.values().any(|v| v.is_secret())
    }

    /// The spec without its payload: what it ran and with what input is gone; how it was to
    /// run (kind, module, needs, limits, deadline, attempts, environment) stays.
    pub fn redacted(&self) -> TaskSpec {
        TaskSpec {
            task_id: self.task_id.clone(),
            kind: self.kind,
            module: self.module.clone(),
            deadline_s: self.deadline_s,
            needs: self.needs.clone(),
            limits: self.limits,
            retryable: self.retryable,
            max_attempts: self.max_attempts,
            wait_for_worker_s: self.wait_for_worker_s,
            environment: self.environment.clone(),
            ..TaskSpec::default()
        }
    }
}

impl TaskRecord {
    /// Whether this task was submitted as `spec`, whose keyed digest is `digest`: by the
    /// digests when the record has one (its spec may be dropped), else (a record from before
    /// digests) by the specs themselves.
    pub fn submitted_as(&self, spec: &TaskSpec, digest: &str) -> bool {
        match &self.spec_digest {
            Some(d) => d == digest,
            None => self.spec_dropped_ms.is_none() && self.spec == *spec,
        }
    }

    /// The record with its spec's payload dropped at `now_ms`.
    pub fn without_spec(&self, now_ms: u64) -> TaskRecord {
        TaskRecord {
            spec: self.spec.redacted(),
            spec_dropped_ms: Some(now_ms),
            ..self.clone()
        }
    }

    /// When the task finished, if it has.
    pub fn finished_ms(&self) -> Option<u64> {
        match self.state {
            TaskState::Finished { finished_ms, .. } => Some(finished_ms),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::EnvValue;
    use super::*;
    use crate::codec::Encoding;
    use crate::wire::TaskOutcome;
    use crate::TaskId;

    fn record() -> TaskRecord {
        let mut spec = TaskSpec {
            cmd: vec!["echo".into(), "private".into()],
            stdin: "input".into(),
            ..TaskSpec::default()
        };
        spec.env.insert("K".into(), EnvValue::secret("v"));
        TaskRecord {
            task_id: TaskId::parse("t1").unwrap(),
            spec,
            encoding: Encoding::Json,
            accepted_ms: 1,
            attempt: 1,
            state: TaskState::Finished {
                worker: None,
                outcome: TaskOutcome::Exited { exit_code: 0 },
                finished_ms: 5,
            },
            retries: Vec::new(),
            spec_digest: Some("d".into()),
            spec_dropped_ms: None,
        }
    }

    #[test]
    fn dropping_the_spec_keeps_its_shape_and_digest() {
        let rec = record();
        assert!(rec.spec.has_secrets());
        let dropped = rec.without_spec(9);
        assert!(dropped.spec.cmd.is_empty() && dropped.spec.env.is_empty());
        assert!(dropped.spec.stdin.is_empty());
        assert_eq!(dropped.spec.kind, rec.spec.kind);
        assert_eq!(dropped.spec_dropped_ms, Some(9));
        assert_eq!(dropped.finished_ms(), Some(5));
        assert!(
            dropped.submitted_as(&rec.spec, "d"),
            "the digest still matches"
        );
        assert!(!dropped.submitted_as(&rec.spec, "e"));
        // Without a digest (a record from before them) the specs are compared, and a dropped
        // spec matches nothing.
        let mut old = rec.clone();
        old.spec_digest = None;
        assert!(old.submitted_as(&rec.spec, "d"));
        assert!(!old.submitted_as(&TaskSpec::default(), "d"));
        assert!(!old.without_spec(1).submitted_as(&rec.spec, "d"));
    }
}
