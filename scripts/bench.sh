#!/usr/bin/env bash
# Measures the services on this machine against the real Kafka broker and
# PostgreSQL (numbers for docs/BENCHMARKS.md):
#   1. /buy throughput and latency at 50 concurrent clients, consumer stopped;
#   2. the consumer draining that backlog into PostgreSQL (messages/s);
#   3. /buy again with the consumer running beside it (the realistic mix).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

B="${STATE_DIR}/bench"
KAFKA_PORT=29092 PG_PORT=25432
DURATION="${DURATION:-30s}" CLIENTS="${CLIENTS:-50}"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  scripts/kafka.sh stop "$B/kafka"; scripts/postgres.sh stop "$B/postgres"
}
trap cleanup EXIT
rm -rf "$B/kafka"; mkdir -p "$B"
scripts/postgres.sh start "$B/postgres" "$PG_PORT"
psql -q "$(scripts/postgres.sh url "$PG_PORT")" -c "DROP TABLE IF EXISTS purchases, schema_migrations" 2>/dev/null || true
scripts/kafka.sh start "$B/kafka" "$KAFKA_PORT"
export KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:${KAFKA_PORT}"

metric() { curl -fs "http://127.0.0.1:28081/metrics" | awk -v s="$1" '$1==s {print $2}'; }
start_consumer() {
  HTTP_ADDR=127.0.0.1:28081 DATABASE_URL="$(scripts/postgres.sh url "$PG_PORT")" LOG_LEVEL=warn \
    bin/consumer >>"$B/consumer.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 100); do curl -fs http://127.0.0.1:28081/readyz >/dev/null && return; sleep 0.2; done
  die "consumer not ready: see $B/consumer.log"
}

HTTP_ADDR=127.0.0.1:28080 CUSTOMER_MANAGEMENT_URL=http://127.0.0.1:28081 LOG_LEVEL=warn bin/webserver >"$B/webserver.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:28080/readyz >/dev/null && break; sleep 0.2; done

echo "## machine"
echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "go $(go env GOVERSION), kafka ${KAFKA_VERSION}, $(postgres --version 2>/dev/null || ls /usr/lib/postgresql)"
echo
echo "## 1. POST /buy, ${CLIENTS} clients, ${DURATION}, consumer stopped"
bin/loadgen -url http://127.0.0.1:28080/buy -c "$CLIENTS" -d "$DURATION" | tee "$B/buy1.txt"
backlog=$(awk '/^acknowledged:/ {print $2}' "$B/buy1.txt")

echo
echo "## 2. consumer draining ${backlog} messages into PostgreSQL"
t0=$(date +%s.%N)
start_consumer
while :; do
  n=$(metric 'kafka_messages_processed_total{status="success"}'); n=${n%.*}
  [[ "${n:-0}" -ge "$backlog" ]] && break
  sleep 0.2
done
t1=$(date +%s.%N)
rows=$(psql -tA "$(scripts/postgres.sh url "$PG_PORT")" -c "SELECT count(*) FROM purchases")
awk -v n="$backlog" -v a="$t0" -v b="$t1" -v r="$rows" 'BEGIN {
  printf "stored:         %d rows (%d acknowledged)\n", r, n
  printf "drain time:     %.1fs (consumer start, group join and fetch included)\n", b-a
  printf "throughput:     %.0f messages/s\n", n/(b-a) }'

echo
echo "## 3. POST /buy, ${CLIENTS} clients, ${DURATION}, consumer storing alongside"
bin/loadgen -url http://127.0.0.1:28080/buy -c "$CLIENTS" -d "$DURATION"
