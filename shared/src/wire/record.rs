//! What a task's record keeps and for how long: the spec's payload (command, env, stdin,
//! files, a segment or a run) is needed until the task finishes; after that the record keeps
//! the spec's shape (kind, needs, limits) and a keyed digest, so `vgas.task.info` still
//! answers and an idempotent resubmit is still recognised, but nothing the submitter sent in
//! confidence stays at rest longer than the retention setting says.

use super::{EnvValue, TaskEvent, TaskRecord, TaskSpec, TaskState};

impl TaskSpec {
    /// Whether any env value is marked secret.
    pub fn has_secrets(&self) -> bool {
        self.env.values().any(|v| v.is_secret())
    }

    /// About how many bytes the spec's payload takes (its strings: command, env, stdin, files,
    /// a segment's source, a kernel's, a crate's inline inputs, a run's instruction), without
    /// encoding it: what
    /// keeping it in a record costs the store.
    pub fn payload_len(&self) -> usize {
        let strings = |v: &[String]| v.iter().map(String::len).sum::<usize>();
        let files: usize = self
            .files
            .iter()
            .map(|f| {
                f.path.len()
                    + f.text.as_ref().map_or(0, String::len)
                    + f.base64.as_ref().map_or(0, String::len)
            })
            .sum();
        let env: usize = self
            .env
            .iter()
            .map(|(k, v)| {
                k.len()
                    + match v {
                        EnvValue::Plain(v) => v.len(),
                        EnvValue::Marked(m) => m.value.len(),
                        EnvValue::Sealed(s) => s.sealed.len(),
                    }
            })
            .sum();
        let compile = self.compile.as_ref().map_or(0, |c| {
            let s = &c.source;
            strings(&c.args)
                + s.text.as_ref().map_or(0, String::len)
                + s.lz4.as_ref().map_or(0, |b| b.len())
                + c.files
                    .iter()
                    .map(|f| f.path.len() + f.object.len())
                    .sum::<usize>()
        });
        let agent = self.agent.as_ref().map_or(0, |a| a.instruction.len());
        let cuda = self
            .cuda
            .as_ref()
            .map_or(0, |c| c.source.len() + strings(&c.options));
        let rustc = self.rustc.as_ref().map_or(0, |r| {
            strings(&r.args)
                + r.inputs
                    .iter()
                    .map(|i| i.path.len() + i.base64.as_ref().map_or(0, String::len))
                    .sum::<usize>()
        });
        strings(&self.cmd) + self.stdin.len() + files + env + compile + agent + cuda + rustc
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

    /// The `finished` event the master announced for this record, if the task has finished:
    /// the same fields, so a late caller (`task.run` of a finished id, a restarted master
    /// announcing again) gets what the first announcement said.
    pub fn finished_event(&self) -> Option<TaskEvent> {
        let TaskState::Finished {
            worker,
            outcome,
            finished_ms,
        } = &self.state
        else {
            return None;
        };
        Some(TaskEvent::Finished {
            task_id: self.task_id.clone(),
            worker: worker.clone(),
            attempts: self.attempt,
            duration_ms: finished_ms.saturating_sub(self.accepted_ms),
            outcome: outcome.clone(),
        })
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

    #[test]
    fn the_payload_length_counts_what_dropping_the_spec_removes() {
        let rec = record();
        // "echo" + "private" + "input" + "K" + "v"
        assert_eq!(rec.spec.payload_len(), 4 + 7 + 5 + 1 + 1);
        assert_eq!(rec.without_spec(9).spec.payload_len(), 0);
        let mut big = rec.spec.clone();
        big.compile = Some(crate::farm::CompileSpec {
            source: crate::farm::Source::packed(&vec![b'x'; 100_000]),
            ..crate::farm::CompileSpec::default()
        });
        let packed = big
            .compile
            .as_ref()
            .unwrap()
            .source
            .lz4
            .as_ref()
            .unwrap()
            .len();
        assert!(packed > 0);
        assert_eq!(big.payload_len(), rec.spec.payload_len() + packed);
    }
}
