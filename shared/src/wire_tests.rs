//! Wire shapes and `TaskSpec` validation, case by case.

use super::*;
use crate::codec::{decode, encode};

fn spec(json: &str) -> Result<TaskSpec, String> {
    let (s, _): (TaskSpec, _) = decode(json.as_bytes(), 1 << 20).map_err(|e| e.to_string())?;
    s.validate().map_err(|e| e.to_string())?;
    Ok(s)
}

#[test]
fn the_design_example_parses() {
    let s = spec(
        r#"{"kind":"exec","cmd":["make","-j2"],"env":{},"stdin":"","deadline_s":60,"needs":{}}"#,
    )
    .unwrap();
    assert_eq!(s.cmd, ["make", "-j2"]);
    assert_eq!(s.deadline().as_secs(), 60);
}

#[test]
fn bad_specs_are_refused_with_reasons() {
    let cases = [
        (r#"{"cmd":[]}"#, "must name a program"),
        (r#"{"cmd":"ls"}"#, "invalid type"),
        (r#"{"cmd":["ls"],"bogus":1}"#, "unknown field"),
        (r#"{"cmd":["ls"],"deadline_s":0}"#, "deadline_s"),
        (
            r#"{"cmd":["ls"],"files":[{"path":"../x","text":""}]}"#,
            "must be relative",
        ),
        (
            r#"{"cmd":["ls"],"files":[{"path":"a","base64":"!!"}]}"#,
            "bad base64",
        ),
        (r#"{"cmd":["ls"],"task_id":"a.b"}"#, "invalid task id"),
        (r#"{"cmd":["ls"],"kind":"nope"}"#, "unknown variant"),
        (r#"{"cmd":["ls"],"max_attempts":99}"#, "max_attempts"),
        (r#"{"kind":"wasm","cmd":["t"]}"#, "must name its \"module\""),
        (
            r#"{"kind":"wasm","module":"sha256:AB"}"#,
            "64 lowercase hex",
        ),
        (r#"{"kind":"wasm","module":"md5:00"}"#, "64 lowercase hex"),
        (
            r#"{"cmd":["ls"],"module":"sha256:0000000000000000000000000000000000000000000000000000000000000000"}"#,
            "must not name a \"module\"",
        ),
        (r#"{"env":{}}"#, "must name a program"),
    ];
    for (input, want) in cases {
        let err = spec(input).unwrap_err();
        assert!(err.contains(want), "{input}: {err}");
    }
}

#[test]
fn wasm_specs_parse_and_keep_exec_json_unchanged() {
    let hash = format!("sha256:{}", "ab".repeat(32));
    let s = spec(&format!(
        r#"{{"kind":"wasm","module":"{hash}","cmd":["gen","-o","out.c"],"stdin":"x"}}"#
    ))
    .unwrap();
    assert_eq!(s.kind, TaskKind::Wasm);
    assert_eq!(s.module.as_deref(), Some(hash.as_str()));
    let s = spec(&format!(r#"{{"kind":"wasm","module":"{hash}"}}"#)).unwrap();
    assert!(s.cmd.is_empty());
    let mp = encode(crate::Encoding::MsgPack, &s).unwrap();
    let (back, _): (TaskSpec, _) = decode(&mp, 1 << 20).unwrap();
    assert_eq!(back, s);
    // An exec spec serializes without the new field.
    let exec = spec(r#"{"cmd":["ls"]}"#).unwrap();
    let json = serde_json::to_string(&exec).unwrap();
    assert!(!json.contains("module"), "{json}");
    let art = TaskEvent::Artifact {
        attempt: 1,
        path: "out/a.txt".into(),
        base64: "aGk=".into(),
        object: None,
        size: None,
        mode: None,
        ran_us: None,
        stdout_bytes: None,
        stderr_bytes: None,
    };
    assert_eq!(
        serde_json::to_string(&art).unwrap(),
        r#"{"type":"artifact","attempt":1,"path":"out/a.txt","base64":"aGk="}"#
    );
    // A large file goes by reference into the artifacts bucket; older readers still parse it.
    let by_ref = TaskEvent::Artifact {
        attempt: 2,
        path: "big.bin".into(),
        base64: String::new(),
        object: Some("t/2/big.bin".into()),
        size: Some(5 << 20),
        mode: None,
        ran_us: Some(15_250),
        stdout_bytes: Some(0),
        stderr_bytes: Some(12),
    };
    let json = serde_json::to_string(&by_ref).unwrap();
    assert_eq!(
        json,
        r#"{"type":"artifact","attempt":2,"path":"big.bin","base64":"","object":"t/2/big.bin","size":5242880,"ran_us":15250,"stdout_bytes":0,"stderr_bytes":12}"#
    );
    assert_eq!(serde_json::from_str::<TaskEvent>(&json).unwrap(), by_ref);
    let mp = encode(crate::Encoding::MsgPack, &by_ref).unwrap();
    let (back, _): (TaskEvent, _) = decode(&mp, 1 << 20).unwrap();
    assert_eq!(back, by_ref);
}

#[test]
fn events_have_the_documented_json_shape() {
    let e = TaskEvent::Stdout {
        attempt: 1,
        data: "hi\n".into(),
    };
    assert_eq!(
        serde_json::to_string(&e).unwrap(),
        r#"{"type":"stdout","attempt":1,"data":"hi\n"}"#
    );
    let fin = TaskEvent::Finished {
        task_id: TaskId::parse("t").unwrap(),
        worker: None,
        attempts: 1,
        duration_ms: 5,
        outcome: TaskOutcome::Exited { exit_code: 0 },
    };
    let json = serde_json::to_string(&fin).unwrap();
    assert!(
        json.contains(r#""outcome":{"status":"exited","exit_code":0}"#),
        "{json}"
    );
    let mp = encode(crate::Encoding::MsgPack, &fin).unwrap();
    let (back, _): (TaskEvent, _) = decode(&mp, 1 << 20).unwrap();
    assert_eq!(back, fin);
}

#[test]
fn heartbeats_tolerate_unknown_fields() {
    let hb: Heartbeat = serde_json::from_str(r#"{"slots":2,"from_the_future":true}"#).unwrap();
    assert_eq!(hb.slots, 2);
}
