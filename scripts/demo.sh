#!/usr/bin/env bash
# The quick start: installs what it needs, builds, starts nats-server from nats.conf, one
# master and two workers, runs real work on the swarm (streamed live, and a C build through
# the build farm and its cache), shows the swarm's
# status, and shuts everything down cleanly. Logs: .vgas/logs/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
port=${VGAS_DEMO_PORT:-4222}
logs="$root/.vgas/logs"

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "tools and build"
scripts/ensure-tools.sh
# shellcheck disable=SC1091
source .tools/env
cargo build --workspace --bins --locked
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
bin="$target_dir/debug"
export VGAS_NATS_URL="nats://127.0.0.1:$port" VGAS_STATE_DIR="$root/.vgas"

step "vgas init: one NATS key per role, the swarm's CA and TLS certificate, files of mode 0600"
"$bin/vgas" init
mkdir -p "$logs"
step "vgas node add worker: each worker its own key, able to read only its own assignments"
for w in demo-w1 demo-w2; do
  [ -f "$root/.vgas/creds/nodes/$w.creds" ] || "$bin/vgas" node add worker "$w"
done

pids=()
cleanup() {
  step "shutting down (SIGTERM: workers drain, then master, then nats-server)"
  for pid in "${pids[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
  [ "${#pids[@]}" -gt 0 ] && { kill -TERM "${pids[0]}" 2>/dev/null || true; wait "${pids[0]}" 2>/dev/null || true; }
  echo "stopped; logs in $logs"
}
trap cleanup EXIT

step "nats-server -c nats.conf (port $port)"
if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then
  echo "port $port is taken: set VGAS_DEMO_PORT to a free port" >&2
  exit 1
fi
"$NATS_SERVER_BIN" -c nats.conf -p "$port" >"$logs/nats-server.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.1; done

step "one master, two workers"
"$bin/vgas-master" >"$logs/master.log" 2>&1 &
pids+=($!)
"$bin/vgas-worker" --id demo-w1 --creds "$root/.vgas/creds/nodes/demo-w1.creds" --slots 2 >"$logs/worker-1.log" 2>&1 &
pids+=($!)
"$bin/vgas-worker" --id demo-w2 --creds "$root/.vgas/creds/nodes/demo-w2.creds" --slots 2 >"$logs/worker-2.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  "$bin/vgas" status --json 2>/dev/null | grep -q '"demo-w2"' && "$bin/vgas" status --json | grep -q '"demo-w1"' && break
  sleep 0.2
done

step "vgas submit: output streams back as it is printed"
"$bin/vgas" submit -- sh -c 'for i in 1 2 3; do echo "step $i of 3 on $(hostname), in $(pwd)"; sleep 0.5; done'

step "vgas submit: compile C on a worker and run it (stdout streamed, exit code returned)"
"$bin/vgas" submit --file examples/hello.c --needs cc -- sh -c 'cc -O2 -o hello hello.c && ./hello'

step "six tasks at once: Gatling rotation spreads them over both workers"
for i in 1 2 3 4 5 6; do
  "$bin/vgas" submit -- sh -c "sleep 0.3; echo task $i done by worker \$VGAS_WORKER_ID" &
done
wait_jobs() { for job in $(jobs -p); do case " ${pids[*]} " in *" $job "*) ;; *) wait "$job" ;; esac; done; }
wait_jobs

step "a failing task is a result, not a crash: its exit code comes back"
set +e
"$bin/vgas" submit -- sh -c 'echo "about to fail" >&2; exit 3'
echo "vgas submit exited with $?"
set -e

step "vgas build -- make: a C project's units compile on the workers, the link runs here (VGAS_IN_PLACE=0: with every worker on this one machine, vgas would otherwise compile them in place)"
build_dir=$(mktemp -d)
cp -r tests/c/calc/. "$build_dir"
(cd "$build_dir" && VGAS_IN_PLACE=0 "$bin/vgas" build --stats -- make -j4 && ./app)
step "make clean, then the same build again: every unit comes from the swarm-wide cache"
(cd "$build_dir" && make -s clean && "$bin/vgas" build -- make -j4 && ./app)
rm -rf "$build_dir"

step "vgas submit --cuda --compile-only: CUDA C to PTX with NVRTC on a worker, no GPU needed (a worker with a GPU would launch it: docs/gpu.md)"
cuda_dir=$(mktemp -d)
(cd "$cuda_dir" && "$bin/vgas" submit --cuda "$root/examples/add.cu" --entry add --compile-only --arch compute_90 \
  && grep -E '^\.(version|target)|\.entry' vgas-artifacts/kernel.ptx)
rm -rf "$cuda_dir"

step "vgas status"
"$bin/vgas" status
