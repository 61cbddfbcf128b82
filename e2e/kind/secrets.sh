#!/usr/bin/env bash
# Writes the kind overlay's generated Secrets (git-ignored): a random
# PostgreSQL password and the DATABASE_URL that carries it. An existing
# password is kept, so re-applying the overlay does not lock the running
# database out.
#
#   e2e/kind/secrets.sh
source "$(dirname "$0")/../../scripts/lib.sh"

dir="${REPO_ROOT}/manifests/overlays/kind/generated"
mkdir -p "$dir"
if [[ ! -s "$dir/postgres.env" ]]; then
  password="$(head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24)"
  umask 077
  printf 'POSTGRES_PASSWORD=%s\n' "$password" >"$dir/postgres.env"
  printf 'DATABASE_URL=postgres://postgres:%s@postgres:5432/purchases?sslmode=disable\n' "$password" >"$dir/database.env"
  log "generated a PostgreSQL password in ${dir} (not committed)"
fi
