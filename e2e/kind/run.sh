#!/usr/bin/env bash
# The end-to-end autoscaling scenario on kind, for people with Docker. The
# same scenario, images and manifests as the local Kubernetes (make e2e):
# only creating the cluster and loading the images are kind's; every other
# step is scripts/lib.sh's (deploy_system, forward_prometheus,
# run_scenario). The overlays differ only in sizes and image pins
# (manifests/overlays/local says which).
#
#   e2e/kind/run.sh            create the cluster, run the scenario, delete the cluster (make e2e-kind)
#   e2e/kind/run.sh lean       the same with a shorter hold under load (make test runs it)
#   e2e/kind/run.sh deploy     create the cluster and deploy the system (overlays/kind), no scenario
#   KEEP=1 e2e/kind/run.sh     leave the cluster (and a dockerd started for it) running afterwards
#
# Docker: the dockerd that runs, as it is; when none runs, one of this
# checkout's own (scripts/docker.sh), stopped again at the end. kind,
# kubectl and helm come from PATH or the tools cache. The node image is
# built here (scripts/kind-node.sh); KIND_NODE_IMAGE=<image>@sha256:<digest>
# takes another (kindest/node, for machines that can pull it).
source "$(dirname "$0")/../../scripts/lib.sh"
cd "$REPO_ROOT" || exit 1

CLUSTER="${KIND_CLUSTER:-purchase-system}"
MODE="${1:-scenario}"
OVERLAY=manifests/overlays/kind-e2e
[[ "$MODE" == deploy ]] && OVERLAY=manifests/overlays/kind
STATE="${STATE_DIR}/kind"
KUBECONFIG_FILE="${STATE}/kubeconfig"
mkdir -p "$STATE"

# tool NAME: NAME from PATH, else from the tools cache.
tool() {
  if command -v "$1" >/dev/null; then command -v "$1"; return; fi
  case "$1" in
    kubectl) scripts/tools.sh ensure kubernetes && echo "$(scripts/tools.sh path kubernetes)/kubectl" ;;
    *) scripts/tools.sh ensure "$1" && scripts/tools.sh path "$1" ;;
  esac
}
KIND="$(tool kind)"
KUBECTL="$(tool kubectl)"
[[ -x bin/devcluster ]] || make --no-print-directory build >/dev/null

started_docker=false
pgrep -x dockerd >/dev/null || started_docker=true
cleanup() {
  local rc=$?
  if [[ -n "${PROMETHEUS_FORWARD_PID:-}" ]]; then kill "$PROMETHEUS_FORWARD_PID" 2>/dev/null || true; fi
  if [[ "$MODE" != deploy && -z "${KEEP:-}" ]]; then
    log "deleting kind cluster ${CLUSTER}"
    "$KIND" delete cluster --name "$CLUSTER" || rc=1
    if $started_docker; then scripts/docker.sh down || rc=1; fi
  fi
  exit "$rc"
}
trap cleanup EXIT

scripts/docker.sh up
DOCKER_HOST="$(scripts/docker.sh host)"
if [[ -n "$DOCKER_HOST" ]]; then export DOCKER_HOST; fi

# The system's images, once: the node image's build preloads some of them
# and is told they are current (make images takes about 20 s even when
# nothing changed).
make --no-print-directory images >/dev/null
export KIND_NODE_IMAGES_CURRENT=1

# The node image: built here, or the one KIND_NODE_IMAGE names by digest.
if [[ -n "${KIND_NODE_IMAGE:-}" ]]; then
  [[ "$KIND_NODE_IMAGE" == *@sha256:* ]] || die "KIND_NODE_IMAGE=${KIND_NODE_IMAGE}: name it by digest (kindest/node:v1.37.0@sha256:...)"
  NODE_IMAGE="$KIND_NODE_IMAGE"
else
  NODE_IMAGE="$(scripts/kind-node.sh build)"
  want="$(cat _output/kind/node.tar.inputs)"
  if [[ "$(docker image inspect -f '{{index .Config.Labels "org.opencontainers.image.version"}} {{.Id}}' "$NODE_IMAGE" 2>/dev/null)" == "" ]] \
     || [[ "$(cat "${STATE}/node-image.loaded" 2>/dev/null)" != "$want" ]]; then
    log "docker load _output/kind/node.tar (${NODE_IMAGE})"
    docker load -q -i _output/kind/node.tar >/dev/null
    echo "$want" >"${STATE}/node-image.loaded"
  fi
fi

# A dockerd that was already running may give privileged containers
# capabilities this machine's bounding set lacks: say how to fix it.
if ! out="$(docker run --rm --privileged --entrypoint /bin/true "$NODE_IMAGE" 2>&1)"; then
  if grep -q "unable to apply caps" <<<"$out"; then
    die "this dockerd cannot start privileged containers here: the machine's capability bounding set lacks capabilities Docker gives them ($(grep CapBnd /proc/self/status)). Run them through bin/runc-bounded: add to /etc/docker/daemon.json
  {\"runtimes\": {\"runc-bounded\": {\"path\": \"${REPO_ROOT}/bin/runc-bounded\", \"runtimeArgs\": [\"--runc=$(command -v runc || echo /usr/sbin/runc)\"]}}, \"default-runtime\": \"runc-bounded\"}
and restart dockerd (or stop it: e2e/kind/run.sh then starts a dockerd of its own that does this)"
  fi
  die "a privileged container of ${NODE_IMAGE} does not start: ${out}"
fi

# The kind config: the project's, plus what this host needs.
config="${STATE}/cluster.yaml"
cp e2e/kind/cluster.yaml "$config"
{
  echo "kubeadmConfigPatches:"
  echo "  - |"
  echo "    kind: ClusterConfiguration"
  echo "    # CoreDNS comes with the node image's network manifest, answering"
  echo "    # cluster.local only (kubeadm's forwards every other name to the"
  echo "    # node's resolver, off this machine). etcd is the one built here."
  echo "    dns:"
  echo "      disabled: true"
  if [[ -z "${KIND_NODE_IMAGE:-}" ]]; then
    echo "    etcd:"
    echo "      local:"
    echo "        imageTag: ${ETCD_VERSION#v}-0"
  fi
  if [[ -z "${KIND_NODE_IMAGE:-}" && "$(nproc)" -lt 4 ]]; then
    echo "  - |"
    echo "    kind: InitConfiguration"
    echo "    # A machine with $(nproc) CPUs: the control plane requests less"
    echo "    # (the node image's /kind/patches), so the system scales beside it."
    echo "    patches:"
    echo "      directory: /kind/patches"
  fi
  echo "  - |"
  echo "    kind: KubeletConfiguration"
  echo "    # The kubelet checks the kernel settings it needs instead of"
  echo "    # writing them: a privileged node's writes would be the host's."
  echo "    protectKernelDefaults: true"
  if [[ "$(stat -fc %T /sys/fs/cgroup)" != cgroup2fs ]]; then
    echo "    # This host mounts cgroup v1, which the kubelet refuses from 1.35 on"
    echo "    # unless told (kind sets nothing for it)."
    echo "    failCgroupV1: false"
  fi
} >>"$config"

if ! "$KIND" get clusters 2>/dev/null | grep -qx "$CLUSTER"; then
  log "creating kind cluster ${CLUSTER} from ${NODE_IMAGE} (NodePort 30080 on localhost)"
  "$KIND" create cluster --name "$CLUSTER" --image "$NODE_IMAGE" --config "$config" --wait 180s
fi
"$KIND" get kubeconfig --name "$CLUSTER" >"$KUBECONFIG_FILE"
kubectl=("$KUBECTL" --kubeconfig "$KUBECONFIG_FILE")

# The same images the local node runs (make images, above), into the
# kind node's containerd.
for p in webserver consumer adapter kafka postgres prometheus metrics-server kube-state-metrics nodeprobe; do
  log "kind load image-archive _output/images/${p}.tar"
  "$KIND" load image-archive "_output/images/${p}.tar" --name "$CLUSTER"
done

deploy_system "$OVERLAY" "${kubectl[@]}"

if [[ "$MODE" == deploy ]]; then
  cat <<MSG

  The Purchase Tracking System runs on kind cluster ${CLUSTER}.
    export KUBECONFIG=${KUBECONFIG_FILE}
    curl -X POST -H 'Content-Type: application/json' -d '{"username":"test","userid":"u1","price":10}' http://localhost:30080/buy
    make load KUBECONFIG_FILE=${KUBECONFIG_FILE}     (the HPAs printed live)
  Delete it with: ${KIND} delete cluster --name ${CLUSTER}$( $started_docker && echo "; then scripts/docker.sh down")
MSG
  exit 0
fi

# The system's NetworkPolicies, tried from pods' network namespaces.
run_netpolicies "$KUBECONFIG_FILE"
# The scenario checks the dashboard and rule expressions against the
# cluster's Prometheus, reached through a port-forward (as make e2e does on
# the local Kubernetes).
forward_prometheus 19090 "${kubectl[@]}"
scenario_args=()
# Lean (make test): a shorter hold, and a rate that needs 3 web servers
# (on a 2-CPU machine kind's control plane takes what 4 would need).
[[ "$MODE" == lean ]] && scenario_args=(-hold 10s -rate 250)
run_scenario "$KUBECONFIG_FILE" http://localhost:30080 http://127.0.0.1:19090 "${scenario_args[@]}"
