#!/usr/bin/env bash
# The kind node image, built here (no registry outside this machine can
# be reached): the equivalent of kindest/node for Kubernetes
# KUBERNETES_VERSION, matching kind KIND_VERSION's node layout (its
# images/base/files, from kind's module).
#
#   scripts/kind-node.sh build   _output/kind/node.tar (docker load takes it); prints the image reference
#   scripts/kind-node.sh lock    write images/debian/kind-node.lock from what debootstrap installs now
#
# Two layers:
#   1. Debian bookworm, built with debootstrap from Debian's mirror: the
#      packages a kind node needs (KIND_NODE_PACKAGES), their versions
#      checked against images/debian/kind-node.lock at each build; cached
#      in the tools cache by that lock.
#   2. The node: kind's entrypoint, units and configuration files;
#      containerd, runc, the CNI plugins and crictl at the versions the
#      local cluster runs; kubeadm, kubelet and kubectl from the same
#      Kubernetes build; and every image kubeadm and the cluster need,
#      preloaded into the node's containerd (no registry): kube-apiserver,
#      kube-controller-manager, kube-scheduler, kube-proxy, etcd, CoreDNS,
#      pause, kube-router (NetworkPolicies, with the bridge CNI plugin in
#      place of kindnetd), local-path-provisioner and its helper.
# Rebuilt only when an input changes (a checksum of all of them is kept
# beside the archive).
source "$(dirname "$0")/lib.sh"
cd "$REPO_ROOT" || exit 1

OUT="${REPO_ROOT}/_output/kind"
BIN="${REPO_ROOT}/bin"
LOCK=images/debian/kind-node.lock
# The etcd built here, under the tag kubeadm is told to use (imageTag):
# kubeadm v1.37 would ask for 3.7.0-0.
ETCD_IMAGE_TAG="${ETCD_VERSION#v}-0"
NODE_IMAGE="purchase-system/kind-node:${KUBERNETES_VERSION}"
# What kind's base image installs that a node here uses (kind's Dockerfile
# also has NFS, iSCSI and fuse-overlayfs for storage and rootless tests).
KIND_NODE_PACKAGES=(systemd systemd-sysv dbus iptables nftables iproute2 conntrack ethtool socat util-linux mount kmod
  ca-certificates libseccomp2 pigz procps bash)
MIRROR="${DEBIAN_MIRROR:-http://deb.debian.org/debian}"

# Host directories a build makes outside its own: debootstrap's umount
# (libmount) makes /run/mount, and containerd 2 makes /run/containerd when
# it starts, whatever its state directory. Those absent now are removed
# at exit while still empty (another program's entries keep them).
HOST_DIRS_ABSENT=()
for d in /run/mount /run/containerd; do [[ -e "$d" ]] || HOST_DIRS_ABSENT+=("$d"); done
give_back_host_dirs() {
  local d
  for d in "${HOST_DIRS_ABSENT[@]}"; do rmdir "$d" 2>/dev/null || true; done
}
trap give_back_host_dirs EXIT

need_debootstrap() {
  command -v debootstrap >/dev/null && return 0
  log "installing Debian's debootstrap"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null \
    || { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends debootstrap >/dev/null; } \
    || die "apt-get install debootstrap failed"
}

# debootstrap_into DIR: Debian bookworm with KIND_NODE_PACKAGES.
debootstrap_into() {
  need_debootstrap
  local include; include="$(IFS=,; echo "${KIND_NODE_PACKAGES[*]}")"
  log "debootstrap bookworm (${#KIND_NODE_PACKAGES[@]} packages and what they need) from ${MIRROR}: a few minutes the first time"
  debootstrap --variant=minbase --include="$include" bookworm "$1" "$MIRROR" >"$1.log" 2>&1 \
    || { tail -20 "$1.log" >&2; die "debootstrap failed (log: $1.log)"; }
}

# shellcheck disable=SC2016  # dpkg-query's format, not the shell's
installed() { chroot "$1" dpkg-query -W -f '${Package} ${Version}\n' | sort; }

# debian_layer: the cached layer 1 (prints its path).
debian_layer() {
  [[ -f "$LOCK" ]] || die "no $LOCK: run scripts/kind-node.sh lock"
  local key; key="$( (cat "$LOCK"; echo "${KIND_NODE_PACKAGES[*]}"; declare -f debian_tidy) | sha256sum | cut -c1-16)"
  local dir="${TOOLS_DIR}/kind-node-debian-${key}"
  if [[ -f "$dir/layer.tar" ]]; then echo "$dir/layer.tar"; return 0; fi
  local tmp="${dir}.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  debootstrap_into "$tmp/root"
  # The versions Debian's mirror served are the lock's, or the build stops.
  if ! diff <(grep -v '^#' "$LOCK") <(installed "$tmp/root") >"$tmp/diff"; then
    cat "$tmp/diff" >&2
    rm -rf "$tmp"
    die "Debian's mirror now serves other versions than $LOCK records (above: < the lock, > now); check them, then run scripts/kind-node.sh lock and commit the lock"
  fi
  debian_tidy "$tmp/root"
  tar --numeric-owner --xattrs --sort=name --mtime=@0 -C "$tmp/root" -cf "$tmp/layer.tar" .
  rm -rf "$tmp/root"
  rm -rf "$dir"; mv "$tmp" "$dir"
  log "kind node's Debian layer: $(du -h "$dir/layer.tar" | cut -f1) in ${dir}"
  echo "$dir/layer.tar"
}

# debian_tidy ROOT: as kind's base image, plus the host's kernel settings
# left alone: no unit that would run at boot but kind's own (enabled in
# layer 2), no systemd-sysctl and no sysctl.d defaults (systemd-sysctl
# would write kernel.pid_max, fs.protected_*, kernel.core_pattern and
# more, which a privileged container shares with the host), no
# systemd-binfmt (binfmt_misc is the host's too).
debian_tidy() {
  local r="$1"
  rm -f "$r"/lib/systemd/system/multi-user.target.wants/* "$r"/etc/systemd/system/*.wants/* \
    "$r"/lib/systemd/system/local-fs.target.wants/* "$r"/lib/systemd/system/sockets.target.wants/*udev* \
    "$r"/lib/systemd/system/sockets.target.wants/*initctl* "$r"/lib/systemd/system/basic.target.wants/*
  find "$r/lib/systemd/system/sysinit.target.wants/" -name "systemd-tmpfiles-setup.service" -delete
  rm -f "$r"/usr/lib/sysctl.d/*.conf "$r"/etc/sysctl.d/*.conf "$r"/etc/sysctl.conf
  for u in systemd-sysctl.service systemd-binfmt.service; do ln -sf /dev/null "$r/etc/systemd/system/$u"; done
  echo "ReadKMsg=no" >>"$r/etc/systemd/journald.conf"
  rm -rf "$r"/var/lib/apt/lists/* "$r"/var/cache/apt/*.bin "$r"/var/cache/apt/archives/*.deb "$r"/var/log/*.log
  : >"$r/etc/machine-id"
  mkdir -p "$r/etc/kubernetes/manifests"
}

lock() {
  local tmp; tmp="$(mktemp -d)"
  debootstrap_into "$tmp/root"
  {
    echo "# The kind node's Debian bookworm (scripts/kind-node.sh): every package debootstrap installs"
    echo "# for ${KIND_NODE_PACKAGES[*]}, with its version. Written by: scripts/kind-node.sh lock"
    installed "$tmp/root"
  } >"$LOCK"
  rm -rf "$tmp"
  log "wrote $LOCK ($(grep -vc '^#' "$LOCK") packages)"
}

# kind_files: kind's node files, from kind's module at KIND_VERSION.
kind_files() {
  local mod; mod="$(cd tools/kind && GOWORK=off go list -m -f '{{.Dir}}' sigs.k8s.io/kind)" || die "kind's module: run scripts/tools.sh ensure kind"
  echo "$mod/images/base/files"
}

# image_archives: every image the node preloads (their archives).
image_archives() {
  echo "$OUT/images/kube-apiserver.tar" "$OUT/images/kube-controller-manager.tar" "$OUT/images/kube-scheduler.tar"
  echo "$OUT/images/kube-proxy.tar" "$OUT/images/etcd.tar" "$OUT/images/kube-router.tar"
  echo "_output/images/coredns.tar" "_output/images/pause.tar" "_output/images/local-path-provisioner.tar" "_output/images/busybox.tar"
}

# control_plane_images: the Kubernetes images kubeadm runs, from the
# binaries of the tools cache, where upstream's images have them.
control_plane_images() {
  local k8s; k8s="$(scripts/tools.sh path kubernetes)"
  mkdir -p "$OUT/images"
  local c
  for c in kube-apiserver kube-controller-manager kube-scheduler; do
    plain_image "$k8s/$c" "$c" "registry.k8s.io/$c:${KUBERNETES_VERSION}"
  done
  plain_image "$(scripts/tools.sh path etcd)" etcd "registry.k8s.io/etcd:${ETCD_IMAGE_TAG}"
  netfilter_image "$k8s/kube-proxy" kube-proxy "registry.k8s.io/kube-proxy:${KUBERNETES_VERSION}"
  netfilter_image "$(scripts/tools.sh path kube-router)" kube-router "docker.io/cloudnativelabs/kube-router:${KUBE_ROUTER_VERSION}"
}

# plain_image BINARY NAME REF: the binary at /usr/local/bin/NAME, run as
# root as kubeadm's static pods run it.
plain_image() {
  local dir="$OUT/rootfs/$2"
  rm -rf "$dir"; mkdir -p "$dir/usr/local/bin" "$dir/tmp" "$dir/etc/ssl/certs"; chmod 1777 "$dir/tmp"
  cp "$1" "$dir/usr/local/bin/$2"
  cp /etc/ssl/certs/ca-certificates.crt "$dir/etc/ssl/certs/"
  printf 'root:x:0:0:root:/root:/sbin/nologin\nnobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin\n' >"$dir/etc/passwd"
  "$BIN/imagebuild" --root "$dir" --out "$OUT/images/$2.tar" --user 0:0 --entrypoint "/usr/local/bin/$2" \
    --created 0 --tag "$3" --label "org.opencontainers.image.title=$2" >/dev/null
}

# netfilter_image BINARY NAME REF: plain_image with Debian's iptables,
# ipset and conntrack (images/debian/netfilter.lock), nftables backend,
# as the kind node's own iptables.
netfilter_image() {
  local dir="$OUT/rootfs/$2" lock=images/debian/netfilter.lock t
  scripts/debs.sh fetch "$lock"
  rm -rf "$dir"
  scripts/debs.sh unpack "$lock" "$dir"
  mkdir -p "$dir/usr/local/bin" "$dir/tmp" "$dir/run" "$dir/var"; chmod 1777 "$dir/tmp"
  ln -sfn /run "$dir/var/run"
  cp "$1" "$dir/usr/local/bin/$2"
  # What update-alternatives would link (no maintainer scripts ran).
  for t in iptables iptables-save iptables-restore ip6tables ip6tables-save ip6tables-restore; do
    ln -sf xtables-nft-multi "$dir/usr/sbin/$t"
  done
  printf 'root:x:0:0:root:/root:/sbin/nologin\n' >"$dir/etc/passwd"
  printf 'root:x:0:\n' >"$dir/etc/group"
  "$BIN/imagebuild" --root "$dir" --out "$OUT/images/$2.tar" --user 0:0 --entrypoint "/usr/local/bin/$2" \
    --env PATH=/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    --program /usr/sbin/xtables-nft-multi --program /usr/sbin/ipset --program /usr/sbin/conntrack \
    --created 0 --tag "$3" --label "org.opencontainers.image.title=$2" >/dev/null
}

# node_layer DIR: layer 2's files in DIR.
node_layer() {
  local r="$1" files k8s ctd
  files="$(kind_files)"
  k8s="$(scripts/tools.sh path kubernetes)"
  ctd="$(scripts/tools.sh path containerd)"
  rm -rf "$r"; mkdir -p "$r"/{usr/local/bin,usr/local/sbin,usr/bin,opt/cni/bin,etc/containerd,etc/default,etc/systemd/system/kubelet.service.d,etc/systemd/system/multi-user.target.wants,kind/bin,kind/manifests,var/lib/containerd,etc/cni/net.d}
  install -m 0755 "$files"/usr/local/bin/* "$r/usr/local/bin/"
  install -m 0755 "$files"/kind/bin/* "$r/kind/bin/"
  install -m 0644 "$files/etc/crictl.yaml" "$r/etc/"
  install -m 0644 "$files/etc/default/kubelet" "$r/etc/default/"
  install -m 0644 "$files"/etc/systemd/system/*.service "$files"/etc/systemd/system/*.slice "$r/etc/systemd/system/"
  install -m 0644 "$files"/etc/systemd/system/kubelet.service.d/* "$r/etc/systemd/system/kubelet.service.d/"
  # kind's sysctl.d holds settings of the node's own network namespace
  # only (route_localnet for Docker's DNS, arp_ignore, rp_filter);
  # systemd-sysctl is masked in layer 1, so kind-sysctl applies them,
  # and nothing else.
  install -m 0644 "$files"/etc/sysctl.d/* "$r/kind/"
  cat >"$r/etc/systemd/system/kind-sysctl.service" <<'UNIT'
[Unit]
Description=kind's network settings of the node's own network namespace
DefaultDependencies=no
Before=containerd.service kubelet.service
[Service]
Type=oneshot
ExecStart=/bin/sh -c 'for f in /kind/10-network-*.conf; do grep -E "^net\\." "$f" | while read -r kv; do sysctl -q -w "$(echo "$kv" | tr -d " ")"; done; done'
[Install]
WantedBy=multi-user.target
UNIT
  # containerd: kind's configuration with this project's pause image, and
  # restrict_oom_score_adj (a bounding set without CAP_SYS_RESOURCE cannot
  # lower oom_score_adj); no base runtime spec (kind's mounts a product
  # uuid per container, which nothing here reads).
  sed -e "s|sandbox_image = .*|sandbox_image = \"registry.k8s.io/pause:3.10.2\"|" \
      -e "s|restrict_oom_score_adj = false|restrict_oom_score_adj = true|" \
      -e '/base_runtime_spec/d' "$files/etc/containerd/config.toml" >"$r/etc/containerd/config.toml"
  install -m 0755 "$ctd/containerd" "$ctd/ctr" "$ctd/containerd-shim-runc-v2" "$(scripts/tools.sh path crictl)" "$r/usr/local/bin/"
  install -m 0755 "$(scripts/tools.sh path runc)" "$r/usr/local/sbin/runc"
  install -m 0755 "$(scripts/tools.sh path cni-plugins)"/{bridge,host-local,loopback,portmap} "$r/opt/cni/bin/"
  install -m 0755 "$k8s/kubelet" "$k8s/kubectl" "$(scripts/tools.sh path kubeadm)" "$r/usr/bin/"
  local u
  for u in kubelet.service containerd.service undo-mount-hacks.service kind-sysctl.service; do
    ln -sf "/etc/systemd/system/$u" "$r/etc/systemd/system/multi-user.target.wants/$u"
  done
  echo "${KUBERNETES_VERSION}" >"$r/kind/version"
  # The node's own kernel settings view (see kernel_view).
  install -m 0755 images/kind/kernel-view "$r/usr/local/bin/kernel-view"
  # kubeadm patches for small machines (e2e/kind/run.sh decides).
  mkdir -p "$r/kind/patches"
  install -m 0644 images/kind/patches/*.yaml "$r/kind/patches/"
  # kind applies these at cluster creation: the pods' network and
  # NetworkPolicies (kube-router, in place of kindnetd), cluster DNS
  # (CoreDNS answering cluster.local only; kubeadm's is disabled), and
  # storage (local-path-provisioner, kind's).
  { cat images/kind/network.yaml; echo "---"; render_coredns; } >"$r/kind/manifests/default-cni.yaml"
  sed -e "s|image: rancher/local-path-provisioner:.*|image: docker.io/rancher/local-path-provisioner:${LOCAL_PATH_PROVISIONER_VERSION}|" \
    manifests/addons/local-path-provisioner/local-path.yaml >"$r/kind/manifests/default-storage.yaml"
  echo "---" >>"$r/kind/manifests/default-storage.yaml"
  storage_config >>"$r/kind/manifests/default-storage.yaml"
  preload "$r/var/lib/containerd"
}

# render_coredns: the local cluster's CoreDNS addon, as objects.
render_coredns() {
  local tmp; tmp="$(mktemp -d)"
  cp manifests/addons/coredns/coredns.yaml "$tmp/"
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nnamespace: kube-system\nresources: [coredns.yaml]\n' >"$tmp/kustomization.yaml"
  "$(scripts/tools.sh path kubernetes)/kubectl" kustomize "$tmp"
  rm -rf "$tmp"
}

# storage_config: local-path-provisioner's ConfigMap on kind, as kind's
# own default storage: volumes under /var/local-path-provisioner on the
# node, the helper on the preloaded busybox.
storage_config() {
  local dir=manifests/addons/local-path-provisioner tmp
  tmp="$(mktemp -d)"
  printf '{"nodePathMap": [{"node": "DEFAULT_PATH_FOR_NON_LISTED_NODES", "paths": ["/var/local-path-provisioner"]}]}\n' >"$tmp/config.json"
  cp "$dir/setup" "$dir/teardown" "$tmp/"
  sed -e "s|image: busybox:.*|image: docker.io/library/busybox:$(busybox_tag)|" "$dir/helperPod.yaml" >"$tmp/helperPod.yaml"
  printf 'apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nconfigMapGenerator:\n  - name: local-path-config\n    namespace: local-path-storage\n    files: [config.json, setup, teardown, helperPod.yaml]\ngeneratorOptions:\n  disableNameSuffixHash: true\n' >"$tmp/kustomization.yaml"
  "$(scripts/tools.sh path kubernetes)/kubectl" kustomize "$tmp"
  rm -rf "$tmp"
}

busybox_tag() { local v="${BUSYBOX_DEB_VERSION#*:}"; echo "${v%%-*}"; }

# preload DIR: every image of image_archives in a containerd root at DIR,
# as kind's node build imports them (not unpacked: the node's containerd
# unpacks what it runs). The same containerd version as the node's.
preload() {
  local root="$1" ctd sock state
  ctd="$(scripts/tools.sh path containerd)"
  state="$(mktemp -d /run/kind-node-build.XXXXXX)"
  sock="$state/containerd.sock"
  cat >"$state/config.toml" <<TOML
version = 3
root = "$root"
state = "$state/state"
imports = []
disabled_plugins = ["io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images", "io.containerd.grpc.v1.cri", "io.containerd.nri.v1.nri", "io.containerd.internal.v1.opt"]
[grpc]
  address = "$sock"
TOML
  "$ctd/containerd" --config "$state/config.toml" >"$state/log" 2>&1 &
  local pid=$!
  for _ in $(seq 1 100); do [[ -S "$sock" ]] && break; sleep 0.1; done
  local a rc=0 archives
  mapfile -t archives < <(image_archives | tr ' ' '\n')
  for a in "${archives[@]}"; do
    "$ctd/ctr" --address "$sock" -n k8s.io images import --no-unpack --digests "$a" 2>&1 >/dev/null | grep -v "cgroup v1 is deprecated" >&2 || true
    [[ ${PIPESTATUS[0]} == 0 ]] || { rc=1; break; }
  done
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$state"
  [[ $rc == 0 ]] || die "importing the node's images into its containerd failed"
}

build() {
  [[ $(id -u) == 0 ]] || die "building the kind node image needs root (debootstrap, file owners)"
  scripts/tools.sh ensure kubernetes kubeadm etcd node kind
  # e2e/kind/run.sh has just run make images and says so.
  [[ -n "${KIND_NODE_IMAGES_CURRENT:-}" ]] || make --no-print-directory images >/dev/null
  local layer1; layer1="$(debian_layer)"
  control_plane_images
  local sums archives
  mapfile -t archives < <(image_archives | tr ' ' '\n')
  sums="$( (sha256sum "$layer1" "${archives[@]}" images/kind/kernel-view images/kind/network.yaml images/kind/patches/* "${BASH_SOURCE[0]}" manifests/addons/coredns/coredns.yaml \
            manifests/addons/local-path-provisioner/{local-path.yaml,helperPod.yaml,setup,teardown}; \
            echo "${KUBERNETES_VERSION} $(kind_files)") | sha256sum | cut -c1-16)"
  if [[ -f "$OUT/node.tar" && "$(cat "$OUT/node.tar.inputs" 2>/dev/null)" == "$sums" ]]; then
    echo "$NODE_IMAGE"; return 0
  fi
  log "kind node image ${NODE_IMAGE}: assembling layer 2 (binaries, kind's files, preloaded images)"
  local root="$OUT/node-root"
  node_layer "$root"
  tar --numeric-owner --sort=name --mtime=@0 -C "$root" -cf "$OUT/node-layer.tar" .
  rm -rf "$root"
  "$BIN/imagebuild" --layer "$layer1" --layer "$OUT/node-layer.tar" --out "$OUT/node.tar" --user 0:0 \
    --entrypoint /usr/local/bin/entrypoint --entrypoint /usr/local/bin/kernel-view --entrypoint /sbin/init \
    --env container=docker --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --stop-signal SIGRTMIN+3 \
    --created 0 --tag "$NODE_IMAGE" --label "org.opencontainers.image.title=kind-node" \
    --label "org.opencontainers.image.version=${KUBERNETES_VERSION}" >/dev/null
  rm -f "$OUT/node-layer.tar"
  echo "$sums" >"$OUT/node.tar.inputs"
  log "kind node image: $(du -h "$OUT/node.tar" | cut -f1) in $OUT/node.tar"
  echo "$NODE_IMAGE"
}

case "${1:-}" in
  build) build ;;
  lock) lock ;;
  *) die "usage: $0 build | lock" ;;
esac
