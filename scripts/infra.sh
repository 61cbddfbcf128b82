#!/usr/bin/env bash
# Kafka, PostgreSQL and Prometheus as host processes beside the dev
# cluster, for the cluster tests (e2e/clustertest's TestMain runs it): they
# listen on the pod network's host address (10.88.0.1), which the tests'
# overlay (e2e/clustertest/testdata/host-infra) gives Services, so pods
# reach them as kafka:9092, postgres:5432 and prometheus.monitoring:9090
# and a test reaches them directly. make run and the scenario run all three
# as pods instead (manifests/overlays/local).
#
#   scripts/infra.sh up | down | status
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

INFRA="${STATE_DIR}/infra"
HOST_IP=10.88.0.1
KUBECONFIG_FILE="${STATE_DIR}/devcluster/kubeconfig"

prometheus_up() {
  local dir="$INFRA/prometheus"
  mkdir -p "$dir/data"
  if [[ -f "$dir/pid" ]] && kill -0 "$(cat "$dir/pid")" 2>/dev/null; then return 0; fi
  scripts/tools.sh ensure prometheus
  # The shared scrape configuration, plus how to reach the API server from
  # outside the cluster.
  sed "s|^\( *\)# host: kubeconfig_file|\1kubeconfig_file: ${KUBECONFIG_FILE}|" \
    manifests/monitoring/prometheus.yml >"$dir/prometheus.yml"
  cp manifests/monitoring/rules.yaml "$dir/rules.yaml"
  log "prometheus: starting on ${HOST_IP}:9090"
  nohup "$(scripts/tools.sh path prometheus)" --config.file="$dir/prometheus.yml" \
    --storage.tsdb.path="$dir/data" --storage.tsdb.retention.time=1d \
    --web.listen-address="${HOST_IP}:9090" \
    --enable-feature=created-timestamp-zero-ingestion \
    >"$dir/prometheus.log" 2>&1 </dev/null &
  echo $! >"$dir/pid"
  for _ in $(seq 1 100); do
    curl -fs "http://${HOST_IP}:9090/-/ready" >/dev/null 2>&1 && { log "prometheus: ready"; return 0; }
    kill -0 "$(cat "$dir/pid")" 2>/dev/null || { tail -5 "$dir/prometheus.log" >&2; die "prometheus exited"; }
    sleep 0.2
  done
  die "prometheus not ready: see $dir/prometheus.log"
}

# database_secret: the host-infra overlay's DATABASE_URL (git-ignored), with the
# password of the role pods connect as.
database_secret() {
  local dir="${REPO_ROOT}/e2e/clustertest/testdata/host-infra/generated"
  mkdir -p "$dir"
  (umask 077; printf 'DATABASE_URL=%s\n' "$(scripts/postgres.sh app-url "$INFRA/postgres" postgres 5432)" >"$dir/database.env")
}

prometheus_down() { stop_pidfile "$INFRA/prometheus/pid" 100; }

case "${1:-}" in
  up)
    [[ -f "$KUBECONFIG_FILE" ]] || die "the dev cluster is not up: run make cluster-up first"
    scripts/postgres.sh start "$INFRA/postgres" 5432 "$HOST_IP"
    database_secret
    scripts/kafka.sh start "$INFRA/kafka" 9092 "$HOST_IP"
    prometheus_up
    ;;
  down)
    prometheus_down
    scripts/kafka.sh stop "$INFRA/kafka"
    scripts/postgres.sh stop "$INFRA/postgres"
    rm -rf "$INFRA"
    ;;
  status)
    for f in "$INFRA"/prometheus/pid "$INFRA"/kafka/kafka.pid; do
      [[ -f "$f" ]] && kill -0 "$(cat "$f")" 2>/dev/null && echo "running: $f" || echo "stopped: $f"
    done
    ;;
  *) die "usage: $0 up|down|status" ;;
esac
