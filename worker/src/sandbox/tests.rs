//! Tests of the sandbox's ordinary behaviour (output streaming, exit codes, stdin, input files,
//! environment, cancel, stragglers), plus the helpers the containment tests share. Each test
//! uses a slot of its own, so with uids switched no two tests share a sandbox uid.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vgas_shared::limits::EVENT_CHANNEL_CAPACITY;
use vgas_shared::wire::{InputFile, Task, TaskOutcome, TaskSpec, Work};

use super::*;

/// Sandbox uids of these tests start here, clear of the uids other tests in the crate use.
pub(super) const TEST_UID_BASE: u32 = DEFAULT_UID_BASE + 7_000;
/// No test task may take longer than this.
pub(super) const TEST_TIMEOUT: Duration = Duration::from_secs(60);

/// The host's isolation, probed once and printed.
pub(super) fn isolation() -> &'static Isolation {
    static PROBED: OnceLock<Isolation> = OnceLock::new();
    PROBED.get_or_init(|| {
        let iso = Isolation::probe();
        println!(
            "sandbox isolation on this host: {} ({iso:?})",
            iso.describe()
        );
        iso
    })
}

/// A work directory and a configuration using it.
pub(super) struct Harness {
    pub(super) work: tempfile::TempDir,
    pub(super) cfg: SandboxConfig,
}

pub(super) fn harness() -> Harness {
    use std::os::unix::fs::PermissionsExt as _;
    let work = tempfile::Builder::new()
        .prefix("vgas-sandbox-test-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let cfg = SandboxConfig {
        work_dir: work.path().to_owned(),
        ceilings: Limits::default(),
        uid_base: Some(TEST_UID_BASE),
    };
    Harness { work, cfg }
}

/// The uid a slot runs as, when uids are switched.
pub(super) fn sandbox_uid(slot: usize) -> Option<u32> {
    isolation().uid_switch.then(|| TEST_UID_BASE + slot as u32)
}

pub(super) fn spec(cmd: &[&str]) -> TaskSpec {
    TaskSpec {
        cmd: cmd.iter().map(|s| s.to_string()).collect(),
        deadline_s: Some(20),
        ..TaskSpec::default()
    }
}

pub(super) fn sh(script: &str) -> TaskSpec {
    spec(&["sh", "-c", script])
}

/// The exec part of a parsed task, as the worker hands it to [`run_exec`].
pub(super) fn exec_job(task: &Task) -> Job<'_, vgas_shared::wire::ExecTask> {
    let Work::Exec(exec) = &task.work else {
        panic!("not an exec task: {task:?}");
    };
    Job {
        task: exec,
        bounds: &task.bounds,
    }
}

/// A finished task with all its output.
#[derive(Debug)]
pub(super) struct Ran {
    pub(super) outcome: TaskOutcome,
    pub(super) stdout: String,
    pub(super) stderr: String,
    pub(super) elapsed: Duration,
}

pub(super) async fn run(h: &Harness, slot: usize, spec: TaskSpec) -> Ran {
    run_cancellable(h, slot, spec, CancellationToken::new()).await
}

/// Runs `spec` as the worker does: parsed first (a spec that does not parse is an error
/// outcome), then its exec task through [`run_exec`].
pub(super) async fn run_cancellable(
    h: &Harness,
    slot: usize,
    spec: TaskSpec,
    cancel: CancellationToken,
) -> Ran {
    let parsed = spec.parse();
    let (tx, mut rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let started = Instant::now();
    let collect = async move {
        let (mut stdout, mut stderr) = (String::new(), String::new());
        while let Some(chunk) = rx.recv().await {
            match chunk {
                OutputChunk::Stdout(s) => stdout.push_str(&s),
                OutputChunk::Stderr(s) => stderr.push_str(&s),
            }
        }
        (stdout, stderr)
    };
    let task = async {
        match &parsed {
            Ok(Task {
                work: Work::Exec(exec),
                bounds,
                ..
            }) => {
                let job = Job { task: exec, bounds };
                run_exec(&h.cfg, isolation(), slot, job, None, tx, cancel).await
            }
            Ok(other) => panic!("not an exec task: {other:?}"),
            Err(e) => TaskOutcome::Error {
                message: e.to_string(),
            },
        }
    };
    let (outcome, (stdout, stderr)) =
        tokio::time::timeout(TEST_TIMEOUT, async { tokio::join!(task, collect) })
            .await
            .expect("the task ended within the test timeout");
    Ran {
        outcome,
        stdout,
        stderr,
        elapsed: started.elapsed(),
    }
}

/// Asserts that nothing the task in `slot` started is still alive.
pub(super) fn assert_nothing_left(slot: usize, marker: &str) {
    assert_eq!(
        procs::live_processes_with(marker),
        0,
        "a process with {marker:?} survived"
    );
    if let Some(uid) = sandbox_uid(slot) {
        assert_eq!(
            procs::live_processes_of_uid(uid),
            0,
            "processes of uid {uid} survived"
        );
        assert_ne!(
            adopted::none_left(uid),
            Some(false),
            "the worker adopted a process of uid {uid} and did not reap it"
        );
    }
}

/// A name no other test run uses.
pub(super) fn unique(prefix: &str) -> String {
    format!("{prefix}-{}", unique_digits())
}

/// A sleep duration no other test run uses (about 1000 s), so the sleeping processes can be
/// found by their command line whatever uid they run as.
pub(super) fn unique_sleep() -> String {
    format!("1000.{}", unique_digits())
}

fn unique_digits() -> String {
    static COUNTER: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    let n = COUNTER.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{}{n}{nanos}", std::process::id())
}

#[tokio::test]
async fn output_is_streamed_while_the_task_runs() {
    let h = harness();
    let (tx, mut rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let cfg = h.cfg.clone();
    let started = Instant::now();
    let task = tokio::spawn(async move {
        let task = sh("echo a; echo oops >&2; sleep 1; echo b")
            .parse()
            .unwrap();
        run_exec(
            &cfg,
            isolation(),
            0,
            exec_job(&task),
            None,
            tx,
            CancellationToken::new(),
        )
        .await
    });
    // Both streams deliver their first line while the task still sleeps.
    let mut chunks = Vec::new();
    while !(chunks.contains(&OutputChunk::Stdout("a\n".into()))
        && chunks.contains(&OutputChunk::Stderr("oops\n".into())))
    {
        let chunk = tokio::time::timeout(TEST_TIMEOUT, rx.recv())
            .await
            .expect("chunk in time");
        chunks.push(chunk.expect("the task is still running"));
    }
    assert!(
        !task.is_finished(),
        "the first chunks arrived while the task still ran"
    );
    assert!(
        started.elapsed() < Duration::from_secs(1),
        "{:?}",
        started.elapsed()
    );
    while let Some(c) = tokio::time::timeout(TEST_TIMEOUT, rx.recv())
        .await
        .expect("chunks in time")
    {
        chunks.push(c);
    }
    let outcome = task.await.expect("no panic");
    assert_eq!(outcome, TaskOutcome::Exited { exit_code: 0 });
    let text = |want_out: bool| -> String {
        chunks
            .iter()
            .filter_map(|c| match (c, want_out) {
                (OutputChunk::Stdout(s), true) | (OutputChunk::Stderr(s), false) => {
                    Some(s.as_str())
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(text(true), "a\nb\n");
    assert_eq!(text(false), "oops\n");
}

#[tokio::test]
async fn exit_codes_pass_through() {
    let h = harness();
    for code in [0, 1, 3, 42, 255] {
        let ran = run(&h, 1, sh(&format!("exit {code}"))).await;
        assert_eq!(ran.outcome, TaskOutcome::Exited { exit_code: code });
    }
}

#[tokio::test]
async fn stdin_is_piped_and_closed() {
    let h = harness();
    let big = "0123456789abcdef\n".repeat(20_000);
    let cases = [
        ("hello\nworld\n", "cat", "hello\nworld\n".to_owned()),
        ("", "cat; echo done", "done\n".into()),
        (big.as_str(), "wc -c", format!("{}\n", big.len())),
    ];
    for (input, script, want) in cases {
        let mut s = sh(script);
        s.stdin = input.to_owned();
        let ran = run(&h, 2, s).await;
        assert_eq!(
            ran.outcome,
            TaskOutcome::Exited { exit_code: 0 },
            "{script}: {}",
            ran.stderr
        );
        assert_eq!(ran.stdout.trim_start(), want, "{script}");
    }
}

#[tokio::test]
async fn input_files_are_written_and_the_directory_is_removed() {
    let h = harness();
    let file = |path: &str, text: Option<&str>, base64: Option<&str>, mode| InputFile {
        path: path.into(),
        text: text.map(Into::into),
        base64: base64.map(Into::into),
        mode,
    };
    let mut s = spec(&["./run.sh"]);
    s.files = vec![
        file(
            "run.sh",
            Some("#!/bin/sh\ncat data/in.txt bin.dat\necho made > out.txt && cat out.txt\npwd\n"),
            None,
            Some(0o755),
        ),
        file("data/in.txt", Some("from a file\n"), None, None),
        file("bin.dat", None, Some("YmFzZTY0IQo="), None),
    ];
    let ran = run(&h, 3, s).await;
    assert_eq!(
        ran.outcome,
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        ran.stderr
    );
    let lines: Vec<&str> = ran.stdout.lines().collect();
    assert_eq!(lines[..3], ["from a file", "base64!", "made"]);
    assert!(
        lines[3].starts_with(&h.work.path().canonicalize().unwrap().display().to_string()),
        "cwd {}",
        lines[3]
    );
    let left = super::task_dirs_left(h.work.path());
    assert!(left.is_empty(), "task directories left behind: {left:?}");

    let mut bad = sh("true");
    bad.files = vec![file("../escape", Some("x"), None, None)];
    let ran = run(&h, 3, bad).await;
    assert!(
        matches!(&ran.outcome, TaskOutcome::Error { message } if message.contains("must be relative")),
        "{:?}",
        ran.outcome
    );
}

#[tokio::test]
async fn only_allow_listed_environment_reaches_the_task() {
    // SAFETY: set once; other tests only read the environment through std, which locks it.
    unsafe { std::env::set_var("SECRET_FROM_WORKER", "hunter2") };
    let h = harness();
    let mut s = sh(
        r#"echo "[$SECRET_FROM_WORKER][$FOO]"; [ "$HOME" = "$(pwd)" ] && [ "$TMPDIR" = "$HOME" ] && echo home-ok; [ -n "$PATH" ] && echo path-ok"#,
    );
    s.env.insert("FOO".into(), "bar baz".into());
    let ran = run(&h, 4, s).await;
    assert_eq!(
        ran.outcome,
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stdout, "[][bar baz]\nhome-ok\npath-ok\n");
}

#[tokio::test]
async fn a_missing_program_is_an_error_naming_it() {
    let h = harness();
    for program in [
        "vgas-no-such-program-xyz",
        "./not-here.sh",
        "/nonexistent/prog",
    ] {
        let ran = run(&h, 5, spec(&[program, "arg"])).await;
        match &ran.outcome {
            TaskOutcome::Error { message } => assert!(
                message.contains(program) && message.contains("not found"),
                "{message}"
            ),
            other => panic!("{program}: {other:?}"),
        }
    }
    let mut s = spec(&["./data.txt"]);
    s.files = vec![InputFile {
        path: "data.txt".into(),
        text: Some("not a program".into()),
        base64: None,
        mode: Some(0o644),
    }];
    let ran = run(&h, 5, s).await;
    assert!(
        matches!(&ran.outcome, TaskOutcome::Error { message } if message.contains("not executable")),
        "{:?}",
        ran.outcome
    );
}

#[tokio::test]
async fn cancel_kills_the_task() {
    let h = harness();
    let marker = unique_sleep();
    let cancel = CancellationToken::new();
    let trigger = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        trigger.cancel();
    });
    let ran = run_cancellable(
        &h,
        6,
        sh(&format!("sleep {marker} & sleep {marker}")),
        cancel,
    )
    .await;
    assert_eq!(ran.outcome, TaskOutcome::Cancelled);
    assert!(ran.elapsed < Duration::from_secs(5), "{:?}", ran.elapsed);
    assert_nothing_left(6, &marker);

    let already = CancellationToken::new();
    already.cancel();
    assert_eq!(
        run_cancellable(&h, 6, sh("echo never"), already)
            .await
            .outcome,
        TaskOutcome::Cancelled
    );
}

#[tokio::test]
async fn background_children_do_not_outlive_the_task() {
    let h = harness();
    let marker = unique_sleep();
    // The sleep holds stdout open; the task must still end when sh does.
    let ran = run(&h, 7, sh(&format!("sleep {marker} & echo started"))).await;
    assert_eq!(ran.outcome, TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(ran.stdout, "started\n");
    assert!(ran.elapsed < Duration::from_secs(5), "{:?}", ran.elapsed);
    assert_nothing_left(7, &marker);
}

/// A late file (a compile's input still on its way) is written once it comes, owned like the
/// rest, before the command starts; one that cannot come ends the run as an error with its
/// reason, and a cancel while it is awaited ends it cancelled; neither leaves a directory.
#[tokio::test]
async fn a_late_file_is_written_before_the_command_or_ends_the_run() {
    use super::{run_native, task_dirs_left, NativeJob, OutputChunk, RunOptions};
    let h = harness();
    let task = sh("stat -c %u in/late.txt; cat in/late.txt")
        .parse()
        .unwrap();
    let job = exec_job(&task);
    let argv = |_: &std::path::Path| job.task.argv.as_slice().to_vec();
    let native = NativeJob::of_exec(job, &argv);
    let run = |late: super::LateFile<'static>, cancel: tokio_util::sync::CancellationToken| {
        let (tx, rx) = tokio::sync::mpsc::channel(64);
        let opts = RunOptions {
            late_file: Some(late),
            ..RunOptions::default()
        };
        let native = &native;
        let h = &h;
        async move {
            let ran = run_native(&h.cfg, isolation(), 21, native, opts, tx, cancel).await;
            (ran, rx)
        }
    };
    let came = Box::pin(async {
        tokio::time::sleep(Duration::from_millis(50)).await;
        Ok(("in/late.txt".to_owned(), b"late bytes".to_vec()))
    });
    let (ran, mut rx) = run(came, CancellationToken::new()).await;
    assert_eq!(ran.outcome, TaskOutcome::Exited { exit_code: 0 });
    let mut out = Vec::new();
    while let Ok(chunk) = rx.try_recv() {
        if let OutputChunk::Stdout(s) = chunk {
            out.push(s);
        }
    }
    let owner = sandbox_uid(21).unwrap_or(0);
    assert_eq!(out.concat(), format!("{owner}\nlate bytes"));

    let refused = Box::pin(async { Err("the submitter has gone".to_owned()) });
    let (ran, _) = run(refused, CancellationToken::new()).await;
    assert_eq!(
        ran.outcome,
        TaskOutcome::Error {
            message: "the submitter has gone".into()
        }
    );

    let cancel = CancellationToken::new();
    let never = Box::pin(std::future::pending());
    let cancelling = cancel.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(50)).await;
        cancelling.cancel();
    });
    let (ran, _) = run(never, cancel).await;
    assert_eq!(ran.outcome, TaskOutcome::Cancelled);
    assert!(ran.dir.is_none());
    assert_eq!(
        task_dirs_left(h.work.path()),
        Vec::<std::path::PathBuf>::new()
    );
}
