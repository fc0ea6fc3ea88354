#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback for the tests (Debian postgresql-15; root
# cannot run PostgreSQL, so it runs as the `postgres` user: ../shared/reference).
#   postgres.sh start DIR PORT   initdb in DIR (created; owned by postgres), listen on
#                                127.0.0.1:PORT, start, print the postmaster's pid
#   postgres.sh stop DIR         stop that cluster by the pid in DIR/postmaster.pid
# The data directory keeps the server's log (DIR/log).
set -euo pipefail
bin=$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -1)
as_postgres() { su postgres -s /bin/sh -c "$1"; }
case "$1" in
start)
  dir=$2 port=$3
  mkdir -p "$dir"
  chown postgres "$dir"
  chmod 700 "$dir"
  # the postgres user must reach DIR through its parent (a private temporary directory)
  chmod o+x "$(dirname "$dir")"
  as_postgres "'$bin/initdb' -D '$dir' -A trust -U postgres --no-sync" >"$dir.initdb.log" 2>&1 \
    || { cat "$dir.initdb.log" >&2; exit 1; }
  cat >>"$dir/postgresql.conf" <<CONF
listen_addresses = '127.0.0.1'
port = $port
unix_socket_directories = '$dir'
max_connections = 200
CONF
  as_postgres "'$bin/pg_ctl' -D '$dir' -l '$dir/log' -w start >/dev/null"
  head -1 "$dir/postmaster.pid"
  ;;
stop)
  dir=$2
  [ -f "$dir/postmaster.pid" ] || exit 0
  pid=$(head -1 "$dir/postmaster.pid")
  kill -INT "$pid" 2>/dev/null || exit 0
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || exit 0
    sleep 0.1
  done
  kill -KILL "$pid" 2>/dev/null || true
  ;;
*)
  echo "usage: $0 start DIR PORT | stop DIR" >&2
  exit 2
  ;;
esac
