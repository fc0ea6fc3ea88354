#!/usr/bin/env bash
# Fetches the OHIF viewer's prebuilt dist/ (npm @ohif/app, pinned) into
# ${STRATA_VIEWER:-/usr/local/share/strata/viewer}, which `[web] viewer_dir` names by
# default. Idempotent. Strata serves these files same-origin and answers the viewer's
# app-config.js itself (pointed at its own /dicom-web); the files are never committed.
set -euo pipefail
version=3.13.2
dest=${STRATA_VIEWER:-/usr/local/share/strata/viewer}
if [ -f "$dest/.ohif-$version" ] && [ -f "$dest/index.html" ]; then
  exit 0
fi
echo "installing the OHIF viewer $version into $dest" >&2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "@ohif/app@$version" >/dev/null)
tar xzf "$work"/ohif-app-"$version".tgz -C "$work"
rm -rf "$dest.new"
mkdir -p "$(dirname "$dest")"
mv "$work/package/dist" "$dest.new"
touch "$dest.new/.ohif-$version"
rm -rf "$dest"
mv "$dest.new" "$dest"
