#!/usr/bin/env bash
# The build farm on a corpus of real projects, each built by its own build system, in one run
# on this machine against a swarm of one worker (JOBS slots) started here:
#   lua     Lua 5.4.4, its own Makefile                       make -jN linux
#   json-c  json-c 0.16, CMake + Ninja, its own -Werror        vgas as CMAKE_C_COMPILER_LAUNCHER
#   pkgconf pkgconf 1.8.1, autotools + libtool                ./configure (-g -O2); make -jN
#   pkgconf-meson  the same sources with Meson + Ninja          CC="vgas /usr/bin/gcc" (a launcher)
# For each: a clean local build (after a warm-up), a cold vgas build (cache purged), and a
# no-change vgas rebuild after the build system's own clean; the units distributed, and
# whether every object is byte-identical to the local build's. Prints a Markdown table.
#
#   scripts/bench-corpus.sh                 # JOBS = nproc
#   JOBS=4 PROJECTS="json-c" scripts/bench-corpus.sh
#
# Release binaries (cargo build --release --workspace --bins, or VGAS_BIN_DIR). Every
# process it starts is stopped on exit.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
jobs=${JOBS:-$(nproc)}
projects=${PROJECTS:-lua json-c pkgconf pkgconf-meson}
bin=${VGAS_BIN_DIR:-$root/target/release}
say() { echo "bench-corpus: $*" >&2; }
die() { say "$*"; exit 1; }
for b in vgas vgas-master vgas-worker; do [ -x "$bin/$b" ] || die "no $bin/$b: cargo build --release --workspace --bins"; done
"$root/scripts/ensure-tools.sh"
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
(cd "$swarm" && exec "$NATS_SERVER_BIN" -c nats.conf -a 127.0.0.1 -p "$port" -m "$mport") >"$work/nats.log" 2>&1 & pids+=($!)
sleep 1
"$bin/vgas-master" >"$work/master.log" 2>&1 & pids+=($!)
"$bin/vgas-worker" --slots "$jobs" --id w1 >"$work/worker.log" 2>&1 & pids+=($!)
for _ in $(seq 50); do
  "$bin/vgas" status --json 2>/dev/null | grep -q '"w1"' && break
  sleep 0.2
done
"$bin/vgas" status --json | grep -q '"w1"' || die "the worker did not join (logs in $work)"

now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
objects_sum() { (cd "$1" && find . -name '*.o' -type f -print0 | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16); }
units_of() { (cd "$1" && find . -name '*.o' -type f | wc -l); }
remote_of() { python3 -c '
import json,sys
fin=[json.loads(l) for l in open(sys.argv[1]) if l.startswith("{\"type\":\"finished\"")]
print(fin[-1]["stats"]["remote"] if fin else 0)' "$1"; }

rows=()
for p in $projects; do
  src=$("$root/scripts/fetch-c-project.sh" "${p%-meson}" | tail -n1)
  case "$p" in
    lua)
      system="Makefile"
      dir="$work/$p"; cp -a "$src" "$dir"; b="$dir/src"
      clean() { make -s -C "$b" clean >/dev/null; }
      local_build() { make -s -C "$b" -j"$jobs" linux >/dev/null 2>&1; }
      vgas_build() { (cd "$b" && "$bin/vgas" build --json -- make -j"$jobs" linux) >"$1" 2>>"$work/$p.err"; }
      setup_vgas() { :; } ;;
    json-c)
      system="CMake + Ninja, -Werror"
      dir="$work/$p"; b="$dir/build"
      configure() { "$VGAS_CMAKE" -S "$src" -B "$b" -G Ninja -DCMAKE_BUILD_TYPE=Release -DBUILD_TESTING=OFF \
                      -DCMAKE_MAKE_PROGRAM="$VGAS_NINJA" "$@" >/dev/null; }
      mkdir -p "$dir"; configure
      clean() { "$VGAS_NINJA" -C "$b" -t clean >/dev/null; }
      local_build() { "$VGAS_NINJA" -C "$b" -j"$jobs" >/dev/null; }
      vgas_build() { (cd "$b" && "$bin/vgas" build --json -- "$VGAS_NINJA" -j"$jobs") >"$1" 2>>"$work/$p.err"; }
      setup_vgas() { rm -rf "$b"; configure -DCMAKE_C_COMPILER_LAUNCHER="$bin/vgas"; } ;;
    pkgconf)
      system="autotools + libtool"
      dir="$work/$p"; cp -a "$src" "$dir"; b="$dir"
      (cd "$b" && ./configure >"$work/$p.configure.log" 2>&1) || die "$p: configure failed (see $work/$p.configure.log)"
      clean() { make -s -C "$b" clean >/dev/null; }
      local_build() { make -s -C "$b" -j"$jobs" >/dev/null 2>&1; }
      vgas_build() { (cd "$b" && "$bin/vgas" build --json -- make -j"$jobs") >"$1" 2>>"$work/$p.err"; }
      setup_vgas() { :; } ;;
    pkgconf-meson)
      system="Meson + Ninja"
      dir="$work/$p"; cp -a "$src" "$dir"; b="$dir/build"
      cc=$(command -v gcc)
      meson_setup() { (cd "$dir" && PATH="$(dirname "$VGAS_NINJA"):$PATH" CC="$*" "$VGAS_MESON" setup build \
                        -Dbuildtype=release -Dtests=false >"$work/$p.setup.log" 2>&1) || die "$p: meson setup failed"; }
      meson_setup "$cc"
      clean() { "$VGAS_NINJA" -C "$b" -t clean >/dev/null; }
      local_build() { "$VGAS_NINJA" -C "$b" -j"$jobs" >/dev/null; }
      vgas_build() { (cd "$b" && "$bin/vgas" build --json -- "$VGAS_NINJA" -j"$jobs") >"$1" 2>>"$work/$p.err"; }
      setup_vgas() { rm -rf "$b"; meson_setup "$bin/vgas $cc"; } ;;
    *) die "unknown project $p" ;;
  esac
  say "$p: warm-up and clean local build"
  local_build; clean
  t0=$(now); local_build; t1=$(now)
  local_s=$(secs "$t0" "$t1"); local_sum=$(objects_sum "$b"); units=$(units_of "$b")
  clean; setup_vgas
  "$bin/vgas" build --purge-cache >/dev/null 2>&1
  say "$p: cold vgas build"
  t0=$(now); vgas_build "$work/$p.cold.json"; t1=$(now)
  cold_s=$(secs "$t0" "$t1"); remote=$(remote_of "$work/$p.cold.json"); cold_sum=$(objects_sum "$b")
  clean
  say "$p: no-change vgas rebuild after clean"
  t0=$(now); vgas_build "$work/$p.warm.json"; t1=$(now)
  warm_s=$(secs "$t0" "$t1"); warm_sum=$(objects_sum "$b")
  same=no; [ "$local_sum" = "$cold_sum" ] && [ "$local_sum" = "$warm_sum" ] && same=yes
  pct=$(python3 -c "print(f'{100*$remote/$units:.0f}%' if $units else '-')")
  speedup=$(python3 -c "print(f'{$local_s/$warm_s:.1f}x')")
  rows+=("| $p | $system | $units | $pct | $local_s s | $cold_s s | $warm_s s ($speedup) | $same |")
done

echo "| project | build system | units | distributed (cold) | clean local build | vgas cold | vgas no-change rebuild after clean | objects identical to local |"
echo "| --- | --- | --- | --- | --- | --- | --- | --- |"
printf '%s\n' "${rows[@]}"
echo "(JOBS=$jobs, one worker with $jobs slots on this machine, $(nproc) cores)"
