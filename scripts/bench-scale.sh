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
# that are slower than they say). Each: a warm-up build (icecc builds its compiler
# environment then), then REPS clean builds, median. vgas's cache is purged before each.
#
#   scripts/bench-scale.sh                        # REPS=3, J=4, every tool
#   REPS=1 TOOLS="local vgas" scripts/bench-scale.sh
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
# varz_per_build BEFORE AFTER N: what the server handled per build, in words.
varz_per_build() {
  python3 -c 'import sys; a=list(map(int,sys.argv[1].split())); b=list(map(int,sys.argv[2].split())); n=int(sys.argv[3])
d=[(y-x)/n for x,y in zip(a,b)]
print(f"{d[0]:.0f} messages in, {d[1]/1e6:.1f} MB in, {d[2]/1e6:.1f} MB out, {d[3]:.0f} JetStream API calls")' "$1" "$2" "$3"
}
check_lua() { [ "$(echo 'print(1+1)' | "$tree/src/lua" -)" = 2 ] || die "$1: the built lua does not work"; }

# time_builds NAME CMD...: a warm-up, then REPS clean builds; prints the median seconds.
time_builds() {
  local name=$1 r t0 t1 c0 c1 perf_pid times=(); shift
  make -s -C "$tree/src" clean >/dev/null
  "$@" >"$work/$name-warmup.log" 2>&1 || { tail -20 "$work/$name-warmup.log" >&2; die "$name: the warm-up build failed"; }
  check_lua "$name"
  for ((r = 1; r <= reps; r++)); do
    make -s -C "$tree/src" clean >/dev/null
    [ -n "${before_each:-}" ] && $before_each
    # PERF_DIR=dir: each timed build also recorded system-wide with perf, into dir/NAME-R.data.
    [ -n "${PERF_DIR:-}" ] && { perf record -q -a -F 999 -o "$PERF_DIR/$name-$r.data" 2>/dev/null & perf_pid=$!; sleep 0.5; }
    c0=$(cpu_ticks); t0=$(now)
    "$@" >"$work/$name-$r.log" 2>&1 || { tail -20 "$work/$name-$r.log" >&2; die "$name: build $r failed"; }
    t1=$(now); c1=$(cpu_ticks)
    [ -n "${PERF_DIR:-}" ] && { kill -INT "$perf_pid"; wait "$perf_pid" || true; }
    say "$name, build $r: $(python3 -c "print(f'{$t1 - $t0:.2f}')") s, busy: $(busy_pct "$c0" "$c1")"
    check_lua "$name"
    times+=("$(python3 -c "print($t1 - $t0)")")
  done
  median "${times[@]}"
}

declare -A result
layouts=("one host:1:2" "two half hosts:2:1")   # name:hosts:slots each

for tool in $tools; do
  for layout in "${layouts[@]}"; do
    IFS=: read -r lname nhosts slots <<<"$layout"
    [ "$tool" = local ] && [ "$nhosts" != 1 ] && continue
    say "$tool, $lname"
    before_each=""
    case "$tool" in
      local)
        result[$tool,$lname]=$(time_builds local here make -s -C "$tree/src" -j2 linux) ;;
      distcc)
        hosts=""; [ "$local_slots" -gt 0 ] && hosts="localhost/$local_slots "
        for ((i = 1; i <= nhosts; i++)); do
          bg_host "$i" distccd --daemon --no-detach --allow 10.215.0.0/16 --listen "${host_ip[$i]}" --port 3632 \
            --jobs "$slots" --log-stderr --log-level warning 2>"$work/distccd-$i.log"
          wait_port "${host_ip[$i]}" 3632 || die "distccd $i did not start"
          hosts+="${host_ip[$i]}/$slots "
        done
        mkdir -p "$work/distcc"
        result[$tool,$lname]=$(DISTCC_HOSTS="$hosts" DISTCC_DIR="$work/distcc" \
          time_builds distcc here make -s -C "$tree/src" -j"$j" linux "CC=distcc gcc -std=gnu99")
        stop_all ;;
      icecc)
        bg_here icecc-scheduler -vv -n "vgs$tag" -p 8765 -l "$work/logs/scheduler.log"
        wait_port 127.0.0.1 8765 || die "icecc-scheduler did not start"
        mkdir -p "$work/icecc-local"; chown icecc: "$work/icecc-local" 2>/dev/null || true
        bg_here iceccd -n "vgs$tag" -s "$hub_ip:8765" -m "$local_slots" --no-remote -b "$work/icecc-local" -N submitter \
          -vv -l "$work/logs/iceccd-local.log"
        for ((i = 1; i <= nhosts; i++)); do
          mkdir -p "$work/icecc-$i"; chown icecc: "$work/icecc-$i" 2>/dev/null || true
          # Its own /var/run/icecc, so its socket does not replace the local daemon's.
          bg_host "$i" unshare -m sh -c "mount -t tmpfs tmpfs /var/run/icecc && exec iceccd -n vgs$tag \
            -s $hub_ip:8765 -m $slots -b $work/icecc-$i -N host$i -vv -l $work/logs/iceccd-$i.log"
        done
        sleep 3   # the daemons register with the scheduler
        result[$tool,$lname]=$(time_builds icecc here make -s -C "$tree/src" -j"$j" linux "CC=icecc gcc -std=gnu99")
        say "icecc, $lname: $(cat "$work"/logs/iceccd-[12].log | grep -c "Remote compilation completed" || true) remote compiles in the last $((reps + 1)) builds"
        stop_all ;;
      vgas)
        swarm="$work/swarm"; rm -rf "$swarm"; mkdir -p "$swarm"; cp "$root/nats.conf" "$swarm/"
        export VGAS_STATE_DIR="$swarm/.vgas" VGAS_NATS_URL="nats://$hub_ip:4333" VGAS_NO_MDNS=true
        "$bin/vgas" init >/dev/null
        mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
        cd "$swarm"   # nats.conf's paths are relative to where it runs
        bg_here "$NATS_SERVER_BIN" -c nats.conf -a "$hub_ip" -p 4333 -m "$mport" >"$work/nats.log" 2>&1
        cd "$root"
        wait_port "$hub_ip" 4333 || die "nats-server did not start"
        bg_here "$bin/vgas-master" >"$work/master.log" 2>&1
        for ((i = 1; i <= nhosts; i++)); do
          VGAS_HOST_ID="bench-scale-host$i" bg_host "$i" "$bin/vgas-worker" --id "h$i" --slots "$slots" \
            >"$work/worker-$i.log" 2>&1
        done
        for _ in $(seq 100); do
          [ "$("$bin/vgas" status --json 2>/dev/null | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["live"]))' 2>/dev/null || echo 0)" = "$nhosts" ] && break
          sleep 0.2
        done
        purge() { "$bin/vgas" build --purge-cache >/dev/null 2>&1; }
        before_each=purge
        v0=$(varz "$mport")
        result[$tool,$lname]=$(VGAS_LOCAL_SLOTS=$local_slots time_builds vgas here "$bin/vgas" build -- make -s -C "$tree/src" -j"$j" linux)
        say "vgas, $lname: nats-server per build: $(varz_per_build "$v0" "$(varz "$mport")" $((reps + 1)))"
        grep -h "compiler calls" "$work"/vgas-[0-9]*.log | tail -n1 | sed 's/^/bench-scale: /' >&2 || true
        unset VGAS_STATE_DIR VGAS_NATS_URL
        stop_all ;;
    esac
  done
done

base=${result[local,one host]:-}
echo "| tool | one host of 2 slots on core 1 | two hosts of 1 slot each, sharing core 1 |"
echo "| --- | --- | --- |"
for tool in $tools; do
  row="| $tool"
  for layout in "${layouts[@]}"; do
    lname=${layout%%:*}
    v=${result[$tool,$lname]:-}
    if [ -z "$v" ]; then row+=" | -"
    elif [ -n "$base" ]; then row+=" | $v s ($(python3 -c "print(f'{$base/$v:.2f}x')") the one-core build)"
    else row+=" | $v s"; fi
  done
  echo "$row |"
done
echo "(REPS=$reps medians; make -j$j for the distributed tools with $local_slots compile slot(s) kept on the submitting core, -j2 for the one-core local build; the submitting side on core 0)"
