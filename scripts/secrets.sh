#!/usr/bin/env bash
# Writes the generated Secrets of components/kafka-postgres (git-ignored): a
# random PostgreSQL password and the DATABASE_URL that carries it. An
# existing password is kept, so re-applying an overlay does not lock the
# running database out. Every cluster's deployment runs it (deploy_system in
# scripts/lib.sh: make run, make e2e, e2e/kind/run.sh).
#
#   scripts/secrets.sh
source "$(dirname "$0")/lib.sh"

dir="${REPO_ROOT}/manifests/components/kafka-postgres/generated"
mkdir -p "$dir"
if [[ ! -s "$dir/postgres.env" || ! -s "$dir/database.env" ]]; then
  password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24)"
  umask 077
  printf 'POSTGRES_PASSWORD=%s\n' "$password" >"$dir/postgres.env"
  printf 'DATABASE_URL=postgres://postgres:%s@postgres:5432/purchases?sslmode=disable\n' "$password" >"$dir/database.env"
  log "generated a PostgreSQL password in ${dir} (not committed)"
fi
