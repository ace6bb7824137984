//! The user's view of a build: a progress bar (segments done of those seen, per-worker share,
//! cache hits, the segment waiting longest and on which worker), `--json` lines for tools,
//! and the final summary. It only reads `BuildUpdate`s, so it shows a wrapper build (whose
//! compiler processes publish on the build's subject) and an in-process one alike.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use vgas_shared::farm::{BuildStats, BuildUpdate, DiagnosticReport, Origin};
use vgas_shared::WorkerId;

/// A segment in flight longer than this is named as waiting (10 s: far past a typical
/// unit's compile time, short enough that a stuck build shows within a glance).
pub const SLOW_SEGMENT: Duration = Duration::from_secs(10);

/// How the progress shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// A bar on stderr when it is a terminal, and the summary.
    Human,
    /// One JSON `BuildUpdate` per line on stdout.
    Json,
    /// Nothing shown: only the counts are kept (the master's plan runner).
    Silent,
}

/// A build's progress as its updates come in.
#[derive(Debug)]
pub struct Progress {
    mode: Mode,
    bar: ProgressBar,
    started: Instant,
    pub stats: BuildStats,
    /// Segment to (worker if known, since when), for the ones in flight.
    in_flight: BTreeMap<String, (Option<WorkerId>, Instant)>,
    /// Segments already named as waiting.
    warned: std::collections::BTreeSet<String>,
    /// Diagnostics of every segment, for the merged report.
    diagnostics: Vec<String>,
}

impl Progress {
    pub fn new(mode: Mode) -> Self {
        let bar = ProgressBar::with_draw_target(Some(0), ProgressDrawTarget::stderr());
        if mode != Mode::Human {
            bar.set_draw_target(ProgressDrawTarget::hidden());
        }
        bar.set_style(
            ProgressStyle::with_template("{spinner} [{elapsed_precise}] {pos}/{len} {wide_msg}")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        Progress {
            mode,
            bar,
            started: Instant::now(),
            stats: BuildStats::default(),
            in_flight: BTreeMap::new(),
            warned: Default::default(),
            diagnostics: Vec::new(),
        }
    }

    fn emit(&self, u: &BuildUpdate) {
        if self.mode == Mode::Json {
            if let Ok(line) = serde_json::to_string(u) {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{line}");
            }
        }
    }

    /// Takes one update.
    pub fn on(&mut self, u: BuildUpdate) {
        self.emit(&u);
        match &u {
            BuildUpdate::Queued { segment, .. } => {
                self.in_flight
                    .insert(segment.clone(), (None, Instant::now()));
                self.bar.inc_length(1);
            }
            BuildUpdate::Compiling {
                segment, worker, ..
            } => {
                let since = self
                    .in_flight
                    .get(segment)
                    .map(|(_, t)| *t)
                    .unwrap_or_else(Instant::now);
                self.in_flight
                    .insert(segment.clone(), (Some(worker.clone()), since));
            }
            BuildUpdate::Retried { .. } => self.stats.retried += 1,
            BuildUpdate::Cached {
                saved_ms, direct, ..
            } => {
                self.stats.cache_hits += 1;
                self.stats.direct_hits += u64::from(*direct);
                self.stats.saved_ms += saved_ms;
                self.bar.inc_length(1);
            }
            BuildUpdate::Done {
                segment,
                origin,
                diagnostics,
                ..
            }
            | BuildUpdate::Failed {
                segment,
                origin,
                diagnostics,
                ..
            } => {
                if self.in_flight.remove(segment).is_none() && !matches!(origin, Origin::Cache) {
                    self.bar.inc_length(1);
                }
                self.stats.segments += 1;
                if matches!(u, BuildUpdate::Failed { .. }) {
                    self.stats.failed += 1;
                }
                match origin {
                    Origin::Cache => {}
                    Origin::Worker { worker } => {
                        self.stats.cache_misses += 1;
                        self.stats.remote += 1;
                        *self.stats.per_worker.entry(worker.to_string()).or_default() += 1;
                    }
                    Origin::Local { reason } => {
                        self.stats.cache_misses += 1;
                        self.stats.local += 1;
                        *self
                            .stats
                            .here_reasons
                            .entry(reason_class(reason))
                            .or_default() += 1;
                        *self.stats.per_worker.entry("local".into()).or_default() += 1;
                    }
                }
                if !diagnostics.is_empty() {
                    self.diagnostics.push(diagnostics.clone());
                }
                self.bar.inc(1);
            }
            _ => {}
        }
        self.bar.set_message(self.message());
    }

    /// Counts compiler calls the wrapper ran here without offering them to the swarm, one
    /// reason each (what `vgas build` reads back from the wrappers' log).
    pub fn not_distributed<'a>(&mut self, reasons: impl IntoIterator<Item = &'a str>) {
        for r in reasons {
            self.stats.not_distributed += 1;
            *self.stats.here_reasons.entry(reason_class(r)).or_default() += 1;
        }
    }

    /// Names segments that have waited past [`SLOW_SEGMENT`]; call now and then.
    pub fn tick(&mut self) {
        let slow: Vec<(String, Option<WorkerId>, Duration)> = self
            .in_flight
            .iter()
            .filter(|(s, (_, t))| t.elapsed() > SLOW_SEGMENT && !self.warned.contains(*s))
            .map(|(s, (w, t))| (s.clone(), w.clone(), t.elapsed()))
            .collect();
        for (segment, worker, waited) in slow {
            self.warned.insert(segment.clone());
            let u = BuildUpdate::Waiting {
                segment: segment.clone(),
                worker: worker.clone(),
                waited_ms: waited.as_millis() as u64,
            };
            self.emit(&u);
            if self.mode == Mode::Human {
                let on = worker
                    .map(|w| format!("on {w}"))
                    .unwrap_or("for a worker".into());
                self.bar.println(format!(
                    "vgas: {segment} is waiting {on} ({}s)",
                    waited.as_secs()
                ));
            }
        }
        self.bar.set_message(self.message());
    }

    fn message(&self) -> String {
        let mut m = format!("hits {}", self.stats.cache_hits);
        for (w, n) in &self.stats.per_worker {
            m.push_str(&format!(" | {w}: {n}"));
        }
        if let Some((s, (w, t))) = self.in_flight.iter().max_by_key(|(_, (_, t))| t.elapsed()) {
            if t.elapsed() > SLOW_SEGMENT {
                let on = w.as_ref().map(|w| w.to_string()).unwrap_or("queue".into());
                m.push_str(&format!(
                    " | waiting: {s} on {on} {}s",
                    t.elapsed().as_secs()
                ));
            }
        }
        m
    }

    /// Ends the bar; returns the stats and the merged diagnostics.
    pub fn finish(mut self) -> (BuildStats, DiagnosticReport) {
        self.bar.finish_and_clear();
        self.stats.wall_ms = self.started.elapsed().as_millis() as u64;
        let report = DiagnosticReport::merge(self.diagnostics.iter().map(String::as_str));
        (self.stats, report)
    }
}

/// Reasons the summary names at most, the most frequent first.
const TOP_REASONS: usize = 5;

/// Longest reason kept as a class: a reason names a flag or a cause, not a whole command.
const MAX_REASON_CHARS: usize = 120;

/// A reason as counted: its first line, bounded.
fn reason_class(reason: &str) -> String {
    let line = reason.lines().next().unwrap_or("").trim();
    line.chars().take(MAX_REASON_CHARS).collect()
}

/// The human summary of a finished build: every compiler call the build made is counted,
/// on workers, from cache, here (with the top reasons), or failed.
pub fn summary(stats: &BuildStats, report: &DiagnosticReport) -> String {
    let mut s = format!(
        "vgas: {} compiler calls in {:.1}s: {} on workers, {} from cache, {} here, {} failed",
        stats.segments + stats.not_distributed,
        stats.wall_ms as f64 / 1000.0,
        stats.remote,
        stats.cache_hits,
        stats.local + stats.not_distributed,
        stats.failed
    );
    if !stats.here_reasons.is_empty() {
        let mut top: Vec<(&String, &u64)> = stats.here_reasons.iter().collect();
        top.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
        let named: Vec<String> = top
            .iter()
            .take(TOP_REASONS)
            .map(|(r, n)| format!("{n} {r}"))
            .collect();
        let more = top.len().saturating_sub(TOP_REASONS);
        s.push_str(&format!("\nvgas: here because: {}", named.join("; ")));
        if more > 0 {
            s.push_str(&format!(" (and {more} other reasons; --stats lists them)"));
        }
    }
    if stats.retried > 0 {
        s.push_str(&format!(", {} retried", stats.retried));
    }
    if !stats.per_worker.is_empty() {
        let share: Vec<String> = stats
            .per_worker
            .iter()
            .map(|(w, n)| format!("{w} {n}"))
            .collect();
        s.push_str(&format!("\nvgas: compiled by: {}", share.join(", ")));
    }
    if report.errors + report.warnings > 0 {
        s.push_str(&format!(
            "\nvgas: {} errors, {} warnings in {} places",
            report.errors,
            report.warnings,
            report.items.len()
        ));
    }
    s
}

/// The `--stats` table.
pub fn stats_table(stats: &BuildStats) -> String {
    let lookups = stats.cache_hits + stats.cache_misses;
    let rate = if lookups == 0 {
        0.0
    } else {
        100.0 * stats.cache_hits as f64 / lookups as f64
    };
    let mut t = format!(
        "cache hits        {} ({} direct)\ncache misses      {}\nhit rate          {rate:.1}%\n\
         time saved        {:.2}s\ncompiled remotely {}\ncompiled here     {}\nnot distributed   {}\n\
         failed            {}\nretried           {}\nwall time         {:.2}s\n",
        stats.cache_hits,
        stats.direct_hits,
        stats.cache_misses,
        stats.saved_ms as f64 / 1000.0,
        stats.remote,
        stats.local,
        stats.not_distributed,
        stats.failed,
        stats.retried,
        stats.wall_ms as f64 / 1000.0
    );
    for (reason, n) in &stats.here_reasons {
        t.push_str(&format!("here {n:>12}  {reason}\n"));
    }
    t
}
