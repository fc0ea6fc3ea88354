#!/usr/bin/env bash
# C-MOVE benchmark (issue 4, part a), now one case of scripts/bench-retrieve.sh: the same
# N CT instances (default 1000, 200 per study, in $BENCH_ROOT/move-data-N) moved study by
# study with DCMTK movescu out of Strata and out of Orthanc into DCMTK storescp, with
# C-GET and the destination's own ceiling beside them; one round.
# Usage: scripts/bench-move.sh [N=1000]
exec "$(dirname "$0")/bench-retrieve.sh" "${1:-1000}" 1
