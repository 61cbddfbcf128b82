#!/usr/bin/env bash
# Everything CI runs: static checks, unit tests (SQLite and PostgreSQL),
# a short fuzz run, and the integration tests against the in-process
# broker and the real Apache Kafka broker. It starts what the tests need
# under .cache/test and stops it on exit.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT"

TEST_STATE="${STATE_DIR}/test"
KAFKA_PORT="${TEST_KAFKA_PORT:-19092}"
PG_PORT="${TEST_PG_PORT:-15432}"
mkdir -p "$TEST_STATE"

cleanup() {
  scripts/kafka.sh stop "$TEST_STATE/kafka" || true
  scripts/postgres.sh stop "$TEST_STATE/postgres" || true
}
trap cleanup EXIT

log "go vet"
go vet ./servicekit/... ./webserver/... ./consumer/... ./e2e/...
if [[ -n "$(gofmt -l servicekit webserver consumer e2e)" ]]; then
  gofmt -l servicekit webserver consumer e2e; die "gofmt: the files above need formatting"
fi

log "starting PostgreSQL and Apache Kafka for the tests"
scripts/postgres.sh start "$TEST_STATE/postgres" "$PG_PORT"
# A fresh broker each run: tests create their own topics and groups.
rm -rf "$TEST_STATE/kafka"
scripts/kafka.sh start "$TEST_STATE/kafka" "$KAFKA_PORT"

export BIN_DIR="${REPO_ROOT}/bin"
export TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:${PG_PORT}/postgres?sslmode=disable"
export TEST_KAFKA_BOOTSTRAP="127.0.0.1:${KAFKA_PORT}"
# Tests that must not be skipped here fail instead when their dependency is missing.
export REQUIRE_REAL_DEPS=1

log "unit and integration tests"
go test -count=1 -timeout 20m ./servicekit/... ./webserver/... ./consumer/... ./e2e/...

log "fuzzing the /buy decoder for ${FUZZTIME:-20s}"
go test -run '^$' -fuzz FuzzDecodeRequest -fuzztime "${FUZZTIME:-20s}" -fuzzminimizetime 2s ./servicekit/purchase/

log "all tests passed"
