//! Components (WASI 0.2) in the sandbox, written here in the component text format: the
//! `wasi:cli/run` export runs and its result is the exit code, and the same limits stop a
//! component as stop a core module. A real C program built as a component runs in
//! `tests/tests/wasm_component.rs`.

use vgas_shared::wire::TaskOutcome;

use super::tests::{error_text, module_ref, Harness};

/// A component exporting `wasi:cli/run@0.2.0` whose `run` is the core function `body`
/// (returning the result's discriminant: 0 ok, 1 error), with one page of growable memory.
fn component(body: &str) -> Vec<u8> {
    let wat = format!(
        r#"(component
          (core module $m
            (memory 1)
            (func (export "run") (result i32) {body}))
          (core instance $i (instantiate $m))
          (func $run (result (result)) (canon lift (core func $i "run")))
          (instance $cli (export "run" (func $run)))
          (export "wasi:cli/run@0.2.0" (instance $cli)))"#
    );
    wat::parse_str(wat).expect("test component WAT parses")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_runs_and_its_result_is_the_exit_code() {
    let mut h = Harness::new();
    for (body, code) in [("(i32.const 0)", 0), ("(i32.const 1)", 1)] {
        let m = h.add(component(body));
        let (run, _) = h.run(&Harness::spec(&m)).await;
        assert_eq!(run.outcome, TaskOutcome::Exited { exit_code: code });
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_runs_from_the_compiled_cache_after_a_restart() {
    let mut h = Harness::new();
    let m = h.add(component("(i32.const 0)"));
    let (_, from) = h.rt.load(&module_ref(&m), &h.modules).await.unwrap();
    assert_eq!(from, super::LoadedFrom::Compiled);
    h.rt.forget_memory();
    let (program, from) = h.rt.load(&module_ref(&m), &h.modules).await.unwrap();
    assert_eq!(from, super::LoadedFrom::CompiledCache);
    assert!(matches!(program, super::Program::Component(_)));
    let (run, _) = h.run(&Harness::spec(&m)).await;
    assert_eq!(run.outcome, TaskOutcome::Exited { exit_code: 0 });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endless_component_is_stopped_at_its_deadline() {
    let mut h = Harness::new();
    let m = h.add(component("(loop $l (br $l)) (i32.const 0)"));
    h.assert_stopped_at_a_1_s_deadline(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_memory_bomb_is_refused_at_the_limit() {
    let mut h = Harness::new();
    let m = h.add(component(
        "(loop $l (br_if $l (i32.ne (memory.grow (i32.const 16)) (i32.const -1)))) (i32.const 0)",
    ));
    h.assert_refused_at_16_mib(&m).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_without_wasi_cli_run_is_refused() {
    let mut h = Harness::new();
    let m = h.add(wat::parse_str("(component)").unwrap());
    let (run, _) = h.run(&Harness::spec(&m)).await;
    let message = error_text(&run.outcome);
    assert!(
        message.contains("exports no `wasi:cli/run@0.2.x`") && message.contains(&m),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broken_component_is_a_clear_error() {
    let mut h = Harness::new();
    let mut bytes = component("(i32.const 0)");
    bytes.truncate(bytes.len() - 3);
    let m = h.add(bytes);
    let (run, _) = h.run(&Harness::spec(&m)).await;
    let message = error_text(&run.outcome);
    assert!(
        message.contains("is not a valid WebAssembly component"),
        "{message}"
    );
}
