#!/usr/bin/env bash
# Fixity benchmark (issue 6): `strata verify --tier hot` over N CT instances on hot disk
# against Debian's `b3sum` over the same object files, in one run, each after dropping
# the page cache (so both read from disk) and again warm (best of 3); prints MB/s and
# the ratio.
# Usage: scripts/bench-verify.sh [N=1000]
set -euo pipefail
cd "$(dirname "$0")/.."
N=${1:-1000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
WORK=$ROOT/verify
DATA=$ROOT/move-data-$N
cargo build --release --locked --bin strata >&2
STRATA=$CARGO_TARGET_DIR/release/strata
if [ ! -f "$DATA.complete" ]; then
  rm -rf "$DATA"
  python3 tests/peers/gen_ct.py --out "$DATA" --studies $((N / 200)) --instances 200 --seed 11 >/dev/null
  touch "$DATA.complete"
fi
rm -rf "$WORK" && mkdir -p "$WORK"
printf '[archive]\ndata_dir = "%s"\nmin_free_space_mb = 0\n[audit]\nenabled = false\n' "$WORK/data" >"$WORK/strata.toml"
"$STRATA" --config "$WORK/strata.toml" import "$DATA" >&2
BYTES=$(du -sb --apparent-size "$WORK/data/hot/objects" | cut -f1)
find "$WORK/data/hot/objects" -type f | sort >"$WORK/files"
drop() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
timed() { local a b; a=$(date +%s.%N); "$@" >/dev/null; b=$(date +%s.%N); echo "$b - $a" | bc -l; }
best() { # best of 3 (warm runs)
  local b=999999 t
  for _ in 1 2 3; do t=$(timed "$@"); b=$(echo "if ($t < $b) $t else $b" | bc -l); done
  echo "$b"
}
for cache in cold warm; do
  if [ "$cache" = cold ]; then
    drop
    S=$(timed "$STRATA" --config "$WORK/strata.toml" verify --tier hot)
    drop
    B=$(timed xargs -a "$WORK/files" b3sum)
  else
    S=$(best "$STRATA" --config "$WORK/strata.toml" verify --tier hot)
    B=$(best xargs -a "$WORK/files" b3sum)
  fi
  printf '%s cache: strata verify %.2f s (%.0f MB/s), b3sum %.2f s (%.0f MB/s), ratio %.2fx\n' "$cache" \
    "$S" "$(echo "$BYTES / $S / 1000000" | bc -l)" "$B" "$(echo "$BYTES / $B / 1000000" | bc -l)" \
    "$(echo "$B / $S" | bc -l)"
done
