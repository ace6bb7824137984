//! `TaskSpec::parse`, kind by kind: each parses into its variant with its own fields and the
//! wire defaults filled in; each refusal keeps its message; the checked parts (`Argv`,
//! `ModuleRef`, `TaskFile`) cannot be built from bad input.

use std::time::Duration;

use super::*;
use crate::codec::decode;
use crate::wire::check_module_ref;

/// A module reference of 64 hex digits.
fn module() -> String {
    format!("sha256:{}", "ab".repeat(32))
}

/// The compiler identity of the compile tasks here, and the capability tag it needs.
fn compiler() -> (String, String) {
    let id = format!("sha256:{}", "c0".repeat(32));
    let tag = compiler_tag(&id);
    (id, tag)
}

fn spec(json: &str) -> TaskSpec {
    let (s, _): (TaskSpec, _) = decode(json.as_bytes(), 1 << 20).expect("the JSON decodes");
    s
}

fn parse(json: &str) -> Task {
    spec(json).parse().unwrap_or_else(|e| panic!("{json}: {e}"))
}

#[test]
fn an_exec_task_parses_into_its_command_env_stdin_files_and_environment() {
    let t = parse(
        r#"{"task_id":"t1","cmd":["make","-j2"],"env":{"A":"1"},"stdin":"in",
            "files":[{"path":"d/a.txt","text":"hi"},{"path":"b.bin","base64":"AAE=","mode":493}],
            "environment":{"toolchain":"gcc","version":">=10"}}"#,
    );
    let Work::Exec(e) = &t.work else {
        panic!("{:?}", t.work)
    };
    assert_eq!(e.argv.program(), "make");
    assert_eq!(e.argv.args(), ["-j2"]);
    assert_eq!(e.argv.as_slice(), ["make", "-j2"]);
    assert_eq!(e.env.get("A").map(String::as_str), Some("1"));
    assert_eq!(e.stdin, "in");
    assert_eq!(e.files.len(), 2);
    assert_eq!(
        (e.files[0].path(), e.files[0].bytes(), e.files[0].mode()),
        ("d/a.txt", &b"hi"[..], None)
    );
    assert_eq!(
        (e.files[1].path(), e.files[1].bytes(), e.files[1].mode()),
        ("b.bin", &[0u8, 1][..], Some(0o755))
    );
    assert_eq!(
        e.environment.as_ref().map(|s| s.toolchain.as_str()),
        Some("gcc")
    );
    assert_eq!(t.work.kind(), TaskKind::Exec);
    assert_eq!(t.id.as_ref().map(|i| i.as_str()), Some("t1"));
    // The wire defaults, filled in.
    assert_eq!(t.bounds.deadline, limits::DEFAULT_DEADLINE);
    assert_eq!(t.bounds.limits, TaskLimits::default());
    assert!(t.retryable);
    assert_eq!(t.max_attempts, limits::DEFAULT_MAX_ATTEMPTS);
    assert_eq!(t.wait_for_worker, limits::NO_WORKER_WAIT);
}

#[test]
fn the_common_part_carries_what_the_spec_says() {
    let t = parse(
        r#"{"cmd":["ls"],"deadline_s":60,"limits":{"memory_mb":64},"needs":{"capabilities":["gpu"]},
            "max_attempts":5,"wait_for_worker_s":0}"#,
    );
    assert_eq!(t.bounds.deadline, Duration::from_secs(60));
    assert_eq!(t.bounds.limits.memory_mb, Some(64));
    assert_eq!(t.needs.capabilities, ["gpu"]);
    assert_eq!((t.retryable, t.max_attempts), (true, 5));
    assert_eq!(t.wait_for_worker, Duration::ZERO);
    let once = parse(r#"{"cmd":["ls"],"retryable":false,"max_attempts":5}"#);
    assert_eq!((once.retryable, once.max_attempts), (false, 1));
}

#[test]
fn a_wasm_task_parses_into_its_module_args_env_stdin_and_files() {
    let m = module();
    let t = parse(&format!(
        r#"{{"kind":"wasm","module":"{m}","cmd":["gen","-o","out.c"],"env":{{"K":"v"}},"stdin":"x",
             "files":[{{"path":"in.txt","text":"i"}}]}}"#
    ));
    let Work::Wasm(w) = &t.work else {
        panic!("{:?}", t.work)
    };
    assert_eq!(w.module.as_str(), m);
    assert_eq!(w.module.hex(), "ab".repeat(32));
    assert_eq!(w.args, ["gen", "-o", "out.c"]);
    assert_eq!(w.env.get("K").map(String::as_str), Some("v"));
    assert_eq!(w.stdin, "x");
    assert_eq!(w.files[0].bytes(), b"i");
    assert_eq!(t.work.kind(), TaskKind::Wasm);
    // No args: argv[0] is then the module's name, for the runtime to fill in.
    let t = parse(&format!(r#"{{"kind":"wasm","module":"{m}"}}"#));
    assert!(matches!(&t.work, Work::Wasm(w) if w.args.is_empty()));
}

#[test]
fn a_compile_task_parses_into_its_segment_env_and_files() {
    let (id, tag) = compiler();
    let t = parse(&format!(
        r#"{{"kind":"compile","compile":{{"compiler":"{id}","source_name":"a.c","source":{{"text":"int x;"}},"workdir":"src"}},
             "needs":{{"capabilities":["{tag}"]}},"env":{{"LC_ALL":"C"}},"files":[{{"path":"src/a.h","text":""}}]}}"#
    ));
    let Work::Compile(c) = &t.work else {
        panic!("{:?}", t.work)
    };
    assert_eq!(c.segment.compiler, id);
    assert_eq!(c.segment.source_name, "a.c");
    assert_eq!(c.segment.workdir, "src");
    assert_eq!(c.env.get("LC_ALL").map(String::as_str), Some("C"));
    assert_eq!(c.files[0].path(), "src/a.h");
    assert_eq!(t.work.kind(), TaskKind::Compile);
}

#[test]
fn an_agent_task_parses_into_its_run() {
    let t = parse(
        r#"{"kind":"agent","agent":{"instruction":"write hello","provider":"openai","model":"m"},
            "retryable":false}"#,
    );
    let Work::Agent(run) = &t.work else {
        panic!("{:?}", t.work)
    };
    assert_eq!(run.instruction, "write hello");
    assert_eq!(run.pipeline, AgentRun::default_pipeline());
    assert_eq!(t.work.kind(), TaskKind::Agent);
    assert_eq!(t.max_attempts, 1);
}

#[test]
fn only_kinds_with_processes_have_an_env_to_add_to() {
    let mut exec = parse(r#"{"cmd":["ls"]}"#).work;
    exec.env_mut()
        .map(|env| env.insert("VGAS_TASK_ID".into(), "t".into()));
    assert!(matches!(&exec, Work::Exec(e) if e.env.get("VGAS_TASK_ID").is_some_and(|v| v == "t")));
    let agent =
        parse(r#"{"kind":"agent","agent":{"instruction":"i","provider":"openai","model":"m"}}"#);
    assert!(agent.work.clone().env_mut().is_none());
}

#[test]
fn every_refusal_keeps_its_message() {
    let (id, tag) = compiler();
    let m = module();
    let segment =
        format!(r#""compile":{{"compiler":"{id}","source_name":"a.c","source":{{"text":"x"}}}}"#);
    let agent = r#""agent":{"instruction":"i","provider":"openai","model":"m"}"#;
    let long_cap = "c".repeat(limits::MAX_CAPABILITY_LEN + 1);
    let many_files = vec![r#"{"path":"f","text":""}"#; limits::MAX_INPUT_FILES + 1].join(",");
    let cases = [
        (
            r#"{"kind":"compile"}"#.to_owned(),
            "needs its \"compile\" segment",
        ),
        (
            format!(
                r#"{{"kind":"compile",{segment},"cmd":["cc"],"needs":{{"capabilities":["{tag}"]}}}}"#
            ),
            "a compile task has no \"cmd\", \"module\" or \"stdin\"",
        ),
        (
            format!(r#"{{"kind":"compile",{segment}}}"#),
            "must need its compiler's capability",
        ),
        (
            r#"{"kind":"compile","compile":{"compiler":"x","source_name":"a.c","source":{"text":"x"}}}"#
                .to_owned(),
            "must be an identity",
        ),
        (
            format!(r#"{{"cmd":["ls"],{segment}}}"#),
            "only a compile task (\"kind\":\"compile\") has a \"compile\" segment",
        ),
        (r#"{"kind":"agent"}"#.to_owned(), "needs its \"agent\" run"),
        (
            format!(r#"{{"kind":"agent",{agent},"cmd":["x"]}}"#),
            "an agent task has no \"cmd\" or \"module\"",
        ),
        (
            format!(r#"{{"cmd":["ls"],{agent}}}"#),
            "only an agent task (\"kind\":\"agent\") has an \"agent\" run",
        ),
        (
            r#"{"kind":"agent","agent":{"instruction":" ","provider":"openai","model":"m"}}"#
                .to_owned(),
            "needs an instruction",
        ),
        (
            format!(r#"{{"kind":"wasm","module":"{m}","environment":{{"toolchain":"gcc"}}}}"#),
            "only an exec task has an \"environment\"",
        ),
        (
            r#"{"cmd":["ls"],"environment":{"toolchain":"tcc"}}"#.to_owned(),
            "is not one of",
        ),
        (
            format!(r#"{{"cmd":["ls"],"module":"{m}"}}"#),
            "an exec task must not name a \"module\"",
        ),
        (r#"{"cmd":[]}"#.to_owned(), "\"cmd\" must name a program"),
        (r#"{"cmd":[""]}"#.to_owned(), "\"cmd\" must name a program"),
        (
            r#"{"kind":"wasm"}"#.to_owned(),
            "a wasm task must name its \"module\"",
        ),
        (
            r#"{"kind":"wasm","module":"sha256:AB"}"#.to_owned(),
            "64 lowercase hex",
        ),
        (
            r#"{"cmd":["ls","a\u0000"]}"#.to_owned(),
            "must not contain NUL",
        ),
        (
            format!(r#"{{"kind":"wasm","module":"{m}","cmd":["\u0000"]}}"#),
            "must not contain NUL",
        ),
        (
            r#"{"cmd":["ls"],"env":{"A":"\u0000"}}"#.to_owned(),
            "must not contain NUL",
        ),
        (
            r#"{"cmd":["ls"],"env":{"":"v"}}"#.to_owned(),
            "env name \"\" is not valid",
        ),
        (
            r#"{"cmd":["ls"],"env":{"A=B":"v"}}"#.to_owned(),
            "is not valid",
        ),
        (
            r#"{"cmd":["ls"],"deadline_s":0}"#.to_owned(),
            "\"deadline_s\" must be 1 to 86400",
        ),
        (
            r#"{"cmd":["ls"],"deadline_s":86401}"#.to_owned(),
            "\"deadline_s\" must be 1 to",
        ),
        (
            r#"{"cmd":["ls"],"max_attempts":0}"#.to_owned(),
            "\"max_attempts\" must be 1 to 10",
        ),
        (
            r#"{"cmd":["ls"],"max_attempts":11}"#.to_owned(),
            "\"max_attempts\" must be 1 to",
        ),
        (
            format!(r#"{{"cmd":["ls"],"files":[{many_files}]}}"#),
            "at most 256 input files",
        ),
        (
            r#"{"cmd":["ls"],"files":[{"path":"/etc/x","text":""}]}"#.to_owned(),
            "must be relative",
        ),
        (
            r#"{"cmd":["ls"],"files":[{"path":"a/./b","text":""}]}"#.to_owned(),
            "must be relative",
        ),
        (
            r#"{"cmd":["ls"],"files":[{"path":"a","base64":"!!"}]}"#.to_owned(),
            "bad base64",
        ),
        (
            r#"{"cmd":["ls"],"files":[{"path":"a"}]}"#.to_owned(),
            "exactly one of",
        ),
        (
            r#"{"cmd":["ls"],"needs":{"capabilities":[""]}}"#.to_owned(),
            "must be 1 to 96 characters",
        ),
        (
            format!(r#"{{"cmd":["ls"],"needs":{{"capabilities":["{long_cap}"]}}}}"#),
            "must be 1 to 96 characters",
        ),
        (
            r#"{"cmd":["ls"],"wait_for_worker_s":31}"#.to_owned(),
            "\"wait_for_worker_s\" must be 0 to 30",
        ),
        // Several faults: refused for the first, in the order the checks have always run.
        (
            format!(r#"{{"cmd":[],"module":"{m}","deadline_s":0}}"#),
            "an exec task must not name a \"module\"",
        ),
        (
            r#"{"cmd":[""],"env":{"=":"\u0000"}}"#.to_owned(),
            "\"cmd\" must name a program",
        ),
        (
            r#"{"cmd":["ls"],"deadline_s":0,"max_attempts":0}"#.to_owned(),
            "\"deadline_s\"",
        ),
    ];
    for (input, want) in cases {
        let s = spec(&input);
        let err = s.parse().expect_err(&input).to_string();
        assert!(err.starts_with("invalid task: "), "{input}: {err}");
        assert!(err.contains(want), "{input}: {err}");
        // `validate` is the same check.
        let again = s.validate().expect_err(&input).to_string();
        assert_eq!(again, err, "{input}");
    }
}

#[test]
fn a_module_ref_cannot_hold_a_bad_string() {
    let good = module();
    let r = ModuleRef::parse(&good).expect("a good reference");
    assert_eq!((r.as_str(), r.to_string()), (good.as_str(), good.clone()));
    assert_eq!(good.parse::<ModuleRef>().expect("FromStr"), r);
    let upper = format!("sha256:{}", "AB".repeat(32));
    let short = format!("sha256:{}", "a".repeat(63));
    let long = format!("sha256:{}", "a".repeat(65));
    let not_hex = format!("sha256:{}", "g".repeat(64));
    let no_prefix = "ab".repeat(32);
    let other_hash = format!("md5:{}", "ab".repeat(32));
    let padded = format!(" {good}");
    for bad in [
        "",
        "sha256:",
        &upper,
        &short,
        &long,
        &not_hex,
        &no_prefix,
        &other_hash,
        &padded,
    ] {
        let err = ModuleRef::parse(bad).expect_err(bad).to_string();
        assert!(
            err.contains("must be \"sha256:\" and 64 lowercase hex digits"),
            "{bad:?}: {err}"
        );
        assert!(bad.parse::<ModuleRef>().is_err(), "{bad:?}");
        assert!(check_module_ref(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn an_argv_names_a_program_and_holds_no_nul() {
    let argv = |parts: &[&str]| Argv::new(parts.iter().map(|s| s.to_string()).collect());
    let ok = argv(&["sh", "-c", "true"]).expect("a program with args");
    assert_eq!(
        (ok.program(), ok.args()),
        ("sh", &["-c".to_owned(), "true".to_owned()][..])
    );
    assert!(argv(&["true"]).expect("a program alone").args().is_empty());
    for bad in [&[][..], &[""], &["", "x"], &["sh", "a\0b"], &["s\0h"]] {
        assert!(argv(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn a_task_file_is_checked_and_decoded_and_its_debug_skips_the_bytes() {
    let f = TaskFile::parse(&InputFile {
        path: "a/b.bin".into(),
        base64: Some("aGk=".into()),
        mode: Some(0o600),
        ..InputFile::default()
    })
    .expect("a good file");
    assert_eq!(
        (f.path(), f.bytes(), f.mode()),
        ("a/b.bin", &b"hi"[..], Some(0o600))
    );
    assert_eq!(
        format!("{f:?}"),
        r#"TaskFile { path: "a/b.bin", bytes: 2, mode: Some(384) }"#
    );
    for path in ["", "/abs", "../up", "a//b", "a/.", "a\0b"] {
        let bad = InputFile {
            path: path.into(),
            text: Some(String::new()),
            ..InputFile::default()
        };
        assert!(TaskFile::parse(&bad).is_err(), "{path:?}");
    }
}
