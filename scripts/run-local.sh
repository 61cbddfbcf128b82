#!/usr/bin/env bash
# The two services as host processes beside a real Kafka broker, without
# the dev cluster. Ctrl-C stops everything this started.
#
# DATABASE_URL picks the store (default: SQLite in .cache/run/purchases.db).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

RUN="${STATE_DIR}/run-local"
KAFKA_PORT="${KAFKA_PORT:-9092}"
WEB_ADDR="${WEB_ADDR:-127.0.0.1:8080}"
API_ADDR="${API_ADDR:-127.0.0.1:8081}"
mkdir -p "$RUN"
pids=()

# shellcheck disable=SC2317  # run by the trap
stop_all() {
  trap - INT TERM EXIT
  # Ctrl-C may have closed what our output is piped into (make run | tee):
  # stopping must go on even if it cannot print.
  trap '' PIPE
  log "stopping"
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  scripts/kafka.sh stop "$RUN/kafka"
  log "stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

scripts/kafka.sh start "$RUN/kafka" "$KAFKA_PORT"
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${KAFKA_PORT}"

log "starting the Customer Management API on ${API_ADDR}"
HTTP_ADDR="$API_ADDR" DATABASE_URL="${DATABASE_URL:-sqlite://${RUN}/purchases.db}" \
  bin/consumer >"$RUN/consumer.log" 2>&1 &
pids+=($!)
log "starting the Customer Web Server on ${WEB_ADDR}"
HTTP_ADDR="$WEB_ADDR" CUSTOMER_MANAGEMENT_URL="http://${API_ADDR}" \
  bin/webserver >"$RUN/webserver.log" 2>&1 &
pids+=($!)

for url in "http://${API_ADDR}/readyz" "http://${WEB_ADDR}/readyz"; do
  for _ in $(seq 1 100); do curl -fs "$url" >/dev/null 2>&1 && break; sleep 0.3; done
  curl -fs "$url" >/dev/null || die "$url is not ready: see $RUN/*.log"
done

cat <<MSG

  Customer Web Server      http://${WEB_ADDR}
  Customer Management API  http://${API_ADDR}
  Kafka                    127.0.0.1:${KAFKA_PORT}
  Logs                     ${RUN}/{webserver,consumer}.log, ${RUN}/kafka/server.log

  Try:
    curl -X POST -H 'Content-Type: application/json' \\
         -d '{"username":"test","userid":"u1","price":10}' http://${WEB_ADDR}/buy
    curl http://${WEB_ADDR}/getAllUserBuys/u1

  Ctrl-C stops everything.
MSG
wait -n "${pids[@]}" || true
die "a service exited: see $RUN/*.log"
