#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the peers, then checks
# formatting and lints, then runs every test (unit, conformance, and the integration
# tests against DCMTK and pynetdicom). Needs root (apt, and a tmpfs for the full-disk test).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-peers.sh
# Builds outside the clone survive across clones (fast CI on a warm machine).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
