//! Compile tasks in the real sandbox with this machine's gcc (skipped without it): objects
//! byte-identical to a local `gcc -c`, compile errors as exit codes with the original file
//! and line, source lines quoted from shipped files, sources by reference, large objects kept
//! for upload. Each test uses a slot of its own, so with uids switched no two share a uid.

use std::collections::HashMap;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::sync::mpsc;
use vgas_shared::farm::{compiler_tag, SegmentFile, Source};
use vgas_shared::limits::EVENT_CHANNEL_CAPACITY;
use vgas_shared::wire::{InputFile, Needs, TaskKind, TaskSpec, Work};

use super::*;
use crate::env::LocalCompiler;
use crate::sandbox::DEFAULT_UID_BASE;
use crate::wasm::sha256_hex;

/// Sandbox uids of these tests start here, clear of the sandbox tests' own.
const TEST_UID_BASE: u32 = DEFAULT_UID_BASE + 8_000;
/// No test compile may take longer than this.
const TEST_TIMEOUT: Duration = Duration::from_secs(60);

fn isolation() -> &'static Isolation {
    static PROBED: OnceLock<Isolation> = OnceLock::new();
    PROBED.get_or_init(Isolation::probe)
}

/// The compilers of this machine, probed once (identities cached across runs).
fn envs() -> &'static EnvironmentManager {
    static PROBED: OnceLock<EnvironmentManager> = OnceLock::new();
    PROBED.get_or_init(|| {
        let cache = std::env::temp_dir().join("vgas-worker-test-toolchains");
        EnvironmentManager::probe("w-compile-test", &cache)
    })
}

fn gcc() -> Option<&'static LocalCompiler> {
    envs().compilers().iter().find(|c| c.invoked_as == "gcc")
}

/// A source bucket in memory.
#[derive(Debug, Default)]
struct Sources(HashMap<String, Vec<u8>>);

impl ModuleSource for Sources {
    async fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(name).cloned())
    }
}

/// A work directory for task directories, passable for sandbox uids.
fn work_dir() -> (tempfile::TempDir, SandboxConfig) {
    use std::os::unix::fs::PermissionsExt as _;
    let work = tempfile::Builder::new()
        .prefix("vgas-compile-test-")
        .tempdir()
        .expect("temp dir");
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut cfg = SandboxConfig::new(work.path().to_owned());
    cfg.uid_base = Some(TEST_UID_BASE);
    (work, cfg)
}

/// A project on the "submitter's" side: files written into a fresh directory.
fn project(files: &[(&str, &str)]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for (path, text) in files {
        let p = dir.path().join(path);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, text).unwrap();
    }
    dir
}

/// Runs gcc locally in `dir`; returns (exit code, stdout bytes, stderr).
fn local_gcc(gcc: &LocalCompiler, dir: &std::path::Path, args: &[&str]) -> (i32, Vec<u8>, String) {
    let out = Command::new(&gcc.path)
        .args(args)
        .current_dir(dir)
        .env("LC_ALL", "C")
        .output()
        .expect("gcc runs");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (out.status.code().unwrap_or(-1), out.stdout, stderr)
}

/// The task of one segment; the C locale, as the local compiles here use.
fn task(gcc: &LocalCompiler, c: CompileSpec, files: Vec<InputFile>) -> TaskSpec {
    TaskSpec {
        kind: TaskKind::Compile,
        compile: Some(CompileSpec {
            compiler: gcc.identity.hash.clone(),
            ..c
        }),
        env: [("LC_ALL".to_owned(), "C".into())].into(),
        files,
        deadline_s: Some(TEST_TIMEOUT.as_secs()),
        needs: Needs {
            capabilities: vec![gcc.identity.tag()],
            gpus: None,
        },
        ..TaskSpec::default()
    }
}

/// A finished compile with its stderr.
struct Done {
    run: CompileRun,
    stderr: String,
}

/// Runs `spec` as the worker does: parsed first, then its compile task through the compiler.
async fn compile(cfg: &SandboxConfig, slot: usize, spec: &TaskSpec, sources: &Sources) -> Done {
    let task = spec.parse().expect("the test spec parses");
    let Work::Compile(segment) = &task.work else {
        panic!("not a compile task: {:?}", task.work)
    };
    let job = Job {
        task: segment,
        bounds: &task.bounds,
    };
    let compiler = Compiler {
        sandbox: cfg,
        isolation: isolation(),
        envs: envs(),
        sources,
        offered: None,
    };
    let (tx, mut rx) = mpsc::channel(EVENT_CHANNEL_CAPACITY);
    let collect = async move {
        let mut stderr = String::new();
        while let Some(chunk) = rx.recv().await {
            if let OutputChunk::Stderr(s) = chunk {
                stderr.push_str(&s);
            }
        }
        stderr
    };
    let work = compiler.run(slot, job, tx, CancellationToken::new());
    let (run, stderr) = tokio::time::timeout(TEST_TIMEOUT, async { tokio::join!(work, collect) })
        .await
        .expect("the compile ended within the test timeout");
    Done { run, stderr }
}

fn inline_object(run: &CompileRun) -> &[u8] {
    assert_eq!(run.artifacts.len(), 1, "{:?}", run.outcome);
    assert_eq!(run.artifacts[0].path, OBJECT_FILE);
    match &run.artifacts[0].body {
        ArtifactBody::Inline(bytes) => bytes,
        other => panic!("expected an inline object, got {other:?}"),
    }
}

const PROGRAM: &str = "#include <stdio.h>\n#include \"sq.h\"\n\nint main(void) {\n  printf(\"%d %s\\n\", SQ(7), __FILE__);\n  return 0;\n}\n";
const HEADER: &str = "#define SQ(x) ((x) * (x))\n";

#[tokio::test]
async fn a_preprocessed_segment_compiles_to_the_same_object_as_a_local_compile() {
    let Some(gcc) = gcc() else {
        eprintln!("SKIPPED: no gcc on PATH");
        return;
    };
    let proj = project(&[("a.c", PROGRAM), ("sq.h", HEADER)]);
    let (code, pp, err) = local_gcc(gcc, proj.path(), &["-E", "-fdirectives-only", "a.c"]);
    assert_eq!(code, 0, "{err}");
    let (code, _, err) = local_gcc(gcc, proj.path(), &["-O2", "-c", "a.c", "-o", "local.o"]);
    assert_eq!(code, 0, "{err}");
    let local = std::fs::read(proj.path().join("local.o")).unwrap();
    let (_work, cfg) = work_dir();
    let c = CompileSpec {
        args: vec!["-O2".into()],
        source_name: "a.c".into(),
        source: Source::packed(&pp),
        preprocessed: true,
        cwd: proj.path().display().to_string(),
        ..CompileSpec::default()
    };
    let done = compile(
        &cfg,
        0,
        &task(gcc, c.clone(), Vec::new()),
        &Sources::default(),
    )
    .await;
    assert_eq!(
        done.run.outcome,
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        done.stderr
    );
    assert!(
        inline_object(&done.run) == local,
        "the object differs from a local gcc -c"
    );
    assert!(
        done.run.ran.is_some_and(|d| !d.is_zero()),
        "the compiler's own run time comes with the files"
    );
    let kept = done.run.dir.as_ref().map(|d| d.path().to_path_buf());
    let kept = kept.expect("the directory stays until the files are sent");
    drop(done);
    assert!(!kept.exists(), "and goes once the run is dropped");

    // With debug info too, DW_AT_producer and the names included: the text is compiled as
    // ordinary source, not with -fdirectives-only, which GCC would record. With -pedantic
    // (which would call the line markers an extension) it is compiled in preprocessed mode
    // and still builds.
    for (flags, identical) in [
        (&["-g", "-O2"][..], true),
        (&["-g", "-O2", "-pedantic", "-Werror"][..], false),
    ] {
        let mut pp_args = flags.to_vec();
        pp_args.extend(["-E", "-fdirectives-only", "a.c"]);
        let (code, pp, err) = local_gcc(gcc, proj.path(), &pp_args);
        assert_eq!(code, 0, "{err}");
        let mut cc_args = flags.to_vec();
        cc_args.extend(["-c", "a.c", "-o", "local-g.o"]);
        let (code, _, err) = local_gcc(gcc, proj.path(), &cc_args);
        assert_eq!(code, 0, "{err}");
        let local = std::fs::read(proj.path().join("local-g.o")).unwrap();
        let g = CompileSpec {
            args: flags.iter().map(|s| s.to_string()).collect(),
            source: Source::packed(&pp),
            ..c.clone()
        };
        let done = compile(&cfg, 0, &task(gcc, g, Vec::new()), &Sources::default()).await;
        assert_eq!(
            done.run.outcome,
            TaskOutcome::Exited { exit_code: 0 },
            "{flags:?}: {}",
            done.stderr
        );
        if identical {
            assert!(
                inline_object(&done.run) == local,
                "{flags:?}: the object differs from a local gcc -c"
            );
        }
    }

    // The same source by reference, fetched from the bucket and checked against its name.
    let name = format!("sha256:{}", sha256_hex(&pp));
    let by_ref = CompileSpec {
        source: Source {
            object: Some(name.clone()),
            ..Source::default()
        },
        ..c.clone()
    };
    let store = Sources([(name.clone(), pp.clone())].into());
    let done = compile(&cfg, 1, &task(gcc, by_ref.clone(), Vec::new()), &store).await;
    assert!(inline_object(&done.run) == local, "{:?}", done.run.outcome);
    drop(done); // its directory goes with it
    let liar = Sources([(name.clone(), b"int x;".to_vec())].into());
    let done = compile(&cfg, 1, &task(gcc, by_ref.clone(), Vec::new()), &liar).await;
    assert!(
        matches!(&done.run.outcome, TaskOutcome::Error { message } if message.contains("refusing")),
        "{:?}",
        done.run.outcome
    );
    let done = compile(&cfg, 1, &task(gcc, by_ref, Vec::new()), &Sources::default()).await;
    assert!(
        matches!(&done.run.outcome, TaskOutcome::Error { message } if message.contains("not in the build sources bucket")),
        "{:?}",
        done.run.outcome
    );
    assert_eq!(
        crate::sandbox::task_dirs_left(&cfg.work_dir),
        Vec::<std::path::PathBuf>::new(),
        "no task directory left"
    );
}

#[tokio::test]
async fn a_compile_error_is_an_exit_code_with_the_original_file_and_line() {
    let Some(gcc) = gcc() else {
        eprintln!("SKIPPED: no gcc on PATH");
        return;
    };
    let bad = "int main(void) {\n  int x = 1;\n  return x + y;\n}\n";
    let proj = project(&[("proj/src/a.c", bad)]);
    let src = proj.path().join("proj/src");
    let (_, pp, _) = local_gcc(gcc, &src, &["-E", "-fdirectives-only", "a.c"]);
    let (code, _, local_err) = local_gcc(gcc, &src, &["-c", "a.c", "-o", "/dev/null"]);
    assert_ne!(code, 0);
    let (_work, cfg) = work_dir();
    let c = CompileSpec {
        source_name: "a.c".into(),
        source: Source::packed(&pp),
        preprocessed: true,
        workdir: "proj/src".into(),
        ..CompileSpec::default()
    };
    // Without the source file: the location, no quoted line.
    let done = compile(
        &cfg,
        2,
        &task(gcc, c.clone(), Vec::new()),
        &Sources::default(),
    )
    .await;
    assert!(
        matches!(done.run.outcome, TaskOutcome::Exited { exit_code } if exit_code != 0),
        "{:?}",
        done.run.outcome
    );
    assert!(done.run.artifacts.is_empty() && done.run.dir.is_none());
    assert!(done.stderr.contains("a.c:3:"), "{}", done.stderr);
    assert!(!done.stderr.contains("  3 |"), "{}", done.stderr);
    // With the file shipped at its relative path: the line is quoted, as a local compile does.
    let shipped = vec![InputFile {
        path: "proj/src/a.c".into(),
        text: Some(bad.into()),
        ..InputFile::default()
    }];
    let done = compile(&cfg, 2, &task(gcc, c.clone(), shipped), &Sources::default()).await;
    assert!(
        done.stderr.contains("    3 |   return x + y;"),
        "{}",
        done.stderr
    );
    assert_eq!(
        done.stderr, local_err,
        "diagnostics differ from a local compile"
    );
    // The same file by content name in the build sources bucket, as `vgas build` sends it.
    let name = format!("sha256:{}", sha256_hex(bad.as_bytes()));
    let by_name = CompileSpec {
        files: vec![SegmentFile {
            path: "proj/src/a.c".into(),
            object: name.clone(),
        }],
        ..c.clone()
    };
    let bucket = Sources([(name.clone(), bad.as_bytes().to_vec())].into());
    let done = compile(&cfg, 2, &task(gcc, by_name.clone(), Vec::new()), &bucket).await;
    assert_eq!(done.stderr, local_err, "diagnostics with a file by name");
    // Not in the bucket, or not what its name says: an error, never a compile without it.
    let empty = Sources::default();
    let done = compile(&cfg, 2, &task(gcc, by_name.clone(), Vec::new()), &empty).await;
    assert!(
        matches!(&done.run.outcome, TaskOutcome::Error { message } if message.contains("not in the build sources bucket")),
        "{:?}",
        done.run.outcome
    );
    let forged = Sources([(name, b"int y;".to_vec())].into());
    let done = compile(&cfg, 2, &task(gcc, by_name, Vec::new()), &forged).await;
    assert!(
        matches!(&done.run.outcome, TaskOutcome::Error { message } if message.contains("refusing")),
        "{:?}",
        done.run.outcome
    );
    // A shipped file cannot take the input's place (the main file's own name, in a
    // directory of its own: `command::input_file`).
    let clash = vec![InputFile {
        path: "proj/src/.vgas-input/a.c".into(),
        text: Some(String::new()),
        ..InputFile::default()
    }];
    let done = compile(&cfg, 2, &task(gcc, c, clash), &Sources::default()).await;
    assert!(
        matches!(done.run.outcome, TaskOutcome::Error { .. }),
        "{:?}",
        done.run.outcome
    );
}

#[tokio::test]
async fn a_self_contained_source_is_named_after_its_source_name() {
    let Some(gcc) = gcc() else {
        eprintln!("SKIPPED: no gcc on PATH");
        return;
    };
    let (_work, cfg) = work_dir();
    let c = CompileSpec {
        source_name: "lib/\"odd\".c".into(),
        source: Source {
            text: Some("int f(void) {\n  return nope;\n}\n".into()),
            ..Source::default()
        },
        ..CompileSpec::default()
    };
    let done = compile(&cfg, 3, &task(gcc, c, Vec::new()), &Sources::default()).await;
    assert!(done.stderr.contains("lib/\"odd\".c:2:"), "{}", done.stderr);
}

#[tokio::test]
async fn no_object_or_no_compiler_is_an_error_and_a_large_object_is_kept_for_upload() {
    let Some(gcc) = gcc() else {
        eprintln!("SKIPPED: no gcc on PATH");
        return;
    };
    let (_work, cfg) = work_dir();
    let text = |t: &str| Source {
        text: Some(t.into()),
        ..Source::default()
    };
    let c = CompileSpec {
        args: vec!["-fsyntax-only".into()],
        source_name: "s.c".into(),
        source: text("int x;\n"),
        ..CompileSpec::default()
    };
    let done = compile(
        &cfg,
        4,
        &task(gcc, c.clone(), Vec::new()),
        &Sources::default(),
    )
    .await;
    assert!(
        matches!(&done.run.outcome, TaskOutcome::Error { message } if message.contains("wrote no vgas-segment.o")),
        "{:?}",
        done.run.outcome
    );
    let mut other = task(gcc, c.clone(), Vec::new());
    if let Some(c) = other.compile.as_mut() {
        c.compiler = format!("sha256:{}", "1".repeat(64));
        other.needs.capabilities = vec![compiler_tag(&c.compiler)];
    }
    let done = compile(&cfg, 4, &other, &Sources::default()).await;
    assert!(
        matches!(&done.run.outcome, TaskOutcome::Error { message } if message.contains("no compiler with identity sha256:1111")),
        "{:?}",
        done.run.outcome
    );

    let big = CompileSpec {
        args: Vec::new(),
        source: text("char big[3000000] = {1};\n"),
        ..c
    };
    let done = compile(&cfg, 4, &task(gcc, big, Vec::new()), &Sources::default()).await;
    assert_eq!(
        done.run.outcome,
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        done.stderr
    );
    let (file, size): (PathBuf, u64) = match &done.run.artifacts[..] {
        [Artifact {
            body: ArtifactBody::Large { file, size },
            ..
        }] => (file.clone(), *size),
        other => panic!("expected one large object, got {other:?}"),
    };
    assert!(size > MAX_INLINE_ARTIFACT_BYTES);
    assert_eq!(std::fs::metadata(&file).unwrap().len(), size);
    let dir = done.run.dir.expect("the directory is kept for the upload");
    assert!(file.starts_with(dir.path()));
    drop(dir);
    assert!(!file.exists(), "the kept directory goes when dropped");
}

/// A source that counts its fetches.
#[derive(Debug, Default)]
struct Counting {
    objects: HashMap<String, Vec<u8>>,
    fetches: std::sync::atomic::AtomicUsize,
}

impl ModuleSource for Counting {
    async fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        self.fetches
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(self.objects.get(name).cloned())
    }
}

#[tokio::test]
async fn a_checked_segment_file_is_fetched_once_and_a_large_source_or_a_bad_one_every_time() {
    let name = |bytes: &[u8]| format!("sha256:{}", sha256_hex(bytes));
    let small = vec![1u8; 100];
    let large = vec![2u8; MAX_SEGMENT_FILE_BYTES as usize + 1];
    let (s, l) = (name(&small), name(&large));
    // Stored under the name of other bytes.
    let forged = name(b"what the name promises");
    let missing = name(b"nobody stored this");
    let memo = Memoized::new(Counting {
        objects: [
            (s.clone(), small.clone()),
            (l.clone(), large.clone()),
            (forged.clone(), b"something else".to_vec()),
        ]
        .into(),
        ..Counting::default()
    });
    for _ in 0..3 {
        assert_eq!(memo.fetch_checked(&s).await.unwrap(), Some(small.clone()));
        assert_eq!(memo.fetch_checked(&l).await.unwrap(), Some(large.clone()));
        assert_eq!(memo.fetch_checked(&missing).await.unwrap(), None);
        let refused = memo.fetch_checked(&forged).await.unwrap_err();
        assert!(refused.contains("refusing"), "{refused}");
    }
    // One fetch of the small object; three each of the large, the missing and the forged one
    // (refused bytes are never kept).
    let fetches = memo
        .inner
        .fetches
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fetches, 1 + 3 + 3 + 3);
    // A plain fetch keeps nothing: the next checked one still fetches and checks.
    let other = vec![3u8; 10];
    let memo = Memoized::new(Counting {
        objects: [(name(&other), other.clone())].into(),
        ..Counting::default()
    });
    assert_eq!(
        memo.fetch(&name(&other)).await.unwrap(),
        Some(other.clone())
    );
    assert_eq!(
        memo.fetch_checked(&name(&other)).await.unwrap(),
        Some(other.clone())
    );
    assert_eq!(
        memo.fetch_checked(&name(&other)).await.unwrap(),
        Some(other)
    );
    let fetches = memo
        .inner
        .fetches
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(fetches, 2);
}
