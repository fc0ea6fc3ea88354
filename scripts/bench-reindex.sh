#!/usr/bin/env bash
# bench-reindex.sh [N=1000]: how long `strata reindex` takes to rebuild the index from
# the hot objects alone (DESIGN promise 5), per object and per million objects.
#
# Imports the N generated CT instances of scripts/bench-ingest.sh ($BENCH_ROOT/data-N,
# made there if missing) into a fresh archive, then runs `strata reindex` twice: once
# after dropping the page cache (every object read from the disk: needs root), once
# warm. Reindex reads and re-hashes every object, so its time is the disk's read rate
# plus blake3; the per-million figure is that rate carried over (the objects are what
# costs, not the index). Prints a Markdown table; peak RSS from /usr/bin/time.
#
# Environment: STRATA_BIN (default: the release build), BENCH_ROOT (/var/tmp/strata-bench).
set -euo pipefail
N=${1:-1000}
here=$(cd "$(dirname "$0")" && pwd)
BENCH_ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
STRATA_BIN=${STRATA_BIN:-${CARGO_TARGET_DIR:-$here/../target}/release/strata}
data="$BENCH_ROOT/data-$N"
if [[ ! -f $data/.complete ]]; then
    # the same data as scripts/bench-ingest.sh makes (200 instances per study, seed 1)
    studies=$(( (N + 199) / 200 ))
    while (( N % studies )); do studies=$((studies + 1)); done
    rm -rf "$data"
    mkdir -p "$data"
    summary=$(python3 "$here/../tests/peers/gen_ct.py" --out "$data" --studies "$studies" \
        --instances $((N / studies)) --rows 512 --cols 512 --seed 1 --patient-prefix BENCH)
    { echo "studies=$studies instances=$((N / studies)) rows=512 cols=512 seed=1"; echo "$summary"; } >"$data/.complete"
fi
dir="$BENCH_ROOT/runs/reindex"
rm -rf "$dir"
mkdir -p "$dir"
cat >"$dir/strata.toml" <<TOML
[archive]
data_dir = "$dir/data"
TOML
"$STRATA_BIN" --config "$dir/strata.toml" import "$data" >/dev/null 2>&1 || true
bytes=$(du -sb "$dir/data/hot/objects" | cut -f1)
run() {  # label -> "seconds peak_kib"
    /usr/bin/time -f "%e %M" -o "$dir/time" "$STRATA_BIN" --config "$dir/strata.toml" reindex >&2
    cat "$dir/time"
}
sync
if echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then cold=$(run); else cold="n/a n/a"; fi
warm=$(run)
echo "### strata reindex of $N CT objects ($(awk -v b="$bytes" 'BEGIN{printf "%.1f", b/1e6}') MB)"
echo
echo "| page cache | seconds | ms per object | minutes per million objects | MB/s | peak RSS (MiB) |"
echo "|---|---:|---:|---:|---:|---:|"
for row in "cold:$cold" "warm:$warm"; do
    label=${row%%:*}; read -r secs kib <<<"${row#*:}"
    [[ $secs == n/a ]] && { echo "| $label | not measured (needs root to drop the cache) | | | | |"; continue; }
    awk -v l="$label" -v s="$secs" -v k="$kib" -v n="$N" -v b="$bytes" 'BEGIN {
        printf "| %s | %.2f | %.3f | %.1f | %.0f | %.1f |\n", l, s, 1000*s/n, s/n*1e6/60, b/1e6/s, k/1024 }'
done
rm -rf "$dir"
