#!/usr/bin/env bash
# The side-by-side C build benchmark: one real third-party project (Lua 5.4.4, 34
# translation units, its own Makefile; scripts/fetch-c-project.sh), the same machine, the same
# parallelism N, in one run:
#   local   make -jN                                (after make clean)
#   distcc  make -jN CC="distcc gcc -std=gnu99"     against a distccd on 127.0.0.1 (--jobs N)
#   vgas    vgas build --json --stats -- make -jN   against a swarm on this machine: one
#                                                   worker with N slots
#   vgas-scale  the same with 1..SCALE_MAX worker hosts of one slot each, the second and later
#               in network namespaces of their own (needs root and ip), clean builds only
# Each tool: REPS clean builds (median), then REPS rebuilds after `make clean` (median). distcc
# and a local make have no cache, so their rebuild is a full build again; vgas's clean build
# starts from an emptied build cache and its rebuild finds every object in it.
# One warm-up local build comes first (untimed), so the first timed run does not pay for a
# cold page cache. Every build must produce a `lua` that prints 2 for `print(1+1)`.
#
#   scripts/bench-build.sh                 # N = nproc, 3 repetitions, every tool
#   JOBS=4 REPS=5 scripts/bench-build.sh
#   TOOLS="local distcc" scripts/bench-build.sh
#   KEEP=1 scripts/bench-build.sh          # keep the scratch folder (build logs, distccd log)
#   VGAS_BIN_DIR=target/debug TOOLS=vgas scripts/bench-build.sh   # other vgas binaries
#
# Installs distcc with apt-get when it is missing. Every process it starts (distccd,
# nats-server, vgas-master, vgas-worker) is stopped on exit, however it exits.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=${JOBS:-$(nproc)}
reps=${REPS:-3}
tools=${TOOLS:-local distcc vgas vgas-scale}
vgas_workers=${VGAS_BENCH_WORKERS:-1}   # one worker with N slots, as one distccd with --jobs N
scale_max=${SCALE_MAX:-2}                # the scaling series: 1..SCALE_MAX worker hosts of one slot

say() { echo "bench-build: $*" >&2; }
die() { say "$*"; exit 1; }

# --- the project --------------------------------------------------------------------------
src=$("$root/scripts/fetch-c-project.sh" lua | tail -n1)
[ -f "$src/src/Makefile" ] || die "no Lua tree at '$src'"
project="Lua $(basename "$src" | sed 's/^lua-//')"
units=$(find "$src/src" -name '*.c' | wc -l)
target=linux                       # the Makefile's platform target (liblua.a, lua, luac)
project_cc="gcc -std=gnu99"        # the CC its Makefile sets; distcc wraps the same command

work=$(mktemp -d "${TMPDIR:-/tmp}/vgas-bench-build.XXXXXX")
cp -a "$src" "$work/project"
build_dir="$work/project/src"
logs="$work/logs"
mkdir -p "$logs"

# --- processes started here, stopped on exit -----------------------------------------------
pids=()            # in start order; stopped in reverse
stop_all() {
  local i pid
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    kill -TERM "$pid" 2>/dev/null || true
  done
  for ((i = ${#pids[@]} - 1; i >= 0; i--)); do
    pid=${pids[i]}
    # give each a few seconds to drain, then make sure
    for _ in $(seq 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}
forget_pid() { # $1 = a pid stopped already
  local keep=() p
  for p in "${pids[@]}"; do [ "$p" = "$1" ] || keep+=("$p"); done
  pids=("${keep[@]}")
}
cleanup() {
  local rc=$?
  stop_all
  cleanup_netns
  [ -n "${hub:-}" ] && ip addr del "$hub" dev lo 2>/dev/null || true
  if [ "${KEEP:-0}" = 1 ]; then say "kept $work"; else rm -rf "$work"; fi
  exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
wait_port() { # $1 = port; up to 10 s
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
  return 1
}

# --- timing ---------------------------------------------------------------------------------
now_ms() { echo $(( $(date +%s%N) / 1000000 )); }
# timed LOG CMD...: runs CMD in the build folder, output to LOG; prints seconds (3 decimals).
timed() {
  local log=$1 t0 t1
  shift
  t0=$(now_ms)
  if ! (cd "$build_dir" && "$@") >"$log" 2>&1; then
    tail -n 30 "$log" >&2
    die "failed: $* (log above, $log)"
  fi
  t1=$(now_ms)
  awk -v ms=$((t1 - t0)) 'BEGIN { printf "%.3f\n", ms / 1000 }'
}
median() { tr ' ' '\n' <<<"$*" | grep . | sort -g | awk '{ v[NR] = $1 } END { if (NR % 2) print v[(NR + 1) / 2]; else printf "%.3f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
make_clean() { (cd "$build_dir" && make clean) >/dev/null 2>&1 || die "make clean failed in $build_dir"; }
check_binary() {
  local out
  out=$(cd "$build_dir" && ./lua -e 'print(1+1)' 2>&1) || die "the built lua does not run: $out"
  [ "$out" = 2 ] || die "the built lua printed '$out', not 2"
}

# results: name -> "clean runs" / "rebuild runs" / note
declare -A clean_runs rebuild_runs notes commands

# --- 1. local make ------------------------------------------------------------------------
run_local() {
  local r t cmd=(make "-j$jobs" "$target")
  commands[local]="make clean && ${cmd[*]}   (in src/)"
  for ((r = 1; r <= reps; r++)); do
    make_clean
    t=$(timed "$logs/local-clean-$r.log" "${cmd[@]}"); check_binary
    clean_runs[local]+="$t "
    say "local clean build $r/$reps: ${t}s"
  done
  for ((r = 1; r <= reps; r++)); do
    make_clean
    t=$(timed "$logs/local-rebuild-$r.log" "${cmd[@]}"); check_binary
    rebuild_runs[local]+="$t "
    say "local rebuild after make clean $r/$reps: ${t}s"
  done
  notes[local]="no cache: the rebuild is a full build"
}

# --- 2. distcc with a distccd on 127.0.0.1 -------------------------------------------------
ensure_distcc() { "$root/scripts/ensure-apt.sh" distcc; }

run_distcc() {
  ensure_distcc
  local port dpid r t sent before
  port=$(free_port)
  # --no-detach keeps distccd our child, so the trap can stop it; run as root it drops to the
  # distccd user, hence the log on stderr (a file we opened) rather than --log-file.
  distccd --daemon --no-detach --allow 127.0.0.1 --listen 127.0.0.1 --port "$port" --jobs "$jobs" \
    --log-stderr --log-level info 2>"$logs/distccd.log" &
  dpid=$!
  pids+=("$dpid")
  wait_port "$port" || { cat "$logs/distccd.log" >&2; die "distccd did not listen on 127.0.0.1:$port"; }
  mkdir -p "$work/distcc-state"
  # DISTCC_FALLBACK=0: a compile that cannot go to distccd fails the build instead of quietly
  # running here, so every timed compile went through the daemon.
  local env=(DISTCC_HOSTS="127.0.0.1:$port/$jobs" DISTCC_DIR="$work/distcc-state" DISTCC_FALLBACK=0)
  local cmd=(make "-j$jobs" "$target" "CC=distcc $project_cc")
  commands[distcc]="distccd --daemon --no-detach --log-stderr --log-level info --allow 127.0.0.1 --listen 127.0.0.1 --port $port --jobs $jobs; make clean && ${env[*]} make -j$jobs $target CC=\"distcc $project_cc\"   (in src/)"
  compiles() { grep -c 'COMPILE_OK' "$logs/distccd.log" || true; }
  for kind in clean rebuild; do
    for ((r = 1; r <= reps; r++)); do
      make_clean
      before=$(compiles)
      t=$(timed "$logs/distcc-$kind-$r.log" env "${env[@]}" "${cmd[@]}"); check_binary
      sent=$(( $(compiles) - before ))
      [ "$sent" -ge "$units" ] || die "distccd compiled $sent units, expected $units (see $logs/distccd.log)"
      if [ "$kind" = clean ]; then clean_runs[distcc]+="$t "; else rebuild_runs[distcc]+="$t "; fi
      say "distcc $([ "$kind" = clean ] && echo "clean build" || echo "rebuild after make clean") $r/$reps: ${t}s ($sent compiles on distccd)"
    done
  done
  notes[distcc]="distccd on 127.0.0.1, --jobs $jobs; no cache: the rebuild is a full build"
  kill -TERM "$dpid" 2>/dev/null || true
  wait "$dpid" 2>/dev/null || true
  forget_pid "$dpid"
}

# --- 3. vgas --------------------------------------------------------------------------------
# The vgas build farm on a swarm started here as scripts/demo.sh does it (nats-server with
# nats.conf and users from `vgas init`, one master, workers), mDNS off. With the scaling series
# (tool vgas-scale) nats-server listens on the host end of a veth pair, and every worker after
# the first runs in a network namespace of its own, reaching it over that veth as a worker on
# another host would. Needs the release binaries (cargo build --release --workspace --bins
# --locked); without them it records "not run".
target_dir=${CARGO_TARGET_DIR:-target}
case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
vgas_bin="${VGAS_BIN_DIR:-$target_dir/release}"
vgas="$vgas_bin/vgas"
swarm_up=""         # "addr port" once started
worker_pids=()
netns=()            # namespaces made here, removed on exit
veths=()
nats_addr=127.0.0.1
cleanup_netns() {
  local n v
  for v in "${veths[@]}"; do ip link del "$v" 2>/dev/null || true; done
  for n in "${netns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  veths=(); netns=()
}

have_vgas() {
  local b
  for b in vgas vgas-master vgas-worker; do
    [ -x "$vgas_bin/$b" ] || { echo "not run: $vgas_bin/$b missing (cargo build --release --workspace --bins --locked)"; return 1; }
  done
}

# A veth pair whose far end sits in a new namespace; sets nats_addr to the near end.
tag=$(printf '%x' $(( $$ & 0xffff )))
subnet=$(( 1 + $$ % 250 ))
make_host_ns() { # $1 = index (2, 3, ...); sets host_ns to the namespace made
  local i=$1 ns="vgb${tag}h$1" near="vgb${tag}n$1" far="vgb${tag}f$1"
  ip netns add "$ns"; netns+=("$ns")
  ip link add "$near" type veth peer name "$far"; veths+=("$near")
  ip link set "$far" netns "$ns"
  ip addr add "10.214.$subnet.$((4 * i - 3))/30" dev "$near"
  ip link set "$near" up
  ip -n "$ns" addr add "10.214.$subnet.$((4 * i - 2))/30" dev "$far"
  ip -n "$ns" link set "$far" up
  ip -n "$ns" link set lo up
  ip -n "$ns" route add default via "10.214.$subnet.$((4 * i - 3))"
  host_ns=$ns
}
# The address nats-server listens on when workers run in namespaces: an extra address on this
# namespace's loopback, reached from each worker namespace through its veth (default route).
hub=""
make_hub() {
  hub="10.214.$subnet.254/32"
  ip addr add "$hub" dev lo
  nats_addr="10.214.$subnet.254"
}

start_swarm() { # $1 = address nats-server listens on
  "$root/scripts/ensure-tools.sh"
  # shellcheck disable=SC1091
  source "$root/.tools/env"
  local swarm="$work/swarm" port mport
  rm -rf "$swarm"; mkdir -p "$swarm"
  cp "$root/nats.conf" "$swarm/nats.conf"
  "$vgas" init --state-dir "$swarm/.vgas" >"$logs/vgas-init.log" 2>&1 \
    || { cat "$logs/vgas-init.log" >&2; die "vgas init failed"; }
  port=$(free_port); mport=$(free_port)
  (cd "$swarm" && exec "$NATS_SERVER_BIN" -c nats.conf -a "$1" -p "$port" -m "$mport") >"$logs/nats-server.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$port") 2>/dev/null && break; sleep 0.1; done
  (exec 3<>"/dev/tcp/$1/$port") 2>/dev/null || { cat "$logs/nats-server.log" >&2; die "nats-server did not start on $1:$port"; }
  export VGAS_NATS_URL="nats://$1:$port" VGAS_STATE_DIR="$swarm/.vgas" VGAS_NO_MDNS=true
  (cd "$swarm" && exec "$vgas_bin/vgas-master") >"$logs/vgas-master.log" 2>&1 &
  pids+=($!)
  swarm_up="$1 $port"
}

# start_workers N SLOTS [NETNS]: N workers of SLOTS slots; with NETNS=1 every worker after the
# first runs in a namespace of its own. Waits until all are live.
start_workers() {
  local n=$1 slots=$2 in_ns=${3:-0} i live
  for ((i = 1; i <= n; i++)); do
    if [ "$in_ns" = 1 ] && [ "$i" -gt 1 ]; then
      make_host_ns "$i"
      (cd "$work/swarm" && VGAS_HOST_ID="bench-host-$i" exec ip netns exec "$host_ns" "$vgas_bin/vgas-worker" --id "bench-w$i" --slots "$slots") >"$logs/vgas-worker-$n-$i.log" 2>&1 &
    else
      (cd "$work/swarm" && exec "$vgas_bin/vgas-worker" --id "bench-w$i" --slots "$slots") >"$logs/vgas-worker-$n-$i.log" 2>&1 &
    fi
    worker_pids+=($!); pids+=($!)
  done
  for _ in $(seq 150); do
    live=$("$vgas" status --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("live", [])))' 2>/dev/null || echo 0)
    [ "$live" -eq "$n" ] && return 0
    sleep 0.2
  done
  die "only $live of $n vgas workers came up (logs in $logs)"
}
stop_workers() {
  local p
  for p in "${worker_pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${worker_pids[@]}"; do
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true
    forget_pid "$p"
  done
  worker_pids=()
  cleanup_netns
  # The master forgets them after 3 missed heartbeats.
  for _ in $(seq 100); do
    [ "$("$vgas" status --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin).get("live", [])))' 2>/dev/null || echo 1)" = 0 ] && break
    sleep 0.2
  done
}

# The summary of a `vgas build --json` log: the Finished update's counts.
vgas_summary() {
  python3 - "$1" <<'PY'
import json, sys
fin = None
for line in open(sys.argv[1], errors="replace"):
    if line.startswith("{"):
        try:
            u = json.loads(line)
        except ValueError:
            continue
        if u.get("type") == "finished":
            fin = u["stats"]
if fin is None:
    print("no finished update")
else:
    print(f'{fin["segments"]} segments: {fin["remote"]} on workers, {fin["cache_hits"]} from cache, '
          f'{fin["local"]} here, {fin["failed"]} failed, per worker {fin["per_worker"]}')
PY
}
# Per-segment overhead (submit to result minus the compile) over the given --json logs.
vgas_overhead() {
  python3 - "$@" <<'PY'
import json, sys
over, comp = [], []
for path in sys.argv[1:]:
    for line in open(path, errors="replace"):
        if not line.startswith("{"):
            continue
        try:
            u = json.loads(line)
        except ValueError:
            continue
        if u.get("type") == "done" and isinstance(u.get("origin"), dict) and "worker" in u["origin"]:
            over.append(u["overhead_ms"]); comp.append(u["compile_ms"])
def pct(v, p):
    v = sorted(v)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else 0
print(f"{len(over)} segments; overhead p50 {pct(over, 50)} ms, p90 {pct(over, 90)} ms, max {max(over or [0])} ms; "
      f"compile on the worker p50 {pct(comp, 50)} ms")
PY
}
build_cmd() { echo "$vgas" build --json --stats -- make "-j$jobs" "$target"; }

run_vgas() {
  local why
  if ! why=$(have_vgas); then notes[vgas]=$why; say "vgas: $why"; return 0; fi
  [ -n "$swarm_up" ] || start_swarm "$nats_addr"
  start_workers "$vgas_workers" "$(( jobs / vgas_workers > 0 ? jobs / vgas_workers : 1 ))"
  local r t cmd
  read -ra cmd <<<"$(build_cmd)"
  commands[vgas]="vgas build --purge-cache; make clean && vgas build --json --stats -- make -j$jobs $target   (in src/; rebuild: without the purge)"
  for ((r = 1; r <= reps; r++)); do
    make_clean
    "$vgas" build --purge-cache >"$logs/vgas-purge-$r.log" 2>&1 \
      || { cat "$logs/vgas-purge-$r.log" >&2; die "could not empty the vgas build cache"; }
    t=$(timed "$logs/vgas-clean-$r.log" "${cmd[@]}"); check_binary
    clean_runs[vgas]+="$t "
    say "vgas clean build (cold cache) $r/$reps: ${t}s ($(vgas_summary "$logs/vgas-clean-$r.log"))"
  done
  for ((r = 1; r <= reps; r++)); do
    make_clean
    t=$(timed "$logs/vgas-rebuild-$r.log" "${cmd[@]}"); check_binary
    rebuild_runs[vgas]+="$t "
    say "vgas rebuild after make clean (warm cache) $r/$reps: ${t}s ($(vgas_summary "$logs/vgas-rebuild-$r.log"))"
  done
  overhead_line=$(vgas_overhead "$logs"/vgas-clean-*.log)
  say "vgas per-segment overhead: $overhead_line"
  notes[vgas]="cache emptied before each clean build; rebuild from the warm cache; $vgas_workers worker x $(( jobs / vgas_workers )) slots"
  stop_workers
}

# The scaling series: 1, 2, ... SCALE_MAX workers of one slot each (the second and later in
# network namespaces), clean builds from an empty cache.
declare -A scale_runs
run_vgas_scale() {
  local why w r t cmd
  if ! why=$(have_vgas); then notes[vgas-scale]=$why; say "vgas-scale: $why"; return 0; fi
  [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 || { notes[vgas-scale]="not run: needs root and ip for namespaces"; return 0; }
  read -ra cmd <<<"$(build_cmd)"
  for ((w = 1; w <= scale_max; w++)); do
    start_workers "$w" 1 1
    for ((r = 1; r <= reps; r++)); do
      make_clean
      "$vgas" build --purge-cache >/dev/null 2>&1 || die "could not empty the vgas build cache"
      t=$(timed "$logs/vgas-scale-$w-$r.log" "${cmd[@]}"); check_binary
      scale_runs[$w]+="$t "
      say "vgas, $w worker host(s) x 1 slot, clean build $r/$reps: ${t}s ($(vgas_summary "$logs/vgas-scale-$w-$r.log"))"
    done
    stop_workers
  done
}

# --- the run --------------------------------------------------------------------------------
say "$project ($units translation units), N=$jobs, $reps repetitions, in $work"
make_clean
timed "$logs/warmup.log" make "-j$jobs" "$target" >/dev/null
check_binary
case " $tools " in
  *" vgas-scale "*) [ "$(id -u)" = 0 ] && command -v ip >/dev/null 2>&1 && make_hub ;;
esac
overhead_line=""
for tool in $tools; do
  case "$tool" in
    local) run_local ;;
    distcc) run_distcc ;;
    vgas) run_vgas ;;
    vgas-scale) run_vgas_scale ;;
    *) die "unknown tool '$tool' (local, distcc, vgas, vgas-scale)" ;;
  esac
done

# --- the table ------------------------------------------------------------------------------
fmt_runs() { echo "$1" | xargs; }
local_median=""
[ -n "${clean_runs[local]:-}" ] && local_median=$(median "${clean_runs[local]}")
echo
echo "## $project: clean build and rebuild, N=$jobs, median of $reps"
echo
echo "Machine: $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo), $(gcc --version | head -n1), GNU Make $(make --version | head -n1 | awk '{ print $3 }')$(command -v distcc >/dev/null 2>&1 && echo ", $(distcc --version | head -n1 | awk '{ print $1, $2 }')")"
echo
echo "| tool | clean build median (s) | ratio to local | rebuild after make clean median (s) | runs: clean / rebuild (s) | note |"
echo "| --- | --- | --- | --- | --- | --- |"
for tool in $tools; do
  [ "$tool" = vgas-scale ] && continue
  if [ -z "${clean_runs[$tool]:-}" ]; then
    echo "| $tool | - | - | - | - | ${notes[$tool]:-not run} |"
    continue
  fi
  c=$(median "${clean_runs[$tool]}"); rb=$(median "${rebuild_runs[$tool]}")
  ratio=-
  [ -n "$local_median" ] && ratio=$(awk -v a="$c" -v b="$local_median" 'BEGIN { printf "%.2fx", a / b }')
  echo "| $tool | $c | $ratio | $rb | $(fmt_runs "${clean_runs[$tool]}") / $(fmt_runs "${rebuild_runs[$tool]}") | ${notes[$tool]:-} |"
done
if [ -n "${clean_runs[local]:-}" ] && [ -n "${rebuild_runs[vgas]:-}" ]; then
  echo
  echo "vgas rebuild after make clean vs local clean build: $(awk -v a="$local_median" -v b="$(median "${rebuild_runs[vgas]}")" 'BEGIN { printf "%.1fx faster", a / b }')"
fi
[ -n "$overhead_line" ] && { echo; echo "vgas per-segment overhead (clean builds): $overhead_line"; }
if [ -n "${scale_runs[1]:-}" ]; then
  echo
  echo "### Worker hosts added (one slot each; host 2 and later in their own network namespace), clean builds, cold cache"
  echo
  echo "| worker hosts | clean build median (s) | vs 1 host | runs (s) |"
  echo "| --- | --- | --- | --- |"
  one=$(median "${scale_runs[1]}")
  for ((w = 1; w <= scale_max; w++)); do
    [ -n "${scale_runs[$w]:-}" ] || continue
    m=$(median "${scale_runs[$w]}")
    echo "| $w | $m | $(awk -v a="$m" -v b="$one" 'BEGIN { printf "%.2fx", a / b }') | $(fmt_runs "${scale_runs[$w]}") |"
  done
fi
[ -n "${notes[vgas-scale]:-}" ] && { echo; echo "vgas-scale: ${notes[vgas-scale]}"; }
echo
echo "Commands (in $project's src/, a scratch copy of the tree from scripts/fetch-c-project.sh):"
echo
for tool in $tools; do
  [ -n "${commands[$tool]:-}" ] && echo "- $tool: \`${commands[$tool]}\`"
done
echo
echo "Reproduce: \`${VGAS_BIN_DIR:+VGAS_BIN_DIR=$VGAS_BIN_DIR }JOBS=$jobs REPS=$reps TOOLS=\"$tools\" scripts/bench-build.sh\`"
