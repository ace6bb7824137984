#!/usr/bin/env bash
# The side-by-side C build benchmark (draft): one real third-party project (Lua 5.4.4, 34
# translation units, its own Makefile; scripts/fetch-c-project.sh), the same machine, the same
# parallelism N, in one run:
#   local   make -jN                                (after make clean)
#   distcc  make -jN CC="distcc gcc -std=gnu99"     against a distccd on 127.0.0.1 (--jobs N)
#   vgas    vgas build --stats -- make -jN          against a swarm on this machine (run_vgas,
#                                                   not runnable yet: see TODO(vgas-cli))
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
tools=${TOOLS:-local distcc vgas}
vgas_workers=${VGAS_BENCH_WORKERS:-1}   # one worker with N slots, as one distccd with --jobs N

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
ensure_distcc() {
  command -v distcc >/dev/null 2>&1 && command -v distccd >/dev/null 2>&1 && return 0
  say "installing distcc (apt-get)"
  local sudo=()
  [ "$(id -u)" = 0 ] || sudo=(sudo)
  if ! DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq distcc >"$logs/apt.log" 2>&1; then
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get update -qq >>"$logs/apt.log" 2>&1 || true
    DEBIAN_FRONTEND=noninteractive "${sudo[@]}" apt-get install -y -qq distcc >>"$logs/apt.log" 2>&1 \
      || { cat "$logs/apt.log" >&2; die "could not install distcc"; }
  fi
}

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
# ===========================================================================================
# run_vgas: the vgas build farm on a swarm started here as scripts/demo.sh does it (nats-server
# with nats.conf and users from `vgas init`, one master, workers), on loopback, mDNS off.
# NOT RUNNABLE YET: `vgas build` is still being written. Needs the release binaries
# (cargo build --release --workspace --bins --locked); without them it records "not run".
# ===========================================================================================
# The "vgas: 34 segments in 5.1s: 34 on workers, 0 from cache, 0 here, 0 failed" line.
vgas_summary() { grep -m1 -o '[0-9]* segments in .*' "$1" || echo "no summary line"; }
run_vgas() {
  local bin="${VGAS_BIN_DIR:-$root/target/release}"
  local vgas="$bin/vgas" b
  for b in vgas vgas-master vgas-worker; do
    if [ ! -x "$bin/$b" ]; then
      notes[vgas]="not run: $bin/$b missing (cargo build --release --workspace --bins --locked)"
      say "vgas: ${notes[vgas]}"
      return 0
    fi
  done
  "$root/scripts/ensure-tools.sh"
  # shellcheck disable=SC1091
  source "$root/.tools/env"

  # The swarm's own folder: nats.conf reads ./.vgas/auth.conf and keeps JetStream in
  # ./.vgas/jetstream, relative to where nats-server starts.
  local swarm="$work/swarm" port mport i slots
  mkdir -p "$swarm"
  cp "$root/nats.conf" "$swarm/nats.conf"
  "$vgas" init --state-dir "$swarm/.vgas" >"$logs/vgas-init.log" 2>&1 \
    || { cat "$logs/vgas-init.log" >&2; die "vgas init failed"; }
  port=$(free_port); mport=$(free_port)
  (cd "$swarm" && exec "$NATS_SERVER_BIN" -c nats.conf -p "$port" -m "$mport") >"$logs/nats-server.log" 2>&1 &
  pids+=($!)
  wait_port "$port" || { cat "$logs/nats-server.log" >&2; die "nats-server did not start on port $port"; }

  export VGAS_NATS_URL="nats://127.0.0.1:$port" VGAS_STATE_DIR="$swarm/.vgas" VGAS_NO_MDNS=true
  (cd "$swarm" && exec "$bin/vgas-master") >"$logs/vgas-master.log" 2>&1 &
  pids+=($!)
  slots=$(( jobs / vgas_workers )); [ "$slots" -ge 1 ] || slots=1
  for ((i = 1; i <= vgas_workers; i++)); do
    (cd "$swarm" && exec "$bin/vgas-worker" --id "bench-w$i" --slots "$slots") >"$logs/vgas-worker-$i.log" 2>&1 &
    pids+=($!)
  done
  local live=0
  for _ in $(seq 150); do
    live=0
    for ((i = 1; i <= vgas_workers; i++)); do
      "$vgas" status --json 2>/dev/null | grep -q "\"bench-w$i\"" && live=$((live + 1))
    done
    [ "$live" -eq "$vgas_workers" ] && break
    sleep 0.2
  done
  [ "$live" -eq "$vgas_workers" ] || die "only $live of $vgas_workers vgas workers came up (logs in $logs)"

  # The wrapper takes the compiler by PATH (gcc, cc, ...), which the Makefile's own
  # CC = gcc -std=gnu99 goes through.
  local cmd=("$vgas" build --stats -- make "-j$jobs" "$target") r t
  commands[vgas]="vgas build --purge-cache; make clean && vgas build --stats -- make -j$jobs $target   (in src/; rebuild: without the purge)"
  for ((r = 1; r <= reps; r++)); do
    make_clean
    # TODO(vgas-cli): empty the swarm's build cache so that this is a cold-cache build. The
    # flag is `vgas build --purge-cache` in the work in progress; confirm it once it lands.
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
  notes[vgas]="cache emptied before each clean build; rebuild from the warm cache; $vgas_workers worker(s) x $slots slots; binaries: $bin"
  unset VGAS_NATS_URL VGAS_STATE_DIR VGAS_NO_MDNS
  stop_all
}

# --- the run --------------------------------------------------------------------------------
say "$project ($units translation units), N=$jobs, $reps repetitions, in $work"
make_clean
timed "$logs/warmup.log" make "-j$jobs" "$target" >/dev/null
check_binary
for tool in $tools; do
  case "$tool" in
    local) run_local ;;
    distcc) run_distcc ;;
    vgas) run_vgas ;;
    *) die "unknown tool '$tool' (local, distcc, vgas)" ;;
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
  if [ -z "${clean_runs[$tool]:-}" ]; then
    echo "| $tool | - | - | - | - | ${notes[$tool]:-not run} |"
    continue
  fi
  c=$(median "${clean_runs[$tool]}"); rb=$(median "${rebuild_runs[$tool]}")
  ratio=-
  [ -n "$local_median" ] && ratio=$(awk -v a="$c" -v b="$local_median" 'BEGIN { printf "%.2fx", a / b }')
  echo "| $tool | $c | $ratio | $rb | $(fmt_runs "${clean_runs[$tool]}") / $(fmt_runs "${rebuild_runs[$tool]}") | ${notes[$tool]:-} |"
done
echo
echo "Commands (in $project's src/, a scratch copy of the tree from scripts/fetch-c-project.sh):"
echo
for tool in $tools; do
  [ -n "${commands[$tool]:-}" ] && echo "- $tool: \`${commands[$tool]}\`"
done
echo
echo "Reproduce: \`${VGAS_BIN_DIR:+VGAS_BIN_DIR=$VGAS_BIN_DIR }JOBS=$jobs REPS=$reps TOOLS=\"$tools\" scripts/bench-build.sh\`"
