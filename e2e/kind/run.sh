#!/usr/bin/env bash
# The end-to-end autoscaling scenario on kind, for people with Docker. The
# same scenario, images and manifests as the local Kubernetes (make e2e):
# only creating the cluster and loading the images are kind's; every other
# step is scripts/lib.sh's (deploy_system, forward_prometheus, run_scenario),
# which make test runs on the local Kubernetes. The overlays differ only in
# sizes and image pins (manifests/overlays/local says which).
#
#   e2e/kind/run.sh            create the cluster, run the scenario, delete the cluster
#   KEEP=1 e2e/kind/run.sh     leave the cluster running afterwards (kind delete cluster --name purchase-system)
#   e2e/kind/run.sh deploy     create the cluster and deploy the system (overlays/kind), no scenario
#
# Needs docker, kind and kubectl (1.35 or newer) on PATH, Go 1.26 and
# musl-tools (make images builds static binaries).
source "$(dirname "$0")/../../scripts/lib.sh"
cd "$REPO_ROOT" || exit 1

CLUSTER="${KIND_CLUSTER:-purchase-system}"
MODE="${1:-scenario}"
OVERLAY=manifests/overlays/kind-e2e
[[ "$MODE" == deploy ]] && OVERLAY=manifests/overlays/kind

for tool in docker kind kubectl; do
  command -v "$tool" >/dev/null || die "$tool is not on PATH: this path needs Docker and kind (see README, 'kind')"
done

KUBECONFIG_FILE="${STATE_DIR}/kind/kubeconfig"
mkdir -p "$(dirname "$KUBECONFIG_FILE")"
cleanup() {
  if [[ -n "${PROMETHEUS_FORWARD_PID:-}" ]]; then kill "$PROMETHEUS_FORWARD_PID" 2>/dev/null || true; fi
  if [[ "$MODE" == scenario && -z "${KEEP:-}" ]]; then
    log "deleting kind cluster ${CLUSTER}"
    kind delete cluster --name "$CLUSTER" || true
  fi
}
trap cleanup EXIT

if ! kind get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "creating kind cluster ${CLUSTER} (NodePort 30080 on localhost)"
  kind create cluster --name "$CLUSTER" --config e2e/kind/cluster.yaml --wait 120s
fi
kind get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
kubectl=(kubectl --kubeconfig "$KUBECONFIG_FILE")

# The same images the local node runs: make images, then into the kind
# node's containerd.
make images
for p in webserver consumer adapter; do
  log "kind load image-archive _output/images/${p}.tar"
  kind load image-archive "_output/images/${p}.tar" --name "$CLUSTER"
done

deploy_system "$OVERLAY" "${kubectl[@]}"

if [[ "$MODE" == deploy ]]; then
  cat <<MSG

  The Purchase Tracking System runs on kind cluster ${CLUSTER}.
    export KUBECONFIG=${KUBECONFIG_FILE}
    curl -X POST -H 'Content-Type: application/json' -d '{"username":"test","userid":"u1","price":10}' http://localhost:30080/buy
    make load KUBECONFIG_FILE=${KUBECONFIG_FILE}     (the HPAs printed live)
  Delete it with: kind delete cluster --name ${CLUSTER}
MSG
  exit 0
fi

# The scenario checks the dashboard and rule expressions against the
# cluster's Prometheus, reached through a port-forward (as make e2e does on
# the local Kubernetes).
forward_prometheus 19090 "${kubectl[@]}"
run_scenario "$KUBECONFIG_FILE" http://localhost:30080 http://127.0.0.1:19090
