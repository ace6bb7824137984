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
echo "== format"
cargo fmt --all --check
echo "== lints"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== build"
cargo build --workspace --bins --locked
echo "== tests"
# Each swarm test starts its own nats-server, master and workers: two at a time fits 2 cores.
cargo test --workspace --locked -- --test-threads="${VGAS_TEST_THREADS:-2}"
