#!/usr/bin/env bash
# Migration benchmark (issue 5): N CT instances (default 1000, 200 per study) held by an
# Orthanc "legacy PACS", moved in one run
#  (a) raw: DCMTK movescu, study by study, from Orthanc into DCMTK storescp;
#  (b) strata-migrate end to end (plan + run, which includes verification) from the same
#      Orthanc into a running Strata;
# and prints instances/s of each and the ratio (b)/(a).
# Usage: scripts/bench-migrate.sh [N=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
export TCP_NODELAY=1
ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
WORK=$ROOT/migrate
DATA=$ROOT/move-data-$N
BASE=${BENCH_PORT_BASE:-21700}
O_DICOM=$BASE O_HTTP=$((BASE + 1)) S_DICOM=$((BASE + 2)) S_HTTP=$((BASE + 3)) DEST=$((BASE + 4))
S2_DICOM=$((BASE + 5)) S2_HTTP=$((BASE + 6))
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do while kill -0 "$p" 2>/dev/null; do sleep 0.1; done; done
}
trap cleanup EXIT

cargo build --release --locked --bin strata >&2
cargo build --release --locked -p strata-migrate >&2
BIN=$CARGO_TARGET_DIR/release
if [ ! -f "$DATA.complete" ]; then
  rm -rf "$DATA"
  python3 tests/peers/gen_ct.py --out "$DATA" --studies $((N / 200)) --instances 200 --seed 11 >/dev/null
  touch "$DATA.complete"
fi
mapfile -t STUDIES < <(python3 - "$DATA" <<'PY'
import os, sys, pydicom
d = sys.argv[1]
for s in sorted(os.listdir(d)):
    f = sorted(os.listdir(os.path.join(d, s)))[0]
    print(pydicom.dcmread(os.path.join(d, s, f), stop_before_pixels=True).StudyInstanceUID)
PY
)
rm -rf "$WORK" && mkdir -p "$WORK"

# the legacy PACS, knowing both destinations
ORTHANC_EXTRA_JSON="{\"DicomModalities\": {\"STRATA\": [\"STRATA\", \"127.0.0.1\", $S_DICOM], \"DEST\": [\"DEST\", \"127.0.0.1\", $DEST], \"STRATA2\": [\"STRATA2\", \"127.0.0.1\", $S2_DICOM]}}" \
  scripts/start-orthanc.sh "$WORK/orthanc" "$O_DICOM" "$O_HTTP" OLDPACS >/dev/null
pids+=("$(cat "$WORK/orthanc/orthanc.pid")")
/usr/bin/storescu -aec OLDPACS +sd +r 127.0.0.1 "$O_DICOM" "$DATA" >/dev/null 2>&1
echo "source: $(curl -s "http://127.0.0.1:$O_HTTP/statistics" | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["CountInstances"], "instances,", s["CountStudies"], "studies")')"

# (a) raw movescu into storescp
mkdir -p "$WORK/storescp"
/usr/bin/storescp -aet DEST -od "$WORK/storescp" "$DEST" >/dev/null 2>&1 &
pids+=($!)
sleep 0.5
T0=$(date +%s.%N)
for s in "${STUDIES[@]}"; do
  /usr/bin/movescu -S -aec OLDPACS -aem DEST -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$s" \
    127.0.0.1 "$O_DICOM" >/dev/null 2>&1
done
T1=$(date +%s.%N)
RAW_S=$(echo "$T1 - $T0" | bc -l)
RAW_N=$(find "$WORK/storescp" -type f | wc -l)

# (b) strata-migrate end to end into a running Strata; (c) raw movescu into a second,
# empty Strata (how much of (b) is Strata's durable ingest rather than the tool)
strata_config() { # data dir, dicom port, http port, AE title
  cat <<TOML
[archive]
data_dir = "$1"
min_free_space_mb = 0
[dicom]
ae_title = "$4"
port = $2
bind = "127.0.0.1"
[http]
port = $3
bind = "127.0.0.1"
[tiering]
enabled = false
TOML
}
strata_config "$WORK/strata2-data" "$S2_DICOM" "$S2_HTTP" STRATA2 >"$WORK/strata2.toml"
"$BIN/strata" --config "$WORK/strata2.toml" serve 2>"$WORK/strata2.log" &
pids+=($!)
cat >"$WORK/strata.toml" <<TOML
[archive]
data_dir = "$WORK/strata-data"
min_free_space_mb = 0
[dicom]
port = $S_DICOM
bind = "127.0.0.1"
[http]
port = $S_HTTP
bind = "127.0.0.1"
[tiering]
enabled = false
TOML
"$BIN/strata" --config "$WORK/strata.toml" serve 2>"$WORK/strata.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$S_HTTP/healthz" >/dev/null && break; sleep 0.1; done
T0=$(date +%s.%N)
"$BIN/strata-migrate" --state "$WORK/state" plan --source "OLDPACS@127.0.0.1:$O_DICOM" >&2
"$BIN/strata-migrate" --state "$WORK/state" run --dest-ae STRATA --dest "127.0.0.1:$S_DICOM" --parallel "${MIGRATE_PARALLEL:-2}" 2>/dev/null >&2
T1=$(date +%s.%N)
MIG_S=$(echo "$T1 - $T0" | bc -l)
"$BIN/strata-migrate" --state "$WORK/state" report --out "$WORK/report" >&2

T0=$(date +%s.%N)
for s in "${STUDIES[@]}"; do
  /usr/bin/movescu -S -aec OLDPACS -aem STRATA2 -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$s" \
    127.0.0.1 "$O_DICOM" >/dev/null 2>&1
done
T1=$(date +%s.%N)
RAW2_S=$(echo "$T1 - $T0" | bc -l)
RAW2_N=$("$BIN/strata" --config "$WORK/strata2.toml" ls --json | python3 -c 'import json,sys; print(sum(s["instances"] for s in json.load(sys.stdin)))')
MIG_N=$("$BIN/strata" --config "$WORK/strata.toml" ls --json | python3 -c 'import json,sys; print(sum(s["instances"] for s in json.load(sys.stdin)))')

echo
printf 'raw movescu -> storescp: %d instances in %.2f s, %.1f inst/s\n' "$RAW_N" "$RAW_S" "$(echo "$RAW_N / $RAW_S" | bc -l)"
printf 'strata-migrate (plan + move + verify) -> strata: %d instances in %.2f s, %.1f inst/s\n' \
  "$MIG_N" "$MIG_S" "$(echo "$MIG_N / $MIG_S" | bc -l)"
printf 'ratio strata-migrate / raw move: %.2fx\n' "$(echo "($MIG_N / $MIG_S) / ($RAW_N / $RAW_S)" | bc -l)"
printf 'diagnostic: raw movescu -> strata (durable ingest, one study at a time): %d instances in %.2f s, %.1f inst/s\n' \
  "$RAW2_N" "$RAW2_S" "$(echo "$RAW2_N / $RAW2_S" | bc -l)"
