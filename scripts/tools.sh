#!/usr/bin/env bash
# Installs the tools the project runs, once per version, into TOOLS_DIR
# (outside the checkout), and prints where they are.
#
#   scripts/tools.sh ensure kubernetes|etcd|metrics-server|kube-state-metrics|kafka|prometheus|helm|node|run|all
#     (node: registry, containerd, runc, cni-plugins, crictl, kube-router, coredns, local-path-provisioner; each also by name)
#   scripts/tools.sh ensure kind|kubeadm   (the kind path)
#   scripts/tools.sh ensure keda           (the KEDA test and make run WITH=keda)
#   scripts/tools.sh path   kubernetes|etcd|metrics-server|kube-state-metrics|kafka|prometheus|promtool|prometheus-adapter|keda|registry|helm|local-path-provisioner|kind|kubeadm
#
# A built tool is moved into place only when complete, so an interrupted
# build leaves nothing that looks finished.
source "$(dirname "$0")/lib.sh"

kubernetes_dir()     { echo "${TOOLS_DIR}/kubernetes-${KUBERNETES_VERSION}"; }
etcd_dir()           { echo "${TOOLS_DIR}/etcd-${ETCD_VERSION}"; }
metrics_server_dir() { echo "${TOOLS_DIR}/metrics-server-${METRICS_SERVER_VERSION}"; }
ksm_dir()            { echo "${TOOLS_DIR}/kube-state-metrics-${KUBE_STATE_METRICS_VERSION}"; }
prometheus_adapter_dir() { echo "${TOOLS_DIR}/prometheus-adapter-${PROMETHEUS_ADAPTER_VERSION}"; }
registry_dir()       { echo "${TOOLS_DIR}/distribution-${DISTRIBUTION_VERSION}"; }
helm_dir()           { echo "${TOOLS_DIR}/helm-${HELM_VERSION}"; }
kind_dir()           { echo "${TOOLS_DIR}/kind-${KIND_VERSION}"; }
kubeadm_dir()        { echo "${TOOLS_DIR}/kubeadm-${KUBERNETES_VERSION}"; }
lpp_dir()            { echo "${TOOLS_DIR}/local-path-provisioner-${LOCAL_PATH_PROVISIONER_VERSION}"; }
busybox_dir()        { echo "${TOOLS_DIR}/busybox-static-${BUSYBOX_DEB_VERSION//:/_}"; }
kafka_dir()          { echo "${TOOLS_DIR}/kafka-${KAFKA_VERSION}"; }
prometheus_dir()     { echo "${TOOLS_DIR}/prometheus-${PROMETHEUS_VERSION}"; }
keda_dir()           { echo "${TOOLS_DIR}/keda-${KEDA_VERSION}"; }

# heartbeat LABEL PID: prints elapsed time every 30 s while PID runs, so a
# cold 15-minute build does not look hung.
heartbeat() {
  local label="$1" pid="$2" start=$SECONDS next=30
  while kill -0 "$pid" 2>/dev/null; do
    sleep 1
    if (( SECONDS - start >= next )); then
      log "${label}: still building ($((SECONDS - start)) s)"
      next=$((next + 30))
    fi
  done
}

# go_build_tools MODULE_DIR OUT_DIR LDFLAGS PKG...: builds PKGs of a tools
# module into OUT_DIR atomically.
go_build_tools() {
  local mod="$1" out="$2" ldflags="$3"; shift 3
  local tmp="${out}.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  local start=$SECONDS
  (cd "${REPO_ROOT}/tools/${mod}" && GOWORK=off CGO_ENABLED="${TOOL_CGO:-0}" \
    go build -trimpath -tags "${TOOL_TAGS:-}" -ldflags "$ldflags" -o "$tmp/" "$@") &
  local pid=$!
  heartbeat "$mod" "$pid" &
  local hb=$!
  if ! wait "$pid"; then
    kill "$hb" 2>/dev/null || true
    rm -rf "$tmp"
    die "building ${mod} failed"
  fi
  kill "$hb" 2>/dev/null || true
  rm -rf "$out"; mv "$tmp" "$out"
  log "${mod}: built in $((SECONDS - start)) s into ${out}"
}

# Every binary the cache must hold: a machine that has an older cache entry
# without one of them (say, before the node ran a kubelet) builds again.
KUBERNETES_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubectl kubelet kube-proxy)

# have_all DIR NAME...: every NAME is an executable in DIR.
have_all() {
  local dir="$1" b; shift
  for b in "$@"; do [[ -x "$dir/$b" ]] || return 1; done
}

ensure_kubernetes() {
  local out; out="$(kubernetes_dir)"
  have_all "$out" "${KUBERNETES_BINARIES[@]}" && return 0
  log "kubernetes ${KUBERNETES_VERSION}: building ${KUBERNETES_BINARIES[*]} (about 20-25 min the first time on 2 cores; cached afterwards in ${out})"
  go_build_tools kubernetes "$out" "$(kubernetes_ldflags)" "${KUBERNETES_BINARIES[@]/#/k8s.io/kubernetes/cmd/}"
}

# kubernetes_ldflags: the version stamps. Without them the servers report
# v0.0.0-master+$Format:%H$, which kubectl cannot parse.
kubernetes_ldflags() {
  local major minor rest
  IFS=. read -r major minor rest <<<"${KUBERNETES_VERSION#v}"
  local v="k8s.io/component-base/version"
  local ldflags="-s -w -X ${v}.gitVersion=${KUBERNETES_VERSION} -X ${v}.gitMajor=${major} -X ${v}.gitMinor=${minor} -X ${v}.gitTreeState=clean -X ${v}.buildDate=1970-01-01T00:00:00Z"
  ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=${KUBERNETES_VERSION} -X k8s.io/client-go/pkg/version.gitMajor=${major} -X k8s.io/client-go/pkg/version.gitMinor=${minor}"
  echo "$ldflags"
}

ensure_etcd() {
  local out; out="$(etcd_dir)"
  [[ -x "$out/etcd" ]] && return 0
  log "etcd ${ETCD_VERSION}: building (about 1 min the first time)"
  go_build_tools etcd "$out.bin" "-s -w" go.etcd.io/etcd/server/v3
  mkdir -p "$out"; mv "$out.bin/server" "$out/etcd"; rm -rf "$out.bin"
}

ensure_metrics_server() {
  local out; out="$(metrics_server_dir)"
  [[ -x "$out/metrics-server" ]] && return 0
  log "metrics-server ${METRICS_SERVER_VERSION}: building (a few minutes the first time)"
  go_build_tools metrics-server "$out" "-s -w" sigs.k8s.io/metrics-server/cmd/metrics-server
}

# KEDA's operator and metrics API server, in one go build so the scalers'
# SDKs they share compile once (about 6 min cold on 2 cores, most of it
# the cloud SDKs every KEDA binary links); and KEDA's kustomize config of
# that version (its install, as its release renders it: scripts/keda.sh).
ensure_keda() {
  local out; out="$(keda_dir)"
  if ! have_all "$out" keda keda-adapter; then
    log "KEDA ${KEDA_VERSION}: building the operator and the metrics API server (about 6 min the first time on 2 cores)"
    local v="github.com/kedacore/keda/v2/version"
    go_build_tools keda "$out.bin" "-s -w -X ${v}.Version=${KEDA_VERSION#v} -X ${v}.GitCommit=${KEDA_VERSION}" \
      github.com/kedacore/keda/v2/cmd/operator github.com/kedacore/keda/v2/cmd/adapter
    mkdir -p "$out"
    mv "$out.bin/operator" "$out/keda"; mv "$out.bin/adapter" "$out/keda-adapter"; rm -rf "$out.bin"
  fi
  [[ -f "$out/config/minimal/kustomization.yaml" ]] && return 0
  local src
  src="$(cd "${REPO_ROOT}/tools/keda" && GOWORK=off go mod download -json "github.com/kedacore/keda/v2@${KEDA_VERSION}" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')"
  [[ -d "$src/config" ]] || die "KEDA ${KEDA_VERSION}: no config/ in its module (${src:-not downloaded})"
  rm -rf "$out/config.tmp"; cp -r "$src/config" "$out/config.tmp"; chmod -R u+w "$out/config.tmp"
  mv "$out/config.tmp" "$out/config"
}

ensure_kube_state_metrics() {
  local out; out="$(ksm_dir)"
  [[ -x "$out/kube-state-metrics" ]] && return 0
  log "kube-state-metrics ${KUBE_STATE_METRICS_VERSION}: building (a few minutes the first time)"
  go_build_tools kube-state-metrics "$out" "-s -w -X github.com/prometheus/common/version.Version=${KUBE_STATE_METRICS_VERSION#v}" \
    k8s.io/kube-state-metrics/v2
  # go build names a /v2 module's program after its last path element.
  [[ -x "$out/kube-state-metrics" ]] || mv "$out/v2" "$out/kube-state-metrics"
}

ensure_kafka() {
  local out; out="$(kafka_dir)"
  [[ -f "$out/.complete" ]] && return 0
  command -v java >/dev/null || die "java is required for the Kafka broker (Java 17 or newer)"
  command -v mvn >/dev/null || die "mvn is required to fetch Apache Kafka from Maven Central"
  log "kafka ${KAFKA_VERSION}: fetching org.apache.kafka:kafka_2.13 and its dependencies from Maven Central"
  local tmp="${out}.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/libs"
  # kafka_2.13 is the broker; kafka-tools gives kafka-consumer-groups and friends.
  cat >"$tmp/pom.xml" <<POM
<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>purchase-system</groupId><artifactId>kafka-dist</artifactId><version>1</version>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId><version>${KAFKA_VERSION}</version></dependency>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka-tools</artifactId><version>${KAFKA_VERSION}</version></dependency>
    <!-- The broker logs through SLF4J 2; log4j2 writes it out. -->
    <dependency><groupId>org.apache.logging.log4j</groupId><artifactId>log4j-slf4j2-impl</artifactId><version>2.24.3</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-api</artifactId><version>2.0.17</version></dependency>
  </dependencies>
</project>
POM
  (cd "$tmp" && mvn -q -B dependency:copy-dependencies -DoutputDirectory=libs -DincludeScope=runtime) \
    || { rm -rf "$tmp"; die "fetching Kafka ${KAFKA_VERSION} from Maven Central failed"; }
  rm -f "$tmp/pom.xml"
  touch "$tmp/.complete"
  rm -rf "$out"; mv "$tmp" "$out"
  log "kafka ${KAFKA_VERSION}: $(find "$out/libs" -name '*.jar' | wc -l) jars in ${out}/libs"
}

# Built from source: Debian's prometheus package leaves out Kubernetes
# service discovery, which the pod-scraping configuration needs.
ensure_prometheus() {
  local out; out="$(prometheus_dir)"
  [[ -x "$out/prometheus" && -x "$out/promtool" ]] && return 0
  log "prometheus ${PROMETHEUS_VERSION}: building prometheus and promtool (about 10 min the first time on 2 cores; cached afterwards in ${out})"
  go_build_tools prometheus "$out" "-s -w -X github.com/prometheus/common/version.Version=${PROMETHEUS_VERSION#v}" \
    github.com/prometheus/prometheus/cmd/prometheus github.com/prometheus/prometheus/cmd/promtool
}

# The node: containerd and runc run the pods' containers, the CNI plugins
# give them the bridge network, crictl inspects them, kube-router enforces
# NetworkPolicies, CoreDNS answers cluster names (kube-proxy and the kubelet
# come with the kubernetes build above).
containerd_dir()  { echo "${TOOLS_DIR}/containerd-${CONTAINERD_VERSION}"; }
runc_dir()        { echo "${TOOLS_DIR}/runc-${RUNC_VERSION}"; }
cni_dir()         { echo "${TOOLS_DIR}/cni-plugins-${CNI_PLUGINS_VERSION}"; }
crictl_dir()      { echo "${TOOLS_DIR}/crictl-${CRICTL_VERSION}"; }
kube_router_dir() { echo "${TOOLS_DIR}/kube-router-${KUBE_ROUTER_VERSION}"; }
coredns_dir()     { echo "${TOOLS_DIR}/coredns-${COREDNS_VERSION}"; }

# need_packages PKG...: Debian packages the node's programs call (iptables,
# ipset) or link (libseccomp), installed when missing.
need_packages() {
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing+=("$p"); done
  (( ${#missing[@]} )) || return 0
  command -v apt-get >/dev/null || die "these packages are needed: ${missing[*]}"
  log "installing Debian packages: ${missing[*]}"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q "${missing[@]}" >/dev/null; } \
    || die "apt-get install ${missing[*]} failed"
}

ensure_containerd() {
  local out; out="$(containerd_dir)"
  have_all "$out" containerd ctr containerd-shim-runc-v2 && return 0
  log "containerd ${CONTAINERD_VERSION}: building containerd, ctr, containerd-shim-runc-v2 (about 2-3 min the first time)"
  local x="github.com/containerd/containerd/v2/version"
  # no_btrfs: the btrfs snapshotter needs kernel headers the node does not use.
  TOOL_TAGS=no_btrfs go_build_tools containerd "$out" "-s -w -X ${x}.Version=${CONTAINERD_VERSION} -X ${x}.Package=github.com/containerd/containerd/v2" \
    github.com/containerd/containerd/v2/cmd/containerd github.com/containerd/containerd/v2/cmd/ctr \
    github.com/containerd/containerd/v2/cmd/containerd-shim-runc-v2
}

ensure_runc() {
  local out; out="$(runc_dir)"
  have_all "$out" runc && return 0
  need_packages libseccomp-dev pkg-config
  log "runc ${RUNC_VERSION}: building with seccomp (about 1 min the first time)"
  TOOL_CGO=1 TOOL_TAGS=seccomp go_build_tools runc "$out" "-s -w -X main.version=${RUNC_VERSION#v}" github.com/opencontainers/runc
}

ensure_cni_plugins() {
  local out; out="$(cni_dir)"
  have_all "$out" bridge host-local loopback portmap && return 0
  log "CNI plugins ${CNI_PLUGINS_VERSION}: building bridge, host-local, loopback, portmap"
  local p="github.com/containernetworking/plugins/plugins"
  go_build_tools cni-plugins "$out" "-s -w" "$p/main/bridge" "$p/main/loopback" "$p/ipam/host-local" "$p/meta/portmap"
}

ensure_crictl() {
  local out; out="$(crictl_dir)"
  have_all "$out" crictl && return 0
  log "crictl ${CRICTL_VERSION}: building (about 1-2 min the first time)"
  go_build_tools cri-tools "$out" "-s -w -X sigs.k8s.io/cri-tools/pkg/version.Version=${CRICTL_VERSION}" sigs.k8s.io/cri-tools/cmd/crictl
}

ensure_kube_router() {
  local out; out="$(kube_router_dir)"
  have_all "$out" kube-router && return 0
  need_packages iptables ipset conntrack
  log "kube-router ${KUBE_ROUTER_VERSION}: building (the NetworkPolicy firewall; a few minutes the first time)"
  go_build_tools kube-router "$out" "-s -w -X github.com/cloudnativelabs/kube-router/v2/pkg/version.Version=${KUBE_ROUTER_VERSION}" \
    github.com/cloudnativelabs/kube-router/v2/cmd/kube-router
}

ensure_prometheus_adapter() {
  local out; out="$(prometheus_adapter_dir)"
  have_all "$out" adapter && return 0
  log "prometheus-adapter ${PROMETHEUS_ADAPTER_VERSION}: building (a minute or two the first time)"
  go_build_tools prometheus-adapter "$out" "-s -w" sigs.k8s.io/prometheus-adapter/cmd/adapter
}

ensure_registry() {
  local out; out="$(registry_dir)"
  have_all "$out" registry && return 0
  log "distribution (registry) ${DISTRIBUTION_VERSION}: building (a minute or two the first time)"
  go_build_tools distribution "$out" "-s -w -X github.com/distribution/distribution/v3/version.version=${DISTRIBUTION_VERSION}" \
    github.com/distribution/distribution/v3/cmd/registry
}

# kind, for the kind path (e2e/kind/run.sh); its node image is built
# here (scripts/kind-node.sh).
ensure_kind() {
  local out; out="$(kind_dir)"
  have_all "$out" kind && return 0
  log "kind ${KIND_VERSION}: building (seconds)"
  go_build_tools kind "$out" "-s -w" sigs.k8s.io/kind
}

# kubeadm, for the kind node image: from the same Kubernetes build as the
# kubelet (tools/kubernetes), with the same version stamps; most of it is
# in Go's build cache once kubernetes is built.
ensure_kubeadm() {
  local out; out="$(kubeadm_dir)"
  have_all "$out" kubeadm && return 0
  log "kubeadm ${KUBERNETES_VERSION}: building (1-3 min once kubernetes is built)"
  go_build_tools kubernetes "$out" "$(kubernetes_ldflags)" k8s.io/kubernetes/cmd/kubeadm
}

ensure_helm() {
  local out; out="$(helm_dir)"
  have_all "$out" helm && return 0
  log "helm ${HELM_VERSION}: building (a few minutes the first time)"
  go_build_tools helm "$out" "-s -w -X helm.sh/helm/v3/internal/version.version=${HELM_VERSION}" helm.sh/helm/v3/cmd/helm
}

ensure_local_path_provisioner() {
  local out; out="$(lpp_dir)"
  have_all "$out" local-path-provisioner && return 0
  log "local-path-provisioner ${LOCAL_PATH_PROVISIONER_VERSION}: building (a minute or two the first time)"
  go_build_tools local-path-provisioner "$out" "-s -w" github.com/rancher/local-path-provisioner
}

# Debian's busybox-static, fetched by version through apt (whose signed
# indexes vouch for the .deb), its checksum kept beside the binary: the
# local-path-provisioner's helper image is built from exactly this file.
ensure_busybox() {
  local out; out="$(busybox_dir)"
  have_all "$out" busybox && return 0
  command -v apt-get >/dev/null || die "busybox-static comes from Debian's packages: apt-get is needed"
  log "busybox-static ${BUSYBOX_DEB_VERSION}: fetching the Debian package"
  local tmp="${out}.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp/x"
  (cd "$tmp" && apt-get download -q -o APT::Sandbox::User=root "busybox-static=${BUSYBOX_DEB_VERSION}" >/dev/null) || { rm -rf "$tmp"; die "apt-get download busybox-static=${BUSYBOX_DEB_VERSION} failed (apt-get update first?)"; }
  dpkg-deb -x "$tmp"/busybox-static_*.deb "$tmp/x"
  mkdir -p "$tmp/out"
  cp "$tmp/x/bin/busybox" "$tmp/out/busybox"
  sha256sum "$tmp"/busybox-static_*.deb | sed "s#${tmp}/##" >"$tmp/out/deb.sha256"
  rm -rf "$out"; mv "$tmp/out" "$out"; rm -rf "$tmp"
  log "busybox-static: $(cat "$out/deb.sha256")"
}

ensure_coredns() {
  local out; out="$(coredns_dir)"
  have_all "$out" coredns && return 0
  log "CoreDNS ${COREDNS_VERSION}: building (a few minutes the first time)"
  go_build_tools coredns "$out" "-s -w -X github.com/coredns/coredns/coremain.GitCommit=${COREDNS_VERSION}" github.com/coredns/coredns
}

tool_path() {
  case "$1" in
    kubernetes) kubernetes_dir ;;
    etcd) echo "$(etcd_dir)/etcd" ;;
    metrics-server) echo "$(metrics_server_dir)/metrics-server" ;;
    kube-state-metrics) echo "$(ksm_dir)/kube-state-metrics" ;;
    kafka) kafka_dir ;;
    prometheus) echo "$(prometheus_dir)/prometheus" ;;
    promtool) echo "$(prometheus_dir)/promtool" ;;
    containerd) containerd_dir ;;
    runc) echo "$(runc_dir)/runc" ;;
    cni-plugins) cni_dir ;;
    crictl) echo "$(crictl_dir)/crictl" ;;
    kube-router) echo "$(kube_router_dir)/kube-router" ;;
    coredns) echo "$(coredns_dir)/coredns" ;;
    prometheus-adapter) echo "$(prometheus_adapter_dir)/adapter" ;;
    keda) keda_dir ;;
    registry) echo "$(registry_dir)/registry" ;;
    helm) echo "$(helm_dir)/helm" ;;
    kind) echo "$(kind_dir)/kind" ;;
    kubeadm) echo "$(kubeadm_dir)/kubeadm" ;;
    local-path-provisioner) echo "$(lpp_dir)/local-path-provisioner" ;;
    busybox) echo "$(busybox_dir)/busybox" ;;
    *) die "unknown tool: $1" ;;
  esac
}

# ensure_all [TOOL...]: every tool make run needs, plus the extra TOOLs,
# in two streams balanced by their cold build times on 2 cores: kubernetes
# (about 15 min) and Prometheus (9 min) in one, everything else (about
# 20 min together) in the other. Before, kubernetes had a stream of its
# own and the other ran 32 min alone.
ensure_all() {
  ( ensure kubernetes && ensure prometheus ) &
  local big=$!
  local x
  for x in etcd kafka node metrics-server kube-state-metrics "$@"; do
    ensure "$x" || { wait "$big"; return 1; }
  done
  wait "$big" || die "building kubernetes or prometheus failed"
}

ensure() {
  local t="$1"
  case "$t" in
    # run: what make run needs; all: that and what only the tests use
    # (helm, and KEDA for the scenario's side by side). Both build in two
    # streams (ensure_all): a go build leaves cores idle while it
    # downloads and links, which the other stream uses.
    run) ensure_all ;;
    all) ensure_all helm keda ;;
    node) for x in registry containerd runc cni-plugins crictl kube-router coredns local-path-provisioner busybox; do ensure "$x"; done ;;
    kubernetes|etcd|metrics-server|kube-state-metrics|kafka|prometheus|containerd|runc|cni-plugins|crictl|kube-router|coredns|prometheus-adapter|keda|registry|helm|local-path-provisioner|busybox|kind|kubeadm)
      with_lock "${TOOLS_DIR}/${t}" "ensure_${t//-/_}" ;;
    *) die "unknown tool: $t" ;;
  esac
}

case "${1:-}" in
  ensure) shift; for t in "$@"; do ensure "$t"; done ;;
  path) tool_path "$2" ;;
  *) die "usage: $0 ensure|path TOOL" ;;
esac
