#!/usr/bin/env bash
# The local Kubernetes (no Docker needed): a control plane and one node
# (a local registry, kubelet, containerd with runc, CNI bridge, kube-proxy,
# kube-router's NetworkPolicy firewall, CoreDNS), all built from source
# into the tools cache.
#
#   scripts/cluster.sh up      start it (builds tools into the cache the first time); refuses,
#                              naming each, when something on this machine would collide with it
#   scripts/cluster.sh down    stop it and give back exactly what it took from the host
#                              (its ledger: .cache/devcluster/host-ledger.jsonl)
#   scripts/cluster.sh status
#   scripts/cluster.sh leftovers   what of the cluster is still on the host (exit 1 if anything)
#
# The admin kubeconfig is always .cache/devcluster/kubeconfig.
# HPA_SYNC_PERIOD (default 15s) sets the HPA controller's period;
# CONTROLLER_MANAGER_ARGS (space-separated flags) are added to
# kube-controller-manager's when it starts.
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

CLUSTER_DIR="${STATE_DIR}/devcluster"
BIN="${REPO_ROOT}/bin"

cluster_flags() {
  local k8s; k8s="$(scripts/tools.sh path kubernetes)"
  echo "--state=${CLUSTER_DIR}"
  echo "--etcd=$(scripts/tools.sh path etcd)"
  echo "--kube-apiserver=${k8s}/kube-apiserver"
  echo "--kube-controller-manager=${k8s}/kube-controller-manager"
  echo "--kube-scheduler=${k8s}/kube-scheduler"
  echo "--kubectl=${k8s}/kubectl"
  echo "--hpa-sync-period=${HPA_SYNC_PERIOD:-15s}"
  local arg
  for arg in ${CONTROLLER_MANAGER_ARGS:-}; do echo "--controller-manager-arg=${arg}"; done
  echo "--kubelet=${k8s}/kubelet"
  echo "--kube-proxy=${k8s}/kube-proxy"
  echo "--containerd-dir=$(scripts/tools.sh path containerd)"
  echo "--runc=$(scripts/tools.sh path runc)"
  echo "--cni-dir=$(scripts/tools.sh path cni-plugins)"
  echo "--kube-router=$(scripts/tools.sh path kube-router)"
  echo "--crictl=$(scripts/tools.sh path crictl)"
  # Images and snapshots survive cluster down: a warm start unpacks nothing.
  echo "--containerd-root=${STATE_DIR}/containerd"
  # The local registry (CNCF distribution) the node pulls every image
  # from; its storage, like containerd's, survives cluster down.
  echo "--registry=$(scripts/tools.sh path registry)"
  echo "--registry-root=${STATE_DIR}/registry"
  # make images' archives, pushed to the local registry at every start
  # (unchanged blobs are not sent again) and pinned by digest in a
  # kustomize Component the addons and the local overlays include.
  echo "--images=${REPO_ROOT}/_output/images"
  echo "--image-pins=${REPO_ROOT}/manifests/generated/images/kustomization.yaml"
  # The storage helper's image is named inside a ConfigMap, where the
  # pins above do not reach: pinned into a generated copy.
  local lpp="${REPO_ROOT}/manifests/addons/local-path-provisioner"
  echo "--pin-file=${lpp}/helperPod.yaml=${lpp}/generated/helperPod.yaml"
  echo "--addon=${REPO_ROOT}/manifests/addons/local"
}

# storage_config: where the storage provisioner puts volumes on the node,
# in the cluster's state (removed with it at cluster down).
storage_config() {
  local dir="${REPO_ROOT}/manifests/addons/local-path-provisioner/generated"
  mkdir -p "$dir"
  printf '{"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["%s"]}]}\n' "${CLUSTER_DIR}/volumes" >"$dir/config.json"
}

case "${1:-}" in
  up)
    [[ $(id -u) == 0 ]] || die "the local cluster needs root: containerd, runc and the kubelet manage namespaces, cgroups and iptables (run it as root, e.g. sudo make run)"
    # The kubelet does not evict for disk (docs/RELIABILITY.md), so a disk
    # that fills during a run fails writes instead: say so up front.
    mkdir -p "$STATE_DIR"
    free_gib=$(( $(df -Pk "$STATE_DIR" | awk 'NR==2 {print $4}') / 1048576 ))
    if (( free_gib < 5 )); then
      echo "warning: ${free_gib} GiB free on the disk holding ${STATE_DIR}; a make test run writes about 3 GiB there and Kafka, PostgreSQL and Prometheus fail when it fills" >&2
    fi
    scripts/tools.sh ensure etcd kubernetes metrics-server kube-state-metrics node
    [[ -x "$BIN/devcluster" ]] || die "bin/devcluster is missing: run make build"
    # The images the node runs, built without Docker (seconds when nothing
    # changed).
    scripts/images.sh build
    # Serving certificates of the adapter and metrics-server, whose CA
    # their APIServices carry (kustomize reads them as Secrets).
    scripts/certs.sh
    storage_config
    mapfile -t flags < <(cluster_flags)
    "$BIN/devcluster" up "${flags[@]}"
    ;;
  down)
    if [[ -x "$BIN/devcluster" ]]; then
      # The pods are stopped through the node's own containerd and crictl:
      # the same binaries as up.
      mapfile -t flags < <(cluster_flags)
      "$BIN/devcluster" down "${flags[@]}"
    elif [[ -d "$CLUSTER_DIR" ]]; then
      die "bin/devcluster is missing: run make build, then make cluster-down"
    fi
    ;;
  status) "$BIN/devcluster" status --state="${CLUSTER_DIR}" ;;
  leftovers) "$BIN/devcluster" leftovers --state="${CLUSTER_DIR}" --containerd-root="${STATE_DIR}/containerd" ;;
  kubeconfig) echo "${CLUSTER_DIR}/kubeconfig" ;;
  *) die "usage: $0 up|down|status|leftovers|kubeconfig" ;;
esac
