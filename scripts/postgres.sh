#!/usr/bin/env bash
# A private PostgreSQL server from Debian's packages, for tests and local runs.
#
#   scripts/postgres.sh start DIR [PORT [EXTRA_ADDR]]  start (idempotent), logs to DIR/postgres.log;
#                                         listens on 127.0.0.1 and EXTRA_ADDR if given
#   scripts/postgres.sh stop DIR
#   scripts/postgres.sh url [PORT]        the DATABASE_URL of the server
#
# The server trusts connections from this machine's loopback (tests, the
# host's tools). With EXTRA_ADDR (the dev cluster's bridge) pods may connect
# too, but only as the role "purchases" with its password (scram-sha-256),
# to the purchases database it owns: no superuser from the pod network, so
# no COPY ... TO PROGRAM on the host. The password is DIR/app-password;
# `scripts/postgres.sh app-url DIR HOST` prints the DATABASE_URL pods use.
source "$(dirname "$0")/lib.sh"

DB_NAME=purchases

pg_bin() {
  local d
  for d in /usr/lib/postgresql/*/bin; do [[ -x "$d/pg_ctl" ]] && { echo "$d"; return; }; done
  return 1
}

ensure_installed() {
  pg_bin >/dev/null && return 0
  log "postgresql: installing Debian's package"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends postgresql >/dev/null; } \
    || die "installing postgresql with apt-get failed"
}

# PostgreSQL refuses to run as root: run its programs as the postgres user.
as_pg() { if [[ $(id -u) == 0 ]]; then runuser -u postgres -- "$@"; else "$@"; fi; }

start() {
  local dir="$1" port="${2:-5432}" extra="${3:-}"
  ensure_installed
  local bin; bin="$(pg_bin)"
  mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
  [[ $(id -u) == 0 ]] && chown postgres: "$dir"
  if as_pg "$bin/pg_ctl" -D "$dir/data" status >/dev/null 2>&1; then return 0; fi
  if [[ ! -f "$dir/data/PG_VERSION" ]]; then
    log "postgresql: initialising a cluster in $dir/data"
    as_pg "$bin/initdb" -D "$dir/data" -U postgres -A trust -E UTF8 >"$dir/initdb.log" 2>&1 \
      || die "initdb failed: see $dir/initdb.log"
  fi
  if [[ -n "$extra" ]] && ! grep -q "^host purchases purchases 10.88.0.0/16" "$dir/data/pg_hba.conf"; then
    echo "host purchases purchases 10.88.0.0/16 scram-sha-256" >>"$dir/data/pg_hba.conf"
  fi
  local listen="127.0.0.1${extra:+,$extra}"
  log "postgresql: starting on 127.0.0.1:${port}"
  as_pg "$bin/pg_ctl" -D "$dir/data" -l "$dir/postgres.log" -w -t 60 \
    -o "-p ${port} -k ${dir} -c listen_addresses=${listen} -c fsync=on -c max_connections=200" start >/dev/null \
    || { tail -20 "$dir/postgres.log" >&2; die "postgresql did not start: see $dir/postgres.log"; }
  as_pg "$bin/psql" -h 127.0.0.1 -p "$port" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname='${DB_NAME}'" | grep -q 1 \
    || as_pg "$bin/createdb" -h 127.0.0.1 -p "$port" -U postgres "$DB_NAME"
  [[ -n "$extra" ]] && app_role "$dir" "$port"
  return 0
}

# app_role DIR PORT: the least-privileged role pods connect as, owning only
# the purchases database (so it can create its tables), with a password
# generated once per data directory.
app_role() {
  local dir="$1" port="$2" bin; bin="$(pg_bin)"
  if [[ ! -s "$dir/app-password" ]]; then
    (umask 077; head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24 >"$dir/app-password")
  fi
  local pw; pw="$(cat "$dir/app-password")"
  as_pg "$bin/psql" -q -h 127.0.0.1 -p "$port" -U postgres -v ON_ERROR_STOP=1 -v pw="$pw" >/dev/null <<'SQL' \
    || die "creating the purchases role failed"
SELECT format('CREATE ROLE purchases LOGIN PASSWORD %L NOSUPERUSER NOCREATEDB NOCREATEROLE', :'pw')
  WHERE NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'purchases') \gexec
SELECT format('ALTER ROLE purchases PASSWORD %L', :'pw') \gexec
ALTER DATABASE purchases OWNER TO purchases;
REVOKE ALL ON DATABASE purchases FROM PUBLIC;
SQL
}

stop() {
  local dir="$1"
  [[ -d "$dir/data" ]] || return 0
  local bin; bin="$(pg_bin)" || return 0
  as_pg "$bin/pg_ctl" -D "$dir/data" -m fast -w stop >/dev/null 2>&1 || true
}

case "${1:-}" in
  start) start "${2:?DIR}" "${3:-5432}" "${4:-}" ;;
  stop) stop "${2:?DIR}" ;;
  url) echo "postgres://postgres@127.0.0.1:${2:-5432}/${DB_NAME}?sslmode=disable" ;;
  app-url) [[ -s "${2:?DIR}/app-password" ]] || die "no app-password in $2: start the server with an EXTRA_ADDR first"
    echo "postgres://purchases:$(cat "$2/app-password")@${3:?HOST}:${4:-5432}/${DB_NAME}?sslmode=disable" ;;
  *) die "usage: $0 start DIR [PORT [EXTRA_ADDR]] | stop DIR | url [PORT] | app-url DIR HOST [PORT]" ;;
esac
