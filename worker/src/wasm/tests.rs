//! The wasm sandbox against WAT modules written here: limits end as the limit that was hit,
//! bad modules as clear errors, output streams while the module runs, files come back.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use vgas_shared::wire::{
    InputFile, ModuleRef, Task, TaskKind, TaskLimits, TaskOutcome, TaskSpec, Work,
};

use super::*;
use crate::sandbox::{Job, Limits, OutputChunk};

/// Module bytes by name, standing in for the Object Store bucket.
#[derive(Debug, Default)]
pub(super) struct Modules(HashMap<String, Vec<u8>>);

impl ModuleSource for Modules {
    async fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(name).cloned())
    }
}

pub(super) fn name_of(bytes: &[u8]) -> String {
    format!("sha256:{}", sha256_hex(bytes))
}

/// `name` as the module reference a parsed task carries.
pub(super) fn module_ref(name: &str) -> ModuleRef {
    ModuleRef::parse(name).expect("a module name of the tests")
}

/// `spec` parsed, as the worker parses it before it runs it.
pub(super) fn parsed(spec: &TaskSpec) -> Task {
    let task = spec.parse().expect("the test spec parses");
    assert!(matches!(task.work, Work::Wasm(_)), "{:?}", task.work);
    task
}

/// The wasm part of a parsed task, with its bounds, as the runtime takes it.
pub(super) fn job(task: &Task) -> Job<'_, vgas_shared::wire::WasmTask> {
    match &task.work {
        Work::Wasm(w) => Job {
            task: w,
            bounds: &task.bounds,
        },
        other => panic!("not a wasm task: {other:?}"),
    }
}

/// A WASI command: imports, one page of memory with `data` at 1024, and `body` as `_start`.
fn command(data: &str, body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (import "wasi_snapshot_preview1" "path_open"
            (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 1024) "{data}")
          ;; writes `len` bytes at `ptr` to `fd`
          (func $write (param $fd i32) (param $ptr i32) (param $len i32)
            (i32.store (i32.const 0) (local.get $ptr))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
          ;; opens the path at `ptr`/`len` under the preopen (fd 3); returns errno, fd at 16
          (func $open (param $ptr i32) (param $len i32) (param $oflags i32) (result i32)
            (call $path_open (i32.const 3) (i32.const 0) (local.get $ptr) (local.get $len)
              (local.get $oflags) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16)))
          (func (export "_start") {body}))"#
    );
    wat::parse_str(wat).expect("test WAT parses")
}

pub(super) struct Harness {
    pub(super) rt: WasmRuntime,
    pub(super) work: tempfile::TempDir,
    _cache: tempfile::TempDir,
    pub(super) modules: Modules,
}

impl Harness {
    pub(super) fn new() -> Harness {
        let cache = tempfile::tempdir().unwrap();
        Harness {
            rt: WasmRuntime::new(&WasmConfig::new(cache.path().to_path_buf())).unwrap(),
            work: tempfile::tempdir().unwrap(),
            _cache: cache,
            modules: Modules::default(),
        }
    }

    pub(super) fn add(&mut self, bytes: Vec<u8>) -> String {
        let name = name_of(&bytes);
        self.modules.0.insert(name.clone(), bytes);
        name
    }

    pub(super) fn spec(name: &str) -> TaskSpec {
        TaskSpec {
            kind: TaskKind::Wasm,
            module: Some(name.to_owned()),
            cmd: vec!["tool".into()],
            deadline_s: Some(10),
            ..Default::default()
        }
    }

    /// Runs the endless program `m` with a 1 s deadline: it must end as timed out, soon after.
    pub(super) async fn assert_stopped_at_a_1_s_deadline(&self, m: &str) {
        let mut spec = Harness::spec(m);
        spec.deadline_s = Some(1);
        let started = std::time::Instant::now();
        let (run, _) = self.run(&spec).await;
        assert_eq!(run.outcome, TaskOutcome::TimedOut { deadline_s: 1 });
        assert!(
            started.elapsed() < Duration::from_secs(3),
            "{:?}",
            started.elapsed()
        );
    }

    /// Runs the memory bomb `m` with a 16 MiB limit: it must end at the memory limit.
    pub(super) async fn assert_refused_at_16_mib(&self, m: &str) {
        let mut spec = Harness::spec(m);
        spec.limits = TaskLimits {
            memory_mb: Some(16),
            ..Default::default()
        };
        let (run, _) = self.run(&spec).await;
        match run.outcome {
            TaskOutcome::LimitExceeded { limit, message } => {
                assert_eq!(limit, "memory");
                assert!(message.contains("16 MiB"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    /// Runs `spec` to its end; returns the run and all its output as text.
    pub(super) async fn run(&self, spec: &TaskSpec) -> (WasmRun, String) {
        let (tx, mut rx) = mpsc::channel(vgas_shared::limits::EVENT_CHANNEL_CAPACITY);
        let collect = async {
            let mut text = String::new();
            while let Some(c) = rx.recv().await {
                match c {
                    OutputChunk::Stdout(s) | OutputChunk::Stderr(s) => text.push_str(&s),
                }
            }
            text
        };
        let ceilings = Limits::default();
        let task = parsed(spec);
        let run = self.rt.run(
            self.work.path(),
            &ceilings,
            job(&task),
            &self.modules,
            tx,
            CancellationToken::new(),
        );
        tokio::join!(run, collect)
    }
}

pub(super) fn error_text(o: &TaskOutcome) -> String {
    match o {
        TaskOutcome::Error { message } => message.clone(),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prints_writes_a_file_and_exits_with_its_code() {
    let mut h = Harness::new();
    let m = h.add(command(
        "hello\\nout.txt",
        r#"(call $write (i32.const 1) (i32.const 1024) (i32.const 6))
           (if (call $open (i32.const 1030) (i32.const 7) (i32.const 1)) (then (call $proc_exit (i32.const 99))))
           (call $write (i32.load (i32.const 16)) (i32.const 1024) (i32.const 5))
           (call $proc_exit (i32.const 3))"#,
    ));
    let mut spec = Harness::spec(&m);
    spec.files.push(InputFile {
        path: "in/unchanged.txt".into(),
        text: Some("same".into()),
        ..Default::default()
    });
    let (run, out) = h.run(&spec).await;
    assert_eq!(run.outcome, TaskOutcome::Exited { exit_code: 3 });
    assert_eq!(out, "hello\n");
    let mode = run.artifacts.first().and_then(|a| a.mode);
    assert!(
        mode.is_some_and(|m| m & 0o600 == 0o600 && m & !0o777 == 0),
        "{mode:?}"
    );
    assert_eq!(
        run.artifacts,
        vec![Artifact {
            path: "out.txt".into(),
            mode,
            body: ArtifactBody::Inline(b"hello".to_vec())
        }]
    );
    // The task directory is gone once the run is dropped.
    drop(run);
    assert_eq!(std::fs::read_dir(h.work.path()).unwrap().count(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_warm_directory_is_reused_only_empty_so_no_task_sees_another_tasks_files() {
    let mut h = Harness::new();
    let writer = h.add(command(
        "left behind\\nleft.txt",
        r#"(if (call $open (i32.const 1036) (i32.const 8) (i32.const 1)) (then (call $proc_exit (i32.const 99))))
           (call $write (i32.load (i32.const 16)) (i32.const 1024) (i32.const 11))"#,
    ));
    let noop = h.add(command("", ""));
    let entries = |h: &Harness| std::fs::read_dir(h.work.path()).unwrap().count();
    let (run, _) = h.run(&Harness::spec(&noop)).await;
    assert_eq!(run.outcome, TaskOutcome::Exited { exit_code: 0 });
    let first = run.dir.as_ref().map(|d| d.path().to_path_buf());
    drop(run);
    assert_eq!(entries(&h), 1, "the empty directory stays warm");
    let (run, _) = h.run(&Harness::spec(&writer)).await;
    assert_eq!(run.outcome, TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(
        run.dir.as_ref().map(|d| d.path().to_path_buf()),
        first,
        "and is reused"
    );
    assert_eq!(run.artifacts.len(), 1, "{:?}", run.artifacts);
    drop(run);
    assert_eq!(
        entries(&h),
        0,
        "a directory the module wrote into is removed"
    );
    for _ in 0..3 {
        let (run, _) = h.run(&Harness::spec(&noop)).await;
        assert_eq!(run.outcome, TaskOutcome::Exited { exit_code: 0 });
        assert!(
            run.artifacts.is_empty(),
            "another task's file: {:?}",
            run.artifacts
        );
    }
    assert_eq!(
        entries(&h),
        1,
        "one warm directory serves tasks run one after another"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_loop_is_stopped_at_its_deadline() {
    let mut h = Harness::new();
    let m = h.add(command("", "(loop $l (br $l))"));
    h.assert_stopped_at_a_1_s_deadline(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cpu_time_is_limited_separately_from_the_deadline() {
    let mut h = Harness::new();
    let m = h.add(command("", "(loop $l (br $l))"));
    let mut spec = Harness::spec(&m);
    spec.limits.cpu_seconds = Some(1);
    let (run, _) = h.run(&spec).await;
    match run.outcome {
        TaskOutcome::LimitExceeded { limit, message } => {
            assert_eq!(limit, "cpu");
            assert!(message.contains("1 s of CPU"), "{message}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_bomb_is_refused_at_the_limit() {
    let mut h = Harness::new();
    // Grows by 1 MiB (16 pages) until growth fails, then exits 0: only the limiter stops it.
    let m = h.add(command(
        "",
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1))))",
    ));
    h.assert_refused_at_16_mib(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn paths_outside_the_preopen_are_denied() {
    let mut h = Harness::new();
    // A file beside the task directories: the module must not open it.
    std::fs::write(h.work.path().join("secret"), "s3cret").unwrap();
    for (path, want_ok) in [
        ("in.txt", true),
        ("../secret", false),
        ("/etc/passwd", false),
        ("sub/../../secret", false),
    ] {
        let m = h.add(command(
            path,
            &format!(
                "(call $proc_exit (call $open (i32.const 1024) (i32.const {}) (i32.const 0)))",
                path.len()
            ),
        ));
        let mut spec = Harness::spec(&m);
        spec.files.push(InputFile {
            path: "in.txt".into(),
            text: Some("x".into()),
            ..Default::default()
        });
        let (run, _) = h.run(&spec).await;
        match run.outcome {
            TaskOutcome::Exited { exit_code } => {
                assert_eq!(exit_code == 0, want_ok, "{path}: errno {exit_code}")
            }
            other => panic!("{path}: {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_streams_while_the_module_runs() {
    let mut h = Harness::new();
    // Prints, then spins until cancelled.
    let m = h.add(command(
        "tick\\n",
        "(call $write (i32.const 1) (i32.const 1024) (i32.const 5)) (loop $l (br $l))",
    ));
    let task = parsed(&Harness::spec(&m));
    let (tx, mut rx) = mpsc::channel(8);
    let cancel = CancellationToken::new();
    let ceilings = Limits::default();
    let run = h.rt.run(
        h.work.path(),
        &ceilings,
        job(&task),
        &h.modules,
        tx,
        cancel.clone(),
    );
    tokio::pin!(run);
    let first = tokio::select! {
        c = rx.recv() => c,
        r = &mut run => panic!("ended before any output arrived: {:?}", r.outcome),
    };
    assert_eq!(first, Some(OutputChunk::Stdout("tick\n".into())));
    cancel.cancel();
    let r = tokio::time::timeout(Duration::from_secs(5), run)
        .await
        .unwrap();
    assert_eq!(r.outcome, TaskOutcome::Cancelled);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn output_past_the_cap_stops_the_module() {
    let mut h = Harness::new();
    let m = h.add(command(
        "0123456789abcdef",
        "(loop $l (call $write (i32.const 1) (i32.const 1024) (i32.const 16)) (br $l))",
    ));
    let mut spec = Harness::spec(&m);
    spec.limits.output_cap_mb = Some(1);
    let (run, out) = h.run(&spec).await;
    assert!(
        matches!(&run.outcome, TaskOutcome::LimitExceeded { limit, .. } if limit == "output"),
        "{:?}",
        run.outcome
    );
    assert!(out.len() <= 1024 * 1024, "{}", out.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_modules_fail_with_clear_errors() {
    let mut h = Harness::new();
    let garbage = h.add(b"\0asm\x01\0\0\0 this is not a module".to_vec());
    let library = h.add(wat::parse_str("(module (func (export \"f\")))").unwrap());
    let trap = h.add(command("", "unreachable"));
    let imports = h.add(
        wat::parse_str(r#"(module (import "env" "nope" (func)) (func (export "_start")))"#)
            .unwrap(),
    );
    let unknown = format!("sha256:{}", "0".repeat(64));
    let liar = format!("sha256:{}", "1".repeat(64));
    h.modules.0.insert(liar.clone(), command("", ""));
    let cases = [
        (garbage, "is not a valid WebAssembly module"),
        (library, "exports no `_start`"),
        (trap, "the module trapped"),
        (imports, "could not be started"),
        (unknown, "is not in the modules bucket"),
        (liar, "refusing to use them"),
    ];
    for (name, want) in cases {
        let (run, _) = h.run(&Harness::spec(&name)).await;
        let message = error_text(&run.outcome);
        assert!(message.contains(want), "{name}: {message}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compiled_modules_are_cached_and_damaged_entries_rebuilt() {
    let cache = tempfile::tempdir().unwrap();
    let cfg = WasmConfig::new(cache.path().to_path_buf());
    let bytes = command("", "");
    let name = name_of(&bytes);
    let mut modules = Modules::default();
    modules.0.insert(name.clone(), bytes);
    let rt = WasmRuntime::new(&cfg).unwrap();
    assert_eq!(
        rt.load(&module_ref(&name), &modules).await.unwrap().1,
        LoadedFrom::Compiled
    );
    assert_eq!(
        rt.load(&module_ref(&name), &modules).await.unwrap().1,
        LoadedFrom::Memory
    );
    // A new worker process: from disk, without the source.
    let empty = Modules::default();
    let rt = WasmRuntime::new(&cfg).unwrap();
    assert_eq!(
        rt.load(&module_ref(&name), &empty).await.unwrap().1,
        LoadedFrom::CompiledCache
    );
    // Damage the compiled entry: it is detected, removed and rebuilt from the cached bytes.
    let hex = &name["sha256:".len()..];
    let path = rt.cache().compiled_path(hex);
    let mut data = std::fs::read(&path).unwrap();
    let last = data.len() - 1;
    data[last] ^= 0xff;
    std::fs::write(&path, &data).unwrap();
    rt.forget_memory();
    assert_eq!(
        rt.load(&module_ref(&name), &empty).await.unwrap().1,
        LoadedFrom::Compiled
    );
    assert_eq!(std::fs::read(&path).unwrap().len(), data.len());
    // A truncated entry likewise.
    std::fs::write(&path, &data[..10]).unwrap();
    rt.forget_memory();
    assert_eq!(
        rt.load(&module_ref(&name), &empty).await.unwrap().1,
        LoadedFrom::Compiled
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_disk_cache_stays_within_its_bound() {
    let cache = tempfile::tempdir().unwrap();
    let mut cfg = WasmConfig::new(cache.path().to_path_buf());
    cfg.cache_bytes = 64 * 1024;
    let rt = WasmRuntime::new(&cfg).unwrap();
    let mut modules = Modules::default();
    for i in 0..20 {
        let bytes = command(&format!("module {i}"), "");
        let name = name_of(&bytes);
        modules.0.insert(name.clone(), bytes);
        rt.load(&module_ref(&name), &modules).await.unwrap();
    }
    let size = guard::dir_size(cache.path());
    assert!(size > 0 && size <= cfg.cache_bytes, "{size}");
}
