//! GPUs for real: what only a machine with an NVIDIA GPU can check. Ignored by default (CI
//! and the development machines have no GPU); `scripts/gpu-check.sh` runs them with
//! `--include-ignored` there, and on a machine without a GPU or NVRTC they fail, saying why.

use std::time::Duration;

use base64::Engine as _;
use vgas_shared::gpu::GpuNeeds;
use vgas_shared::wire::{
    CudaSpec, InputFile, KernelArg, TaskEvent, TaskKind, TaskOutcome, TaskSpec,
};
use vgas_tests::{run_task, sh, Proc, Swarm};

/// Fails the test unless this machine has a GPU and NVRTC.
fn need_gpu() {
    let gpu = std::path::Path::new("/dev/nvidiactl").exists();
    let nvrtc = std::env::var_os("VGAS_NVRTC_LIB").is_some();
    assert!(
        gpu && nvrtc,
        "needs a GPU (/dev/nvidiactl: {gpu}) and NVRTC (VGAS_NVRTC_LIB: {nvrtc})"
    );
}

async fn gpu_swarm() -> (Swarm, Vec<Proc>, async_nats::Client) {
    let (swarm, procs, client) = Swarm::with_workers(&[("gpu1", 4)]).await.unwrap();
    (swarm, procs, client)
}

fn floats(v: &[f32]) -> InputFile {
    let bytes: Vec<u8> = v.iter().flat_map(|f| f.to_le_bytes()).collect();
    InputFile {
        base64: Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
        ..Default::default()
    }
}

fn artifact_floats(events: &[TaskEvent], name: &str) -> Vec<f32> {
    let b64 = events
        .iter()
        .find_map(|e| match e {
            TaskEvent::Artifact { path, base64, .. } if path == name => Some(base64.clone()),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no {name} in {events:?}"));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
        .collect()
}

fn cuda_task(source: &str, entry: &str, grid: u32, block: u32, args: Vec<KernelArg>) -> TaskSpec {
    TaskSpec {
        kind: TaskKind::Cuda,
        cuda: Some(CudaSpec {
            source: source.into(),
            entry: entry.into(),
            arch: None,
            options: Vec::new(),
            compile_only: false,
            grid: [grid, 1, 1],
            block: [block, 1, 1],
            shared_mem_bytes: 0,
            args,
        }),
        deadline_s: Some(60),
        ..Default::default()
    }
}

const ADD: &str = r#"extern "C" __global__ void add(const float *a, const float *b, float *c, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}
"#;

const SUM: &str = r#"extern "C" __global__ void sum(const float *x, float *out, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) atomicAdd(out, x[i]);
}
"#;

const SPIN: &str = r#"extern "C" __global__ void spin(int *flag) {
    while (*(volatile int *)flag == 0) { }
}
"#;

/// A vector add as a task, checked against the CPU; returns the task's outcome.
async fn vector_add(swarm: &Swarm, client: &async_nats::Client, n: usize) {
    let a: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| 2.0 * i as f32 + 0.5).collect();
    let mut spec = cuda_task(
        ADD,
        "add",
        n.div_ceil(256) as u32,
        256,
        vec![
            KernelArg::In("a.bin".into()),
            KernelArg::In("b.bin".into()),
            KernelArg::Out {
                path: "c.bin".into(),
                bytes: (n * 4) as u64,
            },
            KernelArg::U32(n as u32),
        ],
    );
    spec.files = vec![
        InputFile {
            path: "a.bin".into(),
            ..floats(&a)
        },
        InputFile {
            path: "b.bin".into(),
            ..floats(&b)
        },
    ];
    let c = run_task(client, &swarm.subjects, spec, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        c.outcome(),
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        c.stderr
    );
    let got = artifact_floats(&c.events, "c.bin");
    let want: Vec<f32> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    assert_eq!(got, want);
}

#[tokio::test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
async fn a_vector_add_and_a_reduction_run_on_the_leased_gpu() {
    need_gpu();
    let (swarm, _procs, client) = gpu_swarm().await;
    vector_add(&swarm, &client, 100_000).await;
    let n = 4096usize;
    let x: Vec<f32> = (0..n).map(|i| (i % 7) as f32).collect();
    let mut spec = cuda_task(
        SUM,
        "sum",
        (n / 256) as u32,
        256,
        vec![
            KernelArg::In("x.bin".into()),
            KernelArg::Out {
                path: "sum.bin".into(),
                bytes: 4,
            },
            KernelArg::U32(n as u32),
        ],
    );
    spec.files = vec![InputFile {
        path: "x.bin".into(),
        ..floats(&x)
    }];
    let c = run_task(&client, &swarm.subjects, spec, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        c.outcome(),
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        c.stderr
    );
    assert_eq!(
        artifact_floats(&c.events, "sum.bin"),
        vec![x.iter().sum::<f32>()]
    );
}

#[tokio::test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
async fn an_exec_task_sees_only_its_leased_device() {
    need_gpu();
    let (swarm, _procs, client) = gpu_swarm().await;
    let pulse: vgas_shared::wire::SwarmPulse =
        vgas_tests::request(&client, swarm.subjects.status(), &())
            .await
            .unwrap();
    let first = pulse.live[0].gpus[0].uuid.clone();
    let mut spec =
        sh("echo $CUDA_VISIBLE_DEVICES; nvidia-smi -L | wc -l; ls /dev/nvidia[0-9]* | wc -l");
    spec.needs.gpus = Some(GpuNeeds::count(1));
    let c = run_task(&client, &swarm.subjects, spec, Duration::ZERO)
        .await
        .unwrap();
    assert_eq!(
        c.outcome(),
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        c.stderr
    );
    let lines: Vec<&str> = c.stdout.lines().collect();
    assert_eq!(lines[0], first);
    assert_eq!(
        lines[1], "1",
        "nvidia-smi lists only the leased device: {}",
        c.stdout
    );
}

#[tokio::test]
#[ignore = "needs an NVIDIA GPU: scripts/gpu-check.sh runs it"]
async fn a_kernel_past_its_deadline_is_stopped_and_the_device_works_after() {
    need_gpu();
    let (swarm, _procs, client) = gpu_swarm().await;
    let mut spec = cuda_task(
        SPIN,
        "spin",
        1,
        1,
        vec![KernelArg::Out {
            path: "flag.bin".into(),
            bytes: 4,
        }],
    );
    spec.deadline_s = Some(3);
    spec.retryable = Some(false);
    let c = run_task(&client, &swarm.subjects, spec, Duration::ZERO)
        .await
        .unwrap();
    assert!(
        matches!(c.outcome(), TaskOutcome::TimedOut { .. }),
        "{:?}",
        c.outcome()
    );
    vector_add(&swarm, &client, 1024).await;
}
