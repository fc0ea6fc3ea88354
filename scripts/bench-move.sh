#!/usr/bin/env bash
# C-MOVE benchmark (issue 4, part a): the same N CT instances (default 1000, 200 per
# study) moved study by study with DCMTK movescu out of Strata and out of Orthanc
# (holding the same data) into DCMTK storescp, in one run; prints instances/s and
# Strata's ratio. Data from tests/peers/gen_ct.py (shared with bench-ingest.sh).
# Usage: scripts/bench-move.sh [N=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
export TCP_NODELAY=1
ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
WORK=$ROOT/move
DATA=$ROOT/move-data-$N
BASE=${BENCH_PORT_BASE:-41500}
S_DICOM=$BASE S_HTTP=$((BASE + 1)) O_DICOM=$((BASE + 2)) O_HTTP=$((BASE + 3)) DEST=$((BASE + 4))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cargo build --release --locked --bin strata >&2
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

# Strata with the data imported, DEST as a peer
cat > "$WORK/strata.toml" <<TOML
[archive]
data_dir = "$WORK/strata-data"
min_free_space_mb = 0
[dicom]
port = $S_DICOM
bind = "127.0.0.1"
[http]
port = $S_HTTP
bind = "127.0.0.1"

[[dicom.peers]]
ae_title = "DEST"
host = "127.0.0.1"
port = $DEST
TOML
"$CARGO_TARGET_DIR/release/strata" --config "$WORK/strata.toml" import "$DATA" >&2
"$CARGO_TARGET_DIR/release/strata" --config "$WORK/strata.toml" serve 2>"$WORK/strata.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$S_HTTP/healthz" >/dev/null && break; sleep 0.1; done

# Orthanc with the same data, DEST as a modality
scripts/start-orthanc.sh "$WORK/orthanc" "$O_DICOM" "$O_HTTP" ORTHANC >/dev/null
pids+=("$(cat "$WORK/orthanc/orthanc.pid")")
/usr/bin/storescu -aec ORTHANC +sd +r 127.0.0.1 "$O_DICOM" "$DATA" >/dev/null 2>&1
curl -sf -X PUT "http://127.0.0.1:$O_HTTP/modalities/DEST" \
  -d "{\"AET\":\"DEST\",\"Host\":\"127.0.0.1\",\"Port\":$DEST}" >/dev/null

move_all() {  # source-ae port label
  local out="$WORK/recv-$3"
  mkdir -p "$out"
  /usr/bin/storescp --fork -aet DEST -od "$out" +xa "$DEST" >"$WORK/storescp-$3.log" 2>&1 &
  local scp=$!
  for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$DEST") 2>/dev/null && break; sleep 0.05; done
  sync
  local t0 t1
  t0=$(date +%s.%N)
  for st in "${STUDIES[@]}"; do
    /usr/bin/movescu -S -aec "$1" -aem DEST -k QueryRetrieveLevel=STUDY -k "StudyInstanceUID=$st" 127.0.0.1 "$2" >>"$WORK/movescu-$3.log" 2>&1
  done
  t1=$(date +%s.%N)
  kill "$scp"; wait "$scp" 2>/dev/null || true
  local got
  got=$(find "$out" -type f | wc -l)
  [ "$got" -eq "$N" ] || echo "WARNING: $3 delivered $got of $N" >&2
  # wait out storescp's TIME_WAIT port before the next run
  for _ in $(seq 90); do ss -Htan "sport = :$DEST" | grep -q . || break; sleep 1; done
  echo "$t0 $t1 $got"
}

read -r s0 s1 sgot < <(move_all STRATA "$S_DICOM" strata)
read -r o0 o1 ogot < <(move_all ORTHANC "$O_DICOM" orthanc)
python3 - "$N" "$s0" "$s1" "$sgot" "$o0" "$o1" "$ogot" <<'PY'
import sys
n = int(sys.argv[1]); s0, s1, sg, o0, o1, og = map(float, sys.argv[2:])
rs, ro = sg / (s1 - s0), og / (o1 - o0)
print(f"### C-MOVE of {n} CT instances ({n // 200} studies) to DCMTK storescp\n")
print("| source | seconds | instances delivered | instances/s | MB/s |")
print("|---|---:|---:|---:|---:|")
print(f"| Strata | {s1 - s0:.2f} | {int(sg)} | {rs:.1f} | {rs * 0.5257:.1f} |")
print(f"| Orthanc | {o1 - o0:.2f} | {int(og)} | {ro:.1f} | {ro * 0.5257:.1f} |")
print(f"\nStrata / Orthanc: {rs / ro:.2f}x")
PY
