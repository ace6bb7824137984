//! A module far past the NATS message size limit, as real tools compiled to WASI are (50 to
//! 100 MB): 48 MiB of data in a module that `vgas submit --wasm` uploads into the modules
//! Object Store bucket, the worker fetches, compiles, caches and runs; the second run finds it
//! cached. The times of both runs are printed (not asserted: figures belong in benchmarks).

use std::time::Instant;

use vgas_tests::Swarm;
use wasm_encoder::{
    CodeSection, ConstExpr, DataSection, EntityType, ExportKind, ExportSection, Function,
    FunctionSection, ImportSection, Instruction, MemArg, MemArgTarget, MemorySection, MemoryType,
    Module, TypeSection, ValType,
};

/// Bytes of data the module carries.
const DATA_BYTES: usize = 48 * 1024 * 1024;

/// A WASI command printing `big ok` whose memory holds `DATA_BYTES` of initialised data.
fn big_module() -> Vec<u8> {
    let mut types = TypeSection::new();
    types.ty().function([ValType::I32; 4], [ValType::I32]);
    types.ty().function([], []);
    let mut imports = ImportSection::new();
    imports.import(
        "wasi_snapshot_preview1",
        "fd_write",
        EntityType::Function(0),
    );
    let mut funcs = FunctionSection::new();
    funcs.function(1);
    let pages = (DATA_BYTES as u64 + (2 << 20)) / 65536;
    let mut memory = MemorySection::new();
    memory.memory(MemoryType {
        minimum: pages,
        maximum: None,
        memory64: false,
        shared: false,
        page_size_log2: None,
    });
    let mut exports = ExportSection::new();
    exports.export("memory", ExportKind::Memory, 0);
    exports.export("_start", ExportKind::Func, 1);
    let mem = |offset| MemArg {
        offset,
        align: 2,
        target: MemArgTarget::Memory(0),
        ordering: None,
    };
    let mut start = Function::new([]);
    for i in [
        Instruction::I32Const(0),
        Instruction::I32Const(100),
        Instruction::I32Store(mem(0)),
        Instruction::I32Const(0),
        Instruction::I32Const(7),
        Instruction::I32Store(mem(4)),
        Instruction::I32Const(1),
        Instruction::I32Const(0),
        Instruction::I32Const(1),
        Instruction::I32Const(8),
        Instruction::Call(0),
        Instruction::Drop,
        Instruction::End,
    ] {
        start.instruction(&i);
    }
    let mut code = CodeSection::new();
    code.function(&start);
    let mut data = DataSection::new();
    data.active(0, &ConstExpr::i32_const(100), b"big ok\n".iter().copied());
    let filler: Vec<u8> = (0..DATA_BYTES).map(|i| (i * 7 % 251) as u8).collect();
    data.active(0, &ConstExpr::i32_const(1 << 20), filler);
    let mut m = Module::new();
    m.section(&types)
        .section(&imports)
        .section(&funcs)
        .section(&memory)
        .section(&exports)
        .section(&code)
        .section(&data);
    m.finish()
}

#[tokio::test]
async fn a_48_mib_module_uploads_compiles_once_and_runs() {
    let (swarm, _procs, _client) = Swarm::with_workers(&[("w1", 1)]).await.unwrap();
    let bytes = big_module();
    assert!(bytes.len() > DATA_BYTES, "{} bytes", bytes.len());
    let path = swarm.dir.path().join("big.wasm");
    std::fs::write(&path, &bytes).unwrap();
    let path = path.display().to_string();
    for round in 0..2 {
        let t = Instant::now();
        let out = swarm
            .cli(&["submit", "--wasm", &path, "--deadline", "120", "--", "big"])
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
        assert_eq!(stdout, "big ok\n", "{stderr}");
        assert_eq!(stderr.contains("uploaded"), round == 0, "{stderr}");
        eprintln!(
            "round {round}: {} MiB module, {:.2}s end to end{}",
            bytes.len() >> 20,
            t.elapsed().as_secs_f64(),
            if round == 0 {
                " (upload, fetch, cold compile)"
            } else {
                " (cached)"
            }
        );
    }
}
