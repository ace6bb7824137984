//! Launch overhead through the swarm next to a direct cudarc launch, in the same run, on a
//! machine with an NVIDIA GPU (without one it says so and measures nothing):
//! - direct: this process compiles the vector add with NVRTC once, then each round copies two
//!   1 MiB inputs to the device, launches, copies the result back (cudarc, one context);
//! - swarm: the same kernel as a `cuda` task through a real master and worker (PTX from the
//!   swarm's cache after the first round): submit, lease, sandboxed helper, launch, result.
//!
//! Run: `VGAS_BIN_DIR=target/release cargo bench -p vgas-tests --bench gpu_launch`
//! (`scripts/gpu-check.sh` runs it on the GPU machine).

use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use cudarc::driver::{CudaContext, LaunchConfig, PushKernelArg};
use vgas_shared::wire::{CudaSpec, InputFile, KernelArg, TaskKind, TaskOutcome, TaskSpec};
use vgas_tests::{run_task, Swarm};

const ROUNDS: usize = 30;
const N: usize = 256 * 1024;
const ADD: &str = include_str!("../../examples/add.cu");

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn direct(a: &[f32], b: &[f32]) -> Duration {
    let lib = std::env::var("VGAS_NVRTC_LIB").expect("VGAS_NVRTC_LIB");
    // SAFETY: loading NVRTC runs no initialisers with preconditions; kept loaded (global), so
    // cudarc's load by the same SONAME finds it.
    let l = unsafe {
        libloading::os::unix::Library::open(
            Some(&lib),
            libloading::os::unix::RTLD_NOW | libloading::os::unix::RTLD_GLOBAL,
        )
    }
    .expect("load NVRTC");
    std::mem::forget(l);
    let ptx = cudarc::nvrtc::compile_ptx(ADD).expect("NVRTC compiles the kernel");
    let ctx = CudaContext::new(0).expect("a GPU");
    let stream = ctx.default_stream();
    let module = ctx.load_module(ptx).expect("load PTX");
    let f = module.load_function("add").expect("kernel");
    let cfg = LaunchConfig::for_num_elems(N as u32);
    let n = N as u32;
    let mut times = Vec::with_capacity(ROUNDS);
    for _ in 0..ROUNDS {
        let started = Instant::now();
        let da = stream.clone_htod(a).expect("copy a");
        let db = stream.clone_htod(b).expect("copy b");
        let mut dc = stream.alloc_zeros::<f32>(N).expect("alloc c");
        let mut builder = stream.launch_builder(&f);
        builder.arg(&da).arg(&db).arg(&mut dc).arg(&n);
        // SAFETY: the kernel's parameters are (const float*, const float*, float*, unsigned).
        unsafe { builder.launch(cfg) }.expect("launch");
        let c = stream.clone_dtoh(&dc).expect("copy c");
        times.push(started.elapsed());
        assert_eq!(c[N - 1], a[N - 1] + b[N - 1]);
    }
    median(times)
}

fn task(a: &[f32], b: &[f32]) -> TaskSpec {
    let file = |path: &str, v: &[f32]| InputFile {
        path: path.into(),
        base64: Some(
            base64::engine::general_purpose::STANDARD
                .encode(v.iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<u8>>()),
        ),
        ..Default::default()
    };
    TaskSpec {
        kind: TaskKind::Cuda,
        cuda: Some(CudaSpec {
            source: ADD.into(),
            entry: "add".into(),
            arch: None,
            options: Vec::new(),
            compile_only: false,
            grid: [(N / 256) as u32, 1, 1],
            block: [256, 1, 1],
            shared_mem_bytes: 0,
            args: vec![
                KernelArg::In("a.bin".into()),
                KernelArg::In("b.bin".into()),
                KernelArg::Out {
                    path: "c.bin".into(),
                    bytes: (N * 4) as u64,
                },
                KernelArg::U32(N as u32),
            ],
        }),
        files: vec![file("a.bin", a), file("b.bin", b)],
        deadline_s: Some(60),
        ..Default::default()
    }
}

#[tokio::main]
async fn main() {
    // SAFETY: loads and unloads by name, touching no cudarc state.
    if !unsafe { cudarc::driver::sys::is_culib_present() } {
        println!("gpu_launch: no libcuda here (no GPU): nothing to measure");
        return;
    }
    let a: Vec<f32> = (0..N).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..N).map(|i| 0.5 * i as f32).collect();
    let direct = direct(&a, &b);
    let (swarm, _procs, client) = Swarm::with_workers(&[("gpu1", 2)]).await.expect("swarm");
    let client = Arc::new(client);
    let spec = task(&a, &b);
    let mut times = Vec::with_capacity(ROUNDS);
    for round in 0..=ROUNDS {
        let started = Instant::now();
        let c = run_task(&client, &swarm.subjects, spec.clone(), Duration::ZERO)
            .await
            .expect("task");
        assert_eq!(
            c.outcome(),
            TaskOutcome::Exited { exit_code: 0 },
            "{}",
            c.stderr
        );
        if round > 0 {
            times.push(started.elapsed());
        }
    }
    let swarm_median = median(times);
    println!(
        "gpu_launch: vector add of {N} floats, median of {ROUNDS}: direct cudarc {:.3} ms, \
         through the swarm {:.3} ms ({:.1}x)",
        direct.as_secs_f64() * 1e3,
        swarm_median.as_secs_f64() * 1e3,
        swarm_median.as_secs_f64() / direct.as_secs_f64()
    );
}
