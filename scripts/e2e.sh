#!/usr/bin/env bash
# make e2e: the end-to-end autoscaling scenario (e2e/scenario) on the local
# Kubernetes. Brings up the cluster and what runs beside it (unless already
# up), deploys manifests/overlays/e2e, runs the scenario against it and
# takes down what it started. The timeline lands in _output/e2e/; then the
# fault table (e2e/faults) runs, its table in _output/faults/.
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
# The fault table acts on this machine's processes (kill -9 of a pod's
# process, the host's Kafka, PostgreSQL and Prometheus stopped under load):
# it runs on the local Kubernetes only. E2E_FAULTS=0 skips it.
if [[ "${E2E_FAULTS:-1}" != 0 ]]; then
  log "running the fault table (about 10 min): each fault under steady load, every acknowledged purchase checked"
  start=$SECONDS
  go test -count=1 -v -timeout 45m ./e2e/faults -args \
    -kubeconfig "$KUBECONFIG_FILE" -web-url http://localhost:30080 -infra "${REPO_ROOT}/scripts/infra.sh" \
    -out "${REPO_ROOT}/_output/faults"
  log "fault table passed in $((SECONDS - start)) s; table in _output/faults/table.md"
fi
