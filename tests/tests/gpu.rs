//! GPUs in the swarm without a GPU: leases on workers with a declared inventory
//! (`VGAS_SIMULATED_GPUS`), exclusive under many tasks, across a master SIGKILL and a worker
//! SIGKILL; refusals of what no worker could ever give; a worker without libcuda reporting no
//! GPUs; and `cuda` tasks compiled to PTX by the real NVRTC (PyPI `nvidia-cuda-nvrtc`), cached
//! swarm-wide, submitted as the JSON `docs/protocol.md` shows and through `vgas submit --cuda`.

use std::collections::HashMap;

use futures::StreamExt;
use std::time::Duration;

use base64::Engine as _;
use vgas_shared::config::Role;
use vgas_shared::gpu::GpuNeeds;
use vgas_shared::wire::{SubmitReply, SwarmPulse, TaskEvent, TaskOutcome, TaskSpec};
use vgas_shared::TaskId;
use vgas_tests::{collect, request, sh, wait_for, Proc, Swarm, WAIT};

/// A declared device with a fixed UUID, so a restarted worker has the same one.
const FIXED_DEVICE: &str =
    r#"[{"uuid":"GPU-fixed-0","name":"Simulated GPU","memory_total_mb":16000,"compute":"9.0"}]"#;

/// A master, and workers with these declared inventories, all live.
async fn swarm_with_gpus(
    workers: &[(&str, usize, &str)],
) -> (Swarm, Vec<Proc>, async_nats::Client) {
    let mut swarm = Swarm::start().await.unwrap();
    let mut procs = vec![swarm.master(&[]).unwrap()];
    for (id, slots, gpus) in workers {
        procs.push(
            swarm
                .worker_with_env(id, *slots, &[("VGAS_SIMULATED_GPUS", gpus)])
                .unwrap(),
        );
    }
    let client = swarm.connect(Role::Client).await.unwrap();
    swarm.wait_workers(&client, workers.len()).await.unwrap();
    (swarm, procs, client)
}

fn needs_gpus(mut spec: TaskSpec, gpus: GpuNeeds) -> TaskSpec {
    spec.needs.gpus = Some(gpus);
    spec
}

async fn status(swarm: &Swarm, client: &async_nats::Client) -> SwarmPulse {
    request(client, swarm.subjects.status(), &()).await.unwrap()
}

/// Submits `spec` under a fresh id and returns its event subscription.
async fn submit(
    swarm: &Swarm,
    client: &async_nats::Client,
    mut spec: TaskSpec,
) -> async_nats::Subscriber {
    let id = TaskId::random();
    spec.task_id = Some(id.clone());
    let sub = client
        .subscribe(swarm.subjects.task_events(&id))
        .await
        .unwrap();
    let _: SubmitReply = request(client, swarm.subjects.submit(), &spec)
        .await
        .unwrap();
    sub
}

/// The (device, start ns, end ns) a task printed.
fn interval(stdout: &str) -> (String, u128, u128) {
    let mut device = String::new();
    let mut times = Vec::new();
    for line in stdout.lines() {
        let mut parts = line.split_whitespace();
        device = parts.next().unwrap_or_default().to_owned();
        times.push(parts.next().unwrap_or("0").parse::<u128>().unwrap());
    }
    assert_eq!(times.len(), 2, "{stdout:?}");
    (device, times[0], times[1])
}

#[tokio::test]
async fn leases_are_exclusive_under_many_tasks_and_across_a_master_kill() {
    const TASKS: usize = 10;
    let (mut swarm, mut procs, client) = swarm_with_gpus(&[("g1", 8, "2")]).await;
    let pulse = status(&swarm, &client).await;
    let devices: Vec<String> = pulse.live[0].gpus.iter().map(|d| d.uuid.clone()).collect();
    assert_eq!(devices.len(), 2);
    assert!(pulse.live[0].gpus.iter().all(|d| d.simulated));
    let script = "echo \"$CUDA_VISIBLE_DEVICES $(date +%s%N)\"; sleep 0.4; \
                  echo \"$CUDA_VISIBLE_DEVICES $(date +%s%N)\"";
    let mut subs = Vec::new();
    for _ in 0..TASKS {
        subs.push(submit(&swarm, &client, needs_gpus(sh(script), GpuNeeds::count(1))).await);
    }
    // Eight slots, two devices: the rest wait in the queue, for GPUs, visibly.
    let busy = wait_for("GPU waits in status", WAIT, || async {
        let p = status(&swarm, &client).await;
        (p.waiting_for_gpus > 0 && p.live[0].leases.len() == 2).then_some(p)
    })
    .await
    .unwrap();
    assert!(busy.live[0].leases.iter().all(|(d, _)| devices.contains(d)));
    procs[0].signal(libc::SIGKILL);
    procs[0].wait_exit(WAIT).await.unwrap();
    let _master2 = swarm.master(&[]).unwrap();
    let collected = futures::future::join_all(
        subs.into_iter()
            .map(|s| collect(s, WAIT * 2, Duration::from_secs(1))),
    )
    .await;
    let mut by_device: HashMap<String, Vec<(u128, u128)>> = HashMap::new();
    for (n, c) in collected.into_iter().enumerate() {
        let c = c.unwrap_or_else(|e| panic!("task {n}: {e:#}"));
        assert_eq!(c.finished_count(), 1, "task {n}: {:?}", c.events);
        assert_eq!(
            c.outcome(),
            TaskOutcome::Exited { exit_code: 0 },
            "task {n}"
        );
        let (device, start, end) = interval(&c.stdout);
        assert!(devices.contains(&device), "task {n} saw {device:?}");
        by_device.entry(device).or_default().push((start, end));
    }
    for (device, mut spans) in by_device {
        spans.sort();
        for w in spans.windows(2) {
            assert!(
                w[0].1 <= w[1].0,
                "{device} was used by two tasks at once: {spans:?}"
            );
        }
    }
    let after = status(&swarm, &client).await;
    assert!(
        after.live[0].leases.is_empty(),
        "{:?}",
        after.live[0].leases
    );
}

#[tokio::test]
async fn a_lease_ends_with_its_worker_and_the_device_is_granted_again() {
    let (mut swarm, mut procs, client) = swarm_with_gpus(&[("g1", 2, FIXED_DEVICE)]).await;
    let mut holder = needs_gpus(sh("echo holding; sleep 120"), GpuNeeds::count(1));
    holder.retryable = Some(false);
    let mut holder = submit(&swarm, &client, holder).await;
    // Running on the worker (not only assigned) before it dies.
    tokio::time::timeout(WAIT, async {
        while let Some(msg) = holder.next().await {
            let enc = vgas_shared::Encoding::detect(&msg.payload);
            let ev: TaskEvent = vgas_shared::codec::decode_as(enc, &msg.payload).unwrap();
            if matches!(ev, TaskEvent::Stdout { .. }) {
                return;
            }
        }
    })
    .await
    .unwrap();
    let next = submit(
        &swarm,
        &client,
        needs_gpus(sh("echo $CUDA_VISIBLE_DEVICES"), GpuNeeds::count(1)),
    )
    .await;
    wait_for("the second task waiting for the device", WAIT, || async {
        (status(&swarm, &client).await.waiting_for_gpus == 1).then_some(())
    })
    .await
    .unwrap();
    procs[1].signal(libc::SIGKILL);
    procs[1].wait_exit(WAIT).await.unwrap();
    let lost = collect(holder, WAIT, Duration::ZERO).await.unwrap();
    assert!(
        matches!(lost.outcome(), TaskOutcome::Abandoned { .. }),
        "{:?}",
        lost.outcome()
    );
    // The same worker comes back with the same device: the lease of the lost attempt is gone.
    let _g1 = swarm
        .worker_with_env("g1", 2, &[("VGAS_SIMULATED_GPUS", FIXED_DEVICE)])
        .unwrap();
    let ran = collect(next, WAIT * 2, Duration::ZERO).await.unwrap();
    assert_eq!(ran.outcome(), TaskOutcome::Exited { exit_code: 0 });
    assert_eq!(ran.stdout, "GPU-fixed-0\n");
}

#[tokio::test]
async fn a_cancelled_task_gives_its_device_back() {
    let (swarm, _procs, client) = swarm_with_gpus(&[("g1", 2, FIXED_DEVICE)]).await;
    let holder = needs_gpus(sh("echo holding; sleep 120"), GpuNeeds::count(1));
    let holder = submit(&swarm, &client, holder).await;
    let id = wait_for("the lease", WAIT, || async {
        let p = status(&swarm, &client).await;
        match p.live[0].leases.as_slice() {
            [(device, task)] if device == "GPU-fixed-0" => Some(task.clone()),
            _ => None,
        }
    })
    .await
    .unwrap();
    let out = swarm.cli(&["cancel", id.as_str()]).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let c = collect(holder, WAIT, Duration::ZERO).await.unwrap();
    assert_eq!(c.outcome(), TaskOutcome::Cancelled);
    let next = submit(
        &swarm,
        &client,
        needs_gpus(sh("echo $CUDA_VISIBLE_DEVICES"), GpuNeeds::count(1)),
    )
    .await;
    let ran = collect(next, WAIT, Duration::ZERO).await.unwrap();
    assert_eq!(ran.stdout, "GPU-fixed-0\n");
}

#[tokio::test]
async fn what_no_worker_could_ever_give_is_refused_at_once_with_what_the_swarm_has() {
    let (swarm, _procs, client) = swarm_with_gpus(&[("g1", 2, "2"), ("plain", 2, "0")]).await;
    // Past the master's first heartbeat window, when it knows its workers.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let refused = |json: &'static str| {
        let (client, subject) = (client.clone(), swarm.subjects.submit());
        async move {
            let reply = client.request(subject, json.into()).await.unwrap();
            let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            v["error"].clone()
        }
    };
    let e = refused(r#"{"cmd":["true"],"needs":{"gpus":3}}"#).await;
    assert_eq!(e["code"], "unsatisfiable", "{e}");
    let message = e["message"].as_str().unwrap();
    assert!(
        message.contains("3 GPUs") && message.contains("g1") && message.contains("simulated"),
        "{message}"
    );
    let e = refused(r#"{"cmd":["true"],"needs":{"gpus":{"min_compute":"10.0"}}}"#).await;
    assert_eq!(e["code"], "unsatisfiable", "{e}");
    let e = refused(r#"{"cmd":["true"],"needs":{"gpus":{"min_free_mb":900000}}}"#).await;
    assert_eq!(e["code"], "unsatisfiable", "{e}");
    let e = refused(r#"{"cmd":["true"],"needs":{"gpus":{"device":"GPU-nowhere"}}}"#).await;
    assert_eq!(e["code"], "unsatisfiable", "{e}");
    for (json, words) in [
        (r#"{"cmd":["true"],"needs":{"gpus":0}}"#, "1 to 16"),
        (
            r#"{"cmd":["true"],"needs":{"gpus":{"count":1,"vram":2}}}"#,
            "unknown field",
        ),
        (
            r#"{"kind":"wasm","module":"sha256:0000000000000000000000000000000000000000000000000000000000000000","needs":{"gpus":1}}"#,
            "only exec and cuda",
        ),
        (
            r#"{"kind":"cuda","cuda":{"source":"x","entry":"k","args":[{"in":"a.bin"}]}}"#,
            "names no input file",
        ),
    ] {
        let reply = client
            .request(swarm.subjects.submit(), json.into())
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert_eq!(v["error"]["code"], "bad_request", "{json}: {v}");
        assert!(
            v["error"]["message"].as_str().unwrap().contains(words),
            "{json}: {v}"
        );
    }
    // A kernel launch needs a GPU the swarm has: two simulated ones fit it (and would fail to
    // run it, being simulated), a fourth device does not exist.
    let e = refused(r#"{"kind":"cuda","cuda":{"source":"extern \"C\" __global__ void k(){}","entry":"k"},"needs":{"gpus":4}}"#).await;
    assert_eq!(e["code"], "unsatisfiable", "{e}");
    // Nothing was queued by any of it.
    let pulse = status(&swarm, &client).await;
    assert_eq!(pulse.tasks_accepted, 0);
    // The plain worker reports no GPUs, and status says so.
    let plain = pulse
        .live
        .iter()
        .find(|n| n.id.as_str() == "plain")
        .unwrap();
    assert!(plain.gpus.is_empty() && plain.cuda_driver.is_none());
}

/// A vector add, as a user writes it: `extern "C"` so the entry keeps its name.
const ADD: &str = r#"extern "C" __global__ void add(const float *a, const float *b, float *c, unsigned n) {
    unsigned i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) c[i] = a[i] + b[i];
}
"#;

/// The PTX artifact of a finished compile-only task.
fn ptx_of(c: &vgas_tests::Collected) -> String {
    let b64 = c
        .events
        .iter()
        .find_map(|e| match e {
            TaskEvent::Artifact { path, base64, .. } if path == "kernel.ptx" => {
                Some(base64.clone())
            }
            _ => None,
        })
        .unwrap_or_else(|| panic!("no kernel.ptx in {:?}", c.events));
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap();
    String::from_utf8(bytes).unwrap()
}

#[tokio::test]
async fn nvrtc_compiles_cuda_to_ptx_without_a_gpu_and_the_swarm_caches_it() {
    if std::env::var_os("VGAS_NVRTC_LIB").is_none() {
        eprintln!("VGAS_NVRTC_LIB is not set (scripts/ensure-tools.sh installs NVRTC): skipped");
        return;
    }
    // A worker with no GPU (none here, and none declared) compiles.
    let (swarm, procs, client) = swarm_with_gpus(&[("c1", 2, "")]).await;
    let pulse = status(&swarm, &client).await;
    assert!(pulse.live[0].capabilities.contains(&"nvrtc".to_owned()));
    assert!(pulse.live[0].gpus.is_empty());
    // The JSON of docs/protocol.md, sent as a plain client would.
    let spec = serde_json::json!({
        "kind": "cuda",
        "cuda": {"source": ADD, "entry": "add", "arch": "sm_90", "compile_only": true}
    });
    let run = |spec: serde_json::Value| {
        let (client, swarm) = (client.clone(), &swarm);
        async move {
            let id = TaskId::random();
            let mut spec = spec;
            spec["task_id"] = id.to_string().into();
            let sub = client
                .subscribe(swarm.subjects.task_events(&id))
                .await
                .unwrap();
            let reply = client
                .request(
                    swarm.subjects.submit(),
                    serde_json::to_vec(&spec).unwrap().into(),
                )
                .await
                .unwrap();
            let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
            assert_eq!(v["task_id"], id.to_string(), "{v}");
            collect(sub, WAIT * 2, Duration::ZERO).await.unwrap()
        }
    };
    let first = run(spec.clone()).await;
    assert_eq!(
        first.outcome(),
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        first.stderr
    );
    let ptx = ptx_of(&first);
    assert!(ptx.contains(".version "), "{ptx}");
    assert!(ptx.contains(".target sm_90"), "{ptx}");
    assert!(ptx.contains(".visible .entry add("), "{ptx}");
    // Again: from the swarm's PTX cache, byte for byte.
    let second = run(spec.clone()).await;
    assert_eq!(ptx_of(&second), ptx);
    assert!(procs[1].log_text().contains("PTX from the swarm's cache"));
    // The cached PTX, asked for a kernel it does not define: said so, as after a compile.
    let mut other = spec.clone();
    other["cuda"]["entry"] = "sub".into();
    let c = run(other).await;
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 2 });
    assert!(c.stderr.contains("\"sub\""), "{}", c.stderr);
    // A compile error is the compiler's: exit 1 and NVRTC's log.
    let broken = serde_json::json!({
        "kind": "cuda",
        "cuda": {"source": "extern \"C\" __global__ void add() { undeclared = 1; }", "entry": "add", "compile_only": true}
    });
    let c = run(broken).await;
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 1 });
    assert!(c.stderr.contains("undeclared"), "{}", c.stderr);
    // An entry the source does not define (a mangled C++ name) is said so.
    let mangled = serde_json::json!({
        "kind": "cuda",
        "cuda": {"source": "__global__ void add() {}", "entry": "add", "compile_only": true}
    });
    let c = run(mangled).await;
    assert_eq!(c.outcome(), TaskOutcome::Exited { exit_code: 2 });
    assert!(c.stderr.contains("extern \"C\""), "{}", c.stderr);
    // The CLI: `vgas submit --cuda` saves the PTX like any artifact.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("add.cu"), ADD).unwrap();
    let out = swarm
        .cli_in(
            dir.path(),
            &[
                "submit",
                "--cuda",
                "add.cu",
                "--entry",
                "add",
                "--compile-only",
                "--arch",
                "compute_90",
            ],
            &[],
        )
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let saved = std::fs::read_to_string(dir.path().join("vgas-artifacts/kernel.ptx")).unwrap();
    assert!(saved.contains(".visible .entry add("));
}
