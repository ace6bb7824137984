//! What the dashboard shows that `vgas status` does not keep: every unfinished task with its
//! state and worker, the latest finished ones, and the builds followed on
//! `vgas.build.*.updates`, unit by unit. The dispatcher and the build follower write it; the
//! dashboard's streams read it. Everything is bounded: unfinished tasks by the queue and the
//! slots, finished ones and builds by named constants.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use vgas_shared::farm::{BuildUpdate, Origin};
use vgas_shared::now_ms;
use vgas_shared::wire::board::{BuildRow, TaskRow, UnitRow};
use vgas_shared::wire::{TaskOutcome, TaskRecord, TaskState};
use vgas_shared::TaskId;

/// Finished tasks the tasks page lists: the latest ones; older ones are `vgas info`'s.
pub const FINISHED_SHOWN: usize = 200;

/// Builds kept, the running and the latest finished: a build of 10,000 units is about 2 MB.
pub const BUILDS_KEPT: usize = 16;

/// Units one build keeps; a bigger build is counted whole but lists only its first ones.
pub const UNITS_PER_BUILD: usize = 20_000;

/// One build as followed.
#[derive(Debug, Default)]
struct Build {
    row: BuildRow,
    units: HashMap<String, UnitRow>,
}

#[derive(Debug, Default)]
struct State {
    open: HashMap<TaskId, TaskRow>,
    finished: VecDeque<TaskRow>,
    builds: VecDeque<Build>,
}

/// The board. Each change bumps a version, so a stream sends a view only when it changed.
#[derive(Debug, Default)]
pub struct Board {
    state: Mutex<State>,
    version: AtomicU64,
}

fn kind_of(rec: &TaskRecord) -> String {
    rec.spec.kind.as_str().to_owned()
}

impl Board {
    pub fn version(&self) -> u64 {
        self.version.load(Ordering::Relaxed)
    }

    fn change<R>(&self, f: impl FnOnce(&mut State) -> R) -> R {
        let mut s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        let r = f(&mut s);
        self.version.fetch_add(1, Ordering::Relaxed);
        r
    }

    fn read<R>(&self, f: impl FnOnce(&State) -> R) -> R {
        let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
        f(&s)
    }

    /// A task accepted (or recovered), waiting or already placed.
    pub fn queued(&self, rec: &TaskRecord) {
        let row = TaskRow {
            id: rec.task_id.to_string(),
            kind: kind_of(rec),
            state: "queued".into(),
            worker: None,
            attempt: rec.attempt,
            accepted_ms: rec.accepted_ms,
            since_ms: now_ms(),
            ..TaskRow::default()
        };
        self.change(|s| s.open.insert(rec.task_id.clone(), row));
    }

    /// An attempt sent to `worker`.
    pub fn running(&self, id: &TaskId, worker: &str, attempt: u32) {
        self.change(|s| {
            if let Some(row) = s.open.get_mut(id) {
                row.state = "running".into();
                row.worker = Some(worker.to_owned());
                row.attempt = attempt;
                row.since_ms = now_ms();
            }
        });
    }

    /// Back in the queue after a lost attempt.
    pub fn requeued(&self, id: &TaskId) {
        self.change(|s| {
            if let Some(row) = s.open.get_mut(id) {
                row.state = "queued".into();
                row.worker = None;
                row.since_ms = now_ms();
            }
        });
    }

    pub fn finished(&self, rec: &TaskRecord, outcome: &TaskOutcome, worker: Option<&str>) {
        let now = now_ms();
        self.change(|s| {
            let mut row = s.open.remove(&rec.task_id).unwrap_or_else(|| TaskRow {
                id: rec.task_id.to_string(),
                kind: kind_of(rec),
                accepted_ms: rec.accepted_ms,
                ..TaskRow::default()
            });
            row.state = "finished".into();
            row.worker = worker.map(str::to_owned).or(row.worker);
            row.attempt = rec.attempt;
            row.since_ms = now;
            row.outcome = Some(outcome.describe());
            row.ok = Some(outcome.succeeded());
            row.duration_ms = Some(now.saturating_sub(rec.accepted_ms));
            if s.finished.len() == FINISHED_SHOWN {
                s.finished.pop_back();
            }
            s.finished.push_front(row);
        });
    }

    /// One task's row, open or among the latest finished.
    pub fn task(&self, id: &TaskId) -> Option<TaskRow> {
        let key = id.to_string();
        self.read(|s| {
            s.open
                .get(id)
                .cloned()
                .or_else(|| s.finished.iter().find(|r| r.id == key).cloned())
        })
    }

    /// The queue's head (oldest first, up to `head`), every running task (longest running
    /// first) and the latest finished (newest first, up to `head`).
    pub fn tasks(&self, head: usize) -> (Vec<TaskRow>, Vec<TaskRow>, Vec<TaskRow>) {
        self.read(|s| {
            let mut queued: Vec<TaskRow> = Vec::new();
            let mut running: Vec<TaskRow> = Vec::new();
            for r in s.open.values() {
                if r.state == "running" {
                    running.push(r.clone());
                } else {
                    queued.push(r.clone());
                }
            }
            queued.sort_by_key(|r| (r.accepted_ms, r.id.clone()));
            queued.truncate(head);
            running.sort_by_key(|r| (r.since_ms, r.id.clone()));
            let finished = s.finished.iter().take(head).cloned().collect();
            (queued, running, finished)
        })
    }

    /// Follows one update of build `build_id`.
    pub fn build_update(&self, build_id: &str, u: &BuildUpdate) {
        self.change(|s| {
            let at = match s.builds.iter().position(|b| b.row.id == build_id) {
                Some(at) => at,
                None => {
                    if s.builds.len() == BUILDS_KEPT {
                        // The oldest finished build goes first; failing that, the oldest.
                        let old = s
                            .builds
                            .iter()
                            .rposition(|b| b.row.finished)
                            .unwrap_or(s.builds.len() - 1);
                        s.builds.remove(old);
                    }
                    s.builds.push_front(Build {
                        row: BuildRow {
                            id: build_id.to_owned(),
                            started_ms: now_ms(),
                            ..BuildRow::default()
                        },
                        units: HashMap::new(),
                    });
                    0
                }
            };
            apply(&mut s.builds[at], u);
        });
    }

    /// Every build kept, newest first.
    pub fn builds(&self) -> Vec<BuildRow> {
        self.read(|s| s.builds.iter().map(|b| b.row.clone()).collect())
    }

    /// One build and its units: in progress first, then failed, then done, by name.
    pub fn build(&self, id: &str) -> Option<(BuildRow, Vec<UnitRow>)> {
        self.read(|s| {
            let b = s.builds.iter().find(|b| b.row.id == id)?;
            let mut units: Vec<UnitRow> = b.units.values().cloned().collect();
            let rank = |u: &UnitRow| match u.state.as_str() {
                "compiling" => 0,
                "queued" => 1,
                "failed" => 2,
                _ => 3,
            };
            units.sort_by(|a, b| {
                rank(a)
                    .cmp(&rank(b))
                    .then_with(|| a.segment.cmp(&b.segment))
            });
            Some((b.row.clone(), units))
        })
    }
}

/// A task's row from its durable record (a task the board no longer keeps).
pub fn row_of_record(rec: &TaskRecord) -> TaskRow {
    let mut row = TaskRow {
        id: rec.task_id.to_string(),
        kind: kind_of(rec),
        attempt: rec.attempt,
        accepted_ms: rec.accepted_ms,
        since_ms: rec.accepted_ms,
        ..TaskRow::default()
    };
    match &rec.state {
        TaskState::Queued => row.state = "queued".into(),
        TaskState::Assigned {
            worker, since_ms, ..
        } => {
            row.state = "running".into();
            row.worker = Some(worker.to_string());
            row.since_ms = *since_ms;
        }
        TaskState::Finished {
            worker,
            outcome,
            finished_ms,
        } => {
            row.state = "finished".into();
            row.worker = worker.as_ref().map(|w| w.to_string());
            row.since_ms = *finished_ms;
            row.outcome = Some(outcome.describe());
            row.ok = Some(outcome.succeeded());
            row.duration_ms = Some(finished_ms.saturating_sub(rec.accepted_ms));
        }
    }
    row
}

fn origin_parts(o: &Origin) -> (&'static str, Option<String>, Option<String>) {
    match o {
        Origin::Worker { worker } => ("worker", Some(worker.to_string()), None),
        Origin::Cache => ("cache", None, None),
        Origin::Local { reason } => ("here", None, Some(reason.clone())),
    }
}

/// Recounts a build's figures from its units (cheap: a build keeps at most
/// [`UNITS_PER_BUILD`]), so a unit seen twice is never counted twice.
fn recount(b: &mut Build) {
    let r = &mut b.row;
    (
        r.queued,
        r.compiling,
        r.on_workers,
        r.from_cache,
        r.here,
        r.failed,
    ) = (0, 0, 0, 0, 0, 0);
    let mut per_worker: BTreeMap<String, u64> = BTreeMap::new();
    for u in b.units.values() {
        match (u.state.as_str(), u.origin.as_deref()) {
            ("queued", _) => r.queued += 1,
            ("compiling", _) => r.compiling += 1,
            ("failed", _) => r.failed += 1,
            (_, Some("cache")) => r.from_cache += 1,
            (_, Some("here")) => r.here += 1,
            _ => {
                r.on_workers += 1;
                if let Some(w) = &u.worker {
                    *per_worker.entry(w.clone()).or_default() += 1;
                }
            }
        }
    }
    r.per_worker = per_worker;
    r.units = r.units.max(b.units.len());
}

fn apply(b: &mut Build, u: &BuildUpdate) {
    match u {
        BuildUpdate::Started { segments, .. } => b.row.units = *segments,
        BuildUpdate::Finished {
            exit_code, stats, ..
        } => {
            b.row.finished = true;
            b.row.exit_code = Some(*exit_code);
            b.row.wall_ms = stats.wall_ms;
            b.row.here_reasons = stats.here_reasons.clone();
            b.row.units = b.row.units.max(stats.segments as usize);
        }
        _ => set_unit(b, u),
    }
    recount(b);
    if !b.row.finished {
        b.row.wall_ms = now_ms().saturating_sub(b.row.started_ms);
    }
}

/// The unit an update is about, in its new state.
fn set_unit(b: &mut Build, u: &BuildUpdate) {
    let (segment, state, origin, worker, reason, compile_ms) = match u {
        BuildUpdate::Queued { segment, .. } => (segment, "queued", None, None, None, None),
        BuildUpdate::Compiling {
            segment, worker, ..
        } => (
            segment,
            "compiling",
            None,
            Some(worker.to_string()),
            None,
            None,
        ),
        BuildUpdate::Retried {
            segment, reason, ..
        } => (segment, "queued", None, None, Some(reason.clone()), None),
        BuildUpdate::Done {
            segment,
            origin,
            compile_ms,
            ..
        } => {
            let (o, w, r) = origin_parts(origin);
            (segment, "done", Some(o), w, r, Some(*compile_ms))
        }
        BuildUpdate::Failed {
            segment, origin, ..
        } => {
            let (o, w, r) = origin_parts(origin);
            (segment, "failed", Some(o), w, r, None)
        }
        _ => return,
    };
    if !b.units.contains_key(segment.as_str()) && b.units.len() >= UNITS_PER_BUILD {
        return;
    }
    let row = b.units.entry(segment.clone()).or_insert_with(|| UnitRow {
        segment: segment.clone(),
        ..UnitRow::default()
    });
    // A late `compiling` or `queued` never undoes a unit already done.
    if matches!(row.state.as_str(), "done" | "failed") && matches!(state, "queued" | "compiling") {
        return;
    }
    row.state = state.to_owned();
    if let Some(o) = origin {
        row.origin = Some(o.to_owned());
    }
    if worker.is_some() || origin.is_some() {
        row.worker = worker;
    }
    if reason.is_some() {
        row.reason = reason;
    }
    if let Some(ms) = compile_ms {
        row.compile_ms = ms;
    }
}

#[cfg(test)]
mod tests;
