# shellcheck shell=bash disable=SC2034  # a library: its variables are for the scripts that source it
# Shared shell helpers. Sourced, never run.
#
# TOOLS_DIR: downloaded or built tools, keyed by version, shared by every
#            clone on this machine (outside the checkout).
# STATE_DIR: this checkout's run state (data dirs, logs, kubeconfig).

set -euo pipefail

REPO_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TOOLS_DIR="${XDG_CACHE_HOME:-$HOME/.cache}/purchase-system"
STATE_DIR="${REPO_ROOT}/.cache"
# kubectl's discovery and HTTP cache for the scripts' and tests' calls: in
# this checkout's state, not the user's ~/.kube/cache.
export KUBECACHEDIR="${KUBECACHEDIR:-${STATE_DIR}/kubectl}"

# Pinned versions: change here, and every cache path follows.
KUBERNETES_VERSION="v1.37.2"
ETCD_VERSION="v3.6.8"
KAFKA_VERSION="4.1.1"
METRICS_SERVER_VERSION="v0.8.0"
KUBE_STATE_METRICS_VERSION="v2.20.0"
# Only for make bench-hpa: the adapter this project replaces, measured on
# the same HPAs (tools/prometheus-adapter/go.mod pins it).
PROMETHEUS_ADAPTER_VERSION="v0.12.0"
PROMETHEUS_VERSION="v0.316.0"
# Run behind the adapter in the KEDA test and make run WITH=keda
# (tools/keda/go.mod pins it; v2.21.1 needs Go 1.27).
KEDA_VERSION="v2.21.0"
# The release that module version is (Go module v0.3xx.y is Prometheus v3.xx.y),
# and so the tag its image carries, as quay.io/prometheus/prometheus names it.
PROMETHEUS_IMAGE_TAG="v3.16.0"
# The node (with kubelet and kube-proxy of KUBERNETES_VERSION).
CONTAINERD_VERSION="v2.2.9"
RUNC_VERSION="v1.3.7"
CNI_PLUGINS_VERSION="v1.9.1"
CRICTL_VERSION="v1.37.0"
KUBE_ROUTER_VERSION="v2.1.0"
COREDNS_VERSION="v1.14.6"
# The local registry the node pulls from (tools/distribution/go.mod pins it).
DISTRIBUTION_VERSION="v3.1.2"
# The kind path (tools/kind/go.mod pins it); its node image is built here
# for KUBERNETES_VERSION (scripts/kind-node.sh).
KIND_VERSION="v0.33.0"
# Lints, renders and installs the adapter's chart (tools/helm/go.mod pins it).
HELM_VERSION="v3.22.0"
# Storage on the local cluster, as kind provisions it (tools/local-path-provisioner/go.mod pins it).
LOCAL_PATH_PROVISIONER_VERSION="v0.0.30"
# Its helper pods' image: Debian's static busybox, by the .deb's checksum.
BUSYBOX_DEB_VERSION="1:1.35.0-4+deb12u1+b1"

# with NAME: WITH (make run WITH=keda) lists NAME, comma-separated.
with() { [[ ",${WITH:-}," == *",$1,"* ]]; }

log() { printf '==> %s\n' "$*" >&2; }
die() { printf 'error: %s\n' "$*" >&2; exit 1; }

# with_lock DIR CMD...: run CMD while holding DIR.lock, so two clones (or CI
# and a developer) building the same tool version don't race.
with_lock() {
  local dir="$1"; shift
  mkdir -p "$(dirname "$dir")"
  exec 9>"${dir}.lock"
  flock 9
  "$@"
  local rc=$?
  flock -u 9
  return $rc
}

# stop_pidfile FILE [WAIT_TENTHS]: SIGTERM the process FILE names, wait for it
# (default 30 s), SIGKILL it if still there, and remove FILE.
stop_pidfile() {
  local file="$1" tenths="${2:-300}"
  [[ -f "$file" ]] || return 0
  local pid; pid="$(cat "$file")"
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 1 "$tenths"); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
  fi
  rm -f "$file"
}

# wait_workloads KUBECTL...: waits for every Deployment and StatefulSet of
# the system's namespaces to roll out (the local and kind paths share it).
wait_workloads() { wait_in "kube-system monitoring purchase-system" "$@"; }

# wait_in "NAMESPACE..." KUBECTL...: every Deployment and StatefulSet of
# the namespaces rolled out.
wait_in() {
  local namespaces="$1" ns kind name; shift
  for ns in $namespaces; do
    for kind in deployment statefulset; do
      for name in $("$@" -n "$ns" get "$kind" -o name 2>/dev/null); do
        "$@" -n "$ns" rollout status "$name" --timeout=300s >/dev/null \
          || die "${ns}/${name} did not become ready: $* -n ${ns} describe ${name}"
        log "${ns}/${name#*/} ready"
      done
    done
  done
}

# deploy_system OVERLAY KUBECTL...: what every cluster's deployment does
# once its images are where its node pulls them (make run and make e2e on
# the local Kubernetes, e2e/kind/run.sh on kind): the generated PostgreSQL
# password, the aggregated API servers' serving certificates, the
# namespaces first (the overlay's objects go into them), the overlay (a
# path from the checkout's root, or absolute), and every workload rolled
# out.
deploy_system() {
  local overlay="$1"; shift
  "${REPO_ROOT}/scripts/secrets.sh"
  "${REPO_ROOT}/scripts/certs.sh"
  log "deploying ${overlay}"
  "$@" apply -f "${REPO_ROOT}/manifests/base/namespace.yaml" >/dev/null
  "$@" apply -k "${overlay}" >/dev/null
  wait_workloads "$@"
}

# forward_prometheus PORT KUBECTL...: the in-cluster Prometheus on
# 127.0.0.1:PORT through kubectl port-forward (in the background; its pid in
# PROMETHEUS_FORWARD_PID), ready when this returns.
forward_prometheus() {
  local port="$1"; shift
  "$@" -n monitoring port-forward svc/prometheus "${port}:9090" >/dev/null 2>&1 &
  PROMETHEUS_FORWARD_PID=$!
  for _ in $(seq 1 100); do
    curl -fs "http://127.0.0.1:${port}/-/ready" >/dev/null 2>&1 && return 0
    kill -0 "$PROMETHEUS_FORWARD_PID" 2>/dev/null || die "kubectl port-forward to the in-cluster Prometheus exited (is port ${port} free?)"
    sleep 0.2
  done
  die "the in-cluster Prometheus is not ready on 127.0.0.1:${port}: $* -n monitoring describe deployment/prometheus"
}

# run_scenario KUBECONFIG WEB_URL PROMETHEUS_URL [SCENARIO FLAGS]: the
# end-to-end autoscaling scenario (e2e/scenario) against a deployed system;
# the timeline lands in _output/e2e/.
run_scenario() {
  log "running the scenario (about 6 min): load, scale out, settle, scale back, every purchase checked"
  local start=$SECONDS
  (cd "$REPO_ROOT" && go test -count=1 -v -timeout 30m ./e2e/scenario -args \
    -kubeconfig "$1" -web-url "$2" -prometheus-url "$3" -out "${REPO_ROOT}/_output/e2e" "${@:4}")
  log "scenario passed in $((SECONDS - start)) s; timeline in _output/e2e/"
}

# run_netpolicies KUBECONFIG [FLAG...]: the system's NetworkPolicies as a
# user applies them (Kafka, PostgreSQL and Prometheus in the cluster), each
# flow tried from a pod's own network namespace (e2e/netpolicies); with
# -keda, KEDA's too; -pull-always where a registry serves the probe image.
run_netpolicies() {
  log "trying the NetworkPolicies from pods' network namespaces"
  (cd "$REPO_ROOT" && go test -count=1 -v -timeout 10m ./e2e/netpolicies -args -kubeconfig "$@")
}
