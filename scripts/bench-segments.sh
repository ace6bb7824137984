#!/usr/bin/env bash
# A build unit's overhead on the swarm, for units whose compile is short: UNITS (40) tiny C
# files, each including three one-line headers, built by `make -j1` through `vgas build` with
# every unit on the worker (no in-place compile, no host cache tier, the swarm's cache
# purged before each build), REPS (5) times. Prints one line per build: its wall time, and
# the `overhead_ms` and `compile_ms` of its units (p50, p90) from the `--json` updates.
# Runs against the swarm that scripts/bench-taskpath.sh starts:
#   BENCH_BIN_DIR=DIR scripts/bench-taskpath.sh -- scripts/bench-segments.sh
# The client is DIR's `vgas` (BIN=DIR picks another; target/release without either).
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bin=${BIN:-${BENCH_BIN_DIR:-$root/target/release}}
units=${UNITS:-40}
reps=${REPS:-5}
project=$(mktemp -d)
trap 'rm -rf "$project"' EXIT
cd "$project"
for h in a b c; do echo "#define ${h^^}_X 1" >"$h.h"; done
for i in $(seq 1 "$units"); do
  printf '#include "a.h"\n#include "b.h"\n#include "c.h"\nint f%d(int x){return x*%d+A_X+B_X+C_X;}\n' "$i" "$i" >"u$i.c"
done
printf 'OBJS=$(patsubst %%.c,%%.o,$(wildcard u*.c))\nall: $(OBJS)\n%%.o: %%.c\n\t$(CC) -O2 -c $< -o $@\nclean:\n\trm -f *.o\n' >Makefile
export VGAS_IN_PLACE=0 VGAS_HOST_CACHE_MB=0 VGAS_HOST_ID=bench-submitter
for r in $(seq 1 "$reps"); do
  make clean >/dev/null
  "$bin/vgas" build --purge-cache -- true >/dev/null 2>&1
  start=$(date +%s.%N)
  "$bin/vgas" build --json -- make -j1 >"updates-$r.json" 2>/dev/null
  end=$(date +%s.%N)
  python3 - "$start" "$end" "updates-$r.json" <<'PY'
import json, statistics, sys
start, end, path = float(sys.argv[1]), float(sys.argv[2]), sys.argv[3]
overhead, compile_ = [], []
for line in open(path):
    try:
        u = json.loads(line)
    except ValueError:
        continue
    if u.get("type") == "done" and u.get("origin", {}).get("from") == "worker":
        overhead.append(u["overhead_ms"])
        compile_.append(u["compile_ms"])
def p(xs, q):
    return sorted(xs)[min(len(xs) - 1, int(len(xs) * q))] if xs else None
print(json.dumps({"build_s": round(end - start, 3), "on_worker": len(overhead),
                  "overhead_ms_p50": statistics.median(overhead) if overhead else None,
                  "overhead_ms_p90": p(overhead, 0.9),
                  "compile_ms_p50": statistics.median(compile_) if compile_ else None}))
PY
done
