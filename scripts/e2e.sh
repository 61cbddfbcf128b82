#!/usr/bin/env bash
# make e2e: the end-to-end autoscaling scenario (e2e/scenario) on the local
# Kubernetes. Brings up the cluster and what runs beside it (unless already
# up), deploys manifests/overlays/e2e, runs the scenario against it and
# takes down what it started. The timeline lands in _output/e2e/.
#
# E2E_OVERLAY=<kustomize dir> deploys another variant (docs/BENCHMARKS.md
# measures the fast-rate component this way).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

KUBECONFIG_FILE="${STATE_DIR}/devcluster/kubeconfig"
started_cluster=false started_infra=false
[[ -f "$KUBECONFIG_FILE" ]] || started_cluster=true
[[ -d "${STATE_DIR}/infra" ]] || started_infra=true
cleanup() {
  # The cluster first: its pods drain while Kafka is still there.
  if $started_cluster; then scripts/cluster.sh down || true; fi
  if $started_infra; then scripts/infra.sh down || true; fi
}
trap cleanup EXIT

scripts/cluster.sh up
scripts/infra.sh up
kubectl=("$(scripts/tools.sh path kubernetes)/kubectl" --kubeconfig "${KUBECONFIG_FILE}")
if ! $started_cluster; then
  # A cluster that was already up may hold an earlier run's replicas and
  # HPA history: start from a fresh deployment.
  "${kubectl[@]}" delete namespace purchase-system --ignore-not-found --wait=true >/dev/null
fi
OVERLAY="${E2E_OVERLAY:-manifests/overlays/e2e}"
log "deploying ${OVERLAY}"
"${kubectl[@]}" apply -k "$OVERLAY" >/dev/null
wait_workloads "${kubectl[@]}"
run_scenario "$KUBECONFIG_FILE" http://localhost:30080 http://10.88.0.1:9090
