use vgas_shared::farm::{BuildStats, BuildUpdate, Origin};
use vgas_shared::wire::{TaskOutcome, TaskRecord, TaskSpec, TaskState};
use vgas_shared::{Encoding, TaskId, WorkerId};

use super::*;

fn record(id: &str) -> TaskRecord {
    TaskRecord {
        task_id: TaskId::parse(id).unwrap(),
        spec: TaskSpec::default(),
        encoding: Encoding::Json,
        accepted_ms: 1,
        attempt: 0,
        state: TaskState::Queued,
        retries: Vec::new(),
        spec_digest: None,
        spec_dropped_ms: None,
    }
}

#[test]
fn a_task_moves_from_queued_to_running_to_finished() {
    let b = Board::default();
    let rec = record("t1");
    let v0 = b.version();
    b.queued(&rec);
    assert!(b.version() > v0);
    let (q, r, f) = b.tasks(10);
    assert_eq!((q.len(), r.len(), f.len()), (1, 0, 0));
    assert_eq!(q[0].kind, "exec");
    b.running(&rec.task_id, "w1", 1);
    let (q, r, _) = b.tasks(10);
    assert_eq!((q.len(), r.len()), (0, 1));
    assert_eq!(r[0].worker.as_deref(), Some("w1"));
    b.requeued(&rec.task_id);
    assert_eq!(b.task(&rec.task_id).unwrap().state, "queued");
    b.running(&rec.task_id, "w2", 2);
    let mut done = rec.clone();
    done.attempt = 2;
    b.finished(&done, &TaskOutcome::Exited { exit_code: 3 }, Some("w2"));
    let (q, r, f) = b.tasks(10);
    assert_eq!((q.len(), r.len(), f.len()), (0, 0, 1));
    assert_eq!(f[0].state, "finished");
    assert_eq!(f[0].ok, Some(false));
    assert_eq!(f[0].attempt, 2);
    assert_eq!(f[0].outcome.as_deref(), Some("exited with code 3"));
}

#[test]
fn finished_tasks_are_bounded_newest_first() {
    let b = Board::default();
    for i in 0..FINISHED_SHOWN + 5 {
        let rec = record(&format!("t{i}"));
        b.queued(&rec);
        b.finished(&rec, &TaskOutcome::Exited { exit_code: 0 }, None);
    }
    let (_, _, f) = b.tasks(usize::MAX);
    assert_eq!(f.len(), FINISHED_SHOWN);
    assert_eq!(f[0].id, format!("t{}", FINISHED_SHOWN + 4));
    assert!(b.task(&TaskId::parse("t0").unwrap()).is_none());
}

#[test]
fn a_build_counts_each_unit_once_by_origin() {
    let b = Board::default();
    let w = WorkerId::parse("w1").unwrap();
    let t = TaskId::parse("t1").unwrap();
    let ups = [
        BuildUpdate::Started {
            build_id: "b1".into(),
            segments: 4,
        },
        BuildUpdate::Queued {
            segment: "a.c".into(),
            task_id: t.clone(),
        },
        BuildUpdate::Compiling {
            segment: "a.c".into(),
            worker: w.clone(),
            attempt: 1,
        },
        BuildUpdate::Queued {
            segment: "b.c".into(),
            task_id: t,
        },
        BuildUpdate::Done {
            segment: "a.c".into(),
            origin: Origin::Worker { worker: w.clone() },
            compile_ms: 10,
            overhead_ms: 1,
            diagnostics: String::new(),
        },
        // A late `compiling` for a unit already done changes nothing.
        BuildUpdate::Compiling {
            segment: "a.c".into(),
            worker: w,
            attempt: 1,
        },
        BuildUpdate::Cached {
            segment: "c.c".into(),
            saved_ms: 5,
            direct: true,
        },
        BuildUpdate::Done {
            segment: "c.c".into(),
            origin: Origin::Cache,
            compile_ms: 0,
            overhead_ms: 0,
            diagnostics: String::new(),
        },
        BuildUpdate::Done {
            segment: "d.c".into(),
            origin: Origin::Local {
                reason: "no capable worker".into(),
            },
            compile_ms: 7,
            overhead_ms: 0,
            diagnostics: String::new(),
        },
    ];
    for u in &ups {
        b.build_update("b1", u);
    }
    let rows = b.builds();
    assert_eq!(rows.len(), 1);
    let r = &rows[0];
    assert_eq!(
        (
            r.units,
            r.on_workers,
            r.from_cache,
            r.here,
            r.queued,
            r.compiling
        ),
        (4, 1, 1, 1, 1, 0)
    );
    assert_eq!(r.per_worker.get("w1"), Some(&1));
    assert!(!r.finished);
    let (_, units) = b.build("b1").unwrap();
    assert_eq!(units[0].segment, "b.c", "units in progress come first");
    let d = units.iter().find(|u| u.segment == "d.c").unwrap();
    assert_eq!(d.origin.as_deref(), Some("here"));
    assert_eq!(d.reason.as_deref(), Some("no capable worker"));
    let mut stats = BuildStats::default();
    stats.here_reasons.insert("link".into(), 1);
    b.build_update(
        "b1",
        &BuildUpdate::Finished {
            exit_code: 0,
            stats,
            binary: None,
            report: Default::default(),
        },
    );
    let r = &b.builds()[0];
    assert!(r.finished);
    assert_eq!(r.exit_code, Some(0));
    assert_eq!(r.here_reasons.get("link"), Some(&1));
}

#[test]
fn builds_kept_are_bounded() {
    let b = Board::default();
    for i in 0..BUILDS_KEPT + 3 {
        let id = format!("b{i}");
        b.build_update(
            &id,
            &BuildUpdate::Started {
                build_id: id.clone(),
                segments: 1,
            },
        );
    }
    let rows = b.builds();
    assert_eq!(rows.len(), BUILDS_KEPT);
    assert_eq!(rows[0].id, format!("b{}", BUILDS_KEPT + 2));
}
