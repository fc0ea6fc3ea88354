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
# index several nodes share) and with a real multi-node S3 cluster as the cold tier
# (SeaweedFS: a master, two volume servers with replication, the S3 gateway) where the
# first pass used moto: throwaway clusters on loopback, stopped by pid on exit. One
# database per test archive (tests/common: STRATA_TEST_PG), one bucket per test
# (tests/common: STRATA_TEST_S3, S3Server::start; tests needing moto's own features
# start moto in both passes).
pg_parent=$(mktemp -d /var/tmp/strata-pg-XXXXXX)
# PostgreSQL's port: free now and below the ephemeral range too (8000-9999: under the
# tests' own free_port() range, 10000-19999, and SeaweedFS's below)
free_port() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    port = random.randrange(8000, 10000)
    try:
        socket.socket().bind(("127.0.0.1", port))
    except OSError:
        continue
    print(port)
    break
else:
    raise SystemExit("no free port in 8000-9999")
PY
}
# a base port with BASE..BASE+4 and BASE+10000..BASE+10004 free (seaweedfs.sh's ports),
# all below the kernel's ephemeral range (ip_local_port_range, 32768 on): a port in it
# that is free now may be taken as an outgoing connection's local port before SeaweedFS
# binds it (a volume server then fails with "address already in use")
free_port_range() {
  python3 - <<'PY'
import random, socket
for _ in range(200):
    base = random.randrange(22000, 22760)
    try:
        socks = []
        for p in [base + i for i in range(5)] + [base + 10000 + i for i in range(5)]:
            s = socket.socket(); s.bind(("127.0.0.1", p)); socks.append(s)
    except OSError:
        continue
    print(base)
    break
else:
    raise SystemExit("no free port range")
PY
}
cleanup() {
  tests/peers/seaweedfs.sh stop "$pg_parent/s3" || true
  tests/peers/postgres.sh stop "$pg_parent/pg"
  rm -rf "$pg_parent"
}
trap cleanup EXIT
pg_port=$(free_port)
tests/peers/postgres.sh start "$pg_parent/pg" "$pg_port" >/dev/null
s3_endpoint=$(tests/peers/seaweedfs.sh start "$pg_parent/s3" "$(free_port_range)" | sed -n 's/^S3_ENDPOINT=//p')
STRATA_TEST_PG="postgresql://postgres@127.0.0.1:$pg_port" STRATA_TEST_S3="$s3_endpoint" \
  cargo test --locked --test integration -- store:: find:: retrieve:: tiering:: integrity:: cluster::
