#!/usr/bin/env bash
# make run: the whole system on the local Kubernetes. Brings up the
# cluster (building its tools into the cache the first time, with
# progress), deploys manifests/overlays/local — the services, Kafka,
# PostgreSQL and Prometheus, all as pods — prints where everything is, and
# on Ctrl-C stops what it started.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

KUBECONFIG_FILE="${STATE_DIR}/devcluster/kubeconfig"
PROMETHEUS_PORT="${PROMETHEUS_PORT:-9090}"
started_cluster=false

stop_all() {
  trap - INT TERM EXIT
  # Ctrl-C may have closed what our output is piped into (make run | tee):
  # stopping must go on even if it cannot print.
  trap '' PIPE
  echo
  if [[ -n "${PROMETHEUS_FORWARD_PID:-}" ]]; then kill "$PROMETHEUS_FORWARD_PID" 2>/dev/null || true; fi
  if $started_cluster; then scripts/cluster.sh down || true; fi
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

[[ -f "$KUBECONFIG_FILE" ]] || started_cluster=true
scripts/tools.sh ensure run
# WITH=keda: KEDA behind the adapter, scaling a copy of the consumer beside
# the system (cluster up's make images builds KEDA and its images).
scripts/cluster.sh up

kubectl_bin="$(scripts/tools.sh path kubernetes)/kubectl"
kubectl=("$kubectl_bin" --kubeconfig "${KUBECONFIG_FILE}")
# OVERLAY=e2e: the scenario's settings (a consumer that writes one purchase
# per transaction, 30 s scale-down windows), to watch the consumer scale.
OVERLAY="${OVERLAY:-local}"
[[ -d "manifests/overlays/${OVERLAY}" ]] || die "OVERLAY=${OVERLAY}: no manifests/overlays/${OVERLAY}"
if with keda; then
  [[ -d "manifests/overlays/${OVERLAY}-keda" ]] || die "WITH=keda: no manifests/overlays/${OVERLAY}-keda"
  deploy_system "manifests/overlays/${OVERLAY}-keda" "${kubectl[@]}"
  scripts/keda.sh deploy "${kubectl[@]}"
else
  deploy_system "manifests/overlays/${OVERLAY}" "${kubectl[@]}"
fi
forward_prometheus "$PROMETHEUS_PORT" "${kubectl[@]}"

cat <<MSG

  The Purchase Tracking System is running on the local Kubernetes.

  Web server (NodePort 30080)   http://localhost:30080
  Kubeconfig                    ${KUBECONFIG_FILE}
  kubectl                       ${kubectl_bin}
  Prometheus                    http://127.0.0.1:${PROMETHEUS_PORT} (kubectl port-forward, while this runs)
  Kafka, PostgreSQL             pods in purchase-system: kafka:9092, postgres:5432 in the cluster
                                (the password: manifests/components/kafka-postgres/generated/)

  Try:
    export KUBECONFIG=${KUBECONFIG_FILE}
    curl -X POST -H 'Content-Type: application/json' -d '{"username":"test","userid":"u1","price":10}' http://localhost:30080/buy
    curl http://localhost:30080/getAllUserBuys/u1
    kubectl get pods -A                        the services, Kafka, PostgreSQL, Prometheus
    kubectl get --raw '/apis/custom.metrics.k8s.io/v1beta2/namespaces/purchase-system/pods/*/flask_http_request_per_second'
    kubectl get --raw '/apis/external.metrics.k8s.io/v1beta1/namespaces/purchase-system/kafka_consumergroup_lag?labelSelector=consumergroup%3Dpurchase-consumer-group,topic%3Dpurchases'

  Watch it scale (in another terminal):
    make load                                  350 purchases/s for 5 min, the HPAs printed every 5 s
    kubectl get hpa -n purchase-system -w      replicas as they change
    kubectl describe hpa -n purchase-system    each metric against its target, and why it scaled

  Ctrl-C stops everything this started.
MSG
if with keda; then
  cat <<MSG
  KEDA ${KEDA_VERSION} runs behind the adapter (WITH=keda): its ScaledObject scales a copy of
  the consumer in keda-demo on that copy's lag, read through the adapter's APIService.
    kubectl get apiservice v1beta1.external.metrics.k8s.io      the adapter's, not KEDA's
    kubectl get hpa -A -w                      the system's HPAs and KEDA's, side by side under make load
    kubectl get --raw '/apis/external.metrics.k8s.io/v1beta1/namespaces/keda-demo/s0-kafka-purchases?labelSelector=scaledobject.keda.sh%2Fname%3Dcustomer-management-api-scaler'

MSG
fi
# wait (unlike a foreground sleep) returns as soon as a signal arrives, so
# the trap runs at once.
while :; do sleep 3600 & wait $!; done
