#!/usr/bin/env bash
# bench-ingest.sh - C-STORE ingest benchmark: Strata vs Orthanc vs DCMTK storescp.
#
# Usage: scripts/bench-ingest.sh [N_INSTANCES=1000]
#
# Generates N synthetic 512x512 16-bit CT instances (512 KiB each) with
# tests/peers/gen_ct.py into $BENCH_ROOT/data-N (reused when complete), then,
# for each receiver, sends the whole set with DCMTK /usr/bin/storescu
# (TCP_NODELAY=1, default presentation contexts) over 1 association (one
# storescu process) and over 4 associations (4 storescu processes in
# parallel, each sending a contiguous quarter of the files).  Every run gets
# a fresh, empty receiver that is stopped by pid afterwards.  Wall-clock time
# is measured around the storescu processes only (date +%s.%N).
#
# Receivers:
#   strata    $STRATA_BIN --config CFG serve   (CFG written by this script;
#             ready when /healthz answers; peak RSS = VmHWM read just before
#             SIGTERM; instances counted afterwards with `ls --json`)
#   orthanc   scripts/start-orthanc.sh (SyncStorageArea on; counted with
#             GET /statistics -> CountInstances; peak RSS = VmHWM)
#   storescp  /usr/bin/storescp -od DIR +xa PORT (--fork for 4 associations;
#             counted as files in DIR).  Note: storescp does not fsync.
#
# Output: a Markdown table on stdout (receiver, associations, instances/s,
# MB/s with MB = 10^6 bytes, peak RSS), Strata's throughput ratios to
# Orthanc and storescp at 1 and 4 associations, and Strata's peak RSS.
# Progress and diagnostics go to stderr; logs are kept in $BENCH_ROOT/logs.
# Exit status is non-zero if any storescu failed, any receiver failed to
# start, or a receiver did not end up with exactly N instances.
#
# Environment:
#   STRATA_BIN       default ${CARGO_TARGET_DIR:-/var/tmp/strata-target}/release/strata
#   SKIP_STRATA=1    skip the Strata runs (e.g. before it is built)
#   BENCH_ROOT       work directory, default /var/tmp/strata-bench
#   BENCH_PORT_BASE  first of 5 consecutive loopback ports, default 41300
#   BENCH_TIMEOUT    seconds allowed per storescu process, default 1800
#   BENCH_RECEIVERS  space-separated subset/order, default "strata orthanc storescp"
#   KEEP_RUNS=1      keep each run's received data (default: deleted once counted)
#   STRATA_EXTRA_TOML  more sections for Strata's config (e.g. an [audit] section)
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/.." && pwd)

N=${1:-1000}
[[ $N =~ ^[0-9]+$ ]] && (( N >= 4 )) || { echo "usage: $0 [N_INSTANCES>=4, default 1000]" >&2; exit 2; }
STRATA_BIN=${STRATA_BIN:-${CARGO_TARGET_DIR:-/var/tmp/strata-target}/release/strata}
SKIP_STRATA=${SKIP_STRATA:-0}
BENCH_ROOT=${BENCH_ROOT:-/var/tmp/strata-bench}
PORT_BASE=${BENCH_PORT_BASE:-41300}
BENCH_TIMEOUT=${BENCH_TIMEOUT:-1800}
RECEIVERS=${BENCH_RECEIVERS:-strata orthanc storescp}
KEEP_RUNS=${KEEP_RUNS:-0}

STORESCU=/usr/bin/storescu
STORESCP=/usr/bin/storescp
ECHOSCU=/usr/bin/echoscu
export TCP_NODELAY=1   # DCMTK and Orthanc: disable Nagle (else ~40 ms per store)

STORESCP_PORT=$PORT_BASE
ORTHANC_DICOM_PORT=$((PORT_BASE + 1))
ORTHANC_HTTP_PORT=$((PORT_BASE + 2))
STRATA_DICOM_PORT=$((PORT_BASE + 3))
STRATA_HTTP_PORT=$((PORT_BASE + 4))

log() { echo "[bench] $*" >&2; }
die() { log "ERROR: $*"; exit 1; }

for tool in "$STORESCU" "$STORESCP" "$ECHOSCU" /usr/sbin/Orthanc; do
    [[ -x $tool ]] || die "$tool not found"
done
command -v curl >/dev/null || die "curl not found"
command -v python3 >/dev/null || die "python3 not found"
if [[ $SKIP_STRATA != 1 && " $RECEIVERS " == *" strata "* && ! -x $STRATA_BIN ]]; then
    die "Strata binary $STRATA_BIN not found (build it, set STRATA_BIN, or SKIP_STRATA=1)"
fi

# ---------------------------------------------------------------- cleanup
SERVER_PIDS=()     # receivers we started and have not stopped yet
CLIENT_PIDS=()     # storescu processes of the current run

wait_gone() {  # pid timeout_seconds
    local pid=$1 i
    for ((i = 0; i < $2 * 10; i++)); do
        [[ -e /proc/$pid ]] || return 0
        # reap it if it is our child (avoids a zombie that never "goes")
        if ! kill -0 "$pid" 2>/dev/null; then return 0; fi
        [[ "$(awk '{print $3}' /proc/"$pid"/stat 2>/dev/null)" == Z ]] && { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    return 1
}

stop_pid() {  # pid [timeout=30]: SIGTERM, wait, SIGKILL
    local pid=$1 t=${2:-30}
    [[ -n $pid ]] || return 0
    kill -TERM "$pid" 2>/dev/null || return 0
    if ! wait_gone "$pid" "$t"; then
        log "pid $pid did not stop after ${t}s, sending SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
        wait_gone "$pid" 5 || true
    fi
    wait "$pid" 2>/dev/null || true
}

forget_server() {
    local p keep=()
    for p in "${SERVER_PIDS[@]}"; do [[ $p == "$1" ]] || keep+=("$p"); done
    SERVER_PIDS=("${keep[@]}")
}

cleanup() {
    local rc=$? p
    trap - EXIT INT TERM
    for p in "${CLIENT_PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${SERVER_PIDS[@]}"; do
        # storescp --fork children (one per association) die with their parent's
        # associations; stop any that are still around, by pid.
        for c in $(pgrep -P "$p" 2>/dev/null || true); do kill -TERM "$c" 2>/dev/null || true; done
        stop_pid "$p" 10
    done
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ---------------------------------------------------------------- data set
mkdir -p "$BENCH_ROOT/logs" "$BENCH_ROOT/runs"
data="$BENCH_ROOT/data-$N"
per_study=200
studies=$(( (N + per_study - 1) / per_study ))
while (( N % studies )); do studies=$((studies + 1)); done
instances=$((N / studies))
stamp="studies=$studies instances=$instances rows=512 cols=512 seed=1"
if [[ -f $data/.complete && "$(head -n1 "$data/.complete")" == "$stamp" ]]; then
    log "reusing $N instances in $data"
else
    log "generating $N instances ($studies studies x $instances) in $data"
    rm -rf "$data"
    mkdir -p "$data"
    summary=$(python3 "$repo/tests/peers/gen_ct.py" --out "$data" --studies "$studies" \
        --instances "$instances" --rows 512 --cols 512 --seed 1 --patient-prefix BENCH)
    { echo "$stamp"; echo "$summary"; } >"$data/.complete"
fi
mapfile -t FILES < <(find "$data" -type f -name '*.dcm' | sort)
(( ${#FILES[@]} == N )) || die "expected $N files in $data, found ${#FILES[@]} (delete it and rerun)"
TOTAL_BYTES=$(du -cb "${FILES[@]}" | tail -n1 | cut -f1)
log "data: $N files, $TOTAL_BYTES bytes"
cat "${FILES[@]}" >/dev/null   # warm the page cache: measure receivers, not our disk reads

# ---------------------------------------------------------------- senders
# send AE NASSOC TAG -> sets ELAPSED; returns non-zero if a storescu failed
send() {
    local aec=$1 port=$2 nassoc=$3 tag=$4 i start end rc=0 n=${#FILES[@]}
    local -a chunk
    CLIENT_PIDS=()
    start=$(date +%s.%N)
    for ((i = 0; i < nassoc; i++)); do
        local from=$((i * n / nassoc)) to=$(((i + 1) * n / nassoc))
        chunk=("${FILES[@]:from:to-from}")
        timeout "$BENCH_TIMEOUT" "$STORESCU" -aet BENCHSCU -aec "$aec" 127.0.0.1 "$port" \
            "${chunk[@]}" >"$BENCH_ROOT/logs/$tag-scu$i.log" 2>&1 &
        CLIENT_PIDS+=($!)
    done
    for i in "${!CLIENT_PIDS[@]}"; do
        if ! wait "${CLIENT_PIDS[$i]}"; then
            rc=1
            log "storescu #$i failed ($tag), see $BENCH_ROOT/logs/$tag-scu$i.log"
            tail -n 5 "$BENCH_ROOT/logs/$tag-scu$i.log" >&2 || true
        fi
    done
    end=$(date +%s.%N)
    CLIENT_PIDS=()
    ELAPSED=$(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.3f", b - a }')
    return $rc
}

wait_echo() {  # aet port pid: until C-ECHO succeeds (30 s)
    local deadline=$((SECONDS + 30))
    until "$ECHOSCU" -q -to 2 -aec "$1" 127.0.0.1 "$2" >/dev/null 2>&1; do
        kill -0 "$3" 2>/dev/null || return 1
        (( SECONDS < deadline )) || return 1
        sleep 0.1
    done
}

vmhwm_mib() {  # pid -> peak RSS in MiB (or "?")
    awk '/^VmHWM:/ { printf "%.1f", $2 / 1024; found = 1 } END { if (!found) print "?" }' \
        "/proc/$1/status" 2>/dev/null || echo "?"
}

# ---------------------------------------------------------------- results
declare -A IPS MBS SECS RSS STATUS PHASES
FAILED=0
record() {  # receiver nassoc status [rss]
    local key="$1/$2"
    STATUS[$key]=$3
    RSS[$key]=${4:--}
    if [[ $3 == ok ]]; then
        IPS[$key]=$(awk -v n="$N" -v s="$ELAPSED" 'BEGIN { printf "%.1f", n / s }')
        MBS[$key]=$(awk -v b="$TOTAL_BYTES" -v s="$ELAPSED" 'BEGIN { printf "%.1f", b / 1e6 / s }')
        SECS[$key]=$ELAPSED
        log "$1, $2 assoc: $N instances in ${ELAPSED}s = ${IPS[$key]} inst/s, ${MBS[$key]} MB/s"
    else
        FAILED=1
        log "$1, $2 assoc: $3"
    fi
}

# phases HTTP_PORT -> "receive=0.512 admit=0.460 ..." from strata_commit_phase_seconds:
# ms per instance (receive, admit, answer) or per commit group (files, place, index)
phases() {
    curl -s --max-time 5 "http://127.0.0.1:$1/metrics" | awk '
        /^strata_commit_phase_seconds_(sum|count)/ {
            match($0, /phase="[a-z]+"/); p = substr($0, RSTART + 7, RLENGTH - 8)
            if ($0 ~ /_sum/) s[p] = $NF; else c[p] = $NF
        }
        END { n = split("receive admit answer files place index", order, " ")
              for (i = 1; i <= n; i++) { p = order[i]; if (c[p] > 0) printf "%s=%.3f ", p, 1000 * s[p] / c[p] } }'
}

fresh_dir() { rm -rf "$1"; mkdir -p "$1"; }
finish_run() {  # dir: free the disk space and flush before the next run
    [[ $KEEP_RUNS == 1 ]] || rm -rf "$1"
    sync
}

# ---------------------------------------------------------------- receivers
run_storescp() {
    local nassoc=$1 dir="$BENCH_ROOT/runs/storescp-$1" tag="storescp-$1" pid got st=ok
    local -a fork=()
    (( nassoc > 1 )) && fork=(--fork)
    fresh_dir "$dir"
    # storescp binds without SO_REUSEADDR: wait out TIME_WAIT sockets of an earlier run
    for _ in $(seq 1 90); do
        ss -Htan "sport = :$STORESCP_PORT" 2>/dev/null | grep -q . || break
        sleep 1
    done
    "$STORESCP" "${fork[@]}" -aet STORESCP -od "$dir" +xa "$STORESCP_PORT" \
        </dev/null >"$BENCH_ROOT/logs/$tag.log" 2>&1 &
    pid=$!
    SERVER_PIDS+=("$pid")
    if ! wait_echo STORESCP "$STORESCP_PORT" "$pid"; then
        record storescp "$nassoc" "FAILED: storescp did not start"
    else
        send STORESCP "$STORESCP_PORT" "$nassoc" "$tag" || st="FAILED: storescu"
        # let --fork children finish writing and exit
        for c in $(pgrep -P "$pid" 2>/dev/null || true); do wait_gone "$c" 10 || kill -TERM "$c" 2>/dev/null || true; done
        got=$(find "$dir" -type f | wc -l)
        [[ $st != ok || $got -eq $N ]] || st="FAILED: received $got of $N"
        record storescp "$nassoc" "$st"
    fi
    stop_pid "$pid" 10
    forget_server "$pid"
    finish_run "$dir"
}

run_orthanc() {
    local nassoc=$1 dir="$BENCH_ROOT/runs/orthanc-$1" tag="orthanc-$1" pid got rss st=ok
    fresh_dir "$dir"
    if ! pid=$("$here/start-orthanc.sh" "$dir" "$ORTHANC_DICOM_PORT" "$ORTHANC_HTTP_PORT" ORTHANC \
        2>"$BENCH_ROOT/logs/$tag-start.log"); then
        cat "$BENCH_ROOT/logs/$tag-start.log" >&2
        record orthanc "$nassoc" "FAILED: Orthanc did not start"
        return 0
    fi
    SERVER_PIDS+=("$pid")
    send ORTHANC "$ORTHANC_DICOM_PORT" "$nassoc" "$tag" || st="FAILED: storescu"
    got=$(curl -sf "http://127.0.0.1:$ORTHANC_HTTP_PORT/statistics" |
        python3 -c 'import json,sys; print(json.load(sys.stdin)["CountInstances"])' || echo "?")
    [[ $st != ok || $got == "$N" ]] || st="FAILED: received $got of $N"
    rss=$(vmhwm_mib "$pid")
    stop_pid "$pid" 60
    forget_server "$pid"
    cp "$dir/orthanc.log" "$BENCH_ROOT/logs/$tag.log" 2>/dev/null || true
    record orthanc "$nassoc" "$st" "$rss"
    finish_run "$dir"
}

run_strata() {
    local nassoc=$1 dir="$BENCH_ROOT/runs/strata-$1" tag="strata-$1" pid got rss st=ok deadline
    fresh_dir "$dir"
    local cfg="$dir/strata.toml"
    cat >"$cfg" <<EOF
[archive]
data_dir = "$dir/data"

[dicom]
ae_title = "STRATA"
port = $STRATA_DICOM_PORT
bind = "127.0.0.1"

[http]
port = $STRATA_HTTP_PORT
bind = "127.0.0.1"

${STRATA_EXTRA_TOML:-}
EOF
    "$STRATA_BIN" --config "$cfg" serve </dev/null >"$BENCH_ROOT/logs/$tag.log" 2>&1 &
    pid=$!
    SERVER_PIDS+=("$pid")
    deadline=$((SECONDS + 30))
    until curl -sf -o /dev/null --max-time 2 "http://127.0.0.1:$STRATA_HTTP_PORT/healthz"; do
        if ! kill -0 "$pid" 2>/dev/null || (( SECONDS >= deadline )); then
            tail -n 20 "$BENCH_ROOT/logs/$tag.log" >&2 || true
            record strata "$nassoc" "FAILED: Strata did not become healthy"
            stop_pid "$pid" 10
            forget_server "$pid"
            return 0
        fi
        sleep 0.1
    done
    send STRATA "$STRATA_DICOM_PORT" "$nassoc" "$tag" || st="FAILED: storescu"
    PHASES["strata/$nassoc"]=$(phases "$STRATA_HTTP_PORT")
    rss=$(vmhwm_mib "$pid")
    stop_pid "$pid" 60
    forget_server "$pid"
    got=$("$STRATA_BIN" --config "$cfg" ls --json 2>>"$BENCH_ROOT/logs/$tag.log" |
        python3 -c 'import json,sys; print(sum(int(s["instances"]) for s in json.load(sys.stdin)))' || echo "?")
    [[ $st != ok || $got == "$N" ]] || st="FAILED: received $got of $N"
    record strata "$nassoc" "$st" "$rss"
    finish_run "$dir"
}

for r in $RECEIVERS; do
    for nassoc in 1 4; do
        case $r in
            strata)
                if [[ $SKIP_STRATA == 1 ]]; then STATUS["strata/$nassoc"]=skipped; continue; fi
                run_strata "$nassoc" ;;
            orthanc) run_orthanc "$nassoc" ;;
            storescp) run_storescp "$nassoc" ;;
            *) die "unknown receiver '$r' in BENCH_RECEIVERS" ;;
        esac
    done
done

# ---------------------------------------------------------------- report
ratio() {  # a b
    local a=${IPS[$1]:-} b=${IPS[$2]:-}
    if [[ -n $a && -n $b ]]; then awk -v a="$a" -v b="$b" 'BEGIN { printf "%.2fx", a / b }'; else echo "n/a"; fi
}
mb=$(awk -v b="$TOTAL_BYTES" 'BEGIN { printf "%.1f", b / 1e6 }')
echo "### Ingest benchmark: $N CT instances (512x512x16 bit, $mb MB total), storescu over loopback"
echo
echo "| receiver | associations | seconds | instances/s | MB/s | peak RSS (MiB) |"
echo "|---|---:|---:|---:|---:|---:|"
for r in $RECEIVERS; do
    for nassoc in 1 4; do
        key="$r/$nassoc"
        case ${STATUS[$key]:-not run} in
            ok) echo "| $r | $nassoc | ${SECS[$key]} | ${IPS[$key]} | ${MBS[$key]} | ${RSS[$key]} |" ;;
            *) echo "| $r | $nassoc | ${STATUS[$key]:-not run} | | | |" ;;
        esac
    done
done
echo
echo "| Strata throughput ratio | 1 association | 4 associations |"
echo "|---|---:|---:|"
echo "| vs Orthanc | $(ratio strata/1 orthanc/1) | $(ratio strata/4 orthanc/4) |"
echo "| vs storescp | $(ratio strata/1 storescp/1) | $(ratio strata/4 storescp/4) |"
echo
peak="n/a"
for nassoc in 1 4; do
    v=${RSS["strata/$nassoc"]:-}
    if [[ -n $v && $v != - && $v != "?" ]]; then
        if [[ $peak == n/a ]] || awk -v a="$v" -v b="$peak" 'BEGIN { exit !(a > b) }'; then peak=$v; fi
    fi
done
echo "Strata peak RSS (VmHWM): $peak MiB"
for nassoc in 1 4; do
    [[ -z ${PHASES["strata/$nassoc"]:-} ]] ||
        echo "Strata phases, $nassoc association(s), ms (strata_commit_phase_seconds: receive/admit/answer per instance, files/place/index per group): ${PHASES["strata/$nassoc"]}"
done
echo
echo "Notes: MB = 10^6 bytes; storescp does not fsync, Orthanc runs with SyncStorageArea=true;"
echo "each receiver advertises its own max PDU (storescp/Orthanc: 16 KiB)."

exit "$FAILED"
