#!/usr/bin/env bash
# start-orthanc.sh - start a throw-away, loopback-only Orthanc for tests.
#
# Usage: scripts/start-orthanc.sh DIR DICOM_PORT HTTP_PORT [AET=ORTHANC]
#
# Renders scripts/orthanc.json.template into DIR/orthanc.json (storage and
# index under DIR, RemoteAccessAllowed=false, no authentication,
# DicomAlwaysAllowStore, SyncStorageArea, DicomCheckCalledAet=false), starts
# `/usr/sbin/Orthanc DIR/orthanc.json` in the background with TCP_NODELAY=1
# (log in DIR/orthanc.log), writes its pid to DIR/orthanc.pid, and waits (up
# to 30 s) until http://127.0.0.1:HTTP_PORT/system answers and the DICOM
# port accepts connections.  Prints the pid on stdout and exits 0 when ready;
# on failure kills the Orthanc it started, shows the log tail and exits 1.
#
# ORTHANC_EXTRA_JSON, when set, is a JSON object of settings merged over the template
# (LimitFindResults, DicomModalities, ...).
#
# An existing DIR (database and storage) is reused as is; remove it first for
# an empty archive.  If DIR/orthanc.pid names a still-running Orthanc that
# was started on DIR/orthanc.json, that process is stopped first.
# Stop it with:  kill "$(cat DIR/orthanc.pid)"
set -euo pipefail

ORTHANC_BIN=${ORTHANC_BIN:-/usr/sbin/Orthanc}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
template="$here/orthanc.json.template"

usage() { echo "usage: $0 DIR DICOM_PORT HTTP_PORT [AET=ORTHANC]" >&2; exit 2; }
[[ $# -ge 3 && $# -le 4 ]] || usage
dir=$1 dicom_port=$2 http_port=$3 aet=${4:-ORTHANC}
[[ $dicom_port =~ ^[0-9]+$ && $http_port =~ ^[0-9]+$ ]] || usage
(( dicom_port > 0 && dicom_port < 65536 && http_port > 0 && http_port < 65536 )) || usage
[[ $dicom_port != "$http_port" ]] || { echo "$0: DICOM and HTTP ports must differ" >&2; exit 2; }
[[ $aet =~ ^[\ -~]{1,16}$ && $aet != *\\* ]] || { echo "$0: bad AE title '$aet'" >&2; exit 2; }
[[ -x $ORTHANC_BIN ]] || { echo "$0: $ORTHANC_BIN not found" >&2; exit 1; }
[[ -r $template ]] || { echo "$0: $template not found" >&2; exit 1; }

mkdir -p "$dir"
dir=$(cd "$dir" && pwd)
config="$dir/orthanc.json"
pidfile="$dir/orthanc.pid"
logfile="$dir/orthanc.log"

# Stop a previous Orthanc started by this script on the same DIR.
if [[ -s $pidfile ]]; then
    old=$(cat "$pidfile")
    if [[ $old =~ ^[0-9]+$ ]] && [[ -r /proc/$old/cmdline ]] &&
        [[ "$(tr '\0' ' ' </proc/"$old"/cmdline)" == "$ORTHANC_BIN $config " ]]; then
        echo "$0: stopping previous Orthanc (pid $old)" >&2
        kill "$old" 2>/dev/null || true
        for _ in $(seq 100); do [[ -e /proc/$old ]] || break; sleep 0.1; done
        if [[ -e /proc/$old ]]; then kill -9 "$old" 2>/dev/null || true; fi
    fi
    rm -f "$pidfile"
fi

port_busy() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for p in "$dicom_port" "$http_port"; do
    if port_busy "$p"; then echo "$0: port $p on 127.0.0.1 is already in use" >&2; exit 1; fi
done

mkdir -p "$dir/storage" "$dir/index" "$dir/tmp"
python3 - "$template" "$config" "$dir" "$dicom_port" "$http_port" "$aet" <<'EOF'
import json, sys
template, config, d, dport, hport, aet = sys.argv[1:]
# Drop the template's // comment lines: the result is then plain JSON.
text = "".join(l for l in open(template, encoding="utf-8") if not l.lstrip().startswith("//"))
esc = lambda s: json.dumps(s)[1:-1]  # JSON string body
for key, val in (("@DIR@", esc(d)), ("@AET@", esc(aet)),
                 ("@DICOM_PORT@", str(int(dport))), ("@HTTP_PORT@", str(int(hport)))):
    text = text.replace(key, val)
# ORTHANC_EXTRA_JSON (a JSON object) overrides or adds settings, e.g.
# '{"LimitFindResults": 5, "DicomModalities": {"STRATA": ["STRATA", "127.0.0.1", 11112]}}'
import os
settings = json.loads(text)
settings.update(json.loads(os.environ.get("ORTHANC_EXTRA_JSON") or "{}"))
open(config + ".tmp", "w", encoding="utf-8").write(json.dumps(settings, indent=2))
EOF
mv "$config.tmp" "$config"

TCP_NODELAY=1 "$ORTHANC_BIN" "$config" </dev/null >"$logfile" 2>&1 &
pid=$!
echo "$pid" >"$pidfile"

fail() {
    echo "$0: $*" >&2
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 50); do [[ -e /proc/$pid ]] || break; sleep 0.1; done
    if [[ -e /proc/$pid ]]; then kill -9 "$pid" 2>/dev/null || true; fi
    rm -f "$pidfile"
    tail -n 20 "$logfile" >&2 || true
    exit 1
}

deadline=$((SECONDS + 30))
until curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$http_port/system" && port_busy "$dicom_port"; do
    kill -0 "$pid" 2>/dev/null || fail "Orthanc exited during start-up (see $logfile)"
    (( SECONDS < deadline )) || fail "Orthanc not ready after 30 s (see $logfile)"
    sleep 0.2
done
echo "$pid"
