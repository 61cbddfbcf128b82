#!/usr/bin/env bash
# A single-node Apache Kafka broker (KRaft, broker and controller in one
# JVM) from the jars in the tools cache.
#
#   scripts/kafka.sh start DIR [PORT [HOST]]  start (idempotent) with data and logs in DIR;
#                                       listens on HOST:PORT (default 127.0.0.1:9092)
#                                       with KAFKA_SECURE_PORT=N, also a SASL_SSL listener on
#                                       127.0.0.1:N (SCRAM-SHA-512, client certificates required;
#                                       CA, client certificate and key written to DIR/tls)
#   scripts/kafka.sh stop DIR           stop the broker started in DIR
#   scripts/kafka.sh run CLASS ARGS...  run a Kafka tool class, for example
#       org.apache.kafka.tools.consumer.group.ConsumerGroupCommand --bootstrap-server 127.0.0.1:9092 --describe --group G
source "$(dirname "$0")/lib.sh"

kafka_java() {
  local home; home="$("${REPO_ROOT}/scripts/tools.sh" path kafka)"
  java -Xshare:auto -cp "${home}/libs/*" "$@"
}

port_open() { (exec 3<>"/dev/tcp/${2:-127.0.0.1}/$1") 2>/dev/null; }

# tls DIR: a CA (thrown away after signing), the broker's certificate for
# 127.0.0.1 and localhost, and a client certificate, as PEM: broker.pem
# (PKCS#8 key and certificate, Kafka's PEM keystore), ca.crt, client.crt,
# client.key.
tls() {
  local dir="$1"
  [[ -s "$dir/broker.pem" && -s "$dir/client.key" ]] && return 0
  command -v openssl >/dev/null || die "openssl is needed for the SASL_SSL listener (apt-get install openssl)"
  mkdir -p "$dir"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 30 \
    -subj "/CN=purchase-system test Kafka CA" -keyout "$dir/ca.key" -out "$dir/ca.crt" 2>/dev/null
  local who
  for who in broker client; do
    openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 -out "$dir/$who.key" 2>/dev/null
    openssl req -new -key "$dir/$who.key" -subj "/CN=$who" -out "$dir/$who.csr" 2>/dev/null
    printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=%s\n' \
      "$([[ $who == broker ]] && echo serverAuth || echo clientAuth)" >"$dir/$who.ext"
    openssl x509 -req -in "$dir/$who.csr" -CA "$dir/ca.crt" -CAkey "$dir/ca.key" -CAcreateserial \
      -days 30 -extfile "$dir/$who.ext" -out "$dir/$who.crt" 2>/dev/null || die "signing the $who certificate failed"
  done
  cat "$dir/broker.key" "$dir/broker.crt" >"$dir/broker.pem"
  rm -f "$dir/ca.key" "$dir"/*.csr "$dir"/*.ext "$dir"/*.srl
}

start() {
  local dir="$1" port="${2:-9092}" host="${3:-127.0.0.1}"
  local cport=$((port + 1))
  mkdir -p "$dir"; dir="$(cd "$dir" && pwd)"
  if [[ -f "$dir/kafka.pid" ]] && kill -0 "$(cat "$dir/kafka.pid")" 2>/dev/null; then
    log "kafka already running in $dir (pid $(cat "$dir/kafka.pid"))"; return 0
  fi
  port_open "$port" "$host" && die "port $host:$port is taken by another process: stop it or pick another port"
  "${REPO_ROOT}/scripts/tools.sh" ensure kafka

  local listeners="PLAINTEXT://${host}:${port},CONTROLLER://127.0.0.1:${cport}"
  local advertised="PLAINTEXT://${host}:${port}"
  local secure=""
  if [[ -n "${KAFKA_SECURE_PORT:-}" ]]; then
    tls "$dir/tls"
    listeners+=",SASL_SSL://127.0.0.1:${KAFKA_SECURE_PORT}"
    advertised+=",SASL_SSL://127.0.0.1:${KAFKA_SECURE_PORT}"
    secure="listener.name.sasl_ssl.sasl.enabled.mechanisms=SCRAM-SHA-512
listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required;
listener.name.sasl_ssl.ssl.keystore.type=PEM
listener.name.sasl_ssl.ssl.keystore.location=${dir}/tls/broker.pem
listener.name.sasl_ssl.ssl.truststore.type=PEM
listener.name.sasl_ssl.ssl.truststore.location=${dir}/tls/ca.crt
listener.name.sasl_ssl.ssl.client.auth=required"
  fi
  cat >"$dir/server.properties" <<PROPS
process.roles=broker,controller
node.id=1
controller.quorum.voters=1@127.0.0.1:${cport}
listeners=${listeners}
advertised.listeners=${advertised}
controller.listener.names=CONTROLLER
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=CONTROLLER:PLAINTEXT,PLAINTEXT:PLAINTEXT,SASL_SSL:SASL_SSL
${secure}
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
