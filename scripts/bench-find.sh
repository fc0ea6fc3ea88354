#!/usr/bin/env bash
# C-FIND and QIDO-RS study-level latency (issue 4 benchmark, part b; issue 13's QIDO
# at 1 M instances):
#   Strata serving a generated index of 1,000,000 instances (50,000 studies, each
#   instance with a metadata record made from a real CT object's; built by
#   `cargo bench --bench find_index`, which also prints the in-process latencies and
#   the index's bytes per instance) and Orthanc with its DICOMweb plugin holding 2,000
#   small generated studies for orientation (what it takes in a benchmark's time:
#   filling it to 1 M instances over the network would take hours), both queried by
#   scripts/bench_find.py over one association and by scripts/bench_qido.py over one
#   HTTP connection (1,000 queries per kind by default).
# Usage: scripts/bench-find.sh [QUERIES=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
Q=${1:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
WORK=${BENCH_ROOT:-/var/tmp/strata-bench}/find
mkdir -p "$WORK"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cargo build --release --locked --bin strata >&2
if [ ! -f "$WORK/template.complete" ]; then
  rm -rf "$WORK/template"
  python3 tests/peers/gen_ct.py --out "$WORK/template" --studies 1 --instances 1 --seed 5 >/dev/null
  touch "$WORK/template.complete"
fi
METADATA_TEMPLATE=$(find "$WORK/template" -type f | head -1)
export METADATA_TEMPLATE
cargo bench --locked --bench find_index >&2          # builds /var/tmp/strata-find-bench-50000x20-meta once
INDEX_DIR=/var/tmp/strata-find-bench-50000x20-meta
touch "$INDEX_DIR/clean-shutdown"
cat > "$WORK/strata.toml" <<TOML
[archive]
data_dir = "$INDEX_DIR"
min_free_space_mb = 0
[dicom]
port = 41400
bind = "127.0.0.1"
[http]
port = 41401
bind = "127.0.0.1"
TOML
"$CARGO_TARGET_DIR/release/strata" --config "$WORK/strata.toml" serve 2>"$WORK/strata.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf http://127.0.0.1:41401/healthz >/dev/null && break; sleep 0.1; done

if [ ! -f "$WORK/small.complete" ]; then
  rm -rf "$WORK/small"
  python3 tests/peers/gen_ct.py --out "$WORK/small" --studies 2000 --instances 1 --rows 64 --cols 64 --seed 3 >/dev/null
  touch "$WORK/small.complete"
fi
rm -rf "$WORK/orthanc"
ORTHANC_EXTRA_JSON='{"Plugins": ["/usr/share/orthanc/plugins/libOrthancDicomWeb.so"], "DicomWeb": {"Enable": true, "Root": "/dicom-web/"}}' \
  scripts/start-orthanc.sh "$WORK/orthanc" 41402 41403 ORTHANC >/dev/null
pids+=("$(cat "$WORK/orthanc/orthanc.pid")")
TCP_NODELAY=1 /usr/bin/storescu -aec ORTHANC +sd +r 127.0.0.1 41402 "$WORK/small" >/dev/null 2>&1

# the same queries from a minimal dicom-ul client on one association (no client decoding)
FIND_PORT=41400 cargo bench --locked --bench find_index 2>/dev/null | sed -n '/over DICOM/,$p'
echo
echo "| target | query (study level) | studies | matches/query | p50 | p99 |"
echo "|---|---|---:|---:|---:|---:|"
python3 scripts/bench_find.py --port 41400 --called-ae STRATA --queries "$Q" --label "Strata, 1,000,000 instances"
python3 scripts/bench_find.py --port 41402 --called-ae ORTHANC --queries "$Q" --label "Orthanc, 2,000 instances"
echo
echo "| target | QIDO-RS search (study level) | studies | matches/query | p50 | p99 |"
echo "|---|---|---:|---:|---:|---:|"
python3 scripts/bench_qido.py --url http://127.0.0.1:41401/dicom-web --queries "$Q" --label "Strata, 1,000,000 instances"
python3 scripts/bench_qido.py --url http://127.0.0.1:41403/dicom-web --queries "$Q" --label "Orthanc + DICOMweb, 2,000 instances"
