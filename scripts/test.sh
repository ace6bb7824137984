#!/usr/bin/env bash
# The whole test suite: installs what it needs (nats-server, nats-py) into ./.tools, checks
# formatting and lints, builds, then runs every test against real nats-server processes.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
echo "== tools"
scripts/ensure-tools.sh
# shellcheck disable=SC1091
source .tools/env
echo "nats-server: $NATS_SERVER_BIN ($("$NATS_SERVER_BIN" --version))"
# The TLS test captures the server's traffic with tcpdump.
scripts/ensure-apt.sh tcpdump \
  || echo "warning: no tcpdump; the TLS capture test fails" >&2
# The dashboard's browser test drives Debian's headless Chromium through chromedriver.
scripts/ensure-apt.sh chromium chromium-driver:chromedriver \
  || echo "warning: no chromium; the dashboard's browser test fails in CI, skips elsewhere" >&2
# A clean clone gains nothing from incremental state (3.6 GB of it in a full run) and CI
# machines' disks can be small: a full run without it needs about 4 GB under target/.
if [ "${CI:-}" = "true" ]; then
  export CARGO_INCREMENTAL=0 CARGO_PROFILE_DEV_DEBUG=line-tables-only
fi
echo "disk free under target: $(df -h --output=avail . | tail -1 | tr -d ' ')"
echo "== format"
cargo fmt --all --check
echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --bins --locked
echo "== tests"
# Each swarm test starts its own nats-server, master and workers: two at a time fits 2 cores.
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast -- --test-threads="${VGAS_TEST_THREADS:-2}" 2>&1 | tee "$log" || status=$?
# One closing line over every test binary (cargo prints one per binary, doc-tests last).
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i; if ($(i+1) ~ /^ignored/) s += $i } }
     END { printf "tests: %d passed, %d failed, %d skipped\n", p, f, s }' "$log"
exit "$status"
