#!/usr/bin/env bash
# make e2e: the end-to-end autoscaling scenario (e2e/scenario) on the local
# Kubernetes. Brings up the cluster (unless already up), deploys
# manifests/overlays/e2e (Kafka, PostgreSQL and Prometheus as pods), runs
# the scenario against it and takes down what it started. The timeline
# lands in _output/e2e/; then the fault table (e2e/faults) runs, its table
# in _output/faults/.
#
# E2E_OVERLAY=<kustomize dir> deploys another variant (docs/BENCHMARKS.md
# measures the fast-rate component this way).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

KUBECONFIG_FILE="${STATE_DIR}/devcluster/kubeconfig"
started_cluster=false
[[ -f "$KUBECONFIG_FILE" ]] || started_cluster=true
cleanup() {
  if [[ -n "${PROMETHEUS_FORWARD_PID:-}" ]]; then kill "$PROMETHEUS_FORWARD_PID" 2>/dev/null || true; fi
  if $started_cluster; then scripts/cluster.sh down || true; fi
}
trap cleanup EXIT

scripts/cluster.sh up
kubectl=("$(scripts/tools.sh path kubernetes)/kubectl" --kubeconfig "${KUBECONFIG_FILE}")
if ! $started_cluster; then
  # A cluster that was already up may hold an earlier run's replicas, HPA
  # history and stored purchases: start from a fresh deployment.
  "${kubectl[@]}" delete namespace purchase-system --ignore-not-found --wait=true >/dev/null
fi
# The steps e2e/kind/run.sh takes on kind, here on the local Kubernetes
# (its images are in the local registry already: scripts/cluster.sh up
# pushed them).
deploy_system "${E2E_OVERLAY:-manifests/overlays/e2e}" "${kubectl[@]}"
# The NetworkPolicies a user applies, Kafka, PostgreSQL and Prometheus in
# the cluster (e2e/clustertest tries the host-infra overlay's).
run_netpolicies "$KUBECONFIG_FILE"
forward_prometheus 19090 "${kubectl[@]}"
run_scenario "$KUBECONFIG_FILE" http://localhost:30080 http://127.0.0.1:19090
# The fault table kills pods' processes (kill -9 from this machine), so it
# runs on the local Kubernetes only. It runs on three Kafka brokers, as
# production does (one broker can be lost): a fresh deployment of
# overlays/e2e-three-brokers, since kafka-0 was formatted as a single node.
# E2E_FAULTS=0 skips it.
if [[ "${E2E_FAULTS:-1}" != 0 ]]; then
  # The adapter keeps running: it must find the three brokers behind the
  # single broker's address by itself (TestLagDuringALeaderMove waits for
  # its lag first).
  "${kubectl[@]}" delete namespace purchase-system --wait=true >/dev/null
  deploy_system manifests/overlays/e2e-three-brokers "${kubectl[@]}"
  log "running the fault table (about 13 min): the lag during a leader move; each fault under steady load, every acknowledged purchase checked"
  start=$SECONDS
  go test -count=1 -v -timeout 45m ./e2e/faults -args \
    -kubeconfig "$KUBECONFIG_FILE" -web-url http://localhost:30080 \
    -out "${REPO_ROOT}/_output/faults"
  log "fault table passed in $((SECONDS - start)) s; table in _output/faults/table.md"
fi
