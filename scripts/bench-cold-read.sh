#!/usr/bin/env bash
# Retrieval from an S3 cold tier (issue 13): N CT instances (default 1000, 200 per
# study) moved to a loopback SeaweedFS cluster (tests/peers/seaweedfs.sh: a real S3
# endpoint, two volume servers), then every study retrieved whole from cold:
#  - WADO-RS (curl, multipart as stored) and C-GET (DCMTK getscu), MB/s of Part-10 bytes;
#  - with pack windows (`[cold] read_window_mb = 8`, the default: one ranged GET per
#    window of up to 8 MiB of pack) and without (`read_window_mb = 0`: one GET per
#    instance), alternating over ROUNDS rounds (default 3) on the same archive, the
#    server restarted for each; medians and the ratio windows / single.
# With S3_DELAY_MS=D (default 0), Strata reaches SeaweedFS through
# tests/peers/s3_fault_proxy.py, which during the retrievals holds every request D ms
# before forwarding it: a distant S3 endpoint's round trip (no bandwidth limit is set,
# but the proxy is Python and buffers each answer: its own throughput counts too).
# The moves to cold go through it undelayed (the archive records its cold tier's
# endpoint, so both must name the same one).
# Usage: [S3_DELAY_MS=D] scripts/bench-cold-read.sh [N=1000] [ROUNDS=3]
set -euo pipefail
shopt -s inherit_errexit  # a failed retrieval inside $(measure) stops the run
cd "$(dirname "$0")/.."
N=${1:-1000}
ROUNDS=${2:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
export TCP_NODELAY=1
ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
WORK=$ROOT/cold-read
DATA=$ROOT/move-data-$N
# (BASE..BASE+7 and SeaweedFS's gRPC ports BASE+10000.., below the ephemeral range)
BASE=${BENCH_PORT_BASE:-21400}
S_DICOM=$((BASE + 5)) S_HTTP=$((BASE + 6)) PROXY=$((BASE + 7))
DELAY=${S3_DELAY_MS:-0}
pid=""
proxy_pid=""
stop_strata() {
  if [ -n "$pid" ]; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    pid=""
  fi
}
cleanup() {
  stop_strata
  if [ -n "$proxy_pid" ]; then kill "$proxy_pid" 2>/dev/null || true; fi
  tests/peers/seaweedfs.sh stop "$WORK/s3" >/dev/null 2>&1 || true
}
trap cleanup EXIT

cargo build --release --locked --bin strata >&2
STRATA=$CARGO_TARGET_DIR/release/strata
if [ ! -f "$DATA.complete" ]; then
  rm -rf "$DATA"
  python3 tests/peers/gen_ct.py --out "$DATA" --studies $((N / 200)) --instances 200 --seed 11 >/dev/null
  touch "$DATA.complete"
fi
rm -rf "$WORK" && mkdir -p "$WORK"
eval "$(tests/peers/seaweedfs.sh start "$WORK/s3" "$BASE" | grep -E '^(S3_ENDPOINT|AWS_[A-Z_]+)=' | sed 's/^/export /')"
config() { # WINDOW_MB
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
[tiering]
enabled = false
[scrub]
enabled = false
[cold]
url = "s3://strata-test/bench"
endpoint = "$READ_ENDPOINT"
allow_http = true
read_window_mb = $1
TOML
}
READ_ENDPOINT=$S3_ENDPOINT
if [ "$DELAY" != 0 ]; then
  echo '{"delay_ms": 0, "keep_host": true}' > "$WORK/proxy.json"
  python3 tests/peers/s3_fault_proxy.py --listen "$PROXY" --upstream "${S3_ENDPOINT##*:}" \
    --control "$WORK/proxy.json" --log "$WORK/proxy.log" &
  proxy_pid=$!
  READ_ENDPOINT="http://127.0.0.1:$PROXY"
  for _ in $(seq 100); do curl -s -o /dev/null "$READ_ENDPOINT/" && break; sleep 0.1; done
  curl -s -o /dev/null "$READ_ENDPOINT/" || { echo "the S3 proxy did not start" >&2; exit 1; }
fi
config 8
find "$DATA" -name '*.dcm' -print0 | xargs -0 "$STRATA" --config "$WORK/strata.toml" import >/dev/null
UIDS=$("$STRATA" --config "$WORK/strata.toml" ls --json | python3 -c 'import json,sys; print(" ".join(s["study_uid"] for s in json.load(sys.stdin)))')
for uid in $UIDS; do
  "$STRATA" --config "$WORK/strata.toml" tier move "$uid" --to cold >/dev/null
done

measure() { # WINDOW_MB: prints "wado_mb_s cget_mb_s"
  config "$1"
  # (in the $(measure) subshell: stop this server whichever way it ends, and keep its
  # output off the subshell's stdout, which the caller reads to its end)
  trap stop_strata EXIT
  "$STRATA" --config "$WORK/strata.toml" serve >>"$WORK/strata.log" 2>&1 &
  pid=$!
  for _ in $(seq 100); do curl -sf "http://127.0.0.1:$S_HTTP/healthz" >/dev/null && break; sleep 0.1; done
  python3 - "$S_HTTP" "$S_DICOM" "$WORK" $UIDS <<'PY'
import os, shutil, subprocess, sys, time
http, dicom, work, uids = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
t = time.monotonic()
total = 0
for uid in uids:
    out = subprocess.run(["curl", "-sf", "-o", "/dev/null", "-w", "%{size_download}",
                          f"http://127.0.0.1:{http}/dicom-web/studies/{uid}"],
                         check=True, capture_output=True, text=True).stdout
    total += int(out)
wado = total / 1e6 / (time.monotonic() - t)
t = time.monotonic()
got = 0
for uid in uids:
    out = os.path.join(work, "getscu")
    shutil.rmtree(out, ignore_errors=True)
    os.makedirs(out)
    subprocess.run(["/usr/bin/getscu", "-S", "-aec", "STRATA", "-od", out, "-k", "QueryRetrieveLevel=STUDY",
                    "-k", f"StudyInstanceUID={uid}", "127.0.0.1", dicom], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    got += sum(os.path.getsize(os.path.join(out, f)) for f in os.listdir(out))
cget = got / 1e6 / (time.monotonic() - t)
print(f"{wado:.1f} {cget:.1f}")
PY
  stop_strata
}

if [ "$DELAY" != 0 ]; then
  echo "{\"delay_ms\": $DELAY, \"keep_host\": true}" > "$WORK/proxy.json"
fi
results=""
for r in $(seq "$ROUNDS"); do
  # alternate which goes first
  if [ $((r % 2)) -eq 1 ]; then order="8 0"; else order="0 8"; fi
  for w in $order; do
    line=$(measure "$w")
    echo "round $r, read_window_mb = $w: WADO-RS / C-GET MB/s $line" >&2
    results+="$w $line"$'\n'
  done
done
python3 - "$N" <<PY
import statistics, sys
rows = [l.split() for l in """$results""".strip().splitlines()]
med = lambda w, i: statistics.median(float(r[i]) for r in rows if r[0] == w)
delay = int("$DELAY")
where = f", every request held {delay} ms" if delay else ""
print(f"\nRetrieval from an S3 cold tier (SeaweedFS on loopback{where}), {sys.argv[1]} CT instances, "
      f"medians of $ROUNDS rounds\n")
print("| from cold | pack windows (8 MiB) | one GET per instance | ratio |")
print("|---|---:|---:|---:|")
for i, what in ((1, "WADO-RS study retrieve, MB/s"), (2, "C-GET (getscu), MB/s")):
    w, s = med("8", i), med("0", i)
    print(f"| {what} | {w:.1f} | {s:.1f} | {w / s:.2f}x |")
PY
