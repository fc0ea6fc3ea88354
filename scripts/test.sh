#!/usr/bin/env bash
# The whole test suite, from a fresh Debian 12 machine: installs the peers, then checks
# formatting and lints, then runs every test (unit, conformance, and the integration
# tests against DCMTK and pynetdicom), then the end-to-end suites again on a PostgreSQL
# index. Needs root (apt, a tmpfs for the full-disk test, PostgreSQL run as `postgres`).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-peers.sh
# Builds outside the clone survive across clones (fast CI on a warm machine).
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
cargo fmt --all --check
cargo clippy --locked --workspace --all-targets -- -D warnings
cargo test --locked --workspace
# The end-to-end suites again on a PostgreSQL index ([index] backend = "postgres", the
# index several nodes share): a throwaway cluster on loopback, stopped by pid on exit,
# one database per test archive (tests/common: STRATA_TEST_PG).
pg_parent=$(mktemp -d /var/tmp/strata-pg-XXXXXX)
pg_port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
trap 'tests/peers/postgres.sh stop "$pg_parent/pg"; rm -rf "$pg_parent"' EXIT
tests/peers/postgres.sh start "$pg_parent/pg" "$pg_port" >/dev/null
STRATA_TEST_PG="postgresql://postgres@127.0.0.1:$pg_port" \
  cargo test --locked --test integration -- store:: find:: retrieve:: tiering:: integrity:: cluster::
