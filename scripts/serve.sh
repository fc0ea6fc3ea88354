#!/usr/bin/env bash
# Builds Strata (release) and runs `strata serve` with the given arguments; with none, the
# embedded defaults: AE STRATA on DICOM port 11112, HTTP on 8080, data in ./strata-data.
# Example: scripts/serve.sh --config config/strata.toml
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/install-deps.sh
# the viewer's files (npm @ohif/app); without them /viewer says how to install them
scripts/install-viewer.sh || echo "the viewer could not be installed; /viewer will say so" >&2
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/strata-target}
cargo build --locked --release --bin strata
exec "$CARGO_TARGET_DIR/release/strata" "$@" serve
