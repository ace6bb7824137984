//! Tests of the environment manager against the compilers of this machine (skipped where one
//! is missing) and of conda set-up against a stand-in tool, so no test depends on conda.

use std::os::unix::fs::PermissionsExt as _;

use super::*;

const WORKER: &str = "w-envtest";

/// A manager over the real `PATH`, with a work directory of its own.
fn manager() -> (tempfile::TempDir, EnvironmentManager) {
    let work = tempfile::tempdir().expect("temp dir");
    let mgr = EnvironmentManager::probe(WORKER, work.path());
    (work, mgr)
}

fn spec(toolchain: &str) -> EnvSpec {
    EnvSpec {
        toolchain: toolchain.into(),
        ..EnvSpec::default()
    }
}

/// The probed gcc, or `None` (the caller prints SKIPPED).
fn gcc(mgr: &EnvironmentManager) -> Option<LocalCompiler> {
    mgr.compilers()
        .iter()
        .find(|c| c.invoked_as == "gcc")
        .cloned()
}

#[test]
fn a_gcc_spec_is_found_and_its_directory_reused() {
    let (work, mgr) = manager();
    let Some(gcc) = gcc(&mgr) else {
        eprintln!("SKIPPED: no gcc on PATH");
        return;
    };
    let mut s = spec("gcc");
    s.version = Some(format!(">={}", gcc.identity.version));
    let a = mgr
        .setup_sandboxed_environment(&s)
        .expect("gcc environment");
    assert_eq!(a.root, work.path().join("envs").join(s.key()));
    assert_eq!(a.bin, a.root.join("bin"));
    assert_eq!(a.identity.as_ref(), Some(&gcc.identity));
    assert_eq!(std::fs::read_link(a.bin.join("gcc")).unwrap(), gcc.path);
    assert!(a.root.join(SPEC_FILE).is_file());
    // Reused, not remade: a file put there survives the second set-up.
    std::fs::write(a.root.join("marker"), "x").unwrap();
    let b = mgr.setup_sandboxed_environment(&s).expect("again");
    assert_eq!(a, b);
    assert!(a.root.join("marker").is_file(), "the directory was remade");
    assert_eq!(std::fs::read_link(b.bin.join("gcc")).unwrap(), gcc.path);
    // A broken one is remade.
    std::fs::remove_file(a.bin.join("gcc")).unwrap();
    let c = mgr.setup_sandboxed_environment(&s).expect("repaired");
    assert_eq!(c, a);
    assert_eq!(std::fs::read_link(c.bin.join("gcc")).unwrap(), gcc.path);
    assert!(!a.root.join("marker").exists());
    // The exact identity selects it too, and the identity tag is offered.
    s.identity = Some(gcc.identity.hash.clone());
    assert_eq!(
        mgr.setup_sandboxed_environment(&s).unwrap().identity,
        Some(gcc.identity.clone())
    );
    assert_eq!(
        mgr.compiler_by_identity(&gcc.identity.hash)
            .map(|c| &c.path),
        Some(&gcc.path)
    );
    assert!(mgr.capability_tags().contains(&gcc.identity.tag()));
    assert!(mgr.verify(&gcc).is_ok());
}

#[test]
fn a_version_that_cannot_match_names_what_was_found() {
    let (_work, mgr) = manager();
    let Some(gcc) = gcc(&mgr) else {
        eprintln!("SKIPPED: no gcc on PATH");
        return;
    };
    let mut s = spec("gcc");
    s.version = Some(">=999".into());
    let err = mgr.setup_sandboxed_environment(&s).unwrap_err().to_string();
    let want = format!(
        "no gcc matching \">=999\" on worker {WORKER} (found gcc {} at {}",
        gcc.identity.version,
        gcc.path.display()
    );
    assert!(err.starts_with(&want), "{err}\nwanted: {want}");
}

#[test]
fn an_identity_that_does_not_exist_is_an_error() {
    let (_work, mgr) = manager();
    let mut s = spec("gcc");
    let nobody = format!("sha256:{}", "0".repeat(64));
    s.identity = Some(nobody.clone());
    let err = mgr.setup_sandboxed_environment(&s).unwrap_err().to_string();
    assert!(
        err.starts_with(&format!(
            "no gcc with identity {nobody} on worker {WORKER} ("
        )),
        "{err}"
    );
    assert!(mgr.compiler_by_identity(&nobody).is_none());
    // A toolchain name that is not one is refused before anything is looked up.
    assert!(matches!(
        mgr.setup_sandboxed_environment(&spec("tcc")),
        Err(EnvError::InvalidSpec(_))
    ));
}

#[test]
fn nothing_on_an_empty_path() {
    let work = tempfile::tempdir().unwrap();
    let mgr = EnvironmentManager::with_search_path(WORKER, work.path(), OsStr::new(""));
    assert!(mgr.compilers().is_empty());
    let err = mgr.setup_sandboxed_environment(&spec("gcc")).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("no gcc on worker {WORKER} (none found in an empty PATH)")
    );
    let mut conda = spec("conda");
    conda.packages = vec!["python=3.11".into()];
    let err = mgr.setup_sandboxed_environment(&conda).unwrap_err();
    assert!(matches!(err, EnvError::NoCondaTool { .. }), "{err:?}");
    let msg = err.to_string();
    assert!(
        msg.contains("needs micromamba or conda") && msg.contains(WORKER),
        "{msg}"
    );
}

#[test]
fn a_rustc_spec_works_when_rustc_is_on_path() {
    let (_work, mgr) = manager();
    let Some(rustc) = mgr.compilers().iter().find(|c| c.invoked_as == "rustc") else {
        eprintln!("SKIPPED: no rustc on PATH");
        return;
    };
    assert_eq!(rustc.identity.name, "rustc");
    let mut s = spec("rustc");
    s.version = Some(">=1".into());
    let env = mgr
        .setup_sandboxed_environment(&s)
        .expect("rustc environment");
    assert_eq!(env.identity.as_ref(), Some(&rustc.identity));
    let out = std::process::Command::new(env.bin.join("rustc"))
        .arg("--version")
        .output()
        .expect("rustc runs through the environment's link");
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("rustc "));
}

#[test]
fn heartbeat_toolchains_get_identities() {
    let (_work, mgr) = manager();
    let mut toolchains = vec![Toolchain {
        name: "make".into(),
        ..Toolchain::default()
    }];
    let mut caps = vec!["gpu".to_owned()];
    mgr.offer(&mut toolchains, &mut caps);
    assert!(toolchains[0].identity.is_none(), "make is no compiler");
    assert!(
        caps.starts_with(&["gpu".to_owned(), "make".to_owned()]),
        "{caps:?}"
    );
    for c in mgr.compilers() {
        let t = toolchains.iter().find(|t| t.name == c.invoked_as).unwrap();
        assert_eq!(t.identity.as_ref(), Some(&c.identity));
        assert!(caps.contains(&c.invoked_as) && caps.contains(&c.identity.tag()));
    }
    let n = caps.len();
    mgr.offer(&mut toolchains, &mut caps);
    assert_eq!(caps.len(), n, "nothing twice");
}

/// A stand-in for micromamba: `create -y -p PREFIX ...` makes `PREFIX/conda-meta` and logs
/// its arguments, unless a package is called `missing`, which fails like a solver would.
const FAKE_MICROMAMBA: &str = r#"#!/bin/sh
echo "$@" >> "$(dirname "$0")/calls"
case " $* " in *" missing "*) echo "error: nothing provides missing" >&2; exit 1;; esac
mkdir -p "$4/conda-meta" "$4/bin"
"#;

#[test]
fn conda_environments_are_made_once_and_failures_leave_nothing() {
    let work = tempfile::tempdir().unwrap();
    let tools = tempfile::tempdir().unwrap();
    let tool = tools.path().join("micromamba");
    std::fs::write(&tool, FAKE_MICROMAMBA).unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mgr = EnvironmentManager::with_search_path(WORKER, work.path(), tools.path().as_os_str());
    let mut s = spec("conda");
    s.packages = vec!["python=3.11".into(), "numpy".into()];
    let a = mgr.setup_sandboxed_environment(&s).expect("made");
    assert_eq!(a.bin, a.root.join("conda/bin"));
    assert!(a.identity.is_none());
    let b = mgr.setup_sandboxed_environment(&s).expect("reused");
    assert_eq!(a, b);
    let calls = std::fs::read_to_string(tools.path().join("calls")).unwrap();
    assert_eq!(calls.lines().count(), 1, "created once: {calls}");
    assert!(
        calls.contains("create -y -p") && calls.contains("-c conda-forge python=3.11 numpy"),
        "{calls}"
    );

    s.packages = vec!["missing".into()];
    let err = mgr.setup_sandboxed_environment(&s).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, EnvError::CondaFailed { .. }), "{msg}");
    assert!(
        msg.contains("nothing provides missing") && msg.contains(WORKER),
        "{msg}"
    );
    assert!(
        !work.path().join("envs").join(s.key()).exists(),
        "a failed create leaves no directory"
    );
}
