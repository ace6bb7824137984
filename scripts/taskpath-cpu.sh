#!/usr/bin/env bash
# CPU per task of the swarm's processes over one row of scripts/taskpath_bench.py (ROW,
# default exec-run): the worker's (its reaped children, the tasks' own processes, included),
# the master's and nats-server's utime + stime from /proc/<pid>/stat before and after,
# divided by the tasks the row ran (WARMUP + LATENCY_N round trips, then the rate for
# WINDOW_S). CPU time moves less between runs than wall-clock rates on a noisy machine. Run it
# against the swarm bench-taskpath.sh starts:
#   [BENCH_BIN_DIR=dir] scripts/bench-taskpath.sh -- scripts/taskpath-cpu.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
row=${ROW:-exec-run}
worker=$(pgrep -f 'vgas-worker --id bench-w1' | head -1)
master=$(pgrep -f 'vgas-master --queue' | head -1)
server=$(pgrep -f "nats-server -c ${BENCH_LOGS:-}/nats.conf" | head -1)   # the swarm's, not the raw request-reply one
ticks() { awk '{print $14 + $15 + $16 + $17}' "/proc/$1/stat"; }
hz=$(getconf CLK_TCK)
bw=$(ticks "$worker"); bm=$(ticks "$master"); bn=$(ticks "$server")
out=$(.tools/venv/bin/python scripts/taskpath_bench.py "$row" 2>/dev/null | grep '"path"')
aw=$(ticks "$worker"); am=$(ticks "$master"); an=$(ticks "$server")
python3 - "$out" "$hz" "$bw" "$aw" "$bm" "$am" "$bn" "$an" "${LATENCY_N:-300}" "${WARMUP:-50}" "${WINDOW_S:-4}" <<'PY'
import json, sys
row = json.loads(sys.argv[1])
hz, bw, aw, bm, am, bn, an, lat, warm, window = map(float, sys.argv[2:])
tasks = lat + warm + row["tasks_per_s"] * window
ms = lambda a, b: round((b - a) / hz * 1000 / tasks, 3)
print(json.dumps({"path": row["path"], "p50_ms": row["p50_ms"], "tasks_per_s": row["tasks_per_s"],
                  "worker_cpu_ms_per_task": ms(bw, aw), "master_cpu_ms_per_task": ms(bm, am),
                  "nats_server_cpu_ms_per_task": ms(bn, an)}))
PY
