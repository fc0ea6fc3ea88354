#!/usr/bin/env bash
# A throwaway PostgreSQL high-availability cluster on loopback for the tests: a 3-member
# etcd and two Patroni nodes, each managing a PostgreSQL 15 (Debian patroni, etcd-server,
# postgresql-15; root cannot run PostgreSQL, so Patroni and postgres run as the `postgres`
# user: ../shared/reference). Synchronous replication (Patroni synchronous_mode, not
# strict), so a commit the client saw survives the loss of the leader, and the survivor
# takes writes alone.
#   patroni.sh start DIR BASEPORT   create DIR (it must not hold a cluster yet), start it,
#                                   wait for a leader and a streaming synchronous replica,
#                                   print PG_URL=postgresql://postgres@127.0.0.1:P1,127.0.0.1:P2/postgres?target_session_attrs=read-write
#                                   and PG_PORTS=P1,P2
#   patroni.sh leader DIR [WAIT]    print the PostgreSQL port of the current leader (waiting
#                                   up to WAIT seconds for one, default 0)
#   patroni.sh kill-leader DIR      SIGKILL the leader's Patroni and its postgres (the machine
#                                   dies); print its port. The other node takes writes again
#                                   ~9-10 s later (the leader key's ttl); no confirmed commit lost
#   patroni.sh stop DIR             stop Patroni (and its postgres), then etcd, by the pids
#                                   in DIR; SIGKILL after a timeout; idempotent
# Ports from BASEPORT (B): etcd clients B..B+2, etcd peers B+3..B+5, PostgreSQL B+6 and B+7,
# Patroni REST API B+8 and B+9; all ten must be free (best below 32768: above, the kernel's
# ephemeral ports, any outgoing connection may hold one). Trust authentication from
# 127.0.0.1 (user postgres, and the replication user replicator). Logs: DIR/etcdN.log,
# DIR/nodeN/patroni.log, DIR/nodeN/pglog/ (the servers' logs).
set -euo pipefail
bin=/usr/lib/postgresql/15/bin
as_postgres() { su postgres -s /bin/sh -c "$1"; }
# the pid in FILE if it is alive and its command line holds WORD
live_pid() {
  local pid
  pid=$(head -1 "$1" 2>/dev/null) || return 1
  [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null || return 1
  tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q -- "$2" || return 1
  echo "$pid"
}
# SIGKILL the postmaster of node N (from its postmaster.pid) and its children; each child
# is its own session, so the postmaster is stopped first: then it forks no new one
kill_postgres() {
  local pm
  pm=$(live_pid "$dir/node$1/data/postmaster.pid" postgres) || return 0
  kill -STOP "$pm" 2>/dev/null || true
  # shellcheck disable=SC2046
  kill -KILL "$pm" $(pgrep -P "$pm") 2>/dev/null || true
}
http_code() { curl -s -o /dev/null -m 2 -w '%{http_code}' "$1" || true; }
# the number (0, 1) of the node that holds the leader key and runs as primary, if any
leader_node() {
  local i
  for i in 0 1; do
    if [ "$(http_code "http://127.0.0.1:$((base + 8 + i))/primary")" = 200 ]; then
      echo "$i"
      return 0
    fi
  done
  return 1
}
# wait until no pid of the list is alive, at most $1 tenths of a second; then SIGKILL
reap() {
  local tenths=$1 p left
  shift
  for _ in $(seq 1 "$tenths"); do
    left=
    for p in "$@"; do kill -0 "$p" 2>/dev/null && left=1; done
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  kill -KILL "$@" 2>/dev/null || true
  sleep 0.2
}
tails() {
  local f
  for f in "$dir"/etcd?.log "$dir"/node?/patroni.log "$dir"/node?/pglog/*; do
    [ -f "$f" ] || continue
    echo "--- $f" >&2
    tail -n 25 "$f" >&2
  done
}
# stop the cluster in $dir (ports from $base), whatever of it runs
stop_cluster() {
  local lead paused pids pid pm st i
  # Maintenance mode first: Patroni then stops at once and leaves postgres to us (otherwise
  # each node waits seconds for the other: the leader for its replica's checkpoint, a
  # synchronous replica to be released, and the replica promotes itself meanwhile)
  if lead=$(leader_node); then
    curl -s -m 2 -X PATCH -d '{"pause": true}' "http://127.0.0.1:$((base + 8 + lead))/config" >/dev/null || true
    for _ in $(seq 1 50); do
      paused=1
      for i in 0 1; do
        live_pid "$dir/node$i/patroni.pid" patroni >/dev/null || continue
        curl -s -m 1 "http://127.0.0.1:$((base + 8 + i))/patroni" | grep -q '"pause": true' || paused=
      done
      [ -n "$paused" ] && break
      sleep 0.1
    done
  fi
  pids=
  for i in 0 1; do
    pids="$pids $(live_pid "$dir/node$i/patroni.pid" patroni || true)"
  done
  # shellcheck disable=SC2086
  [ -z "${pids// /}" ] || { kill -TERM $pids 2>/dev/null || true; reap 300 $pids; }
  # postgres (fast shutdown), left to us or behind (a Patroni killed, or slow to stop it)
  pids=
  for i in 0 1; do
    if pm=$(live_pid "$dir/node$i/data/postmaster.pid" postgres); then
      kill -INT "$pm" 2>/dev/null || true
      pids="$pids $pm $(pgrep -P "$pm" || true)"
    fi
  done
  # shellcheck disable=SC2086
  [ -z "${pids// /}" ] || reap 100 $pids
  # etcd: the followers, then the leader once they are gone (an etcd leader that stops
  # hands its leadership over first, and waits 7 s for a member that is stopping too)
  lead=
  for i in 0 1 2; do
    st=$(curl -s -m 1 -X POST -d '{}' "http://127.0.0.1:$((base + i))/v3/maintenance/status" || true)
    [ -n "$st" ] && [ "$(echo "$st" | sed -n 's/.*"member_id":"\([0-9]*\)".*/\1/p')" \
      = "$(echo "$st" | sed -n 's/.*"leader":"\([0-9]*\)".*/\1/p')" ] && lead=$i
  done
  pids=
  for i in $(echo 0 1 2 | tr -d "${lead:-x}") $lead; do
    [ "$i" = "$lead" ] && sleep 0.5
    pid=$(live_pid "$dir/etcd$i.pid" etcd) || continue
    kill -TERM "$pid" 2>/dev/null || true
    pids="$pids $pid"
  done
  # shellcheck disable=SC2086
  [ -z "${pids// /}" ] || reap 50 $pids
}
# a failed start: say why, show the logs, stop what runs
fail() {
  echo "patroni.sh: $*" >&2
  tails
  stop_cluster
  exit 1
}
case "${1:-}" in
start)
  dir=$2 base=$3
  [ -e "$dir/baseport" ] && { echo "patroni.sh: $dir already holds a cluster" >&2; exit 1; }
  for cmd in /usr/bin/etcd /usr/bin/patroni "$bin/postgres"; do
    [ -x "$cmd" ] || { echo "patroni.sh: $cmd missing (scripts/install-peers.sh)" >&2; exit 1; }
  done
  # the ten ports must be free (a port of the kernel's ephemeral range, 32768-60999 here, may
  # be some connection's local port: a BASEPORT below 32768 avoids that)
  for p in $(seq "$base" $((base + 9))); do
    python3 -c 'import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", int(sys.argv[1]))); s.listen()' "$p" 2>/dev/null \
      || { echo "patroni.sh: port $p (BASEPORT+$((p - base))) is in use" >&2; exit 1; }
  done
  mkdir -p "$dir"
  dir=$(cd "$dir" && pwd)
  # the postgres user must reach DIR/nodeN through DIR and its parent
  chmod 711 "$dir"
  chmod o+x "$(dirname "$dir")"
  echo "$base" >"$dir/baseport"
  deadline=$((SECONDS + 90))
  cluster=e0=http://127.0.0.1:$((base + 3)),e1=http://127.0.0.1:$((base + 4)),e2=http://127.0.0.1:$((base + 5))
  for i in 0 1 2; do
    client=http://127.0.0.1:$((base + i)) peer=http://127.0.0.1:$((base + 3 + i))
    setsid /usr/bin/etcd --name "e$i" --data-dir "$dir/etcd$i" \
      --listen-client-urls "$client" --advertise-client-urls "$client" \
      --listen-peer-urls "$peer" --initial-advertise-peer-urls "$peer" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token "strata-$base" \
      --heartbeat-interval 100 --election-timeout 1000 --logger zap --log-level warn \
      </dev/null >"$dir/etcd$i.log" 2>&1 &
    echo $! >"$dir/etcd$i.pid"
  done
  for i in 0 1 2; do
    until curl -s -m 2 "http://127.0.0.1:$((base + i))/health" | grep -q '"health":"true"'; do
      [ $SECONDS -lt $deadline ] || fail "etcd member e$i not healthy"
      live_pid "$dir/etcd$i.pid" etcd >/dev/null || fail "etcd member e$i exited"
      sleep 0.2
    done
  done
  hosts=127.0.0.1:$base,127.0.0.1:$((base + 1)),127.0.0.1:$((base + 2))
  for i in 0 1; do
    nd=$dir/node$i
    mkdir -p "$nd/pglog"
    cat >"$nd/patroni.yml" <<YML
scope: strata
namespace: /strata/
name: node$i
restapi:
  listen: 127.0.0.1:$((base + 8 + i))
  connect_address: 127.0.0.1:$((base + 8 + i))
etcd3:
  hosts: $hosts
bootstrap:
  dcs:
    # loop_wait + 2 * retry_timeout <= ttl; the leader key outlives a dead leader by < ttl
    ttl: 10
    loop_wait: 2
    retry_timeout: 4
    maximum_lag_on_failover: 1048576
    # commits wait for the replica's flush, so the survivor has each confirmed commit;
    # not strict: the survivor takes writes alone
    synchronous_mode: true
    synchronous_mode_strict: false
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
  initdb:
  - encoding: UTF8
  - locale: C.UTF-8
postgresql:
  listen: 127.0.0.1:$((base + 6 + i))
  connect_address: 127.0.0.1:$((base + 6 + i))
  data_dir: $nd/data
  bin_dir: $bin
  pgpass: $nd/pgpass
  authentication:
    superuser:
      username: postgres
    replication:
      username: replicator
      password: replicator
  parameters:
    unix_socket_directories: '$nd'
    logging_collector: 'on'
    log_directory: '$nd/pglog'
    log_filename: 'postgresql.log'
  pg_hba:
  - local all all trust
  - host all all 127.0.0.1/32 trust
  - host replication all 127.0.0.1/32 trust
watchdog:
  mode: 'off'
YML
    chown -R postgres "$nd"
    chmod 700 "$nd"
  done
  start_node() {
    local nd=$dir/node$1
    as_postgres "cd '$nd' && env -i PATH=/usr/bin:/bin HOME='$nd' LANG=C.UTF-8 \
      setsid /usr/bin/patroni '$nd/patroni.yml' </dev/null >'$nd/patroni.log' 2>&1 & echo \$!" \
      >"$nd/patroni.pid"
  }
  # node0 bootstraps (initdb) and leads; node1 then clones it with pg_basebackup
  start_node 0
  until [ "$(http_code "http://127.0.0.1:$((base + 8))/primary")" = 200 ]; do
    [ $SECONDS -lt $deadline ] || fail "node0 did not become leader"
    live_pid "$dir/node0/patroni.pid" patroni >/dev/null || fail "node0's Patroni exited"
    sleep 0.3
  done
  start_node 1
  until [ "$(http_code "http://127.0.0.1:$((base + 9))/sync")" = 200 ] \
    && [ "$(psql -XAtq "postgresql://postgres@127.0.0.1:$((base + 6))/postgres" -c \
      "select count(*) from pg_stat_replication where state = 'streaming' and sync_state = 'sync'" \
      2>/dev/null)" = 1 ]; do
    [ $SECONDS -lt $deadline ] || fail "node1 did not become a streaming synchronous replica"
    live_pid "$dir/node1/patroni.pid" patroni >/dev/null || fail "node1's Patroni exited"
    sleep 0.3
  done
  echo "PG_URL=postgresql://postgres@127.0.0.1:$((base + 6)),127.0.0.1:$((base + 7))/postgres?target_session_attrs=read-write"
  echo "PG_PORTS=$((base + 6)),$((base + 7))"
  ;;
leader)
  dir=$2 wait=${3:-0}
  base=$(cat "$dir/baseport")
  deadline=$((SECONDS + wait))
  until node=$(leader_node); do
    [ $SECONDS -lt $deadline ] || { echo "patroni.sh: no leader" >&2; exit 1; }
    sleep 0.3
  done
  echo $((base + 6 + node))
  ;;
kill-leader)
  dir=$2
  base=$(cat "$dir/baseport")
  node=$(leader_node) || { echo "patroni.sh: no leader" >&2; exit 1; }
  # Patroni first, so that it cannot restart its postgres
  if pid=$(live_pid "$dir/node$node/patroni.pid" patroni); then kill -KILL "$pid"; fi
  kill_postgres "$node"
  echo $((base + 6 + node))
  ;;
stop)
  dir=$2
  [ -f "$dir/baseport" ] || exit 0
  base=$(cat "$dir/baseport")
  stop_cluster
  ;;
*)
  echo "usage: $0 start DIR BASEPORT | leader DIR [WAIT] | kill-leader DIR | stop DIR" >&2
  exit 2
  ;;
esac
