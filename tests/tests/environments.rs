//! Exec tasks in a prepared environment (`EnvSpec` through `vgas submit --toolchain` and
//! `--conda`): the worker's `EnvironmentManager` finds the toolchain or makes the conda
//! environment (once), puts its `bin` first on the task's `PATH`, and a spec the worker cannot
//! satisfy fails the task with a reason that names the worker and what it found.

use std::os::unix::fs::PermissionsExt as _;

use vgas_tests::{Placement, Swarm};

/// A stand-in for micromamba: records its calls; `create -y -p PREFIX ...` makes an
/// environment whose `bin` holds a `condatool` command.
const FAKE_MICROMAMBA: &str = r#"#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
mkdir -p "$4/conda-meta" "$4/bin"
printf '#!/bin/sh\necho "condatool from $CONDA_ENV_NAME$VGAS_ENV_ROOT"\n' > "$4/bin/condatool"
chmod 755 "$4/bin/condatool"
"#;

#[tokio::test]
async fn exec_tasks_run_in_toolchain_and_conda_environments() {
    let mut swarm = Swarm::start().await.unwrap();
    let _m = swarm.master(&[]).unwrap();
    let tools = swarm.dir.path().join("tools");
    std::fs::create_dir_all(&tools).unwrap();
    std::fs::set_permissions(&tools, std::fs::Permissions::from_mode(0o755)).unwrap();
    let fake = tools.join("micromamba");
    std::fs::write(&fake, FAKE_MICROMAMBA).unwrap();
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        tools.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let _w = swarm
        .spawn_at(
            Placement::Local,
            "w1",
            "vgas-worker",
            &["--id", "w1", "--slots", "1"],
            &[("PATH", &path)],
        )
        .unwrap();
    let client = swarm
        .connect(vgas_shared::config::Role::Client)
        .await
        .unwrap();
    swarm.wait_workers(&client, 1).await.unwrap();

    let has_gcc = std::process::Command::new("gcc")
        .arg("--version")
        .output()
        .is_ok();
    if has_gcc {
        let out = swarm
            .cli(&[
                "submit",
                "--toolchain",
                "gcc",
                "--",
                "sh",
                "-c",
                "echo \"$VGAS_ENV_ROOT\"; command -v gcc",
            ])
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{:?}", out);
        let mut lines = stdout.lines();
        let root = lines.next().unwrap();
        assert!(root.contains("/envs/"), "{stdout}");
        assert_eq!(lines.next().unwrap(), format!("{root}/bin/gcc"), "{stdout}");

        let out = swarm
            .cli(&[
                "submit",
                "--toolchain",
                "gcc@>=99",
                "--",
                "gcc",
                "--version",
            ])
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_ne!(out.status.code(), Some(0));
        assert!(
            stderr.contains("no gcc matching")
                && stderr.contains("w1")
                && stderr.contains("found gcc"),
            "{stderr}"
        );
    } else {
        eprintln!("SKIPPED the toolchain half: no gcc on PATH");
    }

    // Conda: made once, reused by the second task. Environments outlive workers (they sit in
    // the worker's work directory, shared by the tests), so this run's spec is its own.
    let marker = format!("marker-{}", vgas_shared::TaskId::random());
    for _ in 0..2 {
        let out = swarm
            .cli(&[
                "submit",
                "--conda",
                "python=3.11",
                "--conda",
                &marker,
                "--",
                "condatool",
            ])
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{out:?}");
        assert!(
            stdout.starts_with("condatool from ") && stdout.contains("/envs/"),
            "{stdout}"
        );
    }
    let calls = std::fs::read_to_string(tools.join("calls")).unwrap();
    assert_eq!(calls.lines().count(), 1, "created once: {calls}");
}
