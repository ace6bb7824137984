//! Wasm tasks through the real swarm: a module uploaded by `vgas submit --wasm`, run on a
//! worker, streamed, its output file back as an artifact; the same module submitted as JSON
//! by a plain NATS client that put it into the Object Store itself; an unknown hash failing
//! clearly while the worker keeps serving; a real C program compiled to wasm32-wasi with Zig
//! at test time whose output file matches the native build's; a file past the inline cap
//! coming back through the artifacts Object Store bucket.

use std::time::Duration;

use base64::Engine as _;
use sha2::{Digest, Sha256};
use vgas_shared::wire::{TaskEvent, TaskOutcome};
use vgas_shared::TaskId;
use vgas_tests::wasi::{native_textstat, textstat_or_skip};
use vgas_tests::{collect, Swarm};

/// A WASI command that prints "hello from wasm", writes "generated" into `out/gen.txt` and
/// exits with code 3.
fn module() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (import "wasi_snapshot_preview1" "path_create_directory" (func $mkdir (param i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "path_open"
            (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 1024) "hello from wasm\n")
          (data (i32.const 1100) "out/gen.txt")
          (data (i32.const 1200) "generated")
          (func $write (param $fd i32) (param $ptr i32) (param $len i32)
            (i32.store (i32.const 0) (local.get $ptr))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
          (func (export "_start")
            (call $write (i32.const 1) (i32.const 1024) (i32.const 16))
            (drop (call $mkdir (i32.const 3) (i32.const 1100) (i32.const 3)))
            (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 1100) (i32.const 11)
                  (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16))
              (then (call $proc_exit (i32.const 99))))
            (call $write (i32.load (i32.const 16)) (i32.const 1200) (i32.const 9))
            (call $proc_exit (i32.const 3))))"#,
    )
    .unwrap()
}

fn name_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[tokio::test]
async fn vgas_submit_wasm_uploads_runs_streams_and_saves_artifacts() {
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let path = swarm.dir.path().join("tool.wasm");
    std::fs::write(&path, module()).unwrap();
    let path = path.display().to_string();
    for round in 0..2 {
        let out = swarm
            .cli(&["submit", "--wasm", &path, "--", "tool", "arg"])
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(3), "{stdout}\n{stderr}");
        assert_eq!(stdout, "hello from wasm\n", "{stderr}");
        // Uploaded the first time only.
        assert_eq!(stderr.contains("uploaded"), round == 0, "{stderr}");
        let saved = swarm.dir.path().join("vgas-artifacts/out/gen.txt");
        assert_eq!(std::fs::read_to_string(&saved).unwrap(), "generated");
        std::fs::remove_file(saved).unwrap();
    }
}

#[tokio::test]
async fn a_plain_client_puts_the_module_and_submits_json() {
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let bytes = module();
    let name = name_of(&bytes);
    // What `nats object put` does: the client role may put into the modules bucket.
    let js = async_nats::jetstream::new(client.clone());
    let store = js
        .get_object_store(swarm.subjects.modules_bucket())
        .await
        .unwrap();
    store
        .put(name.as_str(), &mut bytes.as_slice())
        .await
        .unwrap();

    let id = TaskId::random();
    let sub = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let json = format!(
        r#"{{"task_id":"{id}","kind":"wasm","module":"{name}","cmd":["tool"],"deadline_s":30}}"#
    );
    let reply = client
        .request(swarm.subjects.submit(), json.into_bytes().into())
        .await
        .unwrap();
    let reply: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
    assert_eq!(reply["task_id"], id.to_string(), "{reply}");
    let got = collect(sub, Duration::from_secs(30), Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(got.stdout, "hello from wasm\n");
    assert_eq!(got.outcome(), TaskOutcome::Exited { exit_code: 3 });
    let artifact = got.events.iter().find_map(|e| match e {
        TaskEvent::Artifact { path, base64, .. } => Some((path.clone(), base64.clone())),
        _ => None,
    });
    let (path, b64) = artifact.expect("an artifact event");
    assert_eq!(path, "out/gen.txt");
    assert_eq!(
        base64::engine::general_purpose::STANDARD
            .decode(b64)
            .unwrap(),
        b"generated"
    );
}

#[tokio::test]
async fn an_unknown_module_fails_clearly_and_the_worker_keeps_serving() {
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let unknown = format!("sha256:{}", "0".repeat(64));
    let spec = vgas_shared::wire::TaskSpec {
        kind: vgas_shared::wire::TaskKind::Wasm,
        module: Some(unknown.clone()),
        ..Default::default()
    };
    let got = vgas_tests::run_task(&client, &swarm.subjects, spec, Duration::ZERO)
        .await
        .unwrap();
    match got.outcome() {
        TaskOutcome::Error { message } => {
            assert!(message.contains(&unknown), "{message}");
            assert!(message.contains("not in the modules bucket"), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let again = vgas_tests::run_task(
        &client,
        &swarm.subjects,
        vgas_tests::sh("echo ok"),
        Duration::ZERO,
    )
    .await
    .unwrap();
    assert_eq!(again.stdout, "ok\n");
}

#[tokio::test]
async fn a_c_program_compiled_to_wasi_by_zig_writes_what_its_native_build_writes() {
    let build = tempfile::tempdir().unwrap();
    let Some((wasm, native)) = textstat_or_skip(build.path()) else {
        return;
    };
    // Input with several lines, words and a clear top letter, made here, not read from a file.
    let input: String = (1..=40)
        .map(|i| format!("line {i}: the quick brown fox jumps over {} dogs\n", i * 7))
        .collect();
    let (input_path, expected) = native_textstat(&native, build.path(), &input);

    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let file = format!("{}:in.txt", input_path.display());
    let out = swarm
        .cli(&[
            "submit",
            "--wasm",
            &wasm.display().to_string(),
            "--file",
            &file,
            "--",
            "textstat",
            "in.txt",
            "stats.txt",
        ])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "wrote stats.txt\n", "{stderr}");
    let saved = swarm.dir.path().join("vgas-artifacts");
    assert_eq!(std::fs::read(saved.join("stats.txt")).unwrap(), expected);
    // The unchanged input does not come back.
    assert!(!saved.join("in.txt").exists());
}

/// Bytes of each write of the big-file module: one 64 KiB wasm page.
const CHUNK: u64 = 64 * 1024;

/// A WASI command that writes `chunks` copies of a 64 KiB pattern (byte i is i mod 251) into
/// `big.bin`, then prints "done".
fn big_file_module(chunks: u64) -> Vec<u8> {
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "path_open"
            (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (memory (export "memory") 2)
          (data (i32.const 1024) "big.bin")
          (data (i32.const 1100) "done\n")
          (func $write (param $fd i32) (param $ptr i32) (param $len i32)
            (i32.store (i32.const 0) (local.get $ptr))
            (i32.store (i32.const 4) (local.get $len))
            (drop (call $fd_write (local.get $fd) (i32.const 0) (i32.const 1) (i32.const 8))))
          (func (export "_start") (local $i i32) (local $fd i32)
            (loop $fill
              (i32.store8 (i32.add (i32.const 65536) (local.get $i))
                (i32.rem_u (local.get $i) (i32.const 251)))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $fill (i32.lt_u (local.get $i) (i32.const {CHUNK}))))
            (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 1024) (i32.const 7)
                  (i32.const 1) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16))
              (then (call $proc_exit (i32.const 99))))
            (local.set $fd (i32.load (i32.const 16)))
            (local.set $i (i32.const 0))
            (loop $chunks
              (call $write (local.get $fd) (i32.const 65536) (i32.const {CHUNK}))
              (local.set $i (i32.add (local.get $i) (i32.const 1)))
              (br_if $chunks (i32.lt_u (local.get $i) (i32.const {chunks}))))
            (call $write (i32.const 1) (i32.const 1100) (i32.const 5))))"#
    ))
    .unwrap()
}

#[tokio::test]
async fn a_file_past_the_inline_cap_comes_back_through_the_object_store() {
    use vgas_shared::limits::{MAX_ARTIFACT_BYTES, MAX_INLINE_ARTIFACT_BYTES};
    // A few chunks past the inline cap, well under the hard cap.
    let chunks = MAX_INLINE_ARTIFACT_BYTES / CHUNK + 4;
    let expected: Vec<u8> = (0..chunks * CHUNK)
        .map(|i| ((i % CHUNK) % 251) as u8)
        .collect();
    assert!(expected.len() as u64 > MAX_INLINE_ARTIFACT_BYTES);
    assert!((expected.len() as u64) < MAX_ARTIFACT_BYTES);

    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let path = swarm.dir.path().join("big.wasm");
    std::fs::write(&path, big_file_module(chunks)).unwrap();
    let out = swarm
        .cli(&["submit", "--wasm", &path.display().to_string(), "--", "big"])
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "done\n", "{stderr}");
    let saved = std::fs::read(swarm.dir.path().join("vgas-artifacts/big.bin")).unwrap();
    assert_eq!(saved.len(), expected.len());
    assert!(
        saved == expected,
        "big.bin differs from what the module wrote"
    );

    // A plain client sees the reference in the event and reads the object itself.
    let spec = vgas_shared::wire::TaskSpec {
        kind: vgas_shared::wire::TaskKind::Wasm,
        module: Some(name_of(&big_file_module(chunks))),
        ..Default::default()
    };
    let got = vgas_tests::run_task(&client, &swarm.subjects, spec, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(got.outcome(), TaskOutcome::Exited { exit_code: 0 });
    let (object, size, b64) = got
        .events
        .iter()
        .find_map(|e| match e {
            TaskEvent::Artifact {
                object: Some(o),
                size,
                base64,
                ..
            } => Some((o.clone(), *size, base64.clone())),
            _ => None,
        })
        .expect("an artifact event by reference");
    assert_eq!(size, Some(expected.len() as u64));
    assert!(b64.is_empty());
    let js = async_nats::jetstream::new(client.clone());
    let store = js
        .get_object_store(swarm.subjects.artifacts_bucket())
        .await
        .unwrap();
    let mut reader = store.get(object.as_str()).await.unwrap();
    let mut bytes = Vec::new();
    tokio::io::AsyncReadExt::read_to_end(&mut reader, &mut bytes)
        .await
        .unwrap();
    assert!(
        bytes == expected,
        "the object differs from what the module wrote"
    );
}
