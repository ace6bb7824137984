//! Tests that the sandbox contains what it must: deadlines, memory, fork bombs, output, CPU and
//! file size limits, writes outside the task directory and the network (escaped processes:
//! `tests_escape`).
//! Checks that need an isolation the host lacks say so and are skipped, so the same tests pass
//! as root (everything exercised) and as an ordinary user.

use std::time::Duration;

use vgas_shared::wire::{TaskLimits, TaskOutcome};

use super::tests::{
    assert_nothing_left, exec_job, harness, isolation, run, sandbox_uid, sh, spec, unique,
    unique_sleep, TEST_UID_BASE,
};
use super::{Limits, MIB};

fn failed(outcome: &TaskOutcome) -> bool {
    matches!(outcome, TaskOutcome::Exited { exit_code } if *exit_code != 0)
        || matches!(outcome, TaskOutcome::Signaled { .. })
}

#[test]
fn task_limits_can_only_lower_the_ceilings() {
    let ceilings = Limits {
        memory_bytes: 1024 * MIB,
        cpu_seconds: 60,
        max_processes: 100,
        output_cap: 16 * MIB,
        file_size_bytes: 512 * MIB,
    };
    let asked = |memory_mb, cpu_seconds, max_processes| TaskLimits {
        memory_mb,
        cpu_seconds,
        max_processes,
        output_cap_mb: Some(u64::MAX),
        file_size_mb: Some(1),
    };
    let cases = [
        (asked(None, None, None), (1024 * MIB, 60, 100)),
        (asked(Some(256), Some(5), Some(32)), (256 * MIB, 5, 32)),
        (
            asked(Some(1 << 40), Some(999), Some(1 << 20)),
            (1024 * MIB, 60, 100),
        ),
    ];
    for (req, (memory, cpu, procs)) in cases {
        let got = ceilings.for_task(&req);
        assert_eq!(
            (got.memory_bytes, got.cpu_seconds, got.max_processes),
            (memory, cpu, procs),
            "{req:?}"
        );
        assert_eq!(
            got.output_cap,
            16 * MIB,
            "a huge request is capped, not overflowed"
        );
        assert_eq!(got.file_size_bytes, MIB);
    }
    assert_eq!(
        Limits::default().memory_bytes,
        vgas_shared::limits::DEFAULT_MEMORY_BYTES
    );
}

#[tokio::test]
async fn an_endless_loop_is_killed_at_the_deadline() {
    let h = harness();
    let marker = unique("vgas-loop");
    let mut s = spec(&["sh", "-c", "while :; do :; done", &marker]);
    s.deadline_s = Some(1);
    let ran = run(&h, 10, s).await;
    assert_eq!(ran.outcome, TaskOutcome::TimedOut { deadline_s: 1 });
    assert!(ran.elapsed < Duration::from_secs(3), "{:?}", ran.elapsed);
    assert_nothing_left(10, &marker);
}

#[tokio::test]
async fn a_memory_hog_fails_under_the_memory_limit() {
    let h = harness();
    let mut cases = vec![sh("head -c 3G /dev/zero | tail")];
    if std::path::Path::new("/usr/bin/python3").exists() {
        cases.push(spec(&["/usr/bin/python3", "-c", "x = bytearray(4 << 30)"]));
    }
    for mut s in cases {
        s.limits = TaskLimits {
            memory_mb: Some(256),
            ..TaskLimits::default()
        };
        let cmd = s.cmd.join(" ");
        let ran = run(&h, 11, s).await;
        assert!(
            failed(&ran.outcome),
            "{cmd}: {:?} {}",
            ran.outcome,
            ran.stderr
        );
        println!("{cmd}: {:?}: {}", ran.outcome, ran.stderr.trim());
    }
}

#[tokio::test]
async fn a_process_spawning_loop_hits_the_process_limit() {
    let h = harness();
    let marker = unique_sleep();
    let mut s = sh(&format!(
        "i=0; while [ $i -lt 1000 ]; do sleep {marker} & i=$((i+1)); done; wait"
    ));
    s.limits.max_processes = Some(32);
    s.deadline_s = Some(5);
    let ran = run(&h, 12, s).await;
    println!("spawning loop: {:?}: {}", ran.outcome, ran.stderr.trim());
    assert!(!ran.outcome.succeeded(), "{:?}", ran.outcome);
    if isolation().uid_switch {
        assert!(
            failed(&ran.outcome),
            "contained before the deadline: {:?}",
            ran.outcome
        );
        assert!(
            ran.stderr.to_lowercase().contains("fork"),
            "the shell could not fork: {}",
            ran.stderr
        );
    }
    assert_nothing_left(12, &marker);
}

#[tokio::test]
async fn a_fork_bomb_is_contained_and_cleaned_up() {
    let h = harness();
    let marker = unique("vgas-bomb");
    // The bomb runs in the background; the main shell outlives the deadline.
    let mut s = spec(&["bash", "-c", ":(){ :|:& };: ; sleep 30; exit 0", &marker]);
    s.limits.max_processes = Some(32);
    s.deadline_s = Some(5);
    let ran = run(&h, 13, s).await;
    println!("fork bomb: {:?} after {:?}", ran.outcome, ran.elapsed);
    assert!(!ran.outcome.succeeded(), "{:?}", ran.outcome);
    assert!(ran.elapsed < Duration::from_secs(15), "{:?}", ran.elapsed);
    assert_nothing_left(13, &marker);
}

#[tokio::test]
async fn writes_outside_the_task_directory_fail() {
    let h = harness();
    let ran = run(&h, 14, sh("echo inside > f && cat f")).await;
    assert_eq!(
        ran.outcome,
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        ran.stderr
    );
    assert_eq!(ran.stdout, "inside\n");
    if !isolation().mount_ns {
        println!(
            "skipped: no mount namespace here ({}), writes outside are not blocked",
            isolation().describe()
        );
        return;
    }
    let name = unique("vgas-escape-test");
    let targets = [
        std::path::Path::new("/tmp").join(&name),
        std::path::Path::new("/var/tmp").join(&name),
        std::path::Path::new("/dev/shm").join(&name),
        h.work.path().join(&name),
    ];
    for target in targets {
        let ran = run(&h, 14, sh(&format!("echo x > {}", target.display()))).await;
        assert!(
            !ran.outcome.succeeded(),
            "{}: {:?}",
            target.display(),
            ran.outcome
        );
        assert!(!target.exists(), "{} was written", target.display());
        assert!(
            ran.stderr.contains("Read-only file system"),
            "{}: {}",
            target.display(),
            ran.stderr
        );
    }
}

#[tokio::test]
async fn output_past_the_cap_kills_the_task() {
    let h = harness();
    let cases = [
        ("yes | head -c 10M", false),
        ("head -c 1048576 /dev/zero | tr '\\0' a", true),
    ];
    for (script, fits) in cases {
        let mut s = sh(script);
        s.limits.output_cap_mb = Some(1);
        let ran = run(&h, 15, s).await;
        assert!(
            ran.stdout.len() <= 1 << 20,
            "{script}: {} bytes passed on",
            ran.stdout.len()
        );
        if fits {
            assert_eq!(
                ran.outcome,
                TaskOutcome::Exited { exit_code: 0 },
                "{script}"
            );
            assert_eq!(ran.stdout.len(), 1 << 20);
        } else {
            assert!(
                matches!(&ran.outcome, TaskOutcome::LimitExceeded { limit, .. } if limit == "output"),
                "{script}: {:?}",
                ran.outcome
            );
        }
    }
}

#[tokio::test]
async fn signals_are_explained() {
    let h = harness();
    let cpu = TaskLimits {
        cpu_seconds: Some(1),
        ..TaskLimits::default()
    };
    let fsize = TaskLimits {
        file_size_mb: Some(1),
        ..TaskLimits::default()
    };
    let cases = [
        (
            "kill -SEGV $$",
            TaskLimits::default(),
            libc::SIGSEGV,
            "segmentation fault",
        ),
        (
            "while :; do :; done",
            cpu,
            libc::SIGXCPU,
            "CPU time limit of 1 s exceeded",
        ),
        (
            "exec head -c 2M /dev/zero > big",
            fsize,
            libc::SIGXFSZ,
            "file size limit of 1 MiB exceeded",
        ),
    ];
    for (script, limits, want_signal, want_words) in cases {
        let mut s = sh(script);
        s.limits = limits;
        let ran = run(&h, 16, s).await;
        match &ran.outcome {
            TaskOutcome::Signaled { signal, message } => {
                assert_eq!(*signal, want_signal, "{script}");
                assert!(message.contains(want_words), "{script}: {message}");
            }
            other => panic!("{script}: {other:?} {}", ran.stderr),
        }
    }
}

#[tokio::test]
async fn the_task_has_no_network() {
    let h = harness();
    if !isolation().net_ns {
        println!(
            "skipped: no network namespace here ({})",
            isolation().describe()
        );
        return;
    }
    let ran = run(&h, 17, sh("cat /proc/net/dev")).await;
    assert_eq!(
        ran.outcome,
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        ran.stderr
    );
    let interfaces: Vec<&str> = ran
        .stdout
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(name, _)| name.trim())
        .collect();
    assert_eq!(interfaces, ["lo"], "{}", ran.stdout);
}

/// A slot's tasks share the network namespace kept for it (`netns`): never the worker's, only
/// `lo` for each of them, and nothing a previous task bound is left in it.
#[tokio::test]
async fn a_slots_kept_network_namespace_is_found_as_new_by_each_task() {
    let h = harness();
    if !isolation().net_ns || !isolation().uid_switch {
        println!(
            "skipped: a network namespace is kept only with a uid switch ({})",
            isolation().describe()
        );
        return;
    }
    // The first task leaves a process listening on a unix socket in the abstract namespace
    // (which belongs to the network namespace) behind, escaped from its group.
    let script = "readlink /proc/self/ns/net; tail -n +3 /proc/net/dev | cut -d: -f1 | tr -d ' '; \
                  grep -c vgas-left /proc/net/unix || true; \
                  setsid /usr/bin/python3 -c 'import socket,time; s=socket.socket(socket.AF_UNIX); s.bind(\"\\0vgas-left\"); s.listen(); time.sleep(60)' \
                  </dev/null >/dev/null 2>&1 & sleep 0.5; grep -c vgas-left /proc/net/unix || true";
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let ran = run(&h, 18, sh(script)).await;
        assert_eq!(
            ran.outcome,
            TaskOutcome::Exited { exit_code: 0 },
            "{}",
            ran.stderr
        );
        outputs.push(ran.stdout);
    }
    let lines = |out: &str| out.lines().map(str::to_owned).collect::<Vec<_>>();
    let (a, b) = (lines(&outputs[0]), lines(&outputs[1]));
    let own = std::fs::read_link("/proc/self/ns/net").unwrap();
    assert_eq!(a.len(), 4, "{}", outputs[0]);
    assert_ne!(a[0], own.to_string_lossy(), "not the worker's namespace");
    assert_eq!(
        b.first(),
        a.first(),
        "the slot's tasks share its kept namespace"
    );
    assert_eq!(
        a[1..],
        ["lo", "0", "1"],
        "the first task: only lo, no listener, then its own"
    );
    assert_eq!(
        b[1..],
        a[1..],
        "the second finds none of the first's: {}",
        outputs[1]
    );
}

#[tokio::test]
async fn the_task_runs_as_its_slot_uid() {
    let h = harness();
    let ran = run(&h, 19, sh("id -u; id -G; stat -c %u .")).await;
    assert_eq!(
        ran.outcome,
        TaskOutcome::Exited { exit_code: 0 },
        "{}",
        ran.stderr
    );
    match sandbox_uid(19) {
        Some(uid) => {
            assert_eq!(uid, TEST_UID_BASE + 19);
            assert_eq!(ran.stdout, format!("{uid}\n{uid}\n{uid}\n"));
        }
        None => println!(
            "no uid switch here ({}): ran as {}",
            isolation().describe(),
            ran.stdout.trim()
        ),
    }
}

#[tokio::test]
async fn a_sandbox_setup_failure_is_an_error_with_the_reason() {
    // SAFETY: geteuid cannot fail.
    if unsafe { libc::geteuid() } == 0 {
        println!("skipped: as root every namespace can be created; the reasons are unit-tested in child.rs");
        return;
    }
    let h = harness();
    let asks_too_much = super::Isolation {
        mount_ns: true,
        net_ns: false,
        uid_switch: false,
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(vgas_shared::limits::EVENT_CHANNEL_CAPACITY);
    let task = sh("true").parse().unwrap();
    let outcome = super::run_exec(
        &h.cfg,
        &asks_too_much,
        8,
        super::tests::exec_job(&task),
        None,
        tx,
        tokio_util::sync::CancellationToken::new(),
    )
    .await;
    match outcome {
        TaskOutcome::Error { message } => assert!(
            message.contains("could not create a mount namespace"),
            "{message}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_gpu_task_sees_only_its_devices_and_has_no_address_space_limit() {
    use std::os::unix::fs::PermissionsExt as _;
    if !isolation().mount_ns {
        println!("skipped: no mount namespace here, so nothing can be hidden");
        return;
    }
    let h = harness();
    // Stand-ins for two /dev/nvidiaN nodes, outside the task directory: one leased, one not.
    let devs = tempfile::tempdir().unwrap();
    std::fs::set_permissions(devs.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let (leased, other) = (devs.path().join("nvidia0"), devs.path().join("nvidia1"));
    for (p, text) in [(&leased, "device 0"), (&other, "device 1")] {
        std::fs::write(p, text).unwrap();
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let access = super::DeviceAccess {
        hidden: vec![other.clone()],
    };
    let script = format!(
        "cat {}; echo; cat {}; echo; ulimit -v",
        leased.display(),
        other.display()
    );
    let task = sh(&script).parse().unwrap();
    let (tx, mut rx) = tokio::sync::mpsc::channel(vgas_shared::limits::EVENT_CHANNEL_CAPACITY);
    let collect = async move {
        let mut stdout = String::new();
        while let Some(chunk) = rx.recv().await {
            if let super::OutputChunk::Stdout(s) = chunk {
                stdout.push_str(&s);
            }
        }
        stdout
    };
    let run = super::run_exec(
        &h.cfg,
        isolation(),
        20,
        super::tests::exec_job(&task),
        Some(&access),
        tx,
        tokio_util::sync::CancellationToken::new(),
    );
    let (outcome, stdout) = tokio::join!(run, collect);
    assert_eq!(outcome, TaskOutcome::Exited { exit_code: 0 }, "{stdout}");
    assert_eq!(
        stdout, "device 0\n\nunlimited\n",
        "the other device reads as /dev/null"
    );
    // Hidden in the task's mount namespace only.
    assert_eq!(std::fs::read_to_string(&other).unwrap(), "device 1");
}

/// A slot's tasks share the mount namespace kept for it (`mntns`): not the worker's, each
/// task in a directory of its own inside the slot's, which is the one writable place, and
/// nothing can be made beside the task's directory.
#[tokio::test]
async fn a_slots_kept_mount_namespace_lets_each_task_write_only_its_own_directory() {
    let h = harness();
    if !isolation().mount_ns || !isolation().uid_switch {
        println!(
            "skipped: a mount namespace is kept only with a uid switch ({})",
            isolation().describe()
        );
        return;
    }
    let script = "readlink /proc/self/ns/mnt; pwd; echo mine > f && cat f; \
                  (echo x > ../beside) 2>&1 | grep -c 'Permission denied'";
    let mut outputs = Vec::new();
    for _ in 0..2 {
        let ran = run(&h, 19, sh(script)).await;
        assert_eq!(
            ran.outcome,
            TaskOutcome::Exited { exit_code: 0 },
            "{}",
            ran.stderr
        );
        outputs.push(ran.stdout.lines().map(str::to_owned).collect::<Vec<_>>());
    }
    let (a, b) = (&outputs[0], &outputs[1]);
    assert_eq!(a.len(), 4, "{a:?}");
    let own = std::fs::read_link("/proc/self/ns/mnt").unwrap();
    assert_ne!(a[0], own.to_string_lossy(), "not the worker's namespace");
    assert_eq!(a[0], b[0], "the slot's tasks share its kept namespace");
    let slot_dir = std::fs::canonicalize(h.work.path())
        .unwrap()
        .join(format!("slot-{}", sandbox_uid(19).unwrap()));
    for out in [a, b] {
        let cwd = std::path::Path::new(&out[1]);
        assert_eq!(cwd.parent(), Some(slot_dir.as_path()), "{out:?}");
        assert_eq!(out[2..], ["mine", "1"], "{out:?}");
    }
    assert_ne!(a[1], b[1], "a directory per task");
    assert_eq!(
        std::fs::read_dir(&slot_dir).unwrap().count(),
        0,
        "both tasks' directories removed"
    );
}

/// A directory the caller keeps (a compile's) leaves the slot's directory before the slot's
/// next task, so that task cannot change what the caller reads back.
#[tokio::test]
async fn a_kept_directory_is_moved_out_of_reach_of_the_slots_next_task() {
    use super::{run_native, NativeJob, RunOptions};
    let h = harness();
    let task = sh("echo object > out.o").parse().unwrap();
    let job = exec_job(&task);
    let argv = |_: &std::path::Path| job.task.argv.as_slice().to_vec();
    let native = NativeJob::of_exec(job, &argv);
    let opts = RunOptions {
        keep_dir: true,
        ..RunOptions::default()
    };
    let (tx, _rx) = tokio::sync::mpsc::channel(64);
    let cancel = tokio_util::sync::CancellationToken::new();
    let ran = run_native(&h.cfg, isolation(), 20, &native, opts, tx, cancel).await;
    assert_eq!(ran.outcome, TaskOutcome::Exited { exit_code: 0 });
    let kept = ran.dir.expect("kept");
    let root = std::fs::canonicalize(h.work.path()).unwrap();
    assert_eq!(kept.path().parent(), Some(root.as_path()), "{kept:?}");
    let (file, _) = kept.regular_file("out.o").unwrap().expect("the object");
    assert_eq!(std::fs::read_to_string(file).unwrap(), "object\n");
    if isolation().mount_ns && isolation().uid_switch {
        let slot_dir = root.join(format!("slot-{}", sandbox_uid(20).unwrap()));
        assert_eq!(kept.ran_at().parent(), Some(slot_dir.as_path()));
        assert_eq!(kept.ran_at().file_name(), kept.path().file_name());
        let next = run(
            &h,
            20,
            sh(&format!("echo x > {}/out.o", kept.path().display())),
        )
        .await;
        assert!(failed(&next.outcome), "{next:?}");
        assert_eq!(
            std::fs::read_to_string(kept.path().join("out.o")).unwrap(),
            "object\n"
        );
    }
    let path = kept.path().to_owned();
    drop(kept);
    assert!(!path.exists(), "removed when dropped");
}
