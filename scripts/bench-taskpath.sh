#!/usr/bin/env bash
# The task path next to its transport and next to Ray, in one run, as a new user measures it:
# raw NATS request-reply, vgas wasm and exec no-op tasks (p50, p99, tasks/s, and the median
# time of each event after the submit), batch submission and drain, and a Ray no-op remote
# function; the wasm-run and exec-run rows take each task in one request on vgas.task.run. Starts its own nats-server (nats.conf), master and one worker (SLOTS slots) on a
# free port with a throw-away state directory and a queue of QUEUE_CAPACITY (100,000); release build. Ray 2.60.0 and nats-py are
# installed, pinned, into .tools/bench-venv (ignored). Usage:
#   scripts/bench-taskpath.sh [raw] [wasm] [wasm-run] [exec] [exec-run] [batch] [ray]   (default: all)
#   scripts/bench-taskpath.sh -- CMD...    (CMD against the same swarm, its logs in $BENCH_LOGS)
# BENCH_BIN_DIR=DIR runs DIR's binaries (another commit's release build) instead of building.
# BENCH_TLS=0 runs the swarm without TLS (`vgas init --no-tls`); by default it has TLS, as
# shipped. Without `ray` in the rows asked for, Ray is not installed (nats-py from .tools/venv).
# Figures go to stdout as JSON lines; docs/benchmarks.md records them with this command.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$(pwd)
RAY_VERSION=2.60.0     # pinned: ray on PyPI
NATS_PY_VERSION=2.16.0 # pinned: nats-py on PyPI, as in ensure-tools.sh
NKEYS_PY_VERSION=0.2.1 # pinned: nkeys on PyPI, as in ensure-tools.sh
slots=${SLOTS:-4}

scripts/ensure-tools.sh >/dev/null
# shellcheck disable=SC1091
source .tools/env
venv="$root/.tools/bench-venv"
case " ${*:-ray} " in
  *" ray "*) ;;
  *) venv="$root/.tools/venv" ;;
esac
if [ "$venv" = "$root/.tools/bench-venv" ] && ! "$venv/bin/python" -c "import ray, nats, nkeys; assert ray.__version__ == '$RAY_VERSION'" 2>/dev/null; then
  echo "installing ray==$RAY_VERSION and nats-py==$NATS_PY_VERSION into $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q "ray==$RAY_VERSION" "nats-py==$NATS_PY_VERSION" "nkeys==$NKEYS_PY_VERSION"
fi
# BENCH_BIN_DIR: binaries built elsewhere (another commit, for a before/after pair).
if [ -n "${BENCH_BIN_DIR:-}" ]; then
  bin=$BENCH_BIN_DIR
else
  cargo build --release --workspace --bins --locked >&2
  target_dir=${CARGO_TARGET_DIR:-target}
  case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
  bin="$target_dir/release"
fi

work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]:1}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]:1}"; do wait "$pid" 2>/dev/null || true; done
  [ "${#pids[@]}" -gt 0 ] && { kill -TERM "${pids[0]}" 2>/dev/null || true; wait "${pids[0]}" 2>/dev/null || true; }
  [ -n "${KEEP_WORK:-}" ] && echo "kept $work" >&2 || rm -rf "$work"
}
trap cleanup EXIT

port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export VGAS_NATS_URL="nats://127.0.0.1:$port" VGAS_STATE_DIR="$work/state"
if [ "${BENCH_TLS:-1}" = 1 ]; then "$bin/vgas" init >/dev/null; else "$bin/vgas" init --no-tls >/dev/null; fi
# The repository's nats.conf, with this run's users, TLS, pid file, store and no monitoring
# port.
sed -e "s|\./\.vgas/jetstream|$work/js|" -e "s|\./\.vgas/nats.pid|$work/state/nats.pid|" \
  -e "s|\./\.vgas/|./state/|g" -e '/^http:/d' nats.conf >"$work/nats.conf"
"$NATS_SERVER_BIN" -c "$work/nats.conf" -p "$port" >"$work/nats.log" 2>&1 &
pids+=($!)
# Raw request-reply runs on a second server of the same binary, no auth (the client role
# may publish only vgas's own subjects).
raw_port=$("$venv/bin/python" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$NATS_SERVER_BIN" -a 127.0.0.1 -p "$raw_port" >"$work/nats-raw.log" 2>&1 &
pids+=($!)
export BENCH_RAW_URL="nats://127.0.0.1:$raw_port"
for p in "$port" "$raw_port"; do
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null && break; sleep 0.1; done
done
"$bin/vgas-master" --queue-capacity "${QUEUE_CAPACITY:-100000}" >"$work/master.log" 2>&1 &
pids+=($!)
"$bin/vgas-worker" --id bench-w1 --slots "$slots" >"$work/worker.log" 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  "$bin/vgas" status --json 2>/dev/null | grep -q '"bench-w1"' && break
  sleep 0.2
done

# The no-op WASI command: (memory 1) exported, `_start` that returns. Uploaded and run once.
printf '\x00\x61\x73\x6d\x01\x00\x00\x00\x01\x04\x01\x60\x00\x00\x03\x02\x01\x00\x05\x03\x01\x00\x01\x07\x13\x02\x06memory\x02\x00\x06_start\x00\x00\x0a\x04\x01\x02\x00\x0b' >"$work/noop.wasm"
"$bin/vgas" submit --wasm "$work/noop.wasm" >/dev/null
module="sha256:$(sha256sum "$work/noop.wasm" | cut -d' ' -f1)"

creds="$VGAS_STATE_DIR/creds/client.creds"
VGAS_NKEY_SEED=$(sed -n 's/^seed = "\(.*\)"/\1/p' "$creds")
export VGAS_NKEY_SEED BENCH_MODULE="$module"
if grep -q '^ca = ' "$creds"; then export VGAS_CA_FILE="$VGAS_STATE_DIR/tls/ca.pem"; fi
echo "# $(date -u +%FT%TZ) $(git rev-parse --short HEAD), binaries $bin, $(nproc) cores, worker slots $slots" >&2
if [ "${1:-}" = "--" ]; then
  # `scripts/bench-taskpath.sh -- CMD...`: CMD runs against this swarm instead (VGAS_NATS_URL,
  # VGAS_STATE_DIR, BENCH_LOGS set), for profiling a path by hand.
  shift
  BENCH_LOGS="$work" "$@"
  exit
fi
"$venv/bin/python" scripts/taskpath_bench.py "$@"
