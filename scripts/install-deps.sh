#!/usr/bin/env bash
# Installs what building Strata needs on Debian 12: the system RocksDB (linked instead of
# compiling its C++), libclang (for the bindings), and cmake and a C++ compiler (CharLS,
# the JPEG-LS codec dicom-rs uses, is built from source and linked statically).
# Idempotent; needs root.
set -euo pipefail
need=()
for pkg in librocksdb-dev libclang-dev pkg-config cmake g++; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing build dependencies: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
