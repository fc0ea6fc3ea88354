#!/usr/bin/env bash
# Retrieval benchmark (issue 17, item 3): C-MOVE and C-GET of the same N CT instances
# (default 1000: 5 studies x 200, 525 KB each, tests/peers/gen_ct.py) out of Strata and
# out of Orthanc (holding the same data), next to what the destination can take, in one
# run of ROUNDS rounds (default 3; the order of the cases rotates each round so that the
# disk's drift favours nobody). Prints every round, then medians and ratios.
#
# Cases, each moving or getting the five studies one after the other (DCMTK, TCP_NODELAY):
#   move/strata   movescu -aem DEST from Strata into DCMTK `storescp --fork` (Strata opens
#                 [dicom] move_associations = 4 associations to DEST and shares the
#                 instances between them)
#   move/orthanc  the same from Orthanc 1.10 (one association per move)
#   move/ceiling  what the destination takes: DCMTK storescu sending the same files to the
#                 same `storescp --fork` over as many associations as Strata uses (4
#                 processes, a quarter of each study each), study by study
#   get/strata    getscu from Strata (the instances come back on getscu's association)
#   get/orthanc   the same from Orthanc
#   get/ceiling   storescu -> storescp over one association (what one association takes)
# Every receiver writes into a fresh directory; the script checks all N arrived.
# Strata's peak RSS (VmHWM of `strata serve`, read at the end) is printed too.
#
# Usage: scripts/bench-retrieve.sh [N=1000] [ROUNDS=3]
# Environment: BENCH_ROOT (default /var/tmp/strata-bench), BENCH_PORT_BASE (41500),
# CARGO_TARGET_DIR. Exit status non-zero if a case delivered fewer than N instances.
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
ROUNDS=${2:-3}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
export TCP_NODELAY=1
ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
WORK=$ROOT/retrieve
DATA=$ROOT/move-data-$N
BASE=${BENCH_PORT_BASE:-41500}
S_DICOM=$BASE S_HTTP=$((BASE + 1)) O_DICOM=$((BASE + 2)) O_HTTP=$((BASE + 3)) DEST=$((BASE + 4))
LANES=4
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cargo build --release --locked --bin strata >&2
if [ ! -f "$DATA.complete" ]; then
  rm -rf "$DATA"
  python3 tests/peers/gen_ct.py --out "$DATA" --studies $((N / 200)) --instances 200 --seed 11 >/dev/null
  touch "$DATA.complete"
fi
mapfile -t STUDY_DIRS < <(find "$DATA" -mindepth 1 -maxdepth 1 -type d | sort)
mapfile -t STUDIES < <(python3 - "${STUDY_DIRS[@]}" <<'PY'
import os, sys, pydicom
for d in sys.argv[1:]:
    f = sorted(os.listdir(d))[0]
    print(pydicom.dcmread(os.path.join(d, f), stop_before_pixels=True).StudyInstanceUID)
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
move_associations = $LANES
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
strata_pid=$!
pids+=("$strata_pid")
for _ in $(seq 100); do curl -sf "http://127.0.0.1:$S_HTTP/healthz" >/dev/null && break; sleep 0.1; done

# Orthanc with the same data, DEST and GETSCU as modalities
scripts/start-orthanc.sh "$WORK/orthanc" "$O_DICOM" "$O_HTTP" ORTHANC >/dev/null
pids+=("$(cat "$WORK/orthanc/orthanc.pid")")
/usr/bin/storescu -aec ORTHANC +sd +r 127.0.0.1 "$O_DICOM" "$DATA" >/dev/null 2>&1
for m in DEST GETSCU; do
  curl -sf -X PUT "http://127.0.0.1:$O_HTTP/modalities/$m" \
    -d "{\"AET\":\"$m\",\"Host\":\"127.0.0.1\",\"Port\":$DEST}" >/dev/null
done

# wait until nobody holds DEST (storescp's TIME_WAIT) before the next receiver binds it
free_dest() { for _ in $(seq 90); do ss -Htan "sport = :$DEST" | grep -q . || break; sleep 1; done; }

# run_case CASE OUT: one case into the fresh directory OUT; prints "seconds delivered"
run_case() {
  local case=$1 out=$2 scp="" t0 t1 st i
  mkdir -p "$out"
  case $case in
  move/* | get/ceiling)
    free_dest
    /usr/bin/storescp --fork -aet DEST -od "$out" +xa "$DEST" >"$WORK/storescp.log" 2>&1 &
    scp=$!
    for _ in $(seq 100); do (echo > "/dev/tcp/127.0.0.1/$DEST") 2>/dev/null && break; sleep 0.05; done
    ;;
  esac
  sync
  t0=$(date +%s.%N)
  case $case in
  move/strata | move/orthanc)
    local ae=STRATA port=$S_DICOM
    [ "$case" = move/orthanc ] && ae=ORTHANC port=$O_DICOM
    for st in "${STUDIES[@]}"; do
      /usr/bin/movescu -S -aec "$ae" -aem DEST -k QueryRetrieveLevel=STUDY \
        -k "StudyInstanceUID=$st" 127.0.0.1 "$port" >>"$WORK/movescu.log" 2>&1
    done
    ;;
  get/strata | get/orthanc)
    local ae=STRATA port=$S_DICOM
    [ "$case" = get/orthanc ] && ae=ORTHANC port=$O_DICOM
    for st in "${STUDIES[@]}"; do
      /usr/bin/getscu -S -aet GETSCU -aec "$ae" -od "$out" -k QueryRetrieveLevel=STUDY \
        -k "StudyInstanceUID=$st" 127.0.0.1 "$port" >>"$WORK/getscu.log" 2>&1
    done
    ;;
  move/ceiling)
    for d in "${STUDY_DIRS[@]}"; do
      mapfile -t files < <(find "$d" -type f | sort)
      local n=${#files[@]} senders=()
      for ((i = 0; i < LANES; i++)); do
        local from=$((i * n / LANES)) to=$(((i + 1) * n / LANES))
        /usr/bin/storescu -aec DEST 127.0.0.1 "$DEST" "${files[@]:from:to-from}" >>"$WORK/storescu.log" 2>&1 &
        senders+=($!)
      done
      wait "${senders[@]}"
    done
    ;;
  get/ceiling)
    for d in "${STUDY_DIRS[@]}"; do
      /usr/bin/storescu -aec DEST +sd +r 127.0.0.1 "$DEST" "$d" >>"$WORK/storescu.log" 2>&1
    done
    ;;
  esac
  t1=$(date +%s.%N)
  if [ -n "$scp" ]; then kill "$scp"; wait "$scp" 2>/dev/null || true; fi
  local got
  got=$(find "$out" -type f | wc -l)
  rm -rf "$out"
  echo "$(awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }') $got"
}

CASES=(move/strata move/orthanc move/ceiling get/strata get/orthanc get/ceiling)
results="$WORK/results.txt"
: >"$results"
failed=0
for ((r = 0; r < ROUNDS; r++)); do
  k=$((r % ${#CASES[@]}))
  order=("${CASES[@]:k}" "${CASES[@]:0:k}")
  echo "## round $((r + 1)): ${order[*]}" >&2
  for c in "${order[@]}"; do
    read -r secs got < <(run_case "$c" "$WORK/recv-$r-${c//\//-}")
    echo "$r $c $secs $got" >>"$results"
    echo "  $c: $secs s, $got delivered" >&2
    [ "$got" -eq "$N" ] || { echo "WARNING: $c delivered $got of $N" >&2; failed=1; }
  done
done
rss=$(awk '/VmHWM/ { printf "%.1f", $2 / 1024 }' "/proc/$strata_pid/status")

python3 - "$N" "$rss" "$results" <<'PY'
import statistics, sys
n, rss, path = int(sys.argv[1]), sys.argv[2], sys.argv[3]
rate = {}  # (round, case) -> inst/s
for line in open(path):
    r, case, secs, got = line.split()
    rate[(int(r), case)] = int(got) / float(secs)
rounds = sorted({r for r, _ in rate})
print(f"### C-MOVE and C-GET of {n} CT instances ({n // 200} studies x 200, 525 KB), {len(rounds)} rounds\n")
print("| case | median inst/s | min | max | median MB/s |")
print("|---|---:|---:|---:|---:|")
for case in ("move/strata", "move/orthanc", "move/ceiling", "get/strata", "get/orthanc", "get/ceiling"):
    v = [rate[(r, case)] for r in rounds if (r, case) in rate]
    if v:
        print(f"| {case} | {statistics.median(v):.1f} | {min(v):.1f} | {max(v):.1f} | {statistics.median(v) * 0.5257:.1f} |")
print("\n| ratio (within each round) | median | min | max |")
print("|---|---:|---:|---:|")
for a, b, what in (("move/strata", "move/orthanc", "C-MOVE: Strata / Orthanc"),
                   ("move/strata", "move/ceiling", "C-MOVE: Strata / what the destination takes (4 associations)"),
                   ("get/strata", "get/orthanc", "C-GET: Strata / Orthanc"),
                   ("get/strata", "get/ceiling", "C-GET: Strata / what one association takes")):
    v = [rate[(r, a)] / rate[(r, b)] for r in rounds if (r, a) in rate and (r, b) in rate]
    if v:
        print(f"| {what} | {statistics.median(v):.2f}x | {min(v):.2f}x | {max(v):.2f}x |")
print(f"\nStrata peak RSS (VmHWM of strata serve, whole run): {rss} MiB")
PY
exit $failed
