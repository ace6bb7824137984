#!/usr/bin/env bash
# Every benchmark in one run, release builds: the Gatling scheduler, the key manager and a
# build unit's submitting-side CPU (criterion), the LLM gateway next to a direct provider call, and the
# end-to-end figures next to raw NATS request-reply, the build farm next to local builds and
# distcc, on real projects. Results go to stdout; docs/benchmarks.md
# records them with this command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
scripts/ensure-tools.sh
# shellcheck disable=SC1091
source .tools/env
cargo build --release --workspace --bins --locked
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$(pwd)/$target_dir" ;; esac
export VGAS_BIN_DIR="$target_dir/release"
cargo bench -p vgas-master --bench gatling --locked
cargo bench -p vgas-master --bench keys --locked
# GPU leases: a grant and release over 1,000 workers of 8 (declared) GPUs each.
cargo bench -p vgas-master --bench leases --locked -- --warm-up-time 1 --measurement-time 3
cargo bench -p vgas-client --bench farm --locked
cargo bench -p vgas-worker --bench wasm --locked -- --warm-up-time 1 --measurement-time 3
cargo bench -p vgas-tests --bench e2e --locked
# The task path as a nats-py user meets it: raw request-reply, wasm and exec no-op tasks with
# the time of each event, batch submission and drain, and Ray 2.60.0, in one run.
scripts/bench-taskpath.sh
cargo bench -p vgas-tests --bench gateway --locked
# One agent step next to a direct provider call; BM25 search over 10,000 chunks.
cargo bench -p vgas-tests --bench agent_step --locked
cargo bench -p vgas-shared --bench kb --locked -- --warm-up-time 1 --measurement-time 3
cargo bench -p vgas-tests --bench wasm_throughput --locked
# 100,000 tasks submitted in batches next to one per request, queued, then drained.
cargo bench -p vgas-tests --bench batch --locked
cargo bench -p vgas-tests --bench dashboard --locked
# GPU leases and cuda tasks end to end (declared GPUs; NVRTC from PyPI); on a GPU machine
# scripts/gpu-check.sh adds the kernel launch next to a direct cudarc launch.
scripts/bench-gpu.sh
# A real 69 MB tool compiled to WASI (Yosys): cold compile, then the caches.
cargo bench -p vgas-tests --bench wasm_cold --locked
# The C build farm side by side with local make and distcc (Lua 5.4.4).
scripts/bench-build.sh
# The build farm on a corpus of real projects, each with its own build system.
scripts/bench-corpus.sh
