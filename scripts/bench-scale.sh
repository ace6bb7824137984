#!/usr/bin/env bash
# Scaling, measured with CPU sets on one 2-core machine: Lua 5.4.4 (34 units, its own
# Makefile) built with the submitting side pinned to core 0 and the compile hosts, each in a
# network namespace of its own, pinned to core 1. In one run:
#   local   make -j2, pinned to core 0                            one core, no help
#   distcc  make -jJ CC="distcc gcc" on core 0 (DISTCC_HOSTS="localhost/L <host>/2"); distccd
#           on core 1
#   icecc   make -jJ CC="icecc gcc" on core 0 with icecc-scheduler and a local iceccd taking L
#           jobs (-m L); iceccd on core 1
#   vgas    vgas build -- make -jJ on core 0 with nats-server and vgas-master, VGAS_LOCAL_SLOTS=L;
#           vgas-worker on core 1 (its own VGAS_HOST_ID: another host)
# L (LOCAL_SLOTS, default 1): compiles each tool keeps on the submitting core, beside preprocessing
# the others: without it no tool can pass what one core does alone, since the compiles are
# most of the work and would all land on the other core.
# Layouts: "one host" (one compile host with 2 slots on core 1) and "two half hosts" (two
# compile hosts of 1 slot each, both on core 1: what each tool's scheduler does with hosts
# that are slower than they say). Each: every tool's daemons at once, a warm-up build of
# each (icecc builds its compiler environment then), then REPS rounds of one clean build of
# each tool in turn, each round starting one tool further on (the machine's drift over a
# run reaches all alike), median. vgas's cache is purged before each.
#
#   scripts/bench-scale.sh                        # REPS=3, J=4, every tool
#   REPS=1 TOOLS="local vgas" scripts/bench-scale.sh
#   VGAS_B_BIN_DIR=dir TOOLS="local icecc vgas vgasb" scripts/bench-scale.sh
#                                                 # vgasb: the `vgas` client of another build
#                                                 # on the same swarm, interleaved (an A/B pair)
#
# Needs root (ip netns, taskset, mounts for icecc's second daemon) and 2 cores or more.
# Installs distcc and icecc with apt-get when missing. Every process, namespace and address it
# makes is removed on exit.
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
reps=${REPS:-3}
j=${J:-4}
local_slots=${LOCAL_SLOTS:-1}
tools=${TOOLS:-local distcc icecc vgas}
bin=${VGAS_BIN_DIR:-$root/target/release}
say() { echo "bench-scale: $*" >&2; }
die() { say "$*"; exit 1; }
[ "$(nproc)" -ge 2 ] || die "needs 2 cores"
for b in vgas vgas-master vgas-worker; do [ -x "$bin/$b" ] || die "no $bin/$b: cargo build --release --workspace --bins"; done
"$root/scripts/ensure-apt.sh" distcc icecc
"$root/scripts/ensure-tools.sh"
# shellcheck disable=SC1091
source "$root/.tools/env"
src=$("$root/scripts/fetch-c-project.sh" lua | tail -n1)

work=$(mktemp -d "${TMPDIR:-/tmp}/vgas-bench-scale.XXXXXX")
chmod 755 "$work"; mkdir -m 1777 "$work/logs"   # icecc's daemons log as the icecc user
tag=$$; subnet=$(( $$ % 200 + 20 ))
pids=(); netns=(); veths=(); hub=""
# Every background process runs in a process group of its own (setsid), so stopping it stops
# what it started too (distccd's and iceccd's children).
stop_all() {
  local p
  for p in "${pids[@]}"; do kill -TERM -- "-$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  pids=()
}
cleanup() {
  stop_all
  local n
  for n in "${veths[@]}"; do ip link del "$n" 2>/dev/null || true; done
  for n in "${netns[@]}"; do ip netns del "$n" 2>/dev/null || true; done
  [ -n "$hub" ] && ip addr del "$hub" dev lo 2>/dev/null || true
  [ "${KEEP:-0}" = 1 ] && say "kept $work" || rm -rf "$work"
}
trap cleanup EXIT

# --- hosts: namespaces reached from here through a veth each --------------------------------
hub="10.215.$subnet.254/32"; hub_ip="10.215.$subnet.254"
ip addr add "$hub" dev lo
host_ip=()
for i in 1 2; do
  ns="vgs${tag}h$i" near="vgs${tag}n$i" far="vgs${tag}f$i"
  ip netns add "$ns"; netns+=("$ns")
  ip link add "$near" type veth peer name "$far"; veths+=("$near")
  ip link set "$far" netns "$ns"
  ip addr add "10.215.$subnet.$((4 * i - 3))/30" dev "$near"; ip link set "$near" up
  ip -n "$ns" addr add "10.215.$subnet.$((4 * i - 2))/30" dev "$far"
  ip -n "$ns" link set "$far" up; ip -n "$ns" link set lo up
  ip -n "$ns" route add default via "10.215.$subnet.$((4 * i - 3))"
  host_ip[$i]="10.215.$subnet.$((4 * i - 2))"
done
here() { taskset -c 0 "$@"; }
# bg_here CMD... / bg_host I CMD...: CMD in the background on core 0 here / on core 1 in host I.
bg_here() { setsid taskset -c 0 "$@" & pids+=($!); }
bg_host() { local i=$1; shift; setsid ip netns exec "vgs${tag}h$i" taskset -c 1 "$@" & pids+=($!); }
wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done; return 1; }

tree="$work/lua"; cp -a "$src" "$tree"
now() { date +%s.%N; }
median() { python3 -c 'import statistics,sys; print(f"{statistics.median(map(float, sys.argv[1:])):.2f}")' "$@"; }
# cpu_ticks: "busy idle" jiffies of cores 0 and 1, from /proc/stat (for how full each core was).
cpu_ticks() { awk '/^cpu[01] /{ printf "%d %d ", $2+$3+$4+$7+$8+$9, $5+$6 }' /proc/stat; }
# busy_pct BEFORE AFTER: "core 0 N%, core 1 M%" busy between two cpu_ticks readings.
busy_pct() {
  python3 -c 'import sys; a=list(map(int,sys.argv[1].split())); b=list(map(int,sys.argv[2].split()))
print(", ".join(f"core {c} {100*(b[2*c]-a[2*c])/max(1,(b[2*c]-a[2*c])+(b[2*c+1]-a[2*c+1])):.0f}%" for c in (0,1)))' "$1" "$2"
}
# varz PORT: "messages-in bytes-in bytes-out JetStream-API-calls" of the nats-server monitored there.
varz() {
  python3 -c 'import json,sys,urllib.request as u
g=lambda p: json.load(u.urlopen(f"http://127.0.0.1:{sys.argv[1]}/{p}"))
v=g("varz"); print(v["in_msgs"], v["in_bytes"], v["out_bytes"], g("jsz")["api"]["total"])' "$1"
}
# connz PORT: every connection's "cid name in-bytes out-bytes" (closed ones too), one per line.
connz() {
  python3 -c 'import json,sys,urllib.request as u
c=json.load(u.urlopen(f"http://127.0.0.1:{sys.argv[1]}/connz?state=all&limit=4096"))
for x in c["connections"]: print(x["cid"], (x.get("name") or "?").replace(" ","_"), x["in_bytes"], x["out_bytes"])' "$1"
}
# connz_per_build BEFORE AFTER N: bytes into and out of the server per build, by connection
# name (a connection opened between the two counts from zero).
connz_per_build() {
  python3 -c 'import sys,collections as c
def rd(t): return {l.split()[0]: l.split()[1:] for l in t.splitlines() if l.strip()}
a, b, n = rd(sys.argv[1]), rd(sys.argv[2]), int(sys.argv[3])
tot = c.defaultdict(lambda: [0, 0])
for cid, (name, i, o) in b.items():
    i0, o0 = (int(a[cid][1]), int(a[cid][2])) if cid in a else (0, 0)
    name = name.split("_")[0] if name.startswith("vgas") else name
    tot[name][0] += int(i) - i0; tot[name][1] += int(o) - o0
print(", ".join(f"{k} {v[0]/n/1e6:.1f} MB in, {v[1]/n/1e6:.1f} MB out" for k, v in sorted(tot.items())))' "$1" "$2" "$3"
}
# varz_per_build BEFORE AFTER N: what the server handled per build, in words.
varz_per_build() {
  python3 -c 'import sys; a=list(map(int,sys.argv[1].split())); b=list(map(int,sys.argv[2].split())); n=int(sys.argv[3])
d=[(y-x)/n for x,y in zip(a,b)]
print(f"{d[0]:.0f} messages in, {d[1]/1e6:.1f} MB in, {d[2]/1e6:.1f} MB out, {d[3]:.0f} JetStream API calls")' "$1" "$2" "$3"
}
check_lua() { [ "$(echo 'print(1+1)' | "$tree/src/lua" -)" = 2 ] || die "$1: the built lua does not work"; }

# one_build NAME R FN: one clean build of tool NAME by its build function FN (rep R; 0 is the
# warm-up, neither timed nor recorded); prints its seconds.
one_build() {
  local name=$1 r=$2 fn=$3 t0 t1 c0 c1 perf_pid log
  log="$work/$name-$r.log"
  make -s -C "$tree/src" clean >/dev/null
  case "$name" in vgas*) "$bin/vgas" build --purge-cache >/dev/null 2>&1 || true ;; esac
  # PERF_DIR=dir: each timed build also recorded system-wide with perf, into dir/NAME-R.data.
  [ "$r" -gt 0 ] && [ -n "${PERF_DIR:-}" ] && { perf record -q -a -F 999 -o "$PERF_DIR/$name-$r.data" 2>/dev/null & perf_pid=$!; sleep 0.5; }
  c0=$(cpu_ticks); t0=$(now)
  "$fn" >"$log" 2>&1 || { tail -20 "$log" >&2; die "$name: build $r failed"; }
  t1=$(now); c1=$(cpu_ticks)
  [ "$r" -gt 0 ] && [ -n "${PERF_DIR:-}" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
  check_lua "$name"
  [ "$r" -gt 0 ] && say "$name, $lname, build $r: $(python3 -c "print(f'{$t1 - $t0:.2f}')") s, busy: $(busy_pct "$c0" "$c1")"
  python3 -c "print($t1 - $t0)"
}

# start_TOOL NHOSTS SLOTS: TOOL's daemons for a layout; build_TOOL: one build with TOOL.
start_local() { :; }
build_local() { here make -s -C "$tree/src" -j2 linux; }

start_distcc() {
  local i
  distcc_hosts=""; [ "$local_slots" -gt 0 ] && distcc_hosts="localhost/$local_slots "
  for ((i = 1; i <= $1; i++)); do
    bg_host "$i" distccd --daemon --no-detach --allow 10.215.0.0/16 --listen "${host_ip[$i]}" --port 3632 \
      --jobs "$2" --log-stderr --log-level warning 2>"$work/distccd-$i.log"
    wait_port "${host_ip[$i]}" 3632 || die "distccd $i did not start"
    distcc_hosts+="${host_ip[$i]}/$2 "
  done
  mkdir -p "$work/distcc"
}
build_distcc() {
  DISTCC_HOSTS="$distcc_hosts" DISTCC_DIR="$work/distcc" here make -s -C "$tree/src" -j"$j" linux "CC=distcc gcc -std=gnu99"
}

start_icecc() {
  local i
  bg_here icecc-scheduler -vv -n "vgs$tag" -p 8765 -l "$work/logs/scheduler.log"
  wait_port 127.0.0.1 8765 || die "icecc-scheduler did not start"
  mkdir -p "$work/icecc-local"; chown icecc: "$work/icecc-local" 2>/dev/null || true
  bg_here iceccd -n "vgs$tag" -s "$hub_ip:8765" -m "$local_slots" --no-remote -b "$work/icecc-local" -N submitter \
    -vv -l "$work/logs/iceccd-local.log"
  for ((i = 1; i <= $1; i++)); do
    mkdir -p "$work/icecc-$i"; chown icecc: "$work/icecc-$i" 2>/dev/null || true
    # Its own /var/run/icecc, so its socket does not replace the local daemon's.
    bg_host "$i" unshare -m sh -c "mount -t tmpfs tmpfs /var/run/icecc && exec iceccd -n vgs$tag \
      -s $hub_ip:8765 -m $2 -b $work/icecc-$i -N host$i -vv -l $work/logs/iceccd-$i-$lkey.log"
  done
  sleep 3   # the daemons register with the scheduler
}
build_icecc() { here make -s -C "$tree/src" -j"$j" linux "CC=icecc gcc -std=gnu99"; }

start_vgas() {
  local i swarm="$work/swarm-$lkey"
  mkdir -p "$swarm"; cp "$root/nats.conf" "$swarm/"
  export VGAS_STATE_DIR="$swarm/.vgas" VGAS_NATS_URL="nats://$hub_ip:4333" VGAS_NO_MDNS=true
  "$bin/vgas" init >/dev/null
  mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cd "$swarm"   # nats.conf's paths are relative to where it runs
  bg_here "$NATS_SERVER_BIN" -c nats.conf -a "$hub_ip" -p 4333 -m "$mport" >"$work/nats-$lkey.log" 2>&1
  cd "$root"
  wait_port "$hub_ip" 4333 || die "nats-server did not start"
  bg_here "$bin/vgas-master" >"$work/master-$lkey.log" 2>&1
  for ((i = 1; i <= $1; i++)); do
    VGAS_HOST_ID="bench-scale-host$i" bg_host "$i" "$bin/vgas-worker" --id "h$i" --slots "$2" \
      >"$work/worker-$i-$lkey.log" 2>&1
  done
  for _ in $(seq 100); do
    [ "$("$bin/vgas" status --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["live"]))' 2>/dev/null || echo 0)" = "$1" ] && break
    sleep 0.2
  done
}
# vgas_build DIR: one build through DIR's `vgas` client.
vgas_build() { VGAS_LOCAL_SLOTS=$local_slots here "$1/vgas" build -- make -s -C "$tree/src" -j"$j" linux; }
build_vgas() { vgas_build "$bin"; }
# vgasb: another build's client (VGAS_B_BIN_DIR) on the swarm `vgas` started (list vgas first).
start_vgasb() {
  [ -x "${VGAS_B_BIN_DIR:-}/vgas" ] || die "vgasb needs VGAS_B_BIN_DIR with a vgas binary"
  [ -n "${mport:-}" ] || die "vgasb builds on vgas's swarm: list vgas before vgasb in TOOLS"
}
build_vgasb() { vgas_build "$VGAS_B_BIN_DIR"; }

declare -A result
layouts=("one host:1:2" "two half hosts:2:1")   # name:hosts:slots each

# Per layout: every tool's daemons up at once, a warm-up build each (icecc builds its compiler
# environment then), then the timed builds rep by rep, one of each tool in turn, so that the
# machine's drift over a run reaches every tool alike.
for layout in "${layouts[@]}"; do
  IFS=: read -r lname nhosts slots <<<"$layout"
  lkey=${lname// /-}
  read -r -a active <<<"$tools"
  for tool in "${active[@]}"; do say "$tool, $lname: starting"; "start_$tool" "$nhosts" "$slots"; done
  for tool in "${active[@]}"; do one_build "$tool" 0 "build_$tool" >/dev/null; done
  [ -n "${mport:-}" ] && { v0=$(varz "$mport"); k0=$(connz "$mport"); }
  declare -A times=()
  for ((r = 1; r <= reps; r++)); do
    # Each round starts one tool further on, so no tool always follows the same one.
    for ((k = 0; k < ${#active[@]}; k++)); do
      tool=${active[$(((r + k) % ${#active[@]}))]}
      times[$tool]+="$(one_build "$tool" "$r" "build_$tool") "
    done
  done
  # The timed builds on vgas's swarm: vgasb's run there too.
  on_swarm=0
  for tool in "${active[@]}"; do case "$tool" in vgas*) on_swarm=$((on_swarm + reps)) ;; esac; done
  for tool in "${active[@]}"; do
    # shellcheck disable=SC2086
    result[$tool,$lname]=$(median ${times[$tool]})
    case "$tool" in
      icecc) say "icecc, $lname: $(cat "$work"/logs/iceccd-[12]-"$lkey".log | grep -c "Remote compilation completed" || true) remote compiles in the last $((reps + 1)) builds" ;;
      vgas) say "vgas, $lname: nats-server per build: $(varz_per_build "$v0" "$(varz "$mport")" "$on_swarm")"
            say "vgas, $lname: by connection, per build: $(connz_per_build "$k0" "$(connz "$mport")" "$on_swarm")" ;;
    esac
    case "$tool" in
      vgas*) label=""; [ "$tool" = vgas ] || label="$tool: "
             grep -h "compiler calls" "$work/$tool-$reps.log" | sed "s/^/bench-scale: $lname: $label/" >&2 || true ;;
    esac
  done
  unset VGAS_STATE_DIR VGAS_NATS_URL mport
  stop_all
done

echo "| tool | one host of 2 slots on core 1 | two hosts of 1 slot each, sharing core 1 |"
echo "| --- | --- | --- |"
for tool in $tools; do
  row="| $tool"
  for layout in "${layouts[@]}"; do
    lname=${layout%%:*}
    v=${result[$tool,$lname]:-}; base=${result[local,$lname]:-}
    if [ -z "$v" ]; then row+=" | -"
    elif [ -n "$base" ]; then row+=" | $v s ($(python3 -c "print(f'{$base/$v:.2f}x')") the one-core build)"
    else row+=" | $v s"; fi
  done
  echo "$row |"
done
echo "(REPS=$reps medians, each tool against the one-core local build of its own layout's rounds; make -j$j for the distributed tools with $local_slots compile slot(s) kept on the submitting core, -j2 for the one-core local build; the submitting side on core 0)"
