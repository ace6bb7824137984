#!/usr/bin/env bash
# Rust builds side by side, one run, this machine: this project's own release build
# (`cargo build --release --workspace --bins --locked`, a copy of HEAD's tree) as
#   local          plain cargo, clean
#   vgas-cold      vgas build -- cargo ..., clean, the build cache empty (every crate a miss)
#   vgas-warm      the same after `cargo clean` (every cacheable crate from the cache)
#   sccache-cold   RUSTC_WRAPPER=sccache (local disk cache), clean, its cache empty
#   sccache-warm   the same after `cargo clean`
# and checks that the products of the warm vgas build (binaries, rlibs at the top of
# target/release) equal the local build's byte for byte.
# The swarm (nats-server, master, one worker) is scripts/bench-taskpath.sh's. sccache is
# installed, pinned, into .tools/sccache (cargo install, once). Prints one JSON line per build
# (wall seconds) to stdout; docs/benchmarks.md records them with this command.
#   scripts/bench-rust.sh
#   BUILD_ARGS="-p vgas-shared" scripts/bench-rust.sh     # a smaller build
#   BUILD_CACHE_MB=4096 scripts/bench-rust.sh               # the swarm's build cache bound
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SCCACHE_VERSION=0.19.0 # pinned: sccache on crates.io

if [ "${1:-}" != "--inside" ]; then
  cd "$root"
  scripts/ensure-tools.sh >/dev/null
  sccache="$root/.tools/sccache/bin/sccache"
  if ! "$sccache" --version 2>/dev/null | grep -q "$SCCACHE_VERSION"; then
    echo "installing sccache $SCCACHE_VERSION into .tools/sccache" >&2
    cargo install sccache --version "$SCCACHE_VERSION" --locked --no-default-features \
      --root "$root/.tools/sccache" >&2
  fi
  cargo build --release --workspace --bins --locked >&2
  target_dir=${CARGO_TARGET_DIR:-target}
  case "$target_dir" in /*) ;; *) target_dir="$root/$target_dir" ;; esac
  export BENCH_BIN_DIR="$target_dir/release" BENCH_SCCACHE="$sccache"
  # A cache that holds the whole build (its default, 1 GiB, is less than this project's
  # release outputs, 1,335 MiB: the warm build would evict what it is about to read).
  # 2.5 GiB fits the repository's nats.conf `max_file_store` beside the other buckets.
  conf=$(mktemp --suffix=.toml)
  printf '[master]\nbuild_cache_mb = %s\n' "${BUILD_CACHE_MB:-2560}" >"$conf"
  export VGAS_CONFIG="$conf"
  exec scripts/bench-taskpath.sh -- "$root/scripts/bench-rust.sh" --inside
fi

# Inside the swarm: VGAS_NATS_URL, VGAS_STATE_DIR and BENCH_LOGS are set.
bin=$BENCH_BIN_DIR
work=$BENCH_LOGS/rust
mkdir -p "$work/src"
git -C "$root" archive HEAD | tar -x -C "$work/src"
cd "$work/src"
export CARGO_TARGET_DIR="$work/target" CARGO_TERM_COLOR=never
unset RUSTC_WRAPPER RUSTC_WORKSPACE_WRAPPER CARGO_INCREMENTAL
# shellcheck disable=SC2206
build=(cargo build --release --locked ${BUILD_ARGS:---workspace --bins})

timed() { # NAME CMD...: one clean build, its wall seconds as a JSON line
  local name=$1 start end
  shift
  cargo clean -q
  start=$(date +%s.%N)
  "$@" >"$work/$name.log" 2>&1 || { echo "$name failed; see $work/$name.log" >&2; tail -20 "$work/$name.log" >&2; exit 1; }
  end=$(date +%s.%N)
  printf '{"build":"%s","wall_s":%.1f,"crates":%s}\n' "$name" "$(echo "$end - $start" | bc)" \
    "$(grep -c '^ *Compiling ' "$work/$name.log" || true)"
}

# The build's products: the binaries and libraries at the top of target/release.
digest() {
  find "$CARGO_TARGET_DIR/release" -maxdepth 1 -type f \( -perm -u+x -o -name '*.rlib' \) -print0 \
    | sort -z | xargs -0 sha256sum | awk '{print $1}' | sha256sum | cut -c1-16
}

echo "# $(nproc) cores; ${build[*]}" >&2
timed local "${build[@]}"
local_bins=$(digest)
timed vgas-cold "$bin/vgas" build -- "${build[@]}"
timed vgas-warm "$bin/vgas" build -- "${build[@]}"
grep '^vgas:' "$work/vgas-warm.log" >&2 || true
if [ "$(digest)" = "$local_bins" ]; then
  echo '{"check":"vgas-warm products equal local","ok":true}'
else
  echo '{"check":"vgas-warm products equal local","ok":false}'
fi
export SCCACHE_DIR="$work/sccache-dir" SCCACHE_CACHE_SIZE=10G
"$BENCH_SCCACHE" --stop-server >/dev/null 2>&1 || true
timed sccache-cold env RUSTC_WRAPPER="$BENCH_SCCACHE" "${build[@]}"
timed sccache-warm env RUSTC_WRAPPER="$BENCH_SCCACHE" "${build[@]}"
"$BENCH_SCCACHE" --show-stats >&2 || true
"$BENCH_SCCACHE" --stop-server >/dev/null 2>&1 || true
