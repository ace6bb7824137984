//! A WASI 0.2 component through the real swarm: the C test program compiled to `wasm32-wasi`
//! by Zig, turned into a component with the preview 1 adapter of the worker's wasmtime
//! release (what `wasm-tools component new --adapt` does), uploaded and run by
//! `vgas submit --wasm`. It reads its input file and writes its output file through
//! `wasi:filesystem`, prints through `wasi:cli/stdout`, and the output file that comes back
//! as an artifact matches what the native build writes.

use vgas_tests::wasi::{native_textstat, textstat_or_skip};
use vgas_tests::Swarm;
use wasi_preview1_component_adapter_provider::{
    WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME, WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
};

/// The component made from the preview 1 command module `core`.
fn componentize(core: &[u8]) -> Vec<u8> {
    wit_component::ComponentEncoder::default()
        .module(core)
        .expect("the module is a preview 1 command")
        .adapter(
            WASI_SNAPSHOT_PREVIEW1_ADAPTER_NAME,
            WASI_SNAPSHOT_PREVIEW1_COMMAND_ADAPTER,
        )
        .expect("the adapter loads")
        .validate(true)
        .encode()
        .expect("the component encodes")
}

#[tokio::test]
async fn a_c_program_as_a_component_writes_what_its_native_build_writes() {
    let build = tempfile::tempdir().unwrap();
    let Some((wasm, native)) = textstat_or_skip(build.path()) else {
        return;
    };
    let component = componentize(&std::fs::read(&wasm).unwrap());
    assert_eq!(
        &component[4..8],
        &[0x0d, 0x00, 0x01, 0x00],
        "not a component"
    );
    let component_path = build.path().join("textstat.component.wasm");
    std::fs::write(&component_path, &component).unwrap();

    let input: String = (1..=25)
        .map(|i| format!("row {i}: pack my box with {} liquor jugs\n", i * 3))
        .collect();
    let (input_path, expected) = native_textstat(&native, build.path(), &input);

    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let file = format!("{}:in.txt", input_path.display());
    let component_arg = component_path.display().to_string();
    let submit = |args: &[&str]| {
        let mut all = vec!["submit", "--wasm", &component_arg, "--file", &file, "--"];
        all.extend_from_slice(args);
        swarm.cli(&all).unwrap()
    };
    let out = submit(&["textstat", "in.txt", "stats.txt"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    assert_eq!(stdout, "wrote stats.txt\n", "{stderr}");
    let saved = swarm.dir.path().join("vgas-artifacts");
    assert_eq!(std::fs::read(saved.join("stats.txt")).unwrap(), expected);

    // A missing input is the program's own error and exit code, through wasi:cli/exit.
    let out = submit(&["textstat", "no-such-file.txt", "x.txt"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("no-such-file.txt"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
