#!/usr/bin/env bash
# The GPU checks, for a machine with an NVIDIA GPU (the project's H200 machine): probes the
# driver, then runs the GPU test files (real kernels, the leased-device view, a kernel stopped
# by its deadline, and the simulated-inventory lease tests), then the GPU benchmarks (launch
# overhead through the swarm next to a direct cudarc launch, lease grants), and writes what it saw to
# ${OUT:-/tmp}/gpu-check.txt. On a machine without a GPU the device tests fail, saying why.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${OUT:-/tmp}/gpu-check.txt"
scripts/ensure-tools.sh
# shellcheck disable=SC1091
source .tools/env
{
  echo "== nvidia-smi"; nvidia-smi -L 2>&1 || true
  echo "== build"; cargo build --workspace --bins --locked 2>&1 | tail -3
  echo "== tests"
  cargo test -p vgas-tests --locked --test gpu --test gpu_device -- --include-ignored --test-threads=1 --nocapture 2>&1
  echo "== benchmarks"
  export VGAS_BIN_DIR="$PWD/target/release"
  cargo build --release --workspace --bins --locked 2>&1 | tail -1
  cargo bench -p vgas-tests --locked --bench gpu_launch 2>&1 | tail -3
  cargo bench -p vgas-master --locked --bench leases 2>&1 | grep -E "^gpu_lease|time:"
  scripts/bench-gpu.sh 2>&1 | tail -20
} | tee "$out"
