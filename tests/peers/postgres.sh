#!/usr/bin/env bash
# A throwaway PostgreSQL cluster on loopback for the tests (Debian postgresql-15; root
# cannot run PostgreSQL, so it runs as the `postgres` user: ../shared/reference).
#   postgres.sh start DIR PORT [ssl]
#                                initdb in DIR (created; owned by postgres), listen on
#                                127.0.0.1:PORT, start, print the postmaster's pid. With
#                                `ssl`: a test CA (DIR.ca.pem) signs a server certificate
#                                for localhost and 127.0.0.1, and connections over TCP
#                                must use TLS (pg_hba hostssl only)
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
  if [ "${4:-}" = ssl ]; then
    # a CA of its own, and a server certificate it signs (localhost, 127.0.0.1)
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=strata test CA" \
      -keyout "$dir.ca.key" -out "$dir.ca.pem" >/dev/null 2>&1
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
      -keyout "$dir/server.key" -out "$dir/server.csr" >/dev/null 2>&1
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\n' >"$dir/san.ext"
    openssl x509 -req -in "$dir/server.csr" -CA "$dir.ca.pem" -CAkey "$dir.ca.key" \
      -CAcreateserial -days 2 -extfile "$dir/san.ext" -out "$dir/server.crt" >/dev/null 2>&1
    chown postgres "$dir/server.key" "$dir/server.crt"
    chmod 600 "$dir/server.key"
    chmod 644 "$dir.ca.pem"
    cat >>"$dir/postgresql.conf" <<CONF
ssl = on
ssl_cert_file = 'server.crt'
ssl_key_file = 'server.key'
CONF
    cat >"$dir/pg_hba.conf" <<HBA
local all all trust
hostssl all all 127.0.0.1/32 trust
HBA
  fi
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
  echo "usage: $0 start DIR PORT [ssl] | stop DIR" >&2
  exit 2
  ;;
esac
