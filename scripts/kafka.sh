#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, broker and controller in one
# JVM) from the jars in the tools cache.
#
#   scripts/kafka.sh start DIR [PORT [HOST]]  start (idempotent) with data and logs in DIR;
#                                       listens on HOST:PORT (default 127.0.0.1:9092)
#   scripts/kafka.sh stop DIR           stop the broker started in DIR
#   scripts/kafka.sh run CLASS ARGS...  run a Kafka tool class, for example
#       org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server 127.0.0.1:9092 --describe --group G
source "$(dirname "$0")/lib.sh"

kafka_java() {
  local home; home="$("${REPO_ROOT}/scripts/tools.sh" path kafka)"
  java -Xshare:auto -cp "${home}/libs/*" "$@"
}

port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

start() {
  local dir="$1" port="${2:-9092}" host="${3:-127.0.0.1}"
  local cport=$((port + 1))
  mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
  if [[ -f "$dir/kafka.pid" ]] && kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
    log "kafka already running in $dir (pid $(cat "$dir/kafka.pid"))"; return 0
  fi
  port_open "$port" "$host" && die "port $host:$port is taken by another process: stop it or pick another port"
  "${REPO_ROOT}/scripts/tools.sh" ensure kafka

  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${cport}
listeners=PLAINTEXT://${host}:${port},CONTROLLER://127.0.0.1:${cport}
advertised.listeners=PLAINTEXT://${host}:${port}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT
log.dirs=${dir}/data
offsets.topic.replication.factor=1
offsets.topic.num.partitions=5
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
PROPS
  cat >"$dir/log4j2.properties" <<PROPS
rootLogger.level=INFO
rootLogger.appenderRef.file.ref=file
appender.file.type=File
appender.file.name=file
appender.file.fileName=${dir}/server.log
appender.file.layout.type=PatternLayout
appender.file.layout.pattern=[%d] %p %m (%c)%n
PROPS
  if [[ ! -f "$dir/data/meta.properties" ]]; then
    local id; id="$(kafka_java kafka.tools.StorageTool random-uuid 2>/dev/null)"
    kafka_java -Dlog4j2.configurationFile="$dir/log4j2.properties" kafka.tools.StorageTool format \
      -t "$id" -c "$dir/server.properties" >"$dir/format.log" 2>&1 \
      || die "formatting Kafka storage failed: see $dir/format.log"
  fi
  log "kafka: starting broker on ${host}:${port} (data and logs in $dir)"
  nohup java -Xms256m -Xmx768m -XX:+UseG1GC -Djava.awt.headless=true \
    -Dlog4j2.configurationFile="$dir/log4j2.properties" \
    -cp "$("${REPO_ROOT}/scripts/tools.sh" path kafka)/libs/*" kafka.Kafka "$dir/server.properties" \
    >"$dir/stdout.log" 2>&1 </dev/null &
  echo $! >"$dir/kafka.pid"
  for _ in $(seq 1 120); do
    if port_open "$port" "$host"; then log "kafka: ready on ${host}:${port}"; return 0; fi
    kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null || { tail -20 "$dir/server.log" "$dir/stdout.log" >&2; die "kafka exited during start"; }
    sleep 0.5
  done
  die "kafka did not open port ${port} within 60 s: see $dir/server.log"
}

stop() { stop_pidfile "$1/kafka.pid"; }

case "${1:-}" in
  start) start "${2:?DIR}" "${3:-9092}" "${4:-127.0.0.1}" ;;
  stop) stop "${2:?DIR}" ;;
  run) shift; "${REPO_ROOT}/scripts/tools.sh" ensure kafka; kafka_java -Dlog4j2.level=WARN "$@" ;;
  *) die "usage: $0 start DIR [PORT [HOST]] | stop DIR | run CLASS ARGS..." ;;
esac
