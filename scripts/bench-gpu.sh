#!/usr/bin/env bash
# GPU leases and cuda tasks end to end, release builds, on a machine with or without a GPU:
# a swarm of nats-server, a master and one worker with two declared (simulated) GPUs, timed
# as whole `vgas submit` processes, A and B in turn, medians of RUNS (default 20):
#   1. `vgas submit --gpus 1 -- true` next to `vgas submit -- true`: what a lease adds;
#   2. `vgas submit --cuda add.cu --compile-only` (PTX from the swarm's cache after the
#      warm-up) next to `vgas submit -- true`;
#   3. one cold NVRTC compile of examples/add.cu (a fresh option, so no cache entry).
# Results go to stdout; docs/benchmarks.md records them with this command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
scripts/ensure-tools.sh
# shellcheck disable=SC1091
source .tools/env
cargo build --release --workspace --bins --locked
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
bin="$target_dir/release"
runs=${RUNS:-20}

work=$(mktemp -d)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port)
# nats.conf includes ./.vgas/auth.conf beside itself: the state directory is $work/.vgas.
export VGAS_NATS_URL="nats://127.0.0.1:$port" VGAS_STATE_DIR="$work/.vgas" VGAS_NO_MDNS=true
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

"$bin/vgas" init >/dev/null
cp nats.conf "$work/"
# Run from $work: nats.conf's store and pid file paths are relative to where it runs.
(cd "$work" && exec "$NATS_SERVER_BIN" -c nats.conf -a 127.0.0.1 -p "$port" -m "$(free_port)") \
  >"$work/nats.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done
"$bin/vgas-master" >"$work/master.log" 2>&1 &
pids+=($!)
VGAS_SIMULATED_GPUS=2 "$bin/vgas-worker" --id gpu-bench --slots 2 >"$work/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  "$bin/vgas" status --json 2>/dev/null | grep -q '"gpu-bench"' && break
  sleep 0.2
done
cp examples/add.cu "$work/"
cd "$work"

# paired LABEL_A LABEL_B :: A... :: B...: medians of whole runs, A and B in turn, 2 warm-ups.
paired() {
  python3 - "$runs" "$@" <<'PY'
import statistics, subprocess, sys, time
runs, label_a, label_b = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rest = sys.argv[4:]
split = rest.index("::", 1)
a, b = rest[1:split], rest[split + 1:]
times = {label_a: [], label_b: []}
for i in range(runs + 2):
    for label, cmd in ((label_a, a), (label_b, b)):
        start = time.perf_counter()
        done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        if done.returncode != 0:
            sys.exit(f"{' '.join(cmd)} exited {done.returncode}: {done.stderr.decode()}")
        if i >= 2:
            times[label].append(time.perf_counter() - start)
ma, mb = statistics.median(times[label_a]), statistics.median(times[label_b])
print(f"{label_a}: median {ma*1e3:.1f} ms (min {min(times[label_a])*1e3:.1f}, max {max(times[label_a])*1e3:.1f})")
print(f"{label_b}: median {mb*1e3:.1f} ms (min {min(times[label_b])*1e3:.1f}, max {max(times[label_b])*1e3:.1f})")
print(f"difference of medians: {(ma-mb)*1e3:+.1f} ms over {runs} pairs")
PY
}

echo "== a lease: --gpus 1 next to no GPU"
paired "submit --gpus 1 -- true" "submit -- true" \
  :: "$bin/vgas" submit --gpus 1 -- true :: "$bin/vgas" submit -- true
echo "== a cuda compile-only task, PTX from the cache, next to a plain task"
paired "submit --cuda add.cu --compile-only" "submit -- true" \
  :: "$bin/vgas" submit --cuda add.cu --entry add --compile-only --arch compute_90 \
  :: "$bin/vgas" submit -- true
echo "== one cold NVRTC compile through the swarm (a fresh option: no cache entry)"
start=$(date +%s%N)
"$bin/vgas" submit --cuda add.cu --entry add --compile-only --arch compute_90 \
  --nvrtc-option "-DVGAS_BENCH_SALT=$start" >/dev/null
echo "cold compile, submit to result: $(( ($(date +%s%N) - start) / 1000000 )) ms"
