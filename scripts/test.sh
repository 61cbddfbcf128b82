#!/usr/bin/env bash
# Everything CI runs: static checks; unit tests (SQLite and PostgreSQL);
# integration tests against the in-process broker, the real Apache Kafka
# broker, real PostgreSQL and real Prometheus; the local Kubernetes tests
# (control plane, the upstream node, metrics-server, the adapter through the
# API server), which bring the cluster up and check that taking it down
# leaves nothing behind; the end-to-end autoscaling scenario on a fresh
# local Kubernetes (scripts/e2e.sh); and a short fuzz run. It installs and starts what
# the tests need (tools are built once into the cache, with progress) and
# stops it on exit.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

TEST_STATE="${STATE_DIR}/test"
KAFKA_PORT="${TEST_KAFKA_PORT:-19092}"
PG_PORT="${TEST_PG_PORT:-15432}"
mkdir -p "$TEST_STATE"

cleanup() {
  scripts/kafka.sh stop "$TEST_STATE/kafka" || true
  scripts/postgres.sh stop "$TEST_STATE/postgres" || true
}
trap cleanup EXIT

MODULES=(servicekit webserver consumer adapter testkit images devcluster e2e)
PKGS=("${MODULES[@]/%//...}"); PKGS=("${PKGS[@]/#/./}")

# KEDA behind the adapter, scaling beside the system in the scenario
# (scripts/e2e.sh): its images are built with the others. WITH= skips it.
export WITH="${WITH-keda}"

log "tools: Kafka, etcd, Kubernetes, metrics-server, kube-state-metrics, Prometheus, KEDA (built once into ${TOOLS_DIR})"
scripts/tools.sh ensure all

scripts/check-binaries.sh

log "go vet, staticcheck and gofmt"
go vet "${PKGS[@]}"
for m in "${MODULES[@]}"; do
  (cd "$m" && go run honnef.co/go/tools/cmd/staticcheck@v0.8.2 ./...) || die "staticcheck found problems in $m"
done
if [[ -n "$(gofmt -l "${MODULES[@]}")" ]]; then
  gofmt -l "${MODULES[@]}"; die "gofmt: the files above need formatting"
fi

log "shellcheck: every script"
command -v shellcheck >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -q shellcheck >/dev/null \
  || die "shellcheck is needed: apt-get install shellcheck"
shellcheck scripts/*.sh e2e/kind/*.sh .ci/run

log "promtool: the alerting and recording rules, and the alerts' unit tests"
"$(scripts/tools.sh path promtool)" check rules manifests/monitoring/rules.yaml
(cd manifests/monitoring && "$(../../scripts/tools.sh path promtool)" test rules rules_test.yaml)

log "starting PostgreSQL and Apache Kafka for the tests"
scripts/postgres.sh start "$TEST_STATE/postgres" "$PG_PORT"
# A fresh broker each run: tests create their own topics and groups.
rm -rf "$TEST_STATE/kafka"
# Beside the plaintext listener, a SASL_SSL one (SCRAM and client
# certificates) for the adapter's Kafka security settings.
KAFKA_SECURE_PORT=$((KAFKA_PORT + 2)) scripts/kafka.sh start "$TEST_STATE/kafka" "$KAFKA_PORT"

export BIN_DIR="${REPO_ROOT}/bin"
export TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:${PG_PORT}/postgres?sslmode=disable"
export TEST_KAFKA_BOOTSTRAP="127.0.0.1:${KAFKA_PORT}"
export TEST_KAFKA_SASL_SSL="127.0.0.1:$((KAFKA_PORT + 2))" TEST_KAFKA_TLS_DIR="$TEST_STATE/kafka/tls"
# Tests that must not be skipped here fail instead when their dependency is missing.
export REQUIRE_REAL_DEPS=1

log "unit, integration and cluster tests"
# One package at a time: the integration tests measure rates and start
# clusters, and two of them at once on two cores would skew each other.
# The scenario and the fault table run on a deployed system: scripts/e2e.sh
# below deploys it and runs both with their flags (here they would skip).
mapfile -t TEST_PKGS < <(go list "${PKGS[@]}" | grep -v -E '/e2e/(scenario|faults|netpolicies|keda|kindtest)$')
go test -count=1 -p 1 -timeout 40m "${TEST_PKGS[@]}"

log "the end-to-end autoscaling scenario"
scripts/e2e.sh

# The kind path as a Docker user takes it: a dockerd (this checkout's own
# when none runs), a kind cluster from the node image built here, the
# system, its NetworkPolicies and the lean scenario, beside a container of
# someone else's; the host and Docker compared before and after.
log "the kind path: the lean scenario on kind (about 7 min)"
start=$SECONDS
go test -count=1 -v -timeout 30m ./e2e/kindtest -args -run-kind
log "kind path passed in $((SECONDS - start)) s"

# Each fuzz target for a short while, from its committed corpus (the seeds
# also ran above as ordinary tests). docs/RELIABILITY.md has long runs.
# Budgets are counts of executions (about 5-10 s each here), not durations:
# Go 1.26's fuzz coordinator can fail a duration-bounded run with a bare
# "context deadline exceeded" when the time runs out (golang/go#75804,
# fixed in Go 1.27); a count has no deadline to race. FUZZTIME (10s, or
# 50000x) overrides every budget.
FUZZ_TARGETS=(
  "FuzzDecodeRequest ./servicekit/purchase 300000x"
  "FuzzDecode ./servicekit/purchase 300000x"
  "FuzzBuy ./webserver/internal/api 60000x"
  "FuzzParse ./adapter/internal/rules 150000x"
  "FuzzSelectorStaysInsideItsMatchers ./adapter/internal/promsource 40000x"
)
for target in "${FUZZ_TARGETS[@]}"; do
  read -r name pkg budget <<<"$target"
  budget="${FUZZTIME:-$budget}"
  log "fuzzing ${name} for ${budget}"
  go test -run '^$' -fuzz "^${name}\$" -fuzztime "${budget}" -fuzzminimizetime 2s "$pkg"
done

log "all tests passed"
