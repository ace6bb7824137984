#!/usr/bin/env bash
# The build farm on a corpus of real projects, each built by its own build system, in one run
# on this machine, next to a plain local build, ccache and distcc:
#   lua            Lua 5.4.4, its own Makefile                 make -jN linux
#   json-c         json-c 0.16, CMake + Ninja, its own -Werror  wrappers as CMAKE_C_COMPILER_LAUNCHER
#   pkgconf        pkgconf 1.8.1, autotools + libtool          ./configure (-g -O2); make -jN CC=...
#   pkgconf-meson  the same sources with Meson + Ninja          CC="<wrapper> /usr/bin/gcc"
#   leveldb        LevelDB 1.23 (C++), CMake + Ninja, Release  CMAKE_CXX_COMPILER_LAUNCHER
#   zeromq         libzmq 4.3.4 (C++, 106 units), CMake + Ninja, Release  the same
# For each: a clean local build (after a warm-up); ccache cold (emptied) and after the build
# system's clean; distcc cold (a distccd on 127.0.0.1 with N jobs); vgas cold (cache purged)
# with its one worker as another host (VGAS_HOST_ID: the units go to it, as on a LAN), vgas's
# rebuild after the build system's clean (every unit from the cache: from this host's tier,
# and from the swarm's cache alone with VGAS_HOST_CACHE_MB=0), vgas's no-change rebuild
# (the same build again, nothing touched: the build system finds nothing to do, and `vgas
# build` adds its own start and stop), and vgas cold on one machine (the worker on the submitter's
# own host: units compile in place); the units distributed, and whether every object of
# the vgas builds is byte-identical to the local build's. Prints a Markdown table.
#
#   scripts/bench-corpus.sh                 # JOBS = nproc
#   JOBS=4 PROJECTS="json-c" scripts/bench-corpus.sh
#   REPS=5 PROJECTS="pkgconf-meson" scripts/bench-corpus.sh
#
# REPS=N (default 1): the one-machine comparison (clean local build, distcc cold, vgas cold in
# place) runs N rounds in all, each round starting one tool further on, so the machine's drift
# reaches each alike; those three cells are the medians, with the range.
#
# Release binaries (cargo build --release --workspace --bins, or VGAS_BIN_DIR). Installs
# ccache and distcc with apt-get when missing. Every process it starts is stopped on exit.
set -euo pipefail
shopt -s inherit_errexit
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=${JOBS:-$(nproc)}
reps=${REPS:-1}
projects=${PROJECTS:-lua json-c pkgconf pkgconf-meson leveldb zeromq}
bin=${VGAS_BIN_DIR:-$root/target/release}
say() { echo "bench-corpus: $*" >&2; }
die() { say "$*"; exit 1; }
for b in vgas vgas-master vgas-worker; do [ -x "$bin/$b" ] || die "no $bin/$b: cargo build --release --workspace --bins"; done
"$root/scripts/ensure-tools.sh"
"$root/scripts/ensure-apt.sh" ccache distcc
# shellcheck disable=SC1091
source "$root/.tools/env"

work=$(mktemp -d "${TMPDIR:-/tmp}/vgas-bench-corpus.XXXXXX")
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# --- a swarm on this machine ---------------------------------------------------------------
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
mport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
swarm="$work/swarm"
state="$swarm/.vgas"
mkdir -p "$swarm"
cp "$root/nats.conf" "$swarm/nats.conf"     # its paths are relative to where it runs
export VGAS_STATE_DIR="$state" VGAS_NATS_URL="nats://127.0.0.1:$port" VGAS_NO_MDNS=true
"$bin/vgas" init >/dev/null
# The compiler launcher for CMake and Meson: the small wrapper binary when it is built.
launcher="$bin/vgas"
[ -x "$bin/vgas-cc" ] && launcher="$bin/vgas-cc"
(cd "$swarm" && exec "$NATS_SERVER_BIN" -c nats.conf -a 127.0.0.1 -p "$port" -m "$mport") >"$work/nats.log" 2>&1 & pids+=($!)
sleep 1
"$bin/vgas-master" >"$work/master.log" 2>&1 & pids+=($!)
# The worker is another host as far as builds can tell (its own host id); `one_machine` below
# gives the submitter the same id, and the units compile in place.
worker_host=bench-corpus-worker
VGAS_HOST_ID=$worker_host "$bin/vgas-worker" --slots "$jobs" --id w1 >"$work/worker.log" 2>&1 & pids+=($!)
dport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
distccd --daemon --no-detach --allow 127.0.0.1 --listen 127.0.0.1 --port "$dport" --jobs "$jobs" \
  --log-stderr --log-level warning 2>"$work/distccd.log" & pids+=($!)
export DISTCC_HOSTS="127.0.0.1:$dport/$jobs" DISTCC_DIR="$work/distcc-state"   # fallback on, as users run it
export CCACHE_DIR="$work/ccache" CCACHE_MAXSIZE=5G
mkdir -p "$DISTCC_DIR"
for _ in $(seq 50); do
  "$bin/vgas" status --json 2>/dev/null | grep -q '"w1"' && break
  sleep 0.2
done
"$bin/vgas" status --json | grep -q '"w1"' || die "the worker did not join (logs in $work)"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
# object_sums DIR NAME: every object's SHA-256 into $work/NAME.sums, compared between builds
# with `cmp`, so a mismatch can name the objects that differ (`differing`).
object_sums() { (cd "$1" && find . -name '*.o' -type f -print0 | sort -z | xargs -0 sha256sum) >"$work/$2.sums"; }
differing() { diff "$work/$1.sums" "$work/$2.sums" | sed -n 's/^> [0-9a-f]*  //p' | head -n 5 | tr '\n' ' '; }
units_of() { (cd "$1" && find . -name '*.o' -type f | wc -l); }
remote_of() { python3 -c '
import json,sys
fin=[json.loads(l) for l in open(sys.argv[1]) if l.startswith("{\"type\":\"finished\"")]
print(fin[-1]["stats"]["remote"] if fin else 0)' "$1"; }

rows=()
for p in $projects; do
  src=$("$root/scripts/fetch-c-project.sh" "${p%-meson}" | tail -n1)
  dir="$work/$p"
  # setup WRAP: a tree ready to build with WRAP ("", ccache, distcc or vgas) in front of the
  # compiler; build [CMD...]: the build, run under CMD (vgas build -- for vgas); clean.
  case "$p" in
    lua)
      system="Makefile"
      cp -a "$src" "$dir"; b="$dir/src"
      setup() { wrap="$1"; }
      build() { local cc=(); [ -n "$wrap" ] && [ "$wrap" != vgas ] && cc=("CC=$wrap gcc -std=gnu99")
                (cd "$b" && "$@" make -s -j"$jobs" linux "${cc[@]}" >/dev/null 2>>"$work/$p.log"); }
      clean() { make -s -C "$b" clean >/dev/null; } ;;
    json-c|leveldb|zeromq)
      case "$p" in
        json-c) system="CMake + Ninja, -Werror"; opts=(-DBUILD_TESTING=OFF) ;;
        leveldb) system="CMake + Ninja, C++"
          opts=(-DLEVELDB_BUILD_TESTS=OFF -DLEVELDB_BUILD_BENCHMARKS=OFF -DLEVELDB_INSTALL=OFF) ;;
        zeromq) system="CMake + Ninja, C++"
          opts=(-DBUILD_TESTS=OFF -DBUILD_STATIC=OFF -DWITH_PERF_TOOL=OFF -DWITH_DOCS=OFF) ;;
      esac
      b="$dir/build"; mkdir -p "$dir"
      setup() { local l=() w="$1"; rm -rf "$b"
                [ "$w" = vgas ] && w=$launcher
                # Both languages' launchers: a C++ project may have C units (libzmq's tweetnacl).
                [ -n "$w" ] && l=("-DCMAKE_C_COMPILER_LAUNCHER=$w" "-DCMAKE_CXX_COMPILER_LAUNCHER=$w")
                "$VGAS_CMAKE" -S "$src" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release "${opts[@]}" \
                  -DCMAKE_MAKE_PROGRAM="$VGAS_NINJA" "${l[@]}" >"$work/$p.cmake.log" 2>&1 || die "$p: cmake failed"; }
      build() { (cd "$b" && "$@" "$VGAS_NINJA" -j"$jobs" >>"$work/$p.out" 2>>"$work/$p.log"); }
      clean() { "$VGAS_NINJA" -C "$b" -t clean >/dev/null; } ;;
    pkgconf)
      system="autotools + libtool"
      cp -a "$src" "$dir"; b="$dir"
      (cd "$b" && ./configure >"$work/$p.configure.log" 2>&1) || die "$p: configure failed (see $work/$p.configure.log)"
      setup() { wrap="$1"; }
      build() { local cc=(); [ -n "$wrap" ] && [ "$wrap" != vgas ] && cc=("CC=$wrap gcc")
                (cd "$b" && "$@" make -s -j"$jobs" "${cc[@]}" >/dev/null 2>>"$work/$p.log"); }
      clean() { make -s -C "$b" clean >/dev/null; } ;;
    pkgconf-meson)
      system="Meson + Ninja"
      cp -a "$src" "$dir"; b="$dir/build"
      cc=$(command -v gcc)
      setup() { local w="$1"; [ "$w" = vgas ] && w=$launcher; rm -rf "$b"
                (cd "$dir" && PATH="$(dirname "$VGAS_NINJA"):$PATH" CC="${w:+$w }$cc" "$VGAS_MESON" setup build \
                  -Dbuildtype=release -Dtests=false >"$work/$p.setup.log" 2>&1) || die "$p: meson setup failed"; }
      build() { (cd "$b" && "$@" "$VGAS_NINJA" -j"$jobs" >>"$work/$p.out" 2>>"$work/$p.log"); }
      clean() { "$VGAS_NINJA" -C "$b" -t clean >/dev/null; } ;;
    *) die "unknown project $p" ;;
  esac
  x() { python3 -c "print(f'{$1/$2:.2f}x')"; }
  timed() { local t0 t1; t0=$(now)
            "$@" || { say "$p: build failed: $*"; tail -n 20 "$work/$p.log" "$work/$p.out" "$work/$p.err" >&2 2>/dev/null; return 1; }
            t1=$(now); secs "$t0" "$t1"; }
  vgas_json() { local out="$1"; shift; "$bin/vgas" build --json -- "$@" >"$out" 2>>"$work/$p.err"; }

  say "$p: warm-up and clean local build"
  setup ""; build; clean
  local_s=$(timed build); object_sums "$b" "$p.local"; units=$(units_of "$b")

  say "$p: ccache cold, then after clean"
  clean; setup ccache; ccache -C >/dev/null; ccache -z >/dev/null
  ccache_cold=$(timed build); clean
  ccache_warm=$(timed build)

  say "$p: distcc cold"
  clean; setup distcc
  # distcc preprocesses with a full -E: a -Werror project can fail where a local build passes.
  if distcc_s=$(timed build); then distcc_cell="$distcc_s s ($(x "$distcc_s" "$local_s"))"
  else distcc_cell="fails: $(grep -m1 -o 'error: [^[]*\[-Werror=[^]]*\]' "$work/$p.log" "$work/$p.out" 2>/dev/null | head -n1 | sed 's/^[^:]*://' || true)"; fi

  say "$p: vgas cold (the worker is another host), then after clean"
  clean; setup vgas
  "$bin/vgas" build --purge-cache >/dev/null 2>&1
  cold_s=$(timed build vgas_json "$work/$p.cold.json")
  remote=$(remote_of "$work/$p.cold.json"); object_sums "$b" "$p.cold"
  # After clean from the swarm's cache alone (this host's tier off), then with the tier.
  clean; export VGAS_HOST_CACHE_MB=0
  swarm_warm_s=$(timed build vgas_json "$work/$p.swarmwarm.json"); object_sums "$b" "$p.swarmwarm"
  unset VGAS_HOST_CACHE_MB
  clean
  warm_s=$(timed build vgas_json "$work/$p.warm.json"); object_sums "$b" "$p.warm"
  nochange_s=$(timed build vgas_json "$work/$p.nochange.json")

  say "$p: vgas cold on one machine (in place)"
  clean; "$bin/vgas" build --purge-cache >/dev/null 2>&1
  export VGAS_HOST_ID=$worker_host   # the submitter on the worker's host
  one_s=$(timed build vgas_json "$work/$p.one.json"); object_sums "$b" "$p.one"
  unset VGAS_HOST_ID

  # More rounds of the one-machine comparison, interleaved (REPS).
  locals=("$local_s") distccs=("${distcc_s:-}") ones=("$one_s")
  for ((r = 1; r < reps; r++)); do
    for k in $(printf '%s\n' local distcc one local distcc | tail -n +$((r % 3 + 1)) | head -n 3); do
      clean
      case "$k" in
        local) setup ""; locals+=("$(timed build)") ;;
        distcc) [ -n "${distcc_s:-}" ] || continue
                setup distcc; distccs+=("$(timed build)") ;;
        one) setup vgas; "$bin/vgas" build --purge-cache >/dev/null 2>&1
             export VGAS_HOST_ID=$worker_host
             ones+=("$(timed build vgas_json "$work/$p.one.json")"); unset VGAS_HOST_ID ;;
      esac
    done
  done
  if [ "$reps" -gt 1 ]; then
    med() { python3 -c 'import statistics,sys; v=[float(x) for x in sys.argv[1:] if x]; print(f"{statistics.median(v):.2f}")' "$@"; }
    span() { python3 -c 'import sys; v=[float(x) for x in sys.argv[1:] if x]; print(f"{min(v):.2f}-{max(v):.2f}")' "$@"; }
    say "$p: rounds: local ${locals[*]}; distcc ${distccs[*]}; vgas in place ${ones[*]}"
    local_s=$(med "${locals[@]}"); one_s=$(med "${ones[@]}")
    local_range=" (${#locals[@]} builds $(span "${locals[@]}") s)"
    one_range=", $(span "${ones[@]}") s"
    if [ -n "${distcc_s:-}" ]; then
      distcc_s=$(med "${distccs[@]}")
      distcc_cell="$distcc_s s ($(x "$distcc_s" "$local_s"); $(span "${distccs[@]}") s)"
    fi
  fi
  same=yes
  for k in cold swarmwarm warm one; do
    if ! cmp -s "$work/$p.local.sums" "$work/$p.$k.sums"; then
      same=no; say "$p: objects of the vgas $k build that differ from the local build's: $(differing "$p.local" "$p.$k")"
    fi
  done
  pct=$(python3 -c "print(f'{100*$remote/$units:.0f}%' if $units else '-')")
  rows+=("| $p | $system | $units | $pct | $local_s s${local_range:-} | $ccache_cold s / $ccache_warm s ($(x "$local_s" "$ccache_warm") faster) | $distcc_cell | $cold_s s ($(x "$cold_s" "$local_s")) | $warm_s s ($(x "$local_s" "$warm_s") faster) / $swarm_warm_s s ($(x "$local_s" "$swarm_warm_s") faster) | $nochange_s s ($(x "$local_s" "$nochange_s") faster) | $one_s s ($(x "$one_s" "$local_s")${one_range:-}) | $same |")
done

echo "| project | build system | units | distributed (vgas cold) | clean local build | ccache cold / after clean | distcc cold (to local) | vgas cold, worker as another host (to local) | vgas after clean: this host's tier / the swarm's cache only | vgas no-change rebuild | vgas cold, one machine: in place (to local) | vgas objects identical to local |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
echo "(JOBS=$jobs, REPS=$reps; one vgas worker and one distccd, each $jobs slots, on this machine; $(nproc) cores)"
