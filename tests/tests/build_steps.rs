//! Wasm steps in a `BuildPlan`, through the real swarm: a generator module writes a file, a
//! second module reads it and writes the C source the plan compiles and links with its own
//! segment; the binary runs. A step that fails ends the build with its reason; a step source
//! outside the task directory is refused at submit.

use std::process::Command;

use sha2::{Digest, Sha256};
use vgas_tests::build::{fetch_binary, run_plan, skip_without_gcc};
use vgas_tests::Swarm;

const GENERATED: &str = "int gen_value(void) { return 42; }\n";

/// A WASI command writing `GENERATED` into `gen.c` (or exiting with `fail` if non-zero).
fn generator(fail: i32) -> Vec<u8> {
    let len = GENERATED.len();
    let body = if fail != 0 {
        format!("(call $proc_exit (i32.const {fail}))")
    } else {
        format!(
            "(if (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 5)
                  (i32.const 9) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16))
               (then (call $proc_exit (i32.const 99))))
             (i32.store (i32.const 0) (i32.const 200))
             (i32.store (i32.const 4) (i32.const {len}))
             (drop (call $fd_write (i32.load (i32.const 16)) (i32.const 0) (i32.const 1) (i32.const 8)))"
        )
    };
    wat::parse_str(format!(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "path_open"
            (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 100) "gen.c")
          (data (i32.const 200) "{}")
          (func (export "_start") {body}))"#,
        GENERATED.replace('\n', "\\n")
    ))
    .unwrap()
}

/// A WASI command copying `gen.c` (an earlier step's output) to `copy.c`.
fn copier() -> Vec<u8> {
    wat::parse_str(
        r#"(module
          (import "wasi_snapshot_preview1" "fd_read" (func $fd_read (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "fd_write" (func $fd_write (param i32 i32 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "path_open"
            (func $path_open (param i32 i32 i32 i32 i32 i64 i64 i32 i32) (result i32)))
          (import "wasi_snapshot_preview1" "proc_exit" (func $proc_exit (param i32)))
          (memory (export "memory") 1)
          (data (i32.const 100) "gen.c")
          (data (i32.const 120) "copy.c")
          (func (export "_start")
            (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 100) (i32.const 5)
                  (i32.const 0) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 16))
              (then (call $proc_exit (i32.const 98))))
            (i32.store (i32.const 0) (i32.const 1000))
            (i32.store (i32.const 4) (i32.const 2000))
            (drop (call $fd_read (i32.load (i32.const 16)) (i32.const 0) (i32.const 1) (i32.const 20)))
            (if (call $path_open (i32.const 3) (i32.const 0) (i32.const 120) (i32.const 6)
                  (i32.const 9) (i64.const 0x1fffffff) (i64.const 0x1fffffff) (i32.const 0) (i32.const 24))
              (then (call $proc_exit (i32.const 99))))
            (i32.store (i32.const 4) (i32.load (i32.const 20)))
            (drop (call $fd_write (i32.load (i32.const 24)) (i32.const 0) (i32.const 1) (i32.const 8)))))"#,
    )
    .unwrap()
}

fn name_of(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

#[tokio::test]
async fn wasm_steps_generate_the_sources_a_plan_compiles() {
    if skip_without_gcc() {
        return;
    }
    let (swarm, _procs, client) = Swarm::with_workers(&[("w1", 2)]).await.unwrap();
    let js = async_nats::jetstream::new(client.clone());
    let modules = js
        .get_object_store(swarm.subjects.modules_bucket())
        .await
        .unwrap();
    let (gen, copy, bad) = (generator(0), copier(), generator(3));
    for m in [&gen, &copy, &bad] {
        modules
            .put(name_of(m).as_str(), &mut m.as_slice())
            .await
            .unwrap();
    }

    let plan = serde_json::json!({
        "build_id": "steps-1",
        "compiler": {"toolchain": "gcc"},
        "args": ["-O2"],
        "segments": [{"name": "main.c", "source": {"text": "int gen_value(void);\nint main(void) { return gen_value() - 42; }\n"}}],
        "steps": [
            {"name": "gen", "module": name_of(&gen), "args": ["gen"]},
            {"name": "copy", "module": name_of(&copy), "args": ["copy"], "sources": ["copy.c"]}
        ],
        "link": {"output": "app"}
    });
    let (finished, seen) = run_plan(&client, "steps-1", &plan).await;
    assert_eq!(finished["exit_code"], 0, "{finished}\n{seen:?}");
    for step in ["step:gen", "step:copy", "copy.c", "main.c"] {
        assert!(
            seen.iter()
                .any(|u| u["type"] == "done" && u["segment"] == step),
            "no done update for {step}: {seen:?}"
        );
    }
    let path = swarm.dir.path().join("steps-app");
    fetch_binary(
        &client,
        finished["binary"]["object"].as_str().unwrap(),
        &path,
    )
    .await;
    assert_eq!(
        Command::new(&path).status().unwrap().code(),
        Some(0),
        "gen_value() from the generated source is 42"
    );

    // A step that exits 3 ends the build with its reason; nothing is linked.
    let plan = serde_json::json!({
        "build_id": "steps-2",
        "compiler": {"toolchain": "gcc"},
        "segments": [{"name": "main.c", "source": {"text": "int main(void) { return 0; }\n"}}],
        "steps": [{"name": "broken", "module": name_of(&bad)}],
        "link": {"output": "app"}
    });
    let (finished, seen) = run_plan(&client, "steps-2", &plan).await;
    assert_ne!(finished["exit_code"], 0, "{finished}");
    assert!(finished["binary"].is_null(), "{finished}");
    let message = finished["report"]["items"][0]["message"]
        .as_str()
        .unwrap_or("");
    assert!(
        message.contains("broken") && message.contains("exit_code: 3"),
        "{finished}"
    );
    assert!(
        seen.iter()
            .any(|u| u["type"] == "failed" && u["segment"] == "step:broken"),
        "{seen:?}"
    );

    // A step source outside the task directory, or an unknown module form: refused at submit.
    for step in [
        serde_json::json!({"name": "s", "module": name_of(&gen), "sources": ["../x.c"]}),
        serde_json::json!({"name": "s", "module": name_of(&gen), "sources": ["x.txt"]}),
        serde_json::json!({"name": "s", "module": "tool.wasm"}),
    ] {
        let plan = serde_json::json!({
            "compiler": {"toolchain": "gcc"},
            "segments": [{"name": "main.c", "source": {"text": "int main(void) { return 0; }\n"}}],
            "steps": [step],
        });
        let reply = client
            .request(
                "vgas.build.submit",
                serde_json::to_vec(&plan).unwrap().into(),
            )
            .await
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&reply.payload).unwrap();
        assert!(v["error"]["message"].as_str().is_some(), "{plan} -> {v}");
    }
}
