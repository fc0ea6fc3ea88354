#!/usr/bin/env bash
# Tiering benchmark (issue 3), against moto's S3-compatible server on loopback, in one run:
#  (a) aging N CT instances (default 1000, 200 per study) to cold with `strata tier run`
#      (pack, zstd, upload, read back and verify, record, delete hot) versus uploading the
#      same object files one object per instance with boto3, 8 in parallel;
#  (b) objects per study in the bucket versus ceil(study bytes / pack limit);
#  (c) S3 requests made to recall one instance from a cold pack (C-GET at IMAGE level),
#      counted in moto's request log;
#  (d) recall of a 100-instance study from cold (`strata export`) versus its export from
#      hot, best of 3 each.
# Usage: scripts/bench-tier.sh [N=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
export TCP_NODELAY=1
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true
ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
WORK=$ROOT/tier
DATA=$ROOT/move-data-$N
SMALL=$ROOT/tier-study-100
BASE=${BENCH_PORT_BASE:-21600}
MOTO=$BASE S_DICOM=$((BASE + 1)) S_HTTP=$((BASE + 2))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cargo build --release --locked --bin strata >&2
STRATA=$CARGO_TARGET_DIR/release/strata
if [ ! -f "$DATA.complete" ]; then
  rm -rf "$DATA"
  python3 tests/peers/gen_ct.py --out "$DATA" --studies $((N / 200)) --instances 200 --seed 11 >/dev/null
  touch "$DATA.complete"
fi
if [ ! -f "$SMALL.complete" ]; then
  rm -rf "$SMALL"
  python3 tests/peers/gen_ct.py --out "$SMALL" --studies 1 --instances 100 --seed 12 >/dev/null
  touch "$SMALL.complete"
fi
rm -rf "$WORK" && mkdir -p "$WORK"

python3 -m moto.server -H 127.0.0.1 -p "$MOTO" 2>"$WORK/moto.log" >/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$MOTO/" >/dev/null && break; sleep 0.1; done
python3 - "$MOTO" <<'PY'
import sys, boto3
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
for b in ("plain", "strata"):
    s3.create_bucket(Bucket=b)
PY

config() { # data dir, hot_max_age
  cat <<TOML
[archive]
data_dir = "$1"
min_free_space_mb = 0
[dicom]
port = $S_DICOM
bind = "127.0.0.1"
[http]
port = $S_HTTP
bind = "127.0.0.1"
[cold]
url = "s3://strata/$(basename "$1")"
endpoint = "http://127.0.0.1:$MOTO"
allow_http = true
[tiering]
enabled = false
hot_max_age = "$2"
TOML
}
config "$WORK/aging" "0s" >"$WORK/aging.toml"
"$STRATA" --config "$WORK/aging.toml" import "$DATA" >&2
BYTES=$(du -sb --apparent-size "$WORK/aging/hot/objects" | cut -f1)

# (a) the plain client: the same object files, one object per instance, 8 in parallel
PLAIN=$(python3 - "$MOTO" "$WORK/aging/hot/objects" <<'PY'
import os, sys, time, boto3
from concurrent.futures import ThreadPoolExecutor
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[1]}", region_name="us-east-1")
files = [os.path.join(d, f) for d, _, fs in os.walk(sys.argv[2]) for f in fs]
t = time.monotonic()
with ThreadPoolExecutor(8) as pool:
    list(pool.map(lambda p: s3.upload_file(p, "plain", os.path.basename(p)), files))
print(f"{time.monotonic() - t:.3f} {len(files)}")
PY
)
read -r PLAIN_S PLAIN_N <<<"$PLAIN"

# (a) Strata: one policy pass ages every study (hot_max_age = 0s)
T0=$(date +%s.%N)
"$STRATA" --config "$WORK/aging.toml" tier run --json >"$WORK/pass.json"
T1=$(date +%s.%N)
STRATA_S=$(echo "$T1 - $T0" | bc -l)
"$STRATA" --config "$WORK/aging.toml" tier status --json >"$WORK/status.json"

# (b) objects per study in the bucket
python3 - "$WORK/status.json" "$WORK/aging.toml" "$MOTO" <<'PY' >"$WORK/objects.txt"
import json, sys, boto3
status = json.load(open(sys.argv[1]))
s3 = boto3.client("s3", endpoint_url=f"http://127.0.0.1:{sys.argv[3]}", region_name="us-east-1")
keys = [o["Key"] for p in s3.get_paginator("list_objects_v2").paginate(Bucket="strata", Prefix="aging/")
        for o in p.get("Contents", [])]
print(len(keys), status["packs"], status["cold_only_objects"], status["pack_bytes"])
PY
read -r KEYS PACKS COLD_OBJECTS PACK_BYTES <"$WORK/objects.txt"
STUDIES=$((N / 200))
LIMIT=$((1024 * 1024 * 1024))
BOUND=0
for s in $(seq "$STUDIES"); do BOUND=$((BOUND + (BYTES / STUDIES + LIMIT - 1) / LIMIT)); done

# (c) one instance from a cold pack over C-GET: count S3 requests in moto's log
config "$WORK/small" "30days" >"$WORK/small.toml"
"$STRATA" --config "$WORK/small.toml" import "$SMALL" >&2
STUDY=$("$STRATA" --config "$WORK/small.toml" ls --json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["study_uid"])')
best_export() {
  local best=999999
  for _ in 1 2 3; do
    rm -rf "$WORK/out"
    local a b
    a=$(date +%s.%N)
    "$STRATA" --config "$WORK/small.toml" export "$STUDY" --out "$WORK/out" >/dev/null
    b=$(date +%s.%N)
    best=$(echo "t = $b - $a; if (t < $best) t else $best" | bc -l)
  done
  echo "$best"
}
HOT_EXPORT=$(best_export)
"$STRATA" --config "$WORK/small.toml" tier move "$STUDY" --to cold >/dev/null
COLD_EXPORT=$(best_export)

"$STRATA" --config "$WORK/small.toml" serve 2>"$WORK/strata.log" &
pids+=($!)
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$S_HTTP/healthz" >/dev/null && break; sleep 0.1; done
read -r SERIES SOP < <(python3 - "$SMALL" <<'PY'
import os, sys, pydicom
d = sys.argv[1]
s = sorted(os.listdir(d))[0]
f = sorted(os.listdir(os.path.join(d, s)))[0]
ds = pydicom.dcmread(os.path.join(d, s, f), stop_before_pixels=True)
print(ds.SeriesInstanceUID, ds.SOPInstanceUID)
PY
)
BEFORE=$(grep -c '"GET /strata/' "$WORK/moto.log" || true)
mkdir -p "$WORK/one"
/usr/bin/getscu -S -aec STRATA -od "$WORK/one" -k QueryRetrieveLevel=IMAGE \
  -k "StudyInstanceUID=$STUDY" -k "SeriesInstanceUID=$SERIES" -k "SOPInstanceUID=$SOP" \
  127.0.0.1 "$S_DICOM" >/dev/null 2>&1
AFTER=$(grep -c '"GET /strata/' "$WORK/moto.log" || true)
RANGED=$((AFTER - BEFORE))
GOT=$(find "$WORK/one" -type f | wc -l)

echo
echo "instances: $N in $STUDIES studies, $BYTES bytes"
printf 'plain boto3, 8 parallel, one object per instance: %.2f s  %.1f MB/s  (%d objects)\n' \
  "$PLAIN_S" "$(echo "$BYTES / $PLAIN_S / 1000000" | bc -l)" "$PLAIN_N"
printf 'strata tier run (pack+zstd+upload+verify+record+evict): %.2f s  %.1f MB/s of instances\n' \
  "$STRATA_S" "$(echo "$BYTES / $STRATA_S / 1000000" | bc -l)"
printf 'ratio strata / plain: %.2fx\n' "$(echo "$PLAIN_S / $STRATA_S" | bc -l)"
echo "objects in the bucket: $KEYS for $STUDIES studies (bound ceil(bytes/limit) per study: $BOUND); packs $PACKS, $PACK_BYTES bytes; cold objects $COLD_OBJECTS"
echo "recall of one instance (C-GET IMAGE): $GOT file(s), $RANGED S3 GET request(s)"
printf 'export of a 100-instance study: hot %.3f s, cold %.3f s, ratio %.2fx\n' \
  "$HOT_EXPORT" "$COLD_EXPORT" "$(echo "$COLD_EXPORT / $HOT_EXPORT" | bc -l)"
