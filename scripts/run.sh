#!/usr/bin/env bash
# make run: the whole system on the local Kubernetes. Brings up the
# cluster (building its tools into the cache the first time, with
# progress), Kafka, PostgreSQL and Prometheus beside it, deploys
# manifests/overlays/local, prints where everything is, and on Ctrl-C stops
# what it started.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

KUBECONFIG_FILE="${STATE_DIR}/devcluster/kubeconfig"
started_cluster=false started_infra=false

stop_all() {
  trap - INT TERM EXIT
  # Ctrl-C may have closed what our output is piped into (make run | tee):
  # stopping must go on even if it cannot print.
  trap '' PIPE
  echo
  # The cluster first: its pods drain while Kafka is still there.
  if $started_cluster; then scripts/cluster.sh down || true; fi
  if $started_infra; then scripts/infra.sh down || true; fi
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

[[ -f "$KUBECONFIG_FILE" ]] || started_cluster=true
[[ -d "${STATE_DIR}/infra" ]] || started_infra=true
scripts/tools.sh ensure run
scripts/cluster.sh up
scripts/infra.sh up

kubectl="$(scripts/tools.sh path kubernetes)/kubectl --kubeconfig ${KUBECONFIG_FILE}"
# OVERLAY=e2e: the scenario's settings (a consumer that writes one purchase
# per transaction, 30 s scale-down windows), to watch the consumer scale.
OVERLAY="${OVERLAY:-local}"
[[ -d "manifests/overlays/${OVERLAY}" ]] || die "OVERLAY=${OVERLAY}: no manifests/overlays/${OVERLAY}"
log "deploying manifests/overlays/${OVERLAY}"
$kubectl apply -k "manifests/overlays/${OVERLAY}" >/dev/null
for d in purchase-system/customer-management-api purchase-system/customer-web-server monitoring/purchase-metrics-adapter; do
  $kubectl -n "${d%/*}" rollout status "deployment/${d#*/}" --timeout=180s >/dev/null \
    || die "deployment ${d} did not become ready: $kubectl -n ${d%/*} describe deployment/${d#*/}"
  log "${d} ready"
done

cat <<MSG

  The Purchase Tracking System is running on the local Kubernetes.

  Web server (NodePort 30080)   http://localhost:30080
  Kubeconfig                    ${KUBECONFIG_FILE}
  kubectl                       $(scripts/tools.sh path kubernetes)/kubectl
  Prometheus                    http://10.88.0.1:9090
  Kafka, PostgreSQL             10.88.0.1:9092, 10.88.0.1:5432 (kafka:9092, postgres:5432 in the cluster)

  Try:
    export KUBECONFIG=${KUBECONFIG_FILE}
    curl -X POST -H 'Content-Type: application/json' -d '{"username":"test","userid":"u1","price":10}' http://localhost:30080/buy
    curl http://localhost:30080/getAllUserBuys/u1
    kubectl get pods -A
    kubectl get --raw '/apis/custom.metrics.k8s.io/v1beta2/namespaces/purchase-system/pods/*/flask_http_request_per_second'
    kubectl get --raw '/apis/external.metrics.k8s.io/v1beta1/namespaces/purchase-system/kafka_consumergroup_lag?labelSelector=consumergroup%3Dpurchase-consumer-group,topic%3Dpurchases'

  Watch it scale (in another terminal):
    make load                                  350 purchases/s for 5 min, the HPAs printed every 5 s
    kubectl get hpa -n purchase-system -w      replicas as they change
    kubectl describe hpa -n purchase-system    each metric against its target, and why it scaled

  Ctrl-C stops everything this started.
MSG
# wait (unlike a foreground sleep) returns as soon as a signal arrives, so
# the trap runs at once.
while :; do sleep 3600 & wait $!; done
