#!/usr/bin/env bash
# Measures the adapter's lag source at cluster scale against the real
# Kafka broker (numbers for docs/BENCHMARKS.md, "Lag of 3,000 consumer
# groups"): 10, 300 and 3,000 groups on 1,000 topics of 10 partitions,
# each group asked for every 15 s as its HPA does.
#   LAG_SCALE_GROUPS=3000 LAG_SCALE_SECONDS=60 make bench-lag
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

B="${STATE_DIR}/bench-lag"
KAFKA_PORT=29192
cleanup() { "$REPO_ROOT/scripts/kafka.sh" stop "$B/kafka"; }
trap cleanup EXIT
mkdir -p "$B"
# The broker's data is kept between runs: making 10,000 partitions and the
# groups' commits is the slow part (the fixture reuses what exists).
scripts/kafka.sh start "$B/kafka" "$KAFKA_PORT"

echo "## machine"
echo "$(nproc) cores, $(awk '/MemTotal/ {printf "%.0f GiB", $2/1048576}' /proc/meminfo), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "go $(go env GOVERSION), kafka ${KAFKA_VERSION} (one KRaft node)"
echo
cd adapter || exit 1
TEST_KAFKA_BOOTSTRAP="127.0.0.1:${KAFKA_PORT}" go test -run '^$' -bench LagAtScale -benchtime 1x -timeout 30m ./internal/lag/ 2>&1 |
  grep -v GETSUBSCRIPTIONS
