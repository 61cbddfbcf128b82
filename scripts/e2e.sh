#!/usr/bin/env bash
# make e2e: the end-to-end autoscaling scenario (e2e/scenario) on the local
# Kubernetes. Brings up the cluster (unless already up), deploys
# manifests/overlays/e2e (Kafka, PostgreSQL and Prometheus as pods), runs
# the scenario against it and takes down what it started. The timeline
# lands in _output/e2e/; then the fault table (e2e/faults) runs, its table
# in _output/faults/.
#
# E2E_OVERLAY=<kustomize dir> deploys another variant (docs/BENCHMARKS.md
# measures the fast-rate component this way). WITH=keda (make test sets
# it) deploys KEDA behind the adapter with its demo (scripts/keda.sh) and
# runs e2e/keda while the scenario loads the system: KEDA and the system's
# HPAs scale side by side.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

KUBECONFIG_FILE="${STATE_DIR}/devcluster/kubeconfig"
started_cluster=false
[[ -f "$KUBECONFIG_FILE" ]] || started_cluster=true
cleanup() {
  if [[ -n "${PROMETHEUS_FORWARD_PID:-}" ]]; then kill "$PROMETHEUS_FORWARD_PID" 2>/dev/null || true; fi
  if [[ -n "${KEDA_TEST_PID:-}" ]]; then kill "$KEDA_TEST_PID" 2>/dev/null || true; fi
  if $started_cluster; then scripts/cluster.sh down || true; fi
}
trap cleanup EXIT

scripts/cluster.sh up
kubectl=("$(scripts/tools.sh path kubernetes)/kubectl" --kubeconfig "${KUBECONFIG_FILE}")

# remove_keda: KEDA's demo, then KEDA. In that order: a ScaledObject keeps
# its namespace until KEDA's operator has removed its finalizer.
remove_keda() {
  if "${kubectl[@]}" get crd scaledobjects.keda.sh >/dev/null 2>&1; then
    "${kubectl[@]}" delete scaledobject --all-namespaces --all --wait=true --timeout=2m >/dev/null
  fi
  "${kubectl[@]}" delete namespace keda-demo --ignore-not-found --wait=true --timeout=3m >/dev/null
  "${kubectl[@]}" delete namespace keda --ignore-not-found --wait=true --timeout=3m >/dev/null
}
if ! $started_cluster; then
  # A cluster that was already up may hold an earlier run's replicas, HPA
  # history and stored purchases: start from a fresh deployment.
  remove_keda
  "${kubectl[@]}" delete namespace purchase-system --ignore-not-found --wait=true >/dev/null
fi
# The steps e2e/kind/run.sh takes on kind, here on the local Kubernetes
# (its images are in the local registry already: scripts/cluster.sh up
# pushed them).
# The probe image pulled from the local registry at every start: the :dev
# this run pushed, not an older one the node kept.
netpolicy_flags=(-pull-always)
if with keda; then
  deploy_system "${E2E_OVERLAY:-manifests/overlays/e2e-keda}" "${kubectl[@]}"
  scripts/keda.sh deploy "${kubectl[@]}"
  netpolicy_flags+=(-keda)
else
  deploy_system "${E2E_OVERLAY:-manifests/overlays/e2e}" "${kubectl[@]}"
fi
forward_prometheus 19090 "${kubectl[@]}"
if with keda; then
  # Beside the scenario, on its load: its output is shown when both end.
  mkdir -p "${REPO_ROOT}/_output/keda"
  log "e2e/keda runs beside the scenario: KEDA scales its copy of the consumer through the adapter (log: _output/keda/test.log)"
  go test -count=1 -v -timeout 20m ./e2e/keda -args -kubeconfig "$KUBECONFIG_FILE" >"${REPO_ROOT}/_output/keda/test.log" 2>&1 &
  KEDA_TEST_PID=$!
fi
# The scenario first: it holds the system to every HPA metric being known
# within 90 s of the pods being Ready.
run_scenario "$KUBECONFIG_FILE" http://localhost:30080 http://127.0.0.1:19090
if with keda; then
  keda_start=$SECONDS
  keda_rc=0; wait "$KEDA_TEST_PID" || keda_rc=$?
  KEDA_TEST_PID=
  grep -v '^=== ' "${REPO_ROOT}/_output/keda/test.log" >&2
  (( keda_rc == 0 )) || die "e2e/keda failed (above; _output/keda/test.log)"
  log "e2e/keda passed, $((SECONDS - keda_start)) s after the scenario"
fi
# The NetworkPolicies a user applies, Kafka, PostgreSQL and Prometheus in
# the cluster (e2e/clustertest tries the host-infra overlay's); KEDA's too.
run_netpolicies "$KUBECONFIG_FILE" "${netpolicy_flags[@]}"
if with keda; then
  # The fault table kills and counts on its own: KEDA and its copy go.
  remove_keda
fi
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
