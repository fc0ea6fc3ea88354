#!/usr/bin/env bash
# S3 requests an idle archive makes (issue 11, item 4): N studies (default 10,000, one
# small instance each) aged to a moto bucket, then `strata serve` left idle for a window
# while a load balancer's probe polls /readyz every 10 s, twice:
#   before: what Strata did before issue 11's cost guards — the orphan scan (LIST of the
#           whole bucket and of its multipart uploads) on every tiering pass, and a fresh
#           cold-tier probe on every /readyz;
#   after:  the defaults — orphan scan once per `orphan_scan_interval` (1 day), the cold
#           probe reused for `readiness_interval` (30 s).
# Passes run every 5 s in the window (12 times the production rate of 1 min) so that the
# window holds many. Every request is counted in moto's request log and classed by kind;
# the per-day figures multiply the measured cost of each event by how often it happens at
# the production defaults (pass every 1 min, probe every 10 s, scrub cycle 30 days).
# Usage: scripts/bench-idle-s3.sh [N=10000] [WINDOW_SECONDS=120]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-10000}
WINDOW=${2:-120}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
export AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=bench AWS_EC2_METADATA_DISABLED=true
ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
WORK=$ROOT/idle-s3
DATA=$ROOT/idle-studies-$N
BASE=${BENCH_PORT_BASE:-21700}
MOTO=$BASE S_DICOM=$((BASE + 1)) S_HTTP=$((BASE + 2))
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cargo build --release --locked --bin strata >&2
STRATA=${STRATA:-$CARGO_TARGET_DIR/release/strata}
if [ ! -f "$DATA.complete" ]; then
  rm -rf "$DATA"
  python3 tests/peers/gen_many.py --out "$DATA" --count "$N" --studies "$N" >/dev/null
  touch "$DATA.complete"
fi
rm -rf "$WORK" && mkdir -p "$WORK"
python3 -m moto.server -H 127.0.0.1 -p "$MOTO" 2>"$WORK/moto.log" >/dev/null &
pids+=($!)
for _ in $(seq 100); do curl -s "http://127.0.0.1:$MOTO/" >/dev/null && break; sleep 0.1; done
python3 -c "
import boto3
boto3.client('s3', endpoint_url='http://127.0.0.1:$MOTO', region_name='us-east-1').create_bucket(Bucket='strata')"

config() { # tiering enabled, orphan_scan_interval, readiness_interval
  cat <<TOML
[archive]
data_dir = "$WORK/data"
min_free_space_mb = 0
[dicom]
port = $S_DICOM
bind = "127.0.0.1"
[http]
port = $S_HTTP
bind = "127.0.0.1"
[cold]
url = "s3://strata/idle"
endpoint = "http://127.0.0.1:$MOTO"
allow_http = true
readiness_interval = "$3"
[tiering]
enabled = $1
hot_max_age = "0s"
scan_interval = "5s"
orphan_scan_interval = "$2"
TOML
}
config false 1day 30s >"$WORK/setup.toml"
echo "importing $N studies and aging them to the bucket ..." >&2
"$STRATA" --config "$WORK/setup.toml" import "$DATA" >/dev/null
"$STRATA" --config "$WORK/setup.toml" tier run --json >"$WORK/aging.json"
OBJECTS=$("$STRATA" --config "$WORK/setup.toml" tier status --json | python3 -c 'import json,sys; s=json.load(sys.stdin); print(s["cold_only_objects"], s["packs"])')
echo "cold-only objects, packs: $OBJECTS" >&2

idle() { # name, orphan_scan_interval, readiness_interval
  config true "$2" "$3" >"$WORK/$1.toml"
  local mark
  mark=$(wc -l <"$WORK/moto.log")
  "$STRATA" --config "$WORK/$1.toml" serve >"$WORK/$1.log" 2>&1 &
  local pid=$!
  for _ in $(seq 100); do curl -s "http://127.0.0.1:$S_HTTP/healthz" >/dev/null && break; sleep 0.1; done
  local end=$((SECONDS + WINDOW))
  while [ $SECONDS -lt $end ]; do
    curl -s -o /dev/null "http://127.0.0.1:$S_HTTP/readyz"
    sleep 10
  done
  kill -TERM "$pid"
  wait "$pid" || true
  tail -n +"$((mark + 1))" "$WORK/moto.log" >"$WORK/$1.requests"
}
idle before 5s 0s
idle after 1day 30s

python3 - "$WORK" "$N" "$WINDOW" <<'PY'
import re, sys
work, n, window = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
line = re.compile(r'"(GET|PUT|HEAD|POST|DELETE) (\S+) HTTP')

def kinds(path):
    out = {}
    for l in open(path):
        m = line.search(l)
        if not m:
            continue
        method, target = m.groups()
        p, _, q = target.partition("?")
        if "uploads" in q and method == "GET":
            k = "ListMultipartUploads"
        elif "list-type" in q or (method == "GET" and p.rstrip("/") == "/strata"):
            k = "ListObjects"
        elif method == "HEAD" and p.rstrip("/") == "/strata":
            k = "HeadBucket"
        elif "strata-archive.json" in p:
            k = f"{method} marker"
        else:
            k = f"{method} object"
        out[k] = out.get(k, 0) + 1
    return out

res = {m: kinds(f"{work}/{m}.requests") for m in ("before", "after")}
probes = window // 10 + 1
passes = window // 5 + 1
print(f"\nS3 requests of an idle archive of {n} studies (one pack each), moto request log,"
      f" {window} s window, passes every 5 s, /readyz every 10 s\n")
allk = sorted(set(res["before"]) | set(res["after"]))
print(f"| request | before (window) | after (window) |")
print(f"|---|---:|---:|")
for k in allk:
    print(f"| {k} | {res['before'].get(k, 0)} | {res['after'].get(k, 0)} |")
print(f"| total | {sum(res['before'].values())} | {sum(res['after'].values())} |")

# cost of one event, measured in the 'before' window
b = res["before"]
scans = max(b.get("ListMultipartUploads", 0), 1)
per_scan = (b.get("ListObjects", 0) + b.get("ListMultipartUploads", 0)) / scans
fresh = max(b.get("HeadBucket", 0), 1)
per_probe = (b.get("HeadBucket", 0) + b.get("GET marker", 0) + b.get("HEAD object", 0)) / fresh
scrub_per_day = n / 30  # one ranged GET per pack member per 30-day cycle
day = {
    "before": {"orphan scans": 1440 * per_scan, "readiness": 8640 * per_probe,
               "scrubber": scrub_per_day},
    "after": {"orphan scans": 1 * per_scan, "readiness": 2880 * per_probe,
              "scrubber": scrub_per_day},
}
print(f"\nper event (measured): one orphan scan = {per_scan:.1f} requests (LIST pages of"
      f" 1,000 keys + the multipart uploads), one fresh readiness probe = {per_probe:.1f}")
print(f"\nper day at production defaults (pass every 1 min, /readyz every 10 s, scrub cycle 30 days)\n")
print("| cause | before | after |")
print("|---|---:|---:|")
for k in ("orphan scans", "readiness", "scrubber"):
    print(f"| {k} | {day['before'][k]:,.0f} | {day['after'][k]:,.0f} |")
tb, ta = sum(day["before"].values()), sum(day["after"].values())
print(f"| total | {tb:,.0f} | {ta:,.0f} |")
print(f"\nratio before/after: {tb / ta:.1f}x")
PY
