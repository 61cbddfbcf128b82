#!/usr/bin/env bash
# Writes the generated Secrets of components/kafka-postgres (git-ignored):
#   generated/postgres.env   PostgreSQL's own: the superuser's password
#                            (POSTGRES_PASSWORD) and the application role's
#                            (POSTGRES_APP_PASSWORD), for the StatefulSet only;
#   generated/database.env   the application's DATABASE_URL: the role
#                            purchases, which owns the database and is no
#                            superuser — the superuser's password is not in it.
# Existing passwords are kept, so re-applying an overlay does not lock the
# running database out. A database.env written before the application had
# a role of its own (it named the superuser) is rewritten for the role; the
# database's image moves an existing database over to it at its next start.
# Every cluster's deployment runs it (deploy_system in scripts/lib.sh: make
# run, make e2e, e2e/kind/run.sh).
#
#   scripts/secrets.sh
source "$(dirname "$0")/lib.sh"

dir="${REPO_ROOT}/manifests/components/kafka-postgres/generated"
APP_ROLE=purchases
mkdir -p "$dir"
umask 077

newpassword() { head -c 24 /dev/urandom | base64 | tr -d '/+=' | head -c 24; }
# value NAME: NAME's value in postgres.env; empty when there is none (a
# fresh checkout has no file yet).
value() { if [[ -f "$dir/postgres.env" ]]; then sed -n "s/^$1=//p" "$dir/postgres.env"; fi; }

superuser="$(value POSTGRES_PASSWORD)"
app="$(value POSTGRES_APP_PASSWORD)"
changed=false
if [[ -z "$superuser" ]]; then superuser="$(newpassword)"; changed=true; fi
if [[ -z "$app" ]]; then app="$(newpassword)"; changed=true; fi
url="postgres://${APP_ROLE}:${app}@postgres:5432/purchases?sslmode=disable"
if $changed || [[ "$(cat "$dir/database.env" 2>/dev/null)" != "DATABASE_URL=${url}" ]]; then
  printf 'POSTGRES_PASSWORD=%s\nPOSTGRES_APP_PASSWORD=%s\n' "$superuser" "$app" >"$dir/postgres.env"
  printf 'DATABASE_URL=%s\n' "$url" >"$dir/database.env"
  log "wrote PostgreSQL's passwords and the application's DATABASE_URL (role ${APP_ROLE}) in ${dir} (not committed)"
fi
