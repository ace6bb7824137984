#!/usr/bin/env bash
# Installs the Debian packages named on the command line whose command of the same name is not
# on PATH (the benchmarks' peers: ccache, distcc, icecc), with apt-get; refreshes the package
# index once if the first try fails. Needs root. Prints nothing but errors. `PACKAGE:COMMAND`
# names a package whose command is named otherwise.
#
#   scripts/ensure-apt.sh ccache distcc icecc chromium-driver:chromedriver
set -euo pipefail
missing=()
for p in "$@"; do command -v "${p#*:}" >/dev/null 2>&1 || missing+=("${p%%:*}"); done
[ "${#missing[@]}" -eq 0 ] && exit 0
echo "ensure-apt: installing ${missing[*]} (apt-get)" >&2
install() { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null 2>&1; }
install || { apt-get update -qq >/dev/null 2>&1 && install; } \
  || { echo "ensure-apt: could not install ${missing[*]}" >&2; exit 1; }
