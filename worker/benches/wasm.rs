//! Wasm sandbox costs: from a task's bytes to the module's first instruction with a warm
//! compiled-module cache, against spawning a native process to its first output; one whole
//! small task (directory, WASI context, instantiation, run, artifact scan) against spawning
//! a native process; loading a compiled module from the disk cache; and a cold compile, which
//! that cache removes.
//!
//! `cargo bench -p vgas-worker --bench wasm`

use std::collections::HashMap;
use std::io::Read as _;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use tokio_util::sync::CancellationToken;
use vgas_shared::wire::{ModuleRef, TaskKind, TaskSpec, Work};
use vgas_worker::sandbox::{Job, Limits};
use vgas_worker::wasm::{sha256_hex, ModuleSource, WasmConfig, WasmRuntime};

struct Modules(HashMap<String, Vec<u8>>);

impl ModuleSource for Modules {
    async fn fetch(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        Ok(self.0.get(name).cloned())
    }
}

/// A command that prints one line.
fn hello() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $w (param i32 i32 i32 i32) (result i32)))
          (memory (export "memory") 1)
          (data (i32.const 64) "hi\n")
          (func (export "_start")
            (i32.store (i32.const 0) (i32.const 64)) (i32.store (i32.const 4) (i32.const 3))
            (drop (call $w (i32.const 1) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .unwrap()
}

/// A module with `n` functions of some arithmetic, to give the compiler real work.
fn big(n: usize) -> Vec<u8> {
    let mut wat = String::from("(module (memory 1)");
    for i in 0..n {
        wat.push_str(&format!(
            "(func $f{i} (param i32) (result i32) (local i32) \
             (local.set 1 (i32.mul (local.get 0) (i32.const {i}))) \
             (if (i32.gt_u (local.get 1) (i32.const 1000)) (then (local.set 1 (i32.load (local.get 1))))) \
             (i32.add (local.get 1) (i32.xor (local.get 0) (i32.const 7))))"
        ));
    }
    wat.push_str("(func (export \"_start\")))");
    wat::parse_str(wat).unwrap()
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let cache = tempfile::tempdir().unwrap();
    let work = tempfile::tempdir().unwrap();
    let wasm = WasmRuntime::new(&WasmConfig::new(cache.path().to_path_buf())).unwrap();
    let bytes = hello();
    let name = format!("sha256:{}", sha256_hex(&bytes));
    let modules = Modules(HashMap::from([(name.clone(), bytes)]));
    let spec = TaskSpec {
        kind: TaskKind::Wasm,
        module: Some(name.clone()),
        ..Default::default()
    };
    let ceilings = Limits::default();
    let task = spec.parse().unwrap();
    let Work::Wasm(wasm_task) = &task.work else {
        panic!("not a wasm task")
    };
    let job = Job {
        task: wasm_task,
        bounds: &task.bounds,
    };
    let run_once = || async {
        let (tx, mut rx) = tokio::sync::mpsc::channel(64);
        let drain = async { while rx.recv().await.is_some() {} };
        let (r, ()) = tokio::join!(
            wasm.run(
                work.path(),
                &ceilings,
                job,
                &modules,
                tx,
                CancellationToken::new()
            ),
            drain
        );
        assert!(r.outcome.succeeded(), "{:?}", r.outcome);
    };
    rt.block_on(run_once());

    // Receipt to first instruction: the clock starts at the task's JSON bytes (as the worker
    // receives them, then parses them) and stops when the module's first instruction, a
    // `fd_write`, has put its line into the output channel. The rest of the run is outside the
    // measured time.
    let wire = serde_json::to_vec(&spec).unwrap();
    c.bench_function("wasm_receipt_to_first_instruction", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                total += rt.block_on(async {
                    let started = Instant::now();
                    let spec: TaskSpec = serde_json::from_slice(&wire).unwrap();
                    let task = spec.parse().unwrap();
                    let Work::Wasm(wasm_task) = &task.work else {
                        panic!("not a wasm task")
                    };
                    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
                    let first = async {
                        rx.recv().await.expect("the module printed");
                        let at = started.elapsed();
                        while rx.recv().await.is_some() {}
                        at
                    };
                    let (r, at) = tokio::join!(
                        wasm.run(
                            work.path(),
                            &ceilings,
                            Job {
                                task: wasm_task,
                                bounds: &task.bounds,
                            },
                            &modules,
                            tx,
                            CancellationToken::new()
                        ),
                        first
                    );
                    assert!(r.outcome.succeeded(), "{:?}", r.outcome);
                    at
                });
            }
            total
        })
    });
    c.bench_function("native_spawn_to_first_output", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let started = Instant::now();
                let mut child = std::process::Command::new("echo")
                    .arg("hi")
                    .stdout(std::process::Stdio::piped())
                    .spawn()
                    .unwrap();
                let mut byte = [0u8; 1];
                child
                    .stdout
                    .as_mut()
                    .unwrap()
                    .read_exact(&mut byte)
                    .unwrap();
                total += started.elapsed();
                assert!(child.wait().unwrap().success());
            }
            total
        })
    });
    c.bench_function("wasm_task_warm_cache", |b| {
        b.iter(|| rt.block_on(run_once()))
    });
    c.bench_function("native_spawn_true", |b| {
        b.iter(|| {
            let st = std::process::Command::new("true").status().unwrap();
            assert!(st.success());
        })
    });
    let module = ModuleRef::parse(&name).unwrap();
    c.bench_function("wasm_load_from_disk_cache", |b| {
        b.iter(|| {
            wasm.forget_memory();
            rt.block_on(wasm.load(&module, &modules)).unwrap();
        })
    });
    let big = big(2000);
    eprintln!("big module: {} bytes", big.len());
    let mut g = c.benchmark_group("cold");
    g.sample_size(10);
    g.bench_function("wasm_compile_2000_functions", |b| {
        b.iter(|| wasmtime::Module::new(wasm.engine(), &big).unwrap())
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
